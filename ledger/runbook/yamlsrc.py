"""YAML with locations: plain values, and where in the file each one came from.

Runbooks may come from anywhere, so composing is defensive: files over
:data:`~ledger.runbook.model.MAX_RUNBOOK_BYTES`, input that is not UTF-8, YAML anchors and
aliases (billion laughs), nesting deeper than :data:`~ledger.runbook.model.MAX_DEPTH`,
duplicate keys and non-standard tags are refused before any value is built. Scalars follow
the YAML 1.2 core schema (only ``true``/``false`` are booleans; ``yes``, ``no``, ``on`` and
``off`` are text). :func:`decode` checks the bytes, :func:`compose` returns the values and
a :class:`~ledger.runbook.problems.Loc` per document path.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

import yaml
from yaml.composer import Composer
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from ledger.runbook.model import MAX_DEPTH, MAX_RUNBOOK_BYTES
from ledger.runbook.problems import FieldPath, Loc, Problem, RunbookInvalid, format_field


class _Refused(Exception):
    """A fatal problem found while composing YAML (internal)."""

    def __init__(self, message: str, mark: Any) -> None:
        super().__init__(message)
        self.message = message
        self.mark = mark


class _Loader(Reader, Scanner, Parser, Composer, BaseResolver):
    """A YAML composer that refuses aliases, anchors and deep nesting, with YAML 1.2 core
    scalar resolution."""

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        BaseResolver.__init__(self)
        self.depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, AliasEvent):
            raise _Refused(
                f"YAML aliases (*{event.anchor}) are not allowed in runbooks (they can expand "
                "a small file into a huge document); write the value out",
                event.start_mark,
            )
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise _Refused(
                f"YAML anchors (&{anchor}) are not allowed in runbooks; write the value out "
                "where it is needed",
                event.start_mark,
            )
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Refused(
                f"the document is nested more than {MAX_DEPTH} levels deep", event.start_mark
            )
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        return node


for _tag, _regexp, _first in (
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+0123456789.",
    ),
):
    _Loader.add_implicit_resolver(_tag, re.compile(_regexp), list(_first))

_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS: Final = {f"{_TAG}{t}" for t in ("str", "int", "float", "bool", "null")}


def _mark_loc(mark: Any) -> tuple[int, int]:
    return int(mark.line) + 1, int(mark.column) + 1


class _Builder:
    """Turns composed nodes into plain values, recording where each value came from."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.locs: dict[FieldPath, Loc] = {}
        self.problems: list[Problem] = []

    def problem(self, node: Node, path: FieldPath, message: str) -> None:
        line, column = _mark_loc(node.start_mark)
        self.problems.append(Problem(self.source, line, column, format_field(path), message))

    def build(self, node: Node, path: FieldPath, key: Node | None) -> object:
        line, column = _mark_loc(node.start_mark)
        key_line, key_column = _mark_loc(key.start_mark) if key is not None else (line, column)
        block = isinstance(node, ScalarNode) and node.style in ("|", ">")
        self.locs[path] = Loc(line, column, key_line, key_column, block)
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        if isinstance(node, SequenceNode):
            if node.tag != f"{_TAG}seq":
                self.problem(node, path, f"the YAML tag {node.tag!r} is not allowed")
            return [self.build(item, (*path, i), None) for i, item in enumerate(node.value)]
        if isinstance(node, MappingNode):
            if node.tag != f"{_TAG}map":
                self.problem(node, path, f"the YAML tag {node.tag!r} is not allowed")
            out: dict[str, object] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, ScalarNode):
                    self.problem(key_node, path, "a mapping key must be plain text")
                    continue
                name = str(key_node.value)
                if name in out:
                    first = self.locs.get((*path, name))
                    where = f" (first at line {first.key_line})" if first else ""
                    self.problem(key_node, (*path, name), f"duplicate key {name!r}{where}")
                    continue
                out[name] = self.build(value_node, (*path, name), key_node)
            return out
        self.problem(node, path, "unsupported YAML node")  # pragma: no cover
        return None

    def scalar(self, node: ScalarNode, path: FieldPath) -> object:
        tag = node.tag
        text = str(node.value)
        if tag not in _SCALAR_TAGS:
            self.problem(
                node,
                path,
                f"the YAML tag {tag!r} is not allowed (runbooks use plain text, numbers, "
                "true/false and null only)",
            )
            return text
        kind = tag[len(_TAG) :]
        try:
            if kind == "str":
                return text
            if kind == "null":
                if text not in ("", "~", "null", "Null", "NULL"):
                    raise ValueError(f"{text!r} is not null")
                return None
            if kind == "bool":
                if text.lower() not in ("true", "false"):
                    raise ValueError(f"{text!r} is not true or false")
                return text.lower() == "true"
            if kind == "int":
                if text[:2] in ("0o", "0x"):
                    return int(text, 0)
                return int(text, 10)
            if text.lstrip("+-").lower() in (".inf", ".nan"):
                self.problem(
                    node, path, f"{text!r}: infinite and not-a-number values are not allowed"
                )
                return text
            number = float(text)
        except ValueError as exc:
            self.problem(node, path, f"cannot read the value as {kind}: {exc}")
            return text
        if not math.isfinite(number):
            self.problem(node, path, f"{text!r}: infinite and not-a-number values are not allowed")
            return text
        return number


