"""Signing through ``ssh-agent``: :class:`AgentClient` speaks the agent protocol on
``$SSH_AUTH_SOCK``; :class:`AgentKey` is one of its identities as a
:class:`~ledger.keys.keys.Signer`.

The protocol client is this module's own, not paramiko's ``Agent``. Measured on the project's
machine: ``import paramiko.agent`` takes 0.48 to 0.66 s (``python -X importtime``, with
cryptography and pygit2 already imported; it pulls in ``paramiko.transport``, ``invoke`` and
PyNaCl, a new binary dependency), more than most commands' whole start-up, and every signing
command would pay it. It is also less correct for this use: its ``Agent`` connects and lists
keys when constructed and treats a missing ``$SSH_AUTH_SOCK`` as an empty agent, its sign request
has no timeout (a hardware token nobody touches blocks the run for ever), and every
``SSH_AGENT_FAILURE`` is the same ``SSHException``, so a locked agent, a declined confirmation and
a removed key cannot be told apart. The four messages needed (draft-miller-ssh-agent §4.4, §4.5:
``REQUEST_IDENTITIES`` 11 / ``IDENTITIES_ANSWER`` 12, ``SIGN_REQUEST`` 13 / ``SIGN_RESPONSE`` 14,
``FAILURE`` 5, the flag ``SSH_AGENT_RSA_SHA2_512`` 4) are written here on ``sshwire``, with a
deadline on every answer and a distinct error for each failure (``ledger.errors.AgentError``'s
subclasses).

What the agent returns is checked before it is used: an RSA signature must be ``rsa-sha2-512``
(never SHA-1 ``ssh-rsa``), an ECDSA signature (also a FIDO ``sk-ecdsa`` one, whose flags and
counter follow it and are kept) is rewritten to low-S (FORMAT.md §6, as
:meth:`~ledger.keys.keys.SigningKey.sign` does), and the signature must verify with the
identity's public key over the data asked for. Any other signature blob, such as a FIDO
``sk-ssh-ed25519`` one, passes through unchanged into the SSHSIG the caller builds
(:func:`~ledger.keys.sshsig.sign_sshsig`).

One connection per process and socket (:func:`client`), kept open across signatures; if the
agent closed it (restarted), a request is sent once more on a new connection.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Final

from ledger import errors
from ledger.keys import blobs, keys, sshwire

SSH_AGENT_FAILURE: Final = 5
SSH2_AGENTC_REQUEST_IDENTITIES: Final = 11
SSH2_AGENT_IDENTITIES_ANSWER: Final = 12
SSH2_AGENTC_SIGN_REQUEST: Final = 13
SSH2_AGENT_SIGN_RESPONSE: Final = 14
SSH_AGENT_RSA_SHA2_512: Final = 4
MAX_MESSAGE: Final = 256 * 1024  # OpenSSH's AGENT_MAX_LEN
DEFAULT_TIMEOUT_S: Final = 60.0
TIMEOUT_ENV: Final = "LEDGER_AGENT_TIMEOUT"
SOCKET_ENV: Final = "SSH_AUTH_SOCK"
#: FIDO ECDSA key type -> the plain ECDSA type whose curve order it uses

_START_HINT: Final = (
    "Start an agent and load the key (eval $(ssh-agent); ssh-add KEYFILE), or for a runner "
    "its own agent (ssh-agent -a SOCKET) with SSH_AUTH_SOCK=SOCKET; or name a private key "
    "file with --key instead."
)


def fingerprint_of(blob: bytes) -> str:
    """``SHA256:…`` of a public key blob, as ``ssh-keygen -l`` prints it (any key type)."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii")
    return "SHA256:" + digest.rstrip("=")


@dataclass(frozen=True, slots=True)
class Identity:
    """A key the agent lists: its public key blob (not parsed: the agent may hold types this
    tool does not sign with) and comment."""

    blob: bytes
    comment: str

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.blob)


