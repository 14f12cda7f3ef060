"""What a verification reports: :class:`Finding` (one broken rule) and
:class:`VerifyResult` (the outcome of one verification)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # (findings is the package's leaf: state imports trust, which notes findings)
    from ledger.verify import state, trust

ProgressFn = Callable[[int, int], None]
#: Records a finding of the commit being checked: ``note(rule, message)``.
Note = Callable[[str, str], None]

# --- results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One problem: the FORMAT.md §9 rule it breaks, where, and what exactly is wrong."""

    rule: str
    seq: int | None
    commit: str | None
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "seq": self.seq, "commit": self.commit, "message": self.message}


@dataclass(frozen=True)
class WitnessClaim:
    """One head a verified ``witness`` record saw (FORMAT.md §5): ledger ``by_ledger``'s
    record at seq ``by_seq`` (commit ``by_commit``) says ledger ``ledger``'s head was
    ``commit`` at ``seq``, its object hashing to ``sha256``. An auditor checks it against
    that ledger's verified chain (``ledger fleet verify``)."""

    by_ledger: str
    by_seq: int
    by_commit: str
    ledger: str
    seq: int
    commit: str
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {
            "by_ledger": self.by_ledger,
            "by_seq": self.by_seq,
            "by_commit": self.by_commit,
            "ledger": self.ledger,
            "seq": self.seq,
            "commit": self.commit,
            "sha256": self.sha256,
        }


@dataclass(kw_only=True)
class VerifyResult:
    """The outcome of one verification.

    ``ok`` is derived: true when there are no findings. ``head``/``seq`` name the chain's
    head as read; ``records_checked`` how many records this run verified (fewer than
    ``seq + 1`` when resuming from a saved state). ``genesis`` is the chain's first commit
    and ``genesis_pinned`` whether it was compared to a pinned id (``trust_genesis`` or the
    saved state); an unpinned result proves the chain is sound but not that it is the
    ledger you meant. ``state`` is set only when ``ok``: save it with :func:`save_state`.
    ``included`` maps each commit asked about to its seq on the chain, or ``None``.
    A caller that finds more (a remembered head gone, a remote diverged) calls :meth:`add`.
    """

    findings: list[Finding]
    head: str | None
    seq: int | None
    records_checked: int
    genesis: str | None
    state: state.VerifiedState | None = None
    genesis_pinned: bool = False
    ledger_id: str | None = None
    since_seq: int | None = None
    included: dict[str, int | None] = field(default_factory=dict)
    keys: list[trust.TrustedKey] = field(default_factory=list)
    """The trust set at the head as the verifier replayed it (every key ever trusted, with
    its revocation), whether or not there were findings: a record that failed any check
    changed nothing in it. Empty when the chain's start could not be read."""
    without_presence: int = 0
    """How many of the records checked are signed by a security key without the
    user-presence flag (accepted unless presence was required; FORMAT.md §6)."""
    witnessed: list[WitnessClaim] = field(default_factory=list)
    """The heads listed by the ``witness`` records this run checked that passed every
    check (as a trust change must, FORMAT.md §10 step 5.9), in chain order."""

    def __post_init__(self) -> None:
        if self.findings:
            self.state = None

    @property
    def ok(self) -> bool:
        """Whether the verification found nothing wrong."""
        return not self.findings

    def add(self, finding: Finding) -> None:
        """Add a finding made after the chain was verified; the result is then not ``ok``
        and has no ``state`` to save."""
        self.findings.append(finding)
        self.state = None

    def rules(self) -> set[str]:
        return {f.rule for f in self.findings}

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "head": self.head,
            "seq": self.seq,
            "records_checked": self.records_checked,
            "genesis": self.genesis,
            "genesis_pinned": self.genesis_pinned,
            "ledger_id": self.ledger_id,
            "since_seq": self.since_seq,
            "findings": [f.to_json() for f in self.findings],
            "included": dict(self.included),
            "without_presence": self.without_presence,
        }
