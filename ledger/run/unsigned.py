"""A run whose record could not be signed through ``ssh-agent``: what to tell the operator.

The engine stops at the record the agent did not sign (every record of a run is appended
before the run goes on, so the write-ahead ``step.started`` either went in signed or the
step did not start). When the agent still answers (locked, or it refused one signature) the
engine tries once to record ``run.finished`` with status ``failed`` and the reason; when it
is gone or did not answer in time there is nothing to sign with. :func:`stopped` words the
error (:class:`~ledger.errors.RunSigningStopped`, exit 4) from what was and was not recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ledger import errors, store
from ledger.format import records

__all__ = ["may_close", "step_of", "stopped"]

Unsigned = tuple[str, Mapping[str, Any]] | None


def may_close(exc: errors.AgentError, unsigned: Unsigned) -> bool:
    """Whether to try recording ``run.finished`` (failed) after ``exc``: the agent still
    answers at once, and the run has started and not yet tried to finish."""
    if isinstance(exc, errors.AgentUnavailable | errors.AgentTimeout) or unsigned is None:
        return False
    return unsigned[0] not in (records.KIND_RUN_STARTED, records.KIND_RUN_FINISHED)


def step_of(unsigned: Unsigned) -> str | None:
    """The step the unsigned record belongs to."""
    if unsigned is None:
        return None
    name = unsigned[1].get("step")
    return name if isinstance(name, str) else None


def _what(run_id: str, unsigned: Unsigned, appended: list[store.Appended]) -> str:
    kind = unsigned[0] if unsigned is not None else None
    step = step_of(unsigned)
    if kind == records.KIND_RUN_STARTED or not appended:
        return f"run {run_id} did not start: its run.started could not be signed"
    last = f"the last record written is seq {appended[-1].seq}"
    if kind == records.KIND_STEP_STARTED:
        return (
            f"run {run_id} stopped before step {step!r}: its write-ahead step.started could "
            f"not be signed, so the step did not run ({last})"
        )
    if kind == records.KIND_STEP_FINISHED:
        return (
            f"run {run_id} stopped after step {step!r}: its step.finished could not be "
            f"signed, so how the step ended is not recorded and no later step ran ({last})"
        )
    return f"run {run_id} ran to its end but its run.finished could not be signed ({last})"


def stopped(
    run_id: str,
    exc: errors.AgentError,
    unsigned: Unsigned,
    appended: list[store.Appended],
    closed: store.Appended | None,
) -> errors.RunSigningStopped:
    """The error for a run that stopped because ``unsigned`` could not be signed; ``closed``
    is its ``run.finished`` (failed) if that could still be recorded."""
    what = _what(run_id, unsigned, appended)
    hint: str | None
    if closed is not None:
        then = f"The run is recorded as failed for this reason (run.finished, seq {closed.seq})."
        hint = f"Fix the agent, then continue it with 'ledger resume {run_id}'."
    elif not appended:
        then = "Nothing was appended."
        hint = exc.hint or "Fix the agent, then run it again."
    else:
        then = (
            "The run has no run.finished: the agent cannot sign one. Once it signs again, "
            f"close the run with 'ledger abandon {run_id} --reason TEXT' or continue it with "
            f"'ledger resume {run_id}'."
        )
        hint = exc.hint
    return errors.RunSigningStopped(f"{what}. {exc.message} {then}", hint=hint)
