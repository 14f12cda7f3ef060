"""The records' shapes as typed views (FORMAT.md §2, §5, §5.1), for writers and readers.

Pure declarations: ``ledger.format.records`` re-exports every one of them (``records.RunStarted``)
next to the kinds and ``DATA_TYPES``. The verifier keeps its own field sets on purpose;
tests/test_verify.py pins the two to each other.
"""

from __future__ import annotations

from typing import Any, TypedDict

# --- the records' shapes (FORMAT.md §2, §5, §5.1) ------------------------------------------
#
# Typed views for writers and readers. A record read back is not verified and may say
# anything: readers still check what they read (``ledger.report.fields`` is lenient); these
# types say what a well-formed record holds. Fields that only some records of a kind carry
# live in a ``total=False`` base class.


class Actor(TypedDict):
    principal: str
    key: str  # the signing key's fingerprint


class FileEntry(TypedDict):
    path: str
    sha256: str
    size: int


class Record(TypedDict):
    """The common fields of every record (§2); ``data`` is the kind's."""

    schema: int
    ledger: str
    seq: int
    kind: str
    time: str
    run: str | None
    actor: Actor
    host: str
    data: dict[str, Any]
    files: dict[str, FileEntry]


class GenesisSigner(TypedDict):
    principal: str
    key: str  # OpenSSH public key line without comment
    fingerprint: str


class GenesisData(TypedDict):
    name: str
    signers: list[GenesisSigner]
    created_by: str


class KeyAdded(TypedDict):
    principal: str
    key: str
    fingerprint: str
    comment: str


class KeyRevoked(TypedDict):
    fingerprint: str
    reason: str


class EventData(TypedDict):
    message: str
    data: Any


class WitnessHead(TypedDict):
    """One head of another ledger a ``witness`` record saw (FORMAT.md §5)."""

    ledger: str
    seq: int
    commit: str
    sha256: str


class WitnessData(TypedDict):
    heads: list[WitnessHead]


class RunbookRef(TypedDict):
    name: str
    path: str
    sha256: str
    description: str | None


class Trigger(TypedDict):
    source: str  # manual or ci
    incident: str | None
    text: str | None
    ci: str | None
    ci_run: str | None
    ci_url: str | None


class Operator(TypedDict):
    principal: str
    user: str | None


class RunStartedFields(TypedDict):
    runbook: RunbookRef
    params: dict[str, str | int | bool | None]
    param_sources: dict[str, str]
    trigger: Trigger
    operator: Operator
    tool_version: str
    env: dict[str, str]
    lock: str | None
    resumes: str | None
    steps: list[str]
    on_failure: list[str]


class RunStartedLater(TypedDict, total=False):
    """Fields added after records without them were written (checked when present)."""

    on_cancel: list[str]
    always: list[str]
    resume_from: str | None


class RunStarted(RunStartedFields, RunStartedLater):
    """``run.started``: what ran, with which parameters, triggered how, by whom."""


class StepFields(TypedDict):
    """The fields every ``step.started`` and ``step.finished`` begins with."""

    step: str
    index: int
    phase: str  # main, on_failure, on_cancel or always
    handler: bool
    attempt: int


class ApprovalRequest(TypedDict):
    approvers: list[str]
    min_approvals: int
    message: str | None
    timeout_ms: int | None


class StepStartedByType(TypedDict, total=False):
    """The fields of a ``step.started`` that depend on its ``type``."""

    # type: command
    command: str
    shell: str
    cwd: str | None
    timeout_ms: int | None
    max_attempts: int
    env: list[str]
    # type: approval
    approval: ApprovalRequest


class StepStarted(StepFields, StepStartedByType):
    type: str  # command or approval


class StreamMeta(TypedDict):
    size: int
    sha256: str
    truncated: bool
    omitted: int


class Vote(TypedDict):
    principal: str
    fingerprint: str
    seq: int
    commit: str


class IgnoredVote(TypedDict):
    seq: int
    commit: str
    principal: str
    reason: str


class ApprovalDecision(TypedDict):
    decision: str
    request_seq: int
    required: int
    approvers: list[Vote]
    rejected_by: Vote | None
    comment: str
    ignored: list[IgnoredVote]


class ResumedFrom(TypedDict):
    run: str
    seq: int


class StepFinishedSome(TypedDict, total=False):
    """The fields only some ``step.finished`` records carry."""

    # skipped
    reason: str
    resumed_from: ResumedFrom
    # command attempts
    signal: int | None
    stdout: StreamMeta
    stderr: StreamMeta
    lingering: bool
    will_retry: bool
    # approval steps
    approval: ApprovalDecision


class StepFinished(StepFields, StepFinishedSome):
    status: str
    exit_code: int | None
    duration_ms: int
    error: str | None
    outputs: dict[str, str]


class Approval(TypedDict):
    step: str | None
    index: int | None
    decision: str  # approved or rejected
    comment: str
    principal: str
    fingerprint: str
    request_seq: int
    request_commit: str
    via: str  # command or terminal


class RunFinishedFields(TypedDict):
    status: str
    failed_step: str | None
    error: str | None
    duration_ms: int
    continued_after_failure: list[str]
    handlers_run: list[str]
    handlers_failed: list[str]
    signal: int | None
    resumes: str | None


class RunFinishedSome(TypedDict, total=False):
    """The fields only some ``run.finished`` records carry."""

    reason: str  # abandoned


class RunFinished(RunFinishedFields, RunFinishedSome):
    """``run.finished``: how the run ended."""


__all__ = [
    "Actor",
    "Approval",
    "ApprovalDecision",
    "ApprovalRequest",
    "EventData",
    "FileEntry",
    "GenesisData",
    "GenesisSigner",
    "IgnoredVote",
    "KeyAdded",
    "KeyRevoked",
    "Operator",
    "Record",
    "ResumedFrom",
    "RunFinished",
    "RunStarted",
    "RunbookRef",
    "StepFields",
    "StepFinished",
    "StepFinishedSome",
    "StepStarted",
    "StepStartedByType",
    "StreamMeta",
    "Trigger",
    "Vote",
    "WitnessData",
    "WitnessHead",
]
