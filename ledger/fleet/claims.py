"""Witness claims (FLEET-CONTRACT §1): what another runner's verified ``witness`` record says
a ledger's head was, checked against that ledger's verified chain in the fleet copy.

A claim is kept in the witnessing ledger's state until it is resolved, and checked again at
each verification (a resumed verification returns only the claims of the records it read).
Verdicts: resolved (the witnessed ledger's verified chain holds that commit at that seq with
that SHA-256), pending (not decidable yet: the witnessed ledger's newer heads are not
verified), ``witness-rollback`` (the claimed seq is beyond the verified head and no remote
holds anything that far), ``witness-mismatch`` (the verified chain holds another commit at
that seq), ``witness-unknown`` (information: the witnessed ledger is not in the copy).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

import pygit2

from ledger.fleet import outcome
from ledger.format import gitobj
from ledger.verify import findings
from ledger.verify import state as verify_state

_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SEQ_TRAILER = re.compile(rb"\nLedger-Seq: ([0-9]{1,18})\n")


@dataclass(frozen=True)
class Claim(findings.WitnessClaim):
    """The verifier's claim (the same fields and JSON), as the auditor keeps and checks it."""

    @classmethod
    def of(cls, witnessed: findings.WitnessClaim) -> Claim:
        """From the verifier's claim."""
        return cls(**witnessed.to_json())

    @classmethod
    def from_json(cls, doc: Any) -> Claim | None:
        """A saved claim; ``None`` when malformed (the auditor's own file: such a claim is
        dropped, and comes back only if its witness record is verified again)."""
        try:
            claim = cls(**{k: doc[k] for k in cls.__dataclass_fields__})
        except (KeyError, TypeError):
            return None
        ok = (
            isinstance(claim.by_seq, int)
            and isinstance(claim.seq, int)
            and claim.seq >= 0
            and all(isinstance(v, str) for v in (claim.ledger, claim.by_ledger, claim.commit))
            and bool(_HEX32.fullmatch(claim.ledger) and _HEX32.fullmatch(claim.by_ledger))
            and bool(_HEX40.fullmatch(claim.commit) and _HEX40.fullmatch(claim.by_commit))
            and isinstance(claim.sha256, str)
            and bool(_HEX64.fullmatch(claim.sha256))
        )
        return claim if ok else None

    def said(self) -> str:
        return (
            f"ledger {self.by_ledger}'s witness record at seq {self.by_seq} says ledger "
            f"{self.ledger} held commit {self.commit} at seq {self.seq}"
        )


@dataclass(frozen=True)
class Target:
    """What the auditor knows of a witnessed ledger: whether it is in the copy or the
    auditor's state at all, its verified head, and the seqs its remotes' heads claim now
    (unverified: they only decide whether a claim is not yet decidable)."""

    known: bool
    verified: verify_state.VerifiedState | None
    remote_seqs: tuple[int, ...] = ()


RESOLVED = "resolved"
PENDING = "pending"

#: Claims about one ledger not in the copy kept per witnessing ledger: the latest (a runner
#: witnesses at every run, so they would otherwise grow with every run for as long as the
#: auditor lacks that ledger's remote).
UNKNOWN_KEPT = 16


def check(repo: pygit2.Repository, claim: Claim, target: Target) -> outcome.FleetFinding | str:
    """The verdict on ``claim``: :data:`RESOLVED`, :data:`PENDING` or a finding."""
    if not target.known:
        return _finding(
            "witness-unknown", claim, f"{claim.said()}; that ledger is not in this fleet copy"
        )
    verified = target.verified
    if verified is None or claim.seq > verified.seq:
        if any(s >= claim.seq for s in target.remote_seqs):
            return PENDING  # held by a remote, not verified yet (its findings say why)
        if verified is None:
            return PENDING
        return _finding(
            "witness-rollback",
            claim,
            f"{claim.said()}; its verified head is at seq {verified.seq} ({verified.head}) "
            "and no remote holds anything at or after that seq: it was rolled back after "
            "the witness saw it",
        )
    problem = _on_chain(repo, claim, verified)
    if problem is None:
        return RESOLVED
    return _finding(
        "witness-mismatch",
        claim,
        f"{claim.said()}; its verified chain (head {verified.head} at seq {verified.seq}) "
        f"{problem}: the witness saw another history (a rewrite or a fork)",
    )


