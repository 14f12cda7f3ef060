"""Fetching and comparing: each remote's main against ours (behind, ahead, diverged, rolled
back, invalid), the chain verification of a head, and ``ledger status`` from what was last
seen."""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pygit2

from ledger import errors, redact, store, verify
from ledger.replicate import chain, pushes, remotes, state, transport


class RemoteCondition(enum.StrEnum):
    IN_SYNC = "in sync"
    BEHIND = "behind"  # the remote is a prefix of ours
    AHEAD = "ahead"  # ours is a prefix of the remote's
    EMPTY = "empty"  # the remote has no main
    DIVERGED = "diverged"
    ROLLBACK = "rollback"
    INVALID = "invalid"  # the remote's extra records do not verify
    UNREACHABLE = "unreachable"
    AUTH_FAILED = "auth failed"
    HOST_KEY = "host key refused"
    ERROR = "error"
    URL_CHANGED = "url changed"  # the config names another URL than when last checked
    MISSING = "missing"  # added by this user, gone from the config now
    UNKNOWN = "unknown remote"  # in the config, not added by this user: never contacted


_REMOTE_PROBLEMS = {
    RemoteCondition.DIVERGED,
    RemoteCondition.ROLLBACK,
    RemoteCondition.INVALID,
    RemoteCondition.UNKNOWN,
}


@dataclass
class RemoteState:
    """One remote compared with our ledger (from :func:`check_remotes`)."""

    name: str
    url: str
    condition: RemoteCondition
    local_head: str | None = None
    local_seq: int | None = None
    remote_head: str | None = None
    remote_seq: int | None = None
    last_seen_head: str | None = None
    last_seen_seq: int | None = None
    behind: int = 0  # records the remote lacks
    ahead: int = 0  # records the remote has beyond ours
    message: str = ""

    @property
    def problem(self) -> bool:
        """Divergence, rollback, invalid records or an unknown remote: possible tampering."""
        return self.condition in _REMOTE_PROBLEMS

    @property
    def checked(self) -> bool:
        return self.condition not in (
            RemoteCondition.UNREACHABLE,
            RemoteCondition.AUTH_FAILED,
            RemoteCondition.HOST_KEY,
            RemoteCondition.ERROR,
            RemoteCondition.URL_CHANGED,
            RemoteCondition.MISSING,
        )

    @property
    def rule(self) -> str | None:
        """The finding rule of docs/FORMAT.md §9 for a problem, else None."""
        if self.condition is RemoteCondition.DIVERGED:
            return "diverged"
        if self.condition is RemoteCondition.ROLLBACK:
            return "rollback"
        if self.condition is RemoteCondition.INVALID:
            return "diverged"
        if self.condition is RemoteCondition.UNKNOWN:
            return "unknown-remote"
        return None

    def line(self) -> str:
        c = self.condition
        if c is RemoteCondition.IN_SYNC:
            return f"in sync at seq {self.remote_seq} ({chain.short(self.remote_head)})"
        if c is RemoteCondition.BEHIND:
            return (
                f"{self.behind} record(s) behind: at seq {self.remote_seq} "
                f"({chain.short(self.remote_head)}), ours is seq {self.local_seq}"
            )
        if c is RemoteCondition.AHEAD:
            return (
                f"{self.ahead} record(s) ahead of us: at seq {self.remote_seq} "
                f"({chain.short(self.remote_head)}); {self.message}"
            )
        if c is RemoteCondition.EMPTY:
            return "holds no records yet"
        return f"{c.value.upper() if self.problem else c.value}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {
            "remote": self.name,
            "url": self.url,
            "condition": self.condition.value,
            "problem": self.problem,
            "rule": self.rule,
            "local_head": self.local_head,
            "local_seq": self.local_seq,
            "remote_head": self.remote_head,
            "remote_seq": self.remote_seq,
            "last_seen_head": self.last_seen_head,
            "last_seen_seq": self.last_seen_seq,
            "behind": self.behind,
            "ahead": self.ahead,
            "message": self.message,
        }


_REMOTE_FROM_PUSH = {
    pushes.PushStatus.UNREACHABLE: RemoteCondition.UNREACHABLE,
    pushes.PushStatus.AUTH_FAILED: RemoteCondition.AUTH_FAILED,
    pushes.PushStatus.HOST_KEY: RemoteCondition.HOST_KEY,
}