def decode(data: bytes, source: str) -> str:
    """The runbook's bytes as text (a leading BOM dropped); :class:`RunbookInvalid` when they
    are too long or not UTF-8."""
    if len(data) > MAX_RUNBOOK_BYTES:
        raise RunbookInvalid(
            source,
            [
                Problem(
                    source,
                    1,
                    1,
                    "",
                    f"the file is {len(data)} bytes long; runbooks may be at most "
                    f"{MAX_RUNBOOK_BYTES} bytes (1 MiB)",
                )
            ],
            hint="Split the runbook, or move long scripts into files the steps run.",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = exc.start
        line = data.count(b"\n", 0, offset) + 1
        column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
        raise RunbookInvalid(
            source,
            [
                Problem(
                    source,
                    line,
                    column,
                    "",
                    f"the file is not UTF-8: invalid byte 0x{data[offset]:02x} at byte offset "
                    f"{offset}",
                )
            ],
            hint="Save the runbook as UTF-8.",
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return text


def _offset_loc(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, column


def compose(text: str, source: str) -> tuple[object, dict[FieldPath, Loc]]:
    """Parse YAML text into plain values and the location of every value."""

    def fail(line: int, column: int, message: str) -> RunbookInvalid:
        return RunbookInvalid(source, [Problem(source, line, column, "", message)])

    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:
        line, column = _offset_loc(text, exc.position)
        raise fail(
            line, column, f"the file contains a character YAML does not allow ({exc.reason})"
        ) from None
    try:
        node = loader.get_single_node()
    except _Refused as exc:
        raise fail(*_mark_loc(exc.mark), exc.message) from None
    except yaml.reader.ReaderError as exc:
        line, column = _offset_loc(text, exc.position)
        raise fail(
            line, column, f"the file contains a character YAML does not allow ({exc.reason})"
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = _mark_loc(mark) if mark is not None else (1, 1)
        detail = exc.problem or "syntax error"
        if exc.context:
            detail = f"{exc.context}, {detail}"
        raise fail(line, column, f"YAML syntax error: {detail}") from None
    except yaml.YAMLError as exc:
        raise fail(1, 1, f"YAML error: {exc}") from None
    except RecursionError:
        raise fail(1, 1, "the document is nested too deeply") from None
    finally:
        loader.dispose()
    if node is None:
        raise fail(1, 1, "the file is empty; a runbook needs at least 'name' and 'steps'")
    builder = _Builder(source)
    data = builder.build(node, (), None)
    if builder.problems:
        raise RunbookInvalid(source, builder.problems)
    return data, builder.locs
