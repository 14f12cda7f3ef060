"""Approval steps: a run waits until enough approvers sign an ``approval`` record.

The protocol (docs/APPROVALS.md has the full description):

1. The engine reaches an approval step and appends its ``step.started`` record with the
   field ``approval`` made by :func:`request_data` (approvers, min_approvals, the rendered
   and redacted message, the timeout). That record is the *request*; its seq identifies it.
2. The engine calls :func:`wait_for_approval`. It polls the ledger's branch and reads only
   the records appended since the last poll. Each ``approval`` record for this run, step
   and request is checked: its commit signature verifies, the signing key was trusted at
   that seq and ``actor.key`` names it, the principal the ledger trusts that key as is the
   one recorded and is among the step's approvers. A rejection by an approver ends the wait
   at once; otherwise the wait ends when ``min_approvals`` distinct principals approved, at
   the deadline, or when ``stop`` is set. Records that fail a check are ignored (and listed
   in the outcome), never counted.
3. Approvers append approval records with :func:`record_approval` (``ledger approve``),
   signed with their own key, from any process that can write the ledger. When the operator
   of the run is an approver and sits at a terminal, the engine may pass an ``interactive``
   callback: the operator's answer is appended the same way, signed with the operator's key,
   and counted by the same checks.

The engine then records the step's ``step.finished`` (see :meth:`ApprovalOutcome.finished_data`).
Nothing here prints or prompts: the interactive callback and ``notify`` belong to the caller.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple

import pygit2

from ledger import records
from ledger.errors import (
    ApprovalRefused,
    SignatureError,
    StorageError,
    UntrustedKey,
)
from ledger.runbook import ApprovalSpec
from ledger.signing import SigningKey, verify_signed_commit
from ledger.store import MAIN_REF, Appended, Ledger, Signer, StoredRecord

APPROVED: Final = "approved"
REJECTED: Final = "rejected"
TIMEOUT: Final = "timeout"
INTERRUPTED: Final = "interrupted"
DECISIONS: Final = frozenset({APPROVED, REJECTED})

#: How an approval was given: ``ledger approve`` (``command``) or the run's terminal.
VIA_COMMAND: Final = "command"
VIA_TERMINAL: Final = "terminal"

#: Seconds between two looks at the ledger's branch while waiting.
POLL_INTERVAL_S: Final = 0.2
#: Longest comment accepted (characters).
MAX_COMMENT_CHARS: Final = 4096

Decision = Literal["approved", "rejected"]
OutcomeDecision = Literal["approved", "rejected", "timeout", "interrupted"]

#: ``interactive(question)`` asks the operator; returns (approved, comment). It runs in a
#: worker thread. If it also has a ``cancel()`` method, that is called when the wait ends
#: for another reason, so the prompt can stop reading the terminal.
Interactive = Callable[[str], tuple[bool, str]]


# --------------------------------------------------------------------------- the request


def request_data(spec: ApprovalSpec, message: str | None) -> dict[str, Any]:
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


def _request_from(run_id: str, rec: StoredRecord) -> ApprovalRequest | None:
    data = rec.data
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


def pending_request(ledger: Ledger, run_id: str, step: str) -> ApprovalRequest:
    """The approval request the run ``run_id`` is waiting on at ``step``.

    :class:`ApprovalRefused` (with what the run is doing instead) when the run does not
    exist, has finished, has not reached the step, the step is not an approval step, or the
    step was already decided.
    """
    records.check_run_id(run_id)
    recs = ledger.run_records(run_id)
    if not recs:
        raise ApprovalRefused(
            f"there is no run {run_id} in the ledger at {ledger.path}.",
            hint="Check the run id ('ledger log' lists runs), and that --ledger points at the "
            "ledger the run writes to.",
        )
    finished = [r for r in recs if r.kind == records.KIND_RUN_FINISHED]
    if finished:
        status = finished[-1].data.get("status", "unknown")
        raise ApprovalRefused(
            f"run {run_id} is not waiting for an approval: it already finished (status {status}).",
            hint="Approvals count only while the run waits at the approval step.",
        )
    started = [
        r for r in recs if r.kind == records.KIND_STEP_STARTED and r.data.get("step") == step
    ]
    if not started:
        current = _current_step(recs)
        where = f"it is at step {current!r}" if current else "it has not started a step yet"
        raise ApprovalRefused(
            f"run {run_id} is not waiting at step {step!r}: the run has not reached that "
            f"step ({where}).",
            hint="Check the step name; approve once the run waits there ('ledger log --run "
            f"{run_id}' shows its records).",
        )
    last = started[-1]
    request = _request_from(run_id, last)
    if request is None:
        raise ApprovalRefused(
            f"step {step!r} of run {run_id} is not an approval step (its step.started record "
            f"seq {last.seq} asks for no approval).",
            hint="Only steps with 'approval:' in the runbook take approvals.",
        )
    done = [
        r
        for r in recs
        if r.kind == records.KIND_STEP_FINISHED and r.data.get("step") == step and r.seq > last.seq
    ]
    if done:
        status = done[-1].data.get("status", "unknown")
        raise ApprovalRefused(
            f"step {step!r} of run {run_id} is no longer waiting: it finished with status "
            f"{status} (seq {done[-1].seq}).",
            hint="Approvals count only while the run waits at the approval step.",
        )
    return request


def _current_step(recs: Sequence[StoredRecord]) -> str | None:
    for rec in reversed(recs):
        if rec.kind == records.KIND_STEP_STARTED:
            step = rec.data.get("step")
            return step if isinstance(step, str) else None
    return None


def pending_requests(ledger: Ledger) -> list[ApprovalRequest]:
    """Every approval request that an unfinished run is waiting on right now."""
    out: list[ApprovalRequest] = []
    for run_id in ledger.unfinished_runs():
        step = _current_step(ledger.run_records(run_id))
        if step is None:
            continue
        try:
            out.append(pending_request(ledger, run_id, step))
        except ApprovalRefused:
            continue
    return out


# --------------------------------------------------------------------------- giving approvals


def _check_comment(comment: str) -> str:
    if len(comment) > MAX_COMMENT_CHARS:
        raise ApprovalRefused(
            f"the comment is {len(comment)} characters long; at most {MAX_COMMENT_CHARS} "
            "are recorded.",
            hint="Shorten the comment; link to a longer text instead.",
        )
    if "\0" in comment:
        raise ApprovalRefused("the comment contains a NUL byte.", hint="Remove it.")
    return comment


def record_approval(
    ledger: Ledger,
    run_id: str,
    step: str,
    *,
    key: SigningKey,
    decision: Decision = APPROVED,
    comment: str = "",
    via: str = VIA_COMMAND,
) -> Appended:
    """Append an ``approval`` record for ``step`` of ``run_id``, signed with ``key``.

    The key must be trusted by the ledger (:class:`UntrustedKey` otherwise), the run must be
    waiting at the step (:func:`pending_request`), the principal the ledger trusts the key
    as must be among the step's approvers, and that principal must not have approved this
    request already (:class:`ApprovalRefused` otherwise). A principal who approved may still
    reject. The waiting run checks the record again on its own.
    """
    if decision not in DECISIONS:
        raise ApprovalRefused(f"{decision!r} is not a decision; use approved or rejected.")
    _check_comment(comment)
    fingerprint = key.public_key.fingerprint
    signer = ledger.trusted_signer(fingerprint)
    if signer is None:
        raise UntrustedKey(
            f"the key {fingerprint} is not trusted by the ledger at {ledger.path}, so its "
            "approval would not count.",
            hint="Approve with your own key after a trusted signer added it with 'ledger "
            "keys add PRINCIPAL KEY.pub' (see 'ledger keys list').",
        )
    request = pending_request(ledger, run_id, step)
    principal = signer.principal
    if principal not in request.approvers:
        raise ApprovalRefused(
            f"{principal} (key {fingerprint}) may not approve step {step!r} of run "
            f"{run_id}: the step's approvers are {', '.join(request.approvers)}.",
            hint="Ask one of them to approve, with their own key.",
        )
    for rec in ledger.run_records(run_id):
        if rec.kind != records.KIND_APPROVAL or rec.seq <= request.seq:
            continue
        data = rec.data
        if data.get("request_seq") != request.seq or data.get("principal") != principal:
            continue
        if data.get("decision") == decision:
            raise ApprovalRefused(
                f"{principal} already {decision} step {step!r} of run {run_id} "
                f"(seq {rec.seq}); the same principal counts once.",
                hint=f"{request.min_approvals} distinct approvers are needed; ask another "
                "approver.",
            )
    data = {
        "step": step,
        "index": request.index,
        "decision": decision,
        "comment": comment,
        "principal": principal,
        "fingerprint": fingerprint,
        "request_seq": request.seq,
        "request_commit": request.commit,
        "via": via,
    }
    summary = f"approval: {step} {decision} by {principal}"
    return ledger.append(
        records.KIND_APPROVAL, data, key=key, principal=principal, run=run_id, summary=summary
    )


# --------------------------------------------------------------------------- waiting


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

    def finished_data(self) -> dict[str, Any]:
        """The ``approval`` field for the step's ``step.finished`` record."""

        def vote(v: Vote) -> dict[str, Any]:
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


