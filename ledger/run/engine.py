"""The runbook engine: executes a validated runbook and writes every step to the ledger.

One run is a sequence of signed records (docs/FORMAT.md §5.1):

* ``run.started`` (the runbook's path and SHA-256, its text as the attachment ``runbook``,
  parameters with secrets redacted, operator, trigger, captured environment, tool version,
  the run it resumes);
* for every attempt of every command step, ``step.started`` *before* the command runs
  (write-ahead: the rendered command with secrets redacted) and ``step.finished`` after it
  (status, exit code, duration, captured outputs, stdout/stderr as attachments with their
  size and SHA-256); a step whose ``when`` is false, or that succeeded in the run being
  resumed, gets a single ``step.finished`` with status ``skipped``;
* approval steps: ``step.started`` carries the request, approvers append ``approval``
  records (:mod:`ledger.run.approvals`), ``step.finished`` carries the decision;
* handlers, recorded like steps with ``handler: true`` and ``phase`` naming their list:
  ``on_failure`` when a step failed, ``on_cancel`` when the run was cancelled (SIGINT,
  SIGTERM, an approval rejected or timed out), then ``always`` however the run ended;
  after a cancellation handlers run until a second stop request;
* ``run.finished`` (status succeeded / failed / aborted / rejected, failed step, duration).

A runner killed outright leaves a run without ``run.finished`` (and possibly a
``step.started`` without its ``step.finished``): visible evidence that it did not end.

Nothing here prints, prompts or exits. Progress goes to an :class:`EngineEvents` observer
(the CLI prints it); a stop request (Ctrl-C, SIGTERM) comes in through a
:class:`threading.Event` the caller sets (use :class:`StopSignal` to carry the signal
number). :meth:`RunOutcome.raise_for_status` turns an unsuccessful outcome into the error
the CLI maps to its exit code.

Secrets never reach the ledger: commands, working directories and messages are rendered
twice (real for execution, redacted for the record), output streams are redacted while they
are read (:mod:`ledger.run.process`), environment values are not recorded (only the names a
step adds, and the values of the runbook's ``capture_env``), and every string of every
record of a run passes through a redactor once more before it is appended
(:class:`~ledger.run.journal.RunJournal`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import ledger as ledger_pkg
from ledger import errors, keys, store
from ledger import runbook as ledger_runbook
from ledger.format import records, shapes
from ledger.run import approvers, context, journal, locks, plan, process, unsigned
from ledger.run import events as run_events
from ledger.run import steps as run_steps
from ledger.run import trigger as run_trigger

__all__ = ["RunRequest", "Runner"]


@dataclass
class RunRequest:
    """One run to execute."""

    runbook: ledger_runbook.Runbook
    params: ledger_runbook.ResolvedParams
    incident: str | None = None
    trigger: str | None = None
    environ: Mapping[str, str] | None = None
    """The runner's environment (default :data:`os.environ`): steps inherit it, CI is
    detected from it, ``capture_env`` reads it."""
    resumes: str | None = None
    carried: dict[str, plan.CarriedStep] = field(default_factory=dict)
    run_id: str | None = None
    resume_from: str | None = None
    """The step ``ledger resume --from`` restarts at (recorded in run.started)."""


class Runner:
    """Executes runs on one ledger, signing with one key.

    ``principal`` defaults to the principal the ledger trusts ``key`` as. ``interactive``
    is the approval prompt (see :func:`ledger.run.approvals.wait_for_approval`); ``None``
    means approvals come only from ``ledger approve``.
    """

    def __init__(
        self,
        ledger: store.Ledger,
        key: keys.SigningIdentity,
        *,
        principal: str | None = None,
        events: run_events.EngineEvents | None = None,
        stop: threading.Event | None = None,
        interactive: Any = None,
        capture_bytes: int = process.DEFAULT_CAPTURE_BYTES,
        kill_grace_s: float = process.DEFAULT_KILL_GRACE_S,
    ) -> None:
        self.ledger = ledger
        self.key = key
        signer = ledger.trusted_signer(key.public_key.fingerprint)
        if signer is None:
            raise errors.UntrustedKey(
                f"the key {key.public_key.fingerprint} is not trusted by the ledger at "
                f"{ledger.path}, so it cannot sign this run's records.",
                hint="Use a trusted key (see 'ledger keys list'), or have a trusted signer add "
                "this one with 'ledger keys add'.",
            )
        self.principal = principal or signer.principal
        self.events = events or run_events.EngineEvents()
        self.stop = stop or run_events.StopSignal()
        self.interactive = interactive
        self.capture_bytes = capture_bytes
        self.kill_grace_s = kill_grace_s

    # ----- public

    def run(
        self, request: RunRequest, *, before_start: Callable[[], None] | None = None
    ) -> run_events.RunOutcome:
        """Execute ``request``; returns how it ended (see :meth:`RunOutcome.raise_for_status`).

        Takes the runbook's lock (if it has one) and the run's own lock
        (:func:`~ledger.run.locks.run_lock`) for the whole run; ``before_start`` is called
        once they are held, before ``run.started`` (so a run refused for a held lock does
        nothing). Errors writing the ledger propagate (:class:`StorageError`): a run never
        goes on without its records.
        """
        run_id = request.run_id or records.new_run_id()
        environ = dict(os.environ if request.environ is None else request.environ)
        ctx = context.TemplateContext(
            request.runbook,
            request.params,
            run_id=run_id,
            incident=request.incident,
            trigger=request.trigger,
            environ=environ,
        )
        lock = context.render_lock(ctx)
        for step in request.runbook.all_steps:
            approvers.render_approvers(step, ctx)  # a bad approver stops the run before it starts
        with contextlib.ExitStack() as held:
            if lock is not None:
                held.enter_context(
                    locks.runbook_lock(self.ledger, lock.text, run_id, shown=lock.redacted)
                )
            held.enter_context(locks.run_lock(self.ledger, run_id))
            if before_start is not None:
                before_start()
            run = _Run(self, request, run_id, ctx, environ, lock.redacted if lock else None)
            outcome = run.execute()
        # Imported here: the verifier is large and the run starts without it.
        from ledger.verify import local

        local.extend_over_own_appends(self.ledger.repo, self.ledger.path, run.journal.appended)
        return outcome


@dataclass
class _Ending:
    """How the run ends, as its main steps and then its handlers decide."""

    status: str = run_events.RUN_SUCCEEDED
    failed_step: str | None = None
    error: str | None = None
    continued: list[str] = field(default_factory=list)
    """Failed steps with ``continue_on_error``."""
    cancelled: bool = False
    """SIGINT/SIGTERM, or an approval rejected or timed out: ``on_cancel`` runs."""
    handlers_run: list[str] = field(default_factory=list)
    handlers_failed: list[str] = field(default_factory=list)


class _Run:
    """One run while it executes: run.started, the main steps, the on_failure or on_cancel
    handlers, the always handlers, run.finished. Records go through :class:`RunJournal`;
    each step is run by :class:`StepRunner`."""

    def __init__(
        self,
        runner: Runner,
        request: RunRequest,
        run_id: str,
        ctx: context.TemplateContext,
        environ: dict[str, str],
        lock_name: str | None,
    ) -> None:
        """``lock_name`` is the lock's name as recorded (redacted)."""
        self.r = runner
        self.req = request
        self.book = request.runbook
        self.run_id = run_id
        self.ctx = ctx
        self.environ = environ
        self.lock_name = lock_name
        secrets = ctx.secrets()
        self.journal = journal.RunJournal(
            runner.ledger, runner.key, runner.principal, run_id, ctx.redactor, runner.events
        )
        self.steps = run_steps.StepRunner(
            self.journal,
            ctx,
            stop=runner.stop,
            base_env=run_trigger.run_environment(environ),
            secrets=secrets,
            carried=request.carried,
            interactive=runner.interactive,
            capture_bytes=runner.capture_bytes,
            kill_grace_s=runner.kill_grace_s,
        )

    def execute(self) -> run_events.RunOutcome:
        t0 = time.monotonic()
        try:
            self.record_started()
            ending = self.main_steps()
            if ending.cancelled:
                self.handlers(ending, "on_cancel")
            elif ending.status == run_events.RUN_FAILED:
                self.handlers(ending, "on_failure")
            self.handlers(ending, "always")
            return self.record_finished(ending, int((time.monotonic() - t0) * 1000))
        except errors.AgentError as exc:
            raise self.stopped_unsigned(exc, t0) from None

    def stopped_unsigned(self, exc: errors.AgentError, t0: float) -> errors.RunSigningStopped:
        """A record could not be signed: the run stops there (no handler runs, since their
        records could not be signed either), recorded as failed if the agent still signs."""
        failed, closed = self.journal.unsigned, None
        if unsigned.may_close(exc, failed):
            ending = _Ending(
                run_events.RUN_FAILED,
                unsigned.step_of(failed),
                f"signing through ssh-agent failed: {exc.message}",
            )
            with contextlib.suppress(errors.AgentError):
                self.record_finished(ending, int((time.monotonic() - t0) * 1000))
                closed = self.journal.appended[-1]
        return unsigned.stopped(self.run_id, exc, failed, self.journal.appended, closed)

    def record_started(self) -> None:
        book = self.book
        data: shapes.RunStarted = {
            "runbook": {
                "name": book.name,
                "path": str(book.path.resolve()) if book.path is not None else book.source,
                "sha256": book.sha256,
                "description": book.description,
            },
            "params": self.req.params.redacted(),
            "param_sources": dict(self.req.params.sources),
            "trigger": run_trigger.trigger_data(self.req.incident, self.req.trigger, self.environ),
            "operator": {
                "principal": self.r.principal,
                "user": self.environ.get("USER") or self.environ.get("LOGNAME"),
            },
            "tool_version": f"runbook-ledger {ledger_pkg.__version__}",
            "env": dict(self.ctx.captured_env),
            "lock": self.lock_name,
            "resumes": self.req.resumes,
            "steps": [s.name for s in book.steps],
            "on_failure": [s.name for s in book.on_failure],
            "on_cancel": [s.name for s in book.on_cancel],
            "always": [s.name for s in book.always],
            "resume_from": self.req.resume_from,
        }
        self.journal.append(
            records.KIND_RUN_STARTED,
            data,
            summary=f"run.started: {book.name}"
            + (f" (resumes {self.req.resumes})" if self.req.resumes else ""),
            attachments={"runbook": book.text},
            incident=self.req.incident,
        )
        self.r.events.run_started(self.run_id, book, self.req.resumes)

    def main_steps(self) -> _Ending:
        """Run the main steps until one fails (without continue_on_error), is rejected or
        interrupted, or a stop is asked for."""
        ending = _Ending()
        total = len(self.book.steps)
        for position, step in enumerate(self.book.steps, 1):
            if self.r.stop.is_set():
                ending.status, ending.failed_step = run_events.RUN_ABORTED, step.name
                ending.cancelled = True
                break
            result = self.steps.run(step, handler=False, position=position, total=total)
            if result.status in (run_events.STEP_OK, run_events.STEP_SKIPPED):
                continue
            if result.status == run_events.STEP_INTERRUPTED:
                ending.status, ending.cancelled = run_events.RUN_ABORTED, True
            elif result.status == run_events.STEP_REJECTED:
                ending.status, ending.cancelled = run_events.RUN_REJECTED, True
            elif step.approval is not None and result.status == run_events.STEP_TIMEOUT:
                ending.status, ending.cancelled = run_events.RUN_FAILED, True
            elif step.continue_on_error:
                ending.continued.append(step.name)
                continue
            else:
                ending.status = run_events.RUN_FAILED
            ending.failed_step, ending.error = step.name, result.error
            break
        return ending

    def handlers(self, ending: _Ending, phase: str) -> None:
        """Run the handler list ``phase`` (all of it, unless stopped). After a cancellation
        they run until a second stop request (:func:`handler_stop`); a stop while they run
        aborts the run and ends the list."""
        steps = self.book.handlers(phase)
        if not steps:
            return
        self.ctx.failed_step = ending.failed_step
        stop = run_events.handler_stop(self.r.stop)
        self.steps.stop = stop
        total = len(steps)
        for position, handler in enumerate(steps, 1):
            if stop.is_set():
                ending.status = run_events.RUN_ABORTED
                break
            result = self.steps.run(handler, handler=True, position=position, total=total)
            if result.status == run_events.STEP_SKIPPED:
                continue
            ending.handlers_run.append(handler.name)
            if result.status == run_events.STEP_INTERRUPTED:
                ending.status = run_events.RUN_ABORTED
                break
            if result.status != run_events.STEP_OK:
                ending.handlers_failed.append(handler.name)

    def record_finished(self, ending: _Ending, duration_ms: int) -> run_events.RunOutcome:
        book, status, failed_step = self.book, ending.status, ending.failed_step
        signum = run_events.signum_of(self.r.stop) if status == run_events.RUN_ABORTED else None
        error = self.journal.redact(ending.error)
        finished: shapes.RunFinished = {
            "status": status,
            "failed_step": failed_step,
            "error": error,
            "duration_ms": duration_ms,
            "continued_after_failure": ending.continued,
            "handlers_run": ending.handlers_run,
            "handlers_failed": ending.handlers_failed,
            "signal": signum,
            "resumes": self.req.resumes,
        }
        self.journal.append(
            records.KIND_RUN_FINISHED,
            finished,
            summary=f"run.finished: {book.name} {status}"
            + (f" at {failed_step}" if failed_step else ""),
        )
        outcome = run_events.RunOutcome(
            run_id=self.run_id,
            runbook=book.name,
            status=status,
            failed_step=failed_step,
            duration_ms=duration_ms,
            error=error,
            resumes=self.req.resumes,
            signum=signum,
            head=self.journal.head,
            records=self.journal.count,
            handlers_failed=ending.handlers_failed,
        )
        self.r.events.run_finished(outcome)
        return outcome
