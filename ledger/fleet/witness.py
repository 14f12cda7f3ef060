"""Runner-side witnessing: a signed ``witness`` record of the other ledgers' heads that this
ledger's shared remotes hold (docs/FORMAT.md §5, docs/FLEET.md "Witnessing").

For each shared remote of the ledger (``remote.NAME.ledgerShared``) that this user added
(an unknown remote is never contacted, as for ``ledger push``), ``refs/ledgers/*`` is fetched
into the runner's *witness cache*: a bare repository in the user's state directory,
``<state dir>/witness/<ledger id>.git`` (0700), laid out as an auditor's fleet copy
(``ledger.fleet = true``, ``fleet.remote.<NAME>.url``, ledger ``<id>`` as remote NAME holds it
at ``refs/fleet/<NAME>/<id>/main``, fetched forced and pruned: the cache shows what each
server holds now). Foreign objects never enter the ledger's own repository.

Each other ledger's head commit is read there: its ``Ledger-Seq`` trailer and the SHA-256 of
its git object. A witness states what it saw, it does not verify other ledgers (an auditor's
``ledger fleet verify`` checks every claim against the witnessed ledger's chain); a ref whose
head is not a commit or has no well-formed ``Ledger-Seq`` is skipped with a warning; a head the
cache fetched but cannot give back (a damaged cache) fails the witness, as a remote that
cannot be fetched does: a record never leaves out a head for this machine's fault. The
record is appended like ``ledger record``'s, by the caller's key, after the caller's
verification before append. Any remote that cannot be fetched fails the whole witness: a
record never lists a head that was not fetched just now.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pygit2

from ledger import errors, keys, redact, store
from ledger.format import gitobj, records, shapes
from ledger.replicate import remotes, shared, state
from ledger.verify import home, local

if TYPE_CHECKING:
    from ledger.replicate import transport

WITNESS_DIR = "witness"
#: ``git config ledger.witness false`` turns off the witness at the start of ``ledger run``.
CONFIG_KEY = "ledger.witness"
FLEET_REF_PREFIX = "refs/fleet"
LOCK_FILE = "ledger-witness.lock"
_SEQ_RE = re.compile(r"^(0|[1-9][0-9]{0,18})\Z")


@dataclass(frozen=True, order=True)
class WitnessHead:
    """One witnessed head: ledger ``ledger``'s head ``commit`` at ``seq`` (its ``Ledger-Seq``)
    with the SHA-256 of its git object, as a shared remote held it."""

    ledger: str
    commit: str
    seq: int
    sha256: str

    def as_data(self) -> shapes.WitnessHead:
        return shapes.WitnessHead(
            ledger=self.ledger, seq=self.seq, commit=self.commit, sha256=self.sha256
        )


@dataclass
class Witnessed:
    """What one witness did: the remotes fetched, the heads listed, the records appended
    (one, or one per :data:`records.MAX_WITNESS_HEADS` heads), and the warnings (refs
    skipped, remotes not contacted)."""

    remotes: list[str]
    heads: list[WitnessHead] = field(default_factory=list)
    appended: list[store.Appended] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ledgers(self) -> int:
        """How many other ledgers the heads belong to."""
        return len({h.ledger for h in self.heads})


# --- which remotes ----------------------------------------------------------------------


def shared_remotes(repo: pygit2.Repository) -> list[str]:
    """The names of the ledger's shared remotes, sorted (from its config only: no network)."""
    return sorted(n for n in repo.remotes.names() if n and remotes.is_shared(repo, n))


def enabled(repo: pygit2.Repository) -> bool:
    """Whether ``ledger run`` witnesses at its start: unless ``ledger.witness`` is false."""
    try:
        return bool(repo.config.get_bool(CONFIG_KEY))
    except KeyError:
        return True  # (the default)
    except (ValueError, pygit2.GitError):
        return True  # a value that is not a boolean does not turn it off


def at_run_start(repo: pygit2.Repository) -> list[str]:
    """The shared remotes ``ledger run`` witnesses before ``run.started`` (none when
    ``ledger.witness`` is false). Reads the config only: a run without a shared remote
    loads no network code."""
    names = shared_remotes(repo)
    return names if names and enabled(repo) else []


