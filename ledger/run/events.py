"""What a run reports while it goes, and how it ended: statuses, the stop signal, the
observer (:class:`EngineEvents` with :class:`StepStart`/:class:`StepEnd`), :class:`RunOutcome`."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Final

from ledger import errors, store
from ledger import runbook as ledger_runbook
from ledger.run import process

__all__ = [
    "RESUMED_REASON",
    "RUN_ABANDONED",
    "RUN_ABORTED",
    "RUN_FAILED",
    "RUN_REJECTED",
    "RUN_SUCCEEDED",
    "STEP_FAILED",
    "STEP_INTERRUPTED",
    "STEP_OK",
    "STEP_REJECTED",
    "STEP_SKIPPED",
    "STEP_TIMEOUT",
    "WHEN_REASON",
    "EngineEvents",
    "RunOutcome",
    "StepEnd",
    "StepStart",
    "StopSignal",
    "handler_stop",
    "signum_of",
]

RUN_SUCCEEDED: Final = "succeeded"
RUN_FAILED: Final = "failed"
RUN_ABORTED: Final = "aborted"
RUN_REJECTED: Final = "rejected"
RUN_ABANDONED: Final = "abandoned"

STEP_OK: Final = "ok"
STEP_FAILED: Final = "failed"
STEP_TIMEOUT: Final = "timeout"
STEP_SKIPPED: Final = "skipped"
STEP_INTERRUPTED: Final = "interrupted"
STEP_REJECTED: Final = "rejected"

#: ``reason`` of a step skipped because its ``when`` condition was false.
WHEN_REASON: Final = "when condition is false"
#: ``reason`` of a step skipped by ``ledger resume`` because it succeeded before.
RESUMED_REASON: Final = "succeeded in resumed run"


# --------------------------------------------------------------------------- stop signal


class StopSignal(threading.Event):
    """A stop event that remembers the first signal that set it (for exit 128 + N)."""

    def __init__(self) -> None:
        super().__init__()
        self.signum: int | None = None
        self.again = threading.Event()
        """Set by a second signal: stops the handlers that run after a cancellation."""

    def trigger(self, signum: int) -> None:
        """Ask the run to stop because of signal ``signum`` (safe in a signal handler).
        A second call also sets :attr:`again`."""
        if self.signum is None:
            self.signum = signum
        if self.is_set():
            self.again.set()
        self.set()


def handler_stop(stop: threading.Event) -> threading.Event:
    """The stop event for handlers about to run: ``stop`` itself while it is not set; once
    it is (the run was cancelled), the second-signal event of a :class:`StopSignal` (or an
    event nothing sets), so that ``on_cancel`` and ``always`` handlers run after a first
    Ctrl-C and a second one stops them."""
    if not stop.is_set():
        return stop
    again = getattr(stop, "again", None)
    return again if isinstance(again, threading.Event) else threading.Event()


def signum_of(stop: threading.Event) -> int:
    """The signal that set ``stop`` (a :class:`StopSignal`); SIGINT (2) otherwise."""
    signum = getattr(stop, "signum", None)
    return signum if isinstance(signum, int) else 2


# --------------------------------------------------------------------------- observer


@dataclass(frozen=True)
class StepStart:
    """A step attempt is about to run (its step.started is durable)."""

    step: ledger_runbook.Step
    attempt: int
    max_attempts: int
    command: str | None
    """The rendered command with secrets redacted; ``None`` for an approval step."""
    handler: bool
    position: int
    """1-based position among the main steps (or among the handlers)."""
    total: int


@dataclass(frozen=True)
class StepEnd:
    """A step attempt ended, or a step was skipped (its step.finished is durable)."""

    step: ledger_runbook.Step
    attempt: int
    status: str
    exit_code: int | None
    duration_ms: int
    error: str | None
    handler: bool
    reason: str | None = None
    """Why a step was skipped."""
    will_retry: bool = False
    retry_delay_s: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)
    seq: int = 0


class EngineEvents:
    """What a run reports while it goes. Every method does nothing here; the CLI
    subclasses it to print. Methods are called on the thread that runs the engine, except
    :meth:`output`, which is called from the same thread while a command runs."""

    def run_started(
        self, run_id: str, runbook: ledger_runbook.Runbook, resumes: str | None
    ) -> None:
        """run.started is durable."""

    def step_started(self, info: StepStart) -> None:
        """A step attempt's step.started is durable; the command starts next."""

    def output(self, stream: process.StreamName, data: bytes) -> None:
        """A redacted chunk of the running command's stdout or stderr."""

    def step_finished(self, info: StepEnd) -> None:
        """A step attempt's step.finished (or a skip) is durable."""

    def approval_waiting(self, step: ledger_runbook.Step, message: str | None) -> None:
        """The run waits at an approval step (message redacted)."""

    def approval_progress(self, text: str) -> None:
        """A progress line from the approval wait."""

    def record_appended(self, appended: store.Appended) -> None:
        """A record of this run is durable (replication hooks in here)."""

    def run_finished(self, outcome: RunOutcome) -> None:
        """run.finished is durable."""


# --------------------------------------------------------------------------- outcome


@dataclass
class RunOutcome:
    """How a run ended."""

    run_id: str
    runbook: str
    status: str
    failed_step: str | None
    duration_ms: int
    error: str | None = None
    """The failed step's error message (redacted)."""
    resumes: str | None = None
    signum: int | None = None
    head: str | None = None
    """The commit id of the run.finished record."""
    records: int = 0
    handlers_failed: list[str] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.status == RUN_SUCCEEDED

    def raise_for_status(self) -> None:
        """Raise the error that stands for an unsuccessful outcome (nothing if it succeeded):
        :class:`RunFailed` (exit 10), :class:`RunRejected` (11), :class:`RunInterrupted`
        (128 + signal number)."""
        if self.status == RUN_SUCCEEDED:
            return
        where = f"at step {self.failed_step!r}" if self.failed_step else "before its first step"
        detail = f": {self.error}" if self.error else ""
        if self.status == RUN_REJECTED:
            raise errors.RunRejected(
                f"run {self.run_id} of {self.runbook!r} was rejected {where}{detail}.",
                hint=f"The decision is recorded; see 'ledger log --run {self.run_id}'.",
            )
        if self.status == RUN_ABORTED:
            raise errors.RunInterrupted(
                f"run {self.run_id} of {self.runbook!r} was interrupted {where}; the step's "
                "processes were stopped and the run is recorded as aborted.",
                signum=self.signum or 2,
                hint=f"Continue it later with 'ledger resume {self.run_id}'.",
            )
        handlers = ""
        if self.handlers_failed:
            handlers = f" The handler(s) {', '.join(self.handlers_failed)} failed too."
        raise errors.RunFailed(
            f"run {self.run_id} of {self.runbook!r} failed {where}{detail}.{handlers}",
            hint=f"See 'ledger show' / 'ledger log --run {self.run_id}' for its records; once "
            f"the cause is fixed, continue with 'ledger resume {self.run_id}'.",
        )
