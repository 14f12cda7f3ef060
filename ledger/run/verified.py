"""The verification policy around a run: verify the ledger before appending to it, and move
this copy's verified head over the records the run appended itself."""

from __future__ import annotations

import dataclasses

import pygit2

from ledger.errors import LedgerError, VerificationFailed
from ledger.format import records
from ledger.store import Appended, Ledger

__all__ = ["extend_verified_state", "verify_before_run"]


def verify_before_run(ledger: Ledger) -> int:
    """Verify the ledger before a run appends to it (incrementally from the saved state).

    Returns how many records were checked. Raises :class:`VerificationFailed` listing the
    findings when the ledger does not verify; saves the new verified head otherwise.
    """
    from ledger import verify  # lazy: verify is large and the CLI starts without it

    state = verify.load_state(ledger.path)
    result = verify.verify_ledger(ledger.path, since=state)
    if not result.ok:
        lines = "; ".join(f"{f.rule} at seq {f.seq}: {f.message}" for f in result.findings[:5])
        more = len(result.findings) - 5
        if more > 0:
            lines += f"; and {more} more"
        raise VerificationFailed(
            f"the ledger at {ledger.path} does not verify, so no run is appended to it: {lines}.",
            findings=list(result.findings),
            hint="Run 'ledger verify' for the full findings and investigate. To run anyway "
            "(the run's records are then appended to a ledger that failed verification), pass "
            "--allow-unverified.",
        )
    if result.state is not None:
        verify.save_state(ledger.path, result.state)
    return result.records_checked


def extend_verified_state(ledger: Ledger, appended: list[Appended]) -> bool:
    """Move this copy's verified head over the records a run has just appended itself.

    Only when they form an unbroken chain from the verified head: the first one's parent is
    that head, each next one's parent the one before (so nothing else was appended, or
    swapped in, between them), and none of them changes trust. This process computed and
    signed every one of them, so the next run's incremental verification need not read
    them again; a record anyone else wrote is always verified. ``ledger verify`` without
    ``--since-last`` still checks the whole chain. Returns whether the state moved.
    """
    from ledger import verify  # lazy: verify is large and the CLI starts without it

    if not appended or any(a.record.get("kind") in records.KEY_KINDS for a in appended):
        return False
    try:
        state = verify.load_state(ledger.path)
        if state is None:
            return False
        expected = state.head
        for done in appended:
            if done.parent != expected:  # (the store names the parent of every append)
                return False
            expected = done.commit_id
        last = appended[-1]
        raw = ledger.repo.odb.read(last.commit_id)[1]
        verify.save_state(
            ledger.path,
            dataclasses.replace(
                state,
                head=last.commit_id,
                seq=last.seq,
                prev_sha256=records.git_object_sha256("commit", raw),
                verified_at=records.format_time(records.utc_now()),
            ),
        )
    except (LedgerError, pygit2.GitError, KeyError, ValueError):
        return False  # the next run verifies these records instead
    return True