def _chosen(repo: pygit2.Repository, names: Sequence[str] | None) -> list[str]:
    if not names:
        found = shared_remotes(repo)
        if not found:
            raise errors.RemoteError(
                "this ledger has no shared remote, so there are no other ledgers to witness.",
                hint="Add the fleet's shared remote with 'ledger remote add NAME URL --shared' "
                "(docs/FLEET.md).",
            )
        for name in found:
            remotes.check_remote_name(name)  # (it names refs in the cache: no '/' in it)
        return found
    out = []
    for name in dict.fromkeys(names):
        remotes.check_remote_name(name)
        remotes.get_remote(repo, name)  # (an unknown name: the configured ones are listed)
        if not remotes.is_shared(repo, name):
            raise errors.InputError(
                f"remote {name!r} is not a shared remote: it holds only this ledger, so "
                "there is nothing of other ledgers to witness there.",
                hint="Name a remote added with 'ledger remote add NAME URL --shared', or omit "
                "--remote to witness every shared remote.",
            )
        out.append(name)
    return out


# --- the witness cache ------------------------------------------------------------------


def cache_path(ledger_id: str) -> Path:
    """``<state dir>/witness/<ledger id>.git``."""
    if not records.LEDGER_ID_RE.match(ledger_id):
        raise errors.InputError(
            f"{errors.quoted(ledger_id)} is not a ledger id (32 lowercase hex digits)."
        )
    return home.state_root() / WITNESS_DIR / f"{ledger_id}.git"


def open_cache(ledger_id: str) -> pygit2.Repository:
    """The witness cache of ledger ``ledger_id``, created (bare, 0700) when missing; a
    directory others could write is refused (as the rest of the state directory)."""
    path = cache_path(ledger_id)
    local.ensure_private_dir(path.parent)
    local.ensure_private_dir(path)
    try:
        if (path / "HEAD").is_file():
            repo = pygit2.Repository(str(path))
        else:
            repo = pygit2.init_repository(str(path), bare=True)
        if not _is_true(repo, "ledger.fleet"):
            repo.config["ledger.fleet"] = True
    except pygit2.GitError as exc:
        raise errors.StorageError(
            f"the witness cache {path} cannot be opened or made: {exc}.",
            hint="It holds only copies of other ledgers' refs and objects: delete it and run "
            "the witness again.",
        ) from None
    return repo


def _where(cache: pygit2.Repository) -> str:
    """The cache's path as the user would write it (pygit2 gives it with a final slash)."""
    return cache.path.rstrip("/")


def _is_true(repo: pygit2.Repository, key: str) -> bool:
    with contextlib.suppress(KeyError, ValueError, pygit2.GitError):
        return bool(repo.config.get_bool(key))
    return False


@contextlib.contextmanager
def _cache_lock(cache: pygit2.Repository, wait: float) -> Iterator[None]:
    """One witness at a time per cache (two runs starting together take turns)."""
    path = Path(cache.path) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise errors.StorageError(
            f"cannot lock the witness cache {_where(cache)}: {exc.strerror or exc}.",
            hint="Check the permissions of your state directory.",
        ) from None
    try:
        if not store.flock(fd, wait=wait):
            raise errors.LockTimeout(
                f"another witness has held the witness cache {_where(cache)} for {wait:.0f} s.",
                hint=f"Find it with 'fuser -v {path}', or try again later.",
            )
        yield
    finally:
        os.close(fd)


