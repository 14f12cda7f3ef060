"""Remote configuration and URLs: which transports a URL names, the warning for remotes that
libgit2 writes directly, and adding, removing and listing the remotes of a ledger."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pygit2

from ledger import errors, redact, store
from ledger.replicate import chain, state

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SCP_RE = re.compile(
    r"^(?:(?P<user>[^@/:\s]+)@)?(?P<host>[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]):(?P<path>[^\s].*)$"
)
_HOST_RE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$|^\[[0-9A-Fa-f:.]+\]$"
)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
LEDGER_ID_RE = re.compile(r"^[0-9a-f]{32}$")
SHARED_KEY = "ledgerShared"  # remote.NAME.ledgerShared = true: a shared remote
SCHEMES = {
    "file": "file",
    "git": "git",
    "ssh": "ssh",
    "git+ssh": "ssh",
    "ssh+git": "ssh",
    "http": "http",
    "https": "https",
}


# --- remotes and URLs ----------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteInfo:
    """A configured remote; ``warning`` is set when its server-side rules cannot apply.

    ``url`` is for showing: its password, if any, is masked (:func:`ledger.redact.mask_url`).
    Only :mod:`ledger.replicate.transport` reads the real URL, from the config, to connect."""

    name: str
    url: str
    transport: str  # path, file, git, ssh, http, https
    warning: str | None = None
    shared: bool = False  # one repository of many ledgers, ours at refs/ledgers/<id>/main

    @property
    def direct(self) -> bool:
        """True when libgit2 writes the remote's directory itself (no server, no hooks)."""
        return self.transport in ("path", "file")


def classify_url(url: str) -> str:
    """The transport of a remote URL: path, file, git, ssh, http or https.

    Raises :class:`InputError` with a message naming what is wrong when the URL is malformed.
    """
    hint = (
        "Use a path, file:///abs/path, git://host[:port]/path, ssh://[user@]host[:port]/path, "
        "user@host:path, http(s)://host[:port]/path."
    )
    if not url or not url.strip():
        raise errors.InputError("the remote URL is empty.", hint=hint)
    try:
        return _classify(url, hint)
    except errors.InputError as exc:
        # Every message quotes the URL: never with its password.
        raise errors.InputError(redact.mask_url(exc.message), hint=exc.hint) from None


def _classify(url: str, hint: str) -> str:
    if _CONTROL_RE.search(url):
        raise errors.InputError(f"the remote URL {url!r} contains control characters.", hint=hint)
    if "://" in url:
        scheme = url.split("://", 1)[0].lower()
        transport = SCHEMES.get(scheme)
        if transport is None:
            raise errors.InputError(
                f"the remote URL {url!r} has the unsupported scheme {scheme!r}.", hint=hint
            )
        if any(c.isspace() for c in url):
            raise errors.InputError(f"the remote URL {url!r} contains white space.", hint=hint)
        try:
            parts = urllib.parse.urlsplit(url)
        except ValueError as exc:  # an unbalanced '[' or ']' in the host ("Invalid IPv6 URL")
            raise errors.InputError(
                f"the remote URL {url!r} is malformed ({exc}): a host in brackets must be a"
                " whole IPv6 address with both brackets, as in http://[::1]:8080/path.",
                hint=hint,
            ) from None
        if transport == "file":
            if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
                raise errors.InputError(
                    f"the file URL {url!r} must name an absolute local path (file:///path).",
                    hint=hint,
                )
            return transport
        host = parts.hostname or ""
        if not host or not _HOST_RE.match(host if ":" not in host else f"[{host}]"):
            raise errors.InputError(f"the remote URL {url!r} has no valid host name.", hint=hint)
        try:
            port = parts.port
        except ValueError:
            raise errors.InputError(
                f"the remote URL {url!r} has an invalid port.", hint=hint
            ) from None
        if port == 0:
            raise errors.InputError(f"the remote URL {url!r} has an invalid port.", hint=hint)
        if parts.path in ("", "/"):
            raise errors.InputError(f"the remote URL {url!r} names no repository path.", hint=hint)
        if parts.password and transport in ("ssh", "git"):
            raise errors.InputError(
                f"the remote URL {url!r} carries a password; ssh and git URLs cannot.",
                hint="Use a key (--ssh-key, ssh-agent) for ssh remotes.",
            )
        return transport
    match = SCP_RE.match(url)
    if match and "/" not in url.split(":", 1)[0]:
        host = match.group("host")
        if not _HOST_RE.match(host) or host.startswith(".") or ".." in host:
            raise errors.InputError(f"the remote URL {url!r} has no valid host name.", hint=hint)
        return "ssh"
    if ":" in url.split("/", 1)[0] and not url.startswith(("/", ".")):
        raise errors.InputError(
            f"the remote URL {url!r} is malformed (a colon but no host:path).", hint=hint
        )
    return "path"


def looks_like_url(text: str) -> bool:
    """Whether ``text`` names a remote by URL (``scheme://``, or scp-like ``[user@]host:path``)
    rather than by local path: the same reading as :func:`classify_url`."""
    if "://" in text:
        return True
    return SCP_RE.match(text) is not None and "/" not in text.split(":", 1)[0]


