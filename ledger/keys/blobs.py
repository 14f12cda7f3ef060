"""The key types ``ledger.keys`` supports and their SSH public-key blobs.

Encodes cryptography public key objects as SSH wire blobs and decodes blobs back, accepting
only the canonical encoding (so one key has one blob, one fingerprint and one identity).
"""

from __future__ import annotations

from typing import Final

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ledger.keys import sshwire

ED25519: Final = "ssh-ed25519"
RSA: Final = "ssh-rsa"
#: key type -> (curve name in the blob, curve, hash used by signatures)
ECDSA: Final[dict[str, tuple[str, type[ec.EllipticCurve], type[hashes.HashAlgorithm]]]] = {
    "ecdsa-sha2-nistp256": ("nistp256", ec.SECP256R1, hashes.SHA256),
    "ecdsa-sha2-nistp384": ("nistp384", ec.SECP384R1, hashes.SHA384),
    "ecdsa-sha2-nistp521": ("nistp521", ec.SECP521R1, hashes.SHA512),
}
#: key type -> the order n of the curve's group (SEC 2): an ECDSA signature (r, s) is also
#: valid as (r, n - s), so signatures are written with s <= n/2 only (FORMAT.md §6).
ECDSA_ORDER: Final[dict[str, int]] = {
    "ecdsa-sha2-nistp256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "ecdsa-sha2-nistp384": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AEC"
        "EC196ACCC52973",
        16,
    ),
    "ecdsa-sha2-nistp521": int(
        "01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFA51868783BF2F96"
        "6B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409",
        16,
    ),
}
_RSA_SIG_HASHES: Final[dict[bytes, type[hashes.HashAlgorithm]]] = {
    b"rsa-sha2-512": hashes.SHA512,
    b"rsa-sha2-256": hashes.SHA256,
}
#: FIDO security-key types (OpenSSH PROTOCOL.u2f) -> the plain type of the key inside: the
#: blob is that key's followed by ``string application``; signatures carry flags and a counter
SK_ED25519: Final = "sk-ssh-ed25519@openssh.com"
SK_ECDSA: Final = "sk-ecdsa-sha2-nistp256@openssh.com"
SK_TYPES: Final = {SK_ED25519: ED25519, SK_ECDSA: "ecdsa-sha2-nistp256"}
SK_USER_PRESENT: Final = 0x01  # the user-presence flag of an sk signature
RSA_MIN_BITS: Final = 1024  # OpenSSH's SSH_RSA_MINIMUM_MODULUS_SIZE
RSA_MAX_BITS: Final = 16384

#: the key types of private key files (an sk key's file holds only a handle for the token)
PRIVATE_KEY_TYPES: Final = (ED25519, *ECDSA, RSA)
SUPPORTED_KEY_TYPES: Final = (*PRIVATE_KEY_TYPES, *SK_TYPES)

KEY_HINT: Final = (
    "Give the path of an OpenSSH private key file, such as one made by `ssh-keygen -t ed25519`."
)


PublicCrypto = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey
PrivateCrypto = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def ec_point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def ecdsa_type(curve: ec.EllipticCurve) -> str:
    for key_type, (_name, curve_cls, _hash) in ECDSA.items():
        if isinstance(curve, curve_cls):
            return key_type
    raise sshwire.Unsupported(f"ECDSA curve {curve.name}")


def blob_of(key: PublicCrypto) -> bytes:
    """The SSH wire encoding of a cryptography public key object."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return sshwire.string(ED25519.encode()) + sshwire.string(raw)
    if isinstance(key, ec.EllipticCurvePublicKey):
        key_type = ecdsa_type(key.curve)
        curve_name = ECDSA[key_type][0]
        return (
            sshwire.string(key_type.encode())
            + sshwire.string(curve_name.encode())
            + sshwire.string(ec_point(key))
        )
    numbers = key.public_numbers()
    return sshwire.string(RSA.encode()) + sshwire.mpint(numbers.e) + sshwire.mpint(numbers.n)


def sk_blob_of(key_type: str, key: PublicCrypto, application: bytes) -> bytes:
    """The SSH wire encoding of a FIDO key: the inner key's blob with the sk type, then the
    application (PROTOCOL.u2f)."""
    inner = sshwire.Reader(blob_of(key))
    inner.string()
    return sshwire.string(key_type.encode()) + inner.rest() + sshwire.string(application)


def decode_blob(blob: bytes) -> tuple[str, PublicCrypto]:
    """Parse an SSH public key blob; the blob must be the canonical encoding."""
    key_type, key, _application = decode_key(blob)
    return key_type, key


def decode_key(blob: bytes) -> tuple[str, PublicCrypto, bytes | None]:
    """Parse an SSH public key blob (canonical encoding only): its type, key, and for a FIDO
    key the application (None for other keys)."""
    reader = sshwire.Reader(blob)
    raw_type = reader.string()
    try:
        key_type = raw_type.decode("ascii")
    except UnicodeDecodeError as exc:
        raise sshwire.Malformed("key type is not ASCII") from exc
    inner_type = SK_TYPES.get(key_type, key_type)
    key = _decode_fields(reader, inner_type)
    application = reader.string() if key_type in SK_TYPES else None
    reader.end()
    canonical = blob_of(key) if application is None else sk_blob_of(key_type, key, application)
    if canonical != blob:
        raise sshwire.Malformed("key is not in canonical SSH encoding")
    return key_type, key, application


def _decode_fields(reader: sshwire.Reader, key_type: str) -> PublicCrypto:
    """The key of type ``key_type`` from the fields after the blob's type name."""
    key: PublicCrypto
    try:
        if key_type == ED25519:
            raw = reader.string()
            if len(raw) != 32:
                raise sshwire.Malformed("Ed25519 key is not 32 bytes")
            key = ed25519.Ed25519PublicKey.from_public_bytes(raw)
        elif key_type in ECDSA:
            curve_name, curve_cls, _hash = ECDSA[key_type]
            if reader.string() != curve_name.encode():
                raise sshwire.Malformed(f"curve name does not match key type {key_type}")
            key = ec.EllipticCurvePublicKey.from_encoded_point(curve_cls(), reader.string())
        elif key_type == RSA:
            e = reader.mpint()
            n = reader.mpint()
            if not RSA_MIN_BITS <= n.bit_length() <= RSA_MAX_BITS:
                raise sshwire.Unsupported(
                    f"RSA key of {n.bit_length()} bits (OpenSSH accepts {RSA_MIN_BITS} to "
                    f"{RSA_MAX_BITS})"
                )
            key = rsa.RSAPublicNumbers(e, n).public_key()
        else:
            raise sshwire.Unsupported(f"key type {key_type!r}")
    except ValueError as exc:  # cryptography rejects the numbers (includes sshwire.Malformed)
        if isinstance(exc, sshwire.Malformed):
            raise
        raise sshwire.Malformed(f"invalid {key_type} key: {exc}") from exc
    return key
