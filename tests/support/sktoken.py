"""A FIDO security key in software, for tests: genuine ``sk-ssh-ed25519@openssh.com`` and
``sk-ecdsa-sha2-nistp256@openssh.com`` signatures without a token.

A token's signature is an ordinary Ed25519 / ECDSA P-256 signature over the data of OpenSSH's
PROTOCOL.u2f: ``SHA256(application) || flags || counter (be32) || SHA256(message)`` (ECDSA
signs it with SHA-256). :class:`SkToken` holds the private key the token would hold and signs
that way; it has what the store asks of a signing key (``public_key``, ``sign(data)``), so it
plays the token behind the agent when records are appended.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Literal

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ledger.keys import PublicKey

SK_ED25519 = "sk-ssh-ed25519@openssh.com"
SK_ECDSA = "sk-ecdsa-sha2-nistp256@openssh.com"
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
USER_PRESENT = 0x01


def string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def mpint(value: int) -> bytes:
    return string(value.to_bytes((value.bit_length() + 8) // 8, "big") if value else b"")


def signed_data(application: bytes, flags: int, counter: int, message: bytes) -> bytes:
    """What the token signs (PROTOCOL.u2f), 69 bytes."""
    return (
        hashlib.sha256(application).digest()
        + bytes([flags])
        + struct.pack(">I", counter)
        + hashlib.sha256(message).digest()
    )


class SkToken:
    """A software FIDO key. ``flags`` and ``counter`` are what the next signature carries
    (the counter goes up by one per signature, as on a token); ``high_s`` makes ECDSA
    signatures in the high-S form, as a token may return them."""

    def __init__(
        self,
        kind: Literal["ed25519", "ecdsa"] = "ed25519",
        *,
        application: bytes = b"ssh:",
        flags: int = USER_PRESENT,
        counter: int = 1,
        comment: str = "",
    ) -> None:
        self.kind = kind
        self.application = application
        self.flags = flags
        self.counter = counter
        self.comment = comment
        self.high_s = False
        self._ed: ed25519.Ed25519PrivateKey | None = None
        self._ec: ec.EllipticCurvePrivateKey | None = None
        if kind == "ed25519":
            self._ed = ed25519.Ed25519PrivateKey.generate()
            raw = self._ed.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            blob = string(SK_ED25519.encode()) + string(raw) + string(application)
        else:
            self._ec = ec.generate_private_key(ec.SECP256R1())
            point = self._ec.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
            blob = string(SK_ECDSA.encode()) + string(b"nistp256") + string(point)
            blob += string(application)
        self.public_key = PublicKey.from_blob(blob)

    @property
    def key_type(self) -> str:
        return SK_ED25519 if self.kind == "ed25519" else SK_ECDSA

    def raw_signature(self, data: bytes) -> bytes:
        """The inner signature (Ed25519 64 bytes, or ECDSA ``mpint r, mpint s``) of ``data``."""
        if self._ed is not None:
            return self._ed.sign(data)
        assert self._ec is not None
        r, s = decode_dss_signature(self._ec.sign(data, ec.ECDSA(hashes.SHA256())))
        if (s > P256_ORDER // 2) != self.high_s:
            s = P256_ORDER - s
        return mpint(r) + mpint(s)

    def sign_with(self, data: bytes, flags: int, counter: int) -> bytes:
        """An sk signature blob of ``data`` with the given flags and counter."""
        inner = self.raw_signature(signed_data(self.application, flags, counter, data))
        return (
            string(self.key_type.encode())
            + string(inner)
            + bytes([flags])
            + (struct.pack(">I", counter))
        )

    def sign(self, data: bytes) -> bytes:
        """What the agent returns for a signature request: the sk signature blob."""
        blob = self.sign_with(data, self.flags, self.counter)
        self.counter += 1
        return blob

    def __repr__(self) -> str:
        return f"SkToken({self.key_type} {self.public_key.fingerprint})"
