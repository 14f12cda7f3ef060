"""The report's data model: what a template can show (``report`` in its context).

Plain frozen dataclasses built by :mod:`ledger.report.build` from the records of one or more
runs (:class:`Report` -> :class:`RunView` -> :class:`StepView` -> :class:`Attempt`, plus
approvals and the :class:`Evidence` section), and the :class:`RecordLike` protocol naming
what the report needs of a record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ledger import verify

#: Statuses of an attempt that count as a failure (their excerpt is the tail of stderr).
FAILED_STATUSES = frozenset({"failed", "timeout", "interrupted", "error", "rejected", "unfinished"})


class RecordLike(Protocol):
    """What the report needs of a record (``ledger.store.StoredRecord`` is one)."""

    @property
    def commit_id(self) -> str: ...

    @property
    def seq(self) -> int: ...

    @property
    def record(self) -> dict[str, Any]: ...


BlobReader = Callable[[str], bytes]


# --- the model ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordRef:
    """One record the report rests on: where it is in the chain and who signed it."""

    seq: int
    kind: str
    time: str
    commit: str
    principal: str
    fingerprint: str
    host: str
    run: str | None


@dataclass(frozen=True)
class OutputExcerpt:
    """The tail of one captured output stream of an attempt."""

    stream: str  # "stdout" or "stderr"
    text: str  # the last lines (cleaned of control characters)
    lines_omitted: int  # lines of the attached file before the excerpt
    size: int | None  # size of the full stream in bytes, as recorded
    sha256: str | None  # SHA-256 of the full stream, as recorded
    capture_truncated: bool  # the ledger holds only the head and tail of the stream
    path: str | None  # the attachment's path in the ledger's tree


_PHASE_LABELS = {"on_failure": "on failure", "on_cancel": "on cancel", "always": "always"}


@dataclass(frozen=True)
class Attempt:
    """One attempt of one step: its step.started and step.finished records."""

    step: str
    index: int | None
    attempt: int
    handler: bool
    status: str  # ok | failed | timeout | skipped | interrupted | unfinished | ...
    started: str | None
    finished: str | None
    duration_ms: int | None
    exit_code: int | None
    command: str | None
    shell: str | None
    cwd: str | None
    error: str | None
    outputs: list[tuple[str, Any]]
    excerpt: OutputExcerpt | None
    streams: list[OutputExcerpt]
    records: list[RecordRef]
    type: str = "command"  # "command" or "approval"
    reason: str | None = None  # why a step was skipped (when, resumed)
    signal: int | None = None  # the signal that ended the command
    approval_message: str | None = None
    approvers: list[str] = field(default_factory=list)
    min_approvals: int | None = None
    phase: str = "main"  # main, or the handler list: on_failure | on_cancel | always

    @property
    def label(self) -> str:
        """How a handler is marked after its name: `` (on failure)``, `` (on cancel)``,
        `` (always)``; empty for a main step."""
        if not self.handler:
            return ""
        return f" ({_PHASE_LABELS.get(self.phase, 'handler')})"

    @property
    def time(self) -> str | None:
        return self.started or self.finished

    @property
    def failed(self) -> bool:
        return self.status in FAILED_STATUSES


@dataclass(frozen=True)
class StepView:
    """A step of a run and all its attempts (retries are separate attempts)."""

    name: str
    index: int | None
    handler: bool
    attempts: list[Attempt]

    @property
    def last(self) -> Attempt:
        return self.attempts[-1]

    @property
    def label(self) -> str:
        """The handler mark after the step's name (see :attr:`Attempt.label`)."""
        return self.last.label

    @property
    def status(self) -> str:
        return self.last.status


@dataclass(frozen=True)
class Approval:
    """An approval (or rejection) record, signed by the approver's own key."""

    step: str
    decision: str
    principal: str
    fingerprint: str
    comment: str
    time: str
    seq: int
    commit: str


@dataclass(frozen=True)
class RunView:
    """One run: summary fields, its steps, approvals, handlers and records."""

    run_id: str
    runbook: str
    runbook_path: str
    runbook_sha256: str
    incident: str | None
    trigger: list[tuple[str, Any]]
    operator: str
    host: str
    tool_version: str
    resumes: str | None
    started: str | None
    finished: str | None
    duration_ms: int | None
    outcome: str  # run.finished status, or "unfinished"
    failed_step: str | None
    error: str | None
    description: str
    params: list[tuple[str, Any]]
    env: list[tuple[str, Any]]
    steps: list[StepView]
    handlers: list[StepView]
    approvals: list[Approval]
    timeline: list[Attempt]
    records: list[RecordRef]
    resume_from: str | None = None  # the step `ledger resume --from` restarted at
    reason: str | None = None  # why the run was abandoned (`ledger abandon`)


@dataclass(frozen=True)
class Verification:
    """The result of verifying the chain that holds the records a report uses.

    ``findings`` are :class:`ledger.verify.Finding` as the verifier made them, plus the
    report's own (``not-on-chain``, ``error``)."""

    status: str  # "verified" | "failed" | "not verified"
    records_used: int  # records the report shows
    records_on_chain: int  # of those, how many are on the verified chain
    head_seq: int | None = None  # seq of the verified chain's head
    genesis_pinned: bool = False  # the genesis was compared to a pinned id
    findings: list[verify.Finding] = field(default_factory=list)
    method: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "verified"


@dataclass(frozen=True)
class SignerView:
    principal: str
    fingerprint: str
    records: int  # how many of the report's records it signed
    trusted: bool | None  # trusted by the ledger at its head (None: unknown)


@dataclass(frozen=True)
class RemoteView:
    """A remote and whether it held the ledger's head (and the report's records)."""

    name: str
    url: str
    head_commit: str | None
    head_seq: int | None
    holds_head: bool
    holds_records: bool
    note: str = ""
    problem: str = ""  # divergence or rollback seen at this remote


@dataclass(frozen=True)
class LedgerInfo:
    ledger_id: str
    name: str
    genesis: str
    head_commit: str | None
    head_seq: int | None
    head_time: str | None = None


@dataclass(frozen=True)
class Evidence:
    ledger: LedgerInfo
    verification: Verification
    signers: list[SignerView]
    records: list[RecordRef]
    remotes: list[RemoteView] | None  # None: remote state unknown


@dataclass(frozen=True)
class Report:
    """Everything a template can show: ``report`` in the template's context."""

    title: str
    scope: str  # "run" | "incident" | "range"
    selector: str  # the run id, incident id, or "SINCE..UNTIL"
    incident: str | None
    runs: list[RunView]
    evidence: Evidence
    started: str | None  # earliest start of the runs
    finished: str | None  # latest end of the runs
    as_of: str | None  # time of the ledger's head record when the report was made

    @property
    def outcome(self) -> str:
        outcomes = sorted({r.outcome for r in self.runs})
        return ", ".join(outcomes) if outcomes else "no runs"

    @property
    def timeline(self) -> list[tuple[RunView, Attempt]]:
        rows = [(run, a) for run in self.runs for a in run.timeline]
        return sorted(rows, key=lambda ra: (ra[1].time or "", ra[1].records[0].seq))
