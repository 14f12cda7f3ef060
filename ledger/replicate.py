"""Replication: remotes, parallel pushes that never force, fetches, divergence and rollback
checks, verified clones, protected remotes and their pre-receive check.

Remotes are ordinary git remotes in the ledger repository's config (``remote.NAME.url``).
Only ``refs/heads/main`` ever leaves the machine, always as ``refs/heads/main:refs/heads/main``
without ``+``: a push that is not a fast-forward is refused by libgit2 before anything is
sent, and a protected remote refuses it again (``receive.denyNonFastForwards``). libgit2
reports a refused ref not as an exception but through
``RemoteCallbacks.push_update_reference``; every such report becomes a ``rejected`` outcome
with the server's own words (from the sideband).

What each remote held when we last saw it is kept in ``<gitdir>/ledger-state/remotes.json``
(and in ``refs/remotes/NAME/main``): ``ledger status`` shows the lag from it, and a remote
whose head later goes backwards is reported as a rollback.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import getpass
import hashlib
import hmac
import json
import os
import re
import shlex
import shutil
import stat
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pygit2

from ledger.errors import (
    InputError,
    LedgerError,
    LedgerExists,
    RemoteError,
    StorageError,
    VerificationFailed,
)
from ledger.store import open_repository

MAIN_REF = "refs/heads/main"
PUSH_REFSPEC = "refs/heads/main:refs/heads/main"
ZERO_OID = "0" * 40
STATE_DIR = "ledger-state"
REMOTES_STATE = "remotes.json"
MAX_AUTH_ATTEMPTS = 4
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_IO_TIMEOUT_S = 120.0

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SCP_RE = re.compile(
    r"^(?:(?P<user>[^@/:\s]+)@)?(?P<host>[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]):(?P<path>[^\s].*)$"
)
_HOST_RE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$|^\[[0-9A-Fa-f:.]+\]$"
)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_PROGRESS_RE = re.compile(
    r"^(Counting|Compressing|Writing|Resolving|Total|Unpacking|Enumerating|Delta|Receiving)\b"
)
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
    """A configured remote; ``warning`` is set when its server-side rules cannot apply."""

    name: str
    url: str
    transport: str  # path, file, git, ssh, http, https
    warning: str | None = None

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
        raise InputError("the remote URL is empty.", hint=hint)
    if _CONTROL_RE.search(url):
        raise InputError(f"the remote URL {url!r} contains control characters.", hint=hint)
    if "://" in url:
        scheme = url.split("://", 1)[0].lower()
        transport = SCHEMES.get(scheme)
        if transport is None:
            raise InputError(
                f"the remote URL {url!r} has the unsupported scheme {scheme!r}.", hint=hint
            )
        if any(c.isspace() for c in url):
            raise InputError(f"the remote URL {url!r} contains white space.", hint=hint)
        parts = urllib.parse.urlsplit(url)
        if transport == "file":
            if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
                raise InputError(
                    f"the file URL {url!r} must name an absolute local path (file:///path).",
                    hint=hint,
                )
            return transport
        host = parts.hostname or ""
        if not host or not _HOST_RE.match(host if ":" not in host else f"[{host}]"):
            raise InputError(f"the remote URL {url!r} has no valid host name.", hint=hint)
        try:
            port = parts.port
        except ValueError:
            raise InputError(f"the remote URL {url!r} has an invalid port.", hint=hint) from None
        if port == 0:
            raise InputError(f"the remote URL {url!r} has an invalid port.", hint=hint)
        if parts.path in ("", "/"):
            raise InputError(f"the remote URL {url!r} names no repository path.", hint=hint)
        if parts.password and transport in ("ssh", "git"):
            raise InputError(
                f"the remote URL {url!r} carries a password; ssh and git URLs cannot.",
                hint="Use a key (--ssh-key, ssh-agent) for ssh remotes.",
            )
        return transport
    match = _SCP_RE.match(url)
    if match and "/" not in url.split(":", 1)[0]:
        host = match.group("host")
        if not _HOST_RE.match(host) or host.startswith(".") or ".." in host:
            raise InputError(f"the remote URL {url!r} has no valid host name.", hint=hint)
        return "ssh"
    if ":" in url.split("/", 1)[0] and not url.startswith(("/", ".")):
        raise InputError(
            f"the remote URL {url!r} is malformed (a colon but no host:path).", hint=hint
        )
    return "path"


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
        f"remote {name} ({url}) is a local path: pushes write its directory directly, so its "
        "receive.denyNonFastForwards / receive.denyDeletes rules and its pre-receive check do "
        "not run, and whoever can write that directory can rewrite it. Serve it over "
        "ssh://, git:// or https:// to have those rules enforced."
    )


def check_remote_name(name: str) -> str:
    if not _NAME_RE.match(name) or ".." in name or name.endswith((".lock", ".")):
        raise InputError(
            f"{name!r} is not a valid remote name.",
            hint="Use letters, digits, '.', '_' and '-' (at most 64, starting with a letter "
            "or digit).",
        )
    return name


def _open_repo(path: Path) -> pygit2.Repository:
    return open_repository(path)


def _remote_names(repo: pygit2.Repository) -> list[str]:
    return sorted(n for n in repo.remotes.names() if n)


def _get_remote(repo: pygit2.Repository, name: str) -> pygit2.Remote:
    try:
        return repo.remotes[name]
    except (KeyError, ValueError, pygit2.GitError):
        known = ", ".join(_remote_names(repo)) or "none"
        raise RemoteError(
            f"there is no remote named {name!r} (configured remotes: {known}).",
            hint="List them with 'ledger remote list'; add one with 'ledger remote add NAME URL'.",
        ) from None


def add_remote(ledger_path: Path, name: str, url: str) -> RemoteInfo:
    """Add a remote to the ledger's git config; the result's ``warning`` is for the user."""
    check_remote_name(name)
    transport = classify_url(url)
    url = normalize_url(url)
    repo = _open_repo(ledger_path)
    if name in _remote_names(repo):
        raise InputError(
            f"a remote named {name!r} already exists ({repo.remotes[name].url}).",
            hint=f"Remove it first with 'ledger remote remove {name}', or choose another name.",
        )
    try:
        repo.remotes.create(name, url, f"+{MAIN_REF}:refs/remotes/{name}/main")
    except pygit2.GitError as exc:
        raise StorageError(f"could not add remote {name!r}: {exc}.") from None
    return RemoteInfo(name, url, transport, direct_write_warning(name, url))


def remove_remote(ledger_path: Path, name: str) -> None:
    """Remove a remote (its config, tracking ref and recorded state)."""
    repo = _open_repo(ledger_path)
    _get_remote(repo, name)
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
        raise StorageError(f"could not remove remote {name!r}: {exc}.") from None
    with _state_lock(repo) as state:
        state.pop(name, None)


def list_remotes(ledger_path: Path) -> list[RemoteInfo]:
    repo = _open_repo(ledger_path)
    out = []
    for name in _remote_names(repo):
        url = repo.remotes[name].url or ""
        try:
            transport = classify_url(url)
            warning = direct_write_warning(name, url)
        except InputError as exc:
            transport, warning = "invalid", exc.message
        out.append(RemoteInfo(name, url, transport, warning))
    return out


def _select_remotes(repo: pygit2.Repository, names: Sequence[str] | None) -> list[RemoteInfo]:
    chosen = list(names) if names else _remote_names(repo)
    out = []
    for name in chosen:
        remote = _get_remote(repo, name)
        url = remote.url or ""
        transport = classify_url(url)
        out.append(RemoteInfo(name, url, transport, direct_write_warning(name, url)))
    return out


# --- local state: what each remote held when last seen -----------------------------------


@contextlib.contextmanager
def _state_lock(repo: pygit2.Repository) -> Iterator[dict[str, Any]]:
    """Read-modify-write of ``ledger-state/remotes.json`` under an exclusive file lock."""
    state_dir = Path(repo.path) / STATE_DIR
    state_dir.mkdir(exist_ok=True)
    path = state_dir / REMOTES_STATE
    lock_fd = os.open(state_dir / (REMOTES_STATE + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        state = _read_state_file(path)
        before = json.dumps(state, sort_keys=True)
        yield state
        if json.dumps(state, sort_keys=True) != before:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, path)
    finally:
        os.close(lock_fd)


def _read_state_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise StorageError(
            f"the remote state file {path} cannot be read: {exc}.",
            hint="Delete it; the next 'ledger fetch' rebuilds it.",
        ) from None
    return data if isinstance(data, dict) else {}


def read_remote_state(ledger_path: Path) -> dict[str, Any]:
    """What each remote held when last seen: ``{name: {"head", "seq", "time", "url", ...}}``."""
    repo = _open_repo(ledger_path)
    return _read_state_file(Path(repo.path) / STATE_DIR / REMOTES_STATE)


# --- commits and chains -------------------------------------------------------------------


def _main_head(repo: pygit2.Repository) -> str | None:
    ref = repo.references.get(MAIN_REF)
    return str(ref.target) if ref is not None else None


def commit_seq(repo: pygit2.Repository, oid: str) -> int | None:
    """The seq of a ledger commit (its ``Ledger-Seq`` trailer), or its chain position."""
    try:
        commit = repo[oid]
    except (KeyError, ValueError):
        return None
    if not isinstance(commit, pygit2.Commit):
        return None
    from ledger.records import parse_trailers

    value = parse_trailers(commit.message).get("Ledger-Seq")
    if value is not None and value.isdigit():
        return int(value)
    n = 0
    while commit.parents:
        commit = commit.parents[0]
        n += 1
    return n


def root_commit(repo: pygit2.Repository, oid: str) -> str:
    """The first commit of the first-parent chain ending at ``oid`` (its genesis)."""
    commit = repo.get(oid)
    if not isinstance(commit, pygit2.Commit):
        raise StorageError(f"object {oid} is not a commit or is missing.")
    while commit.parents:
        commit = commit.parents[0]
    return str(commit.id)


def _short(oid: str | None) -> str:
    return oid[:12] if oid else "(none)"


def _is_ancestor(repo: pygit2.Repository, ancestor: str, descendant: str) -> bool:
    if ancestor == descendant:
        return True
    try:
        return bool(repo.descendant_of(descendant, ancestor))
    except (KeyError, ValueError, pygit2.GitError):
        return False


def _has(repo: pygit2.Repository, oid: str) -> bool:
    try:
        return oid in repo.odb
    except (ValueError, pygit2.GitError):
        return False


def _ahead(repo: pygit2.Repository, new: str, old: str | None) -> int:
    """How many records ``new`` has that ``old`` has not (``old`` an ancestor or None)."""
    new_seq = commit_seq(repo, new)
    if old is None:
        return (new_seq or 0) + 1
    old_seq = commit_seq(repo, old)
    if new_seq is not None and old_seq is not None:
        return max(new_seq - old_seq, 0)
    ahead, _behind = repo.ahead_behind(new, old)
    return int(ahead)


# --- credentials and host keys ------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """How to authenticate to remotes.

    SSH: the key file ``ssh_key`` (``--ssh-key`` / ``LEDGER_SSH_KEY``), then ssh-agent
    (``SSH_AUTH_SOCK``), then ``~/.ssh/id_ed25519``, ``id_ecdsa``, ``id_rsa``. HTTP(S):
    ``LEDGER_HTTP_TOKEN`` (with ``LEDGER_HTTP_USER``, default ``git``), or
    ``LEDGER_HTTP_USER`` + ``LEDGER_HTTP_PASSWORD``, then credentials in the URL, then the
    file of git's ``store`` credential helper (``credential.helper = store``). SSH host keys
    are checked against ``$HOME/.ssh/known_hosts`` unless ``insecure_host_key``.
    """

    ssh_key: Path | None = None
    ssh_passphrase: str | None = None
    http_user: str | None = None
    http_password: str | None = None
    insecure_host_key: bool = False
    use_agent: bool = True
    home: Path | None = None

    @classmethod
    def from_env(
        cls,
        *,
        ssh_key: Path | None = None,
        insecure_host_key: bool = False,
        environ: Mapping[str, str] | None = None,
    ) -> Credentials:
        env = os.environ if environ is None else environ
        key = ssh_key or (Path(env["LEDGER_SSH_KEY"]) if env.get("LEDGER_SSH_KEY") else None)
        if key is not None and not key.is_file():
            raise InputError(
                f"the SSH key {key} does not exist or is not a file.",
                hint="Pass the private key file with --ssh-key or LEDGER_SSH_KEY.",
            )
        token = env.get("LEDGER_HTTP_TOKEN")
        user = env.get("LEDGER_HTTP_USER")
        password = token if token else env.get("LEDGER_HTTP_PASSWORD")
        if password and not user:
            user = "git"
        return cls(
            ssh_key=key,
            ssh_passphrase=env.get("LEDGER_SSH_PASSPHRASE"),
            http_user=user,
            http_password=password,
            insecure_host_key=insecure_host_key,
            use_agent=bool(env.get("SSH_AUTH_SOCK")),
            home=Path(env["HOME"]) if env.get("HOME") else None,
        )


class _AuthFailed(Exception):
    """Raised inside the credentials callback when every method has been tried."""


def _known_hosts_path(home: Path | None) -> Path:
    return (home or Path(os.environ.get("HOME") or Path.home())) / ".ssh" / "known_hosts"


def _host_pattern_matches(pattern: str, host: str) -> bool:
    if pattern.startswith("|1|"):
        try:
            _, _, salt_b64, hash_b64 = pattern.split("|", 3)
            import base64

            salt = base64.b64decode(salt_b64)
            expected = base64.b64decode(hash_b64)
        except ValueError:
            return False
        digest = hmac.new(salt, host.encode(), hashlib.sha1).digest()
        return hmac.compare_digest(digest, expected)
    return pattern == host


def known_hosts_has(home: Path | None, host: str, port: int | None) -> bool:
    """True when known_hosts has some entry (of any key) for the host and port."""
    name = host if port in (None, 22) else f"[{host}]:{port}"
    try:
        lines = _known_hosts_path(home).read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if fields[0].startswith("@"):
            fields = fields[1:]
        if not fields:
            continue
        for pattern in fields[0].split(","):
            if not pattern.startswith("!") and _host_pattern_matches(pattern, name):
                return True
    return False


def _url_host_port(url: str) -> tuple[str, int | None, str | None]:
    """Host, port and user named by a remote URL (scp-like included)."""
    if "://" in url:
        parts = urllib.parse.urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = None
        return parts.hostname or "", port, parts.username
    match = _SCP_RE.match(url)
    if match:
        return match.group("host").strip("[]"), None, match.group("user")
    return "", None, None


def _git_credential_store(
    url: str, config: pygit2.Config | None, home: Path | None
) -> tuple[str, str] | None:
    """User and password for ``url`` from git's ``store`` credential helper file.

    libgit2 does not run credential helpers (they are programs run by git); the ``store``
    helper's file is plain text, so it is read here. Other helpers are not consulted.
    """
    helper = ""
    if config is not None:
        with contextlib.suppress(KeyError, ValueError, pygit2.GitError):
            helper = str(config["credential.helper"])
    words = shlex.split(helper) if helper else []
    if not words or words[0] != "store":
        return None
    files = [Path(w.split("=", 1)[1]).expanduser() for w in words[1:] if w.startswith("--file=")]
    base = home or Path(os.environ.get("HOME") or Path.home())
    files = files or [base / ".git-credentials"]
    want = urllib.parse.urlsplit(url)
    for f in files:
        try:
            lines = f.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            entry = urllib.parse.urlsplit(line.strip())
            if (
                entry.scheme == want.scheme
                and (entry.hostname or "") == (want.hostname or "")
                and entry.port == want.port
                and entry.username is not None
            ):
                return (
                    urllib.parse.unquote(entry.username),
                    urllib.parse.unquote(entry.password or ""),
                )
    return None


class _Callbacks(pygit2.RemoteCallbacks):
    """Credentials, host key checks, and the per-ref push reports for one operation."""

    def __init__(self, url: str, creds: Credentials, config: pygit2.Config | None = None) -> None:
        super().__init__()
        self.url = url
        self.creds = creds
        self.config = config
        self.attempts = 0
        self.tried: list[str] = []
        self.host_key_problem: str | None = None
        self.rejections: list[tuple[str, str]] = []
        self.accepted: list[str] = []
        self.sideband: list[str] = []
        self._ssh_queue: list[tuple[str, Any]] | None = None
        self._http_queue: list[tuple[str, Any]] | None = None

    # -- credentials -------------------------------------------------------------------------

    def _ssh_candidates(self, user: str) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        keys: list[Path] = []
        if self.creds.ssh_key is not None:
            keys.append(self.creds.ssh_key)
        passphrase = self.creds.ssh_passphrase or ""
        for key in keys:
            pub = Path(f"{key}.pub")
            out.append(
                (
                    f"key {key}",
                    pygit2.Keypair(user, str(pub) if pub.exists() else None, str(key), passphrase),
                )
            )
        if self.creds.use_agent:
            out.append(("ssh-agent", pygit2.KeypairFromAgent(user)))
        if self.creds.ssh_key is None:
            home = self.creds.home or Path(os.environ.get("HOME") or Path.home())
            for name in ("id_ed25519", "id_ecdsa", "id_rsa"):
                key = home / ".ssh" / name
                if key.is_file():
                    pub = Path(f"{key}.pub")
                    out.append(
                        (
                            f"key {key}",
                            pygit2.Keypair(
                                user, str(pub) if pub.exists() else None, str(key), passphrase
                            ),
                        )
                    )
        return out

    def _http_candidates(self, url: str) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        if self.creds.http_password:
            out.append(
                (
                    "LEDGER_HTTP_* credentials",
                    pygit2.UserPass(self.creds.http_user or "git", self.creds.http_password),
                )
            )
        parts = urllib.parse.urlsplit(url)
        if parts.username and parts.password:
            out.append(
                (
                    "credentials in the URL",
                    pygit2.UserPass(
                        urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password)
                    ),
                )
            )
        stored = _git_credential_store(url, self.config, self.creds.home)
        if stored:
            out.append(("git credential store", pygit2.UserPass(*stored)))
        return out

    def credentials(
        self, url: str, username_from_url: str | None, allowed_types: pygit2.enums.CredentialType
    ) -> Any:
        CT = pygit2.enums.CredentialType
        self.attempts += 1
        if self.attempts > MAX_AUTH_ATTEMPTS * 2:
            raise _AuthFailed(self._auth_message())
        user = username_from_url or getpass.getuser()
        if allowed_types & CT.USERNAME:
            return pygit2.Username(user)
        if allowed_types & CT.SSH_KEY:
            if self._ssh_queue is None:
                self._ssh_queue = self._ssh_candidates(user)[:MAX_AUTH_ATTEMPTS]
            if not self._ssh_queue:
                raise _AuthFailed(self._auth_message())
            label, cred = self._ssh_queue.pop(0)
            self.tried.append(label)
            return cred
        if allowed_types & CT.USERPASS_PLAINTEXT:
            if self._http_queue is None:
                self._http_queue = self._http_candidates(self.url)[:MAX_AUTH_ATTEMPTS]
            if not self._http_queue:
                raise _AuthFailed(self._auth_message())
            label, cred = self._http_queue.pop(0)
            self.tried.append(label)
            return cred
        raise _AuthFailed(self._auth_message())

    def _auth_message(self) -> str:
        tried = ", ".join(self.tried) if self.tried else "no credentials were available"
        return f"authentication failed (tried: {tried})"

    # -- host keys ---------------------------------------------------------------------------

    def certificate_check(self, certificate: None, valid: bool, host: bytes | str) -> bool:
        if valid or self.creds.insecure_host_key:
            return True
        hostname = host.decode(errors="replace") if isinstance(host, bytes) else str(host)
        url_host, port, _user = _url_host_port(self.url)
        transport = classify_url(self.url)
        if transport == "ssh":
            shown = hostname if port in (None, 22) else f"[{hostname}]:{port}"
            known = _known_hosts_path(self.creds.home)
            if known_hosts_has(self.creds.home, url_host or hostname, port):
                self.host_key_problem = (
                    f"the SSH host key of {shown} does not match the one in {known}: the host "
                    "key CHANGED (a reinstalled server, or someone intercepting the connection)"
                )
            else:
                self.host_key_problem = (
                    f"the SSH host key of {shown} is unknown: {known} has no entry for it"
                )
        else:
            self.host_key_problem = f"the TLS certificate of {hostname} is not valid"
        return False

    # -- push reports ------------------------------------------------------------------------

    def push_update_reference(self, refname: str, message: str | None) -> None:
        if message:
            self.rejections.append((refname, message))
        else:
            self.accepted.append(refname)

    def sideband_progress(self, string: str) -> None:
        self.sideband.append(string)

    def server_messages(self) -> list[str]:
        """The server's words (hook output, deny messages), without progress counters."""
        text = "".join(self.sideband).replace("\r", "\n")
        out = []
        for raw in text.split("\n"):
            line = raw.strip()
            if line and not _PROGRESS_RE.match(line) and line not in out:
                out.append(line)
        return out


