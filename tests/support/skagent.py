"""A small ssh-agent for tests, holding keys stock ``ssh-agent`` cannot sign with without a
token: software FIDO keys (:class:`support.sktoken.SkToken`), and any other signer with
``public_key`` and ``sign(data)`` (a :class:`ledger.keys.SigningKey`).

It speaks the four messages of the agent protocol a signer needs (draft-miller-ssh-agent:
``REQUEST_IDENTITIES`` 11 → ``IDENTITIES_ANSWER`` 12, ``SIGN_REQUEST`` 13 →
``SIGN_RESPONSE`` 14, else ``FAILURE`` 5) on a Unix socket in the test's directory, one
thread per connection, so ``SSH_AUTH_SOCK`` pointed at :attr:`TestAgent.path` lets stock
``ssh-add -l``, ``ssh-keygen -Y sign`` and ``git commit -S`` (and the ledger's agent client)
sign through it. Behaviours a token has are switches: :attr:`TestAgent.refuse` answers
FAILURE to signature requests (a touch declined, a confirmation refused), :attr:`TestAgent.hang`
never answers them (a token nobody touches) until :meth:`TestAgent.stop`.

Start it with ``with TestAgent(dir, [token]) as agent:``; it stops its own thread and
removes its socket.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from pathlib import Path
from types import TracebackType
from typing import Protocol

from ledger.keys import PublicKey

FAILURE = 5
REQUEST_IDENTITIES = 11
IDENTITIES_ANSWER = 12
SIGN_REQUEST = 13
SIGN_RESPONSE = 14


class Signer(Protocol):
    public_key: PublicKey

    def sign(self, data: bytes) -> bytes: ...


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _read_exact(conn: socket.socket, size: int) -> bytes | None:
    buf = b""
    while len(buf) < size:
        chunk = conn.recv(size - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


class TestAgent:
    """An agent protocol server at ``directory/agent.sock`` holding ``signers``."""

    __test__ = False

    def __init__(self, directory: Path, signers: list[Signer], comments: list[str] | None = None):
        self.path = directory / "agent.sock"
        self.signers = list(signers)
        self.comments = comments or [""] * len(self.signers)
        self.refuse = False
        self.hang = False
        self.requests: list[tuple[str, int]] = []  # (fingerprint, flags) of each sign request
        self._stopped = threading.Event()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(self.path))
        self._server.listen(8)
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._accepting = threading.Thread(target=self._accept, name="test-agent", daemon=True)

    @property
    def env(self) -> dict[str, str]:
        return {"SSH_AUTH_SOCK": str(self.path)}

    def __enter__(self) -> TestAgent:
        self._accepting.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        for conn in list(self._conns):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._accepting.is_alive():
            self._accepting.join(timeout=10)
        for t in self._threads:
            t.join(timeout=10)
        self.path.unlink(missing_ok=True)

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self._conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while not self._stopped.is_set():
                try:
                    head = _read_exact(conn, 4)
                    if head is None:
                        return
                    body = _read_exact(conn, struct.unpack(">I", head)[0])
                    if not body:
                        return
                    answer = self._answer(body)
                    if answer is None:  # hang: answer nothing until stopped
                        self._stopped.wait()
                        return
                    conn.sendall(_string(answer))
                except OSError:
                    return

    def _answer(self, body: bytes) -> bytes | None:
        if body[0] == REQUEST_IDENTITIES:
            out = struct.pack(">BI", IDENTITIES_ANSWER, len(self.signers))
            for signer, comment in zip(self.signers, self.comments, strict=True):
                out += _string(signer.public_key.blob) + _string(comment.encode())
            return out
        if body[0] != SIGN_REQUEST:
            return bytes([FAILURE])
        pos = 1
        (n,) = struct.unpack_from(">I", body, pos)
        blob = body[pos + 4 : pos + 4 + n]
        pos += 4 + n
        (n,) = struct.unpack_from(">I", body, pos)
        data = body[pos + 4 : pos + 4 + n]
        pos += 4 + n
        (flags,) = struct.unpack_from(">I", body, pos)
        signer = next((s for s in self.signers if s.public_key.blob == blob), None)
        if signer is not None:
            self.requests.append((signer.public_key.fingerprint, flags))
        if self.hang:
            return None
        if signer is None or self.refuse:
            return bytes([FAILURE])
        return bytes([SIGN_RESPONSE]) + _string(signer.sign(data))
