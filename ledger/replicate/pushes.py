"""Pushing our main to remotes, fast-forward only and never forced: the outcome of one push
(:class:`PushStatus`, :class:`PushOutcome`), the summary of all (:class:`PushSummary`), and
how libgit2's errors are classified."""

from __future__ import annotations

import contextlib
import enum
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pygit2

from ledger import errors, redact, store
from ledger.replicate import chain, remotes, state, transport

PUSH_REFSPEC = f"{chain.MAIN_REF}:{chain.MAIN_REF}"


class PushStatus(enum.StrEnum):
    PUSHED = "pushed"
    UP_TO_DATE = "up to date"
    AHEAD = "ahead"
    REJECTED = "rejected"
    DIVERGED = "diverged"
    UNREACHABLE = "unreachable"
    AUTH_FAILED = "auth failed"
    HOST_KEY = "host key refused"
    ERROR = "error"
    PENDING = "pending"
    UNKNOWN = "unknown remote"  # in the config, not added by this user: never contacted


def connection_hint(status: PushStatus, otherwise: str) -> str:
    """What to do about a remote that refused the credentials or whose host key is not
    known; ``otherwise`` for any other status."""
    if status is PushStatus.AUTH_FAILED:
        return (
            "Provide credentials: --ssh-key / LEDGER_SSH_KEY or ssh-agent for ssh, "
            "LEDGER_HTTP_TOKEN (or LEDGER_HTTP_USER + LEDGER_HTTP_PASSWORD) for https."
        )
    if status is PushStatus.HOST_KEY:
        return (
            "Add the host's key to ~/.ssh/known_hosts after checking its fingerprint "
            "(ssh-keyscan), or pass --insecure-host-key to skip the check."
        )
    return otherwise


_HOLDING = {PushStatus.PUSHED, PushStatus.UP_TO_DATE, PushStatus.AHEAD}
_INTEGRITY = {PushStatus.REJECTED, PushStatus.DIVERGED}


@dataclass
class PushOutcome:
    """What happened to one remote in one push."""

    remote: str
    url: str
    status: PushStatus
    local_head: str | None = None
    local_seq: int | None = None
    remote_head: str | None = None  # what the remote holds afterwards, when known
    remote_seq: int | None = None
    records: int = 0
    message: str = ""
    rollback: str | None = None  # set when the remote went backwards since we last saw it
    seconds: float = 0.0

    @property
    def holds_head(self) -> bool:
        return self.status in _HOLDING

    @property
    def problem(self) -> bool:
        return self.status in _INTEGRITY or self.rollback is not None

    def line(self) -> str:
        s = self.status
        if s is PushStatus.PUSHED:
            what = "record" if self.records == 1 else "records"
            text = f"pushed {self.records} {what} (now at seq {self.local_seq})"
        elif s is PushStatus.UP_TO_DATE:
            text = f"up to date (seq {self.local_seq})"
        elif s is PushStatus.AHEAD:
            text = f"ahead: {self.message}"
        elif s is PushStatus.DIVERGED:
            text = f"DIVERGED: {self.message}"
        else:
            text = f"{s.value}: {self.message}" if self.message else s.value
        if self.rollback:
            text += f"; ROLLBACK: {self.rollback}"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "remote": self.remote,
            "url": self.url,
            "status": self.status.value,
            "records": self.records,
            "local_head": self.local_head,
            "local_seq": self.local_seq,
            "remote_head": self.remote_head,
            "remote_seq": self.remote_seq,
            "message": self.message,
            "rollback": self.rollback,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class PushSummary:
    head: str | None
    seq: int | None
    outcomes: list[PushOutcome] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def holding(self) -> int:
        return sum(1 for o in self.outcomes if o.holds_head)

    @property
    def problems(self) -> list[PushOutcome]:
        return [o for o in self.outcomes if o.problem]

    @property
    def unknown(self) -> list[PushOutcome]:
        """Remotes in the config that this user did not add (not counted as replicas)."""
        return [o for o in self.outcomes if o.status is PushStatus.UNKNOWN]

    def check(self, require: int | None) -> None:
        """Raise :class:`RemoteError` unless the push met its requirement.

        ``require=None``: every remote must hold our head. ``require=N``: at least N must.
        A rejection, divergence or rollback always fails.
        """
        problems = self.problems
        if problems:
            names = ", ".join(f"{o.remote} ({o.line()})" for o in problems)
            raise errors.RemoteError(
                f"push found a problem that needs a person: {names}.",
                hint="Nothing was forced and nothing overwritten. Compare the histories with "
                "'ledger fetch' and investigate before pushing there again.",
            )
        total = len(self.outcomes) - len(self.unknown)
        need = len(self.outcomes) if require is None else min(require, total)
        trust = (
            " Unknown remotes (not added by you) never count: 'ledger remote trust NAME' "
            "accepts one you added yourself."
            if self.unknown
            else ""
        )
        if require is not None and require > total:
            raise errors.RemoteError(
                f"--require {require} cannot be met: only {total} remote(s) that you added "
                "are configured.",
                hint="Add remotes with 'ledger remote add', or lower --require." + trust,
            )
        if self.holding < need:
            missing = ", ".join(
                f"{o.remote} ({o.status.value})" for o in self.outcomes if not o.holds_head
            )
            raise errors.RemoteError(
                f"only {self.holding} of {len(self.outcomes)} remote(s) hold our head "
                f"{chain.short(self.head)} (seq {self.seq}); {need} required. Missing: {missing}.",
                hint="The records are safe locally; run 'ledger push' again when the remotes "
                "are reachable ('ledger status' shows the lag)." + trust,
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "head": self.head,
            "seq": self.seq,
            "holding": self.holding,
            "outcomes": [o.to_json() for o in self.outcomes],
            "warnings": self.warnings,
        }


