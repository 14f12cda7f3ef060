"""Real git servers on 127.0.0.1 for the tests: git daemon, git http-backend, sshd.

Each server runs on a free port, is started by a session-scoped pytest fixture (see the
``*_server`` fixtures at the end, registered by ``tests/conftest.py`` or imported by a test
module) and stopped by its own process id or thread. Repositories are made per test under the
server's base directory with :meth:`GitServer.make_repo`, so tests never share state.

- ``git://``: ``/usr/lib/git-core/git-daemon --enable=receive-pack`` (the binary itself, so
  that the pid we hold is the daemon's).
- ``http://``: ``git http-backend`` run as a CGI by a small threaded HTTP/1.1 server written
  here on :class:`http.server.BaseHTTPRequestHandler`: it decodes chunked request bodies
  (libgit2 always sends a push chunked), honours the CGI ``Status:`` header, sends
  ``Content-Length`` and sets ``TCP_NODELAY``. Repositories under ``private/`` need HTTP basic
  authentication with :data:`HTTP_USER` / :data:`HTTP_PASSWORD`.
- ``ssh://``: ``/usr/sbin/sshd`` with a throwaway host key, an ``authorized_keys`` holding a
  throwaway client key, and a ``known_hosts`` line for tests to write into their HOME.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from support.waiting import wait_for

GIT_DAEMON = "/usr/lib/git-core/git-daemon"
GIT_HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"
SSHD = "/usr/sbin/sshd"
HTTP_USER = "auditor"
HTTP_PASSWORD = "correct-horse"  # throwaway test credential for the private/ area

_DEADLINE = 15.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_for_port(
    port: int,
    proc: subprocess.Popen[bytes] | None = None,
    *,
    log: Path | None = None,
    deadline: float = _DEADLINE,
) -> None:
    """Wait until something accepts connections on ``port``, woken by the server's log (it
    writes a line once it listens) or by its exit. Without ``proc`` (a server in this
    process, listening from its construction) the port must accept at once."""
    if proc is None or log is None:
        if not port_accepts(port):
            raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")
        return
    try:
        wait_for(
            lambda: proc.poll() is not None or port_accepts(port),
            f"a server on 127.0.0.1:{port}",
            files=[log],
            pids=[proc.pid],
            timeout=deadline,
        )
    except AssertionError as exc:
        raise RuntimeError(str(exc)) from None
    if proc.poll() is not None:
        text = log.read_text(errors="replace") if log.exists() else ""
        raise RuntimeError(f"server exited with {proc.returncode} before listening:\n{text}")


def port_closed(port: int) -> None:
    """The port of a stopped server (its process has exited) no longer accepts."""
    if port_accepts(port):
        raise RuntimeError(f"127.0.0.1:{port} still accepts connections after its server stopped")


def init_bare(path: Path, *, protected: bool = False) -> Path:
    """A bare repository made by stock git; ``protected`` sets the receive.deny* rules."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(path)], check=True)
    if protected:
        for key in ("receive.denyNonFastForwards", "receive.denyDeletes", "receive.fsckObjects"):
            subprocess.run(["git", "-C", str(path), "config", key, "true"], check=True)
    return path


class GitServer:
    """Common part: a base directory of bare repositories and a URL scheme."""

    scheme = ""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.base.mkdir(parents=True, exist_ok=True)
        self.port = 0

    def url(self, name: str) -> str:
        raise NotImplementedError

    def path(self, name: str) -> Path:
        return self.base / name

    def make_repo(self, name: str | None = None, *, protected: bool = False) -> tuple[str, Path]:
        """A fresh bare repository on this server: (URL, path on disk)."""
        name = name or f"r-{uuid.uuid4().hex[:10]}.git"
        path = init_bare(self.base / name, protected=protected)
        return self.url(name), path

    def adopt(self, path: Path, name: str | None = None) -> str:
        """Move an existing bare repository (e.g. one made by ``ledger remote init``) here."""
        name = name or f"r-{uuid.uuid4().hex[:10]}.git"
        target = self.base / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), str(target))
        return self.url(name)


# ---------------------------------------------------------------------------------------------
# git daemon