def timeout_from_env() -> float:
    """``$LEDGER_AGENT_TIMEOUT`` (seconds, > 0), else :data:`DEFAULT_TIMEOUT_S`."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e6:
        raise errors.InputError(
            f"{TIMEOUT_ENV}={text!r} is not a number of seconds greater than 0.",
            hint=f"Set it to how long to wait for the agent, e.g. {TIMEOUT_ENV}=60.",
        )
    return value


class AgentClient:
    """One connection to the agent listening at ``path``; every answer awaited at most
    ``timeout`` seconds."""

    def __init__(self, path: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()  # one request at a time on the shared connection

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def identities(self) -> list[Identity]:
        """The identities the agent lists (none when it is locked)."""
        kind, body = self._request(bytes([SSH2_AGENTC_REQUEST_IDENTITIES]), "list its keys")
        if kind != SSH2_AGENT_IDENTITIES_ANSWER:
            raise self._protocol(f"answered message {kind} to a request for its keys")
        try:
            reader = sshwire.Reader(body)
            found = [Identity(reader.string(), _text(reader.string())) for _ in range(reader.u32())]
            reader.end()
        except sshwire.Malformed:
            raise self._protocol("sent a malformed list of keys") from None
        return found

    def sign(self, blob: bytes, data: bytes, flags: int = 0) -> bytes | None:
        """The agent's signature blob of ``data`` with the key ``blob``; None if it answered
        ``SSH_AGENT_FAILURE`` (the caller finds out why)."""
        request = (
            bytes([SSH2_AGENTC_SIGN_REQUEST])
            + sshwire.string(blob)
            + sshwire.string(data)
            + sshwire.U32.pack(flags)
        )
        kind, body = self._request(request, f"sign with {fingerprint_of(blob)}")
        if kind == SSH_AGENT_FAILURE:
            return None
        if kind != SSH2_AGENT_SIGN_RESPONSE:
            raise self._protocol(f"answered message {kind} to a sign request")
        try:
            reader = sshwire.Reader(body)
            signature = reader.string()
            reader.end()
        except sshwire.Malformed:
            raise self._protocol("sent a malformed signature") from None
        return signature

    # -- the connection

    def _request(self, payload: bytes, what: str) -> tuple[int, bytes]:
        """Send one message and read its answer: on the open connection, or (if the agent
        closed it, e.g. it restarted) once more on a new one."""
        with self._lock:
            reused = self._sock is not None
            try:
                return self._exchange(payload, what)
            except (BrokenPipeError, ConnectionResetError, EOFError):
                self.close()
                if not reused:
                    raise self._gone(what) from None
            try:
                return self._exchange(payload, what)
            except (BrokenPipeError, ConnectionResetError, EOFError):
                self.close()
                raise self._gone(what) from None

    def _exchange(self, payload: bytes, what: str) -> tuple[int, bytes]:
        sock = self._connect()
        deadline = time.monotonic() + self.timeout
        try:
            sock.settimeout(self.timeout)
            sock.sendall(sshwire.string(payload))
            size = sshwire.U32.unpack(self._read(sock, 4, deadline))[0]
            if not 0 < size <= MAX_MESSAGE:
                self.close()
                raise self._protocol(f"sent a message of {size} bytes")
            body = self._read(sock, size, deadline)
        except TimeoutError:
            self.close()  # an answer may still come: this connection is out of step
            raise errors.AgentTimeout(
                f"the agent at {self.path} did not answer within {self.timeout:g} s when "
                f"asked to {what}: a hardware token was not touched or a confirmation was "
                "not answered; nothing was signed.",
                hint=f"Try again and touch the token or confirm in time, or raise "
                f"{TIMEOUT_ENV} (seconds).",
            ) from None
        except OSError as exc:
            if isinstance(exc, BrokenPipeError | ConnectionResetError):
                raise
            self.close()
            raise errors.AgentUnavailable(
                f"talking to the agent at {self.path} failed ({exc.strerror or exc}) while "
                f"asking it to {what}; nothing was signed.",
                hint=_START_HINT,
            ) from None
        return body[0], body[1:]

    def _read(self, sock: socket.socket, size: int, deadline: float) -> bytes:
        chunks: list[bytes] = []
        missing = size
        while missing:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
            chunk = sock.recv(min(missing, 65536))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            missing -= len(chunk)
        return b"".join(chunks)

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            if isinstance(exc, FileNotFoundError):
                detail = "there is no socket there"
            elif isinstance(exc, ConnectionRefusedError):
                detail = "nothing listens on it (the agent is gone)"
            else:
                detail = str(exc.strerror or exc)
            raise errors.AgentUnavailable(
                f"cannot reach the ssh-agent at {self.path} ({SOCKET_ENV}): {detail}; "
                "nothing was signed.",
                hint=_START_HINT,
            ) from None
        self._sock = sock
        return sock

    def _gone(self, what: str) -> errors.AgentUnavailable:
        return errors.AgentUnavailable(
            f"the ssh-agent at {self.path} closed the connection when asked to {what} (it "
            "stopped or was killed); nothing was signed.",
            hint=_START_HINT,
        )

    def _protocol(self, detail: str) -> errors.AgentError:
        self.close()
        return errors.AgentError(
            f"the program at {self.path} is not a working ssh-agent: it {detail}.",
            hint=f"Check that {SOCKET_ENV} names your agent's socket.",
        )


_CLIENTS: dict[str, AgentClient] = {}


def client(path: str | None = None, timeout: float | None = None) -> AgentClient:
    """The process's connection to the agent at ``path`` (default ``$SSH_AUTH_SOCK``).
    :class:`AgentUnavailable` if no socket is named."""
    where = path if path is not None else os.environ.get(SOCKET_ENV, "")
    if not where:
        raise errors.AgentUnavailable(
            f"a public key names the signing key, so the signature comes from ssh-agent, but "
            f"{SOCKET_ENV} is not set: there is no agent to ask.",
            hint=_START_HINT,
        )
    found = _CLIENTS.get(where)
    if found is None:
        found = _CLIENTS[where] = AgentClient(where, DEFAULT_TIMEOUT_S)
    found.timeout = timeout if timeout is not None else timeout_from_env()
    return found


class AgentKey:
    """An identity of the agent, signing through it (a :class:`~ledger.keys.keys.Signer`)."""

    __slots__ = ("_client", "_flags", "comment", "public_key")

    def __init__(self, agent: AgentClient, public_key: keys.PublicKey, comment: str = "") -> None:
        self._client = agent
        self.public_key = public_key
        self.comment = comment
        self._flags = SSH_AGENT_RSA_SHA2_512 if public_key.key_type == blobs.RSA else 0

    def __repr__(self) -> str:
        return f"AgentKey({self.public_key.key_type} {self.public_key.fingerprint})"

    @classmethod
    def find(cls, wanted: keys.PublicKey | str, agent: AgentClient | None = None) -> AgentKey:
        """The agent's identity ``wanted`` (a public key, or a ``SHA256:`` fingerprint).

        :class:`AgentUnavailable`, :class:`AgentLocked` (it lists no keys) or
        :class:`AgentIdentityMissing`; KeyProblem if the key is of a type not signed with.
        """
        agent = agent or client()
        fingerprint = wanted if isinstance(wanted, str) else wanted.fingerprint
        listed = agent.identities()
        if not listed:
            raise errors.AgentLocked(
                f"the ssh-agent at {agent.path} lists no keys, so it cannot sign with "
                f"{fingerprint}: it is locked (ssh-add -x) or holds no keys.",
                hint="Unlock it with 'ssh-add -X', or load the key with 'ssh-add KEYFILE'.",
            )
        for identity in listed:
            if identity.fingerprint == fingerprint:
                comment = identity.comment or ("" if isinstance(wanted, str) else wanted.comment)
                return cls(agent, keys.PublicKey.from_blob(identity.blob), comment)
        raise _missing(agent, fingerprint, len(listed))

    def sign(self, data: bytes) -> bytes:
        """The agent's SSH signature blob of ``data``, checked (see the module)."""
        signature = self._client.sign(self.public_key.blob, data, self._flags)
        if signature is None:
            raise self._refused()
        return checked_signature(self.public_key, signature, data)

    def _refused(self) -> errors.AgentError:
        """Why the agent answered FAILURE: it is locked now, the key is gone, or it refused."""
        agent, fingerprint = self._client, self.public_key.fingerprint
        listed = agent.identities()
        if not listed:
            return errors.AgentLocked(
                f"the ssh-agent at {agent.path} refused to sign with {fingerprint} and now "
                "lists no keys: it is locked (ssh-add -x); nothing was signed.",
                hint="Unlock it with 'ssh-add -X', then try again.",
            )
        if all(identity.fingerprint != fingerprint for identity in listed):
            return _missing(agent, fingerprint, len(listed))
        return errors.AgentRefused(
            f"the ssh-agent at {agent.path} refused to sign with {fingerprint}: the key "
            "needs a confirmation (ssh-add -c) that was declined or could not be shown, or "
            "its token failed; nothing was signed.",
            hint="Confirm the signature when asked (the agent needs SSH_ASKPASS and a "
            "display), or for unattended use load the key without -c.",
        )


