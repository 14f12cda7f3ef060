"""Verifying this machine's copy of a ledger: pinning, remembered state, rollback.

``ledger.verify.chain`` checks a chain and knows nothing of what was verified before; this
module adds the policy of a local copy: which genesis is pinned (``--trust-genesis``, else the
one remembered from the last verification, else trust on first use), whether to resume from
the last verified head, and that the last verified head is still on the chain. (It is meant
to become the one owner of every decision made from the verified head; the engine's, the
report's, clone's, the hook's and ``ledger init``'s join it after the package split.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ledger.verify import chain, state
from ledger.verify.findings import Finding, ProgressFn, VerifyResult


@dataclass
class LocalVerification:
    """A verification of a local copy, and what it did with the remembered state."""

    result: VerifyResult
    pinned_now: bool
    previous: state.VerifiedState | None


def verify_local(
    path: Path,
    *,
    trust_genesis: str | None = None,
    since_last: bool = False,
    progress: ProgressFn | None = None,
    remember: bool = True,
) -> LocalVerification:
    """Verify the ledger at ``path`` against what this machine verified before.

    The genesis pin is ``trust_genesis``, else the remembered state's genesis; with neither,
    the chain is verified unpinned and, if sound, its genesis is pinned from now on (trust
    on first use; ``pinned_now``). With ``since_last``, only records after the remembered
    head are verified. Either way a remembered head that is no longer on the chain is a
    ``rewrite`` finding, and a chain shorter than it a ``rollback``. On success the new head
    is remembered (unless ``remember`` is false).
    """
    previous = state.load_state(path)
    pin = trust_genesis or (previous.genesis if previous else None)
    if (
        since_last
        and previous is not None
        and (trust_genesis is None or trust_genesis.lower() == previous.genesis)
    ):
        result = chain.verify_ledger(path, trust_genesis=pin, since=previous, progress=progress)
    else:
        wanted = [previous.head] if previous else []
        result = chain.verify_ledger(path, trust_genesis=pin, progress=progress, commits=wanted)
        if previous is not None and result.genesis == previous.genesis:
            _check_remembered_head(result, previous)
    pinned_now = pin is None and result.ok
    if result.ok and result.state is not None and remember:
        state.save_state(path, result.state)
    return LocalVerification(result, pinned_now, previous)


def _check_remembered_head(result: VerifyResult, previous: state.VerifiedState) -> None:
    at = result.included.get(previous.head)
    if result.seq is not None and result.seq < previous.seq and at is None:
        result.add(
            Finding(
                "rollback",
                result.seq,
                result.head,
                f"the ledger's head is at seq {result.seq}, behind the head verified before "
                f"(seq {previous.seq}, commit {previous.head}): records were removed.",
            )
        )
    elif at != previous.seq:
        result.add(
            Finding(
                "rewrite",
                previous.seq,
                previous.head,
                f"the commit verified before at seq {previous.seq} ({previous.head}) is no longer "
                "on the chain: history was rewritten.",
            )
        )