class GitDaemon(GitServer):
    scheme = "git"

    def __init__(self, base: Path, env: Mapping[str, str] | None = None) -> None:
        """``env``: the daemon's environment (and so its hooks'), instead of ours."""
        super().__init__(base)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = base.parent / "git-daemon.log"
        self.env = dict(env) if env is not None else None

    def start(self, port: int | None = None) -> None:
        """Start on a free port, or on ``port`` (e.g. the one it had before a stop)."""
        end = time.monotonic() + _DEADLINE
        while True:
            self.port = port or free_port()
            logf = self.log.open("ab")
            self.proc = subprocess.Popen(
                [
                    GIT_DAEMON,
                    "--enable=receive-pack",
                    "--export-all",
                    "--reuseaddr",
                    "--informative-errors",
                    "--verbose",  # logs "Ready to rumble" once it listens
                    f"--base-path={self.base}",
                    f"--port={self.port}",
                    "--listen=127.0.0.1",
                    str(self.base),
                ],
                stdout=logf,
                stderr=logf,
                stdin=subprocess.DEVNULL,
                env=self.env,
            )
            logf.close()
            try:
                wait_for_port(self.port, self.proc, log=self.log)
                return
            except RuntimeError:
                self.stop()  # port taken in between: try again
                if time.monotonic() > end:
                    raise

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}"


# ---------------------------------------------------------------------------------------------
# git http-backend behind a small HTTP/1.1 server


class _GitHttpHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # TCP_NODELAY on every accepted connection
    server: _GitHttpServer

    def log_message(self, format: str, *args: object) -> None:
        with self.server.log_lock, self.server.log.open("a") as f:
            f.write(f"{self.address_string()} - {format % args}\n")

    def do_GET(self) -> None:
        self._cgi()

    def do_POST(self) -> None:
        self._cgi()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    # Trailers, up to the empty line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _authorized(self, path: str) -> str | None:
        """The user name for ``private/`` paths, '' for public ones, None if refused."""
        if not path.startswith("/private/"):
            return ""
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                return None
            if (user, password) == (HTTP_USER, HTTP_PASSWORD):
                return user
        return None

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _cgi(self) -> None:
        body = self._read_body()
        path, _, query = self.path.partition("?")
        user = self._authorized(path)
        if user is None:
            self._send(
                401,
                [("WWW-Authenticate", 'Basic realm="git"'), ("Content-Type", "text/plain")],
                b"authentication required\n",
            )
            return
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_PROJECT_ROOT": str(self.server.base),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
        }
        if user:
            env["REMOTE_USER"] = user
        else:
            # Anonymous pushes to the public area, as a test server allows.
            env["REMOTE_USER"] = "anonymous"
        for header, var in (
            ("Content-Encoding", "HTTP_CONTENT_ENCODING"),
            ("Git-Protocol", "HTTP_GIT_PROTOCOL"),
        ):
            if self.headers.get(header):
                env[var] = self.headers[header]
        proc = subprocess.run(
            [GIT_HTTP_BACKEND], input=body, env=env, capture_output=True, check=False
        )
        if proc.stderr:
            with self.server.log_lock, self.server.log.open("ab") as f:
                f.write(proc.stderr)
        head, sep, out = proc.stdout.partition(b"\r\n\r\n")
        if not sep:
            head, sep, out = proc.stdout.partition(b"\n\n")
        status = 200
        headers: list[tuple[str, str]] = []
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.strip().split()[0])
            elif key:
                headers.append((key.strip(), value.strip()))
        if not sep:
            status, headers, out = 502, [("Content-Type", "text/plain")], b"bad CGI output\n"
        self._send(status, headers, out)


class _GitHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, base: Path, log: Path, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _GitHttpHandler)
        self.base = base
        self.log = log
        self.log_lock = threading.Lock()


