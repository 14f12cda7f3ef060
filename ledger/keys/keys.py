"""OpenSSH keys: :class:`PublicKey` (parsed, compared, verifying raw SSH signatures),
:class:`SigningKey` (generated, loaded from and saved to the files ``ssh-keygen`` writes, signing)
and :class:`SigningIdentity`, what every signer offers (a :class:`SigningKey`, or an identity of
``ssh-agent``: :class:`ledger.keys.agent.AgentKey`).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Final, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from ledger import errors
from ledger.keys import blobs, files, keyformat, sshwire

_RSA_SIG_HASHES: Final[dict[bytes, type[hashes.HashAlgorithm]]] = {
    b"rsa-sha2-512": hashes.SHA512,
    b"rsa-sha2-256": hashes.SHA256,
}


#: An Ed25519 signature blob up to its 64 signature bytes.
_ED25519_SIG_HEAD: Final = sshwire.string(b"ssh-ed25519") + sshwire.U32.pack(64)


class PublicKey:
    """An OpenSSH public key. Immutable; equal and hashed by its wire blob.

    Build one with :meth:`parse` (a key line) or :meth:`from_blob`; the comment of a parsed
    line is kept in :attr:`comment` but is not part of equality.
    """

    __slots__ = ("_crypto", "_fingerprint", "application", "blob", "comment", "key_type")

    key_type: str
    blob: bytes
    comment: str
    application: bytes | None
    """The FIDO application of a security key (``sk-*`` types, usually ``ssh:``); else None."""
    _crypto: blobs.PublicCrypto
    _fingerprint: str

    def __init__(
        self,
        key_type: str,
        blob: bytes,
        crypto: blobs.PublicCrypto,
        comment: str = "",
        application: bytes | None = None,
    ) -> None:
        """Internal; use :meth:`parse` or :meth:`from_blob`."""
        digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
        object.__setattr__(self, "key_type", key_type)
        object.__setattr__(self, "application", application)
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
            return public_key_from_blob(bytes(blob))
        except sshwire.Unsupported as exc:
            raise errors.KeyProblem(
                f"unsupported SSH public key: {exc}.",
                hint=f"Use one of: {', '.join(blobs.SUPPORTED_KEY_TYPES)} "
                "(Ed25519 is the default).",
            ) from None
        except sshwire.Malformed as exc:
            raise errors.KeyProblem(
                f"malformed SSH public key: {exc}.", hint=blobs.KEY_HINT
            ) from None

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        """Parse an OpenSSH public key line ``<type> <base64> [comment]``."""
        line = text.strip()
        if not line or "\n" in line or "\r" in line:
            raise errors.KeyProblem(
                "expected exactly one OpenSSH public key line ('<type> <base64> [comment]').",
                hint="Give the content of a .pub file, for example "
                "'ssh-ed25519 AAAAC3Nza... alice@host'.",
            )
        fields = line.split(None, 2)
        if line.startswith("-----BEGIN") or len(fields) < 2:
            raise errors.KeyProblem(
                f"not an OpenSSH public key line: {line[:40]!r}.",
                hint="Give the content of a .pub file ('<type> <base64> [comment]'), "
                "not a private key.",
            )
        try:
            blob = base64.b64decode(fields[1], validate=True)
        except binascii.Error:
            raise errors.KeyProblem(
                f"the base64 part of the public key line is malformed: {fields[1][:40]!r}.",
                hint="Copy the whole line of the .pub file again.",
            ) from None
        key = cls.from_blob(blob)
        if key.key_type != fields[0]:
            raise errors.KeyProblem(
                f"the public key line says {fields[0]!r} but holds a {key.key_type} key.",
                hint="Copy the whole line of the .pub file again.",
            )
        comment = fields[2].strip() if len(fields) == 3 else ""
        return key._with_comment(comment) if comment else key

    @classmethod
    def from_crypto(cls, key: blobs.PublicCrypto, comment: str = "") -> PublicKey:
        """Wrap a cryptography public key object."""
        try:
            pub = public_key_from_blob(blobs.blob_of(key))
        except sshwire.Malformed as exc:
            raise errors.KeyProblem(
                f"unsupported public key: {exc}.", hint=blobs.KEY_HINT
            ) from None
        return pub._with_comment(comment) if comment else pub

    def _with_comment(self, comment: str) -> PublicKey:
        return PublicKey(self.key_type, self.blob, self._crypto, comment, self.application)

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
    def is_security_key(self) -> bool:
        """Whether this is a FIDO security key (``sk-ssh-ed25519@openssh.com``,
        ``sk-ecdsa-sha2-nistp256@openssh.com``), which signs only on its token."""
        return self.application is not None

    @property
    def crypto_key(self) -> blobs.PublicCrypto:
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
        refused, as OpenSSH refuses them for SSHSIG). Malformed blobs give False. A FIDO key's
        signature is checked as :func:`verify_sk` does (whatever its flags say).
        """
        if self.application is not None:
            return verify_sk(self, signature, data) is not None
        key = self._crypto
        if (
            len(signature) == len(_ED25519_SIG_HEAD) + 64
            and signature.startswith(_ED25519_SIG_HEAD)
            and isinstance(key, ed25519.Ed25519PublicKey)
        ):  # the common case, parsed at once: string("ssh-ed25519") || string(64 bytes)
            sig = signature[len(_ED25519_SIG_HEAD) :]
            if _sodium_accepts(sig, data, self.blob[-32:]):
                return True
            try:
                key.verify(sig, data)  # the rule: what libsodium refuses is judged here
            except InvalidSignature:
                return False
            return True
        try:
            reader = sshwire.Reader(signature)
            sig_type = reader.string()
            sig = reader.string()
            reader.end()
            if isinstance(key, ed25519.Ed25519PublicKey):
                return False  # (an Ed25519 signature has exactly the shape checked above)
            if isinstance(key, ec.EllipticCurvePublicKey):
                if sig_type != self.key_type.encode():
                    return False
                inner = sshwire.Reader(sig)
                r = inner.mpint()
                s = inner.mpint()
                inner.end()
                if r == 0 or s == 0:
                    return False
                hash_cls = blobs.ECDSA[self.key_type][2]
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
        except (InvalidSignature, sshwire.Malformed):
            return False


