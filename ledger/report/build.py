"""Building the report model from records: a pure function of the records, an attachment
reader, and what the caller found out about verification and remotes (:func:`build_report`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from ledger import errors
from ledger.report import fields, mdsafe, model

EXCERPT_LINES = 20


def _ref(rec: model.RecordLike) -> model.RecordRef:
    r = rec.record
    actor = fields.as_dict(r.get("actor"))
    run = r.get("run")
    return model.RecordRef(
        seq=rec.seq,
        kind=fields.as_str(r.get("kind")),
        time=fields.as_str(r.get("time")),
        commit=rec.commit_id,
        principal=fields.as_str(actor.get("principal")),
        fingerprint=fields.as_str(actor.get("key")),
        host=fields.as_str(r.get("host")),
        run=run if isinstance(run, str) else None,
    )


def _files(rec: model.RecordLike) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, meta in fields.as_dict(rec.record.get("files")).items():
        path = fields.as_dict(meta).get("path")
        if isinstance(path, str):
            out[str(name)] = path
    return out


def _duration_between(start: str | None, end: str | None) -> int | None:
    if not start or not end:
        return None
    try:
        a = datetime.strptime(start, "%Y-%m-%dT%H:%M:%S.%fZ")
        b = datetime.strptime(end, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return None
    return int((b - a).total_seconds() * 1000)


def _excerpt(
    stream: str, finished: model.RecordLike, read_blob: model.BlobReader, lines: int
) -> model.OutputExcerpt | None:
    meta = fields.as_dict(fields.as_dict(finished.record.get("data")).get(stream))
    path = _files(finished).get(stream)
    if path is None and not meta:
        return None
    text, omitted = "", 0
    if path is not None:
        try:
            blob = read_blob(path)
        except errors.InputError:
            blob = b""
        text, omitted = mdsafe.tail_lines(blob, lines)
    return model.OutputExcerpt(
        stream=stream,
        text=text,
        lines_omitted=omitted,
        size=fields.as_int(meta.get("size")),
        sha256=meta.get("sha256") if isinstance(meta.get("sha256"), str) else None,
        capture_truncated=meta.get("truncated") is True,
        path=path,
    )


@dataclass
class _AttemptBuilder:
    step: str
    index: int | None
    attempt: int
    started: model.RecordLike | None = None
    finished: model.RecordLike | None = None

    def build(self, read_blob: model.BlobReader, lines: int) -> model.Attempt:
        s = fields.as_dict(self.started.record.get("data")) if self.started else {}
        f = fields.as_dict(self.finished.record.get("data")) if self.finished else {}
        started_at = fields.as_str(self.started.record.get("time")) if self.started else None
        finished_at = fields.as_str(self.finished.record.get("time")) if self.finished else None
        status = fields.as_str(f.get("status"), "unknown") if self.finished else "unfinished"
        streams: list[model.OutputExcerpt] = []
        if self.finished is not None:
            for name in ("stdout", "stderr"):
                ex = _excerpt(name, self.finished, read_blob, lines)
                if ex is not None:
                    streams.append(ex)
        # Failures show the tail of stderr, anything else the tail of stdout; the other
        # stream stands in when the preferred one is empty.
        by_name = {e.stream: e for e in streams if e.text}
        prefer = ("stderr", "stdout") if status in model.FAILED_STATUSES else ("stdout", "stderr")
        excerpt = next((by_name[n] for n in prefer if n in by_name), None)
        duration = fields.as_int(f.get("duration_ms"))
        if duration is None:
            duration = _duration_between(started_at, finished_at)
        refs = [_ref(r) for r in (self.started, self.finished) if r is not None]
        command = s.get("command", f.get("command"))
        handler = s.get("handler", f.get("handler"))
        approval = fields.as_dict(s.get("approval"))
        approvers = approval.get("approvers")
        return model.Attempt(
            step=self.step,
            index=self.index,
            attempt=self.attempt,
            handler=handler is True,
            status=status,
            started=started_at,
            finished=finished_at,
            duration_ms=duration,
            exit_code=fields.as_int(f.get("exit_code")),
            command=command if isinstance(command, str) else None,
            shell=s.get("shell") if isinstance(s.get("shell"), str) else None,
            cwd=s.get("cwd") if isinstance(s.get("cwd"), str) else None,
            error=fields.as_str(f.get("error")) or None,
            outputs=fields.sorted_items(f.get("outputs")),
            excerpt=excerpt,
            streams=streams,
            records=refs,
            type=fields.as_str(s.get("type")) or ("approval" if approval else "command"),
            reason=fields.as_str(f.get("reason")) or None,
            signal=fields.as_int(f.get("signal")),
            approval_message=fields.as_str(approval.get("message")) or None,
            approvers=sorted(fields.as_str(a) for a in approvers)
            if isinstance(approvers, list)
            else [],
            min_approvals=fields.as_int(approval.get("min_approvals")),
            # Records written before on_cancel/always existed: a handler is on_failure.
            phase=fields.as_str(s.get("phase", f.get("phase")))
            or ("on_failure" if handler is True else "main"),
        )


def _attempts(
    ordered: Sequence[model.RecordLike], read_blob: model.BlobReader, lines: int
) -> list[model.Attempt]:
    """The attempts of a run's step records (in seq order), in order of their first record.

    A step.started record for an attempt that already started begins a new builder under the
    same key; the key then keeps only the newest builder.
    """
    builders: dict[tuple[str, int | None, int], _AttemptBuilder] = {}
    order: list[tuple[str, int | None, int]] = []
    for r in ordered:
        kind = r.record.get("kind")
        if kind not in ("step.started", "step.finished"):
            continue
        data = fields.as_dict(r.record.get("data"))
        name = fields.as_str(data.get("step"), "?")
        number = fields.as_int(data.get("attempt"))
        key = (name, fields.as_int(data.get("index")), 1 if number is None else number)
        b = builders.get(key)
        if b is None or (kind == "step.started" and b.started is not None):
            b = _AttemptBuilder(name, key[1], key[2])
            builders[key] = b
            order.append(key)
        if kind == "step.started":
            b.started = r
        else:
            b.finished = r
    attempts: list[model.Attempt] = []
    seen: set[int] = set()
    for key in order:
        b = builders[key]
        if id(b) in seen:
            continue
        seen.add(id(b))
        attempts.append(b.build(read_blob, lines))
    return attempts


def _approval(rec: model.RecordLike) -> model.Approval:
    data = fields.as_dict(rec.record.get("data"))
    actor = fields.as_dict(rec.record.get("actor"))
    return model.Approval(
        step=fields.as_str(data.get("step")),
        decision=fields.as_str(data.get("decision"), "approved"),
        # The signer of the record is the approver; data only repeats it.
        principal=fields.as_str(actor.get("principal")) or fields.as_str(data.get("principal")),
        fingerprint=fields.as_str(actor.get("key")) or fields.as_str(data.get("fingerprint")),
        comment=fields.as_str(data.get("comment")),
        time=fields.as_str(rec.record.get("time")),
        seq=rec.seq,
        commit=rec.commit_id,
    )


def _step_views(attempts: list[model.Attempt]) -> list[model.StepView]:
    """Attempts grouped into steps, in order of each step's first record."""
    steps: dict[tuple[str, int | None, bool], list[model.Attempt]] = {}
    for a in attempts:
        steps.setdefault((a.step, a.index, a.handler), []).append(a)
    return [
        model.StepView(
            name=k[0], index=k[1], handler=k[2], attempts=sorted(v, key=lambda a: a.attempt)
        )
        for k, v in steps.items()
    ]


