"""The SSH wire format (RFC 4251 §5): a reader and writers for its types, and the armor width.

Everything in ``ledger.keys`` that reads or writes SSH binary structures (public-key blobs,
private-key files, SSHSIG signatures) goes through these helpers.
"""

from __future__ import annotations

import struct
from typing import Final

ARMOR_WIDTH: Final = 70  # ssh-keygen wraps base64 at 70 characters
U32: Final = struct.Struct(">I")


class Malformed(ValueError):
    """Internal: bytes that do not follow the SSH wire format."""


class Unsupported(Malformed):
    """Internal: a well-formed key of a type this module does not handle."""


class Reader:
    """Reads SSH wire types (RFC 4251 §5) from a buffer without copying it."""

    __slots__ = ("_buf", "_pos")

    def __init__(self, data: bytes | memoryview, pos: int = 0) -> None:
        self._buf = memoryview(data)
        self._pos = pos

    @property
    def offset(self) -> int:
        """How many bytes of the buffer have been read."""
        return self._pos

    def u32(self) -> int:
        pos = self._pos
        if pos + 4 > len(self._buf):
            raise Malformed("truncated")
        self._pos = pos + 4
        value: int = U32.unpack_from(self._buf, pos)[0]
        return value

    def string(self) -> bytes:
        size = self.u32()
        pos = self._pos
        end = pos + size
        if end > len(self._buf):
            raise Malformed("truncated")
        self._pos = end
        return self._buf[pos:end].tobytes()

    def mpint(self) -> int:
        raw = self.string()
        if raw and raw[0] & 0x80:
            raise Malformed("negative integer")
        if len(raw) > 1 and raw[0] == 0 and not raw[1] & 0x80:
            raise Malformed("integer with superfluous leading zero")
        return int.from_bytes(raw, "big")

    def rest(self) -> bytes:
        data = self._buf[self._pos :].tobytes()
        self._pos = len(self._buf)
        return data

    def end(self) -> None:
        if self._pos != len(self._buf):
            raise Malformed("unexpected trailing data")


def string(data: bytes) -> bytes:
    return U32.pack(len(data)) + data


def mpint(value: int) -> bytes:
    if value < 0:
        raise ValueError("negative mpint")
    if value == 0:
        return string(b"")
    return string(value.to_bytes((value.bit_length() + 8) // 8, "big"))


def wrap(text: str, width: int = ARMOR_WIDTH) -> str:
    return "\n".join(text[i : i + width] for i in range(0, len(text), width))