_timeouts_set = False
_settings_lock = threading.Lock()


def _configure(creds: Credentials | None = None) -> None:
    """Process-wide libgit2 settings: network timeouts, and the home directory whose
    ``.ssh/known_hosts`` libgit2 checks host keys against (libgit2 reads $HOME only once)."""
    global _timeouts_set  # noqa: PLW0603
    with _settings_lock:
        if not _timeouts_set:
            connect = float(
                os.environ.get("LEDGER_REMOTE_CONNECT_TIMEOUT") or DEFAULT_CONNECT_TIMEOUT_S
            )
            io = float(os.environ.get("LEDGER_REMOTE_TIMEOUT") or DEFAULT_IO_TIMEOUT_S)
            with contextlib.suppress(AttributeError, pygit2.GitError, ValueError):
                pygit2.settings.server_connect_timeout = int(connect * 1000)
                pygit2.settings.server_timeout = int(io * 1000)
            _timeouts_set = True
        home = creds.home if creds is not None and creds.home is not None else None
        if home is None and os.environ.get("HOME"):
            home = Path(os.environ["HOME"])
        if home is not None:
            with contextlib.suppress(AttributeError, pygit2.GitError, ValueError):
                if pygit2.settings.homedir != str(home):
                    pygit2.settings.homedir = str(home)


