"""Building the new trees of an append (a base tree plus new files, never replacing one),
and reading blobs."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import pygit2

from ledger import errors
from ledger.format import gitobj
from ledger.store import packs

CORRUPT_HINT = (
    "Run 'ledger verify' to see what is damaged; restore from a remote with 'ledger clone'."
)


def blob_data(repo: pygit2.Repository, oid: pygit2.Oid) -> bytes:
    """The content of the blob ``oid``; :class:`StorageError` if it is not a blob."""
    try:
        obj = repo.get(oid)
    except (ValueError, pygit2.GitError) as exc:
        raise errors.CorruptLedger(
            f"the ledger at {repo.path} is corrupt: the blob {oid} cannot be read ({exc}).",
            hint=CORRUPT_HINT,
        ) from None
    if not isinstance(obj, pygit2.Blob):
        raise errors.CorruptLedger(
            f"object {oid} is not a file; the ledger at {repo.path} is damaged.",
            hint=CORRUPT_HINT,
        )
    return bytes(obj.data)


class Trees:
    """Builds the new trees of an append: a base tree plus new files, never replacing one.

    Base trees are read from the repository, or taken from the trees this object built for
    the previous append (the next append of a run builds on exactly those), so a run's
    growing directory is not parsed again at every step. Entries are kept as dicts in git's
    order; a new name that sorts after the others (a run's next record) is simply appended.
    """

    def __init__(self, repo: pygit2.Repository) -> None:
        self.repo = repo
        self._built: dict[bytes, dict[bytes, tuple[bytes, bytes]]] = {}
        self._raw: dict[bytes, bytes] = {}  # the serialized trees of the last append

    def entries(self, oid: bytes, where: str) -> dict[bytes, tuple[bytes, bytes]]:
        """name -> (mode, id) of the tree ``oid``, in git's order."""
        hit = self._built.get(oid)
        if hit is not None:
            return hit
        try:
            obj_type, raw = self.repo.odb.read(pygit2.Oid(raw=oid))
        except (KeyError, ValueError, pygit2.GitError) as exc:
            raise errors.CorruptLedger(
                f"the ledger at {self.repo.path} is corrupt: the tree {oid.hex()} "
                f"({where or '/'}) cannot be read ({exc}).",
                hint=CORRUPT_HINT,
            ) from None
        if obj_type != pygit2.enums.ObjectType.TREE:
            raise errors.StorageError(f"{where or '/'} is a file in the ledger, not a directory.")
        try:
            parsed = gitobj.parse_tree(raw)
        except ValueError as exc:
            raise errors.CorruptLedger(
                f"the tree {oid.hex()} at {where or '/'} is damaged ({exc}).",
                hint="Run 'ledger verify' to see what is wrong.",
            ) from None
        keys = [gitobj.git_order(name, mode) for mode, name, _ in parsed]
        if any(a >= b for a, b in itertools.pairwise(keys)):
            raise errors.StorageError(
                f"the tree at {where or '/'} is not in git's order; the ledger is damaged.",
                hint="Run 'ledger verify' to see what is wrong.",
            )
        return {name: (mode, eid) for mode, name, eid in parsed}

    def add(
        self, objects: packs.PackWriter, base: bytes | None, additions: Mapping[str, bytes]
    ) -> bytes:
        """The id of ``base`` plus ``additions`` (path -> blob id); new trees go to
        ``objects``."""
        nested: dict[str, Any] = {}
        for path, oid in additions.items():
            parts = path.split("/")
            node = nested
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = oid
        built: dict[bytes, dict[bytes, tuple[bytes, bytes]]] = {}
        raws: dict[bytes, bytes] = {}
        oid = self._build(objects, base, nested, "", built, raws)
        self._built, self._raw = built, raws
        return oid

    def _build(
        self,
        objects: packs.PackWriter,
        base: bytes | None,
        node: Mapping[str, Any],
        where: str,
        built: dict[bytes, dict[bytes, tuple[bytes, bytes]]],
        raws: dict[bytes, bytes],
    ) -> bytes:
        entries = dict(self.entries(base, where)) if base is not None else {}
        last = gitobj.git_order(
            *next(((k, v[0]) for k, v in reversed(entries.items())), (b"", b""))
        )
        in_order = True
        added: list[bytes] = []  # new names, in order
        changes = sorted(
            ((name.encode("utf-8"), value) for name, value in node.items()),
            key=lambda item: gitobj.git_order(
                item[0], gitobj.MODE_TREE if isinstance(item[1], dict) else gitobj.MODE_BLOB
            ),
        )
        for key, value in changes:
            name = key.decode("utf-8")
            existing = entries.get(key)
            if isinstance(value, dict):
                sub: bytes | None = None
                if existing is not None:
                    if existing[0] != gitobj.MODE_TREE:
                        raise errors.StorageError(
                            f"{where}{name} is a file in the ledger, not a directory."
                        )
                    sub = existing[1]
                entries[key] = (
                    gitobj.MODE_TREE,
                    self._build(objects, sub, value, f"{where}{name}/", built, raws),
                )
            else:
                if existing is not None:
                    raise errors.StorageError(
                        f"{where}{name} already exists in the ledger; records never replace files.",
                        hint="Run 'ledger verify'; the ledger may have been tampered with.",
                    )
                entries[key] = (gitobj.MODE_BLOB, value)
            if existing is None:  # a new name: still in order if it sorts after the rest
                order = gitobj.git_order(key, entries[key][0])
                in_order = in_order and order > last
                last = max(last, order)
                added.append(key)
        base_raw = self._raw.get(base) if base is not None else b""
        if in_order and base_raw is not None and len(added) == len(changes):
            # Only new names, after the others (a run's next record): the base tree's bytes
            # followed by the new entries.
            raw = base_raw + b"".join(
                entries[k][0] + b" " + k + b"\0" + entries[k][1] for k in added
            )
        else:
            if not in_order:
                entries = dict(
                    sorted(entries.items(), key=lambda kv: gitobj.git_order(kv[0], kv[1][0]))
                )
            raw = b"".join(mode + b" " + n + b"\0" + eid for n, (mode, eid) in entries.items())
        oid = objects.add(gitobj.OBJ_TREE, raw)
        built[oid] = entries
        raws[oid] = raw
        return oid
