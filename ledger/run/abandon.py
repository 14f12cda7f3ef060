"""Closing a run whose runner is gone: :func:`abandon_run` appends its ``run.finished`` with
status ``abandoned`` and the operator's reason.

A runner killed outright (SIGKILL, a power cut) leaves a run without ``run.finished``. Only
the run's own lock (:func:`~ledger.run.locks.run_lock`, held by its runner for the whole
run) tells that no process runs it any more: the caller holds that lock while it closes the
run, and the run's records are read after the lock is taken, so a run that finished in the
meantime is seen as finished.
"""

from __future__ import annotations

from typing import Any, Final

from ledger import errors, keys, store
from ledger.format import records
from ledger.run import events

__all__ = ["MAX_REASON_CHARS", "abandon_run"]

#: Longest reason accepted (characters).
MAX_REASON_CHARS: Final = 4096


def _check_reason(reason: str) -> str:
    text = reason.strip()
    if not text:
        raise errors.InputError(
            "the reason is empty; say why the run is closed.",
            hint="Pass --reason TEXT, e.g. --reason 'runner host rebooted; finished by hand'.",
        )
    if len(text) > MAX_REASON_CHARS or "\0" in text:
        raise errors.InputError(
            f"the reason must be at most {MAX_REASON_CHARS} characters without NUL bytes.",
            hint="Shorten it; link to a longer text instead.",
        )
    return text


def _millis_between(first: store.StoredRecord, last: store.StoredRecord) -> int:
    try:
        delta = records.parse_time(last.time) - records.parse_time(first.time)
    except ValueError:
        return 0
    return max(0, int(delta.total_seconds() * 1000))


def _closing_data(recs: list[store.StoredRecord], reason: str) -> dict[str, Any]:
    """The run.finished of an abandoned run: what its records say happened."""
    started = recs[0]
    handlers: list[str] = []
    last_step: str | None = None
    for rec in recs:
        if rec.kind not in (records.KIND_STEP_STARTED, records.KIND_STEP_FINISHED):
            continue
        name = rec.data.get("step")
        if not isinstance(name, str) or rec.data.get("status") == events.STEP_SKIPPED:
            continue
        last_step = name
        if rec.data.get("handler") is True and name not in handlers:
            handlers.append(name)
    resumes = started.data.get("resumes")
    return {
        "status": events.RUN_ABANDONED,
        "failed_step": last_step,
        "error": None,
        "duration_ms": _millis_between(started, recs[-1]),
        "continued_after_failure": [],
        "handlers_run": handlers,
        "handlers_failed": [],
        "signal": None,
        "resumes": resumes if isinstance(resumes, str) else None,
        "reason": reason,
    }


def abandon_run(
    ledger: store.Ledger, run_id: str, reason: str, *, key: keys.SigningIdentity
) -> store.Appended:
    """Append ``run.finished`` with status ``abandoned`` and ``reason`` for ``run_id``,
    signed with ``key``. Call it only while holding the run's lock.

    :class:`InputError` when there is no such run or the reason is empty;
    :class:`AbandonRefused` when the run already finished; :class:`UntrustedKey` when the
    key is not trusted.
    """
    text = _check_reason(reason)
    records.check_run_id(run_id)
    recs = ledger.usable_run_records(run_id)  # (the verified chain's)
    if not recs or recs[0].kind != records.KIND_RUN_STARTED:
        raise errors.InputError(
            f"there is no run {run_id} in the ledger at {ledger.path}.",
            hint="Check the run id ('ledger status' lists unfinished runs).",
        )
    done = [r for r in recs if r.kind == records.KIND_RUN_FINISHED]
    if done:
        raise errors.AbandonRefused(
            f"run {run_id} already finished with status {done[-1].data.get('status')!r} "
            f"(seq {done[-1].seq}); only a run without run.finished can be abandoned.",
            hint="Annotate it with 'ledger record --run RUN -m TEXT' instead.",
        )
    if ledger.trusted_signer(key.public_key.fingerprint) is None:
        raise errors.UntrustedKey(
            f"the key {key.public_key.fingerprint} is not trusted by the ledger at "
            f"{ledger.path}, so it cannot close run {run_id}.",
            hint="Use a trusted key (see 'ledger keys list').",
        )
    return ledger.append(
        records.KIND_RUN_FINISHED,
        _closing_data(recs, text),
        key=key,
        run=run_id,
        summary=f"run.finished: {run_id} abandoned",
    )