# --- outcomes ---------------------------------------------------------------------------


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

    def check(self, require: int | None) -> None:
        """Raise :class:`RemoteError` unless the push met its requirement.

        ``require=None``: every remote must hold our head. ``require=N``: at least N must.
        A rejection, divergence or rollback always fails.
        """
        problems = self.problems
        if problems:
            names = ", ".join(f"{o.remote} ({o.line()})" for o in problems)
            raise RemoteError(
                f"push found a problem that needs a person: {names}.",
                hint="Nothing was forced and nothing overwritten. Compare the histories with "
                "'ledger fetch' and investigate before pushing there again.",
            )
        total = len(self.outcomes)
        need = total if require is None else min(require, total) if require >= 0 else total
        if require is not None and require > total:
            raise RemoteError(
                f"--require {require} cannot be met: only {total} remote(s) are configured.",
                hint="Add remotes with 'ledger remote add', or lower --require.",
            )
        if self.holding < need:
            missing = ", ".join(
                f"{o.remote} ({o.status.value})" for o in self.outcomes if not o.holds_head
            )
            raise RemoteError(
                f"only {self.holding} of {total} remote(s) hold our head "
                f"{_short(self.head)} (seq {self.seq}); {need} required. Missing: {missing}.",
                hint="The records are safe locally; run 'ledger push' again when the remotes "
                "are reachable ('ledger status' shows the lag).",
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "head": self.head,
            "seq": self.seq,
            "holding": self.holding,
            "outcomes": [o.to_json() for o in self.outcomes],
            "warnings": self.warnings,
        }