def new_directory(path: Path | str, command: str, *, url_hint: str, taken_hint: str) -> Path:
    """``path`` as the local directory ``command`` is to create (new, or an empty directory).

    Refused: an empty path or one that looks like a URL (:class:`InputError`: a URL made into
    a path would quietly become a directory such as ``./git:/host/x``), and a file or a
    non-empty directory there (:class:`LedgerExists`). Pass the user's text, not a ``Path``:
    ``Path("")`` is ``.`` and ``Path("git://h/x")`` is ``git:/h/x``."""
    text = str(path)
    if not text.strip():
        raise errors.InputError(
            f"the path given to '{command}' is empty.", hint="Name the directory to create."
        )
    if looks_like_url(text):
        raise errors.InputError(
            redact.mask_url(
                f"{text!r} looks like a URL, but '{command}' takes the path of a local "
                "directory to create."
            ),
            hint=url_hint,
        )
    target = Path(text)
    if target.exists() and not target.is_dir():
        raise errors.LedgerExists(
            f"{target} is a file, not a directory; '{command}' creates a new directory.",
            hint=taken_hint,
        )
    if target.exists() and any(target.iterdir()):
        raise errors.LedgerExists(
            f"{target} already exists and is not empty; '{command}' only creates a new "
            "directory (or fills an empty one).",
            hint=taken_hint,
        )
    return target


def normalize_url(url: str) -> str:
    """The URL as stored: local paths become absolute so that they do not depend on the cwd."""
    if classify_url(url) == "path":
        return str(Path(url).expanduser().absolute())
    return url


def direct_write_warning(name: str, url: str) -> str | None:
    """The warning for a remote that libgit2 writes directly (a path or ``file://``)."""
    if classify_url(url) not in ("path", "file"):
        return None
    return (
        f"remote {name} ({redact.mask_url(url)}) is a local path: pushes write its directory "
        "directly, so its receive.denyNonFastForwards / receive.denyDeletes rules and its "
        "pre-receive check do not run, and whoever can write that directory can rewrite "
        "it. Serve it over ssh://, git:// or https:// to have those rules enforced."
    )


def check_remote_name(name: str) -> str:
    if not _NAME_RE.match(name) or ".." in name or name.endswith((".lock", ".")):
        raise errors.InputError(
            f"{name!r} is not a valid remote name.",
            hint="Use letters, digits, '.', '_' and '-' (at most 64, starting with a letter "
            "or digit).",
        )
    return name


def _remote_names(repo: pygit2.Repository) -> list[str]:
    return sorted(n for n in repo.remotes.names() if n)


def get_remote(repo: pygit2.Repository, name: str) -> pygit2.Remote:
    try:
        return repo.remotes[name]
    except (KeyError, ValueError, pygit2.GitError):
        known = ", ".join(_remote_names(repo)) or "none"
        raise errors.RemoteError(
            f"there is no remote named {name!r} (configured remotes: {known}).",
            hint="List them with 'ledger remote list'; add one with 'ledger remote add NAME URL'.",
        ) from None


def add_remote(ledger_path: Path, name: str, url: str, *, shared: bool = False) -> RemoteInfo:
    """Add a remote to the ledger's git config; the result's ``warning`` is for the user.

    ``shared``: the remote is one repository holding many ledgers, ours at
    ``refs/ledgers/<ledger id>/main`` (``remote.NAME.ledgerShared = true``)."""
    check_remote_name(name)
    transport = classify_url(url)
    url = normalize_url(url)
    repo = store.open_repository(ledger_path)
    state.ledger_key(repo)  # which ledger it is, before the config changes (else: refused)
    if name in _remote_names(repo):
        raise errors.InputError(
            f"a remote named {name!r} already exists "
            f"({redact.mask_url(repo.remotes[name].url or '')}).",
            hint=f"Remove it first with 'ledger remote remove {name}', or choose another name.",
        )
    try:
        if shared:
            shared_ref(repo)  # refuses a ledger without a valid id before anything is written
        repo.remotes.create(name, url, f"+{chain.MAIN_REF}:refs/remotes/{name}/main")
        if shared:
            repo.config[f"remote.{name}.{SHARED_KEY}"] = True
    except pygit2.GitError as exc:
        raise errors.StorageError(
            redact.mask_url(f"could not add remote {name!r}: {exc}.")
        ) from None
    state.trust(repo, name)
    return RemoteInfo(
        name, redact.mask_url(url), transport, direct_write_warning(name, url), shared
    )


def is_shared(repo: pygit2.Repository, name: str) -> bool:
    """Whether remote NAME is a shared remote (``remote.NAME.ledgerShared``)."""
    try:
        return bool(repo.config.get_bool(f"remote.{name}.{SHARED_KEY}"))
    except (KeyError, ValueError, pygit2.GitError):
        return False


