"""The content of private key files: ``openssh-key-v1`` and PEM/PKCS#8, to and from
cryptography key objects, with every problem turned into a :class:`~ledger.errors.KeyProblem`.

cryptography does the cryptographic work of ``openssh-key-v1`` (``load_ssh_private_key`` and
``PrivateFormat.OpenSSH``): bcrypt-pbkdf, the ciphers aes256-ctr (ssh-keygen's default),
aes256-cbc and aes256-gcm@openssh.com, the check bytes, the key fields and the padding. The
other ciphers ``ssh-keygen -Z`` offers and earlier versions of this tool read (aes128-ctr,
aes192-ctr, aes128-cbc, aes192-cbc, aes128-gcm@openssh.com) are decrypted here with ``bcrypt.kdf``
and cryptography's AES, and the library then reads the same file unencrypted (cipher and KDF
"none"). chacha20-poly1305@openssh.com and 3des-cbc are refused with a hint to re-encrypt with
ssh-keygen. This module reads only the clear header in front of the encrypted part, to give clear
answers before any work: which key type (supported or not), whether a passphrase is needed, a
cipher not handled, and a KDF rounds count above 65,536, which is refused because the library has
no limit and a hostile key file could otherwise keep the process busy for hours.

The library also drops the key's comment in both directions. This module keeps it where it can
without cipher code: it reads the comment from an unencrypted file's private part and writes it
into unencrypted files. The comment of an encrypted file is not read (the caller takes it from
the ``.pub`` file next to it) and files written with a passphrase carry no comment.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Final

import bcrypt
from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ledger import errors
from ledger.keys import blobs, sshwire

KEY_BEGIN: Final = "-----BEGIN OPENSSH PRIVATE KEY-----"
KEY_END: Final = "-----END OPENSSH PRIVATE KEY-----"
KEY_MAGIC: Final = b"openssh-key-v1\x00"
MAX_KDF_ROUNDS: Final = 1 << 16
DEFAULT_KDF_ROUNDS: Final = 16  # ssh-keygen's default (-a)
#: the ciphers cryptography decrypts (42.x to 48.x); ssh-keygen's default comes first
LIBRARY_CIPHERS: Final = ("aes256-ctr", "aes256-cbc", "aes256-gcm@openssh.com")
#: the ciphers decrypted here (cipher: key length, mode); all have 16-byte blocks
_OWN_CIPHERS: Final = {
    "aes128-ctr": (16, "ctr"),
    "aes192-ctr": (24, "ctr"),
    "aes128-cbc": (16, "cbc"),
    "aes192-cbc": (24, "cbc"),
    "aes128-gcm@openssh.com": (16, "gcm"),
}
_UNENCRYPTED_BLOCK: Final = 8  # padding block of an unencrypted private part, as ssh-keygen
#: the number of SSH strings (mpints are strings too) holding each key type's private fields
_PRIVATE_FIELDS: Final = {blobs.ED25519: 2, **dict.fromkeys(blobs.ECDSA, 3), blobs.RSA: 6}


@dataclass(frozen=True)
class OpenSshHeader:
    """The clear part of an ``openssh-key-v1`` file, and its private part (maybe encrypted)."""

    cipher: str
    kdf: str
    kdf_options: bytes
    public_blob: bytes
    key_type: str
    private: bytes
    tag: bytes  # after the private part: the AES-GCM tag, empty for other ciphers

    @property
    def encrypted(self) -> bool:
        return self.cipher != "none"


def read_openssh_header(data: bytes, where: str) -> OpenSshHeader:
    """Dearmor an ``openssh-key-v1`` file and read its clear header. KeyProblem if malformed."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise errors.KeyProblem(
            f"{where} is not a valid OpenSSH private key (not ASCII).", hint=blobs.KEY_HINT
        ) from None
    lines = [line.strip() for line in text.strip().splitlines()]
    if not lines or lines[0] != KEY_BEGIN or lines[-1] != KEY_END:
        raise errors.KeyProblem(
            f"{where} is not a complete OpenSSH private key (begin or end line missing).",
            hint=blobs.KEY_HINT,
        )
    try:
        blob = base64.b64decode("".join(lines[1:-1]), validate=True)
    except binascii.Error:
        raise errors.KeyProblem(
            f"{where} is damaged: its base64 content is malformed.", hint=blobs.KEY_HINT
        ) from None
    if not blob.startswith(KEY_MAGIC):
        raise errors.KeyProblem(
            f"{where} is not an openssh-key-v1 private key.", hint=blobs.KEY_HINT
        )
    try:
        reader = sshwire.Reader(blob, len(KEY_MAGIC))
        cipher = reader.string().decode("ascii")
        kdf = reader.string().decode("ascii")
        kdf_options = reader.string()
        count = reader.u32()
        if count != 1:
            raise errors.KeyProblem(
                f"{where} holds {count} keys; only files with one key are supported.",
                hint=blobs.KEY_HINT,
            )
        public_blob = reader.string()
        private = reader.string()
        tag = reader.rest()
        key_type = sshwire.Reader(public_blob).string().decode("ascii", "replace")
    except (sshwire.Malformed, UnicodeDecodeError):
        raise errors.KeyProblem(
            f"{where} is damaged: the key structure is truncated or malformed.",
            hint=blobs.KEY_HINT,
        ) from None
    return OpenSshHeader(cipher, kdf, kdf_options, public_blob, key_type, private, tag)


