"""Signatures and trust (FORMAT.md §6, §7): verifying a commit's SSHSIG over its payload,
and replaying the trusted keys from the genesis signers and the ``key.added`` /
``key.revoked`` records."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from ledger import errors
from ledger import keys as ledger_keys
from ledger.verify import findings, kinds, objects, sk


@dataclass
class TrustedKey:
    """A key the ledger trusted at some point, with the records that added and revoked it.

    ``added_seq`` is 0 and ``added_time`` ``None`` for the genesis signers.
    """

    principal: str
    key: str
    fingerprint: str
    added_seq: int
    added_time: str | None
    revoked_seq: int | None = None
    revoked_time: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_seq is None

    def to_json(self) -> dict[str, Any]:
        return {
            "principal": self.principal,
            "key": self.key,
            "fingerprint": self.fingerprint,
            "added_seq": self.added_seq,
            "added_time": self.added_time,
            "revoked_seq": self.revoked_seq,
            "revoked_time": self.revoked_time,
        }


class Trust:
    """The keys trusted at the commit being checked, replayed along the chain.

    ``by_fingerprint`` holds each key's latest entry; ``history`` every key ever trusted,
    in the order it was added (what :class:`~ledger.verify.state.VerifiedState` saves).
    ``known`` is false when the chain's start could not be read, so nothing is trusted.
    """

    def __init__(self) -> None:
        self.by_fingerprint: dict[str, TrustedKey] = {}
        self.history: list[TrustedKey] = []
        self.known = True

    def init_from_genesis(self, rec: dict[str, Any]) -> None:
        """Trust the genesis record's well-formed signers (and nothing else)."""
        self.by_fingerprint.clear()
        self.history.clear()
        data = rec.get("data")
        signers = data.get("signers") if isinstance(data, dict) else None
        for s in signers if isinstance(signers, list) else []:
            if not isinstance(s, dict):
                continue
            problems, fp = kinds.check_key_line(s.get("key"), s.get("fingerprint"), "signer")
            if problems or fp is None or not isinstance(s.get("principal"), str):
                continue
            entry = TrustedKey(s["principal"], s["key"], fp, 0, None)
            if fp not in self.by_fingerprint:
                self.by_fingerprint[fp] = entry
                self.history.append(entry)
        self.known = True

    def load(self, keys: list[TrustedKey]) -> None:
        """Resume from a saved trust state (copied: the saved one is not changed)."""
        self.by_fingerprint.clear()
        self.history = [TrustedKey(**k.to_json()) for k in keys]
        for entry in self.history:
            self.by_fingerprint[entry.fingerprint] = entry

    def snapshot(self) -> list[TrustedKey]:
        """A copy of every key ever trusted, to save."""
        return [TrustedKey(**k.to_json()) for k in self.history]

    def apply_key_record(self, rec: dict[str, Any]) -> None:
        """A verified, well-formed ``key.added`` / ``key.revoked`` record changes trust.

        Adding a key already trusted, or revoking one that is not, changes nothing."""
        data = rec["data"]
        if rec["kind"] == "key.added":
            fp = data["fingerprint"]
            current = self.by_fingerprint.get(fp)
            if current is not None and current.active:
                return
            entry = TrustedKey(data["principal"], data["key"], fp, rec["seq"], rec["time"])
            self.by_fingerprint[fp] = entry
            self.history.append(entry)
        else:
            current = self.by_fingerprint.get(data["fingerprint"])
            if current is not None and current.active:
                current.revoked_seq = rec["seq"]
                current.revoked_time = rec["time"]

    def check(self, fp: str, note: findings.Note) -> bool:
        """Whether the signer ``fp`` is trusted now (``untrusted-key``, ``revoked-key``)."""
        if not self.known:
            return False
        entry = self.by_fingerprint.get(fp)
        if entry is None:
            note("untrusted-key", f"signed by {fp}, which this ledger does not trust")
            return False
        if not entry.active:
            note(
                "revoked-key",
                f"signed by {fp} ({entry.principal}), revoked at seq {entry.revoked_seq}",
            )
            return False
        return True


#: The order n of each ECDSA curve's group (SEC 2). (r, s) and (r, n - s) are both valid
#: signatures, so a third party could give a signed commit a new id: only s <= n/2 is
#: accepted (FORMAT.md §6). Declared apart from the writer's table; tests pin the two.
ECDSA_ORDER = {
    b"ecdsa-sha2-nistp256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    b"ecdsa-sha2-nistp384": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AEC"
        "EC196ACCC52973",
        16,
    ),
    b"ecdsa-sha2-nistp521": int(
        "01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFA51868783BF2F96"
        "6B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409",
        16,
    ),
}


