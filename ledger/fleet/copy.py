"""The auditor's fleet copy: one bare git repository (not a ledger) holding every ledger of
one or more shared remotes, fetched with the replication transport.

Layout (the fleet contract, docs/FLEET.md): config ``ledger.fleet = true`` and per shared
remote ``fleet.remote.<NAME>.url`` (not git remotes: every fetch uses an anonymous remote,
see :func:`ledger.replicate.transport.anonymous`). Ledger ``<id>`` as remote NAME holds it
is ``refs/fleet/<NAME>/<id>/main``, forced on every fetch: the copy shows what each server
holds now. What was seen before, and when, is the auditor's own memory (:mod:`.state`),
which a fetch updates; the copy itself is as untrusted as a ledger directory. A remote's
URL is followed only as it was added (the state keeps it): one changed in the copy's config
behind the auditor's back is not fetched.

A fetch lists the server's refs first and fetches only ``refs/ledgers/<32 hex>/main``; any
other ref is ignored (reported, its objects never fetched).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pygit2

from ledger import errors, redact, store
from ledger.fleet import added, peek, state
from ledger.replicate import pushes, remotes, shared, transport

FLEET_KEY = "ledger.fleet"
REF_PREFIX = "refs/fleet/"
ENV_FLEET = "LEDGER_FLEET"
DEFAULT_REMOTE = "origin"
_URL_KEY_RE = re.compile(r"^fleet\.remote\.(.+)\.url$")
_FLEET_REF_RE = re.compile(r"^refs/fleet/([^/]+)/([0-9a-f]{32})/main$")
#: The most of a head's commit and record that is read to show it (unverified bytes).

NOT_A_COPY_HINT = (
    "Make one with 'ledger fleet clone URL DIR', or point to one with --fleet DIR "
    f"(or ${ENV_FLEET})."
)


def fleet_ref(name: str, ledger_id: str) -> str:
    """Where the copy keeps ledger ``ledger_id`` as remote ``name`` holds it."""
    return f"{REF_PREFIX}{name}/{ledger_id}/main"


# --- the copy --------------------------------------------------------------------------------


DAMAGED_HINT = (
    "Remove what is named (only ledger fleet and git write there), or move the copy aside "
    "and 'ledger fleet clone' the same URL to the same path (docs/FLEET.md, 'A copy damaged "
    "on disk'); what the auditor verified is kept."
)


def open_copy(path: Path | str) -> pygit2.Repository:
    """The fleet copy at exactly ``path`` (never a ``.git`` inside it); :class:`FleetNotFound`
    when it is none; :class:`StorageError` when a file git reads there is not a regular file
    or its refs cannot be read (someone who can write the copy put it there, or it is
    damaged): libgit2 would otherwise block on a FIFO, follow a link, or fail later."""
    where = Path(path)
    if where.is_dir():
        try:
            problem = store.special_entry(where)
        except OSError as exc:
            problem = f"it cannot be read ({exc.strerror or exc})"
        if problem is not None:
            raise _damaged(where, problem)
    try:
        repo = pygit2.Repository(str(where), store.OPEN_FLAGS)
        is_fleet = repo.is_bare and repo.config.get_bool(FLEET_KEY)
    except (pygit2.GitError, KeyError, ValueError):
        is_fleet = False
    if not is_fleet:
        why = (
            "the path does not exist"
            if not where.exists()
            else f"not a bare repository with {FLEET_KEY} = true"
        )
        raise errors.FleetNotFound(
            f"{where} is not a fleet copy ({why}).",
            hint=NOT_A_COPY_HINT,
        )
    try:  # (a lookup of a ref that is never loose reads packed-refs whole)
        repo.references.get(f"{REF_PREFIX}-")
    except (pygit2.GitError, ValueError) as exc:
        raise _damaged(where, f"its refs cannot be read ({exc})") from None
    return repo


def _damaged(where: Path, problem: str) -> errors.StorageError:
    return errors.StorageError(
        f"the fleet copy {where} is damaged or was tampered with: {problem}; nothing in it "
        "was read.",
        hint=DAMAGED_HINT,
    )


def configured_remotes(repo: pygit2.Repository) -> dict[str, str]:
    """The shared remotes of the copy's config: name to URL (as configured: unverified)."""
    out: dict[str, str] = {}
    for entry in repo.config:
        m = _URL_KEY_RE.match(entry.name)
        if m:
            out[m.group(1)] = str(entry.value)
    return dict(sorted(out.items()))


