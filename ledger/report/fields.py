"""Lenient readers of record fields for the report.

A report shows whatever the ledger holds, so a field of the wrong type reads as missing
(``""``, ``None``, ``{}``) instead of failing: the verifier, not the report, judges records.
"""

from __future__ import annotations

from typing import Any

from ledger.report import mdsafe


def as_str(value: Any, default: str = "") -> str:
    if value is None:
        return default
    return value if isinstance(value, str) else mdsafe.display_text(value)


def as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def sorted_items(value: Any) -> list[tuple[str, Any]]:
    return sorted((str(k), v) for k, v in as_dict(value).items())
