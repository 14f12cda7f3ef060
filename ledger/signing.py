"""OpenSSH keys and SSH signatures (``SSHSIG``), built on the cryptography package alone.

What this module gives the ledger:

- :class:`PublicKey`: OpenSSH public keys (``ssh-ed25519``, ``ecdsa-sha2-nistp256/384/521``,
  ``ssh-rsa``) parsed from a key line or from the SSH wire blob, with the fingerprint exactly
  as ``ssh-keygen -lf`` prints it and verification of raw SSH signature blobs.
- :class:`SigningKey`: private keys generated here (Ed25519) or loaded from the files
  ``ssh-keygen`` writes (the ``openssh-key-v1`` format, plain or encrypted with
  bcrypt-pbkdf and AES; PEM/PKCS#8 too), saved in the same format, and signing.
- SSHSIG as OpenSSH's ``PROTOCOL.sshsig`` defines it: :func:`parse_sshsig`,
  :func:`verify_sshsig` and :meth:`SigningKey.sign_sshsig`, armored byte for byte as
  ``ssh-keygen -Y sign`` writes it.
- git's SSH commit signatures: :func:`sign_commit` and :func:`split_signed_commit` (the
  latter is git's own ``parse_buffer_signed_by_header`` logic).
- :func:`allowed_signers_line`, for the allowed-signers file of ``git verify-commit``.

Nothing here prints, prompts or exits. Problems with key files raise
:class:`~ledger.errors.KeyProblem` (with ``needs_passphrase = True`` set on the instance when
a key is encrypted and no passphrase was given, and ``wrong_passphrase = True`` when the given
one is wrong); malformed or non-verifying signatures raise
:class:`~ledger.errors.SignatureError`.

Encrypted OpenSSH keys use bcrypt-pbkdf. When the ``bcrypt`` package (from the cryptography
project) is installed its fast implementation is used; otherwise a pure-Python one, which is
correct but takes about half a second per KDF round (ssh-keygen's default is 16 rounds).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
import secrets
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import bcrypt
from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ledger.errors import InputError, KeyProblem, LedgerExists, SignatureError

__all__ = [
    "PublicKey",
    "SigningKey",
    "SshSig",
    "allowed_signers_line",
    "bcrypt_pbkdf",
    "key_file_mode_problem",
    "key_is_encrypted",
    "parse_sshsig",
    "sign_commit",
    "split_signed_commit",
    "verify_signed_commit",
    "verify_sshsig",
]

ED25519: Final = "ssh-ed25519"
RSA: Final = "ssh-rsa"
#: key type -> (curve name in the blob, curve, hash used by signatures)
_ECDSA: Final[dict[str, tuple[str, type[ec.EllipticCurve], type[hashes.HashAlgorithm]]]] = {
    "ecdsa-sha2-nistp256": ("nistp256", ec.SECP256R1, hashes.SHA256),
    "ecdsa-sha2-nistp384": ("nistp384", ec.SECP384R1, hashes.SHA384),
    "ecdsa-sha2-nistp521": ("nistp521", ec.SECP521R1, hashes.SHA512),
}
_RSA_SIG_HASHES: Final[dict[bytes, type[hashes.HashAlgorithm]]] = {
    b"rsa-sha2-512": hashes.SHA512,
    b"rsa-sha2-256": hashes.SHA256,
}
_RSA_MIN_BITS: Final = 1024  # OpenSSH's SSH_RSA_MINIMUM_MODULUS_SIZE
_RSA_MAX_BITS: Final = 16384

SUPPORTED_KEY_TYPES: Final = (ED25519, *_ECDSA, RSA)

_SIG_BEGIN: Final = "-----BEGIN SSH SIGNATURE-----"
_SIG_END: Final = "-----END SSH SIGNATURE-----"
_KEY_BEGIN: Final = "-----BEGIN OPENSSH PRIVATE KEY-----"
_KEY_END: Final = "-----END OPENSSH PRIVATE KEY-----"
_KEY_MAGIC: Final = b"openssh-key-v1\x00"
_SSHSIG_MAGIC: Final = b"SSHSIG"
_SSHSIG_VERSION: Final = 1
_SSHSIG_HASHES: Final[dict[str, Callable[[bytes], bytes]]] = {
    "sha512": lambda data: hashlib.sha512(data).digest(),
    "sha256": lambda data: hashlib.sha256(data).digest(),
}
_ARMOR_WIDTH: Final = 70  # ssh-keygen wraps base64 at 70 characters
_MAX_KEY_FILE: Final = 1 << 20
_MAX_KDF_ROUNDS: Final = 1 << 16
DEFAULT_KDF_ROUNDS: Final = 16  # ssh-keygen's default (-a)

_U32: Final = struct.Struct(">I")

_KEY_HINT: Final = (
    "Give the path of an OpenSSH private key file, such as one made by `ssh-keygen -t ed25519`."
)
_SIG_HINT: Final = (
    "The signature is damaged or is not an SSH signature as made by `ssh-keygen -Y sign` or git."
)


# --------------------------------------------------------------------------- wire format


class _Malformed(ValueError):
    """Internal: bytes that do not follow the SSH wire format."""


class _Unsupported(_Malformed):
    """Internal: a well-formed key of a type this module does not handle."""


class _Reader:
    """Reads SSH wire types (RFC 4251 §5) from a buffer without copying it."""

    __slots__ = ("_buf", "_pos")

    def __init__(self, data: bytes | memoryview, pos: int = 0) -> None:
        self._buf = memoryview(data)
        self._pos = pos

    def u32(self) -> int:
        pos = self._pos
        if pos + 4 > len(self._buf):
            raise _Malformed("truncated")
        self._pos = pos + 4
        value: int = _U32.unpack_from(self._buf, pos)[0]
        return value

    def string(self) -> bytes:
        size = self.u32()
        pos = self._pos
        end = pos + size
        if end > len(self._buf):
            raise _Malformed("truncated")
        self._pos = end
        return self._buf[pos:end].tobytes()

    def mpint(self) -> int:
        raw = self.string()
        if raw and raw[0] & 0x80:
            raise _Malformed("negative integer")
        if len(raw) > 1 and raw[0] == 0 and not raw[1] & 0x80:
            raise _Malformed("integer with superfluous leading zero")
        return int.from_bytes(raw, "big")

    def rest(self) -> bytes:
        data = self._buf[self._pos :].tobytes()
        self._pos = len(self._buf)
        return data

    def end(self) -> None:
        if self._pos != len(self._buf):
            raise _Malformed("unexpected trailing data")


def _string(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def _mpint(value: int) -> bytes:
    if value < 0:
        raise ValueError("negative mpint")
    if value == 0:
        return _string(b"")
    return _string(value.to_bytes((value.bit_length() + 8) // 8, "big"))


def _wrap(text: str, width: int = _ARMOR_WIDTH) -> str:
    return "\n".join(text[i : i + width] for i in range(0, len(text), width))


def _mark(exc: KeyProblem, **flags: bool) -> KeyProblem:
    """Set attributes such as ``needs_passphrase`` on an error instance for the CLI."""
    exc.__dict__.update(flags)
    return exc


# --------------------------------------------------------------------------- public keys

_PublicCrypto = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey
_PrivateCrypto = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _ec_point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def _ecdsa_type(curve: ec.EllipticCurve) -> str:
    for key_type, (_name, curve_cls, _hash) in _ECDSA.items():
        if isinstance(curve, curve_cls):
            return key_type
    raise _Unsupported(f"ECDSA curve {curve.name}")


def _blob_of(key: _PublicCrypto) -> bytes:
    """The SSH wire encoding of a cryptography public key object."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return _string(ED25519.encode()) + _string(raw)
    if isinstance(key, ec.EllipticCurvePublicKey):
        key_type = _ecdsa_type(key.curve)
        curve_name = _ECDSA[key_type][0]
        return _string(key_type.encode()) + _string(curve_name.encode()) + _string(_ec_point(key))
    numbers = key.public_numbers()
    return _string(RSA.encode()) + _mpint(numbers.e) + _mpint(numbers.n)