def _check_new_remote(name: str, url: str) -> str:
    remotes.check_remote_name(name)
    remotes.classify_url(url)
    return remotes.normalize_url(url)


def init_copy(url: str, path: Path | str, name: str = DEFAULT_REMOTE) -> pygit2.Repository:
    """Make ``path`` an empty fleet copy with one shared remote ``name`` (nothing fetched).

    Refuses a ``path`` that exists and is not an empty directory. The URL is remembered in
    the auditor's state as the one this remote was added with. What the state remembers of
    a copy once at this path is the caller's to decide first (:func:`clone` keeps it only
    for the same remote, :func:`ledger.fleet.state.for_new_copy`); other remotes it
    remembers stay added (each fetch then asks for them back in the copy's config)."""
    url = _check_new_remote(name, url)
    target = _refuse_existing(path)
    try:
        repo = pygit2.init_repository(str(target), bare=True, initial_head="main")
        repo.config[FLEET_KEY] = True
        repo.config[f"fleet.remote.{name}.url"] = url
    except pygit2.GitError as exc:
        raise errors.StorageError(
            redact.mask_url(f"could not create the fleet copy {target}: {exc}."),
            hint="Check the directory's permissions and free disk space.",
        ) from None
    fleet = state.load_fleet(repo)
    fleet.remotes[name] = redact.mask_url(url)
    state.save_fleet(repo, fleet)
    return repo


def _refuse_existing(path: Path | str) -> Path:
    """``path`` as a new fleet copy's directory: not empty, no URL, no file, no non-empty
    directory (the user's text: see :func:`ledger.replicate.remotes.new_directory`)."""
    return remotes.new_directory(
        path,
        "ledger fleet clone",
        url_hint="The shared remote's URL comes first: 'ledger fleet clone URL DIR'; DIR is "
        "where the copy is made on this machine.",
        taken_hint="Choose a new directory for the fleet copy (or fetch into the copy that is "
        "there with 'ledger fleet fetch --fleet DIR').",
    )


def add_remote(path: Path | str, name: str, url: str) -> str:
    """Add the shared remote ``name`` to the copy and remember its URL as added; returns the
    URL, password masked. A remote already in the copy's config at exactly this URL but not
    added on this machine (a copy made elsewhere) is accepted the same way."""
    url = _check_new_remote(name, url)
    repo = open_copy(path)
    have = configured_remotes(repo).get(name)
    with state.locked(repo):
        fleet = state.load_fleet(repo)
        if have is not None and (have != url or name in fleet.remotes):
            raise errors.InputError(
                f"the fleet copy already has a remote named {name!r} ({redact.mask_url(have)}).",
                hint="Choose another name.",
            )
        try:
            repo.config[f"fleet.remote.{name}.url"] = url
        except pygit2.GitError as exc:
            raise errors.StorageError(
                redact.mask_url(f"could not add remote {name!r}: {exc}.")
            ) from None
        fleet.remotes[name] = redact.mask_url(url)
        state.save_fleet(repo, fleet)
    return redact.mask_url(url)


def added_heads(
    repo: pygit2.Repository, remotes: Iterable[str]
) -> tuple[dict[str, dict[str, str]], list[str]]:
    """The ledgers of the copy under the remotes the auditor added (``remotes``: the names in
    its state, never the copy's config) as :func:`heads` gives them, and the warnings: one
    naming the refs under ``refs/fleet/`` of any other name (put there by someone who can
    write the copy, or left by a remote that is no longer added), never believed."""
    names = set(remotes)
    everything, fleet_refs = _scan(repo)
    stray = [r for r in fleet_refs if r[len(REF_PREFIX) :].split("/", 1)[0] not in names]
    held = {
        lid: mine
        for lid, by in everything.items()
        if (mine := {name: head for name, head in by.items() if name in names})
    }
    warning = added.stray_warning(stray)
    return held, [warning] if warning is not None else []


