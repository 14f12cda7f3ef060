"""The fleet: many ledgers in shared git servers (docs/FLEET.md).

Modules:

- ``witness``: runner-side witnessing: the other ledgers' heads a shared remote holds,
  fetched into the runner's witness cache and appended as a signed ``witness`` record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ledger import lazy

if TYPE_CHECKING:
    from ledger.fleet.witness import Witnessed, WitnessHead, append_heads, append_witness

__getattr__, __dir__ = lazy.attach(
    __name__,
    {
        "ledger.fleet.witness": ("WitnessHead", "Witnessed", "append_heads", "append_witness"),
    },
)

__all__ = ["WitnessHead", "Witnessed", "append_heads", "append_witness"]