def passphrase_required(where: str) -> errors.PassphraseRequired:
    return errors.PassphraseRequired(
        f"{where} is encrypted and no passphrase was given.", hint="Give the key's passphrase."
    )


def wrong_passphrase(where: str) -> errors.WrongPassphrase:
    return errors.WrongPassphrase(
        f"the passphrase for {where} is wrong.",
        hint="Give the passphrase the key was encrypted with.",
    )


def _check_header(
    header: OpenSshHeader, passphrase: bytes | None, where: str
) -> tuple[bytes, int] | None:
    """Refuse, before any key derivation, what cannot or must not be decrypted; the KDF's salt
    and rounds of an encrypted file."""
    if header.key_type in blobs.SK_TYPES:
        raise errors.KeyProblem(
            f"{where} is a FIDO security key ({header.key_type}): the file holds only a "
            "handle, and only the token can sign with it.",
            hint="Load it into ssh-agent (`ssh-add` it) and name its public key "
            f"({where}.pub) as the signing key; the token signs through the agent.",
        )
    if header.key_type not in blobs.PRIVATE_KEY_TYPES:
        raise errors.KeyProblem(
            f"{where} is a {header.key_type} key, which is not supported.",
            hint=f"Use one of: {', '.join(blobs.PRIVATE_KEY_TYPES)} "
            "(`ssh-keygen -t ed25519` makes the default kind).",
        )
    if not header.encrypted:
        if header.kdf != "none":
            raise errors.KeyProblem(
                f"{where} is damaged: unencrypted key with a KDF.", hint=blobs.KEY_HINT
            )
        return None
    if header.cipher not in LIBRARY_CIPHERS and header.cipher not in _OWN_CIPHERS:
        raise errors.KeyProblem(
            f"{where} is encrypted with cipher {header.cipher!r}, which is not supported.",
            hint=f"Re-encrypt it with `ssh-keygen -p -Z {LIBRARY_CIPHERS[0]} -f {where}`.",
        )
    if header.kdf != "bcrypt":
        raise errors.KeyProblem(
            f"{where} uses key derivation {header.kdf!r}, which is not supported.",
            hint=f"Re-encrypt it with `ssh-keygen -p -f {where}`.",
        )
    try:
        reader = sshwire.Reader(header.kdf_options)
        salt = reader.string()
        rounds = reader.u32()
        reader.end()
    except sshwire.Malformed:
        raise errors.KeyProblem(
            f"{where} is damaged: malformed KDF options.", hint=blobs.KEY_HINT
        ) from None
    if not salt or not 1 <= rounds <= MAX_KDF_ROUNDS:
        raise errors.KeyProblem(
            f"{where} has unusable KDF options (rounds {rounds}).", hint=blobs.KEY_HINT
        )
    if not passphrase:  # only now: asking for it would be in vain if the options are bad
        raise passphrase_required(where)
    return salt, rounds