def heads(repo: pygit2.Repository) -> dict[str, dict[str, str]]:
    """Every ledger in the copy: ledger id -> remote name -> head commit id, from the refs
    ``refs/fleet/<NAME>/<id>/main`` (no history read; symbolic refs are ignored)."""
    return _scan(repo)[0]


def _scan(repo: pygit2.Repository) -> tuple[dict[str, dict[str, str]], list[str]]:
    """:func:`heads`, and the name of every ref under ``refs/fleet/`` (sorted), in one pass."""
    out: dict[str, dict[str, str]] = {}
    names: list[str] = []
    try:
        for ref in repo.references.iterator():
            if not ref.name.startswith(REF_PREFIX):
                continue
            names.append(ref.name)
            m = _FLEET_REF_RE.match(ref.name)
            if m and ref.type == pygit2.enums.ReferenceType.DIRECT:
                out.setdefault(m.group(2), {})[m.group(1)] = str(ref.target)
    except (pygit2.GitError, ValueError) as exc:
        raise _damaged(Path(repo.path.rstrip("/")), f"its refs cannot be read ({exc})") from None
    return {lid: dict(sorted(by.items())) for lid, by in sorted(out.items())}, sorted(names)


# --- fetching ------------------------------------------------------------------------------


@dataclass
class Change:
    """One ledger that changed at one remote in a fetch."""

    ledger_id: str
    remote: str
    kind: str  # "new", "moved", "vanished", "back"
    old_head: str | None = None
    old_seq: int | None = None
    new_head: str | None = None
    new_seq: int | None = None
    forward: bool = True  # False: the new head does not descend from the old one

    def line(self) -> str:
        old, new = _seq(self.old_seq), _seq(self.new_seq)
        if self.kind == "new":
            return f"{self.ledger_id}  new on {self.remote} at {new} ({_short(self.new_head)})"
        if self.kind == "back":
            return f"{self.ledger_id}  back on {self.remote} at {new} ({_short(self.new_head)})"
        if self.kind == "vanished":
            return f"{self.ledger_id}  vanished from {self.remote} (was at {old})"
        backwards = ""
        if not self.forward:
            backwards = (
                f" (NOT forward: it does not extend {_short(self.old_head)}; kept for "
                "'ledger fleet verify')"
            )
        return f"{self.ledger_id}  moved on {self.remote} from {old} to {new}{backwards}"


def _seq(seq: int | None) -> str:
    return f"seq {seq}" if seq is not None else "an unreadable seq"


def _short(oid: str | None) -> str:
    return oid[:12] if oid else "(none)"


#: The status of a remote whose objects this machine had no room to store.
NO_ROOM = "no room"


@dataclass
class RemoteFetch:
    """What one remote held in one fetch (``error`` set when it could not be fetched)."""

    name: str
    url: str  # password masked
    ledgers: int = 0
    ignored: list[str] = field(default_factory=list)
    status: str | None = None  # a PushStatus value when it failed, or NO_ROOM
    error: str | None = None
    hint: str | None = None

    @property
    def no_room(self) -> bool:
        """It failed because this machine could not store what the remote sent."""
        return self.status == NO_ROOM

    @property
    def empty(self) -> bool:
        """It was fetched and holds no ref at all: a shared remote no runner pushed to yet."""
        return self.error is None and not self.ledgers and not self.ignored

    def line(self, changes: list[Change]) -> str:
        if self.error is not None:
            return f"{self.name} ({self.url}): {self.status}: {self.error}"
        if self.empty and not any(c.remote == self.name for c in changes):
            return (
                f"{self.name} ({self.url}): holds no ledger (an empty repository: no ref at "
                "all); 'ledger fleet fetch' brings the ledgers runners push there"
            )
        counts = {k: sum(c.remote == self.name and c.kind == k for c in changes) for k in _KINDS}
        done = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        ignored = f", {len(self.ignored)} other ref(s) ignored" if self.ignored else ""
        return (
            f"{self.name} ({self.url}): {self.ledgers} ledger(s)"
            f"{'; ' + done if done else ', no change'}{ignored}"
        )


