"""The append-only tree of FORMAT.md §4 (``tree-append``): a commit's tree is its parent's
tree plus exactly the record file and its listed files, each at the path of the layout, each
with the digest its record states (``file-digest``)."""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from typing import Any

from ledger.verify import findings, kinds, objects, records, rules

#: (mode, hex id) of a tree entry.
Entry = tuple[int, str]

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
            if len(parts) == 3 and parts[0] == "incidents" and rules.INCIDENT.fullmatch(parts[1]):
                return f"incidents/{parts[1]}/{run}"
        return None
    if not rec_path.endswith(".json"):
        return None
    return f"{rec_path[: -len('.json')]}.{name}"


# --- checking a commit's tree ----------------------------------------------------------------


class TreeChecker:
    """Finds record files and checks each commit's tree against its parent's."""

    def __init__(self, reader: objects.ObjectReader) -> None:
        self.reader = reader
        #: (tree, parent's tree, path, entry) when :meth:`find_record` saw that the tree is
        #: the parent's plus that one file.
        self._one: tuple[str, str, str, Entry] | None = None

    def find_record(self, tree_oid: str, path: str, parent_tree: str | None) -> Entry | None:
        """:meth:`find_path` for a commit's record file, which also learns on the way
        whether the tree is ``parent_tree`` plus that one file, in directories the parent
        has; :meth:`check` then needs no comparison when the record lists no other file.

        Each directory on the path must be the same entry at the same place in both trees,
        with only its id changed, and the last tree the parent's plus the file's entry, the
        bytes around them equal: what :meth:`_Comparison._only_additions` confirms for one
        file. Anything else (and a parent tree that cannot be read) is left to the
        comparison, which names what differs."""
        self._one = None
        entry, same = self._descend(tree_oid, path, parent_tree)
        if entry is not None and same and parent_tree is not None:
            self._one = (tree_oid, parent_tree, path, entry)
        return entry

    def find_path(self, tree_oid: str, path: str) -> Entry | None:
        """The (mode, id) of the blob at ``path`` under ``tree_oid``, or None if absent."""
        return self._descend(tree_oid, path, None)[0]

    def _descend(
        self, tree_oid: str, path: str, parent_tree: str | None
    ) -> tuple[Entry | None, bool]:
        """The blob's entry at ``path`` (None if absent), and whether ``parent_tree`` holds
        the same path but for that one file (False without one). Each name is found by its
        entry's bytes with the mode the layout requires (``mode name\0``, then 20 id bytes).

        At each level the parent's raw tree must be the child's but for the entry found
        (its id only, for a directory; the whole entry, for the file)."""
        reader = self.reader
        parts = path.split("/")
        last = len(parts) - 1
        child = tree_oid
        same, parent = parent_tree is not None, parent_tree or ""
        what = f"tree of {path}"
        for i, name in enumerate(parts):
            c_raw = reader.read_tree(child, what)
            needle = (b"100644 " if i == last else b"40000 ") + name.encode("utf-8") + b"\0"
            at = c_raw.find(needle)
            end = at + len(needle)
            if at < 0 or end + 20 > len(c_raw):
                return None, False
            child = c_raw[end : end + 20].hex()
            if not same:
                continue
            try:
                p_raw = reader.read_tree(parent, "tree")
            except objects.ObjectError:
                same = False
                continue
            if i == last:
                same = p_raw.find(needle) < 0 and p_raw == c_raw[:at] + c_raw[end + 20 :]
            else:
                same = (  # (equal bytes up to ``end``: the parent's first match is at ``at``)
                    len(p_raw) == len(c_raw)
                    and p_raw[:end] == c_raw[:end]
                    and p_raw[end + 20 :] == c_raw[end + 20 :]
                )
                parent = p_raw[end : end + 20].hex()
        return (rules.MODE_BLOB, child), same

    def check(
        self,
        tree_oid: str,
        parent_tree: str | None,
        is_root: bool,
        rec: dict[str, Any],
        rec_path: str,
        rec_entry: Entry,
        note: findings.Note,
    ) -> None:
        """Tree-append (FORMAT.md §4) and the attachments' digests (§2).

        ``parent_tree`` is the previous commit's tree (``None`` when it could not be read:
        then only the digests are checked)."""
        wanted, checks = _listed_files(rec, rec_path, note)
        if (
            parent_tree is not None
            and not is_root
            and not checks
            and len(wanted) == 1
            and self._one == (tree_oid, parent_tree, rec_path, rec_entry)
        ):
            return  # one file added: nothing to name
        found: dict[str, Entry] = {}
        if is_root or parent_tree is not None:
            comparison = _Comparison(self.reader, found)
            comparison.compare(None if is_root else parent_tree, tree_oid, nest(wanted), "")
            problems = comparison.problems
            for problem in problems[:20]:
                note("tree-append", problem)
            if len(problems) > 20:
                note("tree-append", f"... and {len(problems) - 20} more differences")
            if rec_path in found and found[rec_path] != rec_entry:
                note("tree-append", f"the tree holds {rec_path} ambiguously")
        for path, sha, size, is_index in checks:
            entry = found.get(path) or self.find_path(tree_oid, path)
            if entry is None:
                continue  # reported by the comparison
            blob = self.reader.read(entry[1], rules.OBJ_BLOB, f"file {path}")
            have = hashlib.sha256(blob).hexdigest()
            if have != sha or len(blob) != size:
                note(
                    "file-digest",
                    f"{path} has SHA-256 {have} and {len(blob)} bytes; the record says "
                    f"{sha} and {size}",
                )
            elif is_index and blob != (rec_path + "\n").encode():
                note("record-schema", f"the incident index {path} does not name {rec_path}")