def _trusted_at(signers: Sequence[Signer], fingerprint: str, seq: int) -> Signer | None:
    """The signer with ``fingerprint`` trusted at ``seq`` (FORMAT.md §7), or ``None``."""
    for s in signers:
        if s.fingerprint != fingerprint:
            continue
        if s.added_seq < seq and (s.revoked_seq is None or s.revoked_seq > seq):
            return s
    return None


def check_approval(
    ledger: Ledger, rec: StoredRecord, request: ApprovalRequest
) -> tuple[Vote, str, str] | Ignored | None:
    """Check one record against ``request``.

    ``None`` when the record is not an approval for this request at all; :class:`Ignored`
    when it is one that must not count; else (vote, decision, comment).
    """
    if rec.kind != records.KIND_APPROVAL or rec.run != request.run_id:
        return None
    data = rec.data
    if data.get("step") != request.step or data.get("request_seq") != request.seq:
        return None
    claimed = str(data.get("principal", ""))

    def ignore(reason: str) -> Ignored:
        return Ignored(rec.seq, rec.commit_id, claimed, reason)

    decision = data.get("decision")
    if decision not in DECISIONS:
        return ignore(f"decision {decision!r} is neither approved nor rejected")
    comment = data.get("comment", "")
    if not isinstance(comment, str):
        return ignore("the comment is not text")
    trailers = records.parse_trailers(rec.message)
    if trailers.get("Ledger-Record-Sha256") != records.sha256_hex(rec.raw):
        return ignore("the record's bytes do not match the digest its commit signs")
    try:
        raw = ledger.repo.odb.read(pygit2.Oid(hex=rec.commit_id))[1]
        _payload, public = verify_signed_commit(raw)
    except SignatureError as exc:
        return ignore(f"the commit signature does not verify: {exc.message}")
    except (KeyError, ValueError, pygit2.GitError) as exc:
        raise StorageError(
            f"cannot read commit {rec.commit_id} of {ledger.path}: {exc}.",
            hint="Run 'ledger verify' to see what is damaged.",
        ) from None
    fingerprint = public.fingerprint
    actor = rec.record.get("actor")
    actor_key = actor.get("key") if isinstance(actor, dict) else None
    actor_principal = actor.get("principal") if isinstance(actor, dict) else None
    if actor_key != fingerprint or data.get("fingerprint") != fingerprint:
        return ignore(f"signed by {fingerprint}, but the record names another key")
    signer = _trusted_at(ledger.signers(), fingerprint, rec.seq)
    if signer is None:
        return ignore(f"the key {fingerprint} was not trusted by the ledger at seq {rec.seq}")
    if claimed != signer.principal or actor_principal != signer.principal:
        return ignore(
            f"the record claims principal {claimed!r}, but the ledger trusts {fingerprint} as "
            f"{signer.principal!r}"
        )
    if signer.principal not in request.approvers:
        return ignore(
            f"{signer.principal} is not among the approvers ({', '.join(request.approvers)})"
        )
    vote = Vote(signer.principal, fingerprint, rec.seq, rec.commit_id)
    return vote, str(decision), comment


