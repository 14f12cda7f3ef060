"""The git object codec: object ids, tree entries and their order, commit encoding and
decoding, signature headers. Pure: bytes in, bytes out; nothing here reads or writes a
repository or a file.

The store builds an append's objects with it before any of them is in a repository (the
trees and the signed commit of a record are hashed and packed in one go), so it formats
them byte for byte as libgit2 and stock git do. The keys package splits a signed commit
with it (:func:`split_signed_commit`, git's own rule), and the verifier decodes raw
commits and trees with it (:func:`parse_signed_commit`, :func:`split_headers`,
:func:`parse_tree`); what the decoded headers must say is the verifier's business.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
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


#: Fresh digests to copy: copying skips the algorithm's lookup that each new one makes.
_SHA1: Final = hashlib.sha1(usedforsecurity=False)
_SHA256: Final = hashlib.sha256()


def object_id(obj_type: int, content: bytes) -> bytes:
    """The SHA-1 object id git gives ``content`` of type ``obj_type`` (20 bytes)."""
    h = _SHA1.copy()
    h.update(TYPE_NAMES[obj_type] + b" %d\0" % len(content))
    h.update(content)
    return h.digest()


def object_sha256(obj_type: int, content: bytes) -> str:
    """The SHA-256 (hex) of ``content`` of type ``obj_type`` hashed as git hashes an object,
    ``<type> <size>\0<content>``: a commit's digest in ``Ledger-Prev-Sha256`` and in a
    witness record's heads (FORMAT.md §3, §5)."""
    h = _SHA256.copy()
    h.update(TYPE_NAMES[obj_type] + b" %d\0" % len(content))
    h.update(content)
    return h.hexdigest()


# --- trees ------------------------------------------------------------------------------


def iter_tree(raw: bytes) -> Iterator[TreeEntry]:
    """The entries of a raw tree object, in their stored order; ``ValueError`` where it is
    malformed (the entries before are yielded first)."""
    pos, end = 0, len(raw)
    while pos < end:
        space = raw.find(b" ", pos)
        nul = raw.find(b"\0", space + 1)
        if space < 0 or nul < 0 or nul + 21 > end:
            raise ValueError("truncated tree entry")
        yield raw[pos:space], raw[space + 1 : nul], raw[nul + 1 : nul + 21]
        pos = nul + 21


def parse_tree(raw: bytes) -> list[TreeEntry]:
    """The entries of a raw tree object, in their stored order. ``ValueError`` if malformed."""
    return list(iter_tree(raw))


def git_order(name: bytes, mode: bytes) -> bytes:
    """The key git orders a tree's entries by: the name, a subtree's as if it ended in '/'."""
    return name + b"/" if mode == MODE_TREE else name


def tree_entry(mode: bytes, name: bytes, oid: bytes) -> bytes:
    """One entry as a raw tree holds it: ``<mode> <name>\\0<20-byte id>``."""
    return mode + b" " + name + b"\0" + oid


def serialize_tree(entries: Iterable[TreeEntry]) -> bytes:
    """A raw tree object of ``entries`` in git's order. ``ValueError`` on a duplicate name."""
    ordered = sorted(entries, key=lambda entry: git_order(entry[1], entry[0]))
    for a, b in itertools.pairwise(ordered):
        if a[1] == b[1]:
            raise ValueError(f"duplicate tree entry {a[1].decode(errors='replace')!r}")
    return b"".join(tree_entry(mode, name, oid) for mode, name, oid in ordered)


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


# --- decoding commits ---------------------------------------------------------------------

_GPGSIG: Final = b"gpgsig"
_GPGSIG_SP: Final = b"gpgsig "


def split_signed_commit(raw: bytes) -> tuple[bytes, list[bytes]]:
    """Split a raw commit object's content into the payload git verifies and its signatures.

    This is git's ``parse_buffer_signed_by_header`` for a SHA-1 repository: every
    ``gpgsig`` header (with its continuation lines) is removed and its value collected
    (continuation spaces dropped, each line keeping its newline); any other header whose
    name starts with ``gpgsig`` (such as ``gpgsig-sha256``) is removed and ignored.
    Everything from the first empty line on is payload. Git concatenates the signatures of
    several ``gpgsig`` headers into one; here each header is one list item.
    """
    data = bytes(raw)
    size = len(data)
    if _GPGSIG not in data:
        return data, []
    payload = bytearray()
    signatures: list[bytearray] = []
    in_signature = False
    other_signature = False
    pos = 0
    while pos < size:
        newline = data.find(b"\n", pos)
        nxt = newline + 1 if newline >= 0 else size
        first = data[pos]
        sig_start = -1
        if in_signature and first == 0x20:
            sig_start = pos + 1
        elif data.startswith(_GPGSIG_SP, pos):
            sig_start = pos + len(_GPGSIG_SP)
            other_signature = False
            signatures.append(bytearray())
        elif data.startswith(_GPGSIG, pos):
            other_signature = True
        elif other_signature and first != 0x20:
            other_signature = False
        if sig_start >= 0:
            signatures[-1] += data[sig_start:nxt]
            in_signature = True
        else:
            if first == 0x0A:
                nxt = size  # the message: everything after the empty line is payload
            if not other_signature:
                payload += data[pos:nxt]
            in_signature = False
        pos = nxt
    return bytes(payload), [bytes(s) for s in signatures]