def _high_s(alg: bytes, signature: bytes) -> bool:
    """Whether an ``ecdsa-sha2-*`` signature blob's s is above half the curve order."""
    order = ECDSA_ORDER.get(alg)
    if order is None:
        return False
    _, pos = objects.read_string(signature, 0)
    inner, _ = objects.read_string(signature, pos)
    _r, pos = objects.read_string(inner, 0)
    s, _ = objects.read_string(inner, pos)
    return int.from_bytes(s, "big") > order // 2


#: What an SSHSIG signs, up to the digest, for namespace ``git``, no reserved bytes and
#: SHA-512 (the only values accepted): ``"SSHSIG" || string("git") || string("") ||
#: string("sha512") ||`` the 64-byte digest's length.
_SIGNED_PREFIX = (
    objects.SSHSIG_MAGIC
    + objects.ssh_string(b"git")
    + objects.ssh_string(b"")
    + objects.ssh_string(b"sha512")
    + (64).to_bytes(4, "big")
)


class Signatures:
    """Checks commit signatures (FORMAT.md §6), parsing each signer's key once.

    ``require_user_presence``: a security key's signature without the user-presence flag is
    a ``user-presence`` finding; otherwise it is accepted (as stock ``ssh-keygen -Y verify``
    and ``git verify-commit`` accept it) and counted in ``without_presence``."""

    def __init__(self, require_user_presence: bool = False) -> None:
        self._keys: dict[bytes, tuple[ledger_keys.PublicKey, bool]] = {}
        self.require_user_presence = require_user_presence
        self.without_presence = 0

    def public_key(self, blob: bytes) -> ledger_keys.PublicKey:
        return self._key(blob)[0]

    def _key(self, blob: bytes) -> tuple[ledger_keys.PublicKey, bool]:
        """The key of ``blob`` and whether its type is a security key's."""
        known = self._keys.get(blob)
        if known is None:
            pk = ledger_keys.PublicKey.from_blob(blob)
            known = pk, objects.read_string(blob, 0)[0] in sk.SK_TYPES
            self._keys[blob] = known
        return known

    def check(self, commit: objects.Commit, note: findings.Note) -> str | None:
        """Verify the commit's signature; the signer's fingerprint, or None."""
        for problem in commit.signature_problems:
            note("signature-headers", problem)
        if not commit.signatures:
            note("unsigned", "the commit has no gpgsig header")
            return None
        if len(commit.signatures) > 1:
            note("signature-headers", f"the commit has {len(commit.signatures)} signature headers")
            return None
        if commit.signature_problems:
            return None
        try:
            fingerprint, flags = self._verify(commit.signatures[0], commit.payload)
        except objects.SigError as exc:
            note("bad-signature", str(exc))
        except errors.KeyProblem as exc:
            note("bad-signature", f"the signature's public key is unusable: {exc.message}")
        else:
            if flags is None or flags & sk.USER_PRESENT:
                return fingerprint
            if not self.require_user_presence:
                self.without_presence += 1
                return fingerprint
            note(
                "user-presence",
                f"the security key {fingerprint} signed without user presence (flags "
                f"0x{flags:02x}: the token was not touched), and presence is required",
            )
        return None

    def _verify(self, armored: str, payload: bytes) -> tuple[str, int | None]:
        """The signer's fingerprint and, for a security key, the signature's flags;
        :class:`SigError` or :class:`KeyProblem` if it fails."""
        sig = objects.parse_sshsig(armored)
        if sig.namespace != b"git":
            raise objects.SigError(f"namespace is {sig.namespace!r}, not 'git'")
        if sig.hash_algorithm != b"sha512":
            raise objects.SigError(f"hash is {sig.hash_algorithm!r}, not 'sha512'")
        if sig.reserved:
            raise objects.SigError("the reserved field is not empty")
        alg, _ = objects.read_string(sig.signature, 0)
        if alg == b"ssh-rsa":
            raise objects.SigError("RSA signatures with SHA-1 are not accepted")
        pk, is_sk = self._key(sig.public_key)
        signed = _SIGNED_PREFIX + hashlib.sha512(payload).digest()  # (namespace etc. checked)
        if alg in sk.SK_TYPES or is_sk:
            try:
                flags = sk.verify(sig.public_key, sig.signature, signed)
            except objects.SigError as exc:
                raise objects.SigError(f"{exc} (security key {pk.fingerprint})") from None
            return str(pk.fingerprint), flags
        if not pk.verify(sig.signature, signed):
            raise objects.SigError(f"the signature by {pk.fingerprint} does not verify")
        if _high_s(alg, sig.signature):
            raise objects.SigError(
                f"the ECDSA signature by {pk.fingerprint} is high-S (s > n/2): its mirror "
                "image, which anyone can make from a good signature to change a commit's id"
            )
        return str(pk.fingerprint), None
