"""The trust replay of FORMAT.md §7: keys trusted from the genesis signers and changed by
``key.added`` / ``key.revoked`` records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
