"""`ledger run` and `ledger resume`: execute a runbook with live output and signed records.

The engine (:mod:`ledger.engine`) does the work; this module parses arguments, prints what
the engine reports (step headers, live output, status lines, the outcome), turns Ctrl-C and
SIGTERM into a stop request, pushes the new records to the configured remotes in the
background, and raises the outcome's error so the exit code says how the run ended:
0 succeeded, 10 failed, 11 rejected, 3 invalid runbook or parameters, 130/143 interrupted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.text import Text

from ledger import records
from ledger.cli.common import KeyOpt, LedgerOpt, app, console, console_err
from ledger.cli.core import open_ledger, signing_key_for
from ledger.engine import (
    RESUMED_REASON,
    STEP_OK,
    STEP_SKIPPED,
    EngineEvents,
    Plan,
    PlannedStep,
    Runner,
    RunOutcome,
    RunRequest,
    StepEnd,
    StepStart,
    StopSignal,
    plan_run,
    prepare_resume,
    verify_before_run,
)
from ledger.process import StreamName
from ledger.runbook import Runbook, load_runbook, parse_assignments, resolve_parameters
from ledger.store import Appended, Ledger

ParamOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        "-p",
        help="Parameter value NAME=VALUE (repeatable).",
        show_default=False,
    ),
]
NoPushOpt = Annotated[
    bool,
    typer.Option("--no-push", help="Do not push the run's records to the ledger's remotes."),
]
AllowUnverifiedOpt = Annotated[
    bool,
    typer.Option(
        "--allow-unverified",
        help="Run even if the ledger fails verification (the check runs before every run).",
    ),
]
TriggerOpt = Annotated[
    str | None,
    typer.Option(
        "--trigger", help="What triggered the run (free text, recorded).", show_default=False
    ),
]

_STATUS_STYLE = {
    "ok": ("✓", "green"),
    "skipped": ("↷", "dim"),
    "failed": ("✗", "red"),
    "timeout": ("✗", "red"),
    "interrupted": ("■", "yellow"),
    "rejected": ("✗", "red"),
}
_RUN_STYLE = {
    "succeeded": "bold green",
    "failed": "bold red",
    "rejected": "bold red",
    "aborted": "bold yellow",
}


def _seconds(ms: int) -> str:
    return f"{ms} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


class TerminalEvents(EngineEvents):
    """Prints a run as it happens: step headers and status lines on stdout (rich), the
    commands' own output raw to stdout and stderr."""

    def __init__(self) -> None:
        self._open_line: dict[StreamName, bool] = {"stdout": False, "stderr": False}
        self.pusher: Any = None

    def _print(self, *parts: tuple[str, str]) -> None:
        """One status line of (text, style) parts: styled on a terminal, plain text when the
        output is a pipe or a file (a log, CI). No markup is parsed: step names and
        messages are printed as they are."""
        if console.is_terminal:
            console.print(Text.assemble(*parts))
            return
        sys.stdout.write("".join(text for text, _ in parts) + "\n")
        sys.stdout.flush()

    def _close_lines(self) -> None:
        for name, is_open in self._open_line.items():
            if is_open:
                stream = sys.stdout if name == "stdout" else sys.stderr
                stream.buffer.write(b"\n")
                stream.flush()
                self._open_line[name] = False

    def run_started(self, run_id: str, runbook: Runbook, resumes: str | None) -> None:
        extra = f", resumes {resumes}" if resumes else ""
        self._print(
            (f"Run {run_id}", "bold"),
            (f": {runbook.name} ({len(runbook.steps)} steps{extra})", ""),
        )

    def step_started(self, info: StepStart) -> None:
        self._close_lines()
        what = "handler" if info.handler else "step"
        attempt = f"  attempt {info.attempt}/{info.max_attempts}" if info.max_attempts > 1 else ""
        self._print(
            (f"▶ {what} {info.position}/{info.total}: {info.step.name}", "bold cyan"),
            (attempt, "dim"),
        )
        if info.command is not None:
            for i, line in enumerate(info.command.rstrip("\n").split("\n")):
                self._print((f"{'$' if i == 0 else '>'} {line}", "dim"))

    def output(self, stream: StreamName, data: bytes) -> None:
        target = sys.stdout if stream == "stdout" else sys.stderr
        target.buffer.write(data)
        target.flush()
        self._open_line[stream] = not data.endswith(b"\n")

    def step_finished(self, info: StepEnd) -> None:
        self._close_lines()
        mark, style = _STATUS_STYLE.get(info.status, ("•", "bold"))
        name = info.step.name
        if info.status == STEP_SKIPPED:
            self._print((f"{mark} {name} skipped: {info.reason or ''}", style))
            return
        facts = []
        if info.exit_code is not None:
            facts.append(f"exit {info.exit_code}")
        facts.append(_seconds(info.duration_ms))
        parts = [(f"{mark} {name} {info.status}", style), (f" ({', '.join(facts)})", "dim")]
        if info.error and info.status != STEP_OK:
            parts.append((f": {info.error}", ""))
        self._print(*parts)
        if info.will_retry:
            self._print(
                (f"  retrying in {info.retry_delay_s:g} s (attempt {info.attempt + 1})", "yellow")
            )

    def approval_waiting(self, step: Any, message: str | None) -> None:
        if message:
            self._print((f"? {message}", "bold yellow"))

    def approval_progress(self, text: str) -> None:
        self._print((f"  {text}", "yellow"))

    def record_appended(self, appended: Appended) -> None:
        if self.pusher is not None:
            self.pusher.notify(appended.commit_id)

    def run_finished(self, outcome: RunOutcome) -> None:
        self._close_lines()
        style = _RUN_STYLE.get(outcome.status, "bold")
        where = f" at step {outcome.failed_step}" if outcome.failed_step else ""
        self._print(
            (f"Run {outcome.run_id} {outcome.status}{where}", style),
            (f" ({_seconds(outcome.duration_ms)}, {outcome.records} records)", "dim"),
        )


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _stop_on_signals(stop: StopSignal) -> Iterator[None]:
    """SIGINT and SIGTERM ask the run to stop (it records the interruption, then exits)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.trigger(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _start_pusher(led: Ledger, no_push: bool) -> Any:
    """The background pusher for the ledger's remotes, or ``None``."""
    if no_push:
        return None
    from ledger import replicate

    pusher = replicate.BackgroundPusher(led.path)
    if not pusher.names:
        return None
    return pusher.start()


