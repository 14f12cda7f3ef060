"""Markdown as a reader sees it: an independent CommonMark parser (markdown-it-py, with
tables) and a document's structure, for judging what the report and the escaping filters
render."""

from __future__ import annotations

from markdown_it import MarkdownIt
from markdown_it.token import Token

MD = MarkdownIt("commonmark").enable("table")


def signature(tokens: list[Token]) -> list[tuple[str, ...]]:
    """A document's structure: block tokens in order; for inline tokens, the kinds of their
    children other than text (so different text gives the same signature, but emphasis,
    links, HTML, code spans or line breaks would not)."""
    sig: list[tuple[str, ...]] = []
    for tok in tokens:
        if tok.type == "inline":
            kinds = [c.type for c in tok.children or [] if c.type not in ("text", "text_special")]
            sig.append(("inline", *kinds))
        else:
            sig.append((tok.type, tok.tag, str(tok.nesting)))
    return sig


def structure(markdown: str) -> list[tuple[str, ...]]:
    """The structure (see ``signature``) of a Markdown document."""
    return signature(MD.parse(markdown))