@functools.cache
def _sodium() -> Callable[[bytes, bytes], bytes]:
    import nacl.bindings  # about 10 ms: loaded by the first Ed25519 check

    return nacl.bindings.crypto_sign_open


def _sodium_accepts(sig: bytes, data: bytes, raw_key: bytes) -> bool:
    """Whether libsodium accepts ``sig`` as the Ed25519 signature of ``data`` by the 32-byte
    key ``raw_key``: a fast path (about 95 us per check against OpenSSL's 170 us on the
    2-core development machine), never the rule.

    libsodium checks what OpenSSL checks (S < L, the point A decodes, R = [S]B - [k]A,
    compared encoded) and refuses more (a non-canonical A; a small-order A or R), so what
    it accepts OpenSSL accepts; what it refuses goes to OpenSSL, whose verdict stands. The
    two libraries' verdicts are therefore exactly OpenSSL's (``tests/test_keys_sodium.py``).
    """
    import nacl.exceptions

    try:
        _sodium()(sig + data, raw_key)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        return False
    return True


def sk_signed_data(application: bytes, flags: int, counter: int, data: bytes) -> bytes:
    """What a FIDO token signs for ``data`` (PROTOCOL.u2f): SHA-256 of the application, the
    flags byte, the counter (big-endian uint32) and SHA-256 of the data (69 bytes)."""
    return (
        hashlib.sha256(application).digest()
        + bytes([flags])
        + sshwire.U32.pack(counter)
        + hashlib.sha256(data).digest()
    )


