"""What approval records and requests say: the decisions, the request an approval step's
step.started carries (:func:`request_data`, :class:`ApprovalRequest`), the counted votes and
ignored records, and how a wait ended (:class:`ApprovalOutcome`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal, NamedTuple

from ledger import runbook, store
from ledger.format import shapes

__all__ = [
    "APPROVED",
    "DECISIONS",
    "INTERRUPTED",
    "REJECTED",
    "TIMEOUT",
    "VIA_COMMAND",
    "VIA_TERMINAL",
    "ApprovalOutcome",
    "ApprovalRequest",
    "Decision",
    "Ignored",
    "OutcomeDecision",
    "Vote",
    "request_data",
    "request_from",
]

APPROVED: Final = "approved"
REJECTED: Final = "rejected"
TIMEOUT: Final = "timeout"
INTERRUPTED: Final = "interrupted"
DECISIONS: Final = frozenset({APPROVED, REJECTED})

#: How an approval was given: ``ledger approve`` (``command``) or the run's terminal.
VIA_COMMAND: Final = "command"
VIA_TERMINAL: Final = "terminal"

Decision = Literal["approved", "rejected"]
OutcomeDecision = Literal["approved", "rejected", "timeout", "interrupted"]


def request_data(spec: runbook.ApprovalSpec, message: str | None) -> shapes.StepStartedByType:
    """The fields the engine adds to an approval step's ``step.started`` record.

    ``message`` is the rendered message with secrets redacted (or ``None``). Returns
    ``{"approval": {"approvers", "min_approvals", "message", "timeout_ms"}}``.
    """
    timeout_ms = None if spec.timeout_s is None else round(spec.timeout_s * 1000)
    return {
        "approval": {
            "approvers": list(spec.approvers),
            "min_approvals": spec.min_approvals,
            "message": message,
            "timeout_ms": timeout_ms,
        }
    }


@dataclass(frozen=True)
class ApprovalRequest:
    """An approval step a run is waiting at, as its ``step.started`` record says."""

    run_id: str
    step: str
    index: int | None
    seq: int
    commit: str
    approvers: tuple[str, ...]
    min_approvals: int
    message: str | None
    timeout_ms: int | None


def request_from(run_id: str, rec: store.StoredRecord) -> ApprovalRequest | None:
    data = rec.data_as(shapes.StepStarted)
    spec = data.get("approval")
    if not isinstance(spec, dict):
        return None
    approvers = spec.get("approvers")
    if not isinstance(approvers, list) or not all(isinstance(a, str) for a in approvers):
        return None
    minimum = spec.get("min_approvals", 1)
    message = spec.get("message")
    timeout_ms = spec.get("timeout_ms")
    index = data.get("index")
    return ApprovalRequest(
        run_id=run_id,
        step=str(data.get("step", "")),
        index=index if isinstance(index, int) else None,
        seq=rec.seq,
        commit=rec.commit_id,
        approvers=tuple(approvers),
        min_approvals=minimum if isinstance(minimum, int) and minimum >= 1 else 1,
        message=message if isinstance(message, str) else None,
        timeout_ms=timeout_ms if isinstance(timeout_ms, int) else None,
    )


class Vote(NamedTuple):
    """One counted approval (or the rejection): who, with which key, and where it is."""

    principal: str
    fingerprint: str
    seq: int
    commit: str


@dataclass(frozen=True)
class Ignored:
    """An approval record that did not count, and why."""

    seq: int
    commit: str
    principal: str
    reason: str


@dataclass(frozen=True)
class ApprovalOutcome:
    """How the wait at an approval step ended.

    ``decision`` is approved, rejected, timeout or interrupted. ``approvers`` are the
    counted approvals in seq order (one per principal); ``rejected_by`` is the rejection that
    ended the wait. ``comment`` joins the comments of the counted records
    (``principal: text``).
    """

    decision: OutcomeDecision
    approvers: list[Vote]
    comment: str
    request_seq: int
    required: int
    rejected_by: Vote | None = None
    ignored: list[Ignored] = field(default_factory=list)

    @property
    def approved(self) -> bool:
        return self.decision == APPROVED

    @property
    def step_status(self) -> str:
        """The ``status`` of the step's ``step.finished``: ok, rejected, timeout, interrupted."""
        return "ok" if self.decision == APPROVED else self.decision

    def finished_data(self) -> shapes.StepFinishedSome:
        """The ``approval`` field for the step's ``step.finished`` record."""

        def vote(v: Vote) -> shapes.Vote:
            return {
                "principal": v.principal,
                "fingerprint": v.fingerprint,
                "seq": v.seq,
                "commit": v.commit,
            }

        return {
            "approval": {
                "decision": self.decision,
                "request_seq": self.request_seq,
                "required": self.required,
                "approvers": [vote(v) for v in self.approvers],
                "rejected_by": vote(self.rejected_by) if self.rejected_by else None,
                "comment": self.comment,
                "ignored": [
                    {"seq": i.seq, "commit": i.commit, "principal": i.principal, "reason": i.reason}
                    for i in self.ignored
                ],
            }
        }
