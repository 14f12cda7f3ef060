"""Markdown escaping: put untrusted text into a Markdown document without changing its structure.

Everything a report shows that comes from commands, parameters or people (step names,
output, comments, incident ids, ...) goes through one of these functions, chosen for
where the text lands:

- :func:`inline` -- running text, list items, headings, table cells: one line, every
  character CommonMark (and GitHub) would treat as markup escaped;
- :func:`cell` -- a table cell: :func:`inline`, newlines shown as ``↵``, cut to a width;
- :func:`heading` -- a heading's text: :func:`inline`, cut to a width;
- :func:`code` -- an inline code span, with a backtick fence longer than any run inside;
- :func:`fence` -- a fenced code block, with a fence longer than any backtick run inside.

Before escaping, every value is *cleaned* (:func:`clean`): bytes are decoded as UTF-8 with
invalid sequences replaced by U+FFFD, line endings (``\\r\\n``, a lone ``\\r``, U+0085,
U+2028, U+2029) become ``\\n``, C0 control characters and DEL become their visible Control
Pictures (``␛`` for ESC, ``␀`` for NUL, ...), C1 controls, lone surrogates and the Unicode
bidirectional overrides become U+FFFD.

The results are :class:`Md` strings: already-safe Markdown. The report templates render with
:func:`finalize`, which escapes any value that is not :class:`Md` as :func:`inline` text, so
a template that forgets a filter is still safe.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

__all__ = [
    "Md",
    "cell",
    "clean",
    "code",
    "display_text",
    "fence",
    "finalize",
    "heading",
    "inline",
    "tail_lines",
]

CELL_WIDTH = 300
HEADING_WIDTH = 200
FENCE_LINE_WIDTH = 1000
ELLIPSIS = "…"


class Md(str):
    """Text that is already safe Markdown (the output of the escaping functions)."""

    __slots__ = ()


# --- cleaning ---------------------------------------------------------------------------

_LINE_BREAKS = re.compile("\r\n|[\r\x85\u2028\u2029]")
# C0 controls except \t and \n, and DEL: shown as the matching Control Picture.
_C0 = {c: chr(0x2400 + c) for c in range(0x20) if c not in (0x09, 0x0A)}
_C0[0x7F] = "\u2421"
# C1 controls, bidirectional embeddings/overrides/isolates, lone surrogates: U+FFFD.
_UNSAFE_RANGES = (
    (0x80, 0x9F),
    (0x202A, 0x202E),
    (0x2066, 0x2069),
    (0xD800, 0xDFFF),
)
_TRANSLATE: dict[int, str] = dict(_C0)
for _lo, _hi in _UNSAFE_RANGES:
    for _c in range(_lo, _hi + 1):
        _TRANSLATE[_c] = "\ufffd"


def display_text(value: object) -> str:
    """Any value as text for display: bytes decoded as UTF-8 (invalid bytes become U+FFFD),
    None as "", mappings and lists as canonical JSON, anything else with ``str``.

    (Runbook templates convert values differently, for commands: see
    :mod:`ledger.runbook.templating`.)
    """
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(
            value, sort_keys=True, ensure_ascii=False, separators=(",", ": "), default=str
        )
    return str(value)


def clean(value: object, *, tabs: bool = True) -> str:
    """Text with normalised line breaks and no control, bidi-override or surrogate characters.

    ``\\n`` is kept; ``\\t`` is kept when ``tabs`` is true, else it becomes a space.
    """
    text = _LINE_BREAKS.sub("\n", display_text(value)).translate(_TRANSLATE)
    if not tabs:
        text = text.replace("\t", " ")
    return text


def _cut(text: str, width: int | None) -> str:
    if width is not None and width > 0 and len(text) > width:
        return text[: max(width - 1, 0)] + ELLIPSIS
    return text


# --- inline text ------------------------------------------------------------------------

# Escaped wherever they appear: they open inline markup (code, emphasis, links, HTML,
# entities, hard breaks), table cells, GFM strikethrough, headings' closing sequences, or
# math on GitHub.
_ALWAYS = frozenset("\\`*[]<>&|~#$")
# Escaped at the start of the text only: they start blocks (lists, quotes, setext
# underlines, thematic breaks) there and nowhere else on a single line.
_AT_START = frozenset("-+=>.)")
# An ordered list marker: digits and "." or ")" followed by a space, a tab or the end.
_ORDERED_MARKER = re.compile(r"\d{1,12}[.)](?=[ \t]|$)")


def _escape_line(text: str) -> str:
    out: list[str] = []
    n = len(text)
    marker = _ORDERED_MARKER.match(text)
    marker_end = marker.end() - 1 if marker else -1
    for i, ch in enumerate(text):
        if ch in _ALWAYS or (i == 0 and ch in _AT_START) or i == marker_end:
            out.append("\\" + ch)
        elif ch == "_":
            # An underscore between two alphanumerics can neither open nor close emphasis.
            intraword = 0 < i < n - 1 and text[i - 1].isalnum() and text[i + 1].isalnum()
            out.append("_" if intraword else "\\_")
        else:
            out.append(ch)
    return "".join(out)


_BARE_PIPE = re.compile(r"(?<!\\)\|")


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.split("\n") if part.strip())


def inline(value: object, width: int | None = None) -> Md:
    """Escape a value as one line of inline Markdown text.

    Line breaks and tabs become spaces, leading and trailing whitespace is dropped (it
    would be indentation or a hard line break), and every character CommonMark treats as
    markup is backslash-escaped. With ``width``, the text is cut to that many characters
    (before escaping) and ends with ``…``.
    """
    if isinstance(value, Md):
        # Already Markdown (another filter's output): kept, but on one line.
        return Md(_one_line(value))
    text = clean(value, tabs=False).replace("\n", " ").strip()
    return Md(_escape_line(_cut(text, width)))


def heading(value: object, width: int = HEADING_WIDTH) -> Md:
    """Escape a value for a heading's text: one line, at most ``width`` characters."""
    return inline(value, width)