def _missing(agent: AgentClient, fingerprint: str, count: int) -> errors.AgentIdentityMissing:
    return errors.AgentIdentityMissing(
        f"the ssh-agent at {agent.path} does not hold the key {fingerprint} (it holds "
        f"{count} other key{'s' if count != 1 else ''}); nothing was signed.",
        hint=f"Load it with 'ssh-add PRIVATE_KEY_FILE' (check with 'ssh-add -l' that "
        f"{fingerprint} is listed), or name another key.",
    )


def checked_signature(public_key: keys.PublicKey, signature: bytes, data: bytes) -> bytes:
    """The agent's ``signature`` of ``data`` as it will be embedded: RSA only as
    ``rsa-sha2-512``, ECDSA in low-S form, and verifying with ``public_key``."""
    try:
        reader = sshwire.Reader(signature)
        sig_type = reader.string().decode("ascii", "replace")
    except sshwire.Malformed:
        sig_type = ""
    if public_key.key_type == blobs.RSA and sig_type != "rsa-sha2-512":
        raise errors.AgentError(
            f"the ssh-agent signed with {sig_type or 'an unknown algorithm'} instead of "
            "rsa-sha2-512 (SHA-1 'ssh-rsa' signatures are never embedded); it is not used.",
            hint="Use an agent that makes SHA-2 RSA signatures (OpenSSH 7.2 or later), or an "
            "Ed25519 key.",
        )
    signature = keys.low_s(signature)
    if not public_key.verify(signature, data):
        raise errors.AgentError(
            f"the ssh-agent returned a signature that does not verify with "
            f"{public_key.fingerprint}; nothing of it is used.",
            hint=f"Check that {SOCKET_ENV} names the agent you meant; the agent may be faulty.",
        )
    return signature


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")
