"""YAML with locations: plain values, and where in the file each one came from.

Runbooks may come from anywhere, so composing is defensive: files over
:data:`~ledger.runbook.model.MAX_RUNBOOK_BYTES`, input that is not UTF-8, YAML anchors and
aliases (billion laughs), nesting deeper than :data:`~ledger.runbook.model.MAX_DEPTH`,
duplicate keys and non-standard tags are refused before any value is built. Scalars follow
the YAML 1.2 core schema (only ``true``/``false`` are booleans; ``yes``, ``no``, ``on`` and
``off`` are text). :func:`decode` checks the bytes, :func:`compose` returns the values and
a :class:`~ledger.runbook.problems.Loc` per document path.

Two composers give the same result: libyaml's parser (PyYAML's C extension, when PyYAML was
built with it; ``yaml.__with_libyaml__``) feeding an event-by-event builder in this module,
and PyYAML's pure-Python composer, used when the C extension is missing and to word every
YAML syntax error (libyaml words them differently), so messages and their places are the
same either way. Both refuse anchors, aliases and deep nesting at the same event.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

import yaml
from yaml.composer import Composer
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    NodeEvent,
    ScalarEvent,
    SequenceEndEvent,
    StreamEndEvent,
    StreamStartEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from ledger.runbook import model, problems


class _Unsure(Exception):
    """libyaml read text that PyYAML might read otherwise: compose with PyYAML (internal)."""


class _Refused(Exception):
    """A fatal problem found while composing YAML (internal)."""

    def __init__(self, message: str, mark: Any) -> None:
        super().__init__(message)
        self.message = message
        self.mark = mark


_CParser: Any
try:
    from yaml._yaml import CParser as _CParser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    _CParser = None


def _refusal(event: NodeEvent, depth: int) -> _Refused | None:
    """Why composing must stop at this node event (``depth``: the node's nesting level)."""
    if isinstance(event, AliasEvent):
        return _Refused(
            f"YAML aliases (*{event.anchor}) are not allowed in runbooks (they can expand "
            "a small file into a huge document); write the value out",
            event.start_mark,
        )
    anchor = event.anchor
    if anchor is not None:
        return _Refused(
            f"YAML anchors (&{anchor}) are not allowed in runbooks; write the value out "
            "where it is needed",
            event.start_mark,
        )
    if depth > model.MAX_DEPTH:
        return _Refused(
            f"the document is nested more than {model.MAX_DEPTH} levels deep", event.start_mark
        )
    return None


class _Resolver(BaseResolver):
    """YAML 1.2 core schema scalar resolution (resolvers added below)."""


class _Loader(Reader, Scanner, Parser, Composer, _Resolver):
    """A YAML composer that refuses aliases, anchors and deep nesting, with YAML 1.2 core
    scalar resolution."""

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        _Resolver.__init__(self)
        self.depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        refused = _refusal(event, self.depth + 1)
        if refused is not None:
            raise refused
        self.depth += 1
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
    _Resolver.add_implicit_resolver(_tag, re.compile(_regexp), list(_first))

_BREAK: Final = re.compile("[\r\n\x85\u2028\u2029]")
_ENDS_WITH_BREAK: Final = re.compile("[\r\n\x85\u2028\u2029]\\Z").search
# A block scalar's first line as PyYAML's scanner reads it (the indicators, then spaces
# and a comment); libyaml reads more (a comment right after the indicators, tabs).
_BLOCK_HEADER: Final = re.compile(r"[|>](?:[-+][1-9]?|[1-9][-+]?)?(?: +(?:#.*)?)?")

_TAG = "tag:yaml.org,2002:"
_STR_TAG: Final = f"{_TAG}str"
_IMPLICIT: Final[dict[Any, list[tuple[str, re.Pattern[str]]]]] = _Resolver.yaml_implicit_resolvers
_SKIP: Final[problems.FieldPath] = ("<not built>",)
_END_EVENTS: Final = frozenset({MappingEndEvent, SequenceEndEvent})
_SCALAR_TAGS: Final = {f"{_TAG}{t}" for t in ("str", "int", "float", "bool", "null")}


def _mark_loc(mark: Any) -> tuple[int, int]:
    return int(mark.line) + 1, int(mark.column) + 1


class _Builder:
    """Turns composed nodes into plain values, recording where each value came from."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.locs: dict[problems.FieldPath, problems.Loc] = {}
        self.problems: list[problems.Problem] = []

    def problem(self, node: Node, path: problems.FieldPath, message: str) -> None:
        line, column = _mark_loc(node.start_mark)
        self.problems.append(
            problems.Problem(self.source, line, column, problems.format_field(path), message)
        )

    def build(self, node: Node, path: problems.FieldPath, key: Node | None) -> object:
        line, column = _mark_loc(node.start_mark)
        key_line, key_column = _mark_loc(key.start_mark) if key is not None else (line, column)
        block = isinstance(node, ScalarNode) and node.style in ("|", ">")
        self.locs[path] = problems.Loc(line, column, key_line, key_column, block)
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

    def scalar(self, node: ScalarNode, path: problems.FieldPath) -> object:
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


class _Frame:
    """An open mapping or sequence of :class:`_EventBuilder`."""

    __slots__ = ("expect_key", "flow", "key", "key_mark", "mapping", "path", "record", "value")

    def __init__(
        self, path: problems.FieldPath, value: Any, mapping: bool, record: bool, flow: bool
    ) -> None:
        self.path = path
        self.flow = flow  # written in [] or {}
        self.value = value  # the dict or list being filled (None when not recorded)
        self.mapping = mapping
        self.record = record  # False for a key that is not text, or a value not built
        self.expect_key = mapping
        self.key: str | None = None  # the key of the value that comes next (None: skip it)
        self.key_mark: Any = None


class _EventBuilder(_Builder):
    """Plain values and locations straight from parser events (libyaml's): the same values,
    locations, problems and refusals, at the same marks, as :class:`_Loader` composing and
    :class:`_Builder` walking the nodes."""

    def __init__(self, source: str, text: str) -> None:
        super().__init__(source)
        self.root: object = None
        self.text = text
        # Where a tab may be: libyaml also takes tabs as blanks where PyYAML refuses them.
        self.tab_spans: list[tuple[int, int]] | None = [] if "\t" in text else None

    def tabs_allowed(self) -> bool:
        """Every tab in the text is inside a quoted scalar or a block scalar's content, the
        only places where PyYAML's scanner takes one too."""
        spans = iter(self.tab_spans or ())
        begin = end = -1
        at = self.text.find("\t")
        while at >= 0:
            while at >= end:
                span = next(spans, None)
                if span is None:
                    return False
                begin, end = span
            if at < begin:
                return False
            at = self.text.find("\t", at + 1)
        return True

    def check_scalar(self, event: Any, flow: bool) -> None:
        """Raise :class:`_Unsure` where libyaml reads a scalar PyYAML would not read alike;
        note where the scalar lets tabs be."""
        style = event.style
        start, end = event.start_mark.index, event.end_mark.index
        if style in ("|", ">"):
            found = _BREAK.search(self.text, start, end)
            header_end = found.start() if found is not None else end
            if not _BLOCK_HEADER.fullmatch(self.text, start, header_end):
                raise _Unsure  # libyaml also takes '|#...' and tabs in the header
            if self.tab_spans is not None and found is not None:
                self.tab_spans.append((found.end(), end))
        elif style in ("'", '"'):
            if self.tab_spans is not None:
                self.tab_spans.append((start, end))
        elif style:
            return
        elif flow and (not event.value or "?" in event.value):
            # PyYAML ends a plain scalar in [] or {} at '?', and places an empty one at the
            # ':' before it where libyaml places it at the next ',' or '}'
            raise _Unsure
        elif not event.value and start >= len(self.text) and not _ENDS_WITH_BREAK(self.text):
            # libyaml ends the last line itself: an empty value there is on the next line
            raise _Unsure

    def node(self, event: Any, stack: list[_Frame]) -> _Frame | None:
        """Take one node event; returns the frame a mapping or sequence opens."""
        kind = type(event)
        depth = len(stack)
        parent = stack[-1] if depth else None
        flow = parent is not None and parent.flow
        if kind is ScalarEvent and (
            event.style or not event.value or flow or self.tab_spans is not None
        ):
            self.check_scalar(event, flow)
        if kind is AliasEvent or event.anchor is not None or depth >= model.MAX_DEPTH:
            refused = _refusal(event, depth + 1)
            if refused is not None:
                raise refused
        path: problems.FieldPath = ()
        key_mark = None
        if parent is None:
            pass
        elif parent.mapping and parent.expect_key:
            parent.expect_key = False
            parent.key = self.key(event, parent, kind is not ScalarEvent)
            parent.key_mark = event.start_mark
            path = _SKIP  # a key's own value is not built
        elif parent.mapping:
            parent.expect_key = True
            if parent.record and parent.key is not None:
                path = (*parent.path, parent.key)
                key_mark = parent.key_mark
            else:
                path = _SKIP
        elif parent.record:
            path = (*parent.path, len(parent.value))
        else:
            path = _SKIP
        if path is _SKIP:
            if kind is ScalarEvent:
                return None
            return _Frame(path, None, kind is MappingStartEvent, False, event.flow_style)
        mark = event.start_mark
        line, column = mark.line + 1, mark.column + 1
        if key_mark is None:
            key_line, key_column = line, column
        else:
            key_line, key_column = key_mark.line + 1, key_mark.column + 1
        if kind is ScalarEvent:
            block = event.style in ("|", ">")
            self.locs[path] = problems.Loc(line, column, key_line, key_column, block)
            value = self.scalar_value(event, path)
            if parent is None:
                self.root = value
            elif parent.mapping:
                parent.value[parent.key] = value
            else:
                parent.value.append(value)
            return None
        self.locs[path] = problems.Loc(line, column, key_line, key_column, False)
        return self.collection(event, kind is MappingStartEvent, path, line, column, parent)

    def collection(
        self,
        event: Any,
        mapping: bool,
        path: problems.FieldPath,
        line: int,
        column: int,
        parent: _Frame | None,
    ) -> _Frame:
        """The frame of a mapping or sequence whose value is built."""
        tag = event.tag
        if tag is not None and tag not in ("!", f"{_TAG}map" if mapping else f"{_TAG}seq"):
            self.add(line, column, path, f"the YAML tag {tag!r} is not allowed")
        value: dict[str, object] | list[object] = {} if mapping else []
        if parent is None:
            self.root = value
        elif parent.mapping:
            parent.value[parent.key] = value
        else:
            parent.value.append(value)
        return _Frame(path, value, mapping, True, event.flow_style)

    def scalar_value(self, event: Any, path: problems.FieldPath) -> object:
        """The value of a scalar, as :meth:`_Builder.scalar` makes it of PyYAML's node."""
        tag = event.tag
        text = event.value
        if (tag is None and event.implicit[0]) or tag == "!":
            # PyYAML takes '!' as plain even on an empty value (libyaml does not)
            tag = _STR_TAG
            for resolved, regexp in _IMPLICIT.get(text[:1], ()):
                if regexp.match(text):
                    tag = resolved
                    break
        if tag is None or tag == _STR_TAG:
            return text
        node = ScalarNode(tag, text, event.start_mark, event.end_mark, event.style)
        return self.scalar(node, path)

    def key(self, event: Any, parent: _Frame, start: bool) -> str | None:
        """The text of a mapping key, or None when its value is not to be built."""
        if not parent.record:
            return None
        if start:
            line, column = _mark_loc(event.start_mark)
            self.add(line, column, parent.path, "a mapping key must be plain text")
            return None
        name = str(event.value)
        if name in parent.value:
            first = self.locs.get((*parent.path, name))
            where = f" (first at line {first.key_line})" if first else ""
            line, column = _mark_loc(event.start_mark)
            self.add(line, column, (*parent.path, name), f"duplicate key {name!r}{where}")
            return None
        return name

    def add(self, line: int, column: int, path: problems.FieldPath, message: str) -> None:
        self.problems.append(
            problems.Problem(self.source, line, column, problems.format_field(path), message)
        )


def _compose_events(events: Any, text: str, source: str) -> _EventBuilder | None:
    """Compose the single document of a libyaml event stream; None when the stream is not
    exactly one document (the pure-Python composer then words what is wrong)."""
    get = events.get_event
    if not isinstance(get(), StreamStartEvent) or not isinstance(get(), DocumentStartEvent):
        return None
    builder = _EventBuilder(source, text)
    stack: list[_Frame] = []
    node = builder.node
    while True:
        event: Event = get()
        if type(event) in _END_EVENTS:
            stack.pop()
        elif isinstance(event, NodeEvent):
            frame = node(event, stack)
            if frame is not None:
                stack.append(frame)
        else:
            return None  # pragma: no cover - the parser keeps to the grammar
        if not stack:
            break
    if not isinstance(get(), DocumentEndEvent) or not isinstance(get(), StreamEndEvent):
        return None
    return builder


def decode(data: bytes, source: str) -> str:
    """The runbook's bytes as text (a leading BOM dropped); :class:`RunbookInvalid` when they
    are too long or not UTF-8."""
    if len(data) > model.MAX_RUNBOOK_BYTES:
        raise problems.RunbookInvalid(
            source,
            [
                problems.Problem(
                    source,
                    1,
                    1,
                    "",
                    f"the file is {len(data)} bytes long; runbooks may be at most "
                    f"{model.MAX_RUNBOOK_BYTES} bytes (1 MiB)",
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
        raise problems.RunbookInvalid(
            source,
            [
                problems.Problem(
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


def compose(
    text: str, source: str, *, libyaml: bool = True
) -> tuple[object, dict[problems.FieldPath, problems.Loc]]:
    """Parse YAML text into plain values and the location of every value.

    With ``libyaml`` (and PyYAML built with it) libyaml parses; a document it cannot parse
    is parsed again by the pure-Python composer, which words the syntax error."""
    if libyaml and _CParser is not None:
        builder = _compose_libyaml(text, source)
        if builder is not None:
            if builder.problems:
                raise problems.RunbookInvalid(source, builder.problems)
            return builder.root, builder.locs
    return _compose_python(text, source)


def _fail(source: str, line: int, column: int, message: str) -> problems.RunbookInvalid:
    return problems.RunbookInvalid(source, [problems.Problem(source, line, column, "", message)])


def _compose_libyaml(text: str, source: str) -> _EventBuilder | None:
    """The document composed from libyaml's events; None when libyaml refuses the text."""
    if "\ufeff" in text:
        return None  # libyaml skips a byte order mark where PyYAML reads a character
    parser = _CParser(text)
    try:
        builder = _compose_events(parser, text, source)
    except _Refused as exc:
        if "\t" in text:
            return None  # PyYAML may refuse a tab before it reaches this event
        raise _fail(source, *_mark_loc(exc.mark), exc.message) from None
    except (yaml.YAMLError, _Unsure):
        return None
    finally:
        parser.dispose()
    if builder is not None and builder.tab_spans is not None and not builder.tabs_allowed():
        return None
    return builder


def _compose_python(
    text: str, source: str
) -> tuple[object, dict[problems.FieldPath, problems.Loc]]:
    """Parse YAML text with PyYAML's pure-Python composer (see :func:`compose`)."""

    def fail(line: int, column: int, message: str) -> problems.RunbookInvalid:
        return _fail(source, line, column, message)

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
        raise problems.RunbookInvalid(source, builder.problems)
    return data, builder.locs
