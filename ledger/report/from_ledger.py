"""Reports from a :class:`ledger.store.Ledger`: :func:`report_for` selects the records of a
run, of an incident (through the tree's incident index) or of a time range (through the date
shards) without walking the history, so its cost does not grow with the ledger; then it asks
a verifier and the remotes' saved state, builds the model and renders it.

:func:`default_verifier` verifies with :mod:`ledger.verify`, resuming from this copy's
last verified head (that policy is bound for ``ledger/verify/local.py``; it is kept in one
delimited function here until then). It imports the verifier itself, so that ``ledger
--help``, which loads every command module, does not. :func:`default_remotes` only reads the
JSON state file :mod:`ledger.replicate` keeps (``read_remote_state``): no network access.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ledger import errors, outfile, redact, replicate
from ledger.format import records
from ledger.report import build, fields, rendering
from ledger.report import model as report_model

if TYPE_CHECKING:
    from ledger import store


Verifier = Callable[["store.Ledger", Sequence[report_model.RecordLike]], report_model.Verification]
RemoteState = Callable[["store.Ledger"], list[report_model.RemoteView]]


# --- selecting the runs -------------------------------------------------------------------


def parse_bound(text: str, *, end: bool) -> datetime:
    """A ``--since``/``--until`` bound as a UTC time (a date in ``--until``: the end of that
    day); :class:`UsageError` naming the accepted forms (also used by ``ledger fleet
    report``)."""
    value = text.strip()
    for fmt in ("%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f"):
        try:
            when = datetime.strptime(value.removesuffix("Z").replace(" ", "T"), fmt)
        except ValueError:
            continue
        if fmt == "%Y-%m-%d" and end:
            when = when.replace(hour=23, minute=59, second=59, microsecond=999999)
        return when.replace(tzinfo=UTC)
    raise errors.UsageError(
        f"{errors.quoted(text)} is not a time: use YYYY-MM-DD, "
        "YYYY-MM-DDTHH:MM[:SS[.ffffff]][Z] (UTC).",
        hint="For example --since 2026-11-22 --until 2026-11-22T18:00Z.",
    )


def iso(when: datetime) -> str:
    """A time as records write it (``2026-11-22T10:00:00.000000Z``), to compare with them."""
    return records.format_time(when)


def _select(
    ledger: store.Ledger,
    run: str | None,
    incident: str | None,
    since: str | None,
    until: str | None,
    at: str | None,
) -> tuple[str, str, dict[str, Sequence[report_model.RecordLike]]]:
    chosen = [x for x in (run, incident, since) if x is not None]
    if len(chosen) != 1 or (until is not None and since is None):
        raise errors.UsageError(
            "choose exactly one of --run RUN_ID, --incident ID, or --since T [--until T].",
            hint="For example: ledger report --incident INC-42.",
        )
    runs: dict[str, Sequence[report_model.RecordLike]] = {}
    if run is not None:
        recs = ledger.run_records(run, at=at, signed=True)
        if not recs:
            raise errors.InputError(
                f"the ledger has no run {run}.",
                hint="List runs with 'ledger log' or 'ledger status'.",
            )
        runs[run] = list(recs)
        return "run", run, runs
    if incident is not None:
        ids = ledger.runs_for_incident(incident, at=at)
        if not ids:
            raise errors.InputError(
                f"the ledger has no runs for incident {incident}.",
                hint="Runs are tied to an incident with 'ledger run --incident ID'.",
            )
        for rid in ids:
            runs[rid] = list(ledger.run_records(rid, at=at, signed=True))
        return "incident", incident, runs
    lo = parse_bound(since or "", end=False)
    hi = parse_bound(until, end=True) if until is not None else None
    if hi is not None and hi < lo:
        raise errors.UsageError(f"--until {until} is before --since {since}.")
    lo_s, hi_s = iso(lo), iso(hi) if hi else None
    for rid in ledger.run_ids(lo, hi, at=at):
        recs = list(ledger.run_records(rid, at=at, signed=True))
        start = next(
            (r.record.get("time") for r in recs if r.record.get("kind") == "run.started"), None
        )
        start = start or (recs[0].record.get("time") if recs else None)
        if not isinstance(start, str) or start < lo_s or (hi_s is not None and start > hi_s):
            continue
        runs[rid] = recs
    selector = f"{lo_s}..{hi_s}" if hi_s else f"{lo_s}.."
    return "range", selector, runs


# --- verification -------------------------------------------------------------------------


# default_verifier holds the report's "last verified head" policy (load the saved state,
# resume from it, save the newer one). That policy is bound for ledger/verify/local.py, its
# one owner, which the verify split creates; until then it stays in this one function.


def _in_head_tree(ledger: store.Ledger, rec: report_model.RecordLike, head: str) -> bool:
    path = getattr(rec, "path", None)
    raw = getattr(rec, "raw", None)
    if not isinstance(path, str) or not isinstance(raw, bytes):
        return False
    try:
        return ledger.read_blob(path, commit_id=head) == raw
    except errors.InputError:
        return False


def default_verifier(
    ledger: store.Ledger, recs: Sequence[report_model.RecordLike]
) -> report_model.Verification:
    """Verify the ledger's chain with :mod:`ledger.verify` and check that every record the
    report uses is on it.

    Verification resumes from this copy's last verified head (``ledger verify`` keeps it),
    so only newer records are checked again; a successful verification moves that head
    forward (:mod:`ledger.verify.local` decides both). Without a saved head the whole chain
    is verified, pinned to the genesis this machine pinned (the ledger's own config is not a
    pin); unpinned, the report says so. A record newer than the saved head is looked up on
    the verifier's walk; an older one is on the chain when the verified head's tree holds its
    bytes at its path (the tree only grows, which the verifier checked), so a report on an
    old run does not walk back through the history. The commit id a record is shown with
    was found with ``signed=True`` (:meth:`ledger.store.Ledger.commit_for_seq`): a seq index
    pointing at another commit with the same tree is not believed.
    """
    from ledger import verify  # here, not at the top: keeps the verifier out of 'ledger --help'
    from ledger.verify import local

    by_commit = {r.commit_id: r for r in recs}
    commits = sorted(by_commit)
    try:
        state, pin = local.report_resume(ledger.path)
        resumed_at = state.seq if state is not None else -1
        result = verify.verify_ledger(
            ledger.path,
            trust_genesis=pin.genesis,
            since=state,
            # Records newer than the last verified head are met on the verifier's walk.
            commits=[c for c in commits if by_commit[c].seq > resumed_at],
        )
    except errors.LedgerError as exc:
        return report_model.Verification(
            "failed",
            len(commits),
            0,
            findings=[verify.Finding("error", None, None, exc.diagnostics())],
            method="ledger.verify",
        )
    findings = list(result.findings)
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
            member = state is not None and _in_head_tree(ledger, rec, state.head)
        if member:
            on_chain += 1
        else:
            findings.append(
                verify.Finding(
                    "not-on-chain",
                    rec.seq,
                    commit,
                    "this record is not on the verified chain at its seq",
                )
            )
    findings.sort(key=lambda f: (f.seq if f.seq is not None else -1, f.rule, f.message))
    local.remember(ledger.path, result, state)  # (not on a read-only machine: still a report)
    return report_model.Verification(
        "verified" if result.ok and not findings else "failed",
        len(commits),
        on_chain,
        head_seq=result.seq,
        genesis_pinned=result.genesis_pinned,
        findings=findings,
        method="signatures with the keys trusted at each seq, record, file and previous-"
        "commit digests, sequence and append-only tree",
    )


def skip_verifier(
    ledger: store.Ledger, recs: Sequence[report_model.RecordLike]
) -> report_model.Verification:
    """A verifier that does not verify (``ledger report --no-verify``); the report says so."""
    return report_model.Verification(
        "not verified", len({r.commit_id for r in recs}), 0, method="verification was skipped"
    )


# --- remotes ------------------------------------------------------------------------------


def default_remotes(ledger: store.Ledger) -> list[report_model.RemoteView] | None:
    """What each remote held when it was last pushed to or fetched from (local state kept
    by :mod:`ledger.replicate`; no network access, so the report stays reproducible)."""
    remotes = replicate.list_remotes(ledger.path)
    unread = None
    try:
        state = replicate.read_remote_state(ledger.path)
    except errors.LedgerError as exc:  # never verified here, or claiming another ledger's id
        state, unread = {}, f"your record of this remote could not be read: {exc.message}"
    view = ledger.trust_view() if ledger.head() is not None else None
    head = view if view is not None and view.ok else None  # (the verified head, or none)
    out: list[report_model.RemoteView] = []
    for info in remotes:
        entry = fields.as_dict(state.get(info.name))
        seq = fields.as_int(entry.get("seq"))
        commit = entry.get("head")
        problem = (
            unread
            or ("unknown remote: not added by you, never contacted" if entry.get("unknown") else "")
            or fields.as_dict(entry.get("problem")).get("message")
            or fields.as_dict(entry.get("rollback")).get("message")
        )
        when = fields.as_str(entry.get("time"))
        note = f"last seen {when}" if when else "never seen"
        holds = (
            head is not None
            and seq is not None
            and not problem
            and head.seq is not None
            and (seq > head.seq or (seq == head.seq and commit == head.head))
        )
        out.append(
            report_model.RemoteView(
                name=info.name,
                url=redact.mask_url(info.url),
                head_commit=commit if isinstance(commit, str) else None,
                head_seq=seq,
                holds_head=holds,
                holds_records=False,
                note=note,
                problem=redact.mask_url(fields.as_str(problem)),
            )
        )
    return out


# --- the report ---------------------------------------------------------------------------


def report_for(
    ledger: store.Ledger,
    *,
    run: str | None = None,
    incident: str | None = None,
    since: str | None = None,
    until: str | None = None,
    template: Path | None = None,
    verifier: Verifier | None = default_verifier,
    remotes: RemoteState
    | Callable[[store.Ledger], list[report_model.RemoteView] | None]
    | None = default_remotes,
    excerpt_lines: int = build.EXCERPT_LINES,
) -> str:
    """The Markdown report for one run, one incident, or the runs started in a time range.

    Reads only the records of the selected runs (through the tree's run directories,
    incident index and date shards), so its cost does not grow with the ledger's history.
    """
    # What the report reads is the chain up to the head of the verified view (verified
    # incrementally); on a chain that does not verify it reads what main names, the head's
    # time is not believed, and the verification section says what failed.
    view = ledger.trust_view() if ledger.head() is not None else None
    at = view.head if view is not None else None
    scope, selector, runs = _select(ledger, run, incident, since, until, at)
    head_time = None
    if view is not None and view.ok and view.seq is not None:
        head_time = fields.as_str(ledger.record(view.seq, at=at).record.get("time")) or None
    verified = view.state if view is not None and view.ok else None
    info = report_model.LedgerInfo(  # (the verified chain's id and genesis, not the config's)
        ledger_id=verified.ledger_id if verified is not None else ledger.ledger_id,
        name=_genesis_name(ledger, at) if verified is not None else ledger.name,
        genesis=verified.genesis if verified is not None else ledger.genesis_id,
        head_commit=at,
        head_seq=view.seq if view is not None else None,
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
    trust = {s.fingerprint: s.active for s in view.signers} if view is not None else {}

    def read_blob(path: str) -> bytes:
        return ledger.read_blob(path, commit_id=at)

    model = build.build_report(
        runs,
        read_blob=read_blob,
        ledger=info,
        scope=scope,
        selector=selector,
        verification=verification,
        remotes=remote_views,
        trusted=trust.get,
        excerpt_lines=excerpt_lines,
    )
    return rendering.render(model, template)


def _genesis_name(ledger: store.Ledger, at: str | None) -> str:
    """The ledger's name as its genesis record gives it (not the config's)."""
    return fields.as_str(fields.as_dict(ledger.record(0, at=at).record.get("data")).get("name"))


def write_report(text: str, output: Path | None) -> Path | None:
    """Write the report to ``output`` (UTF-8, whole or not at all: :mod:`ledger.outfile`),
    or return None when it goes to stdout."""
    if output is None:
        return None
    return outfile.write(output, text, "the report")