def classify_git_error(
    exc: BaseException, cb: transport.Callbacks | None
) -> tuple[PushStatus, str]:
    text = redact.mask_url(str(exc).strip() or exc.__class__.__name__)
    if isinstance(exc, transport.AuthFailed):
        return PushStatus.AUTH_FAILED, text
    if cb is not None and cb.host_key_problem:
        return PushStatus.HOST_KEY, cb.host_key_problem
    low = text.lower()
    if any(
        w in low
        for w in (
            "authentication",
            "permission denied",
            "401",
            "403",
            "unauthorized",
            "auth replays",
            "credentials",
        )
    ):
        if cb is not None and cb.tried:
            text = f"{text} (tried: {', '.join(cb.tried)})"
        return PushStatus.AUTH_FAILED, text
    if any(
        w in low
        for w in (
            "failed to connect",
            "connection refused",
            "could not resolve",
            "failed to resolve",
            "name or service",
            "timed out",
            "timeout",
            "unreachable",
            "no route",
            "connection reset",
            "network",
            "failed to send",
            "eof",
            "broken pipe",
            "unexpected disconnect",
            "failed to start ssh session",
            "failed to receive",
            "connect",
        )
    ):
        return PushStatus.UNREACHABLE, text
    if any(
        w in low
        for w in (
            "not exported",
            "not found",
            "does not appear",
            "could not find",
            "does not exist",
            "no such file",
            "failed to resolve path",
            "not a git repository",
            "404",
        )
    ):
        return PushStatus.UNREACHABLE, f"repository not found or not served there ({text})"
    return PushStatus.ERROR, text


# --- push ---------------------------------------------------------------------------------