def _finish_pusher(pusher: Any) -> None:
    if pusher is None:
        return
    summary = pusher.close(timeout=30.0)
    for outcome in summary.outcomes:
        style = "green" if outcome.holds_head else "yellow"
        console_err.print(f"[{style}]push {escape(outcome.remote)}:[/] {escape(outcome.line())}")
    for warning in summary.warnings:
        console_err.print(f"[yellow]push warning:[/] {escape(warning)}")
    if any(not o.holds_head for o in summary.outcomes):
        console_err.print(
            "[yellow]The run's records are safe in the local ledger; 'ledger push' catches "
            "the remotes up later ('ledger status' shows the lag).[/]"
        )


def _interactive() -> Any:
    try:
        from ledger.cli.approve import TerminalPrompt
    except ImportError:  # pragma: no cover (approvals CLI not installed)
        return None
    return TerminalPrompt() if TerminalPrompt.available() else None


def _check_ledger(led: Ledger, allow_unverified: bool) -> None:
    if allow_unverified:
        console_err.print(
            "[yellow]ledger: warning:[/] --allow-unverified: the ledger is not verified before "
            "this run."
        )
        return
    verify_before_run(led)


def _execute(led: Ledger, key_path: Path | None, request: RunRequest, no_push: bool) -> None:
    signing_key = signing_key_for(led, key_path)
    events = TerminalEvents()
    stop = StopSignal()
    runner = Runner(led, signing_key, events=events, stop=stop, interactive=_interactive())
    events.pusher = _start_pusher(led, no_push)
    try:
        with _stop_on_signals(stop):
            outcome = runner.run(request)
    finally:
        _finish_pusher(events.pusher)
    outcome.raise_for_status()


# --------------------------------------------------------------------------- dry run


def _print_planned(number: int, step: PlannedStep) -> None:
    facts: list[str] = []
    if step.when is not None:
        value = (
            "decided at run time"
            if step.will_run is None
            else ("runs" if step.will_run else "skipped")
        )
        facts.append(f"when {step.when} ({value})")
    if step.max_attempts > 1:
        facts.append(f"up to {step.max_attempts} attempts")
    if step.timeout_s is not None:
        facts.append(f"timeout {step.timeout_s:g} s")
    if step.continue_on_error:
        facts.append("continue on error")
    if step.outputs:
        facts.append("outputs " + ", ".join(step.outputs))
    suffix = f" [dim]({escape('; '.join(facts))})[/]" if facts else ""
    console.print(f"  {number}. [bold]{escape(step.name)}[/]{suffix}")
    if step.kind == "approval":
        console.print(f"     approval by {escape(', '.join(step.approvers))}")
        if step.approval_message:
            console.print(f"     [yellow]{escape(step.approval_message)}[/]")
        return
    if step.cwd:
        console.print(f"     [dim]in {escape(step.cwd)}[/]")
    for i, line in enumerate((step.command or "").rstrip("\n").split("\n")):
        console.print(f"     [dim]{'$' if i == 0 else '>'}[/] {escape(line)}")