_KINDS = ("new", "moved", "back", "vanished")


@dataclass
class FetchResult:
    """What a fetch of the copy did: per remote, the ledgers that changed, the warnings."""

    path: Path
    remotes: list[RemoteFetch]
    changes: list[Change]
    ledgers: int  # ledgers in the copy afterwards
    warnings: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[RemoteFetch]:
        return [r for r in self.remotes if r.error is not None]

    def summary(self) -> str:
        ok = len(self.remotes) - len(self.failed)
        failed = f", {len(self.failed)} could not be fetched" if self.failed else ""
        return (
            f"{self.ledgers} ledger(s) in the fleet copy {self.path}; {ok} of "
            f"{len(self.remotes)} remote(s) fetched{failed}"
        )

    def raise_for_failures(self) -> None:
        """:class:`RemoteError` (exit 8) naming each remote that could not be fetched;
        :class:`StorageError` (exit 6) when any failed for want of room on this machine."""
        full = [r for r in self.failed if r.no_room]
        if full:
            raise errors.StorageError(
                "could not fetch "
                + "; ".join(f"{r.name} ({r.url}): {r.error}" for r in full)
                + " (this machine could not store what it received).",
                hint=full[0].hint,
            )
        if self.failed:
            raise errors.RemoteError(
                "could not fetch "
                + "; ".join(f"{r.name} ({r.url}): {r.status}: {r.error}" for r in self.failed)
                + ".",
                hint=self.failed[0].hint or "Check the URL, the server and the network.",
            )


def _hint(status: pushes.PushStatus) -> str:
    return pushes.connection_hint(
        status, "Check the URL, that the server is running and serves it, and the network."
    )


def fetch_remote(
    repo: pygit2.Repository, name: str, url: str, creds: transport.Credentials
) -> tuple[RemoteFetch, dict[str, str] | None]:
    """Fetch every ledger of one shared remote into ``refs/fleet/<name>/``, remove the
    ledgers it no longer holds, and return what it holds now (``None`` when it could not
    be fetched: then the copy's refs of that remote are left as they were)."""
    out = RemoteFetch(name, redact.mask_url(url))
    cb = transport.Callbacks(url, creds, repo.config)
    try:
        remote = transport.anonymous_url(repo, url)
        cb.begin()
        advertised = remote.list_heads(callbacks=cb)
        wanted: dict[str, str] = {}
        for head in advertised:
            refname = str(head.name or "")
            m = shared.SHARED_REF_RE.match(refname)
            if m:
                wanted[m.group(1)] = str(head.oid)
            elif refname not in ("", "HEAD") and not refname.endswith("^{}"):
                out.ignored.append(refname)
        if wanted:
            specs = [f"+refs/ledgers/{lid}/main:{fleet_ref(name, lid)}" for lid in wanted]
            cb.begin()
            remote.fetch(specs, callbacks=cb, prune=pygit2.enums.FetchPrune.NO_PRUNE)
    except (transport.AuthFailed, pygit2.GitError, OSError) as exc:
        status, message = pushes.classify_git_error(exc, cb)
        out.status, out.error, out.hint = status.value, message, _hint(status)
        if errors.no_room(message):  # (a fetch: this machine's disk)
            out.status = NO_ROOM
            out.hint = (
                "Free disk space where the fleet copy is (or raise the quota or file size "
                "limit), then try again; the copy's refs of that remote are as they were."
            )
        return out, None
    holds: dict[str, str] = {}
    for lid in wanted:
        ref = repo.references.get(fleet_ref(name, lid))
        if ref is not None:  # (else it went away between the listing and the fetch)
            holds[lid] = str(ref.target)
    prefix = f"{REF_PREFIX}{name}/"
    for ref in list(repo.references.iterator()):
        if ref.name.startswith(prefix):
            m = _FLEET_REF_RE.match(ref.name)
            if m is None or m.group(2) not in holds:
                ref.delete()
    out.ledgers = len(holds)
    return out, holds