class _Prompt:
    """Runs the interactive callback in a worker thread."""

    def __init__(self, interactive: Interactive, question: str) -> None:
        self.interactive = interactive
        self.answer: tuple[bool, str] | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(
            target=self._run, args=(question,), name="approval-prompt", daemon=True
        )
        self.thread.start()

    def _run(self, question: str) -> None:
        try:
            self.answer = self.interactive(question)
        except BaseException as exc:  # noqa: BLE001  (handed to the waiting thread)
            self.error = exc
        finally:
            self.done.set()

    def cancel(self) -> None:
        cancel = getattr(self.interactive, "cancel", None)
        if callable(cancel):
            cancel()


def _question(request: ApprovalRequest, principal: str) -> str:
    head = f"Approve step {request.step!r} of run {request.run_id} as {principal}?"
    return f"{request.message}\n{head}" if request.message else head


def _find_request(
    ledger: Ledger, run_id: str, step: str, request_seq: int | None
) -> ApprovalRequest:
    if request_seq is not None:
        rec = ledger.record(request_seq)
        request = _request_from(run_id, rec)
        if request is None or rec.run != run_id or rec.kind != records.KIND_STEP_STARTED:
            raise ApprovalRefused(
                f"record seq {request_seq} is not the approval request of step {step!r} of "
                f"run {run_id}.",
                hint="Pass the seq of the step's step.started record.",
            )
        return request
    return pending_request(ledger, run_id, step)


