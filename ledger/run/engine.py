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
* ``on_failure`` handlers when the run failed, recorded like steps with ``handler: true``;
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
record this module writes passes through a redactor once more before it is appended.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger import __version__, records
from ledger.errors import LedgerError, RunbookError, StorageError, UntrustedKey
from ledger.redact import Redactor
from ledger.run import approvals
from ledger.run.events import (
    RESUMED_REASON,
    RUN_ABORTED,
    RUN_FAILED,
    RUN_REJECTED,
    RUN_SUCCEEDED,
    STEP_FAILED,
    STEP_INTERRUPTED,
    STEP_OK,
    STEP_REJECTED,
    STEP_SKIPPED,
    STEP_TIMEOUT,
    WHEN_REASON,
    EngineEvents,
    RunOutcome,
    StepEnd,
    StepStart,
    StopSignal,
    signum_of,
)
from ledger.run.locks import runbook_lock
from ledger.run.plan import CarriedStep
from ledger.run.process import (
    DEFAULT_CAPTURE_BYTES,
    DEFAULT_KILL_GRACE_S,
    CapturedStream,
    CommandResult,
    CommandSpec,
    run_command,
)
from ledger.run.trigger import run_environment, trigger_data
from ledger.run.verified import extend_verified_state
from ledger.runbook import (
    ResolvedParams,
    Runbook,
    Step,
    TemplateContext,
    attempt_succeeded,
    extract_output,
    render_approval_message,
    render_command,
    render_cwd,
    render_lock,
    should_run,
    step_environment,
)
from ledger.signing import SigningKey
from ledger.store import Appended, Ledger

__all__ = ["RunRequest", "Runner"]

# --------------------------------------------------------------------------- running


@dataclass
class RunRequest:
    """One run to execute."""

    runbook: Runbook
    params: ResolvedParams
    incident: str | None = None
    trigger: str | None = None
    environ: Mapping[str, str] | None = None
    """The runner's environment (default :data:`os.environ`): steps inherit it, CI is
    detected from it, ``capture_env`` reads it."""
    resumes: str | None = None
    carried: dict[str, CarriedStep] = field(default_factory=dict)
    run_id: str | None = None


@dataclass
class _StepResult:
    status: str
    error: str | None = None


def _stream_meta(stream: CapturedStream) -> dict[str, Any]:
    return {
        "size": stream.size,
        "sha256": stream.sha256,
        "truncated": stream.truncated,
        "omitted": stream.omitted,
    }


def _duration_ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


class Runner:
    """Executes runs on one ledger, signing with one key.

    ``principal`` defaults to the principal the ledger trusts ``key`` as. ``interactive``
    is the approval prompt (see :func:`ledger.run.approvals.wait_for_approval`); ``None``
    means approvals come only from ``ledger approve``.
    """

    def __init__(
        self,
        ledger: Ledger,
        key: SigningKey,
        *,
        principal: str | None = None,
        events: EngineEvents | None = None,
        stop: threading.Event | None = None,
        interactive: Any = None,
        capture_bytes: int = DEFAULT_CAPTURE_BYTES,
        kill_grace_s: float = DEFAULT_KILL_GRACE_S,
    ) -> None:
        self.ledger = ledger
        self.key = key
        signer = ledger.trusted_signer(key.public_key.fingerprint)
        if signer is None:
            raise UntrustedKey(
                f"the key {key.public_key.fingerprint} is not trusted by the ledger at "
                f"{ledger.path}, so it cannot sign this run's records.",
                hint="Use a trusted key (see 'ledger keys list'), or have a trusted signer add "
                "this one with 'ledger keys add'.",
            )
        self.principal = principal or signer.principal
        self.events = events or EngineEvents()
        self.stop = stop or StopSignal()
        self.interactive = interactive
        self.capture_bytes = capture_bytes
        self.kill_grace_s = kill_grace_s

    # ----- public

    def run(self, request: RunRequest) -> RunOutcome:
        """Execute ``request``; returns how it ended (see :meth:`RunOutcome.raise_for_status`).

        Takes the runbook's lock (if it has one) for the whole run. Errors writing the ledger
        propagate (:class:`StorageError`): a run never goes on without its records.
        """
        run_id = request.run_id or records.new_run_id()
        environ = dict(os.environ if request.environ is None else request.environ)
        ctx = TemplateContext(
            request.runbook,
            request.params,
            run_id=run_id,
            incident=request.incident,
            trigger=request.trigger,
            environ=environ,
        )
        lock_name = render_lock(ctx)
        if lock_name is None:
            run = _Run(self, request, run_id, ctx, environ, None)
            outcome = run.execute()
        else:
            shown = Redactor(request.params.secrets()).redact_text(lock_name)
            with runbook_lock(self.ledger, lock_name, run_id, shown=shown):
                run = _Run(self, request, run_id, ctx, environ, lock_name)
                outcome = run.execute()
        extend_verified_state(self.ledger, run.appended)
        return outcome