def cell(value: object, width: int | None = CELL_WIDTH) -> Md:
    """Escape a value for a table cell: one line with ``↵`` for each line break, pipes and
    backslashes escaped, at most ``width`` characters (``None``: no limit)."""
    if isinstance(value, Md):
        # Already Markdown: kept, but on one line and with no bare pipe left.
        return Md(_BARE_PIPE.sub(r"\\|", _one_line(value)))
    text = clean(value, tabs=False).strip()
    text = re.sub(r"[ ]*\n[ ]*", " ↵ ", text)
    escaped = _escape_line(_cut(text, width))
    if escaped.endswith("\\"):
        # markdown-it treats a pipe right after a backslash as escaped, even after "\\\\".
        escaped += " "
    return Md(escaped)


def code(value: object, width: int | None = None, *, table: bool = False) -> Md:
    """An inline code span holding the value verbatim (as one line).

    The span is delimited by a backtick run longer than any inside it. Inside a table
    cell pass ``table=True``: pipes are then escaped as ``\\|``, which GFM tables (and
    markdown-it) turn back into ``|`` inside the span.
    """
    text = _cut(clean(value, tabs=False).replace("\n", " "), width)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * (longest + 1)
    if not text.strip(" "):
        text = text or " "
    elif text[0] in "` " or text[-1] in "` ":
        text = f" {text} "
    if table:
        text = text.replace("|", "\\|")
    return Md(f"{ticks}{text}{ticks}")


# --- fenced code blocks -----------------------------------------------------------------

_INFO_UNSAFE = re.compile(r"[^A-Za-z0-9_.+#-]")


def fence(value: object, info: str = "", line_width: int | None = FENCE_LINE_WIDTH) -> Md:
    """A fenced code block holding the value verbatim, ending with a newline.

    The fence is a run of backticks longer than any backtick run in the content (at least
    three), so nothing inside can close it. Lines longer than ``line_width`` characters are
    cut and marked with how many characters were left out. ``info`` (a language name) is
    reduced to letters, digits and ``_.+#-``. Place the result at the start of a line.
    """
    text = clean(value)
    if text.endswith("\n"):
        text = text[:-1]
    lines = text.split("\n")
    if line_width is not None and line_width > 0:
        lines = [
            line
            if len(line) <= line_width
            else f"{line[:line_width]}{ELLIPSIS} [{len(line) - line_width} more characters]"
            for line in lines
        ]
    body = "\n".join(lines)
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    ticks = "`" * max(3, longest + 1)
    lang = _INFO_UNSAFE.sub("", display_text(info))[:40]
    return Md(f"{ticks}{lang}\n{body}\n{ticks}\n")


def tail_lines(value: object, lines: int) -> tuple[str, int]:
    """The last ``lines`` lines of a text, and how many lines were left out before them."""
    text = clean(value)
    if text.endswith("\n"):
        text = text[:-1]
    if not text:
        return "", 0
    parts = text.split("\n")
    if lines <= 0 or len(parts) <= lines:
        return text, 0
    return "\n".join(parts[-lines:]), len(parts) - lines


# --- the template finalizer -------------------------------------------------------------


def finalize(value: object) -> object:
    """Jinja2 ``finalize``: every ``{{ expression }}`` that is not already :class:`Md` is
    escaped as inline text. Numbers are rendered as they are."""
    if isinstance(value, Md):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Md(_escape_line(str(value)))
    if isinstance(value, Sequence | Mapping) and not isinstance(value, str):
        return inline(display_text(value))
    return inline(value)
