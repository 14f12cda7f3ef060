"""Package faces that import their modules on first use (PEP 562).

Each package's ``__init__.py`` names what it exports and the module each name lives in;
nothing is imported until a name is first read (``from ledger.store import Ledger`` or
``store.Ledger``). A command then loads only the packages it uses: ``ledger --help`` loads
no git, schema, template or crypto library, and ``ledger verify`` no runbook or report
code. The same names are imported under ``TYPE_CHECKING`` for the type checker;
``tests/test_architecture.py`` checks that the two lists agree.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def attach(
    package: str, exports: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``'s face.

    ``exports`` maps a module's full name to the names the face takes from it.
    """
    home = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = home.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # the next read is an ordinary one
        return value

    def __dir__() -> list[str]:
        return sorted(set(home) | set(vars(sys.modules[package])))

    return __getattr__, __dir__
