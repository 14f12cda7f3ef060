"""The records of one run as they are written: every string redacted once more, each
append counted and reported, and the shape shared by every step's records."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ledger import errors, keys, runbook, store
from ledger import redact as ledger_redact
from ledger.format import records, shapes
from ledger.run import events as run_events

__all__ = ["RunJournal"]


class RunJournal:
    """Appends the records of run ``run_id`` to ``ledger``, signed with ``key``.

    Every string of every record passes through ``redactor`` before it is appended
    (defence in depth: what reaches here should already be redacted). Each durable record
    goes to ``events.record_appended``; ``appended`` lists them in order.
    """

    def __init__(
        self,
        ledger: store.Ledger,
        key: keys.SigningIdentity,
        principal: str,
        run_id: str,
        redactor: Callable[[], ledger_redact.Redactor],
        events: run_events.EngineEvents,
    ) -> None:
        self.ledger = ledger
        self.key = key
        self.principal = principal
        self.run_id = run_id
        self._redactor = redactor
        self.events = events
        self.count = 0
        self.head: str | None = None
        self.appended: list[store.Appended] = []
        self.unsigned: tuple[str, Mapping[str, Any]] | None = None
        """The record (kind, data) the agent could not sign, if one could not be."""

    @property
    def redactor(self) -> ledger_redact.Redactor:
        """The run's redactor as it is now: its secrets and every text computed from them
        that templates rendered so far."""
        return self._redactor()

    def scrub(self, value: Any) -> Any:
        """Redact every string in a record's data (defence in depth)."""
        redactor = self.redactor
        return _scrub(redactor, value) if redactor else value

    def redact(self, text: str | None) -> str | None:
        return None if text is None else self.redactor.redact_text(text)

    def append(
        self,
        kind: str,
        data: Mapping[str, Any],
        *,
        summary: str,
        attachments: Mapping[str, bytes] | None = None,
        incident: str | None = None,
    ) -> store.Appended:
        try:
            done = self.ledger.append(
                kind,
                self.scrub(dict(data)),
                key=self.key,
                principal=self.principal,
                run=self.run_id,
                attachments=attachments,
                summary=self.scrub(summary),
                incident=incident,
            )
        except errors.AgentError:
            self.unsigned = (kind, data)
            raise
        self.count += 1
        self.head = done.commit_id
        self.appended.append(done)
        self.events.record_appended(done)
        return done

    # ----- step records

    @staticmethod
    def step_data(step: runbook.Step, handler: bool, attempt: int) -> shapes.StepFields:
        """The fields every step.started and step.finished record begins with."""
        return {
            "step": step.name,
            "index": step.index,
            "phase": step.phase,
            "handler": handler,
            "attempt": attempt,
        }

    def step_started(
        self,
        step: runbook.Step,
        handler: bool,
        attempt: int,
        step_type: str,
        data: shapes.StepStartedByType,
        note: str = "",
    ) -> store.Appended:
        """Append a step attempt's step.started of type ``step_type`` (``data`` after
        :meth:`step_data`'s fields; ``note`` goes into the summary after the step's name)."""
        started: shapes.StepStarted = {
            **self.step_data(step, handler, attempt),
            "type": step_type,
            **data,
        }
        return self.append(
            records.KIND_STEP_STARTED,
            started,
            summary=f"step.started: {step.name}"
            + note
            + (f" (attempt {attempt})" if attempt > 1 else "")
            + (" [handler]" if handler else ""),
        )

    def step_finished(
        self,
        step: runbook.Step,
        handler: bool,
        attempt: int,
        status: str,
        *,
        exit_code: int | None = None,
        duration_ms: int = 0,
        error: str | None = None,
        reason: str | None = None,
        outputs: Mapping[str, str] | None = None,
        extra: shapes.StepFinishedSome | None = None,
        attachments: Mapping[str, bytes] | None = None,
        will_retry: bool = False,
        retry_delay_s: float = 0.0,
    ) -> store.Appended:
        """Append a step's step.finished and report it to ``events.step_finished``."""
        some: shapes.StepFinishedSome = {}
        if reason is not None:
            some["reason"] = reason
        if extra:
            some.update(extra)
        data: shapes.StepFinished = {
            **self.step_data(step, handler, attempt),
            "status": status,
            "exit_code": exit_code,
            "duration_ms": duration_ms,
            "error": self.redact(error),
            "outputs": dict(outputs or {}),
            **some,
        }
        done = self.append(
            records.KIND_STEP_FINISHED,
            data,
            summary=f"step.finished: {step.name} {status}"
            + (f" (attempt {attempt})" if attempt > 1 else "")
            + (" [handler]" if handler else ""),
            attachments=attachments,
        )
        self.events.step_finished(
            run_events.StepEnd(
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


def _scrub(redactor: ledger_redact.Redactor, value: Any) -> Any:
    if isinstance(value, str):
        return redactor.redact_text(value)
    if isinstance(value, dict):
        return {_scrub(redactor, k): _scrub(redactor, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(redactor, v) for v in value]
    return value