def check_one(
    ledger_path: Path,
    name: str,
    creds: transport.Credentials,
    last_seen: Mapping[str, Any] | None = None,
    verify_ahead: bool = True,
) -> RemoteState:
    """Fetch one remote's main into ``refs/remotes/NAME/main`` and compare it with ours."""
    repo, url, local, local_seq = transport.open_for_remote(ledger_path, name, creds)
    st = RemoteState(
        name, redact.mask_url(url), RemoteCondition.ERROR, local_head=local, local_seq=local_seq
    )
    if (last_seen or {}).get("unknown"):
        st.condition, st.message = RemoteCondition.UNKNOWN, state.unknown_message(name, st.url)
        return st
    prev = (last_seen or {}).get("head")
    st.last_seen_head = prev
    st.last_seen_seq = (last_seen or {}).get("seq")
    if (last_seen or {}).get("url_changed_from"):
        # Not the URL the user gave: compared anonymously, never sent the user's secrets.
        creds = dataclasses.replace(
            creds,
            ssh_key=None,
            ssh_passphrase=None,
            http_user=None,
            http_password=None,
            use_agent=False,
        )
    cb = transport.Callbacks(url, creds, repo.config)
    try:
        fetched = transport.fetch_main(repo, name, cb)
    except transport.AuthFailed as exc:
        st.condition, st.message = RemoteCondition.AUTH_FAILED, str(exc)
        _note_url_change(st, (last_seen or {}).get("url_changed_from"))
        return st
    except pygit2.GitError as exc:
        status, message = pushes.classify_git_error(exc, cb)
        st.condition = _REMOTE_FROM_PUSH.get(status, RemoteCondition.ERROR)
        st.message = message
        _note_url_change(st, (last_seen or {}).get("url_changed_from"))
        return st
    st.remote_head = fetched
    st.remote_seq = chain.commit_seq(repo, fetched) if fetched else None
    _compare(repo, st, local, fetched, verify_ahead)
    _note_url_change(st, (last_seen or {}).get("url_changed_from"))
    return st


def _note_url_change(st: RemoteState, before: Any) -> None:
    """A URL changed in the config without 'ledger remote add': fail closed, loudly."""
    if not isinstance(before, str):
        return
    said = (
        f"remote {st.name} now points at {st.url}, but it pointed at {before} when it was "
        "last checked on this machine, and the change was not made with 'ledger remote add' "
        "(someone who can write the ledger's config may have pointed it at a doctored copy)"
    )
    if st.problem:
        st.message = f"{st.message}; {said}"
    else:
        found = "" if st.checked else f" (it was contacted without your credentials: {st.message})"
        st.condition = RemoteCondition.URL_CHANGED
        st.message = (
            f"{said}{found}. If you changed it, run 'ledger remote trust {st.name}' to accept "
            "the URL it has now."
        )


def _compare(
    repo: pygit2.Repository,
    st: RemoteState,
    local: str | None,
    fetched: str | None,
    verify_ahead: bool,
) -> None:
    """Classify the fetched head against ours and against what the remote held before."""
    prev = st.last_seen_head
    if fetched is None:
        if prev:
            st.condition = RemoteCondition.ROLLBACK
            st.message = (
                f"the remote's main is gone, but it held {prev} (seq "
                f"{st.last_seen_seq}) when we last saw it"
            )
        else:
            st.condition = RemoteCondition.EMPTY
            st.behind = (st.local_seq or 0) + 1 if local else 0
        return
    if local is None:
        st.condition = RemoteCondition.AHEAD
        st.ahead = (st.remote_seq or 0) + 1
        return
    if fetched == local:
        st.condition = RemoteCondition.IN_SYNC
    elif chain.is_ancestor(repo, fetched, local):
        st.condition = RemoteCondition.BEHIND
        st.behind = chain.ahead(repo, local, fetched)
    elif chain.is_ancestor(repo, local, fetched):
        st.condition = RemoteCondition.AHEAD
        st.ahead = chain.ahead(repo, fetched, local)
        st.message = "run 'ledger verify' on a clone of it before trusting those records"
        if verify_ahead:
            _verify_ahead(repo, st, local, fetched)
    else:
        st.condition = RemoteCondition.DIVERGED
        st.message = (
            f"the remote's main is {fetched} (seq {st.remote_seq}) and ours is {local} "
            f"(seq {st.local_seq}); neither extends the other: the remote was rewritten or "
            "holds another ledger (possible tampering). Nothing was overwritten."
        )
        return
    _compare_last_seen(repo, st, fetched)


