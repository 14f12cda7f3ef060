"""What a named signing key means (``--key``, ``$LEDGER_SIGNING_KEY``, ``ledger.signingKey``),
as git reads ``user.signingKey``:

- ``key::ssh-ed25519 AAAA…`` (or the bare ``ssh-… AAAA…`` line), a ``SHA256:…`` fingerprint,
  or the path of a public key file (``.pub``): sign through ``ssh-agent`` with that identity
  (:class:`~ledger.keys.agent.AgentKey`);
- the path of a private key file: sign with it, as before; if it does not exist but
  ``PATH.pub`` does (the private key lives only in the agent, as ``ssh-keygen -Y sign``
  allows), through the agent with the key of ``PATH.pub``.

:func:`agent_key_for_file` lets an encrypted private key file be used through the agent that
already holds it, so that no passphrase is asked for.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ledger import errors
from ledger.keys import agent, files, keyformat, keys

LITERAL_PREFIX: Final = "key::"
_FINGERPRINT_RE: Final = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
_KEY_LINE_PREFIXES: Final = ("ssh-", "ecdsa-", "sk-")


@dataclass(frozen=True, slots=True)
class KeySpec:
    """A named signing key: a private key ``path``, or an agent identity (``public`` key
    or ``fingerprint``). ``text`` is how it is written in ``ledger.signingKey``."""

    text: str
    path: Path | None = None
    public: keys.PublicKey | None = None
    fingerprint: str | None = None

    @property
    def via_agent(self) -> bool:
        return self.path is None

    def agent_key(self) -> agent.AgentKey:
        """The agent's identity this names (only when :attr:`via_agent`)."""
        wanted: keys.PublicKey | str | None = self.public or self.fingerprint
        if wanted is None:
            raise errors.KeyProblem(f"{self.text} names a private key file, not an agent identity.")
        return agent.AgentKey.find(wanted)


def parse_key_spec(text: str) -> KeySpec:
    """What ``text`` names (see the module). KeyProblem for a malformed literal or
    fingerprint, or a public key file that cannot be read or parsed."""
    if text.startswith(LITERAL_PREFIX):
        public = _literal(text[len(LITERAL_PREFIX) :], text)
        return KeySpec(LITERAL_PREFIX + public.openssh(), public=public)
    bare_line = text.startswith(_KEY_LINE_PREFIXES) and " " in text.strip()
    if bare_line and not Path(text).expanduser().exists():
        public = _literal(text, text)
        return KeySpec(LITERAL_PREFIX + public.openssh(), public=public)
    if text.startswith("SHA256:"):
        if not _FINGERPRINT_RE.fullmatch(text):
            raise errors.KeyProblem(
                f"{errors.quoted(text)} is not a SHA-256 key fingerprint (SHA256: and 43 "
                "base64 characters).",
                hint="Copy it from 'ssh-add -l' or 'ledger keys list'.",
            )
        return KeySpec(text, fingerprint=text)
    path = Path(text).expanduser()
    if path.is_file():
        in_file = _public_file(path)
        if in_file is None:
            return KeySpec(str(path.resolve()), path=path)
        return KeySpec(str(path.resolve()), public=in_file)
    pub = path.with_name(path.name + ".pub")
    if not path.exists() and not path.is_symlink() and path.name and pub.is_file():
        beside = _public_file(pub)
        if beside is not None:
            return KeySpec(str(pub.resolve()), public=beside)
    return KeySpec(str(path), path=path)  # loading it says what is wrong


def agent_key_for_file(path: Path) -> agent.AgentKey | None:
    """The agent's identity for the encrypted ``openssh-key-v1`` file ``path`` (whose public
    key is in the clear), if ``$SSH_AUTH_SOCK`` names an agent that holds it; else None.
    Never raises: without it, the caller asks for the passphrase as before."""
    if not os.environ.get(agent.SOCKET_ENV):
        return None
    try:
        header = keyformat.read_openssh_header(files.read_key_file(path), str(path))
        public = keys.PublicKey.from_blob(header.public_blob)
        return agent.AgentKey.find(public)
    except errors.KeyProblem:  # an AgentError too: then the passphrase is asked for
        return None


def _literal(line: str, given: str) -> keys.PublicKey:
    try:
        return keys.PublicKey.parse(line)
    except errors.KeyProblem as exc:
        raise errors.KeyProblem(
            f"the signing key {given[:60]!r} is not a public key: {exc.message}",
            hint="Write it as git does: 'key::ssh-ed25519 AAAA...' (the .pub file's line).",
        ) from None


def _public_file(path: Path) -> keys.PublicKey | None:
    """The key of a public key file; None if ``path`` holds something else (a private key)."""
    data = files.read_key_file(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    first = text.strip().split("\n", 1)[0].strip()
    if not first.startswith(_KEY_LINE_PREFIXES):
        return None
    try:
        return keys.PublicKey.parse(first)
    except errors.KeyProblem as exc:
        raise errors.KeyProblem(
            f"{path} looks like a public key file but {exc.message}", hint=exc.hint
        ) from None