def _run_view(
    run_id: str, recs: Sequence[model.RecordLike], read_blob: model.BlobReader, lines: int
) -> model.RunView:
    ordered = sorted(recs, key=lambda r: r.seq)
    started_rec = next((r for r in ordered if r.record.get("kind") == "run.started"), None)
    finished_rec = None
    for r in ordered:
        if r.record.get("kind") == "run.finished":
            finished_rec = r
    sd = fields.as_dict(started_rec.record.get("data")) if started_rec else {}
    fd = fields.as_dict(finished_rec.record.get("data")) if finished_rec else {}
    runbook = fields.as_dict(sd.get("runbook"))
    trigger = fields.as_dict(sd.get("trigger"))
    incident = trigger.get("incident", sd.get("incident"))
    attempts = _attempts(ordered, read_blob, lines)
    views = _step_views(attempts)
    started = fields.as_str(started_rec.record.get("time")) if started_rec else None
    if started is None and ordered:
        started = fields.as_str(ordered[0].record.get("time"))
    finished = fields.as_str(finished_rec.record.get("time")) if finished_rec else None
    duration = fields.as_int(fd.get("duration_ms"))
    if duration is None:
        duration = _duration_between(started, finished)
    actor = fields.as_dict(started_rec.record.get("actor")) if started_rec else {}
    operator = sd.get("operator")
    if isinstance(operator, dict):
        operator = operator.get("principal") or operator.get("name")
    return model.RunView(
        run_id=run_id,
        runbook=fields.as_str(runbook.get("name"), "(unknown runbook)"),
        runbook_path=fields.as_str(runbook.get("path")),
        runbook_sha256=fields.as_str(runbook.get("sha256")),
        incident=incident if isinstance(incident, str) and incident else None,
        trigger=[(k, v) for k, v in fields.sorted_items(trigger) if v is not None and v != ""],
        operator=fields.as_str(operator) or fields.as_str(actor.get("principal")),
        host=fields.as_str(started_rec.record.get("host")) if started_rec else "",
        tool_version=fields.as_str(sd.get("tool_version")),
        resumes=fields.as_str(sd.get("resumes")) or None,
        started=started,
        finished=finished,
        duration_ms=duration,
        outcome=fields.as_str(fd.get("status"), "unknown") if finished_rec else "unfinished",
        failed_step=fields.as_str(fd.get("failed_step")) or None,
        error=fields.as_str(fd.get("error")) or None,
        description=fields.as_str(runbook.get("description")),
        params=fields.sorted_items(sd.get("params")),
        env=fields.sorted_items(sd.get("env")),
        steps=[v for v in views if not v.handler],
        handlers=[v for v in views if v.handler],
        approvals=[_approval(r) for r in ordered if r.record.get("kind") == "approval"],
        timeline=attempts,
        records=[_ref(r) for r in ordered],
        resume_from=fields.as_str(sd.get("resume_from")) or None,
        reason=fields.as_str(fd.get("reason")) or None,
    )