def _fetch_heads(
    cache: pygit2.Repository,
    name: str,
    url: str,
    creds: transport.Credentials,
    config: pygit2.Config | None,
) -> None:
    """Fetch ``refs/ledgers/*`` of remote NAME (at ``url``) into the cache's
    ``refs/fleet/<NAME>/*``, forced and pruned. :class:`RemoteError` when it fails.

    The same transport as ``ledger push`` to that remote: its credentials (``config`` is the
    ledger's, for git's credential store), host-key checks and timeouts, through an
    anonymous remote."""
    # Imported here: a run without a shared remote never loads the network code.
    from ledger.replicate import pushes, transport

    shown = redact.mask_url(url)
    where = transport.local_path(url)
    if where is not None and not where.is_dir():
        # (libgit2 says only "unsupported URL protocol" for a missing local path)
        raise errors.RemoteError(
            f"shared remote {name} ({shown}) cannot be fetched: no repository at {where}.",
            hint="Check the remote's URL ('ledger remote list'). No witness record was appended.",
        )
    transport.configure(creds)
    cb = transport.Callbacks(url, creds, config)
    spec = f"+refs/ledgers/*:{FLEET_REF_PREFIX}/{name}/*"
    try:
        cb.begin()
        remote = transport.anonymous_url(cache, url)
        remote.fetch([spec], callbacks=cb, prune=pygit2.enums.FetchPrune.PRUNE)
        advertised = [str(h.name or "") for h in remote.list_heads(connect=False)]
    except (transport.AuthFailed, pygit2.GitError, OSError) as exc:
        _status, message = pushes.classify_git_error(exc, cb)
        if errors.no_room(message):  # (a fetch: this machine's disk)
            raise errors.StorageError(
                f"shared remote {name} ({shown}) could not be fetched into the witness cache "
                f"{_where(cache)}: this machine could not store it ({message}).",
                hint="Free disk space in your state directory (or raise the quota), then "
                "'ledger fleet witness' tries again. No witness record was appended.",
            ) from None
        raise errors.RemoteError(
            f"shared remote {name} ({shown}) cannot be fetched: {message}.",
            hint="No witness record was appended. Check the network and the remote "
            "('ledger status'); 'ledger fleet witness' tries again.",
        ) from None
    _refuse_unshared(name, shown, advertised)
    _set_url(cache, name, shown)


def _refuse_unshared(name: str, shown: str, advertised: Sequence[str]) -> None:
    """A remote that holds no ledger at ``refs/ledgers/<id>/main`` but other refs is not a
    shared remote (a one-ledger remote, a fleet copy...): a witness of it would sign that it
    saw no other ledger. Refused as ``ledger fleet clone`` refuses it (other refs beside
    ledgers are ignored there and here; an empty repository is a shared remote not yet
    pushed to)."""
    if any(shared.SHARED_REF_RE.match(r) for r in advertised):
        return
    other = [r for r in advertised if r not in ("", "HEAD") and not r.endswith("^{}")]
    if other:
        raise errors.RemoteError(
            f"remote {name} ({shown}) is not a shared remote: it holds no ledger at "
            f"refs/ledgers/<ledger id>/main, but {', '.join(other[:5])}"
            f"{' and more' if len(other) > 5 else ''}. No witness record was appended.",
            hint="Check its URL ('ledger remote list'): a shared remote is made by 'ledger "
            "remote init PATH --shared'; a one-ledger remote is added without --shared.",
        )


def _set_url(cache: pygit2.Repository, name: str, shown: str) -> None:
    key = f"fleet.remote.{name}.url"
    with contextlib.suppress(KeyError, ValueError, pygit2.GitError):
        if str(cache.config[key]) == shown:
            return
    cache.config[key] = shown  # (masked: the password stays in the ledger's config only)


def read_head(cache: pygit2.Repository, ledger_id: str, commit: str) -> WitnessHead:
    """The witnessed head of ledger ``ledger_id`` at ``commit``, read from the cache.
    :class:`InputError` naming the problem when the commit is not a commit or has no
    well-formed ``Ledger-Seq`` trailer (what the server holds: nothing else of it is checked,
    see the module); :class:`StorageError` when the cache cannot give the commit it fetched
    (the cache's damage, not the server's: a witness never leaves a head out for that)."""
    try:
        obj_type, raw = cache.odb.read(commit)
    except (KeyError, ValueError, pygit2.GitError) as exc:
        raise _damaged(cache, ledger_id, f"its head {commit} cannot be read ({exc})") from None
    if obj_type != gitobj.OBJ_COMMIT:
        raise errors.InputError(f"its head {commit} is not a commit")
    if gitobj.object_id(gitobj.OBJ_COMMIT, raw).hex() != commit:
        raise _damaged(
            cache, ledger_id, f"its head {commit} is corrupt (its content has another id)"
        )
    message = gitobj.split_headers(raw).message
    text = message.decode("utf-8", errors="replace") if message is not None else ""
    seq = records.parse_trailers(text).get("Ledger-Seq")
    if seq is None or not _SEQ_RE.match(seq):
        what = "no Ledger-Seq trailer" if seq is None else f"a malformed Ledger-Seq {seq!r}"
        raise errors.InputError(f"its head {commit} has {what}")
    digest = gitobj.object_sha256(gitobj.OBJ_COMMIT, raw)
    return WitnessHead(ledger=ledger_id, commit=commit, seq=int(seq), sha256=digest)