def drop_dismissed(
    todo: list[Claim], dismissed: dict[tuple[str, int], dict[str, str]]
) -> tuple[list[Claim], list[outcome.FleetFinding]]:
    """``todo`` without the claims of the witness records the auditor dismissed, and one
    ``witness-dismissed`` finding (information) per such record met."""
    kept: list[Claim] = []
    met: dict[tuple[str, int], list[Claim]] = {}
    for claim in todo:
        key = (claim.by_ledger, claim.by_seq)
        if key in dismissed:
            met.setdefault(key, []).append(claim)
        else:
            kept.append(claim)
    said = [
        outcome.FleetFinding(
            "witness-dismissed",
            lid,
            seq,
            found[0].by_commit,
            f"the {len(found)} claim(s) of ledger {lid}'s witness record at seq {seq} were "
            f"dismissed by this auditor at {dismissed[(lid, seq)]['at']}: "
            f"{dismissed[(lid, seq)]['reason']}",
            by_ledger=lid,
            by_seq=seq,
        )
        for (lid, seq), found in sorted(met.items())
    ]
    return kept, said


def keep_unknown(
    unknown: dict[str, list[tuple[Claim, outcome.FleetFinding]]],
) -> tuple[list[Claim], list[outcome.FleetFinding]]:
    """Of one witnessing ledger's ``witness-unknown`` claims, grouped by the ledger they
    name: the :data:`UNKNOWN_KEPT` latest of each (by the witness record's seq, then the
    claimed seq), and one finding per named ledger (the latest claim's, with how many
    more there are and how many were let go)."""
    kept: list[Claim] = []
    said: list[outcome.FleetFinding] = []
    for _ledger, found in sorted(unknown.items()):
        found.sort(key=lambda cf: (cf[0].by_seq, cf[0].seq))
        latest = found[-UNKNOWN_KEPT:]
        kept.extend(claim for claim, _ in latest)
        finding = latest[-1][1]
        if len(found) > 1:
            dropped = len(found) - len(latest)
            more = f" (and {len(found) - 1} earlier claim(s) about it"
            more += f"; the {dropped} oldest are no longer kept)" if dropped else ")"
            finding = dataclasses.replace(finding, message=finding.message + more)
        said.append(finding)
    return kept, said


def _on_chain(
    repo: pygit2.Repository, claim: Claim, verified: verify_state.VerifiedState
) -> str | None:
    """Why the verified chain does not hold the claimed commit at the claimed seq with the
    claimed digest (``None`` when it does). The chain has no merges (verified), so being
    the head or its ancestor is being on it; the commit's bytes are then verified ones."""
    if not on_verified_chain(repo, claim.commit, verified.head):
        return "does not hold that commit"
    try:
        raw = repo.odb.read(claim.commit)[1]
    except (KeyError, ValueError, pygit2.GitError):
        return "cannot read that commit"
    seq = seq_of(raw)
    if seq != claim.seq:
        return f"holds that commit at seq {'no' if seq is None else seq}, not {claim.seq}"
    digest = gitobj.object_sha256(gitobj.OBJ_COMMIT, raw)
    if digest != claim.sha256:
        return f"holds that commit with SHA-256 {digest}, not {claim.sha256}"
    return None


def seq_of(raw: bytes) -> int | None:
    """The ``Ledger-Seq`` trailer of a raw commit (believe it only of a verified commit)."""
    found = _SEQ_TRAILER.search(raw.split(b"\n\n", 1)[-1])
    return int(found.group(1)) if found is not None else None


def on_verified_chain(repo: pygit2.Repository, commit: str, head: str) -> bool:
    """Whether ``commit`` is ``head`` or its ancestor; with ``head`` verified (a chain has
    no merges), whether it is on that verified chain."""
    if commit == head:
        return True
    try:
        return bool(repo.descendant_of(head, commit))
    except (KeyError, ValueError, pygit2.GitError):
        return False


def below(repo: pygit2.Repository, commit: str, head: str) -> bool:
    """Whether ``commit`` is a strict ancestor of ``head`` in the commit graph."""
    return commit != head and on_verified_chain(repo, commit, head)


def _finding(rule: str, claim: Claim, message: str) -> outcome.FleetFinding:
    return outcome.FleetFinding(
        rule,
        claim.ledger,
        claim.seq,
        claim.commit,
        message,
        by_ledger=claim.by_ledger,
        by_seq=claim.by_seq,
    )