def _classify_git_error(exc: BaseException, cb: _Callbacks | None) -> tuple[PushStatus, str]:
    text = str(exc).strip() or exc.__class__.__name__
    if isinstance(exc, _AuthFailed):
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


def _local_path(url: str) -> Path | None:
    """The directory of a path or ``file://`` remote, else None."""
    transport = classify_url(url)
    if transport == "path":
        return Path(url)
    if transport == "file":
        return Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    return None


def _check_local(url: str) -> None:
    """libgit2 says only "unsupported URL protocol" for a missing local path: say more."""
    path = _local_path(url)
    if path is not None and not path.exists():
        raise pygit2.GitError(f"no repository at {path}: the directory does not exist")


def _anonymous(repo: pygit2.Repository, name: str) -> pygit2.Remote:
    """An in-memory remote for NAME's URL.

    Network operations never use the configured remote itself: libgit2's fetch applies a
    configured push refspec ``refs/heads/main:refs/heads/main`` in reverse and would move
    our own main to the remote's head. An anonymous remote has no configured refspecs.
    """
    url = _get_remote(repo, name).url or ""
    _check_local(url)
    return repo.remotes.create_anonymous(url)


def _list_main(repo: pygit2.Repository, name: str, cb: _Callbacks) -> str | None:
    remote = _anonymous(repo, name)
    heads = remote.list_heads(callbacks=cb)
    for head in heads:
        if head.name == MAIN_REF:
            return str(head.oid)
    return None


def _fetch_main(repo: pygit2.Repository, name: str, cb: _Callbacks) -> str | None:
    """Fetch the remote's main into ``refs/remotes/NAME/main`` (never into our main)."""
    remote = _anonymous(repo, name)
    tracking = f"refs/remotes/{name}/main"
    before = _main_head(repo)
    remote.fetch([f"+{MAIN_REF}:{tracking}"], callbacks=cb, prune=pygit2.enums.FetchPrune.NO_PRUNE)
    after = _main_head(repo)
    if after != before:
        # Never expected (see _anonymous); if libgit2 ever moves our main, say so loudly.
        raise StorageError(
            f"fetching {name} moved refs/heads/main from {before} to {after}; this must not "
            "happen.",
            hint="Restore it with the reflog (git reflog show refs/heads/main) and report a bug.",
        )
    ref = repo.references.get(tracking)
    return str(ref.target) if ref is not None else None


def _open_for_remote(
    ledger_path: Path, name: str, creds: Credentials
) -> tuple[pygit2.Repository, str, str | None, int | None]:
    """The ledger's repository, the remote's URL, and our head and its seq."""
    _configure(creds)
    repo = _open_repo(ledger_path)
    url = _get_remote(repo, name).url or ""
    local = _main_head(repo)
    return repo, url, local, commit_seq(repo, local) if local else None