def _decode_blob(blob: bytes) -> tuple[str, _PublicCrypto]:
    """Parse an SSH public key blob; the blob must be the canonical encoding."""
    reader = _Reader(blob)
    raw_type = reader.string()
    try:
        key_type = raw_type.decode("ascii")
    except UnicodeDecodeError as exc:
        raise _Malformed("key type is not ASCII") from exc
    key: _PublicCrypto
    try:
        if key_type == ED25519:
            raw = reader.string()
            if len(raw) != 32:
                raise _Malformed("Ed25519 key is not 32 bytes")
            key = ed25519.Ed25519PublicKey.from_public_bytes(raw)
        elif key_type in _ECDSA:
            curve_name, curve_cls, _hash = _ECDSA[key_type]
            if reader.string() != curve_name.encode():
                raise _Malformed(f"curve name does not match key type {key_type}")
            key = ec.EllipticCurvePublicKey.from_encoded_point(curve_cls(), reader.string())
        elif key_type == RSA:
            e = reader.mpint()
            n = reader.mpint()
            if not _RSA_MIN_BITS <= n.bit_length() <= _RSA_MAX_BITS:
                raise _Unsupported(
                    f"RSA key of {n.bit_length()} bits (OpenSSH accepts {_RSA_MIN_BITS} to "
                    f"{_RSA_MAX_BITS})"
                )
            key = rsa.RSAPublicNumbers(e, n).public_key()
        else:
            raise _Unsupported(f"key type {key_type!r}")
    except ValueError as exc:  # cryptography rejects the numbers (includes _Malformed)
        if isinstance(exc, _Malformed):
            raise
        raise _Malformed(f"invalid {key_type} key: {exc}") from exc
    reader.end()
    if _blob_of(key) != blob:
        raise _Malformed("key is not in canonical SSH encoding")
    return key_type, key