def _verify_ahead(repo: pygit2.Repository, st: RemoteState, local: str, fetched: str) -> None:
    """Verify the remote's records beyond ours (``fetched`` extends ``local``)."""
    # From this copy's verified head (its pinned genesis, only the records after it) when it
    # is on the remote's chain; else the whole chain from the genesis ours starts at.
    saved = verify.load_state(repo)
    if saved is not None and chain.is_ancestor(repo, saved.head, fetched):
        problems, _result = verify_head(repo, fetched, trust_genesis=saved.genesis, since=saved)
    else:
        problems, _result = verify_head(repo, fetched, trust_genesis=chain.root_commit(repo, local))
    if problems:
        st.condition = RemoteCondition.INVALID
        st.message = (
            f"the remote's records beyond ours (up to {fetched}) do not "
            "verify: " + "; ".join(problems[:10])
        )
    else:
        st.message = "its extra records verify"


def _compare_last_seen(repo: pygit2.Repository, st: RemoteState, fetched: str) -> None:
    """A rollback or rewrite since we last saw the remote overrides the comparison with ours."""
    prev = st.last_seen_head
    if not prev or prev == fetched:
        return
    if not chain.has(repo, prev):
        # Everything the remote holds is here now (just fetched): it no longer holds prev.
        st.condition = RemoteCondition.DIVERGED
        st.message = (
            f"the remote's main {fetched} (seq {st.remote_seq}) does not contain {prev} "
            f"(seq {st.last_seen_seq}), which it held when we last saw it: its history was "
            "rewritten (possible tampering)"
        )
        return
    if chain.is_ancestor(repo, fetched, prev):
        st.condition = RemoteCondition.ROLLBACK
        st.message = (
            f"the remote went back from {prev} (seq {st.last_seen_seq}) to "
            f"{fetched} (seq {st.remote_seq}) since we last saw it: records were "
            "removed there (possible tampering)"
        )
    elif not chain.is_ancestor(repo, prev, fetched):
        st.condition = RemoteCondition.DIVERGED
        st.message = (
            f"the remote's main {fetched} (seq {st.remote_seq}) does not extend "
            f"{prev} (seq {st.last_seen_seq}), which it held when we last saw it: "
            "its history was rewritten (possible tampering)"
        )


def check_remotes(
    ledger_path: Path,
    names: Sequence[str] | None = None,
    *,
    credentials: transport.Credentials | None = None,
    ledger_id: str | None = None,
) -> list[RemoteState]:
    """Fetch every remote's main (in parallel) and classify it against our main.

    Remote heads go to ``refs/remotes/NAME/main``; our ``refs/heads/main`` is never touched.
    The remembered head of a remote is updated only when it is not a problem, so a
    divergence or rollback keeps being reported until someone deals with it. A remote this
    user did not add is not contacted (:attr:`RemoteCondition.UNKNOWN`). ``ledger_id`` is
    the ledger id a verification just established (else :func:`state.ledger_key` finds it).
    """
    creds = credentials or transport.Credentials.from_env()
    repo = store.open_repository(ledger_path)
    chosen = remotes.select_remotes(repo, names)
    seen = state.read(repo, ledger_id)
    if not chosen:
        return [] if names else _missing(repo, ledger_path, ledger_id)
    with ThreadPoolExecutor(max_workers=min(len(chosen), 16)) as pool:
        futures = [
            pool.submit(check_one, ledger_path, r.name, creds, seen.get(r.name)) for r in chosen
        ]
        results = [f.result() for f in futures]
    if not names:
        results += _missing(repo, ledger_path, ledger_id)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with state.lock(repo, ledger_id) as st:
        for r in results:
            if r.condition in (RemoteCondition.MISSING, RemoteCondition.UNKNOWN):
                continue
            entry = dict(st.get(r.name) or {})
            entry["url"] = r.url
            entry["checked"] = now
            entry["status"] = r.condition.value
            if r.checked and not r.problem and r.remote_head:
                entry.update(head=r.remote_head, seq=r.remote_seq, time=now)
                entry.pop("problem", None)
            elif r.problem:
                entry["problem"] = {
                    "status": r.condition.value,
                    "head": r.remote_head,
                    "time": now,
                    "message": r.message,
                }
            st[r.name] = entry
    return results


def _missing(
    repo: pygit2.Repository, ledger_path: Path, ledger_id: str | None
) -> list[RemoteState]:
    """Remotes this user added that the ledger's config no longer names."""
    out = []
    for name, url in sorted(state.missing(repo, ledger_id).items()):
        st = RemoteState(name, url, RemoteCondition.MISSING)
        st.message = (
            f"remote {name} ({url}) was added by you, but the ledger's config {ledger_path} "
            "no longer names it, and it was not removed with 'ledger remote remove' (someone "
            "who can write the config may have removed a witness)"
        )
        out.append(st)
    return out