def verify_sk(key: PublicKey, signature: bytes, data: bytes) -> int | None:
    """The flags of ``signature`` if it is the FIDO key ``key``'s valid signature of ``data``,
    else None (also for a key that is not a FIDO key).

    The blob is ``string type, string signature, byte flags, uint32 counter`` with the type
    that of the key; Ed25519 signs :func:`sk_signed_data` itself, ECDSA P-256 its SHA-256.
    An ECDSA signature must be low-S (as this module writes ECDSA), so that no one can turn a
    good signature into a second one. Whether the user-presence flag is required is the
    caller's policy.
    """
    if key.application is None:
        return None
    try:
        reader = sshwire.Reader(signature)
        sig_type = reader.string()
        sig = reader.string()
        flags = reader.rest()
        if sig_type != key.key_type.encode() or len(flags) != 5:
            return None
        signed = sk_signed_data(key.application, flags[0], sshwire.U32.unpack(flags[1:])[0], data)
        crypto = key.crypto_key
        if isinstance(crypto, ed25519.Ed25519PublicKey):
            if len(sig) != 64:
                return None
            crypto.verify(sig, signed)
            return flags[0]
        if not isinstance(crypto, ec.EllipticCurvePublicKey):
            return None
        inner = sshwire.Reader(sig)
        r = inner.mpint()
        s = inner.mpint()
        inner.end()
        inner_type = blobs.SK_TYPES[key.key_type]
        if r == 0 or s == 0 or s > blobs.ECDSA_ORDER[inner_type] // 2:
            return None
        crypto.verify(encode_dss_signature(r, s), signed, ec.ECDSA(hashes.SHA256()))
        return flags[0]
    except (InvalidSignature, sshwire.Malformed):
        return None


def low_s(signature: bytes) -> bytes:
    """An SSH signature blob with an ECDSA ``s`` above half the curve order replaced by
    ``n - s`` (``ecdsa-sha2-*`` and ``sk-ecdsa-sha2-nistp256@openssh.com``, whose flags and
    counter are kept); other blobs unchanged. Signers that are not this module (an agent, a
    token) may return either form; a verifier accepts only the low one (FORMAT.md §6)."""
    try:
        reader = sshwire.Reader(signature)
        sig_type = reader.string().decode("ascii")
        inner = reader.string()
        tail = reader.rest()
        curve_type = blobs.SK_TYPES.get(sig_type, sig_type)
        order = blobs.ECDSA_ORDER.get(curve_type)
        if order is None:
            return signature
        numbers = sshwire.Reader(inner)
        r = numbers.mpint()
        s = numbers.mpint()
        numbers.end()
    except (sshwire.Malformed, UnicodeDecodeError):
        return signature  # not ours to judge here: the verification refuses it
    if s <= order // 2:
        return signature
    fixed = sshwire.mpint(r) + sshwire.mpint(order - s)
    return sshwire.string(sig_type.encode()) + sshwire.string(fixed) + tail


@functools.lru_cache(maxsize=4096)
def public_key_from_blob(blob: bytes) -> PublicKey:
    key_type, crypto, application = blobs.decode_key(blob)
    return PublicKey(key_type, blob, crypto, "", application)


def _public_key_with_comment(blob: bytes, comment: str) -> PublicKey:
    key = PublicKey.from_blob(blob)
    return key._with_comment(comment) if comment else key


class SigningIdentity(Protocol):
    """What signs records: its public key, a comment (the default principal may come from
    it) and :meth:`sign`, which returns an SSH signature blob (``string type, string sig``
    and, for FIDO keys, the flags and counter after it) of ``data``."""

    public_key: PublicKey
    comment: str

    def sign(self, data: bytes) -> bytes: ...


