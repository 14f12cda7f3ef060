"""The append-only tree of FORMAT.md §4: the paths a record adds, nested for comparison."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from ledger.verify.rules import INCIDENT

# --- trees --------------------------------------------------------------------------------


def nest(paths: Collection[str]) -> dict[str, Any]:
    """Paths as a nested dict: directory name -> dict, file name -> None."""
    root: dict[str, Any] = {}
    for path in paths:
        parts = path.split("/")
        node = root
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if nxt is None:  # a file and a directory of the same name: caught by layout
                break
            node = nxt
        else:
            node.setdefault(parts[-1], None)
    return root


def expected_file_path(rec: dict[str, Any], rec_path: str, name: str) -> str | None:
    if name == "incident-index":
        run = rec.get("run")
        if rec.get("kind") != "run.started" or not isinstance(run, str):
            return None
        meta = rec.get("files", {}).get(name, {})
        path = meta.get("path") if isinstance(meta, dict) else None
        if isinstance(path, str):
            parts = path.split("/")
            if len(parts) == 3 and parts[0] == "incidents" and INCIDENT.fullmatch(parts[1]):
                return f"incidents/{parts[1]}/{run}"
        return None
    if not rec_path.endswith(".json"):
        return None
    return f"{rec_path[: -len('.json')]}.{name}"
