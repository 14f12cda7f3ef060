"""Incident reports: a Markdown view of the ledger, rendered with Jinja2.

Two stages, kept apart so each can be tested on its own:

1. :func:`build_report` turns the records of one or more runs into a plain data model
   (:class:`Report` -> :class:`RunView` -> :class:`StepView` -> :class:`Attempt`, plus
   approvals and the :class:`Evidence` section). It is a pure function of the records, an
   attachment reader, and what the caller found out about verification and remotes.
2. :func:`render` renders the model with a template: the default ``incident.md.j2`` shipped
   in the package, or a user's template file, always in Jinja2's sandbox with
   ``StrictUndefined``. Every ``{{ value }}`` that did not go through one of the Markdown
   filters (:mod:`ledger.mdsafe`) is escaped as inline text, so a template cannot forget.

:func:`report_for` ties both to a :class:`ledger.store.Ledger`: it finds the records of a
run, of an incident (through the tree's incident index) or of a time range (through the
date shards) without walking the history, so its cost does not grow with the ledger.

The output is deterministic: the same ledger and arguments give byte-identical Markdown.
Nothing reads the clock; the report's time is the time of the newest record it shows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ledger import mdsafe
from ledger.errors import InputError, LedgerError, StorageError, TemplateError, UsageError

if TYPE_CHECKING:
    from ledger.store import Ledger

__all__ = [
    "DEFAULT_TEMPLATE",
    "FILTERS",
    "TEMPLATES_DIR",
    "Approval",
    "Attempt",
    "Evidence",
    "LedgerInfo",
    "OutputExcerpt",
    "RecordRef",
    "RemoteView",
    "Report",
    "RunView",
    "SignerView",
    "StepView",
    "Verification",
    "build_report",
    "environment",
    "render",
    "report_for",
]

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
DEFAULT_TEMPLATE = "incident.md.j2"
EXCERPT_LINES = 20
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
    """One run: summary fields, its steps, approvals, failure handlers and records."""

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


@dataclass(frozen=True)
class Finding:
    rule: str
    seq: int | None
    commit: str | None
    message: str


@dataclass(frozen=True)
class Verification:
    """The result of verifying the chain that holds the records a report uses."""

    status: str  # "verified" | "failed" | "not verified"
    records_used: int  # records the report shows
    records_on_chain: int  # of those, how many are on the verified chain
    head_seq: int | None = None  # seq of the verified chain's head
    genesis_pinned: bool = False  # the genesis was compared to a pinned id
    findings: list[Finding] = field(default_factory=list)
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


# --- building the model -------------------------------------------------------------------


def _str(value: Any, default: str = "") -> str:
    if value is None:
        return default
    return value if isinstance(value, str) else mdsafe.to_text(value)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _items(value: Any) -> list[tuple[str, Any]]:
    return sorted((str(k), v) for k, v in _dict(value).items())


def _ref(rec: RecordLike) -> RecordRef:
    r = rec.record
    actor = _dict(r.get("actor"))
    run = r.get("run")
    return RecordRef(
        seq=rec.seq,
        kind=_str(r.get("kind")),
        time=_str(r.get("time")),
        commit=rec.commit_id,
        principal=_str(actor.get("principal")),
        fingerprint=_str(actor.get("key")),
        host=_str(r.get("host")),
        run=run if isinstance(run, str) else None,
    )


def _files(rec: RecordLike) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, meta in _dict(rec.record.get("files")).items():
        path = _dict(meta).get("path")
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
    stream: str, finished: RecordLike, read_blob: BlobReader, lines: int
) -> OutputExcerpt | None:
    meta = _dict(_dict(finished.record.get("data")).get(stream))
    path = _files(finished).get(stream)
    if path is None and not meta:
        return None
    text, omitted = "", 0
    if path is not None:
        try:
            blob = read_blob(path)
        except InputError:
            blob = b""
        text, omitted = mdsafe.tail_lines(blob, lines)
    return OutputExcerpt(
        stream=stream,
        text=text,
        lines_omitted=omitted,
        size=_int(meta.get("size")),
        sha256=meta.get("sha256") if isinstance(meta.get("sha256"), str) else None,
        capture_truncated=meta.get("truncated") is True,
        path=path,
    )


@dataclass
class _AttemptBuilder:
    step: str
    index: int | None
    attempt: int
    started: RecordLike | None = None
    finished: RecordLike | None = None

    def build(self, read_blob: BlobReader, lines: int) -> Attempt:
        s = _dict(self.started.record.get("data")) if self.started else {}
        f = _dict(self.finished.record.get("data")) if self.finished else {}
        started_at = _str(self.started.record.get("time")) if self.started else None
        finished_at = _str(self.finished.record.get("time")) if self.finished else None
        status = _str(f.get("status"), "unknown") if self.finished else "unfinished"
        streams: list[OutputExcerpt] = []
        if self.finished is not None:
            for name in ("stdout", "stderr"):
                ex = _excerpt(name, self.finished, read_blob, lines)
                if ex is not None:
                    streams.append(ex)
        # Failures show the tail of stderr, anything else the tail of stdout; the other
        # stream stands in when the preferred one is empty.
        by_name = {e.stream: e for e in streams if e.text}
        prefer = ("stderr", "stdout") if status in FAILED_STATUSES else ("stdout", "stderr")
        excerpt = next((by_name[n] for n in prefer if n in by_name), None)
        duration = _int(f.get("duration_ms"))
        if duration is None:
            duration = _duration_between(started_at, finished_at)
        refs = [_ref(r) for r in (self.started, self.finished) if r is not None]
        command = s.get("command", f.get("command"))
        handler = s.get("handler", f.get("handler"))
        approval = _dict(s.get("approval"))
        approvers = approval.get("approvers")
        return Attempt(
            step=self.step,
            index=self.index,
            attempt=self.attempt,
            handler=handler is True,
            status=status,
            started=started_at,
            finished=finished_at,
            duration_ms=duration,
            exit_code=_int(f.get("exit_code")),
            command=command if isinstance(command, str) else None,
            shell=s.get("shell") if isinstance(s.get("shell"), str) else None,
            cwd=s.get("cwd") if isinstance(s.get("cwd"), str) else None,
            error=_str(f.get("error")) or None,
            outputs=_items(f.get("outputs")),
            excerpt=excerpt,
            streams=streams,
            records=refs,
            type=_str(s.get("type")) or ("approval" if approval else "command"),
            reason=_str(f.get("reason")) or None,
            signal=_int(f.get("signal")),
            approval_message=_str(approval.get("message")) or None,
            approvers=sorted(_str(a) for a in approvers) if isinstance(approvers, list) else [],
            min_approvals=_int(approval.get("min_approvals")),
        )


def _run_view(
    run_id: str, recs: Sequence[RecordLike], read_blob: BlobReader, lines: int
) -> RunView:
    ordered = sorted(recs, key=lambda r: r.seq)
    started_rec = next((r for r in ordered if r.record.get("kind") == "run.started"), None)
    finished_rec = None
    for r in ordered:
        if r.record.get("kind") == "run.finished":
            finished_rec = r
    sd = _dict(started_rec.record.get("data")) if started_rec else {}
    fd = _dict(finished_rec.record.get("data")) if finished_rec else {}
    runbook = _dict(sd.get("runbook"))
    trigger = _dict(sd.get("trigger"))
    incident = trigger.get("incident", sd.get("incident"))

    builders: dict[tuple[str, int | None, int], _AttemptBuilder] = {}
    order: list[tuple[str, int | None, int]] = []
    approvals: list[Approval] = []
    for r in ordered:
        kind = r.record.get("kind")
        data = _dict(r.record.get("data"))
        if kind in ("step.started", "step.finished"):
            name = _str(data.get("step"), "?")
            number = _int(data.get("attempt"))
            key = (name, _int(data.get("index")), 1 if number is None else number)
            b = builders.get(key)
            if b is None or (kind == "step.started" and b.started is not None):
                b = _AttemptBuilder(name, key[1], key[2])
                builders[key] = b
                order.append(key)
            if kind == "step.started":
                b.started = r
            else:
                b.finished = r
        elif kind == "approval":
            actor = _dict(r.record.get("actor"))
            approvals.append(
                Approval(
                    step=_str(data.get("step")),
                    decision=_str(data.get("decision"), "approved"),
                    # The signer of the record is the approver; data only repeats it.
                    principal=_str(actor.get("principal")) or _str(data.get("principal")),
                    fingerprint=_str(actor.get("key")) or _str(data.get("fingerprint")),
                    comment=_str(data.get("comment")),
                    time=_str(r.record.get("time")),
                    seq=r.seq,
                    commit=r.commit_id,
                )
            )
    attempts: list[Attempt] = []
    seen: set[int] = set()
    for key in order:
        b = builders[key]
        if id(b) in seen:
            continue
        seen.add(id(b))
        attempts.append(b.build(read_blob, lines))
    # Group attempts into steps, in order of each step's first record.
    steps: dict[tuple[str, int | None, bool], list[Attempt]] = {}
    for a in attempts:
        steps.setdefault((a.step, a.index, a.handler), []).append(a)
    views = [
        StepView(name=k[0], index=k[1], handler=k[2], attempts=sorted(v, key=lambda a: a.attempt))
        for k, v in steps.items()
    ]
    started = _str(started_rec.record.get("time")) if started_rec else None
    if started is None and ordered:
        started = _str(ordered[0].record.get("time"))
    finished = _str(finished_rec.record.get("time")) if finished_rec else None
    duration = _int(fd.get("duration_ms"))
    if duration is None:
        duration = _duration_between(started, finished)
    actor = _dict(started_rec.record.get("actor")) if started_rec else {}
    operator = sd.get("operator")
    if isinstance(operator, dict):
        operator = operator.get("principal") or operator.get("name")
    return RunView(
        run_id=run_id,
        runbook=_str(runbook.get("name"), "(unknown runbook)"),
        runbook_path=_str(runbook.get("path")),
        runbook_sha256=_str(runbook.get("sha256")),
        incident=incident if isinstance(incident, str) and incident else None,
        trigger=[(k, v) for k, v in _items(trigger) if v is not None and v != ""],
        operator=_str(operator) or _str(actor.get("principal")),
        host=_str(started_rec.record.get("host")) if started_rec else "",
        tool_version=_str(sd.get("tool_version")),
        resumes=_str(sd.get("resumes")) or None,
        started=started,
        finished=finished,
        duration_ms=duration,
        outcome=_str(fd.get("status"), "unknown") if finished_rec else "unfinished",
        failed_step=_str(fd.get("failed_step")) or None,
        error=_str(fd.get("error")) or None,
        description=_str(runbook.get("description")),
        params=_items(sd.get("params")),
        env=_items(sd.get("env")),
        steps=[v for v in views if not v.handler],
        handlers=[v for v in views if v.handler],
        approvals=approvals,
        timeline=attempts,
        records=[_ref(r) for r in ordered],
    )


def build_report(
    runs: Mapping[str, Sequence[RecordLike]],
    *,
    read_blob: BlobReader,
    ledger: LedgerInfo,
    scope: str,
    selector: str,
    verification: Verification | None = None,
    remotes: list[RemoteView] | None = None,
    trusted: Callable[[str], bool | None] | None = None,
    excerpt_lines: int = EXCERPT_LINES,
) -> Report:
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
        SignerView(p, fp, n, trusted(fp) if trusted else None)
        for (p, fp), n in sorted(counts.items())
    ]
    if verification is None:
        verification = Verification(
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
    return Report(
        title=title,
        scope=scope,
        selector=selector,
        incident=incident,
        runs=views,
        evidence=Evidence(
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


# --- filters ------------------------------------------------------------------------------


def f_duration(ms: Any) -> mdsafe.Md:
    """Milliseconds as ``850 ms``, ``12.345 s``, ``3 min 04 s``, ``2 h 05 min``; ``—`` if None."""
    value = _int(ms)
    if value is None:
        return mdsafe.Md("—")
    if value < 1000:
        return mdsafe.Md(f"{value} ms")
    if value < 60_000:
        return mdsafe.Md(f"{value / 1000:.3f} s")
    seconds = value // 1000
    if seconds < 3600:
        return mdsafe.Md(f"{seconds // 60} min {seconds % 60:02d} s")
    return mdsafe.Md(f"{seconds // 3600} h {seconds % 3600 // 60:02d} min")


_TIME_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(\.\d+)?Z$")


def f_time(value: Any, style: str = "full") -> mdsafe.Md:
    """A record time: ``full`` ``2026-11-22 10:00:01.234Z``, ``clock`` ``10:00:01.234``,
    ``date`` ``2026-11-22``. ``—`` if None; anything that is not a record time is escaped."""
    if value is None or value == "":
        return mdsafe.Md("—")
    m = _TIME_RE.match(str(value))
    if not m:
        return mdsafe.inline(value)
    frac = (m.group(3) or ".000")[:4].ljust(4, "0")
    if style == "clock":
        return mdsafe.Md(f"{m.group(2)}{frac}")
    if style == "date":
        return mdsafe.Md(m.group(1))
    return mdsafe.Md(f"{m.group(1)} {m.group(2)}{frac}Z")


def f_short(value: Any, length: int = 12) -> mdsafe.Md:
    """The first ``length`` characters of a commit id or digest, as inline code."""
    return mdsafe.code(mdsafe.to_text(value)[:length])


def f_json(value: Any) -> str:
    """A value as canonical JSON text (strings stay as they are). Not yet escaped."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def f_or(value: Any, default: str = "—") -> Any:
    """``value``, or ``default`` when it is None or empty."""
    return default if value is None or value in ("", []) else value


