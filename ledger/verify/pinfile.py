"""Pin files: one ``<ledger id> <genesis commit id>`` line per pinned ledger (FORMAT.md §8).

Two files have this format: this machine's own ``pins`` in the state directory (read by
``local`` as the rest of that directory, and written only by it) and an auditor's pin file
(``--pins FILE``). An auditor's pin file is their own input, never a cache: anything wrong
with it (missing, a directory, unreadable, not UTF-8, too large, a line that is no pin, a
ledger id pinned to two genesis commits) is an :class:`~ledger.errors.InputError` naming the
file and what is wrong, and never advice to delete it.
"""

from __future__ import annotations

import re
from pathlib import Path

from ledger import errors

_PIN_LINE = re.compile(r"([0-9a-f]{32})\s+([0-9a-f]{40})")
#: The largest pin file read (about 200,000 pins): ``--pins /dev/zero`` is refused, not read
#: until memory runs out.
MAX_BYTES = 16 * 1024 * 1024
_HINT = "Check --pins: a text file of '<ledger id> <genesis commit id>' lines (docs/FORMAT.md §8)."


def parse(text: str, source: str) -> dict[str, str]:
    """The pins of ``text``: ``#`` comments and blank lines ignored; the same pin twice is
    one pin, a ledger id pinned to two genesis commits is refused (naming both lines)."""
    pins: dict[str, str] = {}
    lines: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        body = line.split("#", 1)[0].strip().lower()
        if not body:
            continue
        m = _PIN_LINE.fullmatch(body)
        if m is None:
            raise errors.InputError(
                f"line {number} of the pin file {source} is not "
                "'<ledger id: 32 hex> <genesis commit id: 40 hex>'.",
                hint="Fix or remove that line.",
            )
        lid, genesis = m.group(1), m.group(2)
        if lid in pins and pins[lid] != genesis:
            raise errors.InputError(
                f"lines {lines[lid]} and {number} of the pin file {source} pin the ledger "
                f"{lid} to two genesis commits ({pins[lid]} and {genesis}).",
                hint="Keep the one you checked with the ledger's owner and remove the other.",
            )
        pins[lid] = genesis
        lines.setdefault(lid, number)
    return pins


def read(path: Path) -> dict[str, str]:
    """The pins of an auditor's pin file (``--pins``); every problem an input error."""
    try:
        with open(path, "rb") as fh:  # (not only a regular file: --pins <(...) is a pipe)
            data = fh.read(MAX_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        raise errors.InputError(f"the pin file {path} does not exist.", hint=_HINT) from None
    except IsADirectoryError:
        raise errors.InputError(
            f"the pin file {path} is a directory, not a file.", hint=_HINT
        ) from None
    except OSError as exc:
        raise errors.InputError(
            f"the pin file {path} cannot be read: {exc.strerror or exc}.",
            hint="Check --pins and that file's permissions.",
        ) from None
    if len(data) > MAX_BYTES:
        raise errors.InputError(
            f"the pin file {path} is larger than {MAX_BYTES // (1024 * 1024)} MiB.", hint=_HINT
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise errors.InputError(
            f"the pin file {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start}).",
            hint=_HINT,
        ) from None
    return parse(text, str(path))