def push_one(
    ledger_path: Path,
    name: str,
    creds: transport.Credentials,
    last_seen: Mapping[str, Any] | None = None,
) -> PushOutcome:
    """Push our main to one remote (fast-forward only); never raises for remote trouble."""
    start = time.monotonic()
    repo, url, local, local_seq = transport.open_for_remote(ledger_path, name, creds)
    out = PushOutcome(
        name, redact.mask_url(url), PushStatus.ERROR, local_head=local, local_seq=local_seq
    )
    if local is None:
        out.message = "the ledger has no records to push"
        return out
    seen = last_seen or {}
    if seen.get("unknown") or seen.get("url_changed_from"):
        out.status = PushStatus.UNKNOWN  # (its URL is not the one the user gave it)
        out.message = state.unknown_message(name, out.url, seen.get("url_changed_from"))
        return out
    cb = transport.Callbacks(url, creds, repo.config)
    try:
        remote_head = transport.list_main(repo, name, cb)
        out.remote_head = remote_head
        if remote_head is not None and remote_head == local:
            out.status = PushStatus.UP_TO_DATE
        elif remote_head is None or (
            chain.has(repo, remote_head) and chain.is_ancestor(repo, remote_head, local)
        ):
            if remote_head is None and seen.get("head"):
                out.rollback = (
                    f"the remote's main is gone, but it held {chain.short(seen['head'])} "
                    f"(seq {seen.get('seq')}) when we last saw it"
                )
            _send(repo, name, out, local, remote_head, cb)
        else:
            _refuse(repo, out, local, transport.fetch_main(repo, name, cb))
        if out.remote_head is not None:
            out.remote_seq = chain.commit_seq(repo, out.remote_head)
        if out.rollback is None:
            out.rollback = _went_back(repo, out, remote_head, seen)
    except transport.AuthFailed as exc:
        out.status, out.message = PushStatus.AUTH_FAILED, str(exc)
    except pygit2.GitError as exc:
        status, message = classify_git_error(exc, cb)
        if "non-fastforwardable" in str(exc) or "non-fast-forward" in str(exc):
            status = PushStatus.REJECTED
            message = redact.mask_url(
                f"{exc} (the remote moved while we pushed; run 'ledger push' again)"
            )
        out.status, out.message = status, message
    except (OSError, ValueError, KeyError) as exc:
        out.status, out.message = PushStatus.ERROR, redact.mask_url(str(exc))
    out.seconds = time.monotonic() - start
    return out


def _send(
    repo: pygit2.Repository,
    name: str,
    out: PushOutcome,
    local: str,
    remote_head: str | None,
    cb: transport.Callbacks,
) -> None:
    """The push itself, when the remote's main is missing or an ancestor of ours."""
    out.records = chain.ahead(repo, local, remote_head)
    target = remotes.remote_ref(repo, name)
    transport.push_main(repo, name, f"{chain.MAIN_REF}:{target}", cb)
    if cb.rejections:
        out.status = PushStatus.REJECTED
        refs = "; ".join(f"{ref}: {msg}" for ref, msg in cb.rejections)
        server = cb.server_messages()
        out.message = refs + (" — server said: " + " | ".join(server) if server else "")
        out.records = 0
    elif target in cb.accepted:
        out.status = PushStatus.PUSHED
        out.remote_head = local
    else:
        out.status = PushStatus.ERROR
        out.message = f"the remote did not report the state of {target}"


def _refuse(repo: pygit2.Repository, out: PushOutcome, local: str, fetched: str | None) -> None:
    """Why nothing is pushed when the remote's main (``fetched``) is not an ancestor of our
    main (``local``): the remote is ahead of us, or the two diverged."""
    out.remote_head = fetched
    if fetched is not None and chain.is_ancestor(repo, local, fetched):
        out.status = PushStatus.AHEAD
        n = chain.ahead(repo, fetched, local)
        out.message = (
            f"the remote holds {n} record(s) beyond our head "
            f"{chain.short(local)}: its main is {fetched} (seq "
            f"{chain.commit_seq(repo, fetched)}). Nothing pushed; check where they "
            "came from with 'ledger fetch'."
        )
    else:
        out.status = PushStatus.DIVERGED
        out.message = (
            f"the remote's main {fetched} (seq {chain.commit_seq(repo, fetched or '')}) and "
            f"our main {local} (seq {out.local_seq}) do not extend one another: the "
            "remote was rewritten or holds another ledger (possible tampering). Nothing "
            "was pushed or overwritten."
        )


