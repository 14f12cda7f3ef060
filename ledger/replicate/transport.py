"""Talking to a remote through libgit2: credentials, SSH host keys (known_hosts) and git's
``store`` credential helper file, the callbacks of one operation, the process-wide network
settings (timeouts, home directory), and listing or fetching a remote's main."""

from __future__ import annotations

import base64
import contextlib
import getpass
import hashlib
import hmac
import os
import re
import shlex
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pygit2

from ledger import errors, store
from ledger.replicate import chain, remotes

MAX_AUTH_ATTEMPTS = 4
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_IO_TIMEOUT_S = 120.0

_PROGRESS_RE = re.compile(
    r"^(Counting|Compressing|Writing|Resolving|Total|Unpacking|Enumerating|Delta|Receiving)\b"
)


@dataclass(frozen=True)
class Credentials:
    """How to authenticate to remotes, and how long to wait for them.

    SSH: the key file ``ssh_key`` (``--ssh-key`` / ``LEDGER_SSH_KEY``), then ssh-agent
    (``SSH_AUTH_SOCK``), then ``~/.ssh/id_ed25519``, ``id_ecdsa``, ``id_rsa``. HTTP(S):
    ``LEDGER_HTTP_TOKEN`` (with ``LEDGER_HTTP_USER``, default ``git``), or
    ``LEDGER_HTTP_USER`` + ``LEDGER_HTTP_PASSWORD``, then credentials in the URL, then the
    file of git's ``store`` credential helper (``credential.helper = store``). SSH host keys
    are checked against ``$HOME/.ssh/known_hosts`` unless ``insecure_host_key``.

    Timeouts (seconds, process-wide in libgit2, applied by :func:`configure`): connecting
    (``LEDGER_REMOTE_CONNECT_TIMEOUT``), any other network wait (``LEDGER_REMOTE_TIMEOUT``).
    Only :meth:`from_env` reads the environment; the library takes what it is given.
    """

    ssh_key: Path | None = None
    ssh_passphrase: str | None = None
    http_user: str | None = None
    http_password: str | None = None
    insecure_host_key: bool = False
    use_agent: bool = True
    home: Path | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S
    io_timeout: float = DEFAULT_IO_TIMEOUT_S

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
            raise errors.InputError(
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
            connect_timeout=_seconds(
                env, "LEDGER_REMOTE_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT_S
            ),
            io_timeout=_seconds(env, "LEDGER_REMOTE_TIMEOUT", DEFAULT_IO_TIMEOUT_S),
        )


def _seconds(env: Mapping[str, str], var: str, default: float) -> float:
    value = env.get(var)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise errors.InputError(
            f"{var}={value!r} is not a number of seconds.", hint=f"Set {var} to e.g. 30."
        ) from None


class AuthFailed(Exception):
    """Raised inside the credentials callback when every method has been tried."""


def _known_hosts_path(home: Path | None) -> Path:
    return (home or Path(os.environ.get("HOME") or Path.home())) / ".ssh" / "known_hosts"


def _host_pattern_matches(pattern: str, host: str) -> bool:
    if pattern.startswith("|1|"):
        try:
            _, _, salt_b64, hash_b64 = pattern.split("|", 3)
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
    match = remotes.SCP_RE.match(url)
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
            entry = _credential_line(line)
            if (
                entry is not None
                and entry.scheme == want.scheme
                and (entry.hostname or "") == (want.hostname or "")
                and entry.port == _port(want)
                and entry.username is not None
            ):
                return (
                    urllib.parse.unquote(entry.username),
                    urllib.parse.unquote(entry.password or ""),
                )
    return None


def _credential_line(line: str) -> urllib.parse.SplitResult | None:
    """One line of a credential store file as a URL, or None for a malformed line (an
    unbalanced IPv6 bracket, a port that is no number), which is skipped as git skips it."""
    try:
        entry = urllib.parse.urlsplit(line.strip())
        entry.port  # noqa: B018 - raises ValueError for a port that is no number
    except ValueError:
        return None
    return entry


def _port(parts: urllib.parse.SplitResult) -> int | None:
    """The port of a URL, None when it names none or a malformed one."""
    try:
        return parts.port
    except ValueError:
        return None


class Callbacks(pygit2.RemoteCallbacks):
    """Credentials, host key checks, and the per-ref push reports for one operation."""

    def __init__(self, url: str, creds: Credentials, config: pygit2.Config | None = None) -> None:
        super().__init__()
        self.url = url
        self.creds = creds
        self.config = config
        self.begin()

    def begin(self) -> None:
        """Start a new operation (a new connection): every credential may be offered again.

        libgit2 asks for credentials once per connection, and a candidate offered is
        consumed; an object reused for a second connection without this would have nothing
        left to offer and report an authentication failure. Every
        network function of this module calls it first."""
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
            raise AuthFailed(self._auth_message())
        user = username_from_url or getpass.getuser()
        if allowed_types & CT.USERNAME:
            return pygit2.Username(user)
        if allowed_types & CT.SSH_KEY:
            if self._ssh_queue is None:
                self._ssh_queue = self._ssh_candidates(user)[:MAX_AUTH_ATTEMPTS]
            if not self._ssh_queue:
                raise AuthFailed(self._auth_message())
            label, cred = self._ssh_queue.pop(0)
            self.tried.append(label)
            return cred
        if allowed_types & CT.USERPASS_PLAINTEXT:
            if self._http_queue is None:
                self._http_queue = self._http_candidates(self.url)[:MAX_AUTH_ATTEMPTS]
            if not self._http_queue:
                raise AuthFailed(self._auth_message())
            label, cred = self._http_queue.pop(0)
            self.tried.append(label)
            return cred
        raise AuthFailed(self._auth_message())

    def _auth_message(self) -> str:
        tried = ", ".join(self.tried) if self.tried else "no credentials were available"
        return f"authentication failed (tried: {tried})"

    # -- host keys ---------------------------------------------------------------------------

    def certificate_check(self, certificate: None, valid: bool, host: bytes | str) -> bool:
        if valid or self.creds.insecure_host_key:
            return True
        hostname = host.decode(errors="replace") if isinstance(host, bytes) else str(host)
        url_host, port, _user = _url_host_port(self.url)
        transport = remotes.classify_url(self.url)
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