def shared_ref(repo: pygit2.Repository) -> str:
    """Where this ledger lives in a shared remote: ``refs/ledgers/<ledger id>/main``.

    The id is the verified one the user state is kept under (:func:`.state.ledger_key`:
    this copy's verified head or pin, never an id the ledger directory claims). A wrong id
    could not land a record anyway: the shared remote's hook refuses a chain naming another
    ledger than its ref."""
    lid = state.ledger_key(repo)
    if not LEDGER_ID_RE.match(lid):
        raise errors.InputError(
            f"this ledger has no valid ledger id ({lid!r}, not 32 lowercase hex digits), so "
            "it has no place in a shared remote.",
            hint="Run 'ledger verify' on it; a ledger made by 'ledger init' has one.",
        )
    return f"refs/ledgers/{lid}/main"


def remote_ref(repo: pygit2.Repository, name: str) -> str:
    """The ref that holds our ledger on remote NAME: its main, or our place in a shared one."""
    return shared_ref(repo) if is_shared(repo, name) else chain.MAIN_REF


def trust_remote(ledger_path: Path, name: str) -> RemoteInfo:
    """Accept remote NAME, as its URL is configured now, as one this user added (a remote
    put in the config another way, e.g. with ``git remote add``, is unknown until then)."""
    repo = store.open_repository(ledger_path)
    url = get_remote(repo, name).url or ""
    transport = classify_url(url)
    state.trust(repo, name)
    return RemoteInfo(
        name,
        redact.mask_url(url),
        transport,
        direct_write_warning(name, url),
        is_shared(repo, name),
    )


def remove_remote(ledger_path: Path, name: str) -> None:
    """Remove a remote (its config, tracking ref and recorded state)."""
    repo = store.open_repository(ledger_path)
    get_remote(repo, name)
    state.forget(repo, name)
    # Not repo.remotes.delete(): libgit2's remote deletion also removes local branches whose
    # names match the remote's fetch refspec source, which here is our own refs/heads/main.
    prefix = f"remote.{name}."
    try:
        cfg = repo.config
        keys = sorted({e.name for e in cfg if e.name.startswith(prefix)})
        for key in keys:
            cfg.delete_multivar(key, ".*")
        for ref in list(repo.references):
            if ref.startswith(f"refs/remotes/{name}/"):
                repo.references.delete(ref)
    except (pygit2.GitError, KeyError, ValueError) as exc:
        raise errors.StorageError(f"could not remove remote {name!r}: {exc}.") from None


def list_remotes(ledger_path: Path) -> list[RemoteInfo]:
    repo = store.open_repository(ledger_path)
    out = []
    for name in _remote_names(repo):
        url = repo.remotes[name].url or ""
        try:
            transport = classify_url(url)
            warning = direct_write_warning(name, url)
        except errors.InputError as exc:
            transport, warning = "invalid", exc.message
        out.append(
            RemoteInfo(name, redact.mask_url(url), transport, warning, is_shared(repo, name))
        )
    return out


def select_remotes(repo: pygit2.Repository, names: Sequence[str] | None) -> list[RemoteInfo]:
    """The remotes a push or fetch contacts (all when ``names`` is empty); refused while the
    ledger's config rewrites URLs (:func:`refuse_url_rewrites`): the URLs read here would
    be rewritten ones."""
    refuse_url_rewrites(repo)
    chosen = list(names) if names else _remote_names(repo)
    out = []
    for name in chosen:
        remote = get_remote(repo, name)
        url = remote.url or ""
        transport = classify_url(url)
        warning = direct_write_warning(name, url)
        out.append(
            RemoteInfo(name, redact.mask_url(url), transport, warning, is_shared(repo, name))
        )
    return out


_REWRITE_RE = re.compile(r"^url\..*\.(push)?insteadof$", re.IGNORECASE | re.DOTALL)
#: The levels of a repository's own configuration (its ``config`` file and what it
#: includes), which whoever can write the repository's directory controls; the user's
#: (``~/.gitconfig``, XDG) and the system's are theirs.
_OWN_LEVELS = frozenset(
    int(level)
    for level in (
        pygit2.enums.ConfigLevel.LOCAL,
        pygit2.enums.ConfigLevel.WORKTREE,
        pygit2.enums.ConfigLevel.APP,
    )
)


def refuse_url_rewrites(repo: pygit2.Repository) -> None:
    """:class:`RemoteError` when the repository's own config holds ``url.<base>.insteadOf``
    or ``pushInsteadOf``: libgit2 applies them to anonymous remotes too, so someone who can
    write a ledger or fleet copy directory could send its fetches and pushes to another
    server while every message names the URL asked for."""
    for entry in repo.config:
        if int(entry.level) in _OWN_LEVELS and _REWRITE_RE.match(entry.name):
            where = f"{repo.path.rstrip('/')}/config"
            raise errors.RemoteError(
                redact.mask_url(
                    f"{where} sets {entry.name} = {entry.value}: it would send this "
                    "repository's fetches and pushes to another URL than the one named. "
                    "Nothing was fetched or pushed."
                ),
                hint=f"Remove it (git config --file {where} --unset-all '{entry.name}'); a "
                "URL rewrite you mean belongs in your own ~/.gitconfig.",
            )