def _went_back(
    repo: pygit2.Repository, out: PushOutcome, remote_head: str | None, seen: Mapping[str, Any]
) -> str | None:
    """The rollback message when the remote's main (before our push) is an ancestor of the
    head it held when we last saw it, else None."""
    prev = seen.get("head")
    if not prev or out.remote_head is None or out.status is PushStatus.DIVERGED:
        return None
    before = remote_head if remote_head is not None else out.remote_head
    if (
        before != prev
        and chain.has(repo, prev)
        and chain.has(repo, before)
        and chain.is_ancestor(repo, before, prev)
    ):
        return (
            f"the remote went back from {chain.short(prev)} (seq "
            f"{seen.get('seq')}) to {chain.short(before)} (seq "
            f"{chain.commit_seq(repo, before)}) since we last saw it"
        )
    return None


def record_outcomes(repo: pygit2.Repository, outcomes: Iterable[PushOutcome]) -> None:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with state.lock(repo) as seen:
        for o in outcomes:
            if o.status is PushStatus.UNKNOWN:
                continue  # never contacted; nothing is kept about it
            entry = dict(seen.get(o.remote) or {})
            entry["url"] = o.url
            entry["checked"] = now
            entry["status"] = o.status.value
            if o.status in _HOLDING and o.remote_head:
                entry["head"] = o.remote_head
                entry["seq"] = o.remote_seq
                entry["time"] = now
                entry.pop("problem", None)
                _set_tracking(repo, o.remote, o.remote_head)
            elif o.status is PushStatus.DIVERGED:
                entry["problem"] = {
                    "status": o.status.value,
                    "head": o.remote_head,
                    "time": now,
                    "message": o.message,
                }
            if o.rollback:
                entry["rollback"] = {"time": now, "message": o.rollback}
            seen[o.remote] = entry


def _set_tracking(repo: pygit2.Repository, name: str, oid: str) -> None:
    if chain.has(repo, oid):
        with contextlib.suppress(pygit2.GitError, ValueError):
            repo.references.create(f"refs/remotes/{name}/main", oid, force=True)


def push(
    ledger_path: Path,
    names: Sequence[str] | None = None,
    *,
    credentials: transport.Credentials | None = None,
    allow_unverified: bool = False,
) -> PushSummary:
    """Push our main to the remotes (all by default) in parallel; never forces.

    A chain that does not verify is pushed nowhere unless ``allow_unverified`` (someone who
    investigated it: to keep evidence, or to see a protected remote's hook refuse it).

    Returns every remote's outcome; raises only for local problems (no ledger, unknown remote
    name, a chain that does not verify: :class:`~ledger.errors.VerificationFailed`). Call
    :meth:`PushSummary.check` to turn the outcomes into an exit status.
    """
    creds = credentials or transport.Credentials.from_env()
    repo = store.open_repository(ledger_path)
    chosen = remotes.select_remotes(repo, names)
    head = chain.main_head(repo)
    if head is not None and chosen and not allow_unverified:
        # Only a chain that verifies is replicated (incrementally from this copy's verified
        # head): a record forged into the ledger directory must not reach a remote that has no
        # hook of its own to refuse it (a path remote, a shared host without hooks).
        view = store.Ledger.open(ledger_path).trust_view()
        if not view.ok:
            raise view.refuse(ledger_path, "it is not pushed to any remote")
    summary = PushSummary(
        head,
        chain.commit_seq(repo, head) if head else None,
        warnings=[r.warning for r in chosen if r.warning],
    )
    if not chosen:
        return summary
    seen = state.read(repo)
    with ThreadPoolExecutor(max_workers=min(len(chosen), 16)) as pool:
        futures = [
            pool.submit(push_one, ledger_path, r.name, creds, seen.get(r.name)) for r in chosen
        ]
        summary.outcomes = [f.result() for f in futures]
    record_outcomes(repo, summary.outcomes)
    return summary
