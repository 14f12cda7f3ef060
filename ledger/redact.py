"""The one redactor: a secret's value, and common encodings of it, become ``[REDACTED:name]``.

Used for every output stream of a step (:class:`StreamRedactor`, fed chunk by chunk), for
every string of every record the engine writes (:class:`Redactor`), and for rendered texts
(:func:`redact`). The label format is :func:`redaction_label`'s alone.

This module sits on the ground floor: it imports nothing from ``ledger`` but its errors, so
every layer (runbook parameters, the engine, the process runner) can use it.

Every occurrence of a secret's value is replaced by ``[REDACTED:name]``, also when the value
straddles two reads: the stream redactor holds back the last ``longest pattern - 1`` bytes
until more output or end of stream shows whether they start a secret (so a program that
prints a partial line and waits may show its last few bytes late). Besides the raw UTF-8
value, these encodings of it are redacted, the way CI systems mask secrets:

* JSON string escaping (``\\"``, ``\\\\``, ``\\uXXXX``), URL percent-encoding (``%20`` and
  ``+`` for spaces), HTML/XML escaping, when they differ from the raw value;
* base64 (standard and URL-safe alphabets) of the value on its own, and the part of its
  encoding that is fixed whatever precedes or follows it in the encoded data (three
  alignments), when that part is at least 8 characters long (so for values of about six
  bytes or more; shorter fragments would match unrelated output).

Not covered: hex or other encodings, base64 wrapped across lines, changed case, a part of a
secret, a secret interleaved with other bytes (terminal escapes, ``set -x`` quoting of
quotes), a secret split between stdout and stderr (streams are redacted independently).
A secret that is itself a substring of the label cannot be protected by substitution: the
label then falls back to ``[REDACTED]``; the runbook layer should refuse very short secrets.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import re
from collections.abc import Iterable, Mapping
from typing import Final
from urllib.parse import quote, quote_plus

__all__ = ["FALLBACK_LABEL", "Redactor", "StreamRedactor", "redact", "redaction_label"]

#: The label of a secret whose value is part of a label (see :class:`Redactor`).
FALLBACK_LABEL: Final = "[REDACTED]"

_MIN_ENCODED_LEN = 8
#: Redactors kept for :func:`redact` (one run has one set of secrets).
_CACHED_REDACTORS = 8


def redaction_label(name: str) -> str:
    """What replaces the value of the secret ``name``: ``[REDACTED:name]``."""
    return f"[REDACTED:{name}]"


def redact(text: str, secrets: Mapping[str, str]) -> str:
    """``text`` with every secret of ``secrets`` (name to value) replaced by its label: the
    value and its encodings, longest match first, as :class:`Redactor` does."""
    if not any(secrets.values()):
        return text
    return _redactor(tuple(secrets.items())).redact_text(text)


@functools.lru_cache(maxsize=_CACHED_REDACTORS)
def _redactor(secrets: tuple[tuple[str, str], ...]) -> Redactor:
    return Redactor(dict(secrets))


def _base64_fragments(raw: bytes) -> set[bytes]:
    """Base64 texts of ``raw`` that appear whatever data surrounds it when encoded."""
    out: set[bytes] = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(raw)
        out.add(whole)
        out.add(whole.rstrip(b"="))
        for shift in range(3):
            encoded = encode(b"\0" * shift + raw)
            first = -(-8 * shift // 6)  # first character made only of the value's bits
            last = (8 * (shift + len(raw))) // 6  # characters before this one are complete
            out.add(encoded[first:last])
    return {f for f in out if len(f) >= _MIN_ENCODED_LEN}


def _variants(value: str) -> set[bytes]:
    raw = value.encode("utf-8", "surrogateescape")
    out = {raw}
    texts = {
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        quote(value, safe=""),
        quote_plus(value, safe=""),
        html.escape(value, quote=True),
    }
    out.update(t.encode("utf-8", "surrogateescape") for t in texts)
    out.update(_base64_fragments(raw))
    return {v for v in out if v}


class Redactor:
    """Replaces secrets (and common encodings of them) by ``[REDACTED:name]``.

    ``secrets`` maps a name to its value; empty values are ignored. ``derived`` adds more
    values under a name (texts computed from a secret, see :mod:`ledger.run.secretflow`).
    When two secrets share a pattern, the one given first names it. At any position the
    longest pattern wins.
    """

    def __init__(self, secrets: Mapping[str, str], derived: Iterable[tuple[str, str]] = ()) -> None:
        pairs = [*secrets.items(), *derived]
        values = [v for _name, v in pairs if v]
        labels: dict[bytes, bytes] = {}
        for name, value in pairs:
            if not value:
                continue
            label = redaction_label(name)
            if any(v in label for v in values):
                label = FALLBACK_LABEL
            for variant in _variants(value):
                labels.setdefault(variant, label.encode("utf-8", "surrogateescape"))
        self._labels = labels
        patterns = sorted(labels, key=lambda p: (-len(p), p))
        self._regex: re.Pattern[bytes] | None = (
            re.compile(b"|".join(re.escape(p) for p in patterns)) if patterns else None
        )
        self.max_len = len(patterns[0]) if patterns else 0

    def __bool__(self) -> bool:
        return self._regex is not None

    def _label(self, match: re.Match[bytes]) -> bytes:
        return self._labels[match.group()]

    def redact(self, data: bytes) -> bytes:
        """``data`` with every secret pattern replaced by its label."""
        if self._regex is None:
            return data
        return self._regex.sub(self._label, data)

    def redact_text(self, text: str) -> str:
        """Like :meth:`redact`, for text (commands, messages); round-trips any ``str``."""
        if self._regex is None:
            return text
        return self.redact(text.encode("utf-8", "surrogateescape")).decode(
            "utf-8", "surrogateescape"
        )

    def stream(self) -> StreamRedactor:
        """A redactor for one stream read in arbitrary chunks."""
        return StreamRedactor(self)


class StreamRedactor:
    """Redacts a byte stream fed in chunks; the output equals redacting the whole stream.

    :meth:`feed` returns what is safe to emit now; up to ``max_len - 1`` bytes are held back
    until the next chunk or :meth:`flush` (end of stream).
    """

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._keep = max(redactor.max_len - 1, 0)
        self._carry = b""

    def feed(self, data: bytes) -> bytes:
        regex = self._redactor._regex
        if regex is None:
            return data
        buf = self._carry + data if self._carry else data
        safe_end = len(buf) - self._keep
        if safe_end <= 0:
            self._carry = buf
            return b""
        out = bytearray()
        pos = 0
        for match in regex.finditer(buf):
            if match.start() >= safe_end:
                # It may be a shorter pattern whose longer sibling is still arriving.
                break
            out += buf[pos : match.start()]
            out += self._redactor._label(match)
            pos = match.end()
        end = max(pos, safe_end)
        out += buf[pos:end]
        self._carry = buf[end:]
        return bytes(out)

    def flush(self) -> bytes:
        rest, self._carry = self._carry, b""
        return self._redactor.redact(rest)
