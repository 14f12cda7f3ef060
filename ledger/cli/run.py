"""`ledger run`, `ledger resume` and `ledger abandon`: execute a runbook with live output and
signed records, continue a run that stopped, close one whose runner is gone.

The engine (:mod:`ledger.run`) does the work; this module parses arguments, prints what
the engine reports (step headers, live output, status lines, the outcome), turns Ctrl-C and
SIGTERM into a stop request, pushes the new records to the configured remotes in the
background, and raises the outcome's error so the exit code says how the run ended:
0 succeeded, 10 failed, 11 rejected, 3 invalid runbook or parameters, 130/143 interrupted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.markup import escape

from ledger import errors, keys, redact, run, store
from ledger import runbook as ledger_runbook
from ledger.cli import common, core, terminal
from ledger.format import records

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

# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _stop_on_signals(stop: run.StopSignal) -> Iterator[None]:
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


def _interactive() -> terminal.TerminalPrompt | None:
    return terminal.TerminalPrompt() if terminal.TerminalPrompt.available() else None


def _check_ledger(led: store.Ledger, allow_unverified: bool, trust_genesis: str | None) -> None:
    led.allow_unverified = allow_unverified  # each record appended onto a bad head says so
    if allow_unverified:
        common.console_err.print(
            "[yellow]ledger: warning:[/] --allow-unverified: the ledger is not verified before "
            "this run."
        )
        return
    from ledger.verify import local  # here: the verifier is large and --help starts without it

    local.verify_before_append(led.path, local.Anchors.given(trust_genesis))


def _shared_remote_configured(led: store.Ledger) -> bool:
    """Whether the config names any ``remote.NAME.ledgerShared`` (libgit2 lowercases the
    key): the cheap gate before the witness module is even imported."""
    return any(
        e.name.startswith("remote.") and e.name.endswith(".ledgershared") for e in led.repo.config
    )


def _witness_at_start(led: store.Ledger, signing_key: keys.SigningIdentity) -> None:
    """The witness at the start of a run (after its verification, with the run's locks held,
    before ``run.started``): when the ledger has a shared remote and ``ledger.witness`` is
    not false. Any failure is one warning line and no witness record; the run goes on."""
    if not _shared_remote_configured(led):
        return  # (and nothing of the fleet or the network is loaded)
    from ledger.fleet import witness  # here: only a run with a shared remote needs it

    names = witness.at_run_start(led.repo)  # (it decides: a shared remote, ledger.witness)
    if not names:
        return
    from ledger import replicate  # here: only a ledger with a shared remote needs it

    try:
        done = witness.append_witness(led, signing_key, replicate.Credentials.from_env(), names)
    except (errors.LedgerError, OSError) as exc:
        why = exc.message if isinstance(exc, errors.LedgerError) else str(exc)
        common.console_err.print(
            f"[yellow]ledger: warning:[/] no witness record at the start of this run: "
            f"{escape(redact.mask_url(why))}",
            highlight=False,
            soft_wrap=True,
        )
        return
    skipped = f"; skipped: {' | '.join(done.warnings)}" if done.warnings else ""
    common.console_err.print(
        f"Witnessed {done.ledgers} other ledger(s) on {', '.join(done.remotes)} (witness "
        f"record seq {', '.join(str(a.seq) for a in done.appended)}){skipped}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def _execute(
    led: store.Ledger, key_path: str | None, request: run.RunRequest, no_push: bool
) -> None:
    signing_key = core.signing_key_for(led, key_path)
    events = terminal.TerminalEvents()
    stop = run.StopSignal()
    runner = run.Runner(led, signing_key, events=events, stop=stop, interactive=_interactive())
    events.pusher = terminal.start_pusher(led, no_push)
    try:
        with _stop_on_signals(stop):
            # The witness once the run's locks are held, before run.started; it never
            # stops the run.
            outcome = runner.run(request, before_start=lambda: _witness_at_start(led, signing_key))
    finally:
        terminal.finish_pusher(events.pusher)
    outcome.raise_for_status()


# --------------------------------------------------------------------------- dry run


def _print_planned(number: int, step: run.PlannedStep) -> None:
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
    common.console.print(f"  {number}. [bold]{escape(step.name)}[/]{suffix}")
    if step.kind == "approval":
        common.console.print(f"     approval by {escape(', '.join(step.approvers))}")
        if step.approval_message:
            common.console.print(f"     [yellow]{escape(step.approval_message)}[/]")
        return
    if step.cwd:
        common.console.print(f"     [dim]in {escape(step.cwd)}[/]")
    for i, line in enumerate((step.command or "").rstrip("\n").split("\n")):
        common.console.print(f"     [dim]{'$' if i == 0 else '>'}[/] {escape(line)}")


def _print_plan(plan: run.Plan) -> None:
    book = plan.runbook
    common.console.print(
        f"[bold]Plan for runbook {escape(book.name)}[/] ({escape(book.source)}, "
        f"sha256 {book.sha256[:16]}…)"
    )
    if plan.params:
        shown = ", ".join(f"{k}={v}" for k, v in plan.params.items())
        common.console.print(f"Parameters: {escape(shown)}")
    if plan.lock:
        common.console.print(f"Lock: {escape(plan.lock)}")
    common.console.print("Steps:")
    for i, step in enumerate(plan.steps, 1):
        _print_planned(i, step)
    for title, handlers in (
        ("On failure:", plan.handlers),
        ("On cancel:", plan.on_cancel),
        ("Always:", plan.always),
    ):
        if handlers:
            common.console.print(title)
            for i, step in enumerate(handlers, 1):
                _print_planned(i, step)
    common.console.print("[bold]Dry run:[/] nothing was run and nothing was written to the ledger.")


# --------------------------------------------------------------------------- commands


_RUN_HELP = (
    "Run a runbook: every step is recorded as signed commits before and after it runs.\n\n"
    "Exit status: 0 succeeded, 10 a step failed, 11 an approval was rejected, 3 invalid "
    "runbook or parameters, 6 the runbook's lock is held, 7 the ledger fails verification, "
    "130/143 interrupted (SIGINT/SIGTERM)."
)
_RESUME_HELP = (
    "Continue a failed, interrupted, abandoned or unfinished run, as a new linked run.\n\n"
    "Steps that succeeded in the original run are recorded as skipped (succeeded in resumed "
    "run) and their outputs carried over. --from STEP restarts at STEP: the steps before it "
    "are carried over, it and every later step run again. Refused (exit 12) when the "
    "runbook's SHA-256 differs from the recorded one, the run did not fail, its handlers ran "
    "and no --from names the restart point, or a step of it started and never finished "
    "(unless --from or --rerun-unfinished); exit 6 while its runner still runs it. An "
    "unfinished run whose runner is gone is first closed as abandoned."
)
_ABANDON_HELP = (
    "Close a run whose runner is gone (killed, host lost): a signed run.finished with "
    "status abandoned and the reason.\n\n"
    "Refused with exit 12 when the run already finished, 6 while its runner still runs it, "
    "3 for an unknown run or an empty reason."
)


@common.app.command("run", help=_RUN_HELP)
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
    key: common.KeyOpt = None,
    ledger: common.LedgerOpt = None,
    no_push: NoPushOpt = False,
    allow_unverified: AllowUnverifiedOpt = False,
    trust_genesis: common.TrustGenesisOpt = None,
) -> None:
    """Run a runbook: every step is recorded as signed commits before and after it runs.

    Exit status: see ``_RUN_HELP``.
    """
    book = ledger_runbook.load_runbook(runbook)
    given = ledger_runbook.parse_assignments(param or [])
    if incident is not None:
        records.check_incident(incident)
    params = ledger_runbook.resolve_parameters(book, given)
    if dry_run:
        _print_plan(run.plan_run(book, params))
        return
    led = core.open_ledger(ledger)
    _check_ledger(led, allow_unverified, trust_genesis)
    request = run.RunRequest(
        runbook=book, params=params, incident=incident, trigger=trigger, environ=dict(os.environ)
    )
    _execute(led, key, request, no_push)


def _resume_plan(
    led: store.Ledger,
    run_id: str,
    key_path: str | None,
    *,
    runbook_path: Path | None,
    given: dict[str, str],
    from_step: str | None,
    rerun_unfinished: bool,
) -> tuple[run.ResumePlan, str]:
    """The resume plan and the new run's id, made while holding the old run's lock (so no
    process runs it); an unfinished run is closed as abandoned first."""
    records.check_run_id(run_id)
    with run.run_lock(led, run_id, purpose="resume"):
        plan = run.prepare_resume(
            led,
            run_id,
            runbook_path=runbook_path,
            given=given,
            from_step=from_step,
            runner_gone=True,
            rerun_unfinished=rerun_unfinished,
        )
        for line in plan.unfinished_steps:
            common.console_err.print(f"Never finished in run {run_id}: {line}", markup=False)
        new_id = records.new_run_id()
        if plan.status == "unfinished":
            why = f"runner gone; resumed by run {new_id}"
            done = run.abandon_run(led, run_id, why, key=core.signing_key_for(led, key_path))
            common.console.print(
                f"Closed run {run_id} as abandoned (seq {done.seq}).", markup=False
            )
    return plan, new_id


@common.app.command("resume", help=_RESUME_HELP)
def resume_cmd(
    run_id: Annotated[str, typer.Argument(help="The run's id.", show_default=False)],
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
    from_step: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Restart at this step: the steps before it are carried over, it and every "
            "later step run again (required after handlers ran).",
            show_default=False,
        ),
    ] = None,
    rerun_unfinished: Annotated[
        bool,
        typer.Option(
            "--rerun-unfinished",
            help="Run again a step that started and never finished (its runner stopped).",
        ),
    ] = False,
    trigger: TriggerOpt = None,
    key: common.KeyOpt = None,
    ledger: common.LedgerOpt = None,
    no_push: NoPushOpt = False,
    allow_unverified: AllowUnverifiedOpt = False,
    trust_genesis: common.TrustGenesisOpt = None,
) -> None:
    """Continue a failed, interrupted, abandoned or unfinished run, as a new linked run.

    See ``_RESUME_HELP``.
    """
    led = core.open_ledger(ledger)
    _check_ledger(led, allow_unverified, trust_genesis)
    plan, new_id = _resume_plan(
        led,
        run_id,
        key,
        runbook_path=runbook,
        given=ledger_runbook.parse_assignments(param or []),
        from_step=from_step,
        rerun_unfinished=rerun_unfinished,
    )
    where = f"from step {plan.resume_from}" if plan.resume_from else "from where it stopped"
    common.console.print(
        f"Resuming run {run_id} ({plan.status} at {plan.failed_step or '?'}) {where}; "
        f"{len(plan.carried)} step(s) {run.RESUMED_REASON}: {', '.join(plan.carried) or 'none'}",
        markup=False,
    )
    request = run.RunRequest(
        runbook=plan.runbook,
        params=plan.params,
        incident=plan.incident,
        trigger=trigger,
        environ=dict(os.environ),
        resumes=run_id,
        carried=dict(plan.carried),
        run_id=new_id,
        resume_from=plan.resume_from,
    )
    _execute(led, key, request, no_push)


@common.app.command("abandon", help=_ABANDON_HELP)
def abandon_cmd(
    run_id: Annotated[str, typer.Argument(help="The unfinished run's id.", show_default=False)],
    reason: Annotated[
        str, typer.Option("--reason", help="Why the run is closed (recorded).", show_default=False)
    ],
    key: common.KeyOpt = None,
    ledger: common.LedgerOpt = None,
    allow_unverified: common.AppendUnverifiedOpt = False,
) -> None:
    """Close a run whose runner is gone. See ``_ABANDON_HELP``."""
    led = core.open_ledger(ledger)
    _check_ledger(led, allow_unverified, None)
    records.check_run_id(run_id)
    signing_key = core.signing_key_for(led, key)
    with run.run_lock(led, run_id, purpose="abandon"):
        done = run.abandon_run(led, run_id, reason, key=signing_key)
    common.console.print(
        f"Closed run {run_id} as abandoned: seq {done.seq} commit {done.commit_id}", markup=False
    )
