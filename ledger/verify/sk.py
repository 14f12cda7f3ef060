"""FIDO security-key signatures (OpenSSH PROTOCOL.u2f) as the verifier reads them, apart from
``ledger.keys`` (rule 3 of docs/ARCHITECTURE.md): the key's application and point, the
signature's flags and counter, and the data the token signed are read here from the raw blobs,
and the Ed25519 / ECDSA check is made here with the cryptography package (FORMAT.md §6).
``tests/test_verify.py`` pins the constants to the writer's."""

from __future__ import annotations

import hashlib
import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ledger.verify import objects

SK_ED25519 = b"sk-ssh-ed25519@openssh.com"
SK_ECDSA = b"sk-ecdsa-sha2-nistp256@openssh.com"
SK_TYPES = frozenset({SK_ED25519, SK_ECDSA})
#: The user-presence bit of the flags (the token was touched).
USER_PRESENT = 0x01
#: The order n of P-256: only s <= n/2 is accepted, as for ecdsa-sha2-nistp256 (FORMAT.md §6).
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _fields(blob: bytes, count: int, what: str) -> list[bytes]:
    """Exactly ``count`` SSH strings filling ``blob``."""
    out = []
    pos = 0
    for _ in range(count):
        value, pos = objects.read_string(blob, pos)
        out.append(value)
    if pos != len(blob):
        raise objects.SigError(f"trailing bytes after the {what}")
    return out


def _mpint(raw: bytes) -> int:
    """A positive mpint in its one canonical form (a second form would be a second id)."""
    if not raw or raw[0] & 0x80 or (raw[0] == 0 and (len(raw) == 1 or not raw[1] & 0x80)):
        raise objects.SigError("the ECDSA signature's integers are not in canonical form")
    return int.from_bytes(raw, "big")


def signed_data(application: bytes, flags: int, counter: int, message: bytes) -> bytes:
    """What the token signed: SHA-256 of the application, flags, counter, SHA-256 of the
    message (the SSHSIG signed data)."""
    return (
        hashlib.sha256(application).digest()
        + bytes([flags])
        + struct.pack(">I", counter)
        + hashlib.sha256(message).digest()
    )


def verify(key_blob: bytes, signature: bytes, message: bytes) -> int:
    """Check an sk signature blob of ``message`` by the sk key ``key_blob``; its flags.

    :class:`objects.SigError` naming what is wrong: a type that is not the key's, malformed
    blobs, a high-S ECDSA signature, or a signature that does not verify (a changed flag,
    counter, application, message or key)."""
    key_type, pos = objects.read_string(key_blob, 0)
    sig_type, spos = objects.read_string(signature, 0)
    if key_type not in SK_TYPES or sig_type != key_type:
        raise objects.SigError(f"a {sig_type!r} signature cannot be the {key_type!r} key's")
    inner, spos = objects.read_string(signature, spos)
    tail = signature[spos:]
    if len(tail) != 5:
        raise objects.SigError("the security-key signature does not end in flags and counter")
    flags = tail[0]
    try:
        if key_type == SK_ED25519:
            point, application = _fields(key_blob[pos:], 2, "security key")
            signed = signed_data(application, flags, struct.unpack(">I", tail[1:])[0], message)
            if len(point) != 32 or len(inner) != 64:
                raise objects.SigError("malformed Ed25519 security key or signature")
            ed25519.Ed25519PublicKey.from_public_bytes(point).verify(inner, signed)
            return flags
        curve, point, application = _fields(key_blob[pos:], 3, "security key")
        if curve != b"nistp256":
            raise objects.SigError(f"the ECDSA security key's curve is {curve!r}")
        signed = signed_data(application, flags, struct.unpack(">I", tail[1:])[0], message)
        r_raw, s_raw = _fields(inner, 2, "ECDSA signature")
        r, s = _mpint(r_raw), _mpint(s_raw)
        if s > P256_ORDER // 2:
            raise objects.SigError(
                "the ECDSA security-key signature is high-S (s > n/2): its mirror image, "
                "which anyone can make from a good signature to change a commit's id"
            )
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        public.verify(encode_dss_signature(r, s), signed, ec.ECDSA(hashes.SHA256()))
        return flags
    except InvalidSignature:
        raise objects.SigError("the security-key signature does not verify") from None
    except ValueError as exc:  # cryptography refuses the point
        raise objects.SigError(f"the security key is unusable: {exc}") from None