def _record(
    repo: pygit2.Repository,
    name: str,
    holds: dict[str, str],
    fleet: state.FleetState,
    when: str,
) -> list[Change]:
    """Update the auditor's memory with what remote ``name`` holds now; the changes."""
    changes: list[Change] = []
    for lid, head in holds.items():
        seen = fleet.ledgers.get(lid)
        fleet.ledgers[lid] = state.LedgerSeen(seen.first_seen if seen else when, when)
        ledger = state.load_ledger(repo, lid) or state.LedgerState(lid)
        before = ledger.remotes.get(name)
        if before is not None and before.vanished_at is None and before.head == head:
            continue  # (unchanged: its commit is not read again)
        seq = peek.head_seq(repo, head)
        if before is None:
            changes.append(Change(lid, name, "new", new_head=head, new_seq=seq))
            ledger.remotes[name] = state.RemoteHead(head, seq, when)
        else:
            kind = "back" if before.vanished_at is not None else "moved"
            change = Change(lid, name, kind, before.head, before.seq, head, seq)
            rewound = before.rewound_from
            if before.head != head and not _extends(repo, head, before.head):
                change.forward = False
                rewound = rewound or {
                    "head": before.head,
                    "seq": before.seq,
                    "seen_at": before.seen_at,
                }
            changes.append(change)
            seen_at = before.seen_at if before.head == head else when
            ledger.remotes[name] = state.RemoteHead(head, seq, seen_at, None, rewound)
        state.save_ledger(repo, ledger)
    for lid in sorted(set(fleet.ledgers) - set(holds)):
        gone = state.load_ledger(repo, lid)
        before = gone.remotes.get(name) if gone is not None else None
        if gone is None or before is None or before.vanished_at is not None:
            continue
        changes.append(Change(lid, name, "vanished", before.head, before.seq))
        before.vanished_at = when
        state.save_ledger(repo, gone)
    return changes


def _extends(repo: pygit2.Repository, new: str, old: str) -> bool:
    """Whether commit ``new`` descends from ``old`` (both in the copy; False if unknown)."""
    try:
        return bool(repo.descendant_of(new, old))
    except (KeyError, ValueError, pygit2.GitError):
        return False


def _select(
    repo: pygit2.Repository, names: list[str] | None, fleet: state.FleetState
) -> list[tuple[str, str | None]]:
    """The remotes to fetch: every remote of the copy's config and every remote the auditor
    added (``None`` for the URL of one the config no longer has), or those ``names``."""
    configured = configured_remotes(repo)
    known = sorted(set(configured) | set(fleet.remotes))
    if not known:
        raise errors.RemoteError(
            f"the fleet copy {repo.path.rstrip('/')} has no shared remotes to fetch from.",
            hint="Add one with 'ledger fleet remote add NAME URL'.",
        )
    unknown = [n for n in names or [] if n not in known]
    if unknown:
        raise errors.RemoteError(
            f"the fleet copy has no remote named {', '.join(map(repr, unknown))} "
            f"(its remotes: {', '.join(known)}).",
            hint="Add it with 'ledger fleet remote add NAME URL', or name one of those.",
        )
    return [(n, configured.get(n)) for n in known if not names or n in names]