def _listed_files(
    rec: dict[str, Any], rec_path: str, note: findings.Note
) -> tuple[set[str], list[tuple[str, str, int, bool]]]:
    """The paths the commit adds, and (path, sha256, size, is incident index) to check.

    A file off the layout of §4, or at a path listed twice, is ``record-schema``."""
    wanted = {rec_path}
    files = rec.get("files")
    checks: list[tuple[str, str, int, bool]] = []
    if not isinstance(files, dict):
        return wanted, checks
    for name, meta in files.items():
        if not isinstance(meta, dict) or not isinstance(meta.get("path"), str):
            continue
        path = meta["path"]
        layout = expected_file_path(rec, rec_path, name)
        if path != layout:
            note(
                "record-schema",
                f"file {name!r} is at {path!r}; the layout of FORMAT.md §4 puts it at {layout!r}",
            )
            if not records.is_safe_path(path):
                continue
        if path in wanted:
            note("record-schema", f"file {name!r} repeats the path {path}")
            continue
        wanted.add(path)
        if isinstance(meta.get("sha256"), str) and kinds.is_int(meta.get("size")):
            checks.append((path, meta["sha256"], meta["size"], name == "incident-index"))
    return wanted, checks


class _Comparison:
    """One comparison of a commit's tree with its parent's, collecting ``problems`` and the
    (mode, id) of every listed file present in the child (``found``)."""

    def __init__(self, reader: objects.ObjectReader, found: dict[str, Entry]) -> None:
        self.reader = reader
        self.found = found
        self.problems: list[str] = []

    def compare(self, parent: str | None, child: str, adds: dict[str, Any], prefix: str) -> None:
        """Check that tree ``child`` is tree ``parent`` plus exactly ``adds``.

        ``adds`` maps names to None (a file) or to the nested additions of a directory.
        Fast path: take the added entries out of the child's raw bytes (putting the
        parent's ids back for directories that gained files) and compare the result with
        the parent's raw bytes (read by its id, so checked against it); equal means the
        trees differ by exactly those entries.
        Only otherwise are the trees parsed and compared entry by entry.
        """
        c_raw = self.reader.read_tree(child, f"tree {prefix or '/'}")
        if parent is None:
            self._compare_new(child, c_raw, adds, prefix)
            return
        p_raw = self.reader.read_tree(parent, f"tree {prefix or '/'}")
        known: set[str] = set()
        if self._only_additions(parent, p_raw, child, c_raw, adds, prefix, known):
            return
        self._compare_entries(parent, p_raw, child, c_raw, adds, prefix, known)

    def _compare_new(self, child: str, c_raw: bytes, adds: dict[str, Any], prefix: str) -> None:
        """A tree without parent (the root's, or a new directory): exactly ``adds``."""
        problems = self.problems
        entries = self.reader.entries(child, c_raw)
        for name, (mode, oid) in entries.items():
            path = prefix + name
            if name not in adds:
                if mode == rules.MODE_TREE and len(problems) < 50:
                    self.compare(None, oid, {}, path + "/")
                else:
                    problems.append(f"adds {path}, which the record does not list")
            elif adds[name] is None:
                if mode != rules.MODE_BLOB:
                    problems.append(f"{path} is not a regular file (mode {mode:o})")
                else:
                    self.found[path] = (mode, oid)
            elif mode != rules.MODE_TREE:
                problems.append(f"{path} is not a directory")
            else:
                self.compare(None, oid, adds[name], path + "/")
        for name in sorted(adds.keys() - entries.keys()):
            problems.append(f"{prefix + name} is listed but not in the tree")

    def _only_additions(
        self,
        parent: str,
        p_raw: bytes,
        child: str,
        c_raw: bytes,
        adds: dict[str, Any],
        prefix: str,
        known: set[str],
    ) -> bool:
        """The fast path: whether ``child`` minus ``adds`` is ``parent``.

        Each added name is found in both raw trees by its entry's bytes with the mode the
        layout requires (``mode name\0``, then 20 id bytes), only a hint: the result must be
        the parent's bytes exactly. Directories that gained files are compared on the way
        (recursively); ``known`` receives the names handled here, which the slow path then
        skips."""
        candidate = c_raw
        fast = True
        for name, sub in adds.items():
            path = prefix + name
            needle = (b"100644 " if sub is None else b"40000 ") + name.encode("utf-8") + b"\0"
            size = len(needle) + 20
            at_c = c_raw.find(needle)
            if at_c < 0 or at_c + size > len(c_raw):
                fast = False
                continue
            entry = c_raw[at_c : at_c + size]
            c_oid = entry[-20:].hex()
            # (the first match of the entry is the first of its prefix, while nothing is cut)
            at = at_c if candidate is c_raw else candidate.find(entry)
            at_p = p_raw.find(needle)
            in_parent = at_p >= 0 and at_p + size <= len(p_raw)
            if sub is None:
                if at < 0 or in_parent:
                    fast = False
                    continue
                self.found[path] = (rules.MODE_BLOB, c_oid)
                known.add(name)
                candidate = candidate[:at] + candidate[at + size :]
                continue
            if not in_parent:
                self.compare(None, c_oid, sub, path + "/")
                replacement = b""
            else:
                replacement = p_raw[at_p : at_p + size]
                self.compare(replacement[-20:].hex(), c_oid, sub, path + "/")
            known.add(name)
            if at < 0:
                fast = False
                continue
            candidate = candidate[:at] + replacement + candidate[at + size :]
        # ``p_raw`` was read as ``parent`` (its id checked): equal bytes, equal tree.
        return fast and candidate == p_raw

    def _compare_entries(
        self,
        parent: str,
        p_raw: bytes,
        child: str,
        c_raw: bytes,
        adds: dict[str, Any],
        prefix: str,
        known: set[str],
    ) -> None:
        """The slow path: parse both trees and name exactly what differs."""
        problems = self.problems
        before = len(problems)
        c_entries = self.reader.entries(child, c_raw)
        p_entries = self.reader.entries(parent, p_raw)
        for name, p_hit in sorted(p_entries.items()):
            c_hit = c_entries.get(name)
            path = prefix + name
            sub = adds.get(name, False)
            if c_hit is None:
                problems.append(f"removes {path}, which an earlier record added")
            elif sub is None:
                if c_hit == p_hit:
                    problems.append(f"{path} was already in the parent's tree")
                else:
                    problems.append(f"changes {path}, which an earlier record added")
            elif sub is False and c_hit != p_hit:
                if c_hit[0] == p_hit[0] == rules.MODE_TREE:
                    self.compare(p_hit[1], c_hit[1], {}, path + "/")
                else:
                    problems.append(f"changes {path}, which earlier records added")
            elif isinstance(sub, dict) and name not in known:
                if c_hit[0] != rules.MODE_TREE or p_hit[0] != rules.MODE_TREE:
                    problems.append(f"changes {path} between a file and a directory")
                else:
                    self.compare(p_hit[1], c_hit[1], sub, path + "/")
        for name, c_hit in sorted(c_entries.items()):
            if name in p_entries or name in known:
                continue
            path = prefix + name
            sub = adds.get(name, False)
            if sub is False:
                if c_hit[0] == rules.MODE_TREE:
                    self.compare(None, c_hit[1], {}, path + "/")
                else:
                    problems.append(f"adds {path}, which the record does not list")
            elif sub is None:
                if c_hit[0] != rules.MODE_BLOB:
                    problems.append(f"{path} is not a regular file (mode {c_hit[0]:o})")
                else:
                    self.found[path] = c_hit
            elif c_hit[0] != rules.MODE_TREE:
                problems.append(f"{path} is not a directory")
            else:
                self.compare(None, c_hit[1], sub, path + "/")
        for name in sorted(adds.keys() - c_entries.keys()):
            problems.append(f"{prefix + name} is listed but not in the tree")
        if len(problems) == before:
            problems.append(f"tree {prefix or '/'} is not its parent's tree plus the listed files")
