"""Temporary re-export for the package split; removed when importers move.

The git object codec is now :mod:`ledger.format.gitobj`; the pack writer is
:mod:`ledger.store.packs`.
"""

from ledger.format.gitobj import add_signature

__all__ = ["add_signature"]