class GitHttpServer(GitServer):
    scheme = "http"

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.httpd: _GitHttpServer | None = None
        self.thread: threading.Thread | None = None
        self.log = base.parent / "http.log"

    def start(self) -> None:
        """Start; after a :meth:`stop`, on the same port again."""
        httpd = _GitHttpServer(self.base, self.log, self.port)
        self.httpd = httpd
        self.port = int(httpd.server_address[1])
        self.thread = threading.Thread(
            target=httpd.serve_forever, name="git-http", kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None
        if self.thread is not None:
            self.thread.join(timeout=10)
            self.thread = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def private_url(self, name: str, *, with_credentials: bool = False) -> str:
        auth = f"{HTTP_USER}:{HTTP_PASSWORD}@" if with_credentials else ""
        return f"http://{auth}127.0.0.1:{self.port}/private/{name}"

    def make_private_repo(self, name: str | None = None) -> tuple[str, Path]:
        name = name or f"r-{uuid.uuid4().hex[:10]}.git"
        path = init_bare(self.base / "private" / name)
        return self.private_url(name), path


# ---------------------------------------------------------------------------------------------
# sshd


def ssh_keygen(path: Path, comment: str = "test") -> Path:
    """A throwaway Ed25519 key pair made by stock ssh-keygen; returns the private key path."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True
    )
    return path


class SshServer(GitServer):
    scheme = "ssh"

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.dir = base.parent / "sshd"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "sshd.log"
        self.user = getpass.getuser()
        self.host_key = ssh_keygen(self.dir / "host_ed25519", "test-host")
        self.client_key = ssh_keygen(self.dir / "client_ed25519", "test-client")
        self.other_key = ssh_keygen(self.dir / "stranger_ed25519", "not-authorized")
        (self.dir / "authorized_keys").write_text(Path(f"{self.client_key}.pub").read_text())
        self.config = self.dir / "sshd_config"

    def _write_config(self) -> None:
        self.config.write_text(
            f"Port {self.port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {self.host_key}\n"
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\n"
            "StrictModes no\n"
            "UsePAM no\n"
            "UseDNS no\n"
            "PrintMotd no\n"
            f"PidFile {self.dir / 'sshd.pid'}\n"
            "LogLevel VERBOSE\n"
            f"AllowUsers {self.user}\n"
        )

    def start(self) -> None:
        if not os.path.isdir("/run/sshd") and os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        for _attempt in range(5):
            if not self.port:
                self.port = free_port()
            self._write_config()
            logf = self.log.open("ab")
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config)],
                stdout=logf,
                stderr=logf,
                stdin=subprocess.DEVNULL,
            )
            logf.close()
            try:
                wait_for_port(self.port, self.proc, log=self.log)
                return
            except RuntimeError:
                self.stop()
                self.port = 0
        raise RuntimeError(f"sshd did not start; log:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def url(self, name: str) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{self.base / name}"

    def scp_url(self, name: str) -> str:
        return f"{self.user}@127.0.0.1:{self.base / name}"

    def known_hosts_line(self) -> str:
        key = Path(f"{self.host_key}.pub").read_text().split()
        return f"[127.0.0.1]:{self.port} {key[0]} {key[1]}\n"

    def write_known_hosts(self, home: Path | str | None = None) -> Path:
        """Write the server's host key into ``HOME/.ssh/known_hosts`` (default: $HOME)."""
        ssh_dir = Path(home or os.environ["HOME"]) / ".ssh"
        ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        known = ssh_dir / "known_hosts"
        existing = known.read_text() if known.exists() else ""
        line = self.known_hosts_line()
        if line not in existing:
            known.write_text(existing + line)
        return known

    def git_env(self, key: Path | None = None) -> dict[str, str]:
        """Environment for stock git to reach this server with the client key."""
        known = self.dir / "known_hosts.stock"
        known.write_text(self.known_hosts_line())
        return {
            "GIT_SSH_COMMAND": (
                f"ssh -i {key or self.client_key} -o IdentitiesOnly=yes -o BatchMode=yes "
                f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes "
                "-o GlobalKnownHostsFile=/dev/null -F /dev/null"
            )
        }


# ---------------------------------------------------------------------------------------------
# fixtures


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(binary: str) -> None:
    """Skip when a server binary is missing on a developer machine; fail in CI."""
    if os.access(binary, os.X_OK):
        return
    message = f"{binary} is not installed (run .ci/install-system-deps)"
    if _in_ci():
        pytest.fail(message)
    pytest.skip(message)


@contextlib.contextmanager
def _server_dir(prefix: str) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def git_daemon() -> Iterator[GitDaemon]:
    require(GIT_DAEMON)
    with _server_dir("ledger-gitd-") as d:
        server = GitDaemon(d / "repos")
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def http_server() -> Iterator[GitHttpServer]:
    require(GIT_HTTP_BACKEND)
    with _server_dir("ledger-http-") as d:
        server = GitHttpServer(d / "repos")
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def ssh_server() -> Iterator[SshServer]:
    require(SSHD)
    with _server_dir("ledger-sshd-") as d:
        server = SshServer(d / "repos")
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture()
def stoppable_git_daemon(tmp_path: Path) -> Iterator[GitDaemon]:
    """A git daemon of this test alone, which the test may stop and start again."""
    require(GIT_DAEMON)
    server = GitDaemon(tmp_path / "gitd" / "repos")
    server.start()
    try:
        yield server
    finally:
        server.stop()