class SigningKey:
    """A private signing key (Ed25519 by default; ECDSA and RSA when loaded)."""

    __slots__ = ("_private", "comment", "public_key")

    _private: blobs.PrivateCrypto
    public_key: PublicKey
    comment: str

    def __init__(self, private: blobs.PrivateCrypto, comment: str = "") -> None:
        if not isinstance(
            private,
            ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
        ):
            raise errors.KeyProblem(
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
        """Load a private key file as ``ssh-keygen`` writes it (or PEM/PKCS#8); an encrypted
        OpenSSH file may use any AES cipher (ctr, cbc, gcm; see ``keyformat``).

        Raises KeyProblem when the file is missing, unreadable, not a private key or of an
        unsupported type; its subclasses PassphraseRequired when the key is encrypted and no
        passphrase was given, WrongPassphrase when the passphrase is wrong. The comment is
        the file's own, or for an encrypted file that of ``PATH.pub`` if it holds this key.
        """
        path = Path(path).expanduser()
        data = files.read_key_file(path)
        private, comment = keyformat.load_private(data, _secret(passphrase), str(path))
        key = cls._checked(private, comment or "", str(path))
        if comment is None:
            key.comment = files.pub_file_comment(path, key.public_key.openssh())
        return key

    @classmethod
    def from_openssh(
        cls, data: bytes | str, passphrase: bytes | str | None = None, *, where: str = "the key"
    ) -> SigningKey:
        """Parse the content of an OpenSSH private key file (the comment of an encrypted
        one is not read)."""
        raw = data.encode("ascii", "replace") if isinstance(data, str) else data
        private, comment = keyformat.load_openssh(raw, _secret(passphrase), where)
        return cls._checked(private, comment or "", where)

    @classmethod
    def _checked(cls, private: blobs.PrivateCrypto, comment: str, where: str) -> SigningKey:
        try:
            return cls(private, comment)
        except errors.KeyProblem as exc:
            raise errors.KeyProblem(f"{where}: {exc.message}", hint=exc.hint) from None

    # -- serialisation

    def private_openssh(
        self,
        passphrase: bytes | str | None = None,
        *,
        kdf_rounds: int = keyformat.DEFAULT_KDF_ROUNDS,
    ) -> str:
        """The private key as an OpenSSH private key file, as ``ssh-keygen`` writes it.

        With a (non-empty) passphrase it is encrypted with aes256-ctr and bcrypt-pbkdf of
        ``kdf_rounds`` rounds, and the comment is left out (it is in the ``.pub`` file).
        """
        return keyformat.dump_openssh(self._private, self.comment, _secret(passphrase), kdf_rounds)

    def save(
        self,
        path: Path | str,
        passphrase: bytes | str | None = None,
        *,
        kdf_rounds: int = keyformat.DEFAULT_KDF_ROUNDS,
    ) -> None:
        """Write the private key to ``path`` (mode 0600) and ``path.pub`` (mode 0644).

        Never overwrites: FileExists if either file exists. KeyProblem if the files
        cannot be created.
        """
        path = Path(path).expanduser()
        pub_path = path.with_name(path.name + ".pub")
        for target in (path, pub_path):
            if target.exists() or target.is_symlink():
                raise errors.FileExists(
                    f"{target} already exists; a key file is never overwritten.",
                    hint="Choose another path, or move the old key away first.",
                )
        private_text = self.private_openssh(passphrase, kdf_rounds=kdf_rounds).encode("ascii")
        comment = " ".join(self.comment.split())  # one line, whatever the comment holds
        public_text = (f"{self.public_key.openssh()} {comment}".rstrip() + "\n").encode("utf-8")
        files.write_new_file(path, private_text, 0o600)
        try:
            files.write_new_file(pub_path, public_text, 0o644)
        except (errors.KeyProblem, errors.FileExists):
            path.unlink(missing_ok=True)
            raise
        files.fsync_dir(path.parent)

    # -- signing

    def sign(self, data: bytes) -> bytes:
        """An SSH signature blob of ``data`` (Ed25519; ECDSA, low-S; RSA with rsa-sha2-512)."""
        key = self._private
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return sshwire.string(b"ssh-ed25519") + sshwire.string(key.sign(data))
        if isinstance(key, ec.EllipticCurvePrivateKey):
            key_type = self.public_key.key_type
            der = key.sign(data, ec.ECDSA(blobs.ECDSA[key_type][2]()))
            r, s = decode_dss_signature(der)
            order = blobs.ECDSA_ORDER[key_type]
            if s > order // 2:
                s = order - s  # low-S: the one form of the two a verifier accepts (§6)
            return sshwire.string(key_type.encode()) + sshwire.string(
                sshwire.mpint(r) + sshwire.mpint(s)
            )
        sig = key.sign(data, padding.PKCS1v15(), hashes.SHA512())
        return sshwire.string(b"rsa-sha2-512") + sshwire.string(sig)


def _secret(passphrase: bytes | str | None) -> bytes | None:
    return passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
