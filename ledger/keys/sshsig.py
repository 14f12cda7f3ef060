"""SSHSIG as OpenSSH's ``PROTOCOL.sshsig`` defines it: :func:`sign_sshsig`,
:func:`parse_sshsig` and :func:`verify_sshsig`, armored byte for byte as ``ssh-keygen -Y sign``
writes it. :func:`decode_sshsig` (the blob's layout) is shared with the verifier, which
reads the armor and judges the fields itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ledger import errors
from ledger.keys import blobs, keys, sshwire

_SIG_BEGIN: Final = "-----BEGIN SSH SIGNATURE-----"
_SIG_END: Final = "-----END SSH SIGNATURE-----"
_SSHSIG_MAGIC: Final = b"SSHSIG"
_SSHSIG_VERSION: Final = 1
_SSHSIG_HASHES: Final[dict[str, Callable[[bytes], bytes]]] = {
    "sha512": lambda data: hashlib.sha512(data).digest(),
    "sha256": lambda data: hashlib.sha256(data).digest(),
}

_SIG_HINT: Final = (
    "The signature is damaged or is not an SSH signature as made by `ssh-keygen -Y sign` or git."
)


@dataclass(frozen=True, slots=True)
class SshSig:
    """A parsed SSHSIG signature (OpenSSH ``PROTOCOL.sshsig``)."""

    public_key: keys.PublicKey
    namespace: str
    reserved: bytes
    hash_algorithm: str
    signature_blob: bytes

    @property
    def signature_type(self) -> str:
        """The SSH signature algorithm, e.g. ``ssh-ed25519`` or ``rsa-sha2-512``."""
        try:
            return sshwire.Reader(self.signature_blob).string().decode("ascii", "replace")
        except sshwire.Malformed:
            return ""


@dataclass(frozen=True, slots=True)
class SshSigFields:
    """The fields of an SSHSIG blob, undecoded."""

    public_key: bytes
    namespace: bytes
    reserved: bytes
    hash_algorithm: bytes
    signature: bytes


def decode_sshsig(blob: bytes) -> SshSigFields:
    """The fields of an SSHSIG blob (``"SSHSIG"``, version 1, five strings, nothing after);
    ``ValueError`` naming what is wrong."""
    start = len(_SSHSIG_MAGIC)
    if not blob.startswith(_SSHSIG_MAGIC) or len(blob) < start + 4:
        raise ValueError("the signature blob does not start with SSHSIG")
    version = int.from_bytes(blob[start : start + 4], "big")
    if version != _SSHSIG_VERSION:
        raise ValueError(f"unsupported SSHSIG version {version}")
    strings = []
    pos, size = start + 4, len(blob)
    for _ in range(5):  # public key, namespace, reserved, hash algorithm, signature
        end = pos + 4 + int.from_bytes(blob[pos : pos + 4], "big")
        if pos + 4 > size or end > size:
            raise ValueError("truncated SSHSIG blob")
        strings.append(blob[pos + 4 : end])
        pos = end
    if pos != size:
        raise ValueError("trailing bytes after the SSHSIG signature")
    return SshSigFields(*strings)


def _signed_data(namespace: bytes, reserved: bytes, hash_alg: bytes, digest: bytes) -> bytes:
    return (
        _SSHSIG_MAGIC
        + sshwire.string(namespace)
        + sshwire.string(reserved)
        + sshwire.string(hash_alg)
        + sshwire.string(digest)
    )


def _armor(blob: bytes) -> str:
    body = sshwire.wrap(base64.b64encode(blob).decode("ascii"))
    return f"{_SIG_BEGIN}\n{body}\n{_SIG_END}\n"


def _bad_signature(detail: str) -> errors.SignatureError:
    return errors.SignatureError(f"malformed SSH signature: {detail}.", hint=_SIG_HINT)


def _dearmor(armored: str | bytes) -> bytes:
    if isinstance(armored, bytes | bytearray | memoryview):
        try:
            text = bytes(armored).decode("ascii")
        except UnicodeDecodeError:
            raise _bad_signature("not ASCII text") from None
    else:
        text = armored
    if not text.startswith(_SIG_BEGIN):
        raise _bad_signature(f"it does not start with {_SIG_BEGIN}")
    end = text.find(_SIG_END, len(_SIG_BEGIN))
    if end < 0:
        raise _bad_signature(f"{_SIG_END} is missing (truncated?)")
    if text[end + len(_SIG_END) :].strip():
        raise _bad_signature(f"text follows {_SIG_END}")
    body = text[len(_SIG_BEGIN) : end].replace("\r", "").replace("\n", "")
    try:
        return binascii.a2b_base64(body, strict_mode=True)
    except (binascii.Error, ValueError):
        raise _bad_signature("the base64 content is malformed") from None


def parse_sshsig(armored: str | bytes) -> SshSig:
    """Parse an armored SSHSIG signature. SignatureError if it is malformed."""
    try:
        fields = decode_sshsig(_dearmor(armored))
    except ValueError as exc:  # sshwire.Malformed is one
        raise _bad_signature(str(exc)) from None
    try:
        public_key = keys.public_key_from_blob(fields.public_key)
    except sshwire.Malformed as exc:
        raise _bad_signature(f"signer's public key: {exc}") from None
    try:
        return SshSig(
            public_key,
            fields.namespace.decode("utf-8"),
            fields.reserved,
            fields.hash_algorithm.decode("ascii"),
            fields.signature,
        )
    except UnicodeDecodeError:
        raise _bad_signature("namespace or hash name is not text") from None


def verify_sshsig(
    armored: str | bytes,
    data: bytes,
    namespace: str = "git",
    *,
    require_user_presence: bool = False,
) -> keys.PublicKey:
    """Verify an armored SSHSIG signature of ``data`` in ``namespace``; the signer's key.

    SignatureError if it is malformed, for another namespace, uses a hash other than
    sha256/sha512, or does not verify; with ``require_user_presence``, also if a FIDO key's
    signature lacks the user-presence flag (the token was not touched). Whether the signer is
    trusted is the caller's business.
    """
    sig = parse_sshsig(armored)
    if sig.namespace != namespace:
        raise errors.SignatureError(
            f"the SSH signature is for namespace {sig.namespace!r}, not {namespace!r}.",
            hint="A signature made for another purpose cannot stand for this one.",
        )
    if sig.reserved:
        # OpenSSH ignores this field and verifies as if it were empty, so its content could
        # be changed without breaking the signature; we accept only what signers write.
        raise _bad_signature("the reserved field is not empty")
    digest = _SSHSIG_HASHES.get(sig.hash_algorithm)
    if digest is None:
        raise errors.SignatureError(
            f"the SSH signature uses hash {sig.hash_algorithm!r}; only sha512 and sha256 "
            "are accepted.",
            hint=_SIG_HINT,
        )
    signed = _signed_data(
        sig.namespace.encode("utf-8"),
        b"",
        sig.hash_algorithm.encode("ascii"),
        digest(data),
    )
    if sig.public_key.is_security_key:
        flags = keys.verify_sk(sig.public_key, sig.signature_blob, signed)
        if flags is not None and require_user_presence and not flags & blobs.SK_USER_PRESENT:
            raise errors.SignatureError(
                f"the SSH signature by the security key {sig.public_key.fingerprint} was made "
                f"without user presence (flags 0x{flags:02x}): the token was not touched.",
                hint="User presence is required here: sign again and touch the token when "
                "it blinks.",
            )
    else:
        flags = 0 if sig.public_key.verify(sig.signature_blob, signed) else None
    if flags is None:
        raise errors.SignatureError(
            f"the SSH signature by {sig.public_key.fingerprint} does not verify: the signed "
            "data was changed or the signature was damaged.",
            hint="Do not trust this data.",
        )
    return sig.public_key


def sign_sshsig(key: keys.SigningIdentity, data: bytes, namespace: str = "git") -> str:
    """An armored SSHSIG signature of ``data``, byte for byte as ``ssh-keygen -Y sign``
    writes it (hash sha512; ends with a newline). An ECDSA signature is embedded in its
    low-S form whatever the signer returned (:func:`~ledger.keys.keys.low_s`).

    For a git commit use :func:`sign_commit`, which leaves off the final newline.
    """
    if not namespace:
        raise errors.SignatureError(
            "an SSH signature needs a non-empty namespace.",
            hint="Use the namespace 'git' for commits.",
        )
    ns = namespace.encode("utf-8")
    signed = _signed_data(ns, b"", b"sha512", hashlib.sha512(data).digest())
    blob = (
        _SSHSIG_MAGIC
        + sshwire.U32.pack(_SSHSIG_VERSION)
        + sshwire.string(key.public_key.blob)
        + sshwire.string(ns)
        + sshwire.string(b"")
        + sshwire.string(b"sha512")
        + sshwire.string(keys.low_s(key.sign(signed)))
    )
    return _armor(blob)
