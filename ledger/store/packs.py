"""Writing an append's objects as one small git pack, and reading pack indexes.

An append makes a handful of objects (the record, its attachments, the trees on its path, the
signed commit). Written as loose objects they are a file each, every one in its own fan-out
directory, and later have to be packed and unlinked again; written as one pack they are two
files (``pack-<sha1>.pack`` and its ``.idx``, version 2, objects stored whole) that stock git
and libgit2 read like any other pack. :mod:`ledger.store.upkeep` merges these small packs in
the background (docs/FORMAT.md §1). The objects themselves are encoded by
:mod:`ledger.format.gitobj`.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib

from ledger.format import gitobj
from ledger.store import gitdir


class PackWriter:
    """Collects objects and writes them as one pack with its version-2 index."""

    def __init__(self) -> None:
        self._objects: dict[bytes, bytes] = {}  # id -> the pack entry (header + zlib data)

    def add(self, obj_type: int, content: bytes) -> bytes:
        """Add an object; returns its 20-byte id (an object added twice is stored once)."""
        oid = gitobj.object_id(obj_type, content)
        if oid not in self._objects:
            self._objects[oid] = _entry_header(obj_type, len(content)) + zlib.compress(content, 1)
        return oid

    def add_entry(self, oid: bytes, entry: bytes) -> None:
        """Add a whole (not delta) entry copied from another pack, as it is."""
        self._objects.setdefault(oid, entry)

    def __len__(self) -> int:
        return len(self._objects)

    def encode(self) -> tuple[bytes, bytes, str]:
        """The pack, its index, and the pack's name (hex SHA-1 of the pack's content)."""
        parts = [b"PACK", struct.pack(">II", 2, len(self._objects))]
        offset = 12
        index: list[tuple[bytes, int, int]] = []
        for oid, entry in self._objects.items():
            index.append((oid, zlib.crc32(entry), offset))
            parts.append(entry)
            offset += len(entry)
        body = b"".join(parts)
        checksum = hashlib.sha1(body, usedforsecurity=False).digest()
        pack = body + checksum
        return pack, _encode_index(index, checksum), checksum.hex()

    def write(self, pack_dir: str | os.PathLike[str]) -> str:
        """Write ``pack-<sha1>.pack`` then its ``.idx`` into ``pack_dir``. Readers find packs
        by their index, so the pack is written in place and the index, last, through a
        temporary file renamed into place. Not synced: the caller makes them durable.
        Returns the pack's name."""
        pack, idx, name = self.encode()
        directory = os.fspath(pack_dir)
        _write_in_place(os.path.join(directory, f"pack-{name}.pack"), pack)
        gitdir.replace_file(directory, f"pack-{name}.idx", idx)
        return name


def _entry_header(obj_type: int, size: int) -> bytes:
    out = bytearray()
    byte = (obj_type << 4) | (size & 0x0F)
    size >>= 4
    while size:
        out.append(byte | 0x80)
        byte = size & 0x7F
        size >>= 7
    out.append(byte)
    return bytes(out)


def _encode_index(entries: list[tuple[bytes, int, int]], pack_checksum: bytes) -> bytes:
    entries = sorted(entries)
    fanout = [0] * 256
    for oid, _, _ in entries:
        fanout[oid[0]] += 1
    total = 0
    for i in range(256):
        total += fanout[i]
        fanout[i] = total
    if any(offset >= 0x80000000 for _, _, offset in entries):
        raise ValueError("a single append's pack larger than 2 GiB")
    body = b"".join(
        [
            b"\377tOc",
            struct.pack(">I", 2),
            struct.pack(">256I", *fanout),
            b"".join(oid for oid, _, _ in entries),
            b"".join(struct.pack(">I", crc) for _, crc, _ in entries),
            b"".join(struct.pack(">I", offset) for _, _, offset in entries),
            pack_checksum,
        ]
    )
    return body + hashlib.sha1(body, usedforsecurity=False).digest()


def index_object_ids(idx: bytes) -> list[bytes]:
    """The object ids listed in a version-2 pack index. ``ValueError`` if it is not one."""
    if len(idx) < 8 + 1024 or idx[:4] != b"\377tOc" or struct.unpack(">I", idx[4:8])[0] != 2:
        raise ValueError("not a version-2 pack index")
    count = struct.unpack(">I", idx[8 + 255 * 4 : 8 + 256 * 4])[0]
    start = 8 + 1024
    if len(idx) < start + 20 * count:
        raise ValueError("truncated pack index")
    return [idx[start + 20 * i : start + 20 * (i + 1)] for i in range(count)]


def whole_entries(pack: bytes, idx: bytes) -> list[tuple[bytes, bytes]] | None:
    """The (id, entry) pairs of a pack whose objects are all stored whole, as they are in
    the pack, or ``None`` when it holds deltas (their offsets would not survive a copy).
    ``ValueError`` if the pack and its index do not agree."""
    oids = index_object_ids(idx)
    count = len(oids)
    table = 8 + 1024 + 24 * count  # after the ids and the CRCs: 4-byte offsets
    if len(idx) < table + 4 * count + 40 or pack[:4] != b"PACK" or len(pack) < 32:
        raise ValueError("truncated pack or pack index")
    if idx[table + 4 * count : table + 4 * count + 20] != pack[-20:]:
        raise ValueError("the pack index belongs to another pack")
    offsets = struct.unpack(f">{count}I", idx[table : table + 4 * count])
    if any(off & 0x80000000 for off in offsets):
        return None  # a large pack: never one of an append's
    ordered = sorted(zip(offsets, oids, strict=True))
    ends = [off for off, _ in ordered[1:]] + [len(pack) - 20]
    out: list[tuple[bytes, bytes]] = []
    for (start, oid), end in zip(ordered, ends, strict=True):
        if not 12 <= start < end <= len(pack) - 20:
            raise ValueError("a pack index offset outside the pack")
        if (pack[start] >> 4) & 7 not in gitobj.TYPE_NAMES:
            return None  # a delta
        out.append((oid, pack[start:end]))
    return out


def _write_in_place(path: str, data: bytes) -> None:
    """Create ``path`` with ``data``. A pack is named by its content's digest: one that
    exists with these very bytes is kept; one cut short by a crash (it has no index, so it
    was never read) is replaced."""
    try:
        gitdir.create_file(path, data)
    except FileExistsError:
        if gitdir.read_own(path, len(data) + 1) == data:
            return
        os.unlink(path)
        gitdir.create_file(path, data)


__all__ = ["PackWriter", "index_object_ids", "whole_entries"]
