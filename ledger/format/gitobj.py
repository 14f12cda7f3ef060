"""The git object codec: object ids, tree entries and their order, commit encoding, signature
headers. Pure: bytes in, bytes out; nothing here reads or writes a repository or a file.

The store builds an append's objects with it before any of them is in a repository (the
trees and the signed commit of a record are hashed and packed in one go), so it formats
them byte for byte as libgit2 and stock git do.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Sequence
from typing import Final

OBJ_COMMIT: Final = 1
OBJ_TREE: Final = 2
OBJ_BLOB: Final = 3
OBJ_TAG: Final = 4
TYPE_NAMES: Final = {OBJ_COMMIT: b"commit", OBJ_TREE: b"tree", OBJ_BLOB: b"blob", OBJ_TAG: b"tag"}

MODE_TREE: Final = b"40000"
MODE_BLOB: Final = b"100644"

#: A tree entry: (mode, name, 20-byte object id).
TreeEntry = tuple[bytes, bytes, bytes]


def object_id(obj_type: int, content: bytes) -> bytes:
    """The SHA-1 object id git gives ``content`` of type ``obj_type`` (20 bytes)."""
    h = hashlib.sha1(TYPE_NAMES[obj_type] + b" %d\0" % len(content), usedforsecurity=False)
    h.update(content)
    return h.digest()


# --- trees ------------------------------------------------------------------------------


def parse_tree(raw: bytes) -> list[TreeEntry]:
    """The entries of a raw tree object, in their stored order. ``ValueError`` if malformed."""
    entries: list[TreeEntry] = []
    pos, end = 0, len(raw)
    while pos < end:
        space = raw.find(b" ", pos)
        nul = raw.find(b"\0", space + 1)
        if space < 0 or nul < 0 or nul + 21 > end:
            raise ValueError("truncated tree entry")
        entries.append((raw[pos:space], raw[space + 1 : nul], raw[nul + 1 : nul + 21]))
        pos = nul + 21
    return entries


def git_order(name: bytes, mode: bytes) -> bytes:
    """The key git orders a tree's entries by: the name, a subtree's as if it ended in '/'."""
    return name + b"/" if mode == MODE_TREE else name


def serialize_tree(entries: Iterable[TreeEntry]) -> bytes:
    """A raw tree object of ``entries`` in git's order. ``ValueError`` on a duplicate name."""
    ordered = sorted(entries, key=lambda entry: git_order(entry[1], entry[0]))
    for a, b in itertools.pairwise(ordered):
        if a[1] == b[1]:
            raise ValueError(f"duplicate tree entry {a[1].decode(errors='replace')!r}")
    return b"".join(mode + b" " + name + b"\0" + oid for mode, name, oid in ordered)


# --- commits ----------------------------------------------------------------------------


def add_signature(content: bytes, signature: bytes, field: bytes = b"gpgsig") -> bytes:
    """The commit ``content`` with ``signature`` in a ``field`` header after the others,
    continuation lines indented by one space (what ``git commit -S`` and libgit2 write)."""
    end = content.find(b"\n\n")
    if end < 0:
        raise ValueError("a commit without a blank line after its headers")
    sig = signature.replace(b"\n", b"\n ")  # exactly as libgit2 formats a header field
    return content[: end + 1] + field + b" " + sig + b"\n" + content[end + 1 :]


def commit_content(
    tree: str, parents: Sequence[str], ident: str, seconds: int, message: str
) -> bytes:
    """An unsigned commit, formatted exactly as libgit2's ``create_commit_string`` makes it:
    author and committer ``ident <ident>`` at ``seconds`` UTC. ``tree`` and ``parents`` are
    hex ids (the tree need not exist anywhere yet)."""
    who = ident.encode("utf-8")
    person = b"%s <%s> %d +0000\n" % (who, who, seconds)
    content = b"tree %s\n" % tree.encode("ascii")
    for parent in parents:
        content += b"parent %s\n" % parent.encode("ascii")
    return content + b"author " + person + b"committer " + person + b"\n" + message.encode("utf-8")


__all__ = [
    "MODE_BLOB",
    "MODE_TREE",
    "OBJ_BLOB",
    "OBJ_COMMIT",
    "OBJ_TAG",
    "OBJ_TREE",
    "TYPE_NAMES",
    "TreeEntry",
    "add_signature",
    "commit_content",
    "git_order",
    "object_id",
    "parse_tree",
    "serialize_tree",
]
