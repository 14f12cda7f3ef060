"""This copy's last verified head (FORMAT.md §8): :class:`VerifiedState` and its JSON form.

Where it is kept, and every decision made from it, is :mod:`ledger.verify.local`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ledger import errors
from ledger.verify import rules, trust

STATE_FORMAT = 1


@dataclass
class VerifiedState:
    """What a successful verification established, to resume from next time.

    ``prev_sha256`` is the SHA-256 of the head commit object (what the next record's
    ``Ledger-Prev-Sha256`` must say); ``keys`` is the trust state at the head: every key
    ever trusted, in the order it was added, with its revocation if any.
    """

    genesis: str
    head: str
    seq: int
    prev_sha256: str
    ledger_id: str
    keys: list[trust.TrustedKey]
    verified_at: str = field(default="", compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "genesis": self.genesis,
            "head": self.head,
            "seq": self.seq,
            "prev_sha256": self.prev_sha256,
            "ledger_id": self.ledger_id,
            "keys": [k.to_json() for k in self.keys],
            "verified_at": self.verified_at,
        }

    @classmethod
    def from_json(cls, obj: Any) -> VerifiedState:
        """Parse a saved state; :class:`InputError` if it is malformed."""
        try:
            if not isinstance(obj, dict) or obj.get("format") != STATE_FORMAT:
                raise ValueError("not a verified-state object of format 1")
            keys = []
            for k in obj["keys"]:
                keys.append(
                    trust.TrustedKey(
                        principal=_want(k["principal"], str),
                        key=_want(k["key"], str),
                        fingerprint=_want(k["fingerprint"], str),
                        added_seq=_want(k["added_seq"], int),
                        added_time=_want_opt(k["added_time"], str),
                        revoked_seq=_want_opt(k["revoked_seq"], int),
                        revoked_time=_want_opt(k["revoked_time"], str),
                    )
                )
            state = cls(
                genesis=_want(obj["genesis"], str),
                head=_want(obj["head"], str),
                seq=_want(obj["seq"], int),
                prev_sha256=_want(obj["prev_sha256"], str),
                ledger_id=_want(obj["ledger_id"], str),
                keys=keys,
                verified_at=_want(obj.get("verified_at", ""), str),
            )
            if not (rules.HEX40.fullmatch(state.genesis) and rules.HEX40.fullmatch(state.head)):
                raise ValueError("genesis and head must be 40 hex digits")
            if state.seq < 0 or not rules.SHA256.fullmatch(state.prev_sha256):
                raise ValueError("bad seq or prev_sha256")
        except (KeyError, TypeError, ValueError) as exc:
            raise errors.InputError(
                f"the saved verification state is malformed ({exc}).",
                hint="Delete it and verify the whole ledger again.",
            ) from None
        return state


def _want(value: Any, typ: type) -> Any:
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise TypeError(f"expected {typ.__name__}, got {type(value).__name__}")
    return value


def _want_opt(value: Any, typ: type) -> Any:
    return None if value is None else _want(value, typ)
