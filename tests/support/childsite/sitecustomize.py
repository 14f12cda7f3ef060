"""Put first on PYTHONPATH for every child process of the tests (see support/sandbox.py).

libgit2 reads ``/etc/gitconfig`` whatever the environment says (it honours neither
GIT_CONFIG_NOSYSTEM nor GIT_CONFIG_SYSTEM): when a child imports pygit2, point its SYSTEM
search path at the sandbox's empty directory. Without pygit2 nothing is imported (children
that never use it keep their start-up time).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Sequence
from types import ModuleType

_SYSTEM = os.environ.get("RUNBOOK_TESTS_LIBGIT2_SYSTEM")


class _IsolatePygit2(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "pygit2":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        loader = spec.loader if spec else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_and_isolate(module: ModuleType) -> None:
            exec_module(module)
            module.settings.search_path[module.enums.ConfigLevel.SYSTEM] = _SYSTEM

        loader.exec_module = exec_and_isolate  # type: ignore[method-assign]
        return spec


if _SYSTEM:
    sys.meta_path.insert(0, _IsolatePygit2())