@dataclass(slots=True)
class SignedCommit:
    """A commit in the layout :func:`commit_content` and :func:`add_signature` write."""

    tree: str
    parents: list[str]
    author: bytes
    committer: bytes
    signature: bytes  # the gpgsig value, continuation spaces dropped, no final newline
    payload: bytes  # the commit without its gpgsig header: what the signature signs
    message: bytes


_SIGNED_LAYOUT: Final = re.compile(
    rb"tree ([0-9a-f]{40})\n((?:parent [0-9a-f]{40}\n)*)author ([^\n]*)\ncommitter ([^\n]*)\n"
    rb"(gpgsig ([^\n]*\n(?: [^\n]*\n)*))\n"
)


def parse_signed_commit(raw: bytes) -> SignedCommit | None:
    """``raw`` decoded in one match if it has exactly the headers ``tree``, any number of
    ``parent``, ``author``, ``committer``, ``gpgsig`` in that order; else ``None`` (then
    :func:`split_headers` reads it header by header)."""
    m = _SIGNED_LAYOUT.match(raw)
    if m is None:
        return None
    block = m.group(2)
    return SignedCommit(
        m.group(1).decode(),
        [block[i + 7 : i + 47].decode() for i in range(0, len(block), 48)],
        m.group(3),
        m.group(4),
        m.group(6)[:-1].replace(b"\n ", b"\n"),
        raw[: m.start(5)] + raw[m.end(5) :],
        raw[m.end() :],
    )


@dataclass(frozen=True, slots=True)
class Header:
    """One header of a raw commit: its name, its value (continuation lines joined by a
    newline, their leading space dropped) and the lines it spans in the header block."""

    name: bytes
    value: bytes
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class CommitHeaders:
    """A raw commit split at its first empty line into headers and message."""

    raw: bytes
    lines: list[bytes]  # the header block, line by line
    headers: list[Header]
    end: int  # offset of the empty line after the headers; -1 when there is none
    message: bytes | None  # everything after the empty line; None without one

    def without(self, names: Collection[bytes]) -> bytes:
        """The raw commit without the headers named ``names`` (and their continuation
        lines): the payload a signature in such a header signs."""
        drop = {i for h in self.headers if h.name in names for i in range(h.first, h.last + 1)}
        if not drop:
            return self.raw
        kept = [line for i, line in enumerate(self.lines) if i not in drop]
        return b"\n".join(kept) + (self.raw[self.end :] if self.end >= 0 else b"\n")


def split_headers(raw: bytes) -> CommitHeaders:
    """Split any raw commit into its headers, in their order, and its message. A line
    starting with a space continues the header before it; nothing is checked here."""
    end = raw.find(b"\n\n")
    if end < 0:
        head_block, message = raw.rstrip(b"\n"), None
    else:
        head_block, message = raw[:end], raw[end + 2 :]
    lines = head_block.split(b"\n")
    spans: list[tuple[bytes, list[bytes], int, int]] = []  # name, value lines, first, last
    for i, line in enumerate(lines):
        if line.startswith(b" ") and spans:
            name, values, first, _ = spans[-1]
            values.append(line[1:])
            spans[-1] = (name, values, first, i)
            continue
        name, _, value = line.partition(b" ")
        spans.append((name, [value], i, i))
    headers = [Header(name, b"\n".join(values), first, last) for name, values, first, last in spans]
    return CommitHeaders(raw, lines, headers, end, message)


__all__ = [
    "MODE_BLOB",
    "MODE_TREE",
    "OBJ_BLOB",
    "OBJ_COMMIT",
    "OBJ_TAG",
    "OBJ_TREE",
    "TYPE_NAMES",
    "CommitHeaders",
    "Header",
    "SignedCommit",
    "TreeEntry",
    "add_signature",
    "commit_content",
    "git_order",
    "iter_tree",
    "object_id",
    "parse_signed_commit",
    "parse_tree",
    "serialize_tree",
    "split_headers",
    "split_signed_commit",
    "tree_entry",
]