class PublicKey:
    """An OpenSSH public key. Immutable; equal and hashed by its wire blob.

    Build one with :meth:`parse` (a key line) or :meth:`from_blob`; the comment of a parsed
    line is kept in :attr:`comment` but is not part of equality.
    """

    __slots__ = ("_crypto", "_fingerprint", "blob", "comment", "key_type")

    key_type: str
    blob: bytes
    comment: str
    _crypto: _PublicCrypto
    _fingerprint: str

    def __init__(
        self, key_type: str, blob: bytes, crypto: _PublicCrypto, comment: str = ""
    ) -> None:
        """Internal; use :meth:`parse` or :meth:`from_blob`."""
        digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
        object.__setattr__(self, "key_type", key_type)
        object.__setattr__(self, "blob", blob)
        object.__setattr__(self, "comment", comment)
        object.__setattr__(self, "_crypto", crypto)
        object.__setattr__(self, "_fingerprint", "SHA256:" + digest)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("PublicKey is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("PublicKey is immutable")

    # -- construction

    @classmethod
    def from_blob(cls, blob: bytes) -> PublicKey:
        """The key whose SSH wire encoding is ``blob``. KeyProblem if it is not one we use."""
        try:
            return _public_key_from_blob(bytes(blob))
        except _Unsupported as exc:
            raise KeyProblem(
                f"unsupported SSH public key: {exc}.",
                hint=f"Use one of: {', '.join(SUPPORTED_KEY_TYPES)} (Ed25519 is the default).",
            ) from None
        except _Malformed as exc:
            raise KeyProblem(f"malformed SSH public key: {exc}.", hint=_KEY_HINT) from None

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        """Parse an OpenSSH public key line ``<type> <base64> [comment]``."""
        line = text.strip()
        if not line or "\n" in line or "\r" in line:
            raise KeyProblem(
                "expected exactly one OpenSSH public key line ('<type> <base64> [comment]').",
                hint="Give the content of a .pub file, for example "
                "'ssh-ed25519 AAAAC3Nza... alice@host'.",
            )
        fields = line.split(None, 2)
        if line.startswith("-----BEGIN") or len(fields) < 2:
            raise KeyProblem(
                f"not an OpenSSH public key line: {line[:40]!r}.",
                hint="Give the content of a .pub file ('<type> <base64> [comment]'), "
                "not a private key.",
            )
        try:
            blob = base64.b64decode(fields[1], validate=True)
        except binascii.Error:
            raise KeyProblem(
                f"the base64 part of the public key line is malformed: {fields[1][:40]!r}.",
                hint="Copy the whole line of the .pub file again.",
            ) from None
        key = cls.from_blob(blob)
        if key.key_type != fields[0]:
            raise KeyProblem(
                f"the public key line says {fields[0]!r} but holds a {key.key_type} key.",
                hint="Copy the whole line of the .pub file again.",
            )
        comment = fields[2].strip() if len(fields) == 3 else ""
        return key._with_comment(comment) if comment else key

    @classmethod
    def from_crypto(cls, key: _PublicCrypto, comment: str = "") -> PublicKey:
        """Wrap a cryptography public key object."""
        try:
            pub = _public_key_from_blob(_blob_of(key))
        except _Malformed as exc:
            raise KeyProblem(f"unsupported public key: {exc}.", hint=_KEY_HINT) from None
        return pub._with_comment(comment) if comment else pub

    def _with_comment(self, comment: str) -> PublicKey:
        return PublicKey(self.key_type, self.blob, self._crypto, comment)

    # -- presentation

    def openssh(self) -> str:
        """``<type> <base64>`` without comment."""
        return f"{self.key_type} {base64.b64encode(self.blob).decode('ascii')}"

    def openssh_line(self) -> str:
        """``<type> <base64> [comment]``, as in a .pub file (without newline)."""
        return f"{self.openssh()} {self.comment}" if self.comment else self.openssh()

    @property
    def fingerprint(self) -> str:
        """``SHA256:<base64 without padding>``, exactly as ``ssh-keygen -lf`` prints it."""
        return self._fingerprint

    @property
    def crypto_key(self) -> _PublicCrypto:
        """The cryptography public key object."""
        return self._crypto

    def __reduce__(self) -> tuple[Callable[[bytes, str], PublicKey], tuple[bytes, str]]:
        return (_public_key_with_comment, (self.blob, self.comment))

    def __copy__(self) -> PublicKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> PublicKey:
        return self

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublicKey):
            return NotImplemented
        return self.blob == other.blob

    def __hash__(self) -> int:
        return hash(self.blob)

    def __repr__(self) -> str:
        return f"PublicKey({self.key_type} {self._fingerprint})"

    def __str__(self) -> str:
        return self.openssh()

    # -- verification

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Whether ``signature`` (an SSH signature blob) is this key's signature of ``data``.

        Accepts ``ssh-ed25519``, ``ecdsa-sha2-*`` matching the key's curve, and
        ``rsa-sha2-512``/``rsa-sha2-256`` for RSA keys (SHA-1 ``ssh-rsa`` signatures are
        refused, as OpenSSH refuses them for SSHSIG). Malformed blobs give False.
        """
        try:
            reader = _Reader(signature)
            sig_type = reader.string()
            sig = reader.string()
            reader.end()
            key = self._crypto
            if isinstance(key, ed25519.Ed25519PublicKey):
                if sig_type != b"ssh-ed25519" or len(sig) != 64:
                    return False
                key.verify(sig, data)
                return True
            if isinstance(key, ec.EllipticCurvePublicKey):
                if sig_type != self.key_type.encode():
                    return False
                inner = _Reader(sig)
                r = inner.mpint()
                s = inner.mpint()
                inner.end()
                if r == 0 or s == 0:
                    return False
                hash_cls = _ECDSA[self.key_type][2]
                key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hash_cls()))
                return True
            hash_rsa = _RSA_SIG_HASHES.get(sig_type)
            if hash_rsa is None:
                return False
            size = (key.key_size + 7) // 8
            if len(sig) > size:
                return False
            key.verify(sig.rjust(size, b"\x00"), data, padding.PKCS1v15(), hash_rsa())
            return True
        except (InvalidSignature, _Malformed):
            return False


@functools.lru_cache(maxsize=4096)
def _public_key_from_blob(blob: bytes) -> PublicKey:
    key_type, crypto = _decode_blob(blob)
    return PublicKey(key_type, blob, crypto)


def _public_key_with_comment(blob: bytes, comment: str) -> PublicKey:
    key = PublicKey.from_blob(blob)
    return key._with_comment(comment) if comment else key


# --------------------------------------------------------------------------- bcrypt-pbkdf


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


# --------------------------------------------------------------------------- private keys


@dataclass(frozen=True)
class _CipherSpec:
    key_len: int
    iv_len: int
    block: int
    mode: str  # "none", "ctr", "cbc", "gcm"
    tag_len: int = 0


_CIPHERS: Final[dict[str, _CipherSpec]] = {
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
_SAVE_CIPHER: Final = "aes256-ctr"


def _crypt(spec: _CipherSpec, key_iv: bytes, data: bytes, tag: bytes, *, encrypt: bool) -> bytes:
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


def _read_openssh_armor(data: bytes, where: str) -> _OpenSshFile:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyProblem(
            f"{where} is not a valid OpenSSH private key (not ASCII).", hint=_KEY_HINT
        ) from None
    lines = [line.strip() for line in text.strip().splitlines()]
    if not lines or lines[0] != _KEY_BEGIN or lines[-1] != _KEY_END:
        raise KeyProblem(
            f"{where} is not a complete OpenSSH private key (begin or end line missing).",
            hint=_KEY_HINT,
        )
    try:
        blob = base64.b64decode("".join(lines[1:-1]), validate=True)
    except binascii.Error:
        raise KeyProblem(
            f"{where} is damaged: its base64 content is malformed.", hint=_KEY_HINT
        ) from None
    if not blob.startswith(_KEY_MAGIC):
        raise KeyProblem(f"{where} is not an openssh-key-v1 private key.", hint=_KEY_HINT)
    try:
        reader = _Reader(blob, len(_KEY_MAGIC))
        cipher = reader.string().decode("ascii")
        kdf = reader.string().decode("ascii")
        kdf_options = reader.string()
        count = reader.u32()
        if count != 1:
            raise KeyProblem(
                f"{where} holds {count} keys; only files with one key are supported.",
                hint=_KEY_HINT,
            )
        public_blob = reader.string()
        private = reader.string()
        tag = reader.rest()
    except (_Malformed, UnicodeDecodeError):
        raise KeyProblem(
            f"{where} is damaged: the key structure is truncated or malformed.", hint=_KEY_HINT
        ) from None
    return _OpenSshFile(cipher, kdf, kdf_options, public_blob, private, tag)


def _decrypt_openssh(key_file: _OpenSshFile, passphrase: bytes | None, where: str) -> bytes:
    spec = _CIPHERS.get(key_file.cipher)
    if spec is None:
        raise KeyProblem(
            f"{where} is encrypted with cipher {key_file.cipher!r}, which is not supported.",
            hint=f"Re-encrypt it with `ssh-keygen -p -Z {_SAVE_CIPHER} -f {where}`.",
        )
    if spec.mode == "none":
        if key_file.kdf != "none" or key_file.tag:
            raise KeyProblem(f"{where} is damaged: unencrypted key with a KDF.", hint=_KEY_HINT)
        return key_file.private
    if key_file.kdf != "bcrypt":
        raise KeyProblem(
            f"{where} uses key derivation {key_file.kdf!r}, which is not supported.",
            hint=f"Re-encrypt it with `ssh-keygen -p -f {where}`.",
        )
    if not passphrase:
        raise _mark(
            KeyProblem(
                f"{where} is encrypted and no passphrase was given.",
                hint="Give the key's passphrase.",
            ),
            needs_passphrase=True,
        )
    try:
        reader = _Reader(key_file.kdf_options)
        salt = reader.string()
        rounds = reader.u32()
        reader.end()
    except _Malformed:
        raise KeyProblem(f"{where} is damaged: malformed KDF options.", hint=_KEY_HINT) from None
    if not salt or not 1 <= rounds <= _MAX_KDF_ROUNDS:
        raise KeyProblem(f"{where} has unusable KDF options (rounds {rounds}).", hint=_KEY_HINT)
    if len(key_file.tag) != spec.tag_len or len(key_file.private) % spec.block:
        raise KeyProblem(f"{where} is damaged: encrypted part has a wrong length.", hint=_KEY_HINT)
    key_iv = bcrypt_pbkdf(passphrase, salt, spec.key_len + spec.iv_len, rounds)
    try:
        return _crypt(spec, key_iv, key_file.private, key_file.tag, encrypt=False)
    except InvalidTag:
        raise _wrong_passphrase(where) from None


def _wrong_passphrase(where: str) -> KeyProblem:
    return _mark(
        KeyProblem(
            f"the passphrase for {where} is wrong.",
            hint="Give the passphrase the key was encrypted with.",
        ),
        wrong_passphrase=True,
    )


def _private_from_section(reader: _Reader, key_type: str) -> _PrivateCrypto:
    if key_type == ED25519:
        pub = reader.string()
        secret = reader.string()
        if len(pub) != 32 or len(secret) != 64 or secret[32:] != pub:
            raise _Malformed("inconsistent Ed25519 key")
        return ed25519.Ed25519PrivateKey.from_private_bytes(secret[:32])
    if key_type in _ECDSA:
        curve_name, curve_cls, _hash = _ECDSA[key_type]
        if reader.string() != curve_name.encode():
            raise _Malformed("curve does not match key type")
        point = reader.string()
        private_value = reader.mpint()
        ec_key = ec.derive_private_key(private_value, curve_cls())
        if _ec_point(ec_key.public_key()) != point:
            raise _Malformed("inconsistent ECDSA key")
        return ec_key
    if key_type == RSA:
        n, e, d, iqmp, p, q = (reader.mpint() for _ in range(6))
        if p * q != n:
            raise _Malformed("inconsistent RSA key")
        numbers = rsa.RSAPrivateNumbers(
            p, q, d, d % (p - 1), d % (q - 1), iqmp, rsa.RSAPublicNumbers(e, n)
        )
        return numbers.private_key()
    raise _Unsupported(f"key type {key_type!r}")


def _private_section(key: _PrivateCrypto) -> bytes:
    pub = key.public_key()
    if isinstance(key, ed25519.Ed25519PrivateKey):
        seed = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        raw_pub = _blob_of(pub)[4 + len(ED25519) + 4 :]
        return _string(ED25519.encode()) + _string(raw_pub) + _string(seed + raw_pub)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        key_type = _ecdsa_type(key.curve)
        return (
            _string(key_type.encode())
            + _string(_ECDSA[key_type][0].encode())
            + _string(_ec_point(key.public_key()))
            + _mpint(key.private_numbers().private_value)
        )
    nums = key.private_numbers()
    pubn = nums.public_numbers
    return (
        _string(RSA.encode())
        + _mpint(pubn.n)
        + _mpint(pubn.e)
        + _mpint(nums.d)
        + _mpint(nums.iqmp)
        + _mpint(nums.p)
        + _mpint(nums.q)
    )


def _read_key_file(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
            raise KeyProblem(f"key file {path} is not a regular file.", hint=_KEY_HINT)
        with path.open("rb") as handle:
            data = handle.read(_MAX_KEY_FILE + 1)
    except FileNotFoundError:
        raise KeyProblem(f"key file {path} does not exist.", hint=_KEY_HINT) from None
    except IsADirectoryError:
        raise KeyProblem(
            f"key file {path} is a directory, not a key file.", hint=_KEY_HINT
        ) from None
    except PermissionError:
        raise KeyProblem(
            f"key file {path} cannot be read: permission denied.",
            hint="Run as the key's owner, or fix the file's permissions (chmod 600).",
        ) from None
    except OSError as exc:
        raise KeyProblem(
            f"key file {path} cannot be read: {exc.strerror or exc}.", hint=_KEY_HINT
        ) from None
    if len(data) > _MAX_KEY_FILE:
        raise KeyProblem(f"{path} is too large to be a private key file.", hint=_KEY_HINT)
    return data


def _looks_public(data: bytes) -> bool:
    head = data.lstrip()[:64]
    return head.startswith((b"ssh-", b"ecdsa-sha2-", b"sk-ssh-", b"sk-ecdsa-"))


def _is_pem_private(data: bytes) -> bool:
    first = data.lstrip().split(b"\n", 1)[0].strip()
    return first.startswith(b"-----BEGIN ") and first.endswith(b"PRIVATE KEY-----")


class SigningKey:
    """A private signing key (Ed25519 by default; ECDSA and RSA when loaded)."""

    __slots__ = ("_private", "comment", "public_key")

    _private: _PrivateCrypto
    public_key: PublicKey
    comment: str

    def __init__(self, private: _PrivateCrypto, comment: str = "") -> None:
        if not isinstance(
            private,
            ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
        ):
            raise KeyProblem(
                f"unsupported private key type {type(private).__name__}.",
                hint="Use an Ed25519, ECDSA (P-256/384/521) or RSA key.",
            )
        self._private = private
        self.public_key = PublicKey.from_crypto(private.public_key())
        self.comment = comment

    def __repr__(self) -> str:
        return f"SigningKey({self.public_key.key_type} {self.public_key.fingerprint})"

    # -- construction

    @classmethod
    def generate(cls, comment: str = "") -> SigningKey:
        """A new random Ed25519 key."""
        return cls(ed25519.Ed25519PrivateKey.generate(), comment)

    @classmethod
    def load(cls, path: Path | str, passphrase: bytes | str | None = None) -> SigningKey:
        """Load a private key file as ``ssh-keygen`` writes it (or PEM/PKCS#8).

        Raises KeyProblem when the file is missing, unreadable, not a private key, of an
        unsupported type, encrypted without a passphrase given (``needs_passphrase``), or
        the passphrase is wrong (``wrong_passphrase``).
        """
        path = Path(path).expanduser()
        secret = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
        data = _read_key_file(path)
        stripped = data.lstrip()
        if stripped.startswith(_KEY_BEGIN.encode()):
            return cls._load_openssh(data, secret, str(path))
        if _is_pem_private(stripped):
            return cls._load_pem(data, secret, str(path))
        if _looks_public(data):
            raise KeyProblem(
                f"{path} is a public key, not a private key.",
                hint="Give the private key file (the one without .pub).",
            )
        raise KeyProblem(f"{path} is not a private key file.", hint=_KEY_HINT)

    @classmethod
    def from_openssh(
        cls, data: bytes | str, passphrase: bytes | str | None = None, *, where: str = "the key"
    ) -> SigningKey:
        """Parse the content of an OpenSSH private key file."""
        raw = data.encode("ascii", "replace") if isinstance(data, str) else data
        secret = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
        return cls._load_openssh(raw, secret, where)

    @classmethod
    def _load_openssh(cls, data: bytes, passphrase: bytes | None, where: str) -> SigningKey:
        key_file = _read_openssh_armor(data, where)
        try:
            reader = _Reader(key_file.public_blob)
            key_type = reader.string().decode("ascii", "replace")
        except _Malformed:
            raise KeyProblem(f"{where} is damaged: malformed public key.", hint=_KEY_HINT) from None
        if key_type not in SUPPORTED_KEY_TYPES:
            raise KeyProblem(
                f"{where} is a {key_type} key, which is not supported.",
                hint=f"Use one of: {', '.join(SUPPORTED_KEY_TYPES)} "
                "(`ssh-keygen -t ed25519` makes the default kind).",
            )
        encrypted = key_file.cipher != "none"
        plain = _decrypt_openssh(key_file, passphrase, where)
        try:
            section = _Reader(plain)
            check1, check2 = section.u32(), section.u32()
        except _Malformed:
            raise KeyProblem(
                f"{where} is damaged: private part truncated.", hint=_KEY_HINT
            ) from None
        if check1 != check2:
            if encrypted:
                raise _wrong_passphrase(where)
            raise KeyProblem(f"{where} is damaged: check bytes differ.", hint=_KEY_HINT)
        try:
            inner_type = section.string().decode("ascii", "replace")
            if inner_type != key_type:
                raise _Malformed("private and public parts disagree on the key type")
            private = _private_from_section(section, key_type)
            comment = section.string().decode("utf-8", "replace")
            pad = section.rest()
            if pad != bytes(range(1, len(pad) + 1)):
                raise _Malformed("bad padding")
        except (_Malformed, ValueError, UnsupportedAlgorithm) as exc:
            raise KeyProblem(f"{where} is damaged: {exc}.", hint=_KEY_HINT) from None
        key = cls(private, comment)
        if key.public_key.blob != key_file.public_blob:
            raise KeyProblem(
                f"{where} is damaged: public and private parts do not match.", hint=_KEY_HINT
            )
        return key

    @classmethod
    def _load_pem(cls, data: bytes, passphrase: bytes | None, where: str) -> SigningKey:
        try:
            try:
                private = serialization.load_pem_private_key(data, passphrase or None)
            except TypeError:
                if passphrase:  # given but the key is not encrypted
                    private = serialization.load_pem_private_key(data, None)
                else:
                    raise _mark(
                        KeyProblem(
                            f"{where} is encrypted and no passphrase was given.",
                            hint="Give the key's passphrase.",
                        ),
                        needs_passphrase=True,
                    ) from None
        except ValueError:
            if passphrase and _pem_encrypted(data):
                raise _wrong_passphrase(where) from None
            raise KeyProblem(f"{where} is not a valid PEM private key.", hint=_KEY_HINT) from None
        except UnsupportedAlgorithm:
            raise KeyProblem(
                f"{where} holds a key of an unsupported kind.", hint=_KEY_HINT
            ) from None
        if not isinstance(
            private,
            ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
        ):
            raise KeyProblem(
                f"{where} holds a {type(private).__name__}, which is not supported.", hint=_KEY_HINT
            )
        try:
            return cls(private)
        except KeyProblem as exc:
            raise KeyProblem(f"{where}: {exc.message}", hint=exc.hint) from None

    # -- serialisation

    def private_openssh(
        self, passphrase: bytes | str | None = None, *, kdf_rounds: int = DEFAULT_KDF_ROUNDS
    ) -> str:
        """The private key as an OpenSSH private key file, as ``ssh-keygen`` writes it.

        With a (non-empty) passphrase it is encrypted with aes256-ctr and bcrypt-pbkdf of
        ``kdf_rounds`` rounds.
        """
        secret = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
        cipher = _SAVE_CIPHER if secret else "none"
        spec = _CIPHERS[cipher]
        check = _U32.pack(secrets.randbits(32))
        section = check + check + _private_section(self._private)
        section += _string(self.comment.encode("utf-8"))
        pad = (-len(section)) % spec.block
        section += bytes(range(1, pad + 1))
        if secret:
            salt = os.urandom(16)
            kdf, kdf_options = "bcrypt", _string(salt) + _U32.pack(kdf_rounds)
            key_iv = bcrypt_pbkdf(secret, salt, spec.key_len + spec.iv_len, kdf_rounds)
            section = _crypt(spec, key_iv, section, b"", encrypt=True)
        else:
            kdf, kdf_options = "none", b""
        blob = (
            _KEY_MAGIC
            + _string(cipher.encode())
            + _string(kdf.encode())
            + _string(kdf_options)
            + _U32.pack(1)
            + _string(self.public_key.blob)
            + _string(section)
        )
        body = _wrap(base64.b64encode(blob).decode("ascii"))
        return f"{_KEY_BEGIN}\n{body}\n{_KEY_END}\n"

    def save(
        self,
        path: Path | str,
        passphrase: bytes | str | None = None,
        *,
        kdf_rounds: int = DEFAULT_KDF_ROUNDS,
    ) -> None:
        """Write the private key to ``path`` (mode 0600) and ``path.pub`` (mode 0644).

        Never overwrites: LedgerExists if either file exists. KeyProblem if the files
        cannot be created.
        """
        path = Path(path).expanduser()
        pub_path = path.with_name(path.name + ".pub")
        for target in (path, pub_path):
            if target.exists() or target.is_symlink():
                raise LedgerExists(
                    f"{target} already exists; a key file is never overwritten.",
                    hint="Choose another path, or move the old key away first.",
                )
        private_text = self.private_openssh(passphrase, kdf_rounds=kdf_rounds).encode("ascii")
        comment = " ".join(self.comment.split())  # one line, whatever the comment holds
        public_text = (f"{self.public_key.openssh()} {comment}".rstrip() + "\n").encode("utf-8")
        _write_new_file(path, private_text, 0o600)
        try:
            _write_new_file(pub_path, public_text, 0o644)
        except (KeyProblem, LedgerExists):
            path.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

    # -- signing

    def sign(self, data: bytes) -> bytes:
        """An SSH signature blob of ``data`` (Ed25519; ECDSA; RSA with rsa-sha2-512)."""
        key = self._private
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return _string(b"ssh-ed25519") + _string(key.sign(data))
        if isinstance(key, ec.EllipticCurvePrivateKey):
            key_type = self.public_key.key_type
            der = key.sign(data, ec.ECDSA(_ECDSA[key_type][2]()))
            r, s = decode_dss_signature(der)
            return _string(key_type.encode()) + _string(_mpint(r) + _mpint(s))
        sig = key.sign(data, padding.PKCS1v15(), hashes.SHA512())
        return _string(b"rsa-sha2-512") + _string(sig)

    def sign_sshsig(self, data: bytes, namespace: str = "git") -> str:
        """An armored SSHSIG signature of ``data``, byte for byte as ``ssh-keygen -Y sign``
        writes it (hash sha512; ends with a newline).

        For a git commit use :func:`sign_commit`, which leaves off the final newline.
        """
        if not namespace:
            raise SignatureError(
                "an SSH signature needs a non-empty namespace.",
                hint="Use the namespace 'git' for commits.",
            )
        ns = namespace.encode("utf-8")
        signed = _signed_data(ns, b"", b"sha512", hashlib.sha512(data).digest())
        blob = (
            _SSHSIG_MAGIC
            + _U32.pack(_SSHSIG_VERSION)
            + _string(self.public_key.blob)
            + _string(ns)
            + _string(b"")
            + _string(b"sha512")
            + _string(self.sign(signed))
        )
        return _armor(blob)


def _write_new_file(path: Path, content: bytes, mode: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise LedgerExists(
            f"{path} already exists; a key file is never overwritten.",
            hint="Choose another path, or move the old key away first.",
        ) from None
    except FileNotFoundError:
        raise KeyProblem(
            f"cannot create key file {path}: its directory does not exist.",
            hint="Create the directory first, or choose another path.",
        ) from None
    except OSError as exc:
        raise KeyProblem(
            f"cannot create key file {path}: {exc.strerror or exc}.",
            hint="Choose a path in a directory you can write to.",
        ) from None
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise KeyProblem(
            f"cannot write key file {path}: {exc.strerror or exc}.",
            hint="Check free space and permissions, then try again.",
        ) from None


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the files themselves are synced
    finally:
        os.close(fd)


def _pem_encrypted(data: bytes) -> bool:
    return b"ENCRYPTED PRIVATE KEY" in data or b"Proc-Type: 4,ENCRYPTED" in data


def key_is_encrypted(path: Path | str) -> bool:
    """Whether the private key file at ``path`` needs a passphrase. KeyProblem as load."""
    path = Path(path).expanduser()
    data = _read_key_file(path)
    stripped = data.lstrip()
    if stripped.startswith(_KEY_BEGIN.encode()):
        return _read_openssh_armor(data, str(path)).cipher != "none"
    if _is_pem_private(stripped):
        return _pem_encrypted(data)
    if _looks_public(data):
        raise KeyProblem(
            f"{path} is a public key, not a private key.",
            hint="Give the private key file (the one without .pub).",
        )
    raise KeyProblem(f"{path} is not a private key file.", hint=_KEY_HINT)


def key_file_mode_problem(path: Path | str) -> str | None:
    """A warning if the private key file can be read or written by group or others.

    None when the mode is fine or the file cannot be inspected (loading reports that).
    """
    path = Path(path).expanduser()
    try:
        st = path.stat()
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return (
            f"private key file {path} is accessible by group or others (mode {mode:04o}); "
            f"anyone who can read it can sign as you. Run `chmod 600 {path}`."
        )
    return None


# --------------------------------------------------------------------------- SSHSIG


@dataclass(frozen=True, slots=True)
class SshSig:
    """A parsed SSHSIG signature (OpenSSH ``PROTOCOL.sshsig``)."""

    public_key: PublicKey
    namespace: str
    reserved: bytes
    hash_algorithm: str
    signature_blob: bytes

    @property
    def signature_type(self) -> str:
        """The SSH signature algorithm, e.g. ``ssh-ed25519`` or ``rsa-sha2-512``."""
        try:
            return _Reader(self.signature_blob).string().decode("ascii", "replace")
        except _Malformed:
            return ""


def _signed_data(namespace: bytes, reserved: bytes, hash_alg: bytes, digest: bytes) -> bytes:
    return (
        _SSHSIG_MAGIC + _string(namespace) + _string(reserved) + _string(hash_alg) + _string(digest)
    )


def _armor(blob: bytes) -> str:
    body = _wrap(base64.b64encode(blob).decode("ascii"))
    return f"{_SIG_BEGIN}\n{body}\n{_SIG_END}\n"


def _bad_signature(detail: str) -> SignatureError:
    return SignatureError(f"malformed SSH signature: {detail}.", hint=_SIG_HINT)


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
    blob = _dearmor(armored)
    if not blob.startswith(_SSHSIG_MAGIC):
        raise _bad_signature("no SSHSIG magic")
    try:
        reader = _Reader(blob, len(_SSHSIG_MAGIC))
        version = reader.u32()
        if version != _SSHSIG_VERSION:
            raise _bad_signature(f"unsupported SSHSIG version {version}")
        public_blob = reader.string()
        namespace = reader.string()
        reserved = reader.string()
        hash_alg = reader.string()
        signature = reader.string()
        reader.end()
    except _Malformed as exc:
        raise _bad_signature(str(exc)) from None
    try:
        public_key = _public_key_from_blob(public_blob)
    except _Malformed as exc:
        raise _bad_signature(f"signer's public key: {exc}") from None
    try:
        return SshSig(
            public_key, namespace.decode("utf-8"), reserved, hash_alg.decode("ascii"), signature
        )
    except UnicodeDecodeError:
        raise _bad_signature("namespace or hash name is not text") from None


def verify_sshsig(armored: str | bytes, data: bytes, namespace: str = "git") -> PublicKey:
    """Verify an armored SSHSIG signature of ``data`` in ``namespace``; the signer's key.

    SignatureError if it is malformed, for another namespace, uses a hash other than
    sha256/sha512, or does not verify. Whether the signer is trusted is the caller's
    business.
    """
    sig = parse_sshsig(armored)
    if sig.namespace != namespace:
        raise SignatureError(
            f"the SSH signature is for namespace {sig.namespace!r}, not {namespace!r}.",
            hint="A signature made for another purpose cannot stand for this one.",
        )
    if sig.reserved:
        # OpenSSH ignores this field and verifies as if it were empty, so its content could
        # be changed without breaking the signature; we accept only what signers write.
        raise _bad_signature("the reserved field is not empty")
    digest = _SSHSIG_HASHES.get(sig.hash_algorithm)
    if digest is None:
        raise SignatureError(
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
    if not sig.public_key.verify(sig.signature_blob, signed):
        raise SignatureError(
            f"the SSH signature by {sig.public_key.fingerprint} does not verify: the signed "
            "data was changed or the signature was damaged.",
            hint="Do not trust this data.",
        )
    return sig.public_key


# --------------------------------------------------------------------------- git commits

_GPGSIG: Final = b"gpgsig"
_GPGSIG_SP: Final = b"gpgsig "


def split_signed_commit(raw: bytes) -> tuple[bytes, list[bytes]]:
    """Split a raw commit object's content into the payload git verifies and its signatures.

    This is git's ``parse_buffer_signed_by_header`` for a SHA-1 repository: every
    ``gpgsig`` header (with its continuation lines) is removed and its value collected
    (continuation spaces dropped, each line keeping its newline); any other header whose
    name starts with ``gpgsig`` (such as ``gpgsig-sha256``) is removed and ignored.
    Everything from the first empty line on is payload. Git concatenates the signatures of
    several ``gpgsig`` headers into one; here each header is one list item.
    """
    data = bytes(raw)
    size = len(data)
    if _GPGSIG not in data:
        return data, []
    payload = bytearray()
    signatures: list[bytearray] = []
    in_signature = False
    other_signature = False
    pos = 0
    while pos < size:
        newline = data.find(b"\n", pos)
        nxt = newline + 1 if newline >= 0 else size
        first = data[pos]
        sig_start = -1
        if in_signature and first == 0x20:
            sig_start = pos + 1
        elif data.startswith(_GPGSIG_SP, pos):
            sig_start = pos + len(_GPGSIG_SP)
            other_signature = False
            signatures.append(bytearray())
        elif data.startswith(_GPGSIG, pos):
            other_signature = True
        elif other_signature and first != 0x20:
            other_signature = False
        if sig_start >= 0:
            signatures[-1] += data[sig_start:nxt]
            in_signature = True
        else:
            if first == 0x0A:
                nxt = size  # the message: everything after the empty line is payload
            if not other_signature:
                payload += data[pos:nxt]
            in_signature = False
        pos = nxt
    return bytes(payload), [bytes(s) for s in signatures]


def sign_commit(content: bytes | str, key: SigningKey) -> str:
    """The armored SSH signature of a commit, for ``Repository.create_commit_with_signature``.

    ``content`` is the unsigned commit (as ``create_commit_string`` makes it). The result has
    no final newline: libgit2 adds one after the header value (with it, the commit would get
    an extra line holding a single space). The payload git later verifies
    (:func:`split_signed_commit`) is exactly ``content``.
    """
    data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
    if b"\n\n" not in data:
        raise SignatureError(
            "commit content has no empty line after its headers.",
            hint="Sign the output of create_commit_string.",
        )
    payload, signatures = split_signed_commit(data)
    if signatures or payload != data:
        raise SignatureError(
            "commit content already has a gpgsig header; it cannot be signed again.",
            hint="Sign the unsigned commit content.",
        )
    return key.sign_sshsig(data, "git").rstrip("\n")


def verify_signed_commit(raw: bytes, namespace: str = "git") -> tuple[bytes, PublicKey]:
    """Verify the single ``gpgsig`` signature of a raw commit; (payload, signer's key).

    SignatureError if the commit is unsigned, has several signature headers, or its
    signature is malformed or does not verify.
    """
    payload, signatures = split_signed_commit(raw)
    if not signatures:
        raise SignatureError(
            "the commit is not signed (no gpgsig header).",
            hint="Every ledger commit must carry an SSH signature.",
        )
    if len(signatures) > 1:
        raise SignatureError(
            f"the commit has {len(signatures)} gpgsig headers; exactly one is allowed.",
            hint="Do not trust this commit.",
        )
    return payload, verify_sshsig(signatures[0], payload, namespace)


# --------------------------------------------------------------------------- allowed signers

_PRINCIPAL_FORBIDDEN: Final = frozenset(" \t\"',*?!\\")


def _ssh_time(when: datetime) -> str:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y%m%d%H%M%SZ")


def allowed_signers_line(
    principal: str,
    public_key: PublicKey,
    valid_after: datetime | None = None,
    valid_before: datetime | None = None,
) -> str:
    """One line of an allowed-signers file (``ssh-keygen``'s ``ALLOWED SIGNERS``) for git.

    ``<principal> namespaces="git"[,valid-after="YYYYMMDDHHMMSSZ"][,valid-before="…"]
    <type> <base64>``, without newline. Times are written in UTC (naive datetimes are taken
    as UTC), to the second; OpenSSH treats both bounds as inclusive but refuses a line whose
    valid-before is not after its valid-after, so a key added and revoked within the same
    second is written valid for that second and the next (the ledger's own verification
    orders them by seq). InputError if the principal cannot be written safely (empty,
    whitespace, quotes, commas, wildcards, control characters, a leading ``#``) or
    valid-before precedes valid-after.
    """
    if (
        not principal
        or principal.startswith("#")
        or any(ch in _PRINCIPAL_FORBIDDEN or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in principal)
    ):
        raise InputError(
            f"principal {principal!r} cannot be written to an allowed-signers file.",
            hint="Use a principal without spaces, quotes, commas, wildcards (* ? !) or "
            "control characters, such as an e-mail address.",
        )
    if (
        valid_after is not None
        and valid_before is not None
        and _ssh_time(valid_before) == _ssh_time(valid_after)
    ):
        valid_before = valid_after + timedelta(seconds=1)
    options = ['namespaces="git"']
    if valid_after is not None:
        options.append(f'valid-after="{_ssh_time(valid_after)}"')
    if valid_before is not None:
        options.append(f'valid-before="{_ssh_time(valid_before)}"')
    if (
        valid_after is not None
        and valid_before is not None
        and _ssh_time(valid_before) < _ssh_time(valid_after)
    ):
        raise InputError(
            f"key validity for {principal} ends ({_ssh_time(valid_before)}) before it "
            f"starts ({_ssh_time(valid_after)}).",
            hint="Check the key's added and revoked times.",
        )
    return f"{principal} {','.join(options)} {public_key.openssh()}"
