"""What the CLI shows and asks on the operator's terminal while a run goes on.

Shared by the command modules (run, resume, demo), which stay peers instead of borrowing
from each other: :class:`TerminalEvents` prints a run as it happens, :class:`TerminalPrompt`
asks the operator for an approval, :func:`start_pusher`/:func:`finish_pusher` push new
records to the remotes in the background and report how that went.
"""

from __future__ import annotations

import os
import select
import sys
import threading
from typing import TYPE_CHECKING, Any, TextIO

from rich.markup import escape
from rich.text import Text

from ledger import run, store
from ledger import runbook as ledger_runbook
from ledger.cli import common

if TYPE_CHECKING:
    from ledger.run import process

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


class TerminalEvents(run.EngineEvents):
    """Prints a run as it happens: step headers and status lines on stdout (rich), the
    commands' own output raw to stdout and stderr."""

    def __init__(self) -> None:
        self._open_line: dict[process.StreamName, bool] = {"stdout": False, "stderr": False}
        self.pusher: Any = None

    def _print(self, *parts: tuple[str, str]) -> None:
        """One status line of (text, style) parts: styled on a terminal, plain text when the
        output is a pipe or a file (a log, CI). No markup is parsed: step names and
        messages are printed as they are."""
        if common.console.is_terminal:
            common.console.print(Text.assemble(*parts))
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

    def run_started(
        self, run_id: str, runbook: ledger_runbook.Runbook, resumes: str | None
    ) -> None:
        extra = f", resumes {resumes}" if resumes else ""
        self._print(
            (f"Run {run_id}", "bold"),
            (f": {runbook.name} ({len(runbook.steps)} steps{extra})", ""),
        )

    def step_started(self, info: run.StepStart) -> None:
        self._close_lines()
        what = f"{info.step.phase} handler" if info.handler else "step"
        attempt = f"  attempt {info.attempt}/{info.max_attempts}" if info.max_attempts > 1 else ""
        self._print(
            (f"▶ {what} {info.position}/{info.total}: {info.step.name}", "bold cyan"),
            (attempt, "dim"),
        )
        if info.command is not None:
            for i, line in enumerate(info.command.rstrip("\n").split("\n")):
                self._print((f"{'$' if i == 0 else '>'} {line}", "dim"))

    def output(self, stream: process.StreamName, data: bytes) -> None:
        target = sys.stdout if stream == "stdout" else sys.stderr
        target.buffer.write(data)
        target.flush()
        self._open_line[stream] = not data.endswith(b"\n")

    def step_finished(self, info: run.StepEnd) -> None:
        self._close_lines()
        mark, style = _STATUS_STYLE.get(info.status, ("•", "bold"))
        name = info.step.name
        if info.status == run.STEP_SKIPPED:
            self._print((f"{mark} {name} skipped: {info.reason or ''}", style))
            return
        facts = []
        if info.exit_code is not None:
            facts.append(f"exit {info.exit_code}")
        facts.append(_seconds(info.duration_ms))
        parts = [(f"{mark} {name} {info.status}", style), (f" ({', '.join(facts)})", "dim")]
        if info.error and info.status != run.STEP_OK:
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

    def record_appended(self, appended: store.Appended) -> None:
        if self.pusher is not None:
            self.pusher.notify(appended.commit_id)

    def run_finished(self, outcome: run.RunOutcome) -> None:
        self._close_lines()
        style = _RUN_STYLE.get(outcome.status, "bold")
        where = f" at step {outcome.failed_step}" if outcome.failed_step else ""
        self._print(
            (f"Run {outcome.run_id} {outcome.status}{where}", style),
            (f" ({_seconds(outcome.duration_ms)}, {outcome.records} records)", "dim"),
        )


_YES = frozenset({"y", "yes", "approve", "approved"})
_NO = frozenset({"n", "no", "reject", "rejected"})


class TerminalPrompt:
    """Asks the operator at the terminal; an :data:`ledger.run.approvals.Interactive` callback.

    Reads answers from ``stream`` (standard input) with ``select`` so that :meth:`cancel`
    stops it as soon as the approval is decided elsewhere. An answer is ``y``/``yes`` or
    ``n``/``no``, optionally followed by a comment: ``y checked the dashboards``. End of
    input raises :class:`EOFError` (the run keeps waiting for approvals in the ledger).
    """

    def __init__(self, stream: TextIO | None = None, poll: float = 0.2) -> None:
        self.stream = stream or sys.stdin
        self.poll = poll
        self._cancel = threading.Event()
        self._buffer = b""

    @staticmethod
    def available(stream: TextIO | None = None) -> bool:
        """Whether an operator can answer: standard input is a terminal."""
        s = stream or sys.stdin
        try:
            return s.isatty()
        except ValueError:
            return False

    def cancel(self) -> None:
        self._cancel.set()

    def _readline(self) -> str | None:
        """The next line of input, or ``None`` once cancelled."""
        fd = self.stream.fileno()
        while b"\n" not in self._buffer:
            if self._cancel.is_set():
                return None
            ready, _, _ = select.select([fd], [], [], self.poll)
            if ready:
                raw = os.read(fd, 4096)
                if not raw:
                    if self._buffer:
                        break
                    raise EOFError("end of input")
                self._buffer += raw
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8", errors="replace")

    def __call__(self, question: str) -> tuple[bool, str]:
        common.console_err.print(f"[bold yellow]{escape(question)}[/]", highlight=False)
        while True:
            common.console_err.print(
                "Answer y or n, optionally followed by a comment (approvals from other "
                "shells count too): ",
                end="",
            )
            line = self._readline()
            if line is None:
                raise EOFError("the approval was decided elsewhere")
            word, _, rest = line.strip().partition(" ")
            if word.lower() in _YES:
                return True, rest.strip()
            if word.lower() in _NO:
                return False, rest.strip()


# --- background push ----------------------------------------------------------------------


def start_pusher(led: store.Ledger, no_push: bool) -> Any:
    """The background pusher for the ledger's remotes, or ``None``."""
    if no_push:
        return None
    # Imported here: only a run that pushes needs it, and 'ledger run --no-push' (which
    # loads only its own command modules) starts faster without it.
    from ledger import replicate

    pusher = replicate.BackgroundPusher(led.path)
    if not pusher.names:
        return None
    return pusher.start()


def finish_pusher(pusher: Any) -> None:
    if pusher is None:
        return
    summary = pusher.close(timeout=30.0)
    for outcome in summary.outcomes:
        style = "green" if outcome.holds_head else "yellow"
        common.console_err.print(
            f"[{style}]push {escape(outcome.remote)}:[/] {escape(outcome.line())}"
        )
    for warning in summary.warnings:
        common.console_err.print(f"[yellow]push warning:[/] {escape(warning)}")
    if any(not o.holds_head for o in summary.outcomes):
        common.console_err.print(
            "[yellow]The run's records are safe in the local ledger; 'ledger push' catches "
            "the remotes up later ('ledger status' shows the lag).[/]"
        )


__all__ = ["TerminalEvents", "TerminalPrompt", "finish_pusher", "start_pusher"]