_timeouts_set: tuple[float, float] | None = None
_settings_lock = threading.Lock()


def configure(creds: Credentials) -> None:
    """Process-wide libgit2 settings: the network timeouts of ``creds``, and the home
    directory whose ``.ssh/known_hosts`` libgit2 checks host keys against (libgit2 reads
    $HOME only once)."""
    global _timeouts_set  # noqa: PLW0603
    with _settings_lock:
        timeouts = (creds.connect_timeout, creds.io_timeout)
        if _timeouts_set != timeouts:
            with contextlib.suppress(AttributeError, pygit2.GitError, ValueError):
                pygit2.settings.server_connect_timeout = int(creds.connect_timeout * 1000)
                pygit2.settings.server_timeout = int(creds.io_timeout * 1000)
            _timeouts_set = timeouts
        home = creds.home
        if home is None and os.environ.get("HOME"):
            home = Path(os.environ["HOME"])
        if home is not None:
            with contextlib.suppress(AttributeError, pygit2.GitError, ValueError):
                if pygit2.settings.homedir != str(home):
                    pygit2.settings.homedir = str(home)


# --- the remote's main ---------------------------------------------------------------------


def local_path(url: str) -> Path | None:
    """The directory of a path or ``file://`` remote, else None."""
    transport = remotes.classify_url(url)
    if transport == "path":
        return Path(url)
    if transport == "file":
        return Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    return None


def _check_local(url: str) -> None:
    """libgit2 says only "unsupported URL protocol" for a missing local path: say more."""
    path = local_path(url)
    if path is not None and not path.exists():
        raise pygit2.GitError(f"no repository at {path}: the directory does not exist")


def anonymous(repo: pygit2.Repository, name: str) -> pygit2.Remote:
    """An in-memory remote for NAME's URL.

    Network operations never use the configured remote itself: libgit2's fetch applies a
    configured push refspec ``refs/heads/main:refs/heads/main`` in reverse and would move
    our own main to the remote's head. An anonymous remote has no configured refspecs.
    """
    return anonymous_url(repo, remotes.get_remote(repo, name).url or "")


def anonymous_url(repo: pygit2.Repository, url: str) -> pygit2.Remote:
    """An in-memory remote for ``url`` (a missing local path said as such). Every fetch and
    push goes through here, so none follows a URL rewrite of the repository's own config
    (:func:`remotes.refuse_url_rewrites`)."""
    remotes.refuse_url_rewrites(repo)
    _check_local(url)
    return repo.remotes.create_anonymous(url)


def list_main(repo: pygit2.Repository, name: str, cb: Callbacks) -> str | None:
    remote = anonymous(repo, name)
    wanted = remotes.remote_ref(repo, name)
    cb.begin()
    heads = remote.list_heads(callbacks=cb)
    for head in heads:
        if head.name == wanted:
            return str(head.oid)
    return None


def fetch_main(repo: pygit2.Repository, name: str, cb: Callbacks) -> str | None:
    """Fetch the remote's main (or our ledger's ref in a shared remote) into
    ``refs/remotes/NAME/main`` (never into our main)."""
    remote = anonymous(repo, name)
    tracking = f"refs/remotes/{name}/main"
    source = remotes.remote_ref(repo, name)
    before = chain.main_head(repo)
    cb.begin()
    remote.fetch([f"+{source}:{tracking}"], callbacks=cb, prune=pygit2.enums.FetchPrune.NO_PRUNE)
    after = chain.main_head(repo)
    if after != before:
        # Never expected (see anonymous); if libgit2 ever moves our main, say so loudly.
        raise errors.StorageError(
            f"fetching {name} moved refs/heads/main from {before} to {after}; this must not "
            "happen.",
            hint="Restore it with the reflog (git reflog show refs/heads/main) and report a bug.",
        )
    ref = repo.references.get(tracking)
    return str(ref.target) if ref is not None else None


def push_main(repo: pygit2.Repository, name: str, refspec: str, cb: Callbacks) -> None:
    """Push ``refspec`` to NAME's URL; refused refs arrive in ``cb.rejections``."""
    remote = anonymous(repo, name)
    cb.begin()
    remote.push([refspec], callbacks=cb)


def open_for_remote(
    ledger_path: Path, name: str, creds: Credentials
) -> tuple[pygit2.Repository, str, str | None, int | None]:
    """The ledger's repository, the remote's URL, and our head and its seq."""
    configure(creds)
    repo = store.open_repository(ledger_path)
    url = remotes.get_remote(repo, name).url or ""
    local = chain.main_head(repo)
    return repo, url, local, chain.commit_seq(repo, local) if local else None