# --- status -------------------------------------------------------------------------------


@dataclass
class RemoteStatus:
    name: str
    url: str
    transport: str
    last_head: str | None
    last_seq: int | None
    behind: int | None  # records the remote lacked when last seen (None: never seen)
    last_time: str | None
    last_status: str | None
    problem: str | None
    warning: str | None


@dataclass
class LedgerStatus:
    path: Path
    head: str | None
    seq: int | None
    remotes: list[RemoteStatus]
    unfinished_runs: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "head": self.head,
            "seq": self.seq,
            "unfinished_runs": self.unfinished_runs,
            "remotes": [r.__dict__ for r in self.remotes],
        }


def status(ledger_path: Path, *, allow_unverified: bool = False) -> LedgerStatus:
    """The verified head and its seq, what each remote held when last seen, unfinished runs
    (read from the verified chain: :class:`VerificationFailed` when it does not verify,
    unless ``allow_unverified``). When this user's remote state cannot be read (a copy never
    verified here, a ledger claiming another id), every remote shows that as its problem."""
    ledger = store.Ledger.open(ledger_path)
    ledger.allow_unverified = allow_unverified
    at = ledger.verified_head()
    view = ledger.trust_view() if at is not None else None
    head = store.Head(view.head, view.seq) if view is not None and view.seq is not None else None
    repo = ledger.repo
    unread = None
    try:
        seen = state.read(repo)
    except errors.LedgerError as exc:
        seen, unread = {}, f"your record of this remote could not be read: {exc.message}"
    rows = []
    for info in remotes.list_remotes(ledger_path):
        entry = seen.get(info.name) or {}
        last_head = entry.get("head")
        last_seq = entry.get("seq")
        behind = None
        if head is not None and isinstance(last_seq, int):
            behind = max(head.seq - last_seq, 0)
        elif head is not None and last_head is None:
            behind = head.seq + 1
        problem = unread or _entry_problem(info.name, info.url, entry)
        rows.append(
            RemoteStatus(
                info.name,
                info.url,
                info.transport,
                last_head,
                last_seq,
                behind,
                entry.get("time"),
                entry.get("status"),
                problem,
                info.warning,
            )
        )
    return LedgerStatus(
        ledger_path,
        head.commit_id if head else None,
        head.seq if head else None,
        rows,
        ledger.unfinished_runs(at=at) if at is not None else [],
    )


def _entry_problem(name: str, url: str, entry: Mapping[str, Any]) -> str | None:
    """The problems the user's state records for a remote, as one line (password masked)."""
    if entry.get("unknown"):
        return redact.mask_url(state.unknown_message(name, url))
    problem = entry.get("problem", {}).get("message") if entry.get("problem") else None
    if entry.get("rollback"):
        problem = (problem + "; " if problem else "") + str(entry["rollback"].get("message"))
    if entry.get("url_changed_from"):
        problem = (problem + "; " if problem else "") + (
            f"its URL was {entry['url_changed_from']} when you added it, and was changed "
            f"without 'ledger remote add' (run 'ledger remote trust {name}' if you changed it)"
        )
    return redact.mask_url(problem) if problem else None


# --- chain verification -----------------------------------------------------------------


def finding_lines(result: Any) -> list[str]:
    """One line per finding of a verification: where, what, and its rule."""
    out = []
    for f in result.findings:
        where = f"commit {f.commit}" if f.commit else "the chain"
        if f.seq is not None:
            where += f" (seq {f.seq})"
        out.append(f"{where}: {f.message} [rule: {f.rule}]")
    if not out and not result.ok:
        out.append(f"the chain ending at {result.head} does not verify")
    return out


def verify_head(
    repo: pygit2.Repository,
    head: str,
    *,
    trust_genesis: str | None,
    since: Any = None,
    require_user_presence: bool = False,
    jobs: int = 1,
) -> tuple[list[str], Any]:
    """Verify the chain ending at ``head`` with :func:`ledger.verify.verify_chain`.

    ``jobs``: the verifier's worker processes, which open the repository by its path: 1
    (in this process) unless ``repo`` holds every object itself (a hook's quarantine is an
    alternate of this repository object only).

    Returns one line per finding (empty: it verifies) and the verifier's result."""
    result = verify.verify_chain(
        repo,
        head,
        trust_genesis=trust_genesis,
        since=since,
        require_user_presence=require_user_presence,
        jobs=jobs,
    )
    return finding_lines(result), result
