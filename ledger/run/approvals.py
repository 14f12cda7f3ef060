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

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Final

import pygit2

from ledger import errors, keys, runbook, store
from ledger.format import records, shapes
from ledger.run import approval_records
from ledger.run.approval_records import (
    APPROVED,
    INTERRUPTED,
    REJECTED,
    TIMEOUT,
    VIA_COMMAND,
    VIA_TERMINAL,
    ApprovalOutcome,
    ApprovalRequest,
    Decision,
    Ignored,
    Vote,
    request_data,
)

#: Seconds between two looks at the ledger's branch while waiting.
POLL_INTERVAL_S: Final = 0.2
#: Longest comment accepted (characters).
MAX_COMMENT_CHARS: Final = 4096


#: ``interactive(question)`` asks the operator; returns (approved, comment). It runs in a
#: worker thread. If it also has a ``cancel()`` method, that is called when the wait ends
#: for another reason, so the prompt can stop reading the terminal.
Interactive = Callable[[str], tuple[bool, str]]


# --------------------------------------------------------------------------- requests


def pending_request(
    ledger: store.Ledger, run_id: str, step: str, *, at: str | None = None
) -> ApprovalRequest:
    """The approval request the run ``run_id`` is waiting on at ``step``, read from the
    chain ending at ``at`` (default: the verified head, :meth:`Ledger.verified_head`).

    :class:`ApprovalRefused` (with what the run is doing instead) when the run does not
    exist, has finished, has not reached the step, the step is not an approval step, or the
    step was already decided.
    """
    records.check_run_id(run_id)
    at = ledger.verified_head(at)
    recs = ledger.usable_run_records(run_id, at=at)
    if not recs:
        raise errors.UnknownRun(
            f"the ledger at {ledger.path} has no run {run_id}, so there is nothing to approve.",
            hint="Check the run id ('ledger log --kind run.started' lists runs), and that "
            "--ledger points at the ledger the run writes to.",
        )
    finished = [r for r in recs if r.kind == records.KIND_RUN_FINISHED]
    if finished:
        status = finished[-1].data_as(shapes.RunFinished).get("status", "unknown")
        raise errors.ApprovalRefused(
            f"run {run_id} is not waiting for an approval: it already finished (status {status}).",
            hint="Approvals count only while the run waits at the approval step.",
        )
    started = [
        r for r in recs if r.kind == records.KIND_STEP_STARTED and r.data.get("step") == step
    ]
    if not started:
        current = _current_step(recs)
        where = f"it is at step {current!r}" if current else "it has not started a step yet"
        raise errors.ApprovalRefused(
            f"run {run_id} is not waiting at step {step!r}: the run has not reached that "
            f"step ({where}).",
            hint="Check the step name; approve once the run waits there ('ledger log --run "
            f"{run_id}' shows its records).",
        )
    # Its commit id is recorded in each approval: the chain's own commit, not the index's.
    last = ledger.record(started[-1].seq, at=at, signed=True)
    request = approval_records.request_from(run_id, last)
    if request is None:
        raise errors.ApprovalRefused(
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
        raise errors.ApprovalRefused(
            f"step {step!r} of run {run_id} is no longer waiting: it finished with status "
            f"{status} (seq {done[-1].seq}).",
            hint="Approvals count only while the run waits at the approval step.",
        )
    return request


def _current_step(recs: Sequence[store.StoredRecord]) -> str | None:
    for rec in reversed(recs):
        if rec.kind == records.KIND_STEP_STARTED:
            step = rec.data_as(shapes.StepStarted).get("step")
            return step if isinstance(step, str) else None
    return None


def pending_requests(ledger: store.Ledger) -> list[ApprovalRequest]:
    """Every approval request that an unfinished run is waiting on right now (on the
    verified chain)."""
    out: list[ApprovalRequest] = []
    at = ledger.verified_head()
    for run_id in ledger.unfinished_runs(at=at):
        step = _current_step(ledger.usable_run_records(run_id, at=at))
        if step is None:
            continue
        try:
            out.append(pending_request(ledger, run_id, step, at=at))
        except errors.ApprovalRefused:
            continue
    return out


# --------------------------------------------------------------------------- giving approvals


def _check_comment(comment: str) -> str:
    if len(comment) > MAX_COMMENT_CHARS:
        raise errors.ApprovalRefused(
            f"the comment is {len(comment)} characters long; at most {MAX_COMMENT_CHARS} "
            "are recorded.",
            hint="Shorten the comment; link to a longer text instead.",
        )
    if "\0" in comment:
        raise errors.ApprovalRefused("the comment contains a NUL byte.", hint="Remove it.")
    return comment


def record_approval(
    ledger: store.Ledger,
    run_id: str,
    step: str,
    *,
    key: keys.SigningIdentity,
    decision: Decision = APPROVED,
    comment: str = "",
    via: str = VIA_COMMAND,
) -> store.Appended:
    """Append an ``approval`` record for ``step`` of ``run_id``, signed with ``key``.

    The key must be trusted by the ledger (:class:`UntrustedKey` otherwise), the run must be
    waiting at the step (:func:`pending_request`), the principal the ledger trusts the key
    as must be among the step's approvers, and that principal must not have approved this
    request already (:class:`ApprovalRefused` otherwise). A principal who approved may still
    reject. The waiting run checks the record again on its own.
    """
    if decision not in approval_records.DECISIONS:
        raise errors.ApprovalRefused(f"{decision!r} is not a decision; use approved or rejected.")
    _check_comment(comment)
    fingerprint = key.public_key.fingerprint
    view = ledger.trust_view()
    if not view.ok and not ledger.allow_unverified:
        raise view.refuse(ledger.path, "no approval is recorded in it")
    signer = view.trusted(fingerprint)
    if signer is None:
        raise errors.UntrustedKey(
            f"the key {fingerprint} is not trusted by the ledger at {ledger.path}, so its "
            "approval would not count.",
            hint="Approve with your own key after a trusted signer added it with 'ledger "
            "keys add PRINCIPAL KEY.pub' (see 'ledger keys list').",
        )
    request = pending_request(ledger, run_id, step, at=view.head)
    principal = signer.principal
    if principal not in request.approvers:
        raise errors.ApprovalRefused(
            f"{principal} (key {fingerprint}) may not approve step {step!r} of run "
            f"{run_id}: the step's approvers are {', '.join(request.approvers)}.",
            hint="Ask one of them to approve, with their own key.",
        )
    for rec in ledger.usable_run_records(run_id, at=view.head):
        if rec.kind != records.KIND_APPROVAL or rec.seq <= request.seq:
            continue
        earlier = rec.data_as(shapes.Approval)
        if earlier.get("request_seq") != request.seq or earlier.get("principal") != principal:
            continue
        if earlier.get("decision") == decision:
            raise errors.ApprovalRefused(
                f"{principal} already {decision} step {step!r} of run {run_id} "
                f"(seq {rec.seq}); the same principal counts once.",
                hint=f"{request.min_approvals} distinct approvers are needed; ask another "
                "approver.",
            )
    data: shapes.Approval = {
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


def _trusted_at(signers: Sequence[store.Signer], fingerprint: str, seq: int) -> store.Signer | None:
    """The signer with ``fingerprint`` trusted at ``seq`` (FORMAT.md §7), or ``None``."""
    for s in signers:
        if s.fingerprint != fingerprint:
            continue
        if s.added_seq < seq and (s.revoked_seq is None or s.revoked_seq > seq):
            return s
    return None


def check_approval(
    ledger: store.Ledger, rec: store.StoredRecord, request: ApprovalRequest
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
    if decision not in approval_records.DECISIONS:
        return ignore(f"decision {decision!r} is neither approved nor rejected")
    comment = data.get("comment", "")
    if not isinstance(comment, str):
        return ignore("the comment is not text")
    trailers = records.parse_trailers(rec.message)
    if trailers.get("Ledger-Record-Sha256") != records.sha256_hex(rec.raw):
        return ignore("the record's bytes do not match the digest its commit signs")
    try:
        raw = ledger.repo.odb.read(pygit2.Oid(hex=rec.commit_id))[1]
        _payload, public = keys.verify_signed_commit(raw)
    except errors.SignatureError as exc:
        return ignore(f"the commit signature does not verify: {exc.message}")
    except (KeyError, ValueError, pygit2.GitError) as exc:
        raise errors.StorageError(
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
    ledger: store.Ledger, run_id: str, step: str, request_seq: int | None
) -> ApprovalRequest:
    if request_seq is not None:
        rec = ledger.record(request_seq, signed=True)  # (its commit id is recorded)
        request = approval_records.request_from(run_id, rec)
        if request is None or rec.run != run_id or rec.kind != records.KIND_STEP_STARTED:
            raise errors.ApprovalRefused(
                f"record seq {request_seq} is not the approval request of step {step!r} of "
                f"run {run_id}.",
                hint="Pass the seq of the step's step.started record.",
            )
        return request
    return pending_request(ledger, run_id, step)


class _Tally:
    """The votes counted so far at one request, the comments, and what was ignored."""

    def __init__(
        self, request: ApprovalRequest, required: int, notify: Callable[[str], None] | None
    ) -> None:
        self.request = request
        self.required = required
        self.notify = notify
        self.counted: dict[str, Vote] = {}
        self.comments: dict[str, str] = {}
        self.ignored: list[Ignored] = []

    def say(self, text: str) -> None:
        if self.notify is not None:
            self.notify(text)

    def outcome(
        self, decision: approval_records.OutcomeDecision, rejected_by: Vote | None = None
    ) -> ApprovalOutcome:
        votes = sorted(self.counted.values(), key=lambda v: v.seq)
        texts = [f"{p}: {c}" for p, c in self.comments.items() if c]
        return ApprovalOutcome(
            decision=decision,
            approvers=votes,
            comment="; ".join(texts),
            request_seq=self.request.seq,
            required=self.required,
            rejected_by=rejected_by,
            ignored=self.ignored,
        )

    def take(self, checked: tuple[Vote, str, str] | Ignored) -> ApprovalOutcome | None:
        """Count one checked approval record; the outcome once the wait is decided."""
        if isinstance(checked, Ignored):
            self.ignored.append(checked)
            self.say(
                f"Ignored the approval record seq {checked.seq} "
                f"({checked.principal or 'no principal'}): {checked.reason}."
            )
            return None
        vote, decision, comment = checked
        if comment:
            self.comments[vote.principal] = comment
        if decision == REJECTED:
            self.counted.pop(vote.principal, None)
            self.say(f"Rejected by {vote.principal} (seq {vote.seq}).")
            return self.outcome(REJECTED, rejected_by=vote)
        if vote.principal in self.counted:
            self.say(f"{vote.principal} approved again (seq {vote.seq}); counted once.")
            return None
        self.counted[vote.principal] = vote
        self.say(
            f"Approved by {vote.principal} (seq {vote.seq}): {len(self.counted)} of "
            f"{self.required}."
        )
        return self.outcome(APPROVED) if len(self.counted) >= self.required else None


class _NewRecords:
    """The records appended after a seq, read only when the branch has moved."""

    def __init__(self, ledger: store.Ledger, seq: int) -> None:
        self.ledger = ledger
        self.last_seen = seq
        self.last_target: str | None = None

    def read(self) -> Iterator[store.StoredRecord]:
        """The new records, read from the verified view: the chain up to the new head is
        verified (incrementally) first; :class:`VerificationFailed` if it does not verify."""
        ref = self.ledger.repo.references.get(store.MAIN_REF)
        target = str(ref.target) if ref is not None else None
        if target == self.last_target:
            return
        self.last_target = target
        view = self.ledger.trust_view()
        if not view.ok and not self.ledger.allow_unverified:
            raise view.refuse(self.ledger.path, "no approval in it is counted")
        top = view.seq if view.seq is not None else self.last_seen
        failed = view.failed_seqs()  # (with --allow-unverified: they count for nothing)
        for seq in range(self.last_seen + 1, top + 1):
            self.last_seen = seq
            if seq not in failed:
                # (signed: the commit ids of votes and ignored records are recorded)
                yield self.ledger.record(seq, at=view.head, signed=True)


def _operator(ledger: store.Ledger, operator_key: keys.SigningIdentity | None) -> str | None:
    """The principal the ledger trusts the operator's key as, if any."""
    if operator_key is None:
        return None
    signer = ledger.trusted_signer(operator_key.public_key.fingerprint)
    return signer.principal if signer is not None else None


def _record_answer(
    ledger: store.Ledger,
    run_id: str,
    step_name: str,
    finished: _Prompt,
    operator_key: keys.SigningIdentity | None,
    tally: _Tally,
) -> bool:
    """Append the operator's answer from the terminal; whether a record may have been added."""
    if finished.error is not None:
        if isinstance(finished.error, EOFError | OSError):
            tally.say("No answer from the terminal; waiting for approvals in the ledger.")
            return False
        raise finished.error
    if finished.answer is None or operator_key is None:
        return False
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
    except errors.ApprovalRefused as exc:
        tally.say(f"Your answer was not recorded: {exc.message}")
    return True


def wait_for_approval(
    ledger: store.Ledger,
    run_id: str,
    step_name: str,
    spec: runbook.ApprovalSpec,
    *,
    stop: threading.Event,
    deadline: float | None = None,
    interactive: Interactive | None = None,
    operator_key: keys.SigningIdentity | None = None,
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
    request = dataclasses.replace(
        _find_request(ledger, run_id, step_name, request_seq),
        approvers=tuple(spec.approvers),
        min_approvals=spec.min_approvals,
    )
    if deadline is None and spec.timeout_s is not None:
        deadline = time.monotonic() + spec.timeout_s
    tally = _Tally(request, spec.min_approvals, notify)
    operator = _operator(ledger, operator_key)
    prompt: _Prompt | None = None
    prompt_wanted = interactive is not None and operator is not None and operator in spec.approvers
    tally.say(
        f"Waiting for {tally.required} approval{'s' if tally.required != 1 else ''} of step "
        f"{step_name!r} by {', '.join(request.approvers)}. Approve from another shell with: "
        f"ledger approve {run_id} {step_name} --key KEY  (or --reject)"
    )
    new_records = _NewRecords(ledger, request.seq)
    try:
        while True:
            for rec in new_records.read():
                checked = check_approval(ledger, rec, request)
                decided = tally.take(checked) if checked is not None else None
                if decided is not None:
                    return decided
            if prompt is not None and prompt.done.is_set():
                finished, prompt = prompt, None
                if _record_answer(ledger, run_id, step_name, finished, operator_key, tally):
                    continue  # read the new record at once
            if prompt_wanted and interactive is not None and operator is not None:
                prompt_wanted = False
                if operator not in tally.counted:
                    prompt = _Prompt(interactive, _question(request, operator))
            if stop.is_set():
                return tally.outcome(INTERRUPTED)
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                tally.say(f"No decision on step {step_name!r} before the timeout.")
                return tally.outcome(TIMEOUT)
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
    "Decision",
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
