"""runbook-ledger: run runbooks and keep a signed, append-only, replicated git ledger."""

from __future__ import annotations

__version__ = "0.1.0"

FORMAT_VERSION = 1

__all__ = ["FORMAT_VERSION", "__version__"]