def _print_plan(plan: Plan) -> None:
    book = plan.runbook
    console.print(
        f"[bold]Plan for runbook {escape(book.name)}[/] ({escape(book.source)}, "
        f"sha256 {book.sha256[:16]}…)"
    )
    if plan.params:
        shown = ", ".join(f"{k}={v}" for k, v in plan.params.items())
        console.print(f"Parameters: {escape(shown)}")
    if plan.lock:
        console.print(f"Lock: {escape(plan.lock)}")
    console.print("Steps:")
    for i, step in enumerate(plan.steps, 1):
        _print_planned(i, step)
    if plan.handlers:
        console.print("On failure:")
        for i, step in enumerate(plan.handlers, 1):
            _print_planned(i, step)
    console.print("[bold]Dry run:[/] nothing was run and nothing was written to the ledger.")


# --------------------------------------------------------------------------- commands


_RUN_HELP = (
    "Run a runbook: every step is recorded as signed commits before and after it runs.\n\n"
    "Exit status: 0 succeeded, 10 a step failed, 11 an approval was rejected, 3 invalid "
    "runbook or parameters, 6 the runbook's lock is held, 7 the ledger fails verification, "
    "130/143 interrupted (SIGINT/SIGTERM)."
)
_RESUME_HELP = (
    "Continue a failed (or interrupted) run from its failed step, as a new linked run.\n\n"
    "Steps that succeeded in the original run are recorded as skipped (succeeded in resumed "
    "run) and their outputs carried over. Refused (exit 12) when the runbook's SHA-256 "
    "differs from the recorded one or the run did not fail."
)


@app.command("run", help=_RUN_HELP)
def run_cmd(
    runbook: Annotated[Path, typer.Argument(help="The runbook file (YAML).", show_default=False)],
    param: ParamOpt = None,
    incident: Annotated[
        str | None,
        typer.Option(
            "--incident", help="Incident id the run belongs to (indexed).", show_default=False
        ),
    ] = None,
    trigger: TriggerOpt = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Validate, render every command and print the plan; run and write nothing.",
        ),
    ] = False,
    key: KeyOpt = None,
    ledger: LedgerOpt = None,
    no_push: NoPushOpt = False,
    allow_unverified: AllowUnverifiedOpt = False,
) -> None:
    """Run a runbook: every step is recorded as signed commits before and after it runs.

    Exit status: see ``_RUN_HELP``.
    """
    book = load_runbook(runbook)
    given = parse_assignments(param or [])
    if incident is not None:
        records.check_incident(incident)
    params = resolve_parameters(book, given)
    if dry_run:
        _print_plan(plan_run(book, params))
        return
    led = open_ledger(ledger)
    _check_ledger(led, allow_unverified)
    request = RunRequest(
        runbook=book, params=params, incident=incident, trigger=trigger, environ=dict(os.environ)
    )
    _execute(led, key, request, no_push)


@app.command("resume", help=_RESUME_HELP)
def resume_cmd(
    run_id: Annotated[str, typer.Argument(help="The failed run's id.", show_default=False)],
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-p",
            help="Secret parameter value NAME=VALUE, when its "
            "from_env/from_file source does not give it (repeatable).",
            show_default=False,
        ),
    ] = None,
    runbook: Annotated[
        Path | None,
        typer.Option(
            "--runbook",
            help="The runbook file, if not at the recorded path (its "
            "SHA-256 must match the recorded one).",
            show_default=False,
        ),
    ] = None,
    trigger: TriggerOpt = None,
    key: KeyOpt = None,
    ledger: LedgerOpt = None,
    no_push: NoPushOpt = False,
    allow_unverified: AllowUnverifiedOpt = False,
) -> None:
    """Continue a failed (or interrupted) run from its failed step, as a new linked run.

    See ``_RESUME_HELP``.
    """
    led = open_ledger(ledger)
    _check_ledger(led, allow_unverified)
    plan = prepare_resume(led, run_id, runbook_path=runbook, given=parse_assignments(param or []))
    if plan.carried:
        console.print(
            f"Resuming run {run_id} ({plan.status} at {plan.failed_step or '?'}); "
            f"{len(plan.carried)} step(s) {RESUMED_REASON}: {', '.join(plan.carried)}",
            markup=False,
        )
    request = RunRequest(
        runbook=plan.runbook,
        params=plan.params,
        incident=plan.incident,
        trigger=trigger,
        environ=dict(os.environ),
        resumes=run_id,
        carried=dict(plan.carried),
    )
    _execute(led, key, request, no_push)
