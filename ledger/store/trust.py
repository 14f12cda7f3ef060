"""The verified view the store's decisions read: the chain up to a verified head and the
trust set the verifier replays over it (:mod:`ledger.verify`, the code ``ledger verify``
runs), never the bytes of the head's ``keys/`` directory.

:func:`view_at` verifies the records after the best known verified head (this object's,
or this copy's saved state) up to ``main``, incrementally; :meth:`TrustView.advanced`
moves a view over a record this process composed and signed itself (not a key record),
so a series of appends does not read its own records again.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import pygit2

from ledger import errors, keys, verify
from ledger.store import types
from ledger.verify import local


@dataclass(frozen=True)
class TrustView:
    """What the verifier established about the chain ending at ``head``.

    ``signers`` is the trust set at ``head`` as the verifier replays it: a record that
    fails any check changes nothing in it. ``findings`` is empty when the chain verifies;
    ``state`` is then what a verification would save.
    """

    head: str
    seq: int | None
    signers: tuple[types.Signer, ...]
    findings: tuple[verify.Finding, ...]
    state: verify.VerifiedState | None

    @property
    def ok(self) -> bool:
        return not self.findings

    def trusted(self, fingerprint: str) -> types.Signer | None:
        for s in self.signers:
            if s.fingerprint == fingerprint and s.active:
                return s
        return None

    def failed_seqs(self) -> frozenset[int]:
        """The seqs of the records a finding names (none when the chain verifies): on a chain
        read with ``--allow-unverified`` they have no effect on a decision."""
        return frozenset(f.seq for f in self.findings if f.seq is not None)

    def rules(self) -> list[str]:
        return sorted({f.rule for f in self.findings})

    def advanced(self, commit_id: str, seq: int, prev_sha256: str) -> TrustView:
        """This view moved over a non-key record this process appended onto ``head``."""
        state = self.state
        if state is not None:
            state = dataclasses.replace(state, head=commit_id, seq=seq, prev_sha256=prev_sha256)
        return dataclasses.replace(self, head=commit_id, seq=seq, state=state)

    def refuse(self, path: object, what: str) -> errors.VerificationFailed:
        """The error that refuses ``what`` on a chain that does not verify."""
        shown = "; ".join(f"{f.rule} at seq {f.seq}: {f.message}" for f in self.findings[:5])
        more = len(self.findings) - 5
        if more > 0:
            shown += f"; and {more} more"
        return errors.VerificationFailed(
            f"the ledger at {path} does not verify, so {what}: {shown}.",
            findings=list(self.findings),
            hint="Run 'ledger verify' for every finding and investigate (restore from a "
            "remote with 'ledger clone' if it was tampered with). To go on anyway, pass "
            "--allow-unverified: 'ledger run', 'resume', 'record' and 'approve' then sign "
            "into each record they append that its chain did not verify (the "
            "Ledger-Unverified trailer); 'show', 'log', 'runs', 'approvals' and 'status' "
            "print what they read under a warning.",
        )


_PARSED: dict[str, keys.PublicKey] = {}


def _signer(k: verify.TrustedKey) -> types.Signer:
    pk = _PARSED.get(k.key)
    if pk is None:
        pk = _PARSED[k.key] = keys.PublicKey.parse(k.key)
    return types.Signer(k.principal, pk, k.added_seq, k.added_time, k.revoked_seq, k.revoked_time)


def _config_id(repo: pygit2.Repository) -> str | None:
    """The ledger id the config claims: only a key to look the pin up by."""
    try:
        return str(repo.config["ledger.id"]).strip().lower()
    except (KeyError, ValueError, pygit2.GitError):
        return None


def view_at(repo: pygit2.Repository, head: str, known: TrustView | None) -> TrustView:
    """The verified view of the chain ending at commit ``head``.

    Verification resumes from the furthest verified head known (``known``'s, when it
    verified, or the saved state's); a new verified head is saved for the next process
    (only an accelerator: a copy that cannot be written is still read).
    """
    if known is not None and known.head == head:
        return known
    try:
        saved = verify.load_state(repo)
    except errors.InputError:
        saved = None
    base = known.state if known is not None else None
    if saved is not None and (base is None or saved.seq > base.seq):
        base = saved
    pin = None
    if base is None:  # no verified head: from the genesis, pinned when this machine has a pin
        with contextlib.suppress(errors.InputError, errors.StorageError):
            pin = local.find_pin(local.Anchors.given(), None, _config_id(repo)).genesis
    result = verify.verify_chain(repo, head, since=base, trust_genesis=pin)
    state = result.state
    # Only a head this copy already remembers moves forward: the first one (and the pin it
    # carries) is set by 'ledger init' or 'ledger verify' (ledger.verify.local), never here.
    if (
        state is not None
        and saved is not None
        and (state.seq > saved.seq or state.head != saved.head)
    ):
        with contextlib.suppress(errors.StorageError):
            verify.save_state(repo, state)
    return TrustView(
        head=head,
        seq=result.seq,
        signers=tuple(_signer(k) for k in result.keys),
        findings=tuple(result.findings),
        state=state,
    )