def push_one(
    ledger_path: Path, name: str, creds: Credentials, last_seen: Mapping[str, Any] | None = None
) -> PushOutcome:
    """Push our main to one remote (fast-forward only); never raises for remote trouble."""
    start = time.monotonic()
    repo, url, local, local_seq = _open_for_remote(ledger_path, name, creds)
    out = PushOutcome(name, url, PushStatus.ERROR, local_head=local, local_seq=local_seq)
    if local is None:
        out.message = "the ledger has no records to push"
        return out
    cb = _Callbacks(url, creds, repo.config)
    try:
        remote_head = _list_main(repo, name, cb)
        out.remote_head = remote_head
        prev = (last_seen or {}).get("head")
        if remote_head is not None and remote_head == local:
            out.status = PushStatus.UP_TO_DATE
        elif remote_head is None or (
            _has(repo, remote_head) and _is_ancestor(repo, remote_head, local)
        ):
            if remote_head is None and prev:
                out.rollback = (
                    f"the remote's main is gone, but it held {_short(prev)} "
                    f"(seq {(last_seen or {}).get('seq')}) when we last saw it"
                )
            out.records = _ahead(repo, local, remote_head)
            cb = _Callbacks(url, creds, repo.config)
            _anonymous(repo, name).push([PUSH_REFSPEC], callbacks=cb)
            if cb.rejections:
                out.status = PushStatus.REJECTED
                refs = "; ".join(f"{ref}: {msg}" for ref, msg in cb.rejections)
                server = cb.server_messages()
                out.message = refs + (" — server said: " + " | ".join(server) if server else "")
                out.records = 0
            elif MAIN_REF in cb.accepted:
                out.status = PushStatus.PUSHED
                out.remote_head = local
            else:
                out.status = PushStatus.ERROR
                out.message = "the remote did not report the state of refs/heads/main"
        else:
            fetched = _fetch_main(repo, name, cb)
            out.remote_head = fetched
            if fetched is not None and _is_ancestor(repo, local, fetched):
                out.status = PushStatus.AHEAD
                n = _ahead(repo, fetched, local)
                out.message = (
                    f"the remote holds {n} record(s) beyond our head "
                    f"{_short(local)}: its main is {fetched} (seq "
                    f"{commit_seq(repo, fetched)}). Nothing pushed; check where they "
                    "came from with 'ledger fetch'."
                )
            else:
                out.status = PushStatus.DIVERGED
                out.message = (
                    f"the remote's main {fetched} (seq {commit_seq(repo, fetched or '')}) and "
                    f"our main {local} (seq {out.local_seq}) do not extend one another: the "
                    "remote was rewritten or holds another ledger (possible tampering). Nothing "
                    "was pushed or overwritten."
                )
        if out.remote_head is not None:
            out.remote_seq = commit_seq(repo, out.remote_head)
        if (
            prev
            and out.rollback is None
            and out.remote_head is not None
            and out.status is not PushStatus.DIVERGED
        ):
            before = remote_head if remote_head is not None else out.remote_head
            if (
                before != prev
                and _has(repo, prev)
                and _has(repo, before)
                and _is_ancestor(repo, before, prev)
            ):
                out.rollback = (
                    f"the remote went back from {_short(prev)} (seq "
                    f"{(last_seen or {}).get('seq')}) to {_short(before)} (seq "
                    f"{commit_seq(repo, before)}) since we last saw it"
                )
    except _AuthFailed as exc:
        out.status, out.message = PushStatus.AUTH_FAILED, str(exc)
    except pygit2.GitError as exc:
        status, message = _classify_git_error(exc, cb)
        if "non-fastforwardable" in str(exc) or "non-fast-forward" in str(exc):
            status = PushStatus.REJECTED
            message = f"{exc} (the remote moved while we pushed; run 'ledger push' again)"
        out.status, out.message = status, message
    except (OSError, ValueError, KeyError) as exc:
        out.status, out.message = PushStatus.ERROR, str(exc)
    out.seconds = time.monotonic() - start
    return out


def _record_outcomes(repo: pygit2.Repository, outcomes: Iterable[PushOutcome]) -> None:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with _state_lock(repo) as state:
        for o in outcomes:
            entry = dict(state.get(o.remote) or {})
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
            state[o.remote] = entry


def _set_tracking(repo: pygit2.Repository, name: str, oid: str) -> None:
    if _has(repo, oid):
        with contextlib.suppress(pygit2.GitError, ValueError):
            repo.references.create(f"refs/remotes/{name}/main", oid, force=True)


def push(
    ledger_path: Path, names: Sequence[str] | None = None, *, credentials: Credentials | None = None
) -> PushSummary:
    """Push our main to the remotes (all by default) in parallel; never forces.

    Returns every remote's outcome; raises only for local problems (no ledger, unknown remote
    name). Call :meth:`PushSummary.check` to turn the outcomes into an exit status.
    """
    creds = credentials or Credentials.from_env()
    repo = _open_repo(ledger_path)
    remotes = _select_remotes(repo, names)
    head = _main_head(repo)
    summary = PushSummary(
        head,
        commit_seq(repo, head) if head else None,
        warnings=[r.warning for r in remotes if r.warning],
    )
    if not remotes:
        return summary
    state = _read_state_file(Path(repo.path) / STATE_DIR / REMOTES_STATE)
    with ThreadPoolExecutor(max_workers=min(len(remotes), 16)) as pool:
        futures = [
            pool.submit(push_one, ledger_path, r.name, creds, state.get(r.name)) for r in remotes
        ]
        summary.outcomes = [f.result() for f in futures]
    _record_outcomes(repo, summary.outcomes)
    return summary


# --- fetch and remote checks ------------------------------------------------------------


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


