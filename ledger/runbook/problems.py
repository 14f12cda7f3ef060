"""Validation findings and where they are: :class:`Problem`, :class:`RunbookInvalid`.

A problem names its place in the file (1-based line and column) and in the document
(``steps[0].run``). :class:`Locator` turns a document path into that place, from the
:class:`Loc` the YAML composer recorded for every value; :func:`describe` and
:func:`suggest` word the values and near misses that messages mention.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from ledger import errors

PathItem = str | int
FieldPath = tuple[PathItem, ...]


@dataclass(frozen=True)
class Problem:
    """One validation finding: where it is (1-based line and column) and what is wrong."""

    source: str
    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}:{self.column}"
        if self.field:
            return f"{where}: {self.field}: {self.message}"
        return f"{where}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "line": self.line,
            "column": self.column,
            "field": self.field,
            "message": self.message,
        }


class RunbookInvalid(errors.RunbookError):
    """A runbook failed validation; ``problems`` lists every finding with its location."""

    def __init__(self, source: str, problems: list[Problem], *, hint: str | None = None) -> None:
        self.source = source
        self.problems = sorted(problems, key=lambda p: (p.line, p.column, p.field, p.message))
        count = len(self.problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        noun = "problem" if count == 1 else "problems"
        super().__init__(
            f"{source} is not a valid runbook ({count} {noun}):\n{lines}\n",
            hint=hint
            or "Fix each problem at the line and column shown, then check again with "
            "'ledger validate FILE' (the format is described in docs/RUNBOOKS.md).",
        )


def format_field(path: Iterable[PathItem]) -> str:
    """``("steps", 0, "run")`` -> ``steps[0].run``."""
    out = ""
    for item in path:
        if isinstance(item, int):
            out += f"[{item}]"
        elif out:
            out += f".{item}"
        else:
            out = item
    return out


# --------------------------------------------------------------------------- locations


class Loc(NamedTuple):
    """Where a value is in the file, and where its key is (for mapping values). A named
    tuple: the composer makes one per value, a dataclass costs four times as much."""

    line: int  # 1-based
    column: int  # 1-based
    key_line: int
    key_column: int
    block: bool  # a literal or folded block scalar: content starts on the next line


class Locator:
    """Places problems at the file location of a document path (or its nearest parent)."""

    def __init__(self, source: str, locs: Mapping[FieldPath, Loc]) -> None:
        self.source = source
        self.locs = locs

    def loc(self, path: FieldPath, *, key: bool = False) -> tuple[int, int]:
        probe = path
        while probe not in self.locs and probe:
            probe = probe[:-1]
        found = self.locs.get(probe)
        if found is None:
            return 1, 1
        if key and probe == path:
            return found.key_line, found.key_column
        return found.line, found.column

    def problem(self, path: FieldPath, message: str, *, key: bool = False) -> Problem:
        line, column = self.loc(path, key=key)
        return Problem(self.source, line, column, format_field(path), message)

    def template_problem(self, path: FieldPath, message: str, lineno: int) -> Problem:
        found = self.locs.get(path)
        if found is None:
            return self.problem(path, message)
        if found.block:
            line, column = found.line + lineno, 1
        elif lineno > 1:
            line, column = found.line + lineno - 1, 1
        else:
            line, column = found.line, found.column
        return Problem(self.source, line, column, format_field(path), message)


# --------------------------------------------------------------------------- wording


def describe(value: object) -> str:
    """A value as messages show it: ``the text 'abc'``, ``the number 3``, ``a list``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"the text {shown!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def suggest(name: str, options: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for a close match among ``options``, else empty."""
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