def wait_for_approval(
    ledger: Ledger,
    run_id: str,
    step_name: str,
    spec: ApprovalSpec,
    *,
    stop: threading.Event,
    deadline: float | None = None,
    interactive: Interactive | None = None,
    operator_key: SigningKey | None = None,
    request_seq: int | None = None,
    notify: Callable[[str], None] | None = None,
    poll_interval: float = POLL_INTERVAL_S,
) -> ApprovalOutcome:
    """Wait until the approval step ``step_name`` of ``run_id`` is decided.

    Call it after the step's ``step.started`` record (with :func:`request_data`) is in the
    ledger; ``request_seq`` is that record's seq (looked up when omitted). ``spec`` gives
    the approvers and ``min_approvals``. ``deadline`` is a :func:`time.monotonic` time
    (default: ``spec.timeout_s`` from now; no limit when neither is set). Setting ``stop``
    ends the wait with ``interrupted`` within one poll interval.

    When ``interactive`` is given and ``operator_key`` is trusted as one of the approvers,
    the operator is asked once; the answer is appended as an approval record signed with
    ``operator_key`` (``via: terminal``) and counted like any other. ``notify`` receives
    progress lines for the operator (what is awaited, what counted, what was ignored).

    Approvals already in the ledger when the wait starts count too. Errors writing the
    operator's answer propagate (:class:`~ledger.errors.LedgerError`).
    """
    request = _find_request(ledger, run_id, step_name, request_seq)
    approvers = tuple(spec.approvers)
    request = ApprovalRequest(
        run_id=request.run_id,
        step=request.step,
        index=request.index,
        seq=request.seq,
        commit=request.commit,
        approvers=approvers,
        min_approvals=spec.min_approvals,
        message=request.message,
        timeout_ms=request.timeout_ms,
    )
    required = spec.min_approvals
    if deadline is None and spec.timeout_s is not None:
        deadline = time.monotonic() + spec.timeout_s

    def say(text: str) -> None:
        if notify is not None:
            notify(text)

    counted: dict[str, Vote] = {}
    comments: dict[str, str] = {}
    ignored: list[Ignored] = []

    def outcome(decision: OutcomeDecision, rejected_by: Vote | None = None) -> ApprovalOutcome:
        votes = sorted(counted.values(), key=lambda v: v.seq)
        texts = [f"{p}: {c}" for p, c in comments.items() if c]
        return ApprovalOutcome(
            decision=decision,
            approvers=votes,
            comment="; ".join(texts),
            request_seq=request.seq,
            required=required,
            rejected_by=rejected_by,
            ignored=ignored,
        )

    operator: str | None = None
    if operator_key is not None:
        signer = ledger.trusted_signer(operator_key.public_key.fingerprint)
        operator = signer.principal if signer is not None else None
    prompt: _Prompt | None = None
    prompt_wanted = interactive is not None and operator is not None and operator in approvers

    say(
        f"Waiting for {required} approval{'s' if required != 1 else ''} of step "
        f"{step_name!r} by {', '.join(approvers)}. Approve from another shell with: "
        f"ledger approve {run_id} {step_name} --key KEY  (or --reject)"
    )
    last_seen = request.seq
    last_target: str | None = None
    try:
        while True:
            ref = ledger.repo.references.get(MAIN_REF)
            target = str(ref.target) if ref is not None else None
            if target != last_target:
                last_target = target
                head = ledger.head()
                top = head.seq if head is not None else last_seen
                for seq in range(last_seen + 1, top + 1):
                    rec = ledger.record(seq)
                    last_seen = seq
                    checked = check_approval(ledger, rec, request)
                    if checked is None:
                        continue
                    if isinstance(checked, Ignored):
                        ignored.append(checked)
                        say(
                            f"Ignored the approval record seq {seq} "
                            f"({checked.principal or 'no principal'}): {checked.reason}."
                        )
                        continue
                    vote, decision, comment = checked
                    if comment:
                        comments[vote.principal] = comment
                    if decision == REJECTED:
                        counted.pop(vote.principal, None)
                        say(f"Rejected by {vote.principal} (seq {seq}).")
                        return outcome(REJECTED, rejected_by=vote)
                    if vote.principal in counted:
                        say(f"{vote.principal} approved again (seq {seq}); counted once.")
                        continue
                    counted[vote.principal] = vote
                    say(f"Approved by {vote.principal} (seq {seq}): {len(counted)} of {required}.")
                    if len(counted) >= required:
                        return outcome(APPROVED)
            if prompt is not None and prompt.done.is_set():
                finished, prompt = prompt, None
                if finished.error is not None:
                    if isinstance(finished.error, EOFError | OSError):
                        say("No answer from the terminal; waiting for approvals in the ledger.")
                    else:
                        raise finished.error
                elif finished.answer is not None and operator_key is not None:
                    ok, text = finished.answer
                    try:
                        record_approval(
                            ledger,
                            run_id,
                            step_name,
                            key=operator_key,
                            decision=APPROVED if ok else REJECTED,
                            comment=text,
                            via=VIA_TERMINAL,
                        )
                    except ApprovalRefused as exc:
                        say(f"Your answer was not recorded: {exc.message}")
                    continue  # read the new record at once
            if prompt_wanted and interactive is not None and operator is not None:
                prompt_wanted = False
                if operator not in counted:
                    prompt = _Prompt(interactive, _question(request, operator))
            if stop.is_set():
                return outcome(INTERRUPTED)
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                say(f"No decision on step {step_name!r} before the timeout.")
                return outcome(TIMEOUT)
            wait = poll_interval if deadline is None else min(poll_interval, deadline - now)
            stop.wait(max(wait, 0.0))
    finally:
        if prompt is not None:
            prompt.cancel()


__all__ = [
    "APPROVED",
    "INTERRUPTED",
    "POLL_INTERVAL_S",
    "REJECTED",
    "TIMEOUT",
    "VIA_COMMAND",
    "VIA_TERMINAL",
    "ApprovalOutcome",
    "ApprovalRequest",
    "Ignored",
    "Interactive",
    "Vote",
    "check_approval",
    "pending_request",
    "pending_requests",
    "record_approval",
    "request_data",
    "wait_for_approval",
]
