"""One step of a run, from its ``when`` to its step.finished: carried over by a resume,
skipped, a command run attempt by attempt (with ``until``, outputs and retries), or an
approval waited for."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger import errors, runbook
from ledger.format import shapes
from ledger.run import approvals, approvers, context, events, plan, process
from ledger.run import journal as run_journal
from ledger.run import outputs as run_outputs

__all__ = ["Judged", "StepResult", "StepRunner", "judge"]


@dataclass
class StepResult:
    """How a step ended, for the run's main loop."""

    status: str
    error: str | None = None


@dataclass(frozen=True)
class _Attempt:
    """One rendered attempt of a command step: real texts to run, redacted ones to record."""

    attempt: int
    command: context.RenderedCommand
    cwd: context.RenderedText | None
    env: context.RenderedEnv


@dataclass
class Judged:
    """What an attempt came to."""

    status: str = events.STEP_FAILED
    error: str | None = None
    exit_code: int | None = None
    outputs: dict[str, str] = field(default_factory=dict)


def _stream_meta(stream: process.CapturedStream) -> shapes.StreamMeta:
    return {
        "size": stream.size,
        "sha256": stream.sha256,
        "truncated": stream.truncated,
        "omitted": stream.omitted,
    }


def _duration_ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def _since_ms(t0: float) -> int:
    return int((time.monotonic() - t0) * 1000)


