"""The pre-receive check of a protected *shared* remote: one repository holding many
ledgers, each at ``refs/ledgers/<ledger id>/main``.

Every updated ref is checked as its own chain, incrementally: only the commits a push adds
are verified, resuming from that ref's last verified state, which the server keeps in its
own repository (``<git dir>/ledger-state/ledgers/<ledger id>.json``, one small file per
ledger). Nothing else is read: no other ref, no other ledger's state, no walk of the
ledger's older history. So the cost of a push grows with what it adds, not with the number
of ledgers in the repository or with their length.

The state file holds ``confirmed`` (a verified state whose head the ref was seen to hold,
whose genesis is the ledger's pin) and ``pending`` (what the last accepted push verified).
A pending state becomes confirmed when the post-receive hook reports the ref updated to its
head (:func:`ledger.hook.post_receive`, which reads and writes these files with the standard
library alone), or when a later push finds the ref at its head: a push this hook
accepted but something after it refused (gitolite's per-ref rules run after pre-receive)
neither pins a genesis nor moves the resume point.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pygit2

from ledger import errors, verify
from ledger.replicate import chain, check
from ledger.verify import state

SHARED_REF_RE = re.compile(r"^refs/ledgers/([0-9a-f]{32})/main$")
STATE_SUBDIR = ("ledger-state", "ledgers")
_ZERO = chain.ZERO_OID


@dataclass
class LedgerSlot:
    """What the server knows of one ledger: its confirmed and its pending verified state."""

    confirmed: state.VerifiedState | None = None
    pending: state.VerifiedState | None = None

    def resume_from(self, old: str) -> state.VerifiedState | None:
        """The verified state of the ref's current head ``old``, when the server has it;
        a pending state found at the ref's head is promoted to confirmed."""
        if old == _ZERO:
            return None
        if self.pending is not None and self.pending.head == old:
            self.confirmed = self.pending
        if self.confirmed is not None and self.confirmed.head == old:
            return self.confirmed
        return None

    @property
    def pinned(self) -> str | None:
        return self.confirmed.genesis if self.confirmed is not None else None


def slot_path(repo: pygit2.Repository, ledger_id: str) -> Path:
    return Path(repo.path).joinpath(*STATE_SUBDIR, f"{ledger_id}.json")


def _state(obj: Any) -> state.VerifiedState | None:
    if not isinstance(obj, dict):
        return None
    try:
        return state.VerifiedState.from_json(obj)
    except (errors.LedgerError, ValueError, KeyError, TypeError):
        return None


def read_slot(repo: pygit2.Repository, ledger_id: str) -> LedgerSlot:
    """The server's state of one ledger (empty when it has none or cannot read it)."""
    try:
        data = json.loads(slot_path(repo, ledger_id).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return LedgerSlot()
    if not isinstance(data, dict):
        return LedgerSlot()
    return LedgerSlot(_state(data.get("confirmed")), _state(data.get("pending")))


def write_slot(repo: pygit2.Repository, ledger_id: str, slot: LedgerSlot) -> None:
    """Replace one ledger's state file atomically (best effort: a lost file only costs the
    next push a full verification of that ledger)."""
    path = slot_path(repo, ledger_id)
    doc = {
        "format": 1,
        "ledger_id": ledger_id,
        "confirmed": slot.confirmed.to_json() if slot.confirmed else None,
        "pending": slot.pending.to_json() if slot.pending else None,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".slot-", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError:
        return


def check_updates(
    repo: pygit2.Repository, updates: Iterable[str], *, require_user_presence: bool = False
) -> tuple[bool, list[str]]:
    """Check the ``OLD NEW REFNAME`` lines of one push; whether it is accepted, and the
    lines for the pusher. Accepted chains leave their state pending (see the module).
    ``require_user_presence``: the remote's policy for security-key signatures (§6.1)."""
    messages: list[str] = []
    accepted: dict[str, LedgerSlot] = {}
    ok = True
    for line in updates:
        fields = line.split()
        if len(fields) != 3:
            continue
        old, new, ref = fields
        said, slot = _check_one(repo, old, new, ref, require_user_presence)
        messages.extend(said)
        match = SHARED_REF_RE.match(ref)
        if match is None or slot is None:
            ok = False
            continue
        accepted[match.group(1)] = slot
    if ok:
        for ledger_id, slot in accepted.items():
            write_slot(repo, ledger_id, slot)
    return ok, messages


def _check_one(
    repo: pygit2.Repository, old: str, new: str, ref: str, require_user_presence: bool
) -> tuple[list[str], LedgerSlot | None]:
    """The lines for the pusher about one update, and the ledger's slot with its new pending
    state when it is accepted (None: refused)."""
    match = SHARED_REF_RE.match(ref)
    if match is None:
        return [
            f"refusing {ref}: a shared ledger remote holds only refs/ledgers/<ledger id>/main "
            "(a ledger id is 32 lowercase hex digits) [rule: shared-ref]"
        ], None
    ledger_id = match.group(1)
    if new == _ZERO:
        return [f"refusing to delete {ref}: a ledger is never deleted [rule: no-delete]"], None
    commit = repo.get(new) if chain.has(repo, new) else None
    if not isinstance(commit, pygit2.Commit):
        return [f"refusing {ref} -> {new}: not a commit of this push"], None
    slot = read_slot(repo, ledger_id)
    since = slot.resume_from(old)
    if old != _ZERO and since is None:
        # No state for the ref's head (lost, or left by a push refused later): verify the
        # whole chain from the pinned genesis, or from the genesis of what the ref holds.
        if not chain.is_ancestor(repo, old, new):
            return [_not_forward(ref, old, new)], None
        pin = slot.pinned or chain.root_commit(repo, old)
    else:
        pin = since.genesis if since is not None else slot.pinned
    result = verify.verify_chain(
        repo,
        new,
        trust_genesis=pin,
        since=since,
        check_repository=False,
        require_user_presence=require_user_presence,
        jobs=1,  # the quarantine is an alternate of this repository object only
    )
    rules = {f.rule for f in result.findings}
    if since is not None and rules & {"rollback", "rewrite"}:
        return [_not_forward(ref, old, new)], None
    if result.findings or result.state is None:
        lines = [f"refusing {ref} -> {new}: {len(result.findings)} problem(s) found:"]
        lines += [
            f"  {line}"
            for line in (
                check.finding_lines(result)
                or [f"the chain ending at {result.head} does not verify"]
            )[:20]
        ]
        if len(result.findings) > 20:
            lines.append(f"  ... and {len(result.findings) - 20} more")
        return lines, None
    if result.ledger_id != ledger_id:
        return [
            f"refusing {ref} -> {new}: its records belong to ledger {result.ledger_id}, not "
            f"to {ledger_id}, the ledger this ref is for [rule: ledger-id]"
        ], None
    slot.pending = result.state
    before = "new" if old == _ZERO else chain.short(old)
    return [
        f"accepted {ref}: {before} -> {chain.short(new)} (seq {result.state.seq}; "
        f"{result.records_checked} new record(s) verified)"
    ], slot


def _not_forward(ref: str, old: str, new: str) -> str:
    return f"refusing {ref}: {new} does not extend {old}; a ledger only grows [rule: fast-forward]"
