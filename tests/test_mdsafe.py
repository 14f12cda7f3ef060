"""The Markdown escaping filters, judged by an independent CommonMark parser (markdown-it-py).

Each filter is checked two ways: the document's structure (block tokens, and the kinds of
inline tokens other than text) is the same whatever the content, and the text a reader sees
is exactly the content (cleaned of control characters), so escaping neither breaks nor
garbles.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from markdown_it.token import Token
from support.markdown import MD, structure

from ledger.report import mdsafe

HOSTILE: list[Any] = [
    "```",
    "````\n```\n~~~",
    "~~~\nfenced\n~~~",
    "``x``` y `",
    "a | b | c",
    "|---|---|",
    "# heading",
    "## closing ##",
    "<script>alert(1)</script>",
    "<!-- unclosed comment",
    "[link](javascript:alert(1))",
    "![img](http://x/y.png)",
    "<http://example.com>",
    "---",
    "===",
    "***",
    "> quote",
    "1. list",
    "2) list",
    "- item",
    "+ item",
    "* item",
    "    indented code",
    "\tindented by tab",
    "trailing backslash \\",
    "\\",
    "two trailing spaces  ",
    "&amp; &#65; &copy",
    "*em* _em_ **strong** __strong__",
    "[ref]: http://example.com",
    "line1\nline2",
    "line1\r\nline2",
    "lone\rcarriage",
    "sep\u2028line\u2029para\x85nel",
    "".join(chr(c) for c in range(0x20)) + "\x7f",
    "\x1b[31mred\x1b[0m",
    "bidi \u202eevil\u202c",
    b"invalid \xff\xfe\xc3( utf-8",
    "x" * 100_000,
    "a\n\n# heading after blank\n\n| t | t |\n|---|---|\n",
    "$x$ ~~strike~~ <b>bold</b>",
    "123456789. big number list",
    "\ud800 lone surrogate",
]
HOSTILE_IDS = [repr(h)[:40] for h in HOSTILE]


def shown_text(inline_tok: Token) -> str:
    """The text a reader sees for an inline token made only of text."""
    parts = []
    for child in inline_tok.children or []:
        assert child.type in ("text", "text_special"), child.type
        parts.append(child.content)
    return "".join(parts)


def one_line(value: Any) -> str:
    return mdsafe.clean(value, tabs=False).replace("\n", " ").strip()


def document(value: Any) -> str:
    """A small document with the value in every kind of place."""
    return (
        f"# Report {mdsafe.heading(value)}\n\n"
        f"Intro {mdsafe.inline(value)} and {mdsafe.code(value)}.\n\n"
        f"{mdsafe.inline(value)} (a paragraph of its own)\n\n"
        "| name | value | code |\n|---|---|---|\n"
        f"| a | {mdsafe.cell(value)} | {mdsafe.code(value, 50, table=True)} |\n"
        f"|{mdsafe.cell(value)}|{mdsafe.cell(value)}|{mdsafe.cell(value)}|\n\n"
        f"- item {mdsafe.inline(value)}\n- {mdsafe.inline(value)} (end)\n\n"
        "| composed | filters |\n|---|---|\n"
        f"| {mdsafe.cell(mdsafe.fence(value))} | {mdsafe.cell(mdsafe.code(value))} |\n\n"
        f"Composed: {mdsafe.inline(mdsafe.fence(value))} {mdsafe.heading(mdsafe.fence(value))}\n\n"
        f"{mdsafe.fence(value, 'text')}"
        f"{mdsafe.fence(value)}\n"
        "## End\n"
    )


BENIGN = structure(document("benign"))


@pytest.mark.parametrize("value", HOSTILE, ids=HOSTILE_IDS)
def test_hostile_content_keeps_the_structure(value: Any) -> None:
    assert structure(document(value)) == BENIGN


@pytest.mark.parametrize("value", HOSTILE, ids=HOSTILE_IDS)
def test_inline_shows_exactly_the_text(value: Any) -> None:
    tokens = MD.parse(str(mdsafe.inline(value)))
    if not one_line(value):
        assert tokens == []
        return
    assert [t.type for t in tokens] == ["paragraph_open", "inline", "paragraph_close"]
    assert shown_text(tokens[1]) == one_line(value)


@pytest.mark.parametrize("value", HOSTILE, ids=HOSTILE_IDS)
def test_heading_is_one_heading_with_the_text(value: Any) -> None:
    tokens = MD.parse(f"## {mdsafe.heading(value)}\n")
    assert [t.type for t in tokens] == ["heading_open", "inline", "heading_close"]
    expected = one_line(value)
    if len(expected) > mdsafe.HEADING_WIDTH:
        expected = expected[: mdsafe.HEADING_WIDTH - 1] + "…"
    assert shown_text(tokens[1]) == expected


@pytest.mark.parametrize("value", HOSTILE, ids=HOSTILE_IDS)
def test_fence_holds_the_content_verbatim(value: Any) -> None:
    tokens = MD.parse(f"before\n\n{mdsafe.fence(value, line_width=None)}after\n")
    kinds = [t.type for t in tokens]
    assert kinds == [
        "paragraph_open",
        "inline",
        "paragraph_close",
        "fence",
        "paragraph_open",
        "inline",
        "paragraph_close",
    ]
    body = mdsafe.clean(value)
    body = body[:-1] if body.endswith("\n") else body
    assert tokens[3].content == body + "\n"


@pytest.mark.parametrize("value", HOSTILE, ids=HOSTILE_IDS)
def test_code_span_holds_the_content(value: Any) -> None:
    tokens = MD.parse(f"x {mdsafe.code(value)} y\n")
    children = tokens[1].children or []
    codes = [c for c in children if c.type == "code_inline"]
    assert len(codes) == 1
    expected = mdsafe.clean(value, tabs=False).replace("\n", " ")
    assert codes[0].content == (expected or " ")


@pytest.mark.parametrize("value", HOSTILE, ids=HOSTILE_IDS)
def test_cell_stays_in_its_cell(value: Any) -> None:
    src = (
        "| a | b | c |\n|---|---|---|\n"
        f"| 1 | {mdsafe.cell(value, None)} | {mdsafe.code(value, table=True)} |\n"
        f"|{mdsafe.cell(value)}|{mdsafe.cell(value)}|{mdsafe.cell(value)}|\n"
    )
    tokens = MD.parse(src)
    assert [t.type for t in tokens].count("tr_open") == 3
    assert [t.type for t in tokens].count("td_open") == 6
    cells = [t for t in tokens if t.type == "inline"][3:]
    text = mdsafe.clean(value, tabs=False).strip()
    text = re.sub(r"[ ]*\n[ ]*", " ↵ ", text)
    assert shown_text(cells[1]) == text
    code_children = [c for c in cells[2].children or [] if c.type == "code_inline"]
    assert code_children[0].content == (mdsafe.clean(value, tabs=False).replace("\n", " ") or " ")


def test_cell_cuts_long_values_and_fence_cuts_long_lines() -> None:
    long = "y" * 100_000
    assert len(mdsafe.cell(long)) == mdsafe.CELL_WIDTH
    assert mdsafe.cell(long).endswith("…")
    block = mdsafe.fence(long + "\nshort\n")
    lines = block.split("\n")
    assert lines[1].startswith("y" * mdsafe.FENCE_LINE_WIDTH + "… [")
    assert f"[{100_000 - mdsafe.FENCE_LINE_WIDTH} more characters]" in lines[1]
    assert lines[2] == "short"


def test_fence_is_longer_than_any_backtick_run() -> None:
    block = mdsafe.fence("a ````` b\n```\n")
    assert block.startswith("``````\n")
    assert block.endswith("\n``````\n")


def test_control_characters_become_visible() -> None:
    assert mdsafe.clean("a\x00b\x1bc\x7fd\x85e") == "a␀b␛c␡d\ne"
    assert mdsafe.clean("\t", tabs=False) == " "
    assert mdsafe.clean(b"\xff") == "\ufffd"
    assert mdsafe.clean("\u202e") == "\ufffd"
    assert mdsafe.clean("\udcff") == "\ufffd"


def test_readable_source_for_common_text() -> None:
    # Intraword underscores, dates, and plain words are not escaped needlessly.
    assert mdsafe.inline("restart_api on 2026-11-22 at 10:00") == (
        "restart_api on 2026-11-22 at 10:00"
    )


def test_tail_lines() -> None:
    assert mdsafe.tail_lines("a\nb\nc\n", 2) == ("b\nc", 1)
    assert mdsafe.tail_lines("a\nb", 5) == ("a\nb", 0)
    assert mdsafe.tail_lines("", 5) == ("", 0)


def test_finalize_escapes_everything_not_already_markdown() -> None:
    assert mdsafe.finalize("# x") == "\\# x"
    assert mdsafe.finalize(mdsafe.Md("# x")) == "# x"
    assert mdsafe.finalize(-3) == "\\-3"
    assert mdsafe.finalize(None) == ""
    assert mdsafe.finalize(["<a>"]) == '\\[ "\\<a\\>" \\]'.replace(" ", "")


# --- properties -------------------------------------------------------------------------

FRAGMENTS = [
    "`",
    "```",
    "~~~",
    "|",
    "\\",
    "\\|",
    "# ",
    "## x ##",
    "<script>",
    "</script>",
    "<!--",
    "[a](javascript:x)",
    "![i](x)",
    "---",
    "===",
    "***",
    "> ",
    "1. ",
    "2) ",
    "- ",
    "+ ",
    "    ",
    "\t",
    "\n",
    "\r",
    "\r\n",
    "\n\n",
    "\x00",
    "\x1b",
    "\x7f",
    "\u2028",
    "\u2029",
    "&amp;",
    "&#",
    "_",
    "*",
    " ",
    "  ",
    "9",
    ".",
    ")",
    ":",
]
ANY_TEXT = st.lists(st.one_of(st.text(max_size=8), st.sampled_from(FRAGMENTS)), max_size=12).map(
    "".join
)
ANY_VALUE = st.one_of(ANY_TEXT, st.binary(max_size=40))

PROPERTY = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY
@given(ANY_VALUE)
def test_property_document_structure_never_changes(value: Any) -> None:
    assert structure(document(value)) == BENIGN


@PROPERTY
@given(ANY_VALUE)
def test_property_inline_round_trips(value: Any) -> None:
    tokens = MD.parse(f"x {mdsafe.inline(value)} y\n")
    assert [t.type for t in tokens] == ["paragraph_open", "inline", "paragraph_close"]
    assert shown_text(tokens[1]) == f"x {one_line(value)} y"


@PROPERTY
@given(ANY_VALUE)
def test_property_fence_round_trips(value: Any) -> None:
    tokens = MD.parse(mdsafe.fence(value, line_width=None))
    assert [t.type for t in tokens] == ["fence"]
    body = mdsafe.clean(value)
    body = body[:-1] if body.endswith("\n") else body
    assert tokens[0].content == body + "\n"


@PROPERTY
@given(ANY_VALUE)
def test_property_code_span_round_trips(value: Any) -> None:
    tokens = MD.parse(f"x {mdsafe.code(value)} y\n")
    codes = [c for c in tokens[1].children or [] if c.type == "code_inline"]
    assert len(codes) == 1
    assert codes[0].content == (mdsafe.clean(value, tabs=False).replace("\n", " ") or " ")


@PROPERTY
@given(st.lists(ANY_VALUE, min_size=3, max_size=3))
def test_property_table_cells_round_trip(values: list[Any]) -> None:
    row = "|" + "|".join(f" {mdsafe.cell(v, None)} " for v in values) + "|"
    tight = "|" + "|".join(mdsafe.cell(v, None) for v in values) + "|"
    tokens = MD.parse(f"| a | b | c |\n|---|---|---|\n{row}\n{tight}\n")
    assert [t.type for t in tokens].count("td_open") == 6
    cells = [t for t in tokens if t.type == "inline"][3:]
    for i, v in enumerate(values * 2):
        text = re.sub(r"[ ]*\n[ ]*", " ↵ ", mdsafe.clean(v, tabs=False).strip())
        assert shown_text(cells[i]) == text