def build_report(
    runs: Mapping[str, Sequence[model.RecordLike]],
    *,
    read_blob: model.BlobReader,
    ledger: model.LedgerInfo,
    scope: str,
    selector: str,
    verification: model.Verification | None = None,
    remotes: list[model.RemoteView] | None = None,
    trusted: Callable[[str], bool | None] | None = None,
    excerpt_lines: int = EXCERPT_LINES,
) -> model.Report:
    """The report model for ``runs`` (run id -> its records, in any order).

    ``read_blob`` reads an attachment by its path in the ledger's tree; ``verification``
    and ``remotes`` are what the caller found out (see :func:`report_for`); ``trusted``
    tells whether a key fingerprint is trusted by the ledger. Runs are ordered by start
    time, then run id; everything else by seq.
    """
    views = [_run_view(rid, recs, read_blob, excerpt_lines) for rid, recs in runs.items()]
    views.sort(key=lambda v: (v.started or "", v.run_id))
    all_refs = sorted({ref for v in views for ref in v.records}, key=lambda r: r.seq)
    counts: dict[tuple[str, str], int] = {}
    for ref in all_refs:
        counts[(ref.principal, ref.fingerprint)] = (
            counts.get((ref.principal, ref.fingerprint), 0) + 1
        )
    signers = [
        model.SignerView(p, fp, n, trusted(fp) if trusted else None)
        for (p, fp), n in sorted(counts.items())
    ]
    if verification is None:
        verification = model.Verification(
            "not verified", len(all_refs), 0, method="no verifier was given"
        )
    incidents = sorted({v.incident for v in views if v.incident})
    incident = selector if scope == "incident" else (incidents[0] if len(incidents) == 1 else None)
    if scope == "run":
        run = views[0] if views else None
        title = f"Run {selector}" + (f": {run.runbook}" if run else "")
    elif scope == "incident":
        title = f"Incident {selector}"
    else:
        title = f"Runs {selector}"
    starts = [v.started for v in views if v.started]
    ends = [v.finished for v in views if v.finished]
    return model.Report(
        title=title,
        scope=scope,
        selector=selector,
        incident=incident,
        runs=views,
        evidence=model.Evidence(
            ledger=ledger,
            verification=verification,
            signers=signers,
            records=all_refs,
            remotes=sorted(remotes, key=lambda r: r.name) if remotes is not None else None,
        ),
        started=min(starts) if starts else None,
        finished=max(ends) if ends else None,
        as_of=ledger.head_time,
    )