def f_pairs(value: Any) -> str:
    """``[(name, value), ...]`` (or a mapping) as ``name=value, ...``, values as JSON
    unless they are strings. Not yet escaped."""
    items = sorted(value.items()) if isinstance(value, Mapping) else list(value or [])
    return ", ".join(f"{k}={f_json(v)}" for k, v in items)


FILTERS: dict[str, Callable[..., Any]] = {
    "inline": mdsafe.inline,
    "cell": mdsafe.cell,
    "heading": mdsafe.heading,
    "code": mdsafe.code,
    "fence": mdsafe.fence,
    "duration": f_duration,
    "time": f_time,
    "short": f_short,
    "json": f_json,
    "or_dash": f_or,
    "pairs": f_pairs,
}


# --- rendering ----------------------------------------------------------------------------


def environment(search_path: Path) -> ImmutableSandboxedEnvironment:
    """The sandboxed Jinja2 environment every report template renders in."""
    env = ImmutableSandboxedEnvironment(
        loader=jinja2.FileSystemLoader(str(search_path)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        finalize=mdsafe.finalize,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters.update(FILTERS)
    return env


def _template_line(tb: types.TracebackType | None, filename: str) -> int | None:
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


_RENDER_ERRORS = (
    jinja2.TemplateError,
    ArithmeticError,
    AttributeError,
    LookupError,
    TypeError,
    ValueError,
    RecursionError,
)


def render(report: Report, template: Path | None = None) -> str:
    """Render ``report`` with ``template`` (a file) or the default template.

    Raises :class:`TemplateError` naming the template file and line when the template
    cannot be read, parsed or rendered.
    """
    if template is None:
        path = TEMPLATES_DIR / DEFAULT_TEMPLATE
    else:
        path = template.expanduser().resolve()
        if not path.is_file():
            raise TemplateError(
                f"the template {template} does not exist or is not a file.",
                hint="Give --template the path of a Jinja2 template file "
                "(see docs/REPORTS.md; the default is templates/incident.md.j2).",
            )
    env = environment(path.parent)
    filename = str(path)
    try:
        tmpl = env.get_template(path.name)
        filename = tmpl.filename or filename
        text = tmpl.render(report=report)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(
            f"{exc.filename or filename}:{exc.lineno}: the template has a syntax error: "
            f"{exc.message}.",
            hint="Fix the template; docs/REPORTS.md lists the variables and filters.",
        ) from None
    except UnicodeDecodeError as exc:
        raise TemplateError(
            f"{filename}: the template is not valid UTF-8 ({exc.reason} at byte {exc.start}).",
            hint="Save the template as UTF-8.",
        ) from None
    except _RENDER_ERRORS as exc:
        line = _template_line(exc.__traceback__, filename)
        where = f"{filename}:{line}" if line is not None else filename
        detail = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        raise TemplateError(
            f"{where}: the template failed to render: {detail}.",
            hint="Check the names against docs/REPORTS.md (undefined names are errors, and "
            "templates run in a sandbox without access to Python internals).",
        ) from None
    except OSError as exc:
        raise TemplateError(
            f"{filename}: the template cannot be read ({exc.strerror or exc}).",
            hint="Check the path and its permissions.",
        ) from None
    if not text.endswith("\n"):
        text += "\n"
    return text


# --- from a ledger ------------------------------------------------------------------------

Verifier = Callable[["Ledger", Sequence[RecordLike]], Verification]
RemoteState = Callable[["Ledger"], list[RemoteView]]


def _parse_bound(text: str, *, end: bool) -> datetime:
    value = text.strip()
    for fmt in ("%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f"):
        try:
            when = datetime.strptime(value.removesuffix("Z").replace(" ", "T"), fmt)
        except ValueError:
            continue
        if fmt == "%Y-%m-%d" and end:
            when = when.replace(hour=23, minute=59, second=59, microsecond=999999)
        return when.replace(tzinfo=UTC)
    raise UsageError(
        f"{text!r} is not a time: use YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS[.ffffff]][Z] (UTC).",
        hint="For example --since 2026-11-22 --until 2026-11-22T18:00Z.",
    )


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _select(
    ledger: Ledger,
    run: str | None,
    incident: str | None,
    since: str | None,
    until: str | None,
) -> tuple[str, str, dict[str, Sequence[RecordLike]]]:
    chosen = [x for x in (run, incident, since) if x]
    if len(chosen) != 1 or (until and not since):
        raise UsageError(
            "choose exactly one of --run RUN_ID, --incident ID, or --since T [--until T].",
            hint="For example: ledger report --incident INC-42.",
        )
    runs: dict[str, Sequence[RecordLike]] = {}
    if run:
        recs = ledger.run_records(run)
        if not recs:
            raise InputError(
                f"the ledger has no run {run}.",
                hint="List runs with 'ledger log' or 'ledger status'.",
            )
        runs[run] = list(recs)
        return "run", run, runs
    if incident:
        ids = ledger.runs_for_incident(incident)
        if not ids:
            raise InputError(
                f"the ledger has no runs for incident {incident}.",
                hint="Runs are tied to an incident with 'ledger run --incident ID'.",
            )
        for rid in ids:
            runs[rid] = list(ledger.run_records(rid))
        return "incident", incident, runs
    lo = _parse_bound(since or "", end=False)
    hi = _parse_bound(until, end=True) if until else None
    if hi is not None and hi < lo:
        raise UsageError(f"--until {until} is before --since {since}.")
    lo_s, hi_s = _iso(lo), _iso(hi) if hi else None
    for rid in ledger.run_ids(lo, hi):
        recs = list(ledger.run_records(rid))
        start = next(
            (r.record.get("time") for r in recs if r.record.get("kind") == "run.started"), None
        )
        start = start or (recs[0].record.get("time") if recs else None)
        if not isinstance(start, str) or start < lo_s or (hi_s is not None and start > hi_s):
            continue
        runs[rid] = recs
    selector = f"{lo_s}..{hi_s}" if hi_s else f"{lo_s}.."
    return "range", selector, runs


def _in_head_tree(ledger: Ledger, rec: RecordLike) -> bool:
    path = getattr(rec, "path", None)
    raw = getattr(rec, "raw", None)
    if not isinstance(path, str) or not isinstance(raw, bytes):
        return False
    try:
        return ledger.read_blob(path) == raw
    except InputError:
        return False


def default_verifier(ledger: Ledger, recs: Sequence[RecordLike]) -> Verification:
    """Verify the ledger's chain with :mod:`ledger.verify` and check that every record the
    report uses is on it.

    Verification resumes from this copy's last verified head (``ledger verify`` keeps it),
    so only newer records are checked again; a successful verification moves that head
    forward. Without a saved head the whole chain is verified, pinned to the ledger's
    configured genesis. A record newer than the saved head is looked up on the verifier's
    walk; an older one is on the chain when the verified head's tree holds its bytes at its
    path (the tree only grows, which the verifier checked), so a report on an old run does
    not walk back through the history.
    """
    from ledger import verify as v

    by_commit = {r.commit_id: r for r in recs}
    commits = sorted(by_commit)
    try:
        state = v.load_state(ledger.path)
    except InputError:
        state = None  # a malformed saved state: verify everything instead
    if state is not None and state.genesis != ledger.genesis_id:
        state = None
    resumed_at = state.seq if state is not None else -1
    try:
        result = v.verify_ledger(
            ledger.path,
            trust_genesis=ledger.genesis_id,
            since=state,
            # Records newer than the last verified head are met on the verifier's walk.
            commits=[c for c in commits if by_commit[c].seq > resumed_at],
        )
    except LedgerError as exc:
        return Verification(
            "failed",
            len(commits),
            0,
            findings=[Finding("error", None, None, exc.diagnostics())],
            method="ledger.verify",
        )
    findings = [Finding(f.rule, f.seq, f.commit, f.message) for f in result.findings]
    on_chain = 0
    for commit in commits:
        rec = by_commit[commit]
        if rec.seq > resumed_at:
            # The verifier numbers the chain itself; on a chain whose seqs are damaged its
            # numbers can differ from the record's, and those findings are listed already.
            at = result.included.get(commit)
            member = at is not None and (at == rec.seq or not result.ok)
        else:
            # At or below the last verified head: the verified chain's tree only grows, so
            # the record is the chain's when the head's tree holds exactly its bytes at its
            # path (no walk back through the history).
            member = _in_head_tree(ledger, rec)
        if member:
            on_chain += 1
        else:
            findings.append(
                Finding(
                    "not-on-chain",
                    rec.seq,
                    commit,
                    "this record is not on the verified chain at its seq",
                )
            )
    findings.sort(key=lambda f: (f.seq if f.seq is not None else -1, f.rule, f.message))
    if result.ok and result.state is not None and (state is None or result.state.seq > state.seq):
        # Only an accelerator for the next verification: a read-only copy (an auditor's)
        # still gets its report.
        with contextlib.suppress(StorageError):
            v.save_state(ledger.path, result.state)
    return Verification(
        "verified" if result.ok and not findings else "failed",
        len(commits),
        on_chain,
        head_seq=result.seq,
        genesis_pinned=result.genesis_pinned,
        findings=findings,
        method="signatures with the keys trusted at each seq, record, file and previous-"
        "commit digests, sequence and append-only tree",
    )


def skip_verifier(ledger: Ledger, recs: Sequence[RecordLike]) -> Verification:
    """A verifier that does not verify (``ledger report --no-verify``); the report says so."""
    return Verification(
        "not verified", len({r.commit_id for r in recs}), 0, method="verification was skipped"
    )


def default_remotes(ledger: Ledger) -> list[RemoteView] | None:
    """What each remote held when it was last pushed to or fetched from (local state kept
    by :mod:`ledger.replicate`; no network access, so the report stays reproducible)."""
    from ledger import replicate

    remotes = replicate.list_remotes(ledger.path)
    state = replicate.read_remote_state(ledger.path)
    head = ledger.head()
    out: list[RemoteView] = []
    for info in remotes:
        entry = _dict(state.get(info.name))
        seq = _int(entry.get("seq"))
        commit = entry.get("head")
        problem = _dict(entry.get("problem")).get("message") or _dict(entry.get("rollback")).get(
            "message"
        )
        when = _str(entry.get("time"))
        note = f"last seen {when}" if when else "never seen"
        holds = (
            head is not None
            and seq is not None
            and not problem
            and (seq > head.seq or (seq == head.seq and commit == head.commit_id))
        )
        out.append(
            RemoteView(
                name=info.name,
                url=info.url,
                head_commit=commit if isinstance(commit, str) else None,
                head_seq=seq,
                holds_head=holds,
                holds_records=False,
                note=note,
                problem=_str(problem),
            )
        )
    return out


def report_for(
    ledger: Ledger,
    *,
    run: str | None = None,
    incident: str | None = None,
    since: str | None = None,
    until: str | None = None,
    template: Path | None = None,
    verifier: Verifier | None = default_verifier,
    remotes: RemoteState | Callable[[Ledger], list[RemoteView] | None] | None = default_remotes,
    excerpt_lines: int = EXCERPT_LINES,
) -> str:
    """The Markdown report for one run, one incident, or the runs started in a time range.

    Reads only the records of the selected runs (through the tree's run directories,
    incident index and date shards), so its cost does not grow with the ledger's history.
    """
    scope, selector, runs = _select(ledger, run, incident, since, until)
    head = ledger.head()
    head_time = None
    if head is not None:
        head_time = _str(ledger.record(head.seq).record.get("time")) or None
    info = LedgerInfo(
        ledger_id=ledger.ledger_id,
        name=ledger.name,
        genesis=ledger.genesis_id,
        head_commit=head.commit_id if head else None,
        head_seq=head.seq if head else None,
        head_time=head_time,
    )
    used = [r for recs in runs.values() for r in recs]
    verification = verifier(ledger, used) if verifier is not None else None
    remote_views = remotes(ledger) if remotes is not None else None
    if remote_views is not None and used:
        top = max(r.seq for r in used)
        remote_views = [
            dataclasses.replace(
                rv,
                holds_records=rv.holds_records
                or (rv.head_seq is not None and rv.head_seq >= top and not rv.problem),
            )
            for rv in remote_views
        ]
    trust = {s.fingerprint: s.active for s in ledger.signers()}
    model = build_report(
        runs,
        read_blob=ledger.read_blob,
        ledger=info,
        scope=scope,
        selector=selector,
        verification=verification,
        remotes=remote_views,
        trusted=trust.get,
        excerpt_lines=excerpt_lines,
    )
    return render(model, template)


def write_report(text: str, output: Path | None) -> Path | None:
    """Write the report to ``output`` (UTF-8), or return None when it goes to stdout."""
    if output is None:
        return None
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InputError(
            f"cannot write the report to {output}: {exc.strerror or exc}.",
            hint="Check that the directory exists and is writable.",
        ) from None
    return output


def iter_filters() -> Iterable[tuple[str, str]]:
    """Each filter's name and first line of documentation (for docs and --help)."""
    for name in sorted(FILTERS):
        doc = (FILTERS[name].__doc__ or "").strip().split("\n")[0]
        yield name, doc
