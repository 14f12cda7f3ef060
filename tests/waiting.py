"""Temporary re-export for the package split; removed when importers move.

``wait_for`` lives in ``support/waiting.py``.
"""

from support.waiting import wait_for

__all__ = ["wait_for"]
