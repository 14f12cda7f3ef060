"""Temporary re-export for the package split; removed when importers move.

The code now lives in :mod:`ledger.keys`.
"""

from __future__ import annotations

from ledger.keys import (
    PublicKey,
    SigningKey,
    allowed_signers_line,
    sign_commit,
    split_signed_commit,
    verify_signed_commit,
)

__all__ = [
    "PublicKey",
    "SigningKey",
    "allowed_signers_line",
    "sign_commit",
    "split_signed_commit",
    "verify_signed_commit",
]