def fetch(
    path: Path | str,
    creds: transport.Credentials | None = None,
    names: list[str] | None = None,
    *,
    require_ledgers: bool = False,
) -> FetchResult:
    """Fetch every shared remote of the copy (or those ``names``), update the auditor's
    memory (:mod:`.state`: each remote's head of each ledger and when it was first seen, the
    ledgers' first and last sighting) and say what changed. A remote that cannot be fetched
    changes nothing of what is remembered of it (see :attr:`FetchResult.failed`).

    ``require_ledgers`` (a clone): a remote holding refs but no ``refs/ledgers/<id>/main``
    (a one-ledger remote, any other repository) is an error (:class:`RemoteError`) before
    anything is remembered. A remote holding no ref at all is a shared remote no runner has
    pushed to yet (``ledger remote init --shared`` makes it so): accepted, it holds no
    ledger yet (:attr:`RemoteFetch.empty`)."""
    repo = open_copy(path)
    creds = creds or transport.Credentials.from_env()
    transport.configure(creds)
    result = FetchResult(Path(path), [], [], 0)
    with state.locked(repo):
        fleet = state.load_fleet(repo)
        chosen = _select(repo, names, fleet)
        fetched: dict[str, dict[str, str]] = {}
        for name, url in chosen:
            if url is None:
                error, hint = added.missing_remote(name, fleet.remotes[name])
                gone = RemoteFetch(name, fleet.remotes[name], status="missing remote")
                gone.error, gone.hint = error, hint
                result.remotes.append(gone)
                continue
            problem = added.url_problem(name, url, fleet)
            if problem is not None:
                result.remotes.append(
                    RemoteFetch(
                        name,
                        redact.mask_url(url),
                        status="unknown remote",
                        error=problem,
                        hint="Nothing was fetched from it; the other remotes were.",
                    )
                )
                continue
            outcome, holds = fetch_remote(repo, name, url, creds)
            result.remotes.append(outcome)
            if holds is not None:
                if require_ledgers and not holds and outcome.ignored:
                    raise _not_shared(outcome)
                fetched[name] = holds
        when = state.now()
        for name, holds in fetched.items():
            result.changes += _record(repo, name, holds, fleet, when)
        state.save_fleet(repo, fleet)
    held, warnings = added_heads(repo, fleet.remotes)
    result.ledgers = len(held)
    result.warnings += warnings
    return result


def _not_shared(outcome: RemoteFetch) -> errors.RemoteError:
    other = f" (it has {', '.join(outcome.ignored[:5])})" if outcome.ignored else ""
    return errors.RemoteError(
        f"{outcome.url} is not a shared remote: it holds no ledger at "
        f"refs/ledgers/<ledger id>/main{other}. Nothing was kept.",
        hint="Check the URL; a one-ledger remote is copied with 'ledger clone URL'.",
    )


def clone(
    url: str,
    path: Path | str,
    name: str = DEFAULT_REMOTE,
    creds: transport.Credentials | None = None,
) -> FetchResult:
    """Make ``path`` a fleet copy of the shared remote ``url`` and fetch it. On any failure
    (unreachable, authentication, host key, not a shared remote) nothing is left at
    ``path``: the directory is removed if it was made here, emptied otherwise; and the
    auditor's state of that path is as it was.

    The auditor's state of a copy once at this path is kept when it remembers this remote
    (same name, same URL: a damaged copy made again); a state of other remotes is moved
    aside, and the result's warnings say so (:func:`ledger.fleet.state.for_new_copy`)."""
    url = _check_new_remote(name, url)
    target = _refuse_existing(path)  # (before anything that could be undone below)
    with (
        store.created(target),
        state.for_new_copy(target, name, redact.mask_url(url), str(target)) as note,
    ):
        init_copy(url, target, name)
        result = fetch(target, creds, [name], require_ledgers=True)
        result.raise_for_failures()
    if note is not None:
        result.warnings.insert(0, note)
    for other, was in state.load_fleet(target).remotes.items():
        if other != name:
            result.warnings.append(
                f"the auditor's state of this path also remembers remote {other} ({was}): "
                f"add it again with 'ledger fleet remote add {other} URL' (fetches fail "
                "until then)"
            )
    return result
