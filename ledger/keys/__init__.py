"""OpenSSH keys and SSH signatures (``SSHSIG``), built on the cryptography package.

Modules, lowest first:

- ``sshwire``: the SSH wire format (RFC 4251 types) and the armor width.
- ``blobs``: the supported key types (FIDO ``sk-*`` included) and their SSH public-key blobs.
- ``keyformat``: the content of private key files (``openssh-key-v1``, PEM).
- ``files``: key files on disk: bounded reads, new 0600 files, mode warnings.
- ``keys``: :class:`PublicKey`, :class:`SigningKey` and :class:`SigningIdentity` (what signs).
- ``agent``: signing through ``ssh-agent`` (the protocol client, :class:`AgentKey`).
- ``keyspec``: what a named signing key means (private key file, or an agent identity).
- ``sshsig``: SSHSIG sign/parse/verify, armored byte for byte as ``ssh-keygen -Y sign``.
- ``gitsign``: git's SSH commit signatures (sign, verify; the split is
  ``ledger.format.gitobj.split_signed_commit``).
- ``allowed_signers``: allowed-signers lines for ``git verify-commit``.

Nothing here prints, prompts or exits. Problems with keys or key files raise
:class:`~ledger.errors.KeyProblem`; malformed or non-verifying signatures raise
:class:`~ledger.errors.SignatureError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ledger import lazy

if TYPE_CHECKING:
    from ledger.format.gitobj import split_signed_commit  # its home is the git object codec
    from ledger.keys.allowed_signers import allowed_signers_line
    from ledger.keys.files import key_file_mode_problem, key_is_encrypted
    from ledger.keys.gitsign import sign_commit, verify_signed_commit
    from ledger.keys.keys import PublicKey, SigningIdentity, SigningKey
    from ledger.keys.sshsig import (
        SshSig,
        SshSigFields,
        decode_sshsig,
        parse_sshsig,
        sign_sshsig,
        verify_sshsig,
    )

__getattr__, __dir__ = lazy.attach(
    __name__,
    {
        "ledger.format.gitobj": ("split_signed_commit",),
        "ledger.keys.allowed_signers": ("allowed_signers_line",),
        "ledger.keys.files": ("key_file_mode_problem", "key_is_encrypted"),
        "ledger.keys.gitsign": ("sign_commit", "verify_signed_commit"),
        "ledger.keys.keys": ("PublicKey", "SigningIdentity", "SigningKey"),
        "ledger.keys.sshsig": (
            "SshSig",
            "SshSigFields",
            "decode_sshsig",
            "parse_sshsig",
            "sign_sshsig",
            "verify_sshsig",
        ),
    },
)

__all__ = [
    "PublicKey",
    "SigningIdentity",
    "SigningKey",
    "SshSig",
    "SshSigFields",
    "allowed_signers_line",
    "decode_sshsig",
    "key_file_mode_problem",
    "key_is_encrypted",
    "parse_sshsig",
    "sign_commit",
    "sign_sshsig",
    "split_signed_commit",
    "verify_signed_commit",
    "verify_sshsig",
]
