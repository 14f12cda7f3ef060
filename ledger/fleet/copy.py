"""STUB of FLEETCOPY's copy module (FLEET-CONTRACT §3: ``open_copy``, ``heads``), only so
that the fleet report runs end to end before the real one lands; the merger drops it."""

from __future__ import annotations

import re
from pathlib import Path

import pygit2

from ledger import errors

_REF = re.compile(r"^refs/fleet/([^/]+)/([0-9a-f]{32})/main$")


def open_copy(path: Path) -> pygit2.Repository:
    try:
        repo = pygit2.Repository(str(path))
    except (pygit2.GitError, KeyError) as exc:
        raise errors.LedgerNotFound(
            f"{path} is not a fleet copy ({exc}).",
            hint="Make one with 'ledger fleet clone URL DIR' and pass --fleet DIR.",
        ) from None
    try:
        fleet = repo.config.get_bool("ledger.fleet")
    except (KeyError, pygit2.GitError):
        fleet = False
    if not fleet:
        raise errors.LedgerNotFound(
            f"{path} is a git repository but not a fleet copy (no ledger.fleet = true).",
            hint="Make one with 'ledger fleet clone URL DIR' and pass --fleet DIR.",
        )
    return repo


def heads(repo: pygit2.Repository) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for name in repo.references:
        m = _REF.match(name)
        if m:
            out.setdefault(m.group(2), {})[m.group(1)] = str(repo.references[name].target)
    return out
