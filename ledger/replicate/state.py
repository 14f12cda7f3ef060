"""What each remote held when we last saw it, kept in the user's own state directory, out of
reach of whoever can write the ledger directory.

The file is ``$XDG_STATE_HOME/runbook-ledger/remotes/<ledger id>.json`` (default
``~/.local/state/runbook-ledger/...``; directories 0700, file 0600), read and rewritten under
an exclusive file lock. It keeps, per remote URL (password masked, :func:`ledger.redact.
mask_url`), the head, seq and time it was last seen at, the last outcome and any problem;
and, per remote name, the URL that name pointed at when it was last checked, so that a URL
rewritten in the ledger's config behind the user's back is noticed (``url_changed_from``).

Callers see a view keyed by remote name (:func:`lock`, :func:`read`), built from the names
and URLs configured now. The ledger id is the ``Ledger-Id`` trailer of our main's head
commit (bound by its signature; ``ledger verify`` checks it), else ``ledger.id`` of the config.
Nothing under ``<gitdir>/ledger-state/`` is read: a ``remotes.json`` there (written by older
versions) is ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pygit2

from ledger import store
from ledger.errors import StorageError
from ledger.format import records
from ledger.redact import mask_url
from ledger.replicate import chain
from ledger.store import open_repository

APP_DIR = "runbook-ledger"
REMOTES_DIR = "remotes"
STATE_FORMAT = 1
_ID_RE = re.compile(r"^[0-9A-Za-z_-]{1,128}$")


def user_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/runbook-ledger``, else ``$HOME/.local/state/runbook-ledger``."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME")
    if base and os.path.isabs(base):
        return Path(base) / APP_DIR
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "state" / APP_DIR


def ledger_key(repo: pygit2.Repository) -> str:
    """The ledger id the state is kept under (see the module's docstring)."""
    head = chain.main_head(repo)
    value: str | None = None
    if head is not None:
        commit = repo.get(head)
        if isinstance(commit, pygit2.Commit):
            value = records.parse_trailers(commit.message).get("Ledger-Id")
    if not value:
        with contextlib.suppress(KeyError, ValueError, pygit2.GitError):
            value = str(repo.config["ledger.id"])
    if not value or not _ID_RE.match(value):
        value = "unknown-ledger"
    return value


def state_path(repo: pygit2.Repository) -> Path:
    return user_state_dir() / REMOTES_DIR / f"{ledger_key(repo)}.json"


def _configured(repo: pygit2.Repository) -> dict[str, str]:
    """Remote name to its URL as shown (password masked), as configured now."""
    out = {}
    for name in repo.remotes.names():
        if name:
            with contextlib.suppress(KeyError, ValueError, pygit2.GitError):
                out[name] = mask_url(repo.remotes[name].url or "")
    return out


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise StorageError(
            f"the remote state file {path} cannot be read: {exc}.",
            hint="It is this user's own record of what each remote held; restore it from a "
            "backup, or delete it to start again (trusting each remote's next head).",
        ) from None
    if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
        return {}
    return data


def _maps(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The state's entries by URL and its URLs by name."""
    by_url = data.get("remotes")
    names = data.get("names")
    return (
        by_url if isinstance(by_url, dict) else {},
        names if isinstance(names, dict) else {},
    )


def _view(data: Mapping[str, Any], configured: Mapping[str, str]) -> dict[str, Any]:
    """The entries of the configured remotes, keyed by name."""
    by_url, names = _maps(data)
    view: dict[str, Any] = {}
    for name, url in configured.items():
        entry = by_url.get(url)
        entry = dict(entry) if isinstance(entry, dict) else {}
        before = names.get(name)
        if isinstance(before, str) and before != url:
            entry["url_changed_from"] = before
            old = by_url.get(before)
            if isinstance(old, dict) and old.get("head") and not entry.get("head"):
                # What this name's remote held: the new URL must extend it too.
                entry["head"], entry["seq"] = old.get("head"), old.get("seq")
        if entry:
            view[name] = entry
    return view


def read(repo: pygit2.Repository) -> dict[str, Any]:
    """What each configured remote held when last seen, keyed by name (empty if never)."""
    return _view(_read_file(state_path(repo)), _configured(repo))


@contextlib.contextmanager
def _locked(repo: pygit2.Repository) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The state file's path and its data, under an exclusive lock for the whole block."""
    path = state_path(repo)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StorageError(
            f"cannot write the remote state in {path.parent}: {exc.strerror or exc}.",
            hint="Check the permissions of that directory, or set XDG_STATE_HOME to a "
            "directory of your own.",
        ) from None
    try:
        store.flock(lock_fd, wait=None)
        yield path, _read_file(path)
    finally:
        os.close(lock_fd)


@contextlib.contextmanager
def lock(repo: pygit2.Repository) -> Iterator[dict[str, Any]]:
    """Read-modify-write of the state by name, under an exclusive file lock. An entry set
    for a name is stored under that name's URL, and the name remembered as pointing there
    (unless the entry still says ``url_changed_from``)."""
    configured = _configured(repo)
    with _locked(repo) as (path, data):
        view = _view(data, configured)
        before = json.dumps(view, sort_keys=True)
        yield view
        if json.dumps(view, sort_keys=True) != before:
            _store(path, data, view, configured)


def _store(
    path: Path,
    data: dict[str, Any],
    view: Mapping[str, Any],
    configured: Mapping[str, str],
) -> None:
    by_url, names = _maps(data)
    for name, entry in view.items():
        url = configured.get(name, entry.get("url", ""))
        clean = {k: v for k, v in dict(entry).items() if k != "url_changed_from"}
        clean["url"] = url
        clean["name"] = name
        by_url[url] = clean
        if "url_changed_from" not in entry:  # a change stays reported until re-added
            names[name] = url
    _write(path, {"format": STATE_FORMAT, "remotes": by_url, "names": names})


def _write(path: Path, out: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(out, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise StorageError(
            f"cannot write the remote state {path}: {exc.strerror or exc}.",
            hint="Check the permissions and free space of that directory.",
        ) from None


def forget(repo: pygit2.Repository, name: str) -> None:
    """Forget remote NAME (``ledger remote remove``; call it while NAME is configured)."""
    url = _configured(repo).get(name)
    with _locked(repo) as (path, data):
        by_url, names = _maps(data)
        for gone in (names.pop(name, None), url):
            if isinstance(gone, str):
                by_url.pop(gone, None)
        _write(path, {"format": STATE_FORMAT, "remotes": by_url, "names": names})


def missing(repo: pygit2.Repository) -> dict[str, str]:
    """Remotes checked before on this machine whose name is no longer configured: name to
    the URL it had (someone removed it from the ledger's config without 'ledger remote
    remove')."""
    names = _read_file(state_path(repo)).get("names")
    if not isinstance(names, dict):
        return {}
    configured = _configured(repo)
    return {n: str(u) for n, u in names.items() if n not in configured}


def remember_url(repo: pygit2.Repository, name: str) -> None:
    """Remember the URL NAME points at now (``ledger remote add``): the user chose it."""
    with lock(repo) as seen:
        entry = dict(seen.get(name) or {})
        entry.pop("url_changed_from", None)
        entry.setdefault("status", "added")
        seen[name] = entry


def read_remote_state(ledger_path: Path) -> dict[str, Any]:
    """What each remote held when last seen: ``{name: {"head", "seq", "time", "url", ...}}``."""
    return read(open_repository(ledger_path))
