"""Ed25519 checks take libsodium's fast path, but OpenSSL's verdict is the rule.

libsodium accepts a subset of what OpenSSL accepts; these tests show both directions: a
signature libsodium refuses and OpenSSL (and ``ssh-keygen``, the independent judge) accepts
is accepted, and no damaged signature is accepted that OpenSSL refuses.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import nacl.bindings
import nacl.exceptions
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ledger.keys import PublicKey, sshsig, sshwire

#: The order of Ed25519's base point.
L = 2**252 + 27742317777372353535851937790883648493


def _key() -> tuple[ed25519.Ed25519PrivateKey, PublicKey, int]:
    """A key, its PublicKey, and its secret scalar (RFC 8032 5.1.5)."""
    private = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    seed = private.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    h = bytearray(hashlib.sha512(seed).digest()[:32])
    h[0] &= 248
    h[31] &= 127
    h[31] |= 64
    return private, PublicKey.from_crypto(private.public_key()), int.from_bytes(h, "little")


def _identity_r(public: PublicKey, scalar: int, data: bytes) -> bytes:
    """A signature of ``data`` whose R is the identity point (a small-order point, which
    libsodium refuses) and which satisfies the RFC 8032 equation [S]B = R + [k]A, since
    S = k*a: only the key's holder can make one."""
    r = (1).to_bytes(32, "little")
    raw_key = public.blob[-32:]
    k = int.from_bytes(hashlib.sha512(r + raw_key + data).digest(), "little") % L
    return r + ((k * scalar) % L).to_bytes(32, "little")


def _openssl_accepts(private: ed25519.Ed25519PrivateKey, sig: bytes, data: bytes) -> bool:
    try:
        private.public_key().verify(sig, data)
    except InvalidSignature:
        return False
    return True


def _sodium_accepts(public: PublicKey, sig: bytes, data: bytes) -> bool:
    try:
        nacl.bindings.crypto_sign_open(sig + data, public.blob[-32:])
    except nacl.exceptions.BadSignatureError:
        return False
    return True


def _blob(sig: bytes) -> bytes:
    return sshwire.string(b"ssh-ed25519") + sshwire.string(sig)


def test_a_signature_libsodium_refuses_is_judged_by_openssl(tmp_path: Path) -> None:
    private, public, scalar = _key()
    data = b"a commit's signed data"
    sig = _identity_r(public, scalar, data)
    assert not _sodium_accepts(public, sig, data)  # the fast path does not decide it
    assert _openssl_accepts(private, sig, data)
    assert public.verify(_blob(sig), data)

    class Crafted:  # a signing identity that signs the SSHSIG data with the crafted R
        public_key = public

        def sign(self, signed: bytes) -> bytes:
            return _blob(_identity_r(public, scalar, signed))

    armored = sshsig.sign_sshsig(Crafted(), data)  # type: ignore[arg-type]
    assert sshsig.verify_sshsig(armored, data, namespace="git") == public
    (tmp_path / "data.sig").write_text(armored)
    judged = subprocess.run(
        ["ssh-keygen", "-Y", "check-novalidate", "-n", "git", "-s", str(tmp_path / "data.sig")],
        input=data,
        capture_output=True,
    )
    assert judged.returncode == 0, judged.stderr


def test_no_damaged_signature_is_accepted_that_openssl_refuses() -> None:
    private, public, _ = _key()
    data = b"a commit's signed data"
    good = private.sign(data)
    assert _sodium_accepts(public, good, data)  # honest signatures take the fast path
    assert public.verify(_blob(good), data)
    s = int.from_bytes(good[32:], "little")
    damaged = [good[:32] + (s + L).to_bytes(32, "little")]  # S not reduced: refused
    for bit in range(512):
        flipped = bytearray(good)
        flipped[bit // 8] ^= 1 << (bit % 8)
        damaged.append(bytes(flipped))
    for sig in damaged:
        assert public.verify(_blob(sig), data) is _openssl_accepts(private, sig, data) is False
    assert not public.verify(_blob(good), data + b"!")


@pytest.mark.parametrize("length", [0, 63, 65])
def test_a_signature_of_the_wrong_length_is_refused(length: int) -> None:
    _, public, _ = _key()
    assert not public.verify(_blob(b"\x01" * length), b"data")
