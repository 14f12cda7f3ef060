"""Temporary re-export for the package split; removed when importers move.

Running one command lives in :mod:`ledger.run.process` now.
"""

from ledger.run.process import StreamName

__all__ = ["StreamName"]