def _decrypted(
    header: OpenSshHeader, kdf: tuple[bytes, int], passphrase: bytes, where: str
) -> bytes:
    """The ``openssh-key-v1`` file of a key under one of :data:`_OWN_CIPHERS`, unencrypted:
    cipher and KDF "none", the same public key and the decrypted private part."""
    key_len, mode = _OWN_CIPHERS[header.cipher]
    iv_len = 12 if mode == "gcm" else 16
    if len(header.private) % 16 or len(header.tag) != (16 if mode == "gcm" else 0):
        raise errors.KeyProblem(
            f"{where} is damaged: the encrypted part has a wrong length.", hint=blobs.KEY_HINT
        )
    salt, rounds = kdf
    key_iv = bcrypt.kdf(passphrase, salt, key_len + iv_len, rounds, ignore_few_rounds=True)
    key, iv = key_iv[:key_len], key_iv[key_len:]
    if mode == "gcm":
        try:
            private = AESGCM(key).decrypt(iv, header.private + header.tag, None)
        except InvalidTag:
            raise wrong_passphrase(where) from None
    else:
        cipher_mode = modes.CTR(iv) if mode == "ctr" else modes.CBC(iv)
        decryptor = Cipher(algorithms.AES(key), cipher_mode).decryptor()
        private = decryptor.update(header.private) + decryptor.finalize()
    if private[:4] != private[4:8]:  # the check numbers: equal unless the passphrase is wrong
        raise wrong_passphrase(where)
    clear = KEY_MAGIC + sshwire.string(b"none") + sshwire.string(b"none") + sshwire.string(b"")
    clear += sshwire.U32.pack(1) + sshwire.string(header.public_blob) + sshwire.string(private)
    return _armor(clear)


def load_openssh(
    data: bytes, passphrase: bytes | None, where: str
) -> tuple[blobs.PrivateCrypto, str | None]:
    """The key of an ``openssh-key-v1`` file and its comment (None when encrypted)."""
    header = read_openssh_header(data, where)
    kdf = _check_header(header, passphrase, where)
    if kdf and passphrase and header.cipher in _OWN_CIPHERS:
        data, passphrase = _decrypted(header, kdf, passphrase, where), None
    try:
        private = serialization.load_ssh_private_key(data, passphrase if header.encrypted else None)
    except InvalidTag:  # aes256-gcm: the passphrase does not open it
        raise wrong_passphrase(where) from None
    except ValueError as exc:
        if header.encrypted and "checksum" in str(exc):  # the check bytes differ
            raise wrong_passphrase(where) from None
        raise errors.KeyProblem(f"{where} is damaged: {exc}.", hint=blobs.KEY_HINT) from None
    except UnsupportedAlgorithm as exc:
        raise errors.KeyProblem(
            f"{where} is not supported: {exc}.",
            hint=f"Re-encrypt it with `ssh-keygen -p -Z {LIBRARY_CIPHERS[0]} -f {where}`.",
        ) from None
    private = _supported(private, where)
    if blobs.blob_of(private.public_key()) != header.public_blob:
        raise errors.KeyProblem(
            f"{where} is damaged: public and private parts do not match.", hint=blobs.KEY_HINT
        )
    if header.encrypted:
        return private, None
    try:
        return private, _split_at_comment(header.private, header.key_type)[1]
    except sshwire.Malformed as exc:  # the library has checked this part already
        raise errors.KeyProblem(f"{where} is damaged: {exc}.", hint=blobs.KEY_HINT) from None


def _split_at_comment(private: bytes, key_type: str) -> tuple[int, str]:
    """Where the comment of a clear private part starts, and the comment.

    The part holds two check numbers, the key type, the key's private fields, the comment and
    the padding.
    """
    reader = sshwire.Reader(private)
    reader.u32()
    reader.u32()
    for _ in range(1 + _PRIVATE_FIELDS[key_type]):
        reader.string()
    offset = reader.offset
    return offset, reader.string().decode("utf-8", "replace")


def load_pem(data: bytes, passphrase: bytes | None, where: str) -> blobs.PrivateCrypto:
    """The key of a PEM (PKCS#1, SEC1, PKCS#8, encrypted or not) private key file."""
    try:
        try:
            private = serialization.load_pem_private_key(data, passphrase or None)
        except TypeError:
            if not passphrase:
                raise passphrase_required(where) from None
            private = serialization.load_pem_private_key(data, None)  # given, not needed
    except ValueError:
        if passphrase and pem_encrypted(data):
            raise wrong_passphrase(where) from None
        raise errors.KeyProblem(
            f"{where} is not a valid PEM private key.", hint=blobs.KEY_HINT
        ) from None
    except UnsupportedAlgorithm:
        raise errors.KeyProblem(
            f"{where} holds a key of an unsupported kind.", hint=blobs.KEY_HINT
        ) from None
    return _supported(private, where)


