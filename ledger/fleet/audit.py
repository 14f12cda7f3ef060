"""``ledger fleet verify``: every ledger of a fleet copy verified against the auditor's own
anchors, in parallel, incrementally, with the fleet's detections (FLEET-CONTRACT §3).

For each ledger id of the copy, each distinct head its remotes hold is verified as a chain
(:func:`ledger.verify.chain.verify_chain`) with the genesis pinned (the auditor's own pins,
trust on first use, or only ``pins`` when given) and resumed from the head this auditor last
verified (the ``verified`` state of :mod:`ledger.fleet.state`): one task per (ledger, head),
in worker processes. A ledger whose heads did not move is not read at all. Then, from the
verifier's results only: ``fork`` (two heads, neither on the other's chain), ``rollback``
(a head behind the verified head: the verifier's own ``rollback``/``rewrite``; a remote's
head that no longer holds what that remote held before), ``vanished`` (a ledger the auditor
saw on no remote now, or gone from one remote), ``unpinned``, ``ledger-id`` (a ref holding
another ledger's chain), and the witness claims (:mod:`ledger.fleet.claims`).

The verified state moves forward only on a clean verification: a ledger with findings keeps
its previous state, so the next verification finds the same again until it is resolved.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pygit2

from ledger import errors
from ledger.fleet import claims, copy, outcome, schedule, state
from ledger.fleet.outcome import FleetFinding, FleetResult, LedgerOutcome
from ledger.verify import findings, local, parallel
from ledger.verify import state as verify_state

__all__ = ["FleetFinding", "FleetResult", "LedgerOutcome", "dismiss_claims", "verify_fleet"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass
class _Settled:
    """One ledger after its verification: the outcome and what to remember."""

    out: outcome.LedgerOutcome
    verified: verify_state.VerifiedState | None
    remotes: dict[str, state.RemoteHead]
    new_claims: list[claims.Claim]
    remote_seqs: tuple[int, ...]
    pin_now: tuple[str, str] | None = None


def verify_fleet(
    path: Path | str,
    *,
    pins: Path | None = None,
    jobs: int | None = None,
    progress: schedule.Progress | None = None,
    full: bool = False,
) -> outcome.FleetResult:
    """Verify every ledger of the fleet copy at ``path`` (see the module's text).

    ``pins``: an auditor's pin file; a ledger not in it is ``unpinned`` and nothing is pinned
    on first use. ``jobs``: worker processes (default: the CPU count, and in this process when
    there is little to read; 1 verifies in this process; at most ``MAX_JOBS`` of
    ``ledger.verify.warmup``, never more than there is work for). ``full``: every record of
    every ledger is read again, not only those after the heads verified before (which still
    judge rollbacks and rewrites): what a copy damaged since its last verification needs.
    Saves the auditor's state; never raises on findings.
    """
    repo = copy.open_copy(path)
    with state.locked(repo):  # (a fetch rewrites the same state)
        return _verify_fleet(repo, path, pins, jobs, progress, full)


def _verify_fleet(
    repo: pygit2.Repository,
    path: Path | str,
    pins: Path | None,
    jobs: int | None,
    progress: schedule.Progress | None,
    full: bool,
) -> outcome.FleetResult:
    now = state.now()
    fleet = state.load_fleet(repo)
    # Only the remotes the auditor added count (its state's, never the copy's config): refs
    # under any other name are someone else's, named once and otherwise ignored.
    held, warnings = copy.added_heads(repo, fleet.remotes)
    pin_map = local.read_pins(pins) if pins is not None else None
    own = local.own_pins() if pins is None else {}
    plans = [
        schedule.make_plan(
            path, repo, lid, held.get(lid, {}), pin_map, own, added=set(fleet.remotes), full=full
        )
        for lid in sorted(set(held) | set(fleet.ledgers))
    ]
    # A ledger on no remote whose file the auditor deleted (docs/FLEET.md: accepting a
    # retired ledger) is forgotten, not reported as vanished.
    forgotten = {p.ledger_id for p in plans if p.prev is None and not p.heads}
    plans = [p for p in plans if p.ledger_id not in forgotten]
    asked = jobs is not None
    jobs = parallel.jobs_for(jobs)
    tasks = sorted((t for p in plans for t in p.tasks), key=lambda t: -t.size)
    results = schedule.run(tasks, jobs, progress, small_here=not asked)
    settled = {p.ledger_id: _settle(repo, p, results, now) for p in plans}
    _check_claims(repo, plans, settled, fleet.dismissed)
    # What cannot be saved (a full disk) is said with the verdict, which stands: each file
    # is one ledger's, so the rest are still saved, and a ledger whose state was not saved
    # is verified again from its previous state next time.
    unsaved: list[str] = []
    saved: set[str] = set()
    for p in plans:
        with _saving(unsaved):
            _remember(path, p, settled[p.ledger_id], now)
            saved.add(p.ledger_id)
    with _saving(unsaved):
        local.save_pins(
            {
                lid: done.pin_now[1]
                for lid, done in settled.items()
                if done.pin_now is not None and done.out.ok and lid not in own
            }
        )
    # (a copy fetched by other means than fetch; only ledgers whose own file was saved, so
    # that fleet.json never names a ledger with no file but one the auditor deleted)
    unseen = (set(held) & saved) - set(fleet.ledgers)
    if unseen or forgotten:
        fleet.ledgers.update({lid: state.LedgerSeen(now, now) for lid in unseen})
        for lid in forgotten:
            del fleet.ledgers[lid]
        with _saving(unsaved):
            state.save_fleet(repo, fleet)
    return outcome.FleetResult(
        [settled[p.ledger_id].out for p in plans],
        jobs=jobs,
        unsaved=unsaved,
        warnings=warnings,
    )


@contextlib.contextmanager
def _saving(unsaved: list[str]) -> Iterator[None]:
    """Save, or add what could not be saved to ``unsaved``."""
    try:
        yield
    except errors.StorageError as exc:
        unsaved.append(exc.message)


def dismiss_claims(path: Path | str, ledger_id: str, seq: int, reason: str) -> int:
    """Dismiss the claims of ledger ``ledger_id``'s witness record at ``seq`` (the auditor
    judged them false: a witness key misused, say): they stop being findings, and the
    dismissal with ``reason`` is kept in the auditor's state and said at the next
    verification. Only a record whose claims this copy's verification keeps now can be
    dismissed; returns how many claims that record has kept. :class:`InputError` when none
    are kept or ``reason`` is empty or not one line."""
    if not state.LEDGER_ID_RE.fullmatch(ledger_id):
        raise errors.InputError(
            f"{errors.quoted(ledger_id)} is not a ledger id (32 lowercase hex digits).",
            hint="Copy by_ledger from the finding of 'ledger fleet verify --json'.",
        )
    reason = reason.strip()
    if not reason or len(reason) > 500 or _CONTROL.search(reason):
        raise errors.InputError(
            "a dismissal needs a reason: one line of text, at most 500 characters.",
            hint="Say why the claims are false, for example --reason 'web1 witness key "
            "leaked; see INC-7'.",
        )
    repo = copy.open_copy(path)
    with state.locked(repo):
        saved = state.load_ledger(repo, ledger_id)
        kept = [
            c
            for c in (claims.Claim.from_json(d) for d in (saved.claims if saved else []))
            if c is not None and c.by_seq == seq
        ]
        if not kept:
            raise errors.InputError(
                f"this fleet copy keeps no claim of ledger {ledger_id}'s witness record at "
                f"seq {seq}.",
                hint="Dismiss what 'ledger fleet verify' reports: a witness finding names the "
                "witnessing ledger (by_ledger) and its record's seq (by_seq).",
            )
        fleet = state.load_fleet(repo)
        fleet.dismissed[(ledger_id, seq)] = {"reason": reason, "at": state.now()}
        state.save_fleet(repo, fleet)
    return len(kept)


# --- settling one ledger ----------------------------------------------------------------------


def _settle(
    repo: pygit2.Repository,
    plan: schedule.Plan,
    results: dict[tuple[str, str], findings.VerifyResult],
    now: str,
) -> _Settled:
    lid, prev = plan.ledger_id, plan.prev
    old = prev.verified if prev is not None else None
    out = outcome.LedgerOutcome(lid, dict(plan.heads), pin_source=plan.pin_source)
    kept = dict(prev.remotes) if prev is not None else {}
    if not plan.heads:
        where = ", ".join(sorted(kept)) or "a remote"
        out.findings.append(
            FleetFinding(
                "vanished",
                lid,
                old.seq if old else None,
                old.head if old else None,
                f"ledger {lid} is on no remote now; the auditor saw it before (on {where})",
            )
        )
        _describe_verified(repo, out, old)
        return _Settled(out, old, kept, [], ())
    res = {t.head: results[(lid, t.head)] for t in plan.tasks} | plan.behind
    for head, tip in plan.covered.items():
        res[head] = _under(repo, head, res[tip], plan.asked)
    _chain_findings(out, res.values())
    top = _top(out, lid, res)
    if top is not None and top in plan.behind and old is not None and top != old.head:
        out.findings.append(
            FleetFinding(
                "rollback",
                lid,
                res[top].seq,
                top,
                f"no remote holds the verified head {old.head} (seq {old.seq}) any more; the "
                f"furthest head, on {_on(sorted(n for n, h in plan.heads.items() if h == top))}, "
                f"is {top} at seq {res[top].seq}",
            )
        )
    _remote_findings(out, plan, res)
    if plan.unpinned:
        genesis = res[top].genesis if top is not None else None
        out.findings.append(
            FleetFinding(
                "unpinned",
                lid,
                0,
                genesis,
                f"ledger {lid} is not in the pin file (its chain starts at {genesis}); "
                "it is verified but not trusted",
            )
        )
    out.records_checked = sum(r.records_checked for r in res.values())
    verified, new_claims, pin_now = old, [], None
    if out.ok and top is not None and res[top].state is not None:
        verified = res[top].state
        new_claims = [claims.Claim.of(w) for w in res[top].witnessed]
        if plan.pin is None and verified is not None:
            pin_now = (lid, verified.genesis)  # trust on first use
    remotes = kept
    if out.ok:
        remotes = {
            name: state.RemoteHead(
                head,
                res[head].seq if head in res else (verified.seq if verified else None),
                kept[name].seen_at if name in kept and kept[name].head == head else now,
            )
            for name, head in plan.heads.items()
        }
    seqs = tuple(r.seq for r in res.values() if r.seq is not None)
    if not res and verified is not None:
        seqs = (verified.seq,)
    _describe_verified(repo, out, verified)
    return _Settled(out, verified, remotes, new_claims, seqs, pin_now)


def _under(
    repo: pygit2.Repository, head: str, tip: findings.VerifyResult, asked: list[str]
) -> findings.VerifyResult:
    """A head verified as part of ``tip``'s chain: its seq there (the verifier's), or none
    when that chain does not hold it after all (then it is a fork of ``tip``)."""
    seq = tip.included.get(head)
    return findings.VerifyResult(
        findings=[],
        head=head,
        seq=seq,
        records_checked=0,
        genesis=tip.genesis,
        ledger_id=tip.ledger_id,
        included={
            h: 0 if seq is not None and claims.on_verified_chain(repo, h, head) else None
            for h in asked
        },
    )


def _chain_findings(out: outcome.LedgerOutcome, results: Iterable[findings.VerifyResult]) -> None:
    """Every finding of every head's verification, once; and a ref holding another
    ledger's chain."""
    seen: set[findings.Finding] = set()
    for r in results:
        for f in r.findings:
            if f not in seen:
                seen.add(f)
                out.findings.append(f)
        if r.ledger_id is not None and r.ledger_id != out.ledger_id:
            out.findings.append(
                FleetFinding(
                    "ledger-id",
                    out.ledger_id,
                    r.seq,
                    r.head,
                    f"the ref of ledger {out.ledger_id} holds a chain of ledger {r.ledger_id}",
                )
            )


