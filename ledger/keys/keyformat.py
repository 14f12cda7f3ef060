"""The content of private key files: ``openssh-key-v1`` (plain or encrypted with bcrypt-pbkdf
and AES) and the checks that tell PEM, public and other files apart.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Final

import bcrypt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ledger.errors import KeyProblem, PassphraseRequired, WrongPassphrase
from ledger.keys import blobs, sshwire

KEY_BEGIN: Final = "-----BEGIN OPENSSH PRIVATE KEY-----"
KEY_END: Final = "-----END OPENSSH PRIVATE KEY-----"
KEY_MAGIC: Final = b"openssh-key-v1\x00"
MAX_KDF_ROUNDS: Final = 1 << 16
DEFAULT_KDF_ROUNDS: Final = 16  # ssh-keygen's default (-a)


def bcrypt_pbkdf(password: bytes, salt: bytes, key_len: int, rounds: int) -> bytes:
    """OpenBSD ``bcrypt_pbkdf`` as OpenSSH uses it for private key files (``bcrypt`` package)."""
    if not password or not salt or not 0 < key_len <= 1024 or rounds < 1:
        raise ValueError("bcrypt_pbkdf: empty password or salt, or bad length or rounds")
    key: bytes = bcrypt.kdf(
        password=password,
        salt=salt,
        desired_key_bytes=key_len,
        rounds=rounds,
        ignore_few_rounds=True,
    )
    return key


@dataclass(frozen=True)
class _CipherSpec:
    key_len: int
    iv_len: int
    block: int
    mode: str  # "none", "ctr", "cbc", "gcm"
    tag_len: int = 0


CIPHERS: Final[dict[str, _CipherSpec]] = {
    "none": _CipherSpec(0, 0, 8, "none"),
    "aes128-ctr": _CipherSpec(16, 16, 16, "ctr"),
    "aes192-ctr": _CipherSpec(24, 16, 16, "ctr"),
    "aes256-ctr": _CipherSpec(32, 16, 16, "ctr"),
    "aes128-cbc": _CipherSpec(16, 16, 16, "cbc"),
    "aes192-cbc": _CipherSpec(24, 16, 16, "cbc"),
    "aes256-cbc": _CipherSpec(32, 16, 16, "cbc"),
    "aes128-gcm@openssh.com": _CipherSpec(16, 12, 16, "gcm", 16),
    "aes256-gcm@openssh.com": _CipherSpec(32, 12, 16, "gcm", 16),
}
SAVE_CIPHER: Final = "aes256-ctr"


def crypt(spec: _CipherSpec, key_iv: bytes, data: bytes, tag: bytes, *, encrypt: bool) -> bytes:
    key, iv = key_iv[: spec.key_len], key_iv[spec.key_len : spec.key_len + spec.iv_len]
    if spec.mode == "gcm":
        if encrypt:
            return AESGCM(key).encrypt(iv, data, None)
        return AESGCM(key).decrypt(iv, data + tag, None)
    mode = modes.CTR(iv) if spec.mode == "ctr" else modes.CBC(iv)
    cipher = Cipher(algorithms.AES(key), mode)
    ctx = cipher.encryptor() if encrypt else cipher.decryptor()
    return ctx.update(data) + ctx.finalize()


@dataclass(frozen=True)
class _OpenSshFile:
    cipher: str
    kdf: str
    kdf_options: bytes
    public_blob: bytes
    private: bytes
    tag: bytes


def read_openssh_armor(data: bytes, where: str) -> _OpenSshFile:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyProblem(
            f"{where} is not a valid OpenSSH private key (not ASCII).", hint=blobs.KEY_HINT
        ) from None
    lines = [line.strip() for line in text.strip().splitlines()]
    if not lines or lines[0] != KEY_BEGIN or lines[-1] != KEY_END:
        raise KeyProblem(
            f"{where} is not a complete OpenSSH private key (begin or end line missing).",
            hint=blobs.KEY_HINT,
        )
    try:
        blob = base64.b64decode("".join(lines[1:-1]), validate=True)
    except binascii.Error:
        raise KeyProblem(
            f"{where} is damaged: its base64 content is malformed.", hint=blobs.KEY_HINT
        ) from None
    if not blob.startswith(KEY_MAGIC):
        raise KeyProblem(f"{where} is not an openssh-key-v1 private key.", hint=blobs.KEY_HINT)
    try:
        reader = sshwire.Reader(blob, len(KEY_MAGIC))
        cipher = reader.string().decode("ascii")
        kdf = reader.string().decode("ascii")
        kdf_options = reader.string()
        count = reader.u32()
        if count != 1:
            raise KeyProblem(
                f"{where} holds {count} keys; only files with one key are supported.",
                hint=blobs.KEY_HINT,
            )
        public_blob = reader.string()
        private = reader.string()
        tag = reader.rest()
    except (sshwire.Malformed, UnicodeDecodeError):
        raise KeyProblem(
            f"{where} is damaged: the key structure is truncated or malformed.", hint=blobs.KEY_HINT
        ) from None
    return _OpenSshFile(cipher, kdf, kdf_options, public_blob, private, tag)


def decrypt_openssh(key_file: _OpenSshFile, passphrase: bytes | None, where: str) -> bytes:
    spec = CIPHERS.get(key_file.cipher)
    if spec is None:
        raise KeyProblem(
            f"{where} is encrypted with cipher {key_file.cipher!r}, which is not supported.",
            hint=f"Re-encrypt it with `ssh-keygen -p -Z {SAVE_CIPHER} -f {where}`.",
        )
    if spec.mode == "none":
        if key_file.kdf != "none" or key_file.tag:
            raise KeyProblem(
                f"{where} is damaged: unencrypted key with a KDF.", hint=blobs.KEY_HINT
            )
        return key_file.private
    if key_file.kdf != "bcrypt":
        raise KeyProblem(
            f"{where} uses key derivation {key_file.kdf!r}, which is not supported.",
            hint=f"Re-encrypt it with `ssh-keygen -p -f {where}`.",
        )
    if not passphrase:
        raise passphrase_required(where)
    try:
        reader = sshwire.Reader(key_file.kdf_options)
        salt = reader.string()
        rounds = reader.u32()
        reader.end()
    except sshwire.Malformed:
        raise KeyProblem(
            f"{where} is damaged: malformed KDF options.", hint=blobs.KEY_HINT
        ) from None
    if not salt or not 1 <= rounds <= MAX_KDF_ROUNDS:
        raise KeyProblem(
            f"{where} has unusable KDF options (rounds {rounds}).", hint=blobs.KEY_HINT
        )
    if len(key_file.tag) != spec.tag_len or len(key_file.private) % spec.block:
        raise KeyProblem(
            f"{where} is damaged: encrypted part has a wrong length.", hint=blobs.KEY_HINT
        )
    key_iv = bcrypt_pbkdf(passphrase, salt, spec.key_len + spec.iv_len, rounds)
    try:
        return crypt(spec, key_iv, key_file.private, key_file.tag, encrypt=False)
    except InvalidTag:
        raise wrong_passphrase(where) from None


def passphrase_required(where: str) -> PassphraseRequired:
    return PassphraseRequired(
        f"{where} is encrypted and no passphrase was given.", hint="Give the key's passphrase."
    )


def wrong_passphrase(where: str) -> WrongPassphrase:
    return WrongPassphrase(
        f"the passphrase for {where} is wrong.",
        hint="Give the passphrase the key was encrypted with.",
    )


def private_from_section(reader: sshwire.Reader, key_type: str) -> blobs.PrivateCrypto:
    if key_type == blobs.ED25519:
        pub = reader.string()
        secret = reader.string()
        if len(pub) != 32 or len(secret) != 64 or secret[32:] != pub:
            raise sshwire.Malformed("inconsistent Ed25519 key")
        return ed25519.Ed25519PrivateKey.from_private_bytes(secret[:32])
    if key_type in blobs.ECDSA:
        curve_name, curve_cls, _hash = blobs.ECDSA[key_type]
        if reader.string() != curve_name.encode():
            raise sshwire.Malformed("curve does not match key type")
        point = reader.string()
        private_value = reader.mpint()
        ec_key = ec.derive_private_key(private_value, curve_cls())
        if blobs.ec_point(ec_key.public_key()) != point:
            raise sshwire.Malformed("inconsistent ECDSA key")
        return ec_key
    if key_type == blobs.RSA:
        n, e, d, iqmp, p, q = (reader.mpint() for _ in range(6))
        if p * q != n:
            raise sshwire.Malformed("inconsistent RSA key")
        numbers = rsa.RSAPrivateNumbers(
            p, q, d, d % (p - 1), d % (q - 1), iqmp, rsa.RSAPublicNumbers(e, n)
        )
        return numbers.private_key()
    raise sshwire.Unsupported(f"key type {key_type!r}")


def private_section(key: blobs.PrivateCrypto) -> bytes:
    pub = key.public_key()
    if isinstance(key, ed25519.Ed25519PrivateKey):
        seed = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        raw_pub = blobs.blob_of(pub)[4 + len(blobs.ED25519) + 4 :]
        return (
            sshwire.string(blobs.ED25519.encode())
            + sshwire.string(raw_pub)
            + sshwire.string(seed + raw_pub)
        )
    if isinstance(key, ec.EllipticCurvePrivateKey):
        key_type = blobs.ecdsa_type(key.curve)
        return (
            sshwire.string(key_type.encode())
            + sshwire.string(blobs.ECDSA[key_type][0].encode())
            + sshwire.string(blobs.ec_point(key.public_key()))
            + sshwire.mpint(key.private_numbers().private_value)
        )
    nums = key.private_numbers()
    pubn = nums.public_numbers
    return (
        sshwire.string(blobs.RSA.encode())
        + sshwire.mpint(pubn.n)
        + sshwire.mpint(pubn.e)
        + sshwire.mpint(nums.d)
        + sshwire.mpint(nums.iqmp)
        + sshwire.mpint(nums.p)
        + sshwire.mpint(nums.q)
    )


def looks_public(data: bytes) -> bool:
    head = data.lstrip()[:64]
    return head.startswith((b"ssh-", b"ecdsa-sha2-", b"sk-ssh-", b"sk-ecdsa-"))


def is_pem_private(data: bytes) -> bool:
    first = data.lstrip().split(b"\n", 1)[0].strip()
    return first.startswith(b"-----BEGIN ") and first.endswith(b"PRIVATE KEY-----")


def pem_encrypted(data: bytes) -> bool:
    return b"ENCRYPTED PRIVATE KEY" in data or b"Proc-Type: 4,ENCRYPTED" in data