class _Run:
    """The state of one run while it executes."""

    def __init__(
        self,
        runner: Runner,
        request: RunRequest,
        run_id: str,
        ctx: TemplateContext,
        environ: dict[str, str],
        lock_name: str | None,
    ) -> None:
        self.r = runner
        self.req = request
        self.book = request.runbook
        self.run_id = run_id
        self.ctx = ctx
        self.environ = environ
        self.lock_name = lock_name
        self.secrets = request.params.secrets()
        self.redactor = Redactor(self.secrets)
        self.base_env = run_environment(environ)
        self.count = 0
        self.head: str | None = None
        self.appended: list[Appended] = []

    # ----- records

    def scrub(self, value: Any) -> Any:
        """Redact every string in a record's data (defence in depth)."""
        if not self.redactor:
            return value
        if isinstance(value, str):
            return self.redactor.redact_text(value)
        if isinstance(value, dict):
            return {self.scrub(k): self.scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.scrub(v) for v in value]
        return value

    def append(
        self,
        kind: str,
        data: Mapping[str, Any],
        *,
        summary: str,
        attachments: Mapping[str, bytes] | None = None,
        incident: str | None = None,
    ) -> Appended:
        done = self.r.ledger.append(
            kind,
            self.scrub(dict(data)),
            key=self.r.key,
            principal=self.r.principal,
            run=self.run_id,
            attachments=attachments,
            summary=self.scrub(summary),
            incident=incident,
        )
        self.count += 1
        self.head = done.commit_id
        self.appended.append(done)
        self.r.events.record_appended(done)
        return done

    def redact(self, text: str | None) -> str | None:
        return None if text is None else self.redactor.redact_text(text)

    # ----- the run

    def execute(self) -> RunOutcome:
        t0 = time.monotonic()
        book = self.book
        data: dict[str, Any] = {
            "runbook": {
                "name": book.name,
                "path": str(book.path.resolve()) if book.path is not None else book.source,
                "sha256": book.sha256,
                "description": book.description,
            },
            "params": self.req.params.redacted(),
            "param_sources": dict(self.req.params.sources),
            "trigger": trigger_data(self.req.incident, self.req.trigger, self.environ),
            "operator": {
                "principal": self.r.principal,
                "user": self.environ.get("USER") or self.environ.get("LOGNAME"),
            },
            "tool_version": f"runbook-ledger {__version__}",
            "env": dict(self.ctx.captured_env),
            "lock": self.lock_name,
            "resumes": self.req.resumes,
            "steps": [s.name for s in book.steps],
            "on_failure": [s.name for s in book.on_failure],
        }
        self.append(
            records.KIND_RUN_STARTED,
            data,
            summary=f"run.started: {book.name}"
            + (f" (resumes {self.req.resumes})" if self.req.resumes else ""),
            attachments={"runbook": book.text},
            incident=self.req.incident,
        )
        self.r.events.run_started(self.run_id, book, self.req.resumes)

        status = RUN_SUCCEEDED
        failed_step: str | None = None
        error: str | None = None
        continued: list[str] = []
        total = len(book.steps)
        for position, step in enumerate(book.steps, 1):
            if self.r.stop.is_set():
                status, failed_step = RUN_ABORTED, step.name
                break
            result = self.step(step, handler=False, position=position, total=total)
            if result.status in (STEP_OK, STEP_SKIPPED):
                continue
            if result.status == STEP_INTERRUPTED:
                status, failed_step, error = RUN_ABORTED, step.name, result.error
                break
            if result.status == STEP_REJECTED:
                status, failed_step, error = RUN_REJECTED, step.name, result.error
                break
            if step.continue_on_error:
                continued.append(step.name)
                continue
            status, failed_step, error = RUN_FAILED, step.name, result.error
            break

        handlers_failed: list[str] = []
        handlers_run: list[str] = []
        if status == RUN_FAILED and book.on_failure:
            self.ctx.failed_step = failed_step
            total = len(book.on_failure)
            for position, handler in enumerate(book.on_failure, 1):
                if self.r.stop.is_set():
                    status = RUN_ABORTED
                    break
                result = self.step(handler, handler=True, position=position, total=total)
                if result.status == STEP_SKIPPED:
                    continue
                handlers_run.append(handler.name)
                if result.status == STEP_INTERRUPTED:
                    status = RUN_ABORTED
                    break
                if result.status != STEP_OK:
                    handlers_failed.append(handler.name)
        signum = signum_of(self.r.stop) if status == RUN_ABORTED else None
        duration_ms = int((time.monotonic() - t0) * 1000)
        finished = {
            "status": status,
            "failed_step": failed_step,
            "error": self.redact(error),
            "duration_ms": duration_ms,
            "continued_after_failure": continued,
            "handlers_run": handlers_run,
            "handlers_failed": handlers_failed,
            "signal": signum,
            "resumes": self.req.resumes,
        }
        self.append(
            records.KIND_RUN_FINISHED,
            finished,
            summary=f"run.finished: {book.name} {status}"
            + (f" at {failed_step}" if failed_step else ""),
        )
        outcome = RunOutcome(
            run_id=self.run_id,
            runbook=book.name,
            status=status,
            failed_step=failed_step,
            duration_ms=duration_ms,
            error=self.redact(error),
            resumes=self.req.resumes,
            signum=signum,
            head=self.head,
            records=self.count,
            handlers_failed=handlers_failed,
        )
        self.r.events.run_finished(outcome)
        return outcome

    # ----- steps

    def base_data(self, step: Step, handler: bool, attempt: int) -> dict[str, Any]:
        return {
            "step": step.name,
            "index": step.index,
            "phase": step.phase,
            "handler": handler,
            "attempt": attempt,
        }

    def finish(
        self,
        step: Step,
        handler: bool,
        attempt: int,
        status: str,
        *,
        exit_code: int | None = None,
        duration_ms: int = 0,
        error: str | None = None,
        reason: str | None = None,
        outputs: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
        attachments: Mapping[str, bytes] | None = None,
        will_retry: bool = False,
        retry_delay_s: float = 0.0,
    ) -> Appended:
        data = self.base_data(step, handler, attempt)
        data.update(
            {
                "status": status,
                "exit_code": exit_code,
                "duration_ms": duration_ms,
                "error": self.redact(error),
                "outputs": dict(outputs or {}),
            }
        )
        if reason is not None:
            data["reason"] = reason
        if extra:
            data.update(extra)
        done = self.append(
            records.KIND_STEP_FINISHED,
            data,
            summary=f"step.finished: {step.name} {status}"
            + (f" (attempt {attempt})" if attempt > 1 else "")
            + (" [handler]" if handler else ""),
            attachments=attachments,
        )
        self.r.events.step_finished(
            StepEnd(
                step=step,
                attempt=attempt,
                status=status,
                exit_code=exit_code,
                duration_ms=duration_ms,
                error=self.redact(error),
                handler=handler,
                reason=reason,
                will_retry=will_retry,
                retry_delay_s=retry_delay_s,
                outputs=dict(outputs or {}),
                seq=done.seq,
            )
        )
        return done

    def step(self, step: Step, *, handler: bool, position: int, total: int) -> _StepResult:
        carried = None if handler else self.req.carried.get(step.name)
        if carried is not None:
            self.finish(
                step,
                handler,
                0,
                STEP_SKIPPED,
                exit_code=carried.exit_code,
                reason=RESUMED_REASON,
                outputs=carried.outputs,
                extra={"resumed_from": {"run": carried.run, "seq": carried.seq}},
            )
            self.ctx.finish(step, STEP_OK, carried.exit_code, carried.outputs)
            return _StepResult(STEP_OK)
        self.ctx.begin(step, 1)
        try:
            runs = should_run(step, self.ctx)
        except RunbookError as exc:
            self.finish(step, handler, 1, STEP_FAILED, error=exc.message)
            self.ctx.finish(step, STEP_FAILED)
            return _StepResult(STEP_FAILED, exc.message)
        if not runs:
            self.finish(step, handler, 0, STEP_SKIPPED, reason=WHEN_REASON)
            self.ctx.finish(step, STEP_SKIPPED)
            return _StepResult(STEP_SKIPPED)
        if step.approval is not None:
            return self.approval(step, handler=handler, position=position, total=total)
        return self.command(step, handler=handler, position=position, total=total)

    def command(self, step: Step, *, handler: bool, position: int, total: int) -> _StepResult:
        ctx = self.ctx
        last_status = STEP_FAILED
        last_error: str | None = None
        last_exit: int | None = None
        last_outputs: dict[str, str] = {}
        for attempt in range(1, step.max_attempts + 1):
            if attempt > 1 and self.r.stop.wait(step.retry_delay_for(attempt)):
                ctx.finish(step, last_status, last_exit, last_outputs)
                return _StepResult(STEP_INTERRUPTED, "interrupted while waiting to retry")
            ctx.begin(step, attempt)
            try:
                command = render_command(step, ctx)
                cwd = render_cwd(step, ctx)
                env = step_environment(step, ctx)
            except RunbookError as exc:
                self.finish(step, handler, attempt, STEP_FAILED, error=exc.message)
                ctx.finish(step, STEP_FAILED)
                return _StepResult(STEP_FAILED, exc.message)
            started = self.base_data(step, handler, attempt)
            started.update(
                {
                    "type": "command",
                    "max_attempts": step.max_attempts,
                    "command": command.redacted,
                    "shell": step.shell,
                    "cwd": cwd.redacted if cwd is not None else None,
                    "timeout_ms": _duration_ms(step.timeout_s),
                    "env": sorted(env.values),
                }
            )
            self.append(
                records.KIND_STEP_STARTED,
                started,
                summary=f"step.started: {step.name}"
                + (f" (attempt {attempt})" if attempt > 1 else "")
                + (" [handler]" if handler else ""),
            )
            self.r.events.step_started(
                StepStart(
                    step=step,
                    attempt=attempt,
                    max_attempts=step.max_attempts,
                    command=self.redact(command.redacted),
                    handler=handler,
                    position=position,
                    total=total,
                )
            )
            full_env = dict(self.base_env)
            full_env.update(env.values)
            full_env["LEDGER_RUN_ID"] = self.run_id
            full_env["LEDGER_STEP"] = step.name
            full_env["LEDGER_ATTEMPT"] = str(attempt)
            spec = CommandSpec(
                command=command.text,
                shell=step.shell,
                cwd=Path(cwd.text) if cwd is not None else None,
                env=full_env,
                timeout_s=step.timeout_s,
                capture_bytes=self.r.capture_bytes,
                redactions=self.secrets,
                kill_grace_s=self.r.kill_grace_s,
            )
            result = run_command(spec, sink=self.r.events.output, stop=self.r.stop)
            status, error, outputs = self.judge(step, result)
            will_retry = (
                status in (STEP_FAILED, STEP_TIMEOUT)
                and attempt < step.max_attempts
                and not self.r.stop.is_set()
            )
            attachments = {
                name: stream.data
                for name, stream in (("stdout", result.stdout), ("stderr", result.stderr))
                if stream.size
            }
            self.finish(
                step,
                handler,
                attempt,
                status,
                exit_code=result.exit_code,
                duration_ms=result.duration_ms,
                error=error,
                outputs=outputs,
                extra={
                    "signal": result.signal,
                    "stdout": _stream_meta(result.stdout),
                    "stderr": _stream_meta(result.stderr),
                    "lingering": result.lingering,
                    "will_retry": will_retry,
                },
                attachments=attachments,
                will_retry=will_retry,
                retry_delay_s=step.retry_delay_for(attempt + 1) if will_retry else 0.0,
            )
            last_status, last_error, last_exit, last_outputs = (
                status,
                error,
                result.exit_code,
                outputs,
            )
            if not will_retry:
                break
        ctx.finish(step, last_status, last_exit, last_outputs)
        return _StepResult(last_status, last_error)

    def judge(self, step: Step, result: CommandResult) -> tuple[str, str | None, dict[str, str]]:
        """The attempt's status, error and outputs (``until`` and outputs evaluated)."""
        current = self.ctx.current or self.ctx.begin(step, 1)
        current.exit_code = result.exit_code
        current.status = result.status
        if result.status == "interrupted":
            return STEP_INTERRUPTED, result.error, {}
        outputs: dict[str, str] = {}
        problems: list[str] = []
        if result.status == "ok" or step.until is not None:
            for name, spec in step.outputs.items():
                try:
                    outputs[name] = extract_output(
                        step, spec, result.stdout.data, result.stderr.data
                    )
                except RunbookError as exc:
                    problems.append(exc.message)
        current.outputs = dict(outputs)
        if result.status == "timeout":
            return STEP_TIMEOUT, result.error, outputs
        if step.until is not None:
            try:
                ok = attempt_succeeded(step, self.ctx)
            except RunbookError as exc:
                return STEP_FAILED, exc.message, outputs
            if not ok:
                detail = f"; {result.error}" if result.error else ""
                return STEP_FAILED, f"the until condition is false{detail}", outputs
            if problems:
                return STEP_FAILED, "; ".join(problems), outputs
            return STEP_OK, None, outputs
        if result.status != "ok":
            return STEP_FAILED, result.error, outputs
        if problems:
            return STEP_FAILED, "; ".join(problems), outputs
        return STEP_OK, None, outputs

    def approval(self, step: Step, *, handler: bool, position: int, total: int) -> _StepResult:
        spec = step.approval
        if spec is None:  # pragma: no cover (callers check)
            raise RunbookError(f"step {step.name!r} is not an approval step.")
        try:
            message = render_approval_message(step, self.ctx)
        except RunbookError as exc:
            self.finish(step, handler, 1, STEP_FAILED, error=exc.message)
            self.ctx.finish(step, STEP_FAILED)
            return _StepResult(STEP_FAILED, exc.message)
        shown = self.redact(message.redacted) if message is not None else None
        started = self.base_data(step, handler, 1)
        started["type"] = "approval"
        started.update(approvals.request_data(spec, shown))
        t0 = time.monotonic()
        request = self.append(
            records.KIND_STEP_STARTED,
            started,
            summary=f"step.started: {step.name} (approval)" + (" [handler]" if handler else ""),
        )
        self.r.events.step_started(
            StepStart(
                step=step,
                attempt=1,
                max_attempts=1,
                command=None,
                handler=handler,
                position=position,
                total=total,
            )
        )
        self.r.events.approval_waiting(step, shown)
        try:
            outcome = approvals.wait_for_approval(
                self.r.ledger,
                self.run_id,
                step.name,
                spec,
                stop=self.r.stop,
                interactive=self.r.interactive,
                operator_key=self.r.key,
                request_seq=request.seq,
                notify=self.r.events.approval_progress,
            )
        except StorageError:
            raise
        except LedgerError as exc:
            # The wait itself broke (not a decision): the step fails with the reason.
            self.finish(
                step,
                handler,
                1,
                STEP_FAILED,
                duration_ms=int((time.monotonic() - t0) * 1000),
                error=exc.message,
            )
            self.ctx.finish(step, STEP_FAILED)
            return _StepResult(STEP_FAILED, exc.message)
        status = outcome.step_status
        error: str | None = None
        if outcome.decision == approvals.REJECTED:
            who = outcome.rejected_by.principal if outcome.rejected_by else "an approver"
            error = f"rejected by {who}"
        elif outcome.decision == approvals.TIMEOUT:
            error = (
                f"no decision within the approval timeout ({len(outcome.approvers)} of "
                f"{outcome.required} approvals)"
            )
        elif outcome.decision == approvals.INTERRUPTED:
            error = "interrupted while waiting for approval"
        self.finish(
            step,
            handler,
            1,
            status,
            duration_ms=int((time.monotonic() - t0) * 1000),
            error=error,
            extra=outcome.finished_data(),
        )
        self.ctx.finish(step, status)
        return _StepResult(status, error)