def _top(out: outcome.LedgerOutcome, lid: str, res: dict[str, findings.VerifyResult]) -> str | None:
    """The head every other head is on the chain of (its remotes lag: reported, not a
    finding); ``fork`` for each pair of heads where neither is on the other's chain."""
    if not res:
        return None
    names: dict[str, list[str]] = {}
    for name, head in sorted(out.heads.items()):
        names.setdefault(head, []).append(name)
    heads = sorted(res, key=lambda h: (res[h].seq if res[h].seq is not None else -1, h))
    top = heads[-1]
    for i, a in enumerate(heads):
        for b in heads[i + 1 :]:
            if res[a].included.get(b) is None and res[b].included.get(a) is None:
                out.findings.append(
                    FleetFinding(
                        "fork",
                        lid,
                        res[b].seq,
                        b,
                        f"{_on(names[a])} holds {a} (seq {res[a].seq}) and {_on(names[b])} "
                        f"holds {b} (seq {res[b].seq}); neither is on the other's chain",
                    )
                )
    top_seq = res[top].seq
    for name, head in out.heads.items():
        seq = res[head].seq
        if head != top and top_seq is not None and seq is not None and seq < top_seq:
            out.lag[name] = top_seq - seq
    return top


def _on(names: list[str]) -> str:
    return ("remote " if len(names) == 1 else "remotes ") + ", ".join(names)