_REMOTE_PROBLEMS = {RemoteCondition.DIVERGED, RemoteCondition.ROLLBACK, RemoteCondition.INVALID}


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
        """Divergence, rollback or invalid records: possible tampering."""
        return self.condition in _REMOTE_PROBLEMS

    @property
    def checked(self) -> bool:
        return self.condition not in (
            RemoteCondition.UNREACHABLE,
            RemoteCondition.AUTH_FAILED,
            RemoteCondition.HOST_KEY,
            RemoteCondition.ERROR,
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
        return None

    def line(self) -> str:
        c = self.condition
        if c is RemoteCondition.IN_SYNC:
            return f"in sync at seq {self.remote_seq} ({_short(self.remote_head)})"
        if c is RemoteCondition.BEHIND:
            return (
                f"{self.behind} record(s) behind: at seq {self.remote_seq} "
                f"({_short(self.remote_head)}), ours is seq {self.local_seq}"
            )
        if c is RemoteCondition.AHEAD:
            return (
                f"{self.ahead} record(s) ahead of us: at seq {self.remote_seq} "
                f"({_short(self.remote_head)}); {self.message}"
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
    PushStatus.UNREACHABLE: RemoteCondition.UNREACHABLE,
    PushStatus.AUTH_FAILED: RemoteCondition.AUTH_FAILED,
    PushStatus.HOST_KEY: RemoteCondition.HOST_KEY,
}


def check_one(
    ledger_path: Path,
    name: str,
    creds: Credentials,
    last_seen: Mapping[str, Any] | None = None,
    verify_ahead: bool = True,
) -> RemoteState:
    """Fetch one remote's main into ``refs/remotes/NAME/main`` and compare it with ours."""
    repo, url, local, local_seq = _open_for_remote(ledger_path, name, creds)
    st = RemoteState(name, url, RemoteCondition.ERROR, local_head=local, local_seq=local_seq)
    prev = (last_seen or {}).get("head")
    st.last_seen_head = prev
    st.last_seen_seq = (last_seen or {}).get("seq")
    cb = _Callbacks(url, creds, repo.config)
    try:
        fetched = _fetch_main(repo, name, cb)
    except _AuthFailed as exc:
        st.condition, st.message = RemoteCondition.AUTH_FAILED, str(exc)
        return st
    except pygit2.GitError as exc:
        status, message = _classify_git_error(exc, cb)
        st.condition = _REMOTE_FROM_PUSH.get(status, RemoteCondition.ERROR)
        st.message = message
        return st
    st.remote_head = fetched
    st.remote_seq = commit_seq(repo, fetched) if fetched else None
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
        return st
    if local is None:
        st.condition = RemoteCondition.AHEAD
        st.ahead = (st.remote_seq or 0) + 1
        return st
    if fetched == local:
        st.condition = RemoteCondition.IN_SYNC
    elif _is_ancestor(repo, fetched, local):
        st.condition = RemoteCondition.BEHIND
        st.behind = _ahead(repo, local, fetched)
    elif _is_ancestor(repo, local, fetched):
        st.condition = RemoteCondition.AHEAD
        st.ahead = _ahead(repo, fetched, local)
        st.message = "run 'ledger verify' on a clone of it before trusting those records"
        if verify_ahead:
            problems, _result = verify_head(repo, fetched, trust_genesis=root_commit(repo, local))
            if problems:
                st.condition = RemoteCondition.INVALID
                st.message = (
                    f"the remote's records beyond ours (up to {fetched}) do not "
                    "verify: " + "; ".join(problems[:10])
                )
            else:
                st.message = "its extra records verify"
    else:
        st.condition = RemoteCondition.DIVERGED
        st.message = (
            f"the remote's main is {fetched} (seq {st.remote_seq}) and ours is {local} "
            f"(seq {st.local_seq}); neither extends the other: the remote was rewritten or "
            "holds another ledger (possible tampering). Nothing was overwritten."
        )
        return st
    if prev and prev != fetched and _has(repo, prev) and _is_ancestor(repo, fetched, prev):
        st.condition = RemoteCondition.ROLLBACK
        st.message = (
            f"the remote went back from {prev} (seq {st.last_seen_seq}) to "
            f"{fetched} (seq {st.remote_seq}) since we last saw it: records were "
            "removed there (possible tampering)"
        )
    elif prev and prev != fetched and _has(repo, prev) and not _is_ancestor(repo, prev, fetched):
        st.condition = RemoteCondition.DIVERGED
        st.message = (
            f"the remote's main {fetched} (seq {st.remote_seq}) does not extend "
            f"{prev} (seq {st.last_seen_seq}), which it held when we last saw it: "
            "its history was rewritten (possible tampering)"
        )
    return st


def check_remotes(
    ledger_path: Path, names: Sequence[str] | None = None, *, credentials: Credentials | None = None
) -> list[RemoteState]:
    """Fetch every remote's main (in parallel) and classify it against our main.

    Remote heads go to ``refs/remotes/NAME/main``; our ``refs/heads/main`` is never touched.
    The remembered head of a remote is updated only when it is not a problem, so a
    divergence or rollback keeps being reported until someone deals with it.
    """
    creds = credentials or Credentials.from_env()
    repo = _open_repo(ledger_path)
    remotes = _select_remotes(repo, names)
    if not remotes:
        return []
    state = _read_state_file(Path(repo.path) / STATE_DIR / REMOTES_STATE)
    with ThreadPoolExecutor(max_workers=min(len(remotes), 16)) as pool:
        futures = [
            pool.submit(check_one, ledger_path, r.name, creds, state.get(r.name)) for r in remotes
        ]
        results = [f.result() for f in futures]
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with _state_lock(repo) as st:
        for r in results:
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


def status(ledger_path: Path) -> LedgerStatus:
    """Local head and seq, what each remote held when last seen, unfinished runs."""
    from ledger.store import Ledger

    ledger = Ledger.open(ledger_path)
    head = ledger.head()
    repo = ledger.repo
    state = _read_state_file(Path(repo.path) / STATE_DIR / REMOTES_STATE)
    remotes = []
    for info in list_remotes(ledger_path):
        entry = state.get(info.name) or {}
        last_head = entry.get("head")
        last_seq = entry.get("seq")
        behind = None
        if head is not None and isinstance(last_seq, int):
            behind = max(head.seq - last_seq, 0)
        elif head is not None and last_head is None:
            behind = head.seq + 1
        problem = entry.get("problem", {}).get("message") if entry.get("problem") else None
        if entry.get("rollback"):
            problem = (problem + "; " if problem else "") + str(entry["rollback"].get("message"))
        remotes.append(
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
        remotes,
        ledger.unfinished_runs(),
    )


# --- background pusher ----------------------------------------------------------------------


class BackgroundPusher:
    """Pushes the newest head to every remote in the background during a run.

    One worker thread per remote, so a slow or unreachable remote never delays the others.
    :meth:`notify` is cheap and never blocks or raises; pushes coalesce (while a push is in
    flight, any number of notifications become one later push of the newest head). After an
    unreachable attempt a remote is retried with a growing delay (up to ``max_retry_delay``),
    except that :meth:`flush` always makes one more attempt. Nothing here ever raises into the
    run: problems end up in the outcomes of :meth:`flush`.

        pusher = BackgroundPusher(ledger_path)       # all configured remotes
        pusher.start()
        ... pusher.notify(appended.commit_id) after each record ...
        summary = pusher.close(timeout=30)           # flush, stop, PushSummary
    """

    def __init__(
        self,
        ledger_path: Path,
        remotes: Sequence[str] | None = None,
        *,
        credentials: Credentials | None = None,
        on_outcome: Callable[[PushOutcome], None] | None = None,
        max_retry_delay: float = 15.0,
    ) -> None:
        self.ledger_path = ledger_path
        self._creds = credentials
        self._on_outcome = on_outcome
        self._max_retry_delay = max_retry_delay
        self._cond = threading.Condition()
        self.latest: str | None = None
        self._generation = 0
        self._done: dict[str, int] = {}
        self._outcomes: dict[str, PushOutcome] = {}
        self._urgent = False
        self._stop = False
        self._threads: list[threading.Thread] = []
        self.warnings: list[str] = []
        self.error: str | None = None
        try:
            repo = _open_repo(ledger_path)
            infos = _select_remotes(repo, remotes)
            self.names = [r.name for r in infos]
            self._urls = {r.name: r.url for r in infos}
            self.warnings = [r.warning for r in infos if r.warning]
        except LedgerError as exc:
            self.names = []
            self._urls = {}
            self.error = exc.diagnostics()

    def start(self) -> BackgroundPusher:
        if self._creds is None:
            try:
                self._creds = Credentials.from_env()
            except LedgerError as exc:
                self.error = exc.diagnostics()
                self._creds = Credentials()
        for name in self.names:
            t = threading.Thread(
                target=self._worker, args=(name,), daemon=True, name=f"ledger-push-{name}"
            )
            t.start()
            self._threads.append(t)
        return self

    def __enter__(self) -> BackgroundPusher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def notify(self, head: str | None = None) -> None:
        """A new record is durable: push the newest head soon. Never blocks, never raises.

        ``head`` is informational (the workers always push the ledger's current main)."""
        with self._cond:
            self.latest = head or self.latest
            self._generation += 1
            self._cond.notify_all()

    def _worker(self, name: str) -> None:
        done = 0
        delay = 0.0
        retry_at = 0.0
        while True:
            with self._cond:
                while True:
                    if self._stop:
                        return
                    if self._generation > done:
                        now = time.monotonic()
                        if self._urgent or now >= retry_at:
                            break
                        self._cond.wait(timeout=retry_at - now)
                    else:
                        self._cond.wait()
                generation = self._generation
            outcome = self._attempt(name)
            done = generation
            if outcome.status is PushStatus.UNREACHABLE:
                delay = min(max(delay * 2, 1.0), self._max_retry_delay)
                retry_at = time.monotonic() + delay
            else:
                delay = retry_at = 0.0
            with self._cond:
                self._outcomes[name] = outcome
                self._done[name] = generation
                self._cond.notify_all()
            if self._on_outcome is not None:
                with contextlib.suppress(LedgerError):
                    self._on_outcome(outcome)

    def _attempt(self, name: str) -> PushOutcome:
        try:
            repo = _open_repo(self.ledger_path)
            state = _read_state_file(Path(repo.path) / STATE_DIR / REMOTES_STATE)
            outcome = push_one(
                self.ledger_path, name, self._creds or Credentials(), state.get(name)
            )
            _record_outcomes(repo, [outcome])
        except LedgerError as exc:
            outcome = PushOutcome(
                name, self._urls.get(name, ""), PushStatus.ERROR, message=exc.diagnostics()
            )
        except Exception as exc:  # noqa: BLE001  (reported in the outcome: a run never fails)
            outcome = PushOutcome(
                name,
                self._urls.get(name, ""),
                PushStatus.ERROR,
                message=f"{type(exc).__name__}: {exc}",
            )
        return outcome

    def flush(self, timeout: float = 30.0) -> PushSummary:
        """Wait (at most ``timeout`` s) until every remote has tried the newest head."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._urgent = True
            self._cond.notify_all()
            target = self._generation
            while any(self._done.get(n, 0) < target for n in self.names):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(timeout=left)
            self._urgent = False
            return self._summary(target)

    def _summary(self, target: int) -> PushSummary:
        head: str | None = None
        seq: int | None = None
        with contextlib.suppress(LedgerError, pygit2.GitError, OSError):
            repo = _open_repo(self.ledger_path)
            head = _main_head(repo)
            seq = commit_seq(repo, head) if head else None
        outcomes = []
        for n in self.names:
            o = self._outcomes.get(n)
            if o is None or self._done.get(n, 0) < target:
                pending = PushOutcome(
                    n,
                    self._urls.get(n, ""),
                    PushStatus.PENDING,
                    message="still pushing when the wait ended",
                )
                if o is not None:
                    pending.message += f"; last attempt: {o.line()}"
                o = pending
            outcomes.append(o)
        warnings = list(self.warnings) + ([self.error] if self.error else [])
        return PushSummary(head, seq, outcomes, warnings)

    def close(self, timeout: float = 30.0) -> PushSummary:
        """Flush, then stop the workers. Returns the final per-remote summary."""
        summary = self.flush(timeout)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=max(0.1, min(timeout, 5.0)))
        return summary


# --- protected remotes and their pre-receive check ------------------------------------------


HOOK_SCRIPT = """#!/bin/sh
# Installed by 'ledger remote init': verifies every record pushed to this ledger remote.
exec {python} -m ledger.hook pre-receive
"""


def init_remote(path: Path, *, genesis: str | None = None) -> Path:
    """Create a protected bare remote at ``path``.

    It refuses non-fast-forward updates and deletions, checks objects, and has a pre-receive
    hook that verifies every pushed record (``ledger hook pre-receive``). ``genesis`` pins the
    ledger it accepts; without it, the first push pins it.
    """
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise LedgerExists(
            f"{path} already exists and is not empty; 'ledger remote init' only creates new "
            "remotes.",
            hint="Choose a new path.",
        )
    if genesis is not None and not re.fullmatch(r"[0-9a-f]{40}", genesis):
        raise InputError(
            f"{genesis!r} is not a full commit id (40 lowercase hex digits).",
            hint="Pass the genesis commit id that 'ledger log' shows as seq 0.",
        )
    try:
        repo = pygit2.init_repository(str(path), bare=True, initial_head="main")
        cfg = repo.config
        cfg["receive.denyNonFastForwards"] = True
        cfg["receive.denyDeletes"] = True
        cfg["receive.fsckObjects"] = True
        cfg["transfer.fsckObjects"] = True
        cfg["core.logAllRefUpdates"] = "always"
        cfg["ledger.remote"] = True
        if genesis:
            cfg["ledger.genesis"] = genesis
        hooks = Path(repo.path) / "hooks"
        hooks.mkdir(exist_ok=True)
        hook = hooks / "pre-receive"
        hook.write_text(HOOK_SCRIPT.format(python=shlex.quote(sys.executable)))
        hook.chmod(hook.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    except (pygit2.GitError, OSError) as exc:
        raise StorageError(
            f"could not create the remote at {path}: {exc}.",
            hint="Check the path and its permissions.",
        ) from None
    return path


def _finding_lines(result: Any) -> list[str]:
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
) -> tuple[list[str], Any]:
    """Verify the chain ending at ``head`` with :func:`ledger.verify.verify_chain`.

    Returns one line per finding (empty: it verifies) and the verifier's result."""
    from ledger.verify import verify_chain

    result = verify_chain(repo, head, trust_genesis=trust_genesis, since=since)
    return _finding_lines(result), result


@dataclass
class HookResult:
    ok: bool
    messages: list[str]


def pre_receive(
    repo_dir: Path, updates: Iterable[str], environ: Mapping[str, str] | None = None
) -> HookResult:
    """The pre-receive check of a protected remote.

    ``updates`` are the hook's input lines ``OLD NEW REFNAME``. Only ``refs/heads/main`` may
    change, only forward, and the resulting chain must verify from the pinned genesis
    (``ledger.genesis`` of the remote; pinned by the first accepted push when unset).
    """
    env = os.environ if environ is None else environ
    extra: list[Path] = []
    for var in ("GIT_QUARANTINE_PATH", "GIT_OBJECT_DIRECTORY"):
        value = env.get(var)
        if value:
            p = Path(value)
            extra.append(p if p.is_absolute() else (repo_dir / p))
    for value in (env.get("GIT_ALTERNATE_OBJECT_DIRECTORIES") or "").split(":"):
        if value:
            extra.append(Path(value) if Path(value).is_absolute() else repo_dir / value)
    repo = pygit2.Repository(str(repo_dir), pygit2.enums.RepositoryOpenFlag.NO_SEARCH)
    for d in extra:
        with contextlib.suppress(pygit2.GitError):
            repo.odb.add_disk_alternate(str(d))
    pinned = str(repo.config["ledger.genesis"]) if "ledger.genesis" in repo.config else None
    messages: list[str] = []
    verified: list[Any] = []
    ok = True
    pin_now: str | None = None
    for line in updates:
        fields = line.split()
        if len(fields) != 3:
            continue
        old, new, ref = fields
        if ref != MAIN_REF:
            ok = False
            messages.append(
                f"refusing {ref}: only {MAIN_REF} may be updated on a ledger "
                "remote [rule: main-only]"
            )
            continue
        if new == ZERO_OID:
            ok = False
            messages.append(
                f"refusing to delete {ref}: a ledger is never deleted [rule: no-delete]"
            )
            continue
        try:
            commit = repo[new]
        except (KeyError, ValueError):
            ok = False
            messages.append(f"refusing {ref} -> {new}: the commit is not in the push")
            continue
        if not isinstance(commit, pygit2.Commit):
            ok = False
            messages.append(f"refusing {ref} -> {new}: not a commit")
            continue
        if old != ZERO_OID and not _is_ancestor(repo, old, new):
            ok = False
            messages.append(
                f"refusing {ref}: {new} does not extend {old}; a ledger only grows "
                "[rule: fast-forward]"
            )
            continue
        root = root_commit(repo, new)
        genesis = pinned or pin_now
        if genesis is not None and root != genesis:
            ok = False
            messages.append(
                f"refusing {ref}: the chain of {new} starts at {root}, not at the "
                f"pinned genesis {genesis} of this remote [rule: genesis-mismatch]"
            )
            continue
        since = _hook_since(repo, old, genesis or root)
        problems, result = verify_head(repo, new, trust_genesis=genesis or root, since=since)
        if problems:
            ok = False
            messages.append(f"refusing {ref} -> {new}: {len(problems)} problem(s) found:")
            messages.extend(f"  {p}" for p in problems[:20])
            if len(problems) > 20:
                messages.append(f"  ... and {len(problems) - 20} more")
            continue
        if result.state is not None:
            verified.append(result.state)
        if genesis is None:
            pin_now = root
        messages.append(
            f"accepted {ref}: {_short(old) if old != ZERO_OID else 'new'} -> "
            f"{_short(new)} (seq {commit_seq(repo, new)})"
        )
    if ok and pin_now and pinned is None:
        repo.config["ledger.genesis"] = pin_now
        messages.append(f"pinned genesis {pin_now}")
    if ok and verified:
        from ledger.verify import save_state

        # Lets the next push verify only its new records (matched by the old head).
        with contextlib.suppress(LedgerError):
            save_state(repo, verified[-1])
    return HookResult(ok, messages)


def _hook_since(repo: pygit2.Repository, old: str, genesis: str) -> Any:
    """The remote's saved verified state if it is exactly the head being extended."""
    if old == ZERO_OID:
        return None
    from ledger.verify import load_state

    try:
        state = load_state(repo)
    except LedgerError:
        return None
    if state is None or state.head != old or state.genesis != genesis:
        return None
    return state


# --- clone ------------------------------------------------------------------------------------


@dataclass
class CloneResult:
    path: Path
    genesis: str
    head: str
    seq: int | None
    warnings: list[str]


def default_clone_path(url: str) -> Path:
    """Like git: the last path component of the URL without ``.git``."""
    tail = url.rstrip("/").replace(":", "/").rsplit("/", 1)[-1]
    if tail.endswith(".git"):
        tail = tail[:-4]
    return Path(tail or "ledger")


def clone(
    url: str,
    path: Path | None = None,
    *,
    trust_genesis: str | None = None,
    credentials: Credentials | None = None,
) -> CloneResult:
    """Copy a remote ledger into a new bare repository and verify it on arrival.

    On any failure (unreachable, no ledger there, genesis differs from ``trust_genesis``,
    verification findings) everything created is removed again.
    """
    transport = classify_url(url)
    url = normalize_url(url)
    target = path or default_clone_path(url)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise LedgerExists(
            f"{target} already exists and is not empty.", hint="Choose another path for the copy."
        )
    if trust_genesis is not None and not re.fullmatch(r"[0-9a-f]{40}", trust_genesis):
        raise InputError(
            f"{trust_genesis!r} is not a full commit id (40 lowercase hex digits).",
            hint="Pass the genesis commit id the ledger's owner published.",
        )
    creds = credentials or Credentials.from_env()
    _configure(creds)
    created = not target.exists()
    warnings = []
    warning = direct_write_warning("origin", url)
    if warning and transport in ("path", "file"):
        warnings.append(warning)
    try:
        repo = pygit2.init_repository(str(target), bare=True, initial_head="main")
        repo.remotes.create("origin", url, f"+{MAIN_REF}:refs/remotes/origin/main")
        cb = _Callbacks(url, creds, repo.config)
        try:
            fetched = _fetch_main(repo, "origin", cb)
        except _AuthFailed as exc:
            raise RemoteError(
                f"could not clone {url}: {exc}.",
                hint="Provide credentials (--ssh-key, LEDGER_HTTP_TOKEN).",
            ) from None
        except pygit2.GitError as exc:
            status_, message = _classify_git_error(exc, cb)
            raise RemoteError(
                f"could not clone {url}: {status_.value}: {message}.", hint=_hint_for(status_)
            ) from None
        if fetched is None:
            raise RemoteError(
                f"{url} holds no ledger: it has no {MAIN_REF}.", hint="Check the URL."
            )
        root = root_commit(repo, fetched)
        if trust_genesis is not None and root != trust_genesis:
            raise VerificationFailed(
                f"the ledger at {url} starts at genesis {root}, not at the trusted genesis "
                f"{trust_genesis}: it is another ledger or a rewritten one. Nothing was kept.",
                hint="Check the genesis id with the ledger's owner.",
            )
        problems, result = verify_head(repo, fetched, trust_genesis=trust_genesis or root)
        if problems:
            raise VerificationFailed(
                f"the ledger at {url} does not verify ({len(problems)} finding(s)): "
                + "; ".join(problems[:10])
                + ". Nothing was kept.",
                findings=list(problems),
                hint="Do not trust this copy; compare with the ledger's other remotes.",
            )
        repo.references.create(MAIN_REF, fetched, force=False)
        cfg = repo.config
        cfg["receive.denyNonFastForwards"] = True
        cfg["receive.denyDeletes"] = True
        cfg["receive.fsckObjects"] = True
        cfg["core.logAllRefUpdates"] = "always"
        from ledger.store import Ledger
        from ledger.verify import save_state

        Ledger.adopt(target)
        if result.state is not None:
            save_state(repo, result.state)
        seq = commit_seq(repo, fetched)
        with _state_lock(repo) as st:
            st["origin"] = {
                "url": url,
                "head": fetched,
                "seq": seq,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "status": PushStatus.UP_TO_DATE.value,
            }
    except BaseException:
        if created:
            shutil.rmtree(target, ignore_errors=True)
        else:
            for child in target.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise
    if trust_genesis is None:
        warnings.append(
            f"genesis {root} was trusted on first use: compare it with the genesis id the "
            "ledger's owner published, and pass --trust-genesis next time."
        )
    return CloneResult(target, root, fetched, seq, warnings)


def _hint_for(status_: PushStatus) -> str:
    if status_ is PushStatus.UNREACHABLE:
        return "Check the URL, that the server is running, and the network."
    if status_ is PushStatus.AUTH_FAILED:
        return (
            "Provide credentials: --ssh-key / LEDGER_SSH_KEY or ssh-agent for ssh, "
            "LEDGER_HTTP_TOKEN (or LEDGER_HTTP_USER + LEDGER_HTTP_PASSWORD) for https."
        )
    if status_ is PushStatus.HOST_KEY:
        return (
            "Add the host's key to ~/.ssh/known_hosts after checking its fingerprint "
            "(ssh-keyscan), or pass --insecure-host-key to skip the check."
        )
    return "See the message above."


__all__ = [
    "BackgroundPusher",
    "CloneResult",
    "Credentials",
    "HookResult",
    "LedgerStatus",
    "PushOutcome",
    "PushStatus",
    "PushSummary",
    "RemoteCondition",
    "RemoteInfo",
    "RemoteState",
    "RemoteStatus",
    "add_remote",
    "check_remotes",
    "classify_url",
    "clone",
    "direct_write_warning",
    "init_remote",
    "list_remotes",
    "pre_receive",
    "push",
    "read_remote_state",
    "remove_remote",
    "status",
]