def _supported(private: object, where: str) -> blobs.PrivateCrypto:
    if not isinstance(
        private, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    ):
        raise errors.KeyProblem(
            f"{where} holds a {type(private).__name__}, which is not supported.",
            hint=blobs.KEY_HINT,
        )
    return private


def dump_openssh(
    private: blobs.PrivateCrypto, comment: str, passphrase: bytes | None, kdf_rounds: int
) -> str:
    """An ``openssh-key-v1`` file as ``ssh-keygen`` writes it: with a (non-empty) passphrase,
    encrypted with aes256-ctr and bcrypt-pbkdf of ``kdf_rounds`` rounds (and no comment);
    without one, in clear with the comment."""
    if not passphrase:
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        return _with_comment(pem, comment)
    if not 1 <= kdf_rounds <= MAX_KDF_ROUNDS:
        raise ValueError(f"kdf_rounds must be 1 to {MAX_KDF_ROUNDS}, not {kdf_rounds}")
    encryption = (
        serialization.PrivateFormat.OpenSSH.encryption_builder()
        .kdf_rounds(kdf_rounds)
        .build(passphrase)
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, encryption
    )
    return pem.decode("ascii")


def _with_comment(pem: bytes, comment: str) -> str:
    """Put ``comment`` into an unencrypted ``openssh-key-v1`` file the library wrote.

    The private part is the file's last field (no tag without a cipher); it is rebuilt with
    the comment and padded again.
    """
    header = read_openssh_header(pem, "the new key")
    body = base64.b64decode(b"".join(pem.strip().splitlines()[1:-1]))
    before = body[: len(body) - len(sshwire.string(header.private))]
    offset, _empty = _split_at_comment(header.private, header.key_type)
    private = header.private[:offset] + sshwire.string(comment.encode("utf-8"))
    private += bytes(range(1, -len(private) % _UNENCRYPTED_BLOCK + 1))
    return _armor(before + sshwire.string(private)).decode("ascii")


def _armor(blob: bytes) -> bytes:
    encoded = base64.b64encode(blob).decode("ascii")
    return f"{KEY_BEGIN}\n{sshwire.wrap(encoded)}\n{KEY_END}\n".encode("ascii")


def load_private(
    data: bytes, passphrase: bytes | None, where: str
) -> tuple[blobs.PrivateCrypto, str | None]:
    """The key of a private key file's content (OpenSSH or PEM) and its comment (None when
    it is in an encrypted part)."""
    stripped = data.lstrip()
    if stripped.startswith(KEY_BEGIN.encode()):
        return load_openssh(data, passphrase, where)
    if is_pem_private(stripped):
        return load_pem(data, passphrase, where), ""
    raise _not_private(data, where)


def is_encrypted(data: bytes, where: str) -> bool:
    """Whether a private key file's content needs a passphrase. KeyProblem as load_private."""
    stripped = data.lstrip()
    if stripped.startswith(KEY_BEGIN.encode()):
        return read_openssh_header(data, where).encrypted
    if is_pem_private(stripped):
        return pem_encrypted(data)
    raise _not_private(data, where)


def _not_private(data: bytes, where: str) -> errors.KeyProblem:
    if looks_public(data):
        return errors.KeyProblem(
            f"{where} is a public key, not a private key.",
            hint="Give the private key file (the one without .pub).",
        )
    return errors.KeyProblem(f"{where} is not a private key file.", hint=blobs.KEY_HINT)


def looks_public(data: bytes) -> bool:
    head = data.lstrip()[:64]
    return head.startswith((b"ssh-", b"ecdsa-sha2-", b"sk-ssh-", b"sk-ecdsa-"))


def is_pem_private(data: bytes) -> bool:
    first = data.lstrip().split(b"\n", 1)[0].strip()
    return first.startswith(b"-----BEGIN ") and first.endswith(b"PRIVATE KEY-----")


def pem_encrypted(data: bytes) -> bool:
    return b"ENCRYPTED PRIVATE KEY" in data or b"Proc-Type: 4,ENCRYPTED" in data