def _remote_findings(
    out: outcome.LedgerOutcome, plan: schedule.Plan, res: dict[str, findings.VerifyResult]
) -> None:
    """A remote that no longer holds what it held when the auditor last saw it: gone
    (``vanished``), or its head's chain does not hold the old head (``rollback``)."""
    if plan.prev is None:
        return
    for name, remembered in sorted(plan.prev.remotes.items()):
        seen = state.RemoteHead(*schedule.last_held(remembered), remembered.seen_at)
        head = plan.heads.get(name)
        if head is None:
            out.findings.append(
                FleetFinding(
                    "vanished",
                    plan.ledger_id,
                    seen.seq,
                    seen.head,
                    f"remote {name} no longer holds ledger {plan.ledger_id}; it held seq "
                    f"{seen.seq} ({seen.head}) when last seen",
                    remote=name,
                )
            )
        elif head != seen.head and head in res and res[head].included.get(seen.head) is None:
            out.findings.append(
                FleetFinding(
                    "rollback",
                    plan.ledger_id,
                    res[head].seq,
                    head,
                    f"remote {name} holds seq {res[head].seq} ({head}), whose chain does not "
                    f"hold the head it held when last seen: seq {seen.seq} ({seen.head})",
                    remote=name,
                )
            )


def _describe_verified(
    repo: pygit2.Repository,
    out: outcome.LedgerOutcome,
    verified: verify_state.VerifiedState | None,
) -> None:
    """Name, host, head and seq from the verified head's records only (verified bytes)."""
    if verified is None:
        return
    out.head, out.seq, out.genesis = verified.head, verified.seq, verified.genesis
    out.name, out.host = describe(repo, verified.head)