def _damaged(cache: pygit2.Repository, ledger_id: str, what: str) -> errors.StorageError:
    return errors.StorageError(
        f"the witness cache {_where(cache)} is damaged: ledger {ledger_id} was fetched but {what}. "
        "Nothing was appended.",
        hint="The cache holds only copies of other ledgers' refs and objects, nothing trusted: "
        "delete it and witness again (that fetches everything anew). If it fails the same way "
        "then, the server holds a ref to an object it does not have: tell its administrator.",
    )


def read_heads(
    cache: pygit2.Repository, names: Sequence[str], own_id: str
) -> tuple[list[WitnessHead], list[str]]:
    """The heads the cache holds for remotes ``names`` (every ledger but ``own_id``), one per
    distinct (ledger, commit), sorted; and a warning per ref skipped."""
    from ledger.fleet import copy  # (the cache is laid out as a fleet copy)

    wanted = set(names)
    found: dict[tuple[str, str], WitnessHead] = {}
    warnings: list[str] = []
    for lid, by_remote in copy.heads(cache).items():
        for name, commit in by_remote.items():
            if name not in wanted or lid == own_id or (lid, commit) in found:
                continue
            try:
                found[(lid, commit)] = read_head(cache, lid, commit)
            except errors.InputError as exc:
                warnings.append(f"ledger {lid} on remote {name} is not witnessed: {exc.message}")
    return sorted(found.values()), warnings


# --- the witness ------------------------------------------------------------------------


def append_witness(
    led: store.Ledger,
    key: keys.SigningIdentity,
    creds: transport.Credentials,
    names: Sequence[str] | None = None,
) -> Witnessed:
    """Fetch every shared remote (or ``names``), then append the ``witness`` record of the
    other ledgers' heads, signed with ``key``. The caller has verified the ledger before
    (``ledger record``'s verification before append).

    Raises :class:`RemoteError` when a remote cannot be fetched or none of the shared
    remotes is one this user added (nothing is appended then)."""
    repo = led.repo
    remotes.refuse_url_rewrites(repo)  # (the remotes' URLs read below would be rewritten)
    chosen = _chosen(repo, names)
    own_id = state.ledger_key(repo)
    seen = state.read(repo, own_id)
    done = Witnessed(remotes=[])
    for name in chosen:
        entry = seen.get(name) or {}
        if entry.get("unknown") or entry.get("url_changed_from"):
            url = redact.mask_url(remotes.get_remote(repo, name).url or "")
            done.warnings.append(state.unknown_message(name, url, entry.get("url_changed_from")))
        else:
            done.remotes.append(name)
    if not done.remotes:
        raise errors.RemoteError(
            "no shared remote of this ledger was witnessed: "
            + "; ".join(done.warnings or ["none is configured"])
            + ".",
            hint="Nothing was appended.",
        )
    cache = open_cache(own_id)
    with _cache_lock(cache, creds.connect_timeout + creds.io_timeout):
        try:
            for name in done.remotes:
                url = remotes.get_remote(repo, name).url or ""
                _fetch_heads(cache, name, url, creds, repo.config)
            done.heads, skipped = read_heads(cache, done.remotes, own_id)
        except pygit2.GitError as exc:  # (the cache's own refs or config)
            raise errors.StorageError(
                f"the witness cache {_where(cache)} cannot be read or written: {exc}.",
                hint="It holds only copies of other ledgers' refs and objects: delete it and "
                "witness again. Nothing was appended.",
            ) from None
    done.warnings += skipped
    done.appended = append_heads(led, key, done.heads)
    return done


def append_heads(
    led: store.Ledger, key: keys.SigningIdentity, heads: Sequence[WitnessHead]
) -> list[store.Appended]:
    """Append the ``witness`` record of ``heads`` (sorted, distinct, none of this ledger):
    one record per :data:`records.MAX_WITNESS_HEADS` heads, one (possibly empty) at least.
    This copy's verified head then moves over them, as over a run's own records."""
    size = records.MAX_WITNESS_HEADS
    chunks = [heads[i : i + size] for i in range(0, len(heads), size)] or [[]]
    appended = [
        led.append(
            records.KIND_WITNESS,
            shapes.WitnessData(heads=[h.as_data() for h in chunk]),
            key=key,
        )
        for chunk in chunks
    ]
    local.extend_over_own_appends(led.repo, led.path, appended)
    return appended