class StepRunner:
    """Runs the steps of one run, each to its step.finished, through ``journal``.

    ``base_env`` is what every command inherits; ``secrets`` (name to value) are redacted
    from its output; ``carried`` are the steps a resumed run skips.
    """

    def __init__(
        self,
        journal: run_journal.RunJournal,
        ctx: context.TemplateContext,
        *,
        stop: threading.Event,
        base_env: Mapping[str, str],
        secrets: Mapping[str, str],
        carried: Mapping[str, plan.CarriedStep],
        interactive: Any,
        capture_bytes: int,
        kill_grace_s: float,
    ) -> None:
        self.journal = journal
        self.ctx = ctx
        self.events = journal.events
        self.stop = stop
        self.base_env = base_env
        self.secrets = secrets
        self.carried = carried
        self.interactive = interactive
        self.capture_bytes = capture_bytes
        self.kill_grace_s = kill_grace_s

    def _failed(
        self, step: runbook.Step, handler: bool, attempt: int, exc: errors.LedgerError
    ) -> StepResult:
        """Record a step that failed before or instead of running (its templates broke)."""
        self.journal.step_finished(step, handler, attempt, events.STEP_FAILED, error=exc.message)
        self.ctx.finish(step, events.STEP_FAILED)
        return StepResult(events.STEP_FAILED, exc.message)

    def run(self, step: runbook.Step, *, handler: bool, position: int, total: int) -> StepResult:
        """Run ``step`` (a main step, or a handler) to its step.finished."""
        carried = None if handler else self.carried.get(step.name)
        if carried is not None:
            self.journal.step_finished(
                step,
                handler,
                0,
                events.STEP_SKIPPED,
                exit_code=carried.exit_code,
                reason=events.RESUMED_REASON,
                outputs=carried.outputs,
                extra={"resumed_from": {"run": carried.run, "seq": carried.seq}},
            )
            self.ctx.finish(step, events.STEP_OK, carried.exit_code, carried.outputs)
            return StepResult(events.STEP_OK)
        self.ctx.begin(step, 1)
        try:
            runs = context.should_run(step, self.ctx)
        except errors.RunbookError as exc:
            return self._failed(step, handler, 1, exc)
        if not runs:
            self.journal.step_finished(
                step, handler, 0, events.STEP_SKIPPED, reason=events.WHEN_REASON
            )
            self.ctx.finish(step, events.STEP_SKIPPED)
            return StepResult(events.STEP_SKIPPED)
        if step.approval is not None:
            return self.approval(
                step, step.approval, handler=handler, position=position, total=total
            )
        return self.command(step, handler=handler, position=position, total=total)

    # ----- command steps

    def command(
        self, step: runbook.Step, *, handler: bool, position: int, total: int
    ) -> StepResult:
        """Run a command step's attempts until one succeeds, retries run out, or a stop."""
        ctx = self.ctx
        last = Judged()
        for number in range(1, step.max_attempts + 1):
            if number > 1 and self.stop.wait(step.retry_delay_for(number)):
                ctx.finish(step, last.status, last.exit_code, last.outputs)
                return StepResult(events.STEP_INTERRUPTED, "interrupted while waiting to retry")
            ctx.begin(step, number)
            try:
                attempt = _Attempt(
                    number,
                    context.render_command(step, ctx),
                    context.render_cwd(step, ctx),
                    context.step_environment(step, ctx),
                )
            except errors.RunbookError as exc:
                return self._failed(step, handler, number, exc)
            self.events.step_started(
                events.StepStart(
                    step=step,
                    attempt=number,
                    max_attempts=step.max_attempts,
                    command=self.attempt_started(step, handler, attempt),
                    handler=handler,
                    position=position,
                    total=total,
                )
            )
            result = process.run_command(
                self.spec(step, attempt), sink=self.events.output, stop=self.stop
            )
            last = judge(step, result, ctx)
            if not self.attempt_finished(step, handler, attempt.attempt, result, last):
                break
        ctx.finish(step, last.status, last.exit_code, last.outputs)
        return StepResult(last.status, last.error)

    def attempt_started(self, step: runbook.Step, handler: bool, attempt: _Attempt) -> str | None:
        """Record the attempt's step.started (write-ahead, redacted); returns the command
        as shown to the operator."""
        cwd = attempt.cwd
        data: shapes.StepStartedByType = {
            "max_attempts": step.max_attempts,
            "command": attempt.command.redacted,
            "shell": step.shell,
            "cwd": cwd.redacted if cwd is not None else None,
            "timeout_ms": _duration_ms(step.timeout_s),
            "env": sorted(attempt.env.values),
        }
        self.journal.step_started(step, handler, attempt.attempt, "command", data)
        return self.journal.redact(attempt.command.redacted)

    def spec(self, step: runbook.Step, attempt: _Attempt) -> process.CommandSpec:
        """What to run for the attempt: real texts, the run's environment plus the step's."""
        env = dict(self.base_env)
        env.update(attempt.env.values)
        env["LEDGER_RUN_ID"] = self.journal.run_id
        env["LEDGER_STEP"] = step.name
        env["LEDGER_ATTEMPT"] = str(attempt.attempt)
        return process.CommandSpec(
            command=attempt.command.text,
            shell=step.shell,
            cwd=Path(attempt.cwd.text) if attempt.cwd is not None else None,
            env=env,
            timeout_s=step.timeout_s,
            capture_bytes=self.capture_bytes,
            redactions=self.secrets,
            derived=self.ctx.derived(),
            kill_grace_s=self.kill_grace_s,
        )

    def attempt_finished(
        self,
        step: runbook.Step,
        handler: bool,
        attempt: int,
        result: process.CommandResult,
        judged: Judged,
    ) -> bool:
        """Record the attempt's step.finished; returns whether another attempt follows."""
        will_retry = (
            judged.status in (events.STEP_FAILED, events.STEP_TIMEOUT)
            and attempt < step.max_attempts
            and not self.stop.is_set()
        )
        attachments = {
            name: stream.data
            for name, stream in (("stdout", result.stdout), ("stderr", result.stderr))
            if stream.size
        }
        self.journal.step_finished(
            step,
            handler,
            attempt,
            judged.status,
            exit_code=result.exit_code,
            duration_ms=result.duration_ms,
            error=judged.error,
            outputs=judged.outputs,
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
        return will_retry

    # ----- approval steps

    def approval(
        self,
        step: runbook.Step,
        spec: runbook.ApprovalSpec,
        *,
        handler: bool,
        position: int,
        total: int,
    ) -> StepResult:
        """Record the approval request, wait for the decision, record it. The approvers are
        rendered (they may be ``{{ params.who }}``) before the request is recorded."""
        try:
            message = context.render_approval_message(step, self.ctx)
            spec = dataclasses.replace(spec, approvers=approvers.render_approvers(step, self.ctx))
        except errors.RunbookError as exc:
            return self._failed(step, handler, 1, exc)
        shown = self.journal.redact(message.redacted) if message is not None else None
        data = approvals.request_data(spec, shown)
        t0 = time.monotonic()
        request = self.journal.step_started(step, handler, 1, "approval", data, " (approval)")
        self.events.step_started(
            events.StepStart(
                step=step,
                attempt=1,
                max_attempts=1,
                command=None,
                handler=handler,
                position=position,
                total=total,
            )
        )
        self.events.approval_waiting(step, shown)
        try:
            outcome = approvals.wait_for_approval(
                self.journal.ledger,
                self.journal.run_id,
                step.name,
                spec,
                stop=self.stop,
                interactive=self.interactive,
                operator_key=self.journal.key,
                request_seq=request.seq,
                notify=self.events.approval_progress,
            )
        except (errors.StorageError, errors.AgentError):
            raise  # the run stops: its records cannot be written or signed
        except errors.LedgerError as exc:
            # The wait itself broke (not a decision): the step fails with the reason.
            self.journal.step_finished(
                step, handler, 1, events.STEP_FAILED, duration_ms=_since_ms(t0), error=exc.message
            )
            self.ctx.finish(step, events.STEP_FAILED)
            return StepResult(events.STEP_FAILED, exc.message)
        status = outcome.step_status
        error = _approval_error(outcome)
        self.journal.step_finished(
            step,
            handler,
            1,
            status,
            duration_ms=_since_ms(t0),
            error=error,
            extra=outcome.finished_data(),
        )
        self.ctx.finish(step, status)
        return StepResult(status, error)


def _approval_error(outcome: approvals.ApprovalOutcome) -> str | None:
    """The step's error for a decision other than approved."""
    if outcome.decision == approvals.REJECTED:
        who = outcome.rejected_by.principal if outcome.rejected_by else "an approver"
        return f"rejected by {who}"
    if outcome.decision == approvals.TIMEOUT:
        return (
            f"no decision within the approval timeout ({len(outcome.approvers)} of "
            f"{outcome.required} approvals)"
        )
    if outcome.decision == approvals.INTERRUPTED:
        return "interrupted while waiting for approval"
    return None


def judge(
    step: runbook.Step, result: process.CommandResult, ctx: context.TemplateContext
) -> Judged:
    """The attempt's status, error and outputs (``until`` and outputs evaluated)."""
    current = ctx.current or ctx.begin(step, 1)
    current.exit_code = result.exit_code
    current.status = result.status
    if result.status == "interrupted":
        return Judged(events.STEP_INTERRUPTED, result.error, result.exit_code)
    outputs: dict[str, str] = {}
    problems: list[str] = []
    if result.status == "ok" or step.until is not None:
        for name, spec in step.outputs.items():
            try:
                outputs[name] = run_outputs.extract_output(
                    step, spec, result.stdout.data, result.stderr.data
                )
            except errors.RunbookError as exc:
                problems.append(exc.message)
    current.outputs = dict(outputs)

    def judged(status: str, error: str | None) -> Judged:
        return Judged(status, error, result.exit_code, outputs)

    if result.status == "timeout":
        return judged(events.STEP_TIMEOUT, result.error)
    if step.until is not None:
        try:
            ok = context.attempt_succeeded(step, ctx)
        except errors.RunbookError as exc:
            return judged(events.STEP_FAILED, exc.message)
        if not ok:
            detail = f"; {result.error}" if result.error else ""
            return judged(events.STEP_FAILED, f"the until condition is false{detail}")
    elif result.status != "ok":
        return judged(events.STEP_FAILED, result.error)
    if problems:
        return judged(events.STEP_FAILED, "; ".join(problems))
    return judged(events.STEP_OK, None)
