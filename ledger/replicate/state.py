"""What each remote held when we last saw it, and which remotes this user added, kept in the
user's own state directory, out of reach of whoever can write the ledger directory.

The file is ``<state dir>/remotes/<ledger id>.json`` (the state directory of FORMAT.md §8:
``$LEDGER_STATE_DIR``, else ``$XDG_STATE_HOME/runbook-ledger``, else
``~/.local/state/runbook-ledger``; directories 0700, file 0600), read and rewritten under an
exclusive file lock. It keeps

- ``remotes``: per remote URL (password masked, :func:`ledger.redact.mask_url`), the head,
  seq and time it was last seen at, the last outcome and any problem;
- ``known``: per remote name, the URL this user gave it (``ledger remote add``, ``ledger
  clone``'s origin, ``ledger remote trust``): the URL as the config has it when it carries no
  password, else the masked URL with a salted SHA-256 of the full one. A remote in the
  ledger's config that is not known is *unknown* (someone else put it there): it is never
  contacted, never counts as a replica, and is reported; a known name whose configured URL is
  not the one the user gave is reported as a URL changed behind the user's back
  (``url_changed_from``); a known name gone from the config is *missing*.

Callers see a view keyed by remote name (:func:`lock`, :func:`read`), built from the names
and URLs configured now; an unknown remote's entry is ``{"unknown": True}``.

The ledger id the file is named by is never read from bytes a writer of the ledger directory
controls (:func:`ledger_key`): it is the id a verification just established, else the one of
this copy's verified head in the state directory, else the claimed id whose pinned genesis
starts our main. The ids the ledger claims (``ledger.id`` in its config, the ``Ledger-Id``
of main's head) must agree with it, else the state is neither read nor written.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pygit2

from ledger import errors, redact, store
from ledger.format import records
from ledger.replicate import chain
from ledger.verify import home, local

REMOTES_DIR = "remotes"
STATE_FORMAT = 1
_ID_RE = re.compile(r"^[0-9A-Za-z_-]{1,128}$")


# --- which ledger -------------------------------------------------------------------------


def _claimed_ids(repo: pygit2.Repository) -> list[tuple[str, str]]:
    """The ledger ids the ledger directory claims, with where each was read (unverified)."""
    out = []
    with contextlib.suppress(KeyError, ValueError, pygit2.GitError):
        out.append(("its config's ledger.id", str(repo.config["ledger.id"]).strip().lower()))
    head = chain.main_head(repo)
    commit = repo.get(head) if head is not None else None
    if isinstance(commit, pygit2.Commit):
        value = records.parse_trailers(commit.message).get("Ledger-Id")
        if value:
            out.append((f"the Ledger-Id of its head commit {head}", value.strip().lower()))
    return out


def _pinned_id(repo: pygit2.Repository, claimed: list[tuple[str, str]]) -> str | None:
    """A claimed id whose genesis this machine pinned and that our main starts at."""
    head = chain.main_head(repo)
    if head is None:
        return None
    for _where, lid in claimed:
        genesis = local.own_pin(lid)
        if genesis and chain.has(repo, genesis) and chain.is_ancestor(repo, genesis, head):
            return lid
    return None


def ledger_key(repo: pygit2.Repository, verified_id: str | None = None) -> str:
    """The verified ledger id the remote state is kept under (see the module's docstring).

    :class:`GenesisNotPinned` (exit 14) when this copy was never verified on this machine and
    has no pin; :class:`VerificationFailed` (exit 7) when the ledger claims another id."""
    claimed = _claimed_ids(repo)
    key, source = verified_id, "by the verification just made"
    if key is None:
        key = local.verified_ledger_id(repo)
        source = "by this copy's verified head in your state directory"
    if key is None:
        key, source = _pinned_id(repo, claimed), "by your pin of its genesis"
    if key is None or not _ID_RE.match(key):
        raise errors.GenesisNotPinned(
            f"the ledger at {repo.path} was never verified on this machine, so it is not known "
            "which ledger it is: its remotes' state is kept under the verified ledger id, "
            "never under the id the ledger directory claims.",
            hint="Run 'ledger verify' once (compare the genesis it prints with the ledger's "
            "owner, or pass --trust-genesis GENESIS), then try again.",
        )
    for where, value in claimed:
        if value != key:
            raise errors.VerificationFailed(
                f"the ledger at {repo.path} claims to be ledger {value} ({where}), but this "
                f"copy was verified as ledger {key} ({source}): someone who can write the "
                "ledger directory may have changed it. Its remotes' state was not read or "
                "written.",
                hint="Run 'ledger verify' and investigate. If you replaced this copy with "
                "another ledger on purpose, verify it with 'ledger verify --trust-genesis "
                "GENESIS'.",
            )
    return key


def state_path(repo: pygit2.Repository, verified_id: str | None = None) -> Path:
    return home.state_root() / REMOTES_DIR / f"{ledger_key(repo, verified_id)}.json"


# --- the file ---------------------------------------------------------------------------


def _configured(repo: pygit2.Repository) -> dict[str, str]:
    """Remote name to its URL as configured now (with any password: never show it)."""
    out = {}
    for name in repo.remotes.names():
        if name:
            with contextlib.suppress(KeyError, ValueError, pygit2.GitError):
                out[name] = repo.remotes[name].url or ""
    return out


def _read_file(path: Path) -> dict[str, Any]:
    local.check_private_dir(path.parent)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise errors.StorageError(
            f"the remote state file {path} cannot be read: {exc}.",
            hint="It is this user's own record of what each remote held and which remotes "
            "you added; restore it from a backup, or delete it to start again (then 'ledger "
            "remote trust NAME' each remote you added, trusting what it holds next).",
        ) from None
    if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
        return {}
    return data


def _maps(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The state's entries by URL and this user's remotes by name."""
    by_url = data.get("remotes")
    known = data.get("known")
    return (
        by_url if isinstance(by_url, dict) else {},
        known if isinstance(known, dict) else {},
    )


def _url_digest(salt: str, url: str) -> str:
    return hashlib.sha256(f"{salt}:{url}".encode()).hexdigest()


def _fingerprint(url: str) -> dict[str, str]:
    """How a known remote's URL is kept: as is without a password, else masked plus a salted
    digest of the full URL (the password itself is never written)."""
    shown = redact.mask_url(url)
    if shown == url:
        return {"url": url}
    salt = secrets.token_hex(16)
    return {"url": shown, "salt": salt, "url_sha256": _url_digest(salt, url)}


def _matches(known: Any, url: str) -> bool:
    if not isinstance(known, dict):
        return False
    if "url_sha256" in known:
        digest = _url_digest(str(known.get("salt", "")), url)
        return hmac.compare_digest(str(known["url_sha256"]), digest)
    return known.get("url") == url


def _view(data: Mapping[str, Any], configured: Mapping[str, str]) -> dict[str, Any]:
    """The entries of the configured remotes, keyed by name."""
    by_url, known = _maps(data)
    view: dict[str, Any] = {}
    for name, url in configured.items():
        mine = known.get(name)
        if not isinstance(mine, dict):
            view[name] = {"unknown": True}  # nothing of another remote's state leaks to it
            continue
        entry = by_url.get(redact.mask_url(url))
        entry = dict(entry) if isinstance(entry, dict) else {}
        if not _matches(mine, url):
            before = str(mine.get("url"))
            entry["url_changed_from"] = before
            old = by_url.get(before)
            if isinstance(old, dict) and old.get("head") and not entry.get("head"):
                # What this name's remote held: the new URL must extend it too.
                entry["head"], entry["seq"] = old.get("head"), old.get("seq")
        if entry:
            view[name] = entry
    return view


def read(repo: pygit2.Repository, verified_id: str | None = None) -> dict[str, Any]:
    """What each configured remote held when last seen, keyed by name (empty if never)."""
    return _view(_read_file(state_path(repo, verified_id)), _configured(repo))


@contextlib.contextmanager
def _locked(
    repo: pygit2.Repository, verified_id: str | None = None
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The state file's path and its data, under an exclusive lock for the whole block."""
    path = state_path(repo, verified_id)
    local.ensure_private_dir(path.parent)
    try:
        lock_fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise errors.StorageError(
            f"cannot write the remote state in {path.parent}: {exc.strerror or exc}.",
            hint=f"Check the permissions of that directory, or set {home.ENV_STATE_DIR} to "
            "a directory of your own.",
        ) from None
    try:
        store.flock(lock_fd, wait=None)
        yield path, _read_file(path)
    finally:
        os.close(lock_fd)


@contextlib.contextmanager
def lock(repo: pygit2.Repository, verified_id: str | None = None) -> Iterator[dict[str, Any]]:
    """Read-modify-write of the state by name, under an exclusive file lock. An entry set
    for a known name is stored under that name's URL; nothing is kept for an unknown one."""
    configured = _configured(repo)
    with _locked(repo, verified_id) as (path, data):
        view = _view(data, configured)
        before = json.dumps(view, sort_keys=True)
        yield view
        if json.dumps(view, sort_keys=True) != before:
            by_url, known = _maps(data)
            for name, entry in view.items():
                if entry.get("unknown") or name not in configured:
                    continue
                url = redact.mask_url(configured[name])
                drop = ("url_changed_from", "unknown")
                clean = {k: v for k, v in dict(entry).items() if k not in drop}
                by_url[url] = {**clean, "url": url, "name": name}
            _write(path, {"format": STATE_FORMAT, "remotes": by_url, "known": known})


def _write(path: Path, out: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(out, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise errors.StorageError(
            f"cannot write the remote state {path}: {exc.strerror or exc}.",
            hint="Check the permissions and free space of that directory.",
        ) from None


# --- this user's remotes ------------------------------------------------------------------


def trust(repo: pygit2.Repository, name: str, verified_id: str | None = None) -> str:
    """Remember the URL NAME points at now as this user's (``ledger remote add``, ``ledger
    clone``, ``ledger remote trust``). Returns that URL, password masked."""
    url = _configured(repo).get(name)
    if url is None:
        raise errors.RemoteError(
            f"there is no remote named {name!r} in the ledger's config.",
            hint="List them with 'ledger remote list'; add one with 'ledger remote add NAME URL'.",
        )
    with _locked(repo, verified_id) as (path, data):
        by_url, known = _maps(data)
        known[name] = _fingerprint(url)
        _write(path, {"format": STATE_FORMAT, "remotes": by_url, "known": known})
    return redact.mask_url(url)


def forget(repo: pygit2.Repository, name: str) -> None:
    """Forget remote NAME (``ledger remote remove``; call it while NAME is configured)."""
    url = _configured(repo).get(name)
    with _locked(repo) as (path, data):
        by_url, known = _maps(data)
        mine = known.pop(name, None)
        if isinstance(mine, dict):  # (an unknown remote's removal forgets nobody's heads)
            others = {
                redact.mask_url(str(k.get("url"))) for k in known.values() if isinstance(k, dict)
            }
            for gone in (mine.get("url"), url):
                if isinstance(gone, str) and redact.mask_url(gone) not in others:
                    by_url.pop(redact.mask_url(gone), None)
        _write(path, {"format": STATE_FORMAT, "remotes": by_url, "known": known})


def missing(repo: pygit2.Repository, verified_id: str | None = None) -> dict[str, str]:
    """Remotes this user added whose name is no longer configured: name to the URL it had
    (someone removed it from the ledger's config without 'ledger remote remove')."""
    _by_url, known = _maps(_read_file(state_path(repo, verified_id)))
    configured = _configured(repo)
    gone = {n: k for n, k in known.items() if n not in configured and isinstance(k, dict)}
    return {n: str(k.get("url")) for n, k in gone.items()}


def unknown_message(name: str, url: str, changed_from: Any = None) -> str:
    """Why an unknown remote (or a known name now at another URL) is neither contacted nor
    counted, and how to accept it."""
    if isinstance(changed_from, str):
        what = (
            f"remote {name} points at {url} in the ledger's config, not at {changed_from}, the "
            "URL you gave it (or its password changed), and the change was not made with "
            "'ledger remote add'"
        )
    else:
        what = (
            f"remote {name} ({url}) is in the ledger's config but was not added by you "
            "('ledger remote add', 'ledger clone')"
        )
    return (
        f"{what}: someone who can write the ledger's config may have put it there. It was "
        "not contacted and does not count as a replica. If you made the change and trust "
        f"that URL, run 'ledger remote trust {name}'; otherwise 'ledger remote remove {name}'"
    )


def read_remote_state(ledger_path: Path) -> dict[str, Any]:
    """What each remote held when last seen: ``{name: {"head", "seq", "time", "url", ...}}``
    (``{"unknown": True}`` for a remote this user did not add)."""
    return read(store.open_repository(ledger_path))