def describe(repo: pygit2.Repository, head: str) -> tuple[str | None, str | None]:
    """The genesis record's ``data.name`` and the head record's ``host``, read from the
    tree of ``head`` (call it only with a verified head)."""
    name = host = None
    try:
        commit = repo[head]
        if not isinstance(commit, pygit2.Commit):
            return None, None
        tree = commit.tree
        genesis = json.loads(_blob(tree, "genesis.json"))
        name = genesis.get("data", {}).get("name")
        path = re.search(r"^Ledger-Record: (\S+)$", commit.message, re.M)
        if path is not None:
            host = json.loads(_blob(tree, path.group(1))).get("host")
    except (KeyError, ValueError, TypeError, AttributeError, pygit2.GitError):
        pass
    return (name if isinstance(name, str) else None, host if isinstance(host, str) else None)


def _blob(tree: pygit2.Tree, path: str) -> bytes:
    obj = tree[path]
    if not isinstance(obj, pygit2.Blob):
        raise ValueError(f"{path} is not a file")
    return obj.data


# --- witness claims ---------------------------------------------------------------------------


def _check_claims(
    repo: pygit2.Repository,
    plans: list[schedule.Plan],
    settled: dict[str, _Settled],
    dismissed: dict[tuple[str, int], dict[str, str]],
) -> None:
    """Each witnessing ledger's unresolved and new claims, checked against the witnessed
    ledger's verified head after this verification; findings go to the witnessed ledger
    (``witness-unknown``, information, to the witness). The claims of a witness record the
    auditor dismissed are dropped, with one ``witness-dismissed`` (information) each time
    they come back."""
    targets = {lid: claims.Target(True, s.verified, s.remote_seqs) for lid, s in settled.items()}
    unknown = claims.Target(False, None)
    for plan in plans:
        mine = settled[plan.ledger_id]
        saved = plan.prev.claims if plan.prev is not None else []
        todo = [c for c in (claims.Claim.from_json(d) for d in saved) if c is not None]
        todo += mine.new_claims
        todo, said = claims.drop_dismissed(todo, dismissed)
        mine.out.findings.extend(said)
        kept: list[claims.Claim] = []
        not_here: dict[str, list[tuple[claims.Claim, FleetFinding]]] = {}
        for claim in dict.fromkeys(todo):
            verdict = claims.check(repo, claim, targets.get(claim.ledger, unknown))
            if verdict == claims.RESOLVED:
                continue
            if isinstance(verdict, FleetFinding) and verdict.info:  # witness-unknown
                not_here.setdefault(claim.ledger, []).append((claim, verdict))
                continue
            kept.append(claim)
            if isinstance(verdict, FleetFinding):
                settled.get(claim.ledger, mine).out.findings.append(verdict)
        latest, said = claims.keep_unknown(not_here)
        mine.out.findings.extend(said)
        mine.new_claims = kept + latest


# --- remembering ------------------------------------------------------------------------------


def _remember(path: Path | str, plan: schedule.Plan, done: _Settled, now: str) -> None:
    """Save what this verification established; the status follows from the findings."""
    out = done.out
    if not plan.heads:
        out.status = "vanished"
    elif not out.ok:
        out.status = "findings"
    else:
        out.status = "new" if plan.is_new else "ok"
    prev = plan.prev
    verified = done.verified if out.ok else (prev.verified if prev else None)
    found = [outcome.finding_json(f, plan.ledger_id) for f in out.findings]
    new = state.LedgerState(
        ledger_id=plan.ledger_id,
        verified=verified,
        remotes=done.remotes if out.ok else (dict(prev.remotes) if prev else {}),
        claims=[c.to_json() for c in done.new_claims],
        outcome=state.Outcome(out.ok, found, now),
    )
    if (
        prev is not None
        and prev.outcome is not None
        and (prev.verified, prev.remotes, prev.claims) == (new.verified, new.remotes, new.claims)
        and (prev.outcome.ok, prev.outcome.findings) == (out.ok, found)
    ):
        return  # unchanged (an idle fleet's re-verification writes only fleet.json)
    state.save_ledger(path, new)
