"""Runbooks: parsing, validation, parameters and templating.

A runbook is a YAML file (see ``docs/RUNBOOKS.md``). :func:`load_runbook` reads one and
returns a validated :class:`Runbook`; every problem found is reported at once, each as
``file:line:column: field.path: message``, in a :class:`RunbookInvalid` error.

Loading is defensive, since runbooks may come from anywhere: files over 1 MiB, input that
is not UTF-8, YAML anchors and aliases (billion laughs), nesting deeper than 32 levels,
duplicate keys and non-standard tags are refused before any value is built. YAML scalars
follow the YAML 1.2 core schema (only ``true``/``false`` are booleans; ``yes``, ``no``,
``on`` and ``off`` are text). The document is then checked against the JSON Schema shipped
in ``ledger/schema/runbook.schema.json`` and against the rules the schema cannot express
(unique step names, typed defaults, templates that parse and only read parameters that exist
and steps that ran before).

At run time the engine resolves parameters with :func:`resolve_parameters`, keeps the state
of the run in a :class:`TemplateContext`, and renders with :func:`render_command`,
:func:`step_environment`, :func:`render_cwd`, :func:`render_lock`,
:func:`render_approval_message` and :func:`evaluate_condition`. Every renderer returns the
real text (for execution) and a redacted one (for the ledger), where each secret parameter
is ``[REDACTED:name]``.

The module reads the runbook file and secret files; it does nothing else with the outside
world.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal

import jsonschema
import yaml
from jinja2 import TemplateError
from yaml.composer import Composer
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from ledger import templating
from ledger.errors import InputError, RunbookError, UsageError
from ledger.templating import Namespace, Raw, TemplateProblem

# --------------------------------------------------------------------------- limits

#: Largest runbook file accepted (bytes).
MAX_RUNBOOK_BYTES: Final = 1 << 20
#: Deepest nesting of YAML collections accepted.
MAX_DEPTH: Final = 32
#: Largest secret file read by ``from_file`` (bytes).
MAX_SECRET_FILE_BYTES: Final = 64 << 10
#: Shortest secret value accepted (shorter values would redact unrelated output).
MIN_SECRET_LENGTH: Final = 4
#: Largest captured output value (characters).
MAX_OUTPUT_CHARS: Final = 64 << 10
#: Longest duration accepted (seconds): 30 days.
MAX_DURATION_S: Final = 30 * 86400.0
#: Default delay before the first retry (seconds).
DEFAULT_RETRY_DELAY_S: Final = 1.0
#: Prefix of the environment variables that carry parameters into steps.
PARAM_ENV_PREFIX: Final = "PARAM_"

ParamType = Literal["string", "int", "bool"]
ParamValue = str | int | bool | None
Phase = Literal["main", "on_failure"]
OutputKind = Literal["stdout", "stderr", "json", "regex"]

PathItem = str | int
FieldPath = tuple[PathItem, ...]

# --------------------------------------------------------------------------- problems


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


class RunbookInvalid(RunbookError):
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


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Parameter:
    """A declared parameter. ``default`` is ``None`` when there is none."""

    name: str
    type: ParamType = "string"
    default: ParamValue = None
    choices: list[ParamValue] | None = None
    description: str | None = None
    secret: bool = False
    from_env: str | None = None
    from_file: str | None = None
    required: bool = True
    pattern: str | None = None
    min: int | None = None
    max: int | None = None
    line: int = 0

    @property
    def env_name(self) -> str:
        """The environment variable that carries the value into steps: ``PARAM_<NAME>``."""
        return PARAM_ENV_PREFIX + self.name.upper()


@dataclass(frozen=True)
class OutputSpec:
    """How one output is captured: ``kind`` stdout/stderr (whole stream, stripped), json
    (``expr`` is a dotted path into stdout parsed as JSON) or regex (``expr`` is the pattern,
    searched in stdout: the group named ``value``, else group 1, else the whole match)."""

    name: str
    kind: OutputKind
    expr: str | None = None


@dataclass(frozen=True)
class ApprovalSpec:
    approvers: list[str]
    min_approvals: int = 1
    message: str | None = None
    timeout_s: float | None = None


@dataclass(frozen=True)
class Step:
    """One step: exactly one of ``run`` (a command template) or ``approval``.

    ``index`` is the position in its list (``phase`` says which: main steps or on_failure
    handlers); ``line`` is the 1-based line of the step in the file.
    """

    name: str
    index: int
    phase: Phase = "main"
    description: str | None = None
    run: str | None = None
    shell: str = "bash"
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    retries: int = 0
    retry_delay_s: float = DEFAULT_RETRY_DELAY_S
    retry_backoff: float = 1.0
    until: str | None = None
    when: str | None = None
    continue_on_error: bool = False
    outputs: dict[str, OutputSpec] = field(default_factory=dict)
    approval: ApprovalSpec | None = None
    line: int = 0

    @property
    def is_approval(self) -> bool:
        return self.approval is not None

    @property
    def max_attempts(self) -> int:
        """How many attempts at most: ``retries + 1``."""
        return self.retries + 1

    def retry_delay_for(self, attempt: int) -> float:
        """Seconds to wait before attempt number ``attempt`` (1-based; 0 for the first).

        The delay before attempt 2 is ``retry_delay_s``; each later one is multiplied by
        ``retry_backoff``.
        """
        if attempt <= 1:
            return 0.0
        delay: float = self.retry_delay_s * self.retry_backoff ** (attempt - 2)
        return min(delay, MAX_DURATION_S)


@dataclass(frozen=True)
class Runbook:
    """A validated runbook. ``text`` is the exact file content and ``sha256`` its digest."""

    name: str
    description: str | None
    parameters: dict[str, Parameter]
    env: dict[str, str]
    capture_env: list[str]
    lock: str | None
    steps: list[Step]
    on_failure: list[Step]
    text: bytes
    sha256: str
    path: Path | None
    source: str

    @property
    def all_steps(self) -> list[Step]:
        """Main steps then on_failure handlers."""
        return [*self.steps, *self.on_failure]

    def step(self, name: str) -> Step:
        """The step (main or handler) called ``name``; :class:`RunbookError` if none."""
        for step in self.all_steps:
            if step.name == name:
                return step
        known = ", ".join(s.name for s in self.all_steps)
        raise RunbookError(
            f"the runbook {self.name!r} ({self.source}) has no step called {name!r} "
            f"(its steps: {known}).",
            hint="Check the step name.",
        )


# --------------------------------------------------------------------------- durations

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?) *(ms|s|m|h|d)")
_DURATION_FULL = re.compile(r"(?:[0-9]+(?:\.[0-9]+)? *(?:ms|s|m|h|d) *)+")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds from ``30``, ``1.5``, ``"30s"``, ``"500ms"``, ``"5m"``, ``"1h30m"``, ``"1d"``.

    :class:`ValueError` with a readable message when the value is not a duration.
    """
    if isinstance(value, bool):
        raise ValueError("a duration cannot be true or false")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", text):
            seconds = float(text)
        elif _DURATION_FULL.fullmatch(text):
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))
        else:
            raise ValueError(
                f"{value!r} is not a duration (use a number of seconds, or 500ms, 30s, 5m, "
                "1h, 1d, 1h30m)"
            )
    else:
        raise ValueError(f"{value!r} is not a duration")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{value!r} is not a duration (it must be finite and not negative)")
    if seconds > MAX_DURATION_S:
        raise ValueError(f"{value!r} is longer than the 30 days a duration may be")
    return seconds


# --------------------------------------------------------------------------- YAML


@dataclass(frozen=True)
class _Loc:
    line: int  # 1-based
    column: int  # 1-based
    key_line: int
    key_column: int
    block: bool  # a literal or folded block scalar: content starts on the next line


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
        self.locs: dict[FieldPath, _Loc] = {}
        self.problems: list[Problem] = []

    def problem(self, node: Node, path: FieldPath, message: str) -> None:
        line, column = _mark_loc(node.start_mark)
        self.problems.append(Problem(self.source, line, column, format_field(path), message))

    def build(self, node: Node, path: FieldPath, key: Node | None) -> object:
        line, column = _mark_loc(node.start_mark)
        key_line, key_column = _mark_loc(key.start_mark) if key is not None else (line, column)
        block = isinstance(node, ScalarNode) and node.style in ("|", ">")
        self.locs[path] = _Loc(line, column, key_line, key_column, block)
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


def _decode(data: bytes, source: str) -> str:
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


def _compose(text: str, source: str) -> tuple[object, dict[FieldPath, _Loc]]:
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


# --------------------------------------------------------------------------- schema


@cache
def runbook_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the runbook format, as shipped in the package."""
    text = resources.files("ledger").joinpath("schema/runbook.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def schema_text() -> str:
    """The JSON Schema as text, exactly as shipped."""
    return resources.files("ledger").joinpath("schema/runbook.schema.json").read_text("utf-8")


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(runbook_schema())


_TYPE_NAMES: Final = {
    "string": "text",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "null",
}


def _describe(value: object) -> str:
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


def _suggest(name: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Locator:
    def __init__(self, source: str, locs: Mapping[FieldPath, _Loc]) -> None:
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


def _schema_message(error: jsonschema.ValidationError) -> str | None:
    custom = error.schema.get("errorMessage") if isinstance(error.schema, dict) else None
    if isinstance(custom, dict):
        custom = custom.get(str(error.validator))
    if isinstance(custom, str):
        if isinstance(error.instance, dict | list):
            return custom
        return f"{custom} (got {_describe(error.instance)})"
    return None


def _schema_problems(data: object, where: _Locator, bad_paths: list[FieldPath]) -> list[Problem]:
    """Schema violations as problems; ``bad_paths`` receives the path of each violation."""
    problems: dict[tuple[str, str], Problem] = {}

    def add(problem: Problem) -> None:
        problems.setdefault((problem.field, problem.message), problem)

    for error in _validator().iter_errors(data):
        path: FieldPath = tuple(error.absolute_path)
        validator = str(error.validator)
        instance = error.instance
        if "propertyNames" in error.absolute_schema_path:
            key = str(instance)
            bad_paths.append((*path, key))
            custom = _schema_message(error) or error.message
            add(where.problem((*path, key), f"invalid name: {custom}", key=True))
            continue
        bad_paths.append(path)
        if validator == "required" and isinstance(instance, dict):
            for name in error.validator_value:
                if name not in instance:
                    add(where.problem((*path, name), "required field is missing"))
            continue
        if validator == "additionalProperties" and isinstance(instance, dict):
            allowed = list(error.schema.get("properties", {}))
            for name in instance:
                if name not in allowed:
                    add(
                        where.problem(
                            (*path, name),
                            f"unknown field {name!r}{_suggest(name, allowed)}; allowed here: "
                            f"{', '.join(allowed)}",
                            key=True,
                        )
                    )
            continue
        custom = _schema_message(error)
        if custom is not None:
            add(where.problem(path, custom))
            continue
        if validator == "type":
            wanted = error.validator_value
            kinds = [wanted] if isinstance(wanted, str) else list(wanted)
            names = " or ".join(_TYPE_NAMES.get(k, k) for k in kinds)
            message = f"expected {names}, got {_describe(instance)}"
        elif validator == "enum":
            options = ", ".join(str(v) for v in error.validator_value)
            message = f"must be one of: {options} (got {_describe(instance)})"
        elif validator == "minItems":
            message = f"must have at least {error.validator_value} item(s)"
        elif validator == "minLength":
            message = "must not be empty"
        elif validator == "uniqueItems":
            message = "has the same item more than once"
        elif validator == "minimum":
            message = f"must be at least {error.validator_value} (got {_describe(instance)})"
        elif validator == "maximum":
            message = f"must be at most {error.validator_value} (got {_describe(instance)})"
        else:
            message = error.message
        add(where.problem(path, message))
    return list(problems.values())


# --------------------------------------------------------------------------- semantics

ALL_ROOTS: Final = frozenset({"params", "steps", "step", "run", "env"})
STEP_ATTRS: Final = frozenset({"exit_code", "status", "outputs"})
CURRENT_ATTRS: Final = frozenset({"name", "attempt", "exit_code", "status", "outputs"})
RUN_ATTRS: Final = frozenset({"id", "incident", "trigger", "failed_step"})
_APPROVAL_STEP_FIELDS: Final = frozenset({"name", "description", "approval", "when"})

_TYPE_CHECK: Final[dict[str, Callable[[object], bool]]] = {
    "string": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
}


@dataclass
class _Scope:
    """What a template may read."""

    what: str
    roots: frozenset[str]
    params: frozenset[str]
    env_names: frozenset[str]
    earlier: dict[str, frozenset[str]] = field(default_factory=dict)  # step -> outputs
    later: frozenset[str] = frozenset()
    current: str | None = None
    current_outputs: frozenset[str] = frozenset()


class _Checker:
    def __init__(self, where: _Locator) -> None:
        self.where = where
        self.problems: list[Problem] = []

    def add(self, path: FieldPath, message: str, *, key: bool = False) -> None:
        self.problems.append(self.where.problem(path, message, key=key))

    # ----- templates

    def template(self, source: str, path: FieldPath, scope: _Scope, *, kind: str) -> None:
        """Check a template (kind command/text) or condition (kind condition)."""
        try:
            if kind == "condition" and not templating.is_template(source):
                tree: Any = templating.parse_expression(source)
                templating.check_expression_compiles(source)
            else:
                tree = templating.parse_template(source)
                templating.check_compiles(source, command=kind == "command")
        except TemplateProblem as exc:
            self.problems.append(
                self.where.template_problem(path, f"template error: {exc.message}", exc.lineno)
            )
            return
        undeclared, refs = templating.references(tree)
        for name in sorted(undeclared - templating.BUILTIN_NAMES):
            if name in scope.roots:
                continue
            if name in ALL_ROOTS:
                message = f"'{name}' is not available in {scope.what}"
            else:
                message = (
                    f"unknown variable {name!r}{_suggest(name, scope.roots)}; "
                    f"{scope.what} can use: {', '.join(sorted(scope.roots))}"
                )
            self.problems.append(self.where.template_problem(path, message, 1))
        for ref in refs:
            if ref.root not in scope.roots:
                continue
            found = self._reference(ref, scope)
            if found:
                self.problems.append(self.where.template_problem(path, found, ref.lineno))

    def _reference(self, ref: templating.Reference, scope: _Scope) -> str | None:
        p = ref.path
        if not p:
            return None
        shown = ".".join((ref.root, *p))
        if ref.root == "params":
            if p[0] not in scope.params:
                return (
                    f"{shown}: no parameter {p[0]!r}{_suggest(p[0], scope.params)} "
                    f"(declared: {', '.join(sorted(scope.params)) or 'none'})"
                )
        elif ref.root == "env":
            if p[0] not in scope.env_names:
                return (
                    f"{shown}: {p[0]!r} is not in the runbook's env or capture_env"
                    f"{_suggest(p[0], scope.env_names)}; only those are readable as env.NAME"
                )
        elif ref.root == "run":
            if p[0] not in RUN_ATTRS:
                return f"{shown}: run has {', '.join(sorted(RUN_ATTRS))}"
        elif ref.root == "step":
            if p[0] not in CURRENT_ATTRS:
                return f"{shown}: step has {', '.join(sorted(CURRENT_ATTRS))}"
            if p[0] == "outputs" and len(p) > 1 and p[1] not in scope.current_outputs:
                return f"{shown}: this step declares no output {p[1]!r}"
        elif ref.root == "steps":
            name = p[0]
            if name not in scope.earlier:
                if name == scope.current:
                    return f"{shown}: a step cannot read its own results through steps (use step)"
                if name in scope.later:
                    return (
                        f"{shown}: step {name!r} runs after this one; a template can only read "
                        "steps that ran before it"
                    )
                return f"{shown}: no step {name!r}{_suggest(name, scope.earlier)}"
            if len(p) > 1:
                if p[1] not in STEP_ATTRS:
                    return f"{shown}: a step has {', '.join(sorted(STEP_ATTRS))}"
                outputs = scope.earlier[name]
                if p[1] == "outputs" and len(p) > 2 and p[2] not in outputs:
                    declared = ", ".join(sorted(outputs)) or "none"
                    return (
                        f"{shown}: step {name!r} declares no output {p[2]!r} (declared: {declared})"
                    )
        return None

    # ----- parameters

    def parameters(self, raw: Mapping[str, Any]) -> dict[str, Parameter]:
        params: dict[str, Parameter] = {}
        seen_env: dict[str, str] = {}
        for name, spec in raw.items():
            base: FieldPath = ("parameters", name)
            ptype: ParamType = spec.get("type", "string")
            check = _TYPE_CHECK[ptype]
            default = spec.get("default")
            choices = spec.get("choices")
            secret = bool(spec.get("secret", False))
            env_name = PARAM_ENV_PREFIX + name.upper()
            if env_name in seen_env:
                self.add(
                    base,
                    f"parameters {name!r} and {seen_env[env_name]!r} both map to the "
                    f"environment variable {env_name}; rename one",
                    key=True,
                )
            seen_env[env_name] = name
            if default is not None and not check(default):
                self.add(
                    (*base, "default"),
                    f"the default must be of type {ptype}, got {_describe(default)}"
                    + (" (quote it to make it text)" if ptype == "string" else ""),
                )
            if choices is not None:
                for i, choice in enumerate(choices):
                    if not check(choice):
                        self.add(
                            (*base, "choices", i),
                            f"a choice must be of type {ptype}, got {_describe(choice)}",
                        )
                if default is not None and default not in choices:
                    self.add(
                        (*base, "default"),
                        f"the default {default!r} is not one of the choices "
                        f"({', '.join(str(c) for c in choices)})",
                    )
            if secret and default is not None:
                self.add(
                    (*base, "default"),
                    "a secret parameter cannot have a default: its value would be in the "
                    "runbook file; read it with from_env or from_file, or pass -p",
                )
            required = spec.get("required")
            if required is True and default is not None:
                self.add(
                    (*base, "required"),
                    "a parameter with a default is never missing; remove 'required' or 'default'",
                )
            pattern = spec.get("pattern")
            if pattern is not None:
                if ptype != "string":
                    self.add((*base, "pattern"), "'pattern' applies to string parameters only")
                else:
                    try:
                        compiled = re.compile(pattern)
                    except re.error as exc:
                        self.add((*base, "pattern"), f"not a valid regular expression: {exc}")
                    else:
                        if isinstance(default, str) and not compiled.fullmatch(default):
                            self.add(
                                (*base, "default"),
                                f"the default {default!r} does not match the pattern",
                            )
            minimum, maximum = spec.get("min"), spec.get("max")
            for bound in ("min", "max"):
                if bound in spec and ptype != "int":
                    self.add((*base, bound), f"'{bound}' applies to int parameters only")
            if minimum is not None and maximum is not None and minimum > maximum:
                self.add((*base, "max"), f"max {maximum} is less than min {minimum}")
            if isinstance(default, int) and not isinstance(default, bool):
                if minimum is not None and default < minimum:
                    self.add((*base, "default"), f"the default {default} is less than min")
                if maximum is not None and default > maximum:
                    self.add((*base, "default"), f"the default {default} is more than max")
            params[name] = Parameter(
                name=name,
                type=ptype,
                default=default,
                choices=list(choices) if choices is not None else None,
                description=spec.get("description"),
                secret=secret,
                from_env=spec.get("from_env"),
                from_file=spec.get("from_file"),
                required=required if required is not None else default is None,
                pattern=pattern,
                min=minimum,
                max=maximum,
                line=self.where.loc(base, key=True)[0],
            )
        return params

    # ----- steps

    def duration(self, value: object, path: FieldPath, *, positive: bool = False) -> float | None:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.add(path, str(exc))
            return None
        if positive and seconds <= 0:
            self.add(path, "must be more than zero")
            return None
        return seconds

    def step(
        self, raw: Mapping[str, Any], index: int, phase: Phase, defaults: Mapping[str, Any]
    ) -> Step:
        base: FieldPath = (phase if phase == "on_failure" else "steps", index)
        name = str(raw["name"])
        approval: ApprovalSpec | None = None
        if "approval" in raw:
            for extra in sorted(set(raw) - _APPROVAL_STEP_FIELDS):
                self.add(
                    (*base, extra),
                    f"{extra!r} applies to command steps only; an approval step takes "
                    f"{', '.join(sorted(_APPROVAL_STEP_FIELDS))}",
                    key=True,
                )
            spec = raw["approval"]
            approvers = list(spec["approvers"])
            min_approvals = int(spec.get("min_approvals", 1))
            if min_approvals > len(approvers):
                self.add(
                    (*base, "approval", "min_approvals"),
                    f"{min_approvals} approvals are needed but only {len(approvers)} "
                    "approver(s) are listed",
                )
            timeout = spec.get("timeout")
            approval = ApprovalSpec(
                approvers=approvers,
                min_approvals=min_approvals,
                message=spec.get("message"),
                timeout_s=(
                    self.duration(timeout, (*base, "approval", "timeout"), positive=True)
                    if timeout is not None
                    else None
                ),
            )
        outputs: dict[str, OutputSpec] = {}
        for out_name, out_spec in raw.get("outputs", {}).items():
            out_path: FieldPath = (*base, "outputs", out_name)
            if isinstance(out_spec, str):
                outputs[out_name] = OutputSpec(
                    out_name, "stdout" if out_spec == "stdout" else "stderr"
                )
            elif "json" in out_spec:
                expr = str(out_spec["json"])
                if any(part == "" for part in expr.split(".")):
                    self.add((*out_path, "json"), f"{expr!r} is not a dotted path like a.b.0")
                outputs[out_name] = OutputSpec(out_name, "json", expr)
            else:
                expr = str(out_spec["regex"])
                try:
                    re.compile(expr)
                except re.error as exc:
                    self.add((*out_path, "regex"), f"not a valid regular expression: {exc}")
                outputs[out_name] = OutputSpec(out_name, "regex", expr)
        timeout_raw = raw.get("timeout", defaults.get("timeout"))
        timeout_path = (*base, "timeout") if "timeout" in raw else ("defaults", "timeout")
        retry_delay = raw.get("retry_delay")
        env = {k: _env_text(v) for k, v in raw.get("env", {}).items()}
        return Step(
            name=name,
            index=index,
            phase=phase,
            description=raw.get("description"),
            run=raw.get("run"),
            shell=str(raw.get("shell", defaults.get("shell", "bash"))),
            cwd=raw.get("cwd", defaults.get("cwd")),
            env=env,
            timeout_s=(
                self.duration(timeout_raw, timeout_path, positive=True)
                if timeout_raw is not None
                else None
            ),
            retries=int(raw.get("retries", 0)),
            retry_delay_s=(
                self.duration(retry_delay, (*base, "retry_delay")) or 0.0
                if retry_delay is not None
                else DEFAULT_RETRY_DELAY_S
            ),
            retry_backoff=float(raw.get("retry_backoff", 1.0)),
            until=raw.get("until"),
            when=raw.get("when"),
            continue_on_error=bool(raw.get("continue_on_error", False)),
            outputs=outputs,
            approval=approval,
            line=self.where.loc(base)[0],
        )


def _env_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _build(
    data: Mapping[str, Any], where: _Locator, bad_paths: list[FieldPath]
) -> tuple[dict[str, Any], list[Problem]]:
    """Semantic checks; returns the model's fields and the problems.

    Parts the schema found invalid (``bad_paths``) are not checked again: a parameter with a
    schema violation is skipped; any other violation skips the checks of steps and templates.
    """
    checker = _Checker(where)
    raw_params: Mapping[str, Any] = data.get("parameters", {})
    bad_params = {p[1] for p in bad_paths if len(p) >= 2 and p[0] == "parameters"}
    params = checker.parameters({k: v for k, v in raw_params.items() if k not in bad_params})
    if any(not (len(p) >= 2 and p[0] == "parameters") for p in bad_paths):
        return {}, checker.problems
    defaults = data.get("defaults", {})
    if "timeout" in defaults:
        checker.duration(defaults["timeout"], ("defaults", "timeout"), positive=True)
    steps = [checker.step(raw, i, "main", defaults) for i, raw in enumerate(data["steps"])]
    handlers = [
        checker.step(raw, i, "on_failure", defaults)
        for i, raw in enumerate(data.get("on_failure", []))
    ]

    # unique step names
    seen: dict[str, FieldPath] = {}
    for step in [*steps, *handlers]:
        list_name = "steps" if step.phase == "main" else "on_failure"
        path: FieldPath = (list_name, step.index, "name")
        if step.name in seen:
            first = format_field(seen[step.name])
            checker.add(path, f"duplicate step name {step.name!r} (first used at {first})")
        else:
            seen[step.name] = path

    # templates
    env = {k: _env_text(v) for k, v in data.get("env", {}).items()}
    capture_env = list(data.get("capture_env", []))
    env_names = frozenset(env) | frozenset(capture_env)
    param_names = frozenset(raw_params)
    top_roots = frozenset({"params", "run"})
    for key, value in env.items():
        if templating.is_template(value):
            scope = _Scope("the runbook's env", top_roots, param_names, env_names)
            checker.template(value, ("env", key), scope, kind="text")
    lock = data.get("lock")
    if lock is not None:
        scope = _Scope("lock", frozenset({"params", "env"}), param_names, env_names)
        checker.template(lock, ("lock",), scope, kind="text")
    all_names = frozenset(s.name for s in [*steps, *handlers])
    step_roots = frozenset({"params", "steps", "step", "run", "env"})
    earlier: dict[str, frozenset[str]] = {}
    for step in [*steps, *handlers]:
        list_name = "steps" if step.phase == "main" else "on_failure"
        base: FieldPath = (list_name, step.index)
        scope = _Scope(
            f"step {step.name!r}",
            step_roots,
            param_names,
            env_names,
            earlier=dict(earlier),
            later=all_names - frozenset(earlier) - {step.name},
            current=step.name,
            current_outputs=frozenset(step.outputs),
        )
        if step.run is not None:
            checker.template(step.run, (*base, "run"), scope, kind="command")
        if (
            step.cwd is not None
            and "cwd" in data["steps" if step.phase == "main" else "on_failure"][step.index]
        ):
            checker.template(step.cwd, (*base, "cwd"), scope, kind="text")
        for key, value in step.env.items():
            checker.template(value, (*base, "env", key), scope, kind="text")
        if step.when is not None:
            checker.template(step.when, (*base, "when"), scope, kind="condition")
        if step.until is not None:
            checker.template(step.until, (*base, "until"), scope, kind="condition")
        if step.approval is not None and step.approval.message is not None:
            checker.template(
                step.approval.message, (*base, "approval", "message"), scope, kind="text"
            )
        earlier[step.name] = frozenset(step.outputs)
    cwd_default = defaults.get("cwd")
    if cwd_default is not None:
        scope = _Scope("defaults.cwd", frozenset({"params", "run", "env"}), param_names, env_names)
        checker.template(cwd_default, ("defaults", "cwd"), scope, kind="text")

    fields = {
        "name": data["name"],
        "description": data.get("description"),
        "parameters": params,
        "env": env,
        "capture_env": capture_env,
        "lock": lock,
        "steps": steps,
        "on_failure": handlers,
    }
    return fields, checker.problems


# --------------------------------------------------------------------------- loading


def parse_runbook(text: bytes, source: str, *, path: Path | None = None) -> Runbook:
    """Parse and validate a runbook from its exact bytes.

    ``source`` names the runbook in messages (usually its path). Raises
    :class:`RunbookInvalid` (a :class:`RunbookError`) listing every problem found.
    """
    decoded = _decode(text, source)
    data, locs = _compose(decoded, source)
    where = _Locator(source, locs)
    bad_paths: list[FieldPath] = []
    problems = _schema_problems(data, where, bad_paths)
    if not isinstance(data, dict) or () in bad_paths:
        raise RunbookInvalid(source, problems)
    fields, more = _build(data, where, bad_paths)
    problems += more
    if problems:
        raise RunbookInvalid(source, problems)
    return Runbook(
        **fields,
        text=bytes(text),
        sha256=hashlib.sha256(text).hexdigest(),
        path=path,
        source=source,
    )


def load_runbook(path: Path) -> Runbook:
    """Read and validate the runbook file at ``path`` (see :func:`parse_runbook`)."""
    source = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_RUNBOOK_BYTES:
            raise RunbookInvalid(
                source,
                [
                    Problem(
                        source,
                        1,
                        1,
                        "",
                        f"the file is {size} bytes long; runbooks may be at most "
                        f"{MAX_RUNBOOK_BYTES} bytes (1 MiB)",
                    )
                ],
                hint="Split the runbook, or move long scripts into files the steps run.",
            )
        with path.open("rb") as handle:
            data = handle.read(MAX_RUNBOOK_BYTES + 1)
    except IsADirectoryError:
        raise RunbookError(
            f"{source} is a directory, not a runbook file.", hint="Give the path of a YAML file."
        ) from None
    except FileNotFoundError:
        raise RunbookError(
            f"the runbook {source} does not exist.", hint="Check the path and try again."
        ) from None
    except OSError as exc:
        raise RunbookError(
            f"cannot read the runbook {source}: {exc.strerror or exc}.",
            hint="Check the file's permissions.",
        ) from None
    return parse_runbook(data, source, path=path)


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class ResolvedParams:
    """Parameter values for one run.

    ``values`` holds the real values (for execution only). ``sources`` says where each came
    from: ``given``, ``env:VAR``, ``file:PATH``, ``default`` or ``unset``.
    """

    values: dict[str, ParamValue] = field(repr=False)
    secret_names: frozenset[str] = frozenset()
    sources: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"ResolvedParams({self.redacted()!r})"

    def redacted(self) -> dict[str, ParamValue]:
        """The values with every secret replaced by ``[REDACTED:name]`` (for records)."""
        return {
            name: (
                redaction_label(name) if name in self.secret_names and value is not None else value
            )
            for name, value in self.values.items()
        }

    def secrets(self) -> dict[str, str]:
        """Secret name -> value as text, for redactors."""
        return {
            name: templating.to_text(value)
            for name, value in self.values.items()
            if name in self.secret_names and value is not None
        }

    def environment(self) -> dict[str, str]:
        """``PARAM_<NAME>`` -> value as text (empty for unset), secrets included."""
        return {
            PARAM_ENV_PREFIX + name.upper(): templating.to_text(value)
            for name, value in self.values.items()
        }

    def redacted_environment(self) -> dict[str, str]:
        """Like :meth:`environment`, with secrets as ``[REDACTED:name]``."""
        return {
            PARAM_ENV_PREFIX + name.upper(): templating.to_text(value)
            for name, value in self.redacted().items()
        }


def redaction_label(name: str) -> str:
    """What replaces a secret's value: ``[REDACTED:name]``."""
    return f"[REDACTED:{name}]"


def redact(text: str, secrets: Mapping[str, str]) -> str:
    """Replace every occurrence of each secret value in ``text`` (longest values first)."""
    for name, value in sorted(secrets.items(), key=lambda item: -len(item[1])):
        if value:
            text = text.replace(value, redaction_label(name))
    return text


_TRUE: Final = frozenset({"true", "yes", "on", "1"})
_FALSE: Final = frozenset({"false", "no", "off", "0"})


def _coerce(param: Parameter, raw: object, source: str) -> ParamValue:
    """A value of the parameter's type from text (or an already typed value)."""
    shown = "the secret value" if param.secret else repr(raw)
    what = f"parameter {param.name!r} ({source})"
    if isinstance(raw, str) and "\0" in raw:
        raise InputError(f"{what}: the value contains a NUL byte.", hint="Give a value without it.")
    value: ParamValue
    if param.type == "int":
        if isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        elif isinstance(raw, str) and re.fullmatch(r"\s*[-+]?[0-9]+\s*", raw):
            value = int(raw)
        else:
            raise InputError(
                f"{what} must be an integer, got {shown}.", hint="Give a whole number like 10."
            )
        if param.min is not None and value < param.min:
            raise InputError(
                f"{what} must be at least {param.min}, got {shown}.", hint="Give a larger value."
            )
        if param.max is not None and value > param.max:
            raise InputError(
                f"{what} must be at most {param.max}, got {shown}.", hint="Give a smaller value."
            )
    elif param.type == "bool":
        if isinstance(raw, bool):
            value = raw
        elif isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            value = raw.strip().lower() in _TRUE
        else:
            raise InputError(
                f"{what} must be true or false, got {shown}.",
                hint="Give one of true, false, yes, no, 1, 0.",
            )
    else:
        if not isinstance(raw, str):
            raw = templating.to_text(raw)
        value = raw
        if param.pattern is not None and not re.fullmatch(param.pattern, value):
            raise InputError(
                f"{what}: {shown} does not match the pattern {param.pattern!r}.",
                hint="Give a value that matches it in full.",
            )
    if param.choices is not None and value not in param.choices:
        options = ", ".join(templating.to_text(c) for c in param.choices)
        raise InputError(
            f"{what} must be one of: {options}; got {shown}.", hint="Choose one of those values."
        )
    if param.secret:
        text = templating.to_text(value)
        if len(text) < MIN_SECRET_LENGTH:
            raise InputError(
                f"the secret parameter {param.name!r} ({source}) is shorter than "
                f"{MIN_SECRET_LENGTH} characters; a value that short cannot be redacted from "
                "output reliably.",
                hint="Use a longer secret.",
            )
    return value


def _read_secret_file(param: Parameter, base_dir: Path) -> str | None:
    path = Path(param.from_file or "").expanduser()
    if not path.is_absolute():
        path = base_dir / path
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SECRET_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputError(
            f"cannot read {path} for parameter {param.name!r}: {exc.strerror or exc}.",
            hint="Check the file's permissions.",
        ) from None
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise InputError(
            f"{path} (from_file of parameter {param.name!r}) is larger than "
            f"{MAX_SECRET_FILE_BYTES} bytes.",
            hint="Point from_file at a file holding just the value.",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path} (from_file of parameter {param.name!r}) is not UTF-8 text "
            f"(invalid byte at offset {exc.start}).",
            hint="Store the value as UTF-8 text.",
        ) from None
    return text.rstrip("\r\n")


def resolve_parameters(
    runbook: Runbook,
    given: Mapping[str, object],
    environ: Mapping[str, str] | None = None,
    *,
    base_dir: Path | None = None,
) -> ResolvedParams:
    """Typed values for every declared parameter.

    Each value comes from, in order: ``given`` (``-p NAME=VALUE``: text, or typed values when
    resuming), the variable ``from_env`` names in ``environ`` (default :data:`os.environ`),
    the file ``from_file`` names (relative paths are relative to ``base_dir``, default the
    runbook's directory), the default. A required parameter with none of these is an
    :class:`InputError` that says how to give it; so are unknown names, values of the wrong
    type, values outside ``choices``, ``pattern``, ``min``/``max``, and secrets shorter than
    :data:`MIN_SECRET_LENGTH`. Messages never contain a secret's value.
    """
    env = os.environ if environ is None else environ
    if base_dir is None:
        base_dir = runbook.path.parent if runbook.path is not None else Path.cwd()
    unknown = sorted(set(given) - set(runbook.parameters))
    if unknown:
        declared = ", ".join(sorted(runbook.parameters)) or "none"
        name = unknown[0]
        raise InputError(
            f"the runbook {runbook.name!r} has no parameter {name!r}"
            f"{_suggest(name, runbook.parameters)} (its parameters: {declared}).",
            hint="Check the -p NAME=VALUE arguments.",
        )
    values: dict[str, ParamValue] = {}
    sources: dict[str, str] = {}
    for name, param in runbook.parameters.items():
        raw: object = None
        source = ""
        if name in given:
            raw, source = given[name], "given"
        elif param.from_env is not None and param.from_env in env:
            raw, source = env[param.from_env], f"env:{param.from_env}"
        if raw is None and param.from_file is not None:
            from_file = _read_secret_file(param, base_dir)
            if from_file is not None:
                raw, source = from_file, f"file:{param.from_file}"
        if raw is None:
            if param.default is not None:
                values[name], sources[name] = param.default, "default"
                continue
            if param.required:
                ways = [f"-p {name}=VALUE"]
                if param.from_env:
                    ways.append(f"set the environment variable {param.from_env}")
                if param.from_file:
                    ways.append(f"create the file {param.from_file}")
                kind = "secret parameter" if param.secret else "parameter"
                raise InputError(
                    f"the runbook {runbook.name!r} needs a value for the {kind} {name!r}"
                    + (f" ({param.description})" if param.description else "")
                    + " and none was given.",
                    hint="Give it: " + ", or ".join(ways) + ".",
                )
            values[name], sources[name] = None, "unset"
            continue
        values[name] = _coerce(param, raw, source)
        sources[name] = source
    secret_names = frozenset(n for n, p in runbook.parameters.items() if p.secret)
    return ResolvedParams(values=values, secret_names=secret_names, sources=sources)


def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    """``["a=1", "b=x=y"]`` -> ``{"a": "1", "b": "x=y"}``; :class:`UsageError` if malformed."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(
                f"{item!r} is not NAME=VALUE.", hint="Write parameters as -p NAME=VALUE."
            )
        if name in out:
            raise UsageError(
                f"the parameter {name!r} is given more than once.", hint="Give it once."
            )
        out[name] = value
    return out


# --------------------------------------------------------------------------- run-time context


@dataclass
class StepState:
    """What templates see of a step: ``steps.NAME.*`` (finished) or ``step.*`` (current)."""

    name: str = ""
    status: str = "pending"
    exit_code: int | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    attempt: int = 0


@dataclass(frozen=True)
class RenderedText:
    """A rendered template: ``text`` for execution, ``redacted`` for the ledger."""

    text: str
    redacted: str


@dataclass(frozen=True)
class RenderedCommand:
    """A rendered ``run`` command: ``text`` to execute, ``redacted`` to record."""

    text: str
    redacted: str


@dataclass(frozen=True)
class RenderedEnv:
    """Environment variables a step adds: ``values`` for execution, ``redacted`` to record."""

    values: dict[str, str]
    redacted: dict[str, str]


class TemplateContext:
    """The state templates read during one run.

    The engine creates one per run, sets :attr:`current` to the step being run (or lets the
    renderers do it), and records each finished step with :meth:`finish`. ``environ`` is
    only read for the runbook's ``capture_env`` names. With ``dry_run=True`` every declared
    output of every step reads as a placeholder ``<steps.NAME.outputs.KEY>``, so a plan can
    render every command before anything ran.
    """

    def __init__(
        self,
        runbook: Runbook,
        params: ResolvedParams,
        *,
        run_id: str = "",
        incident: str | None = None,
        trigger: str | None = None,
        environ: Mapping[str, str] | None = None,
        dry_run: bool = False,
    ) -> None:
        env = os.environ if environ is None else environ
        self.runbook = runbook
        self.params = params
        self.run_id = run_id
        self.incident = incident
        self.trigger = trigger
        self.failed_step: str | None = None
        self.captured_env: dict[str, str] = {
            name: env[name] for name in runbook.capture_env if name in env
        }
        self.steps: dict[str, StepState] = {}
        for step in runbook.all_steps:
            outputs = (
                {key: f"<steps.{step.name}.outputs.{key}>" for key in step.outputs}
                if dry_run
                else {}
            )
            self.steps[step.name] = StepState(name=step.name, outputs=outputs)
        self.current: StepState | None = None
        self._runbook_env: dict[bool, dict[str, str]] = {}
        # ``steps`` as templates see it (real and redacted): each step's namespace is built
        # when its state changes, not at every render (a long runbook would otherwise
        # rebuild every earlier step's at every step).
        self._steps_data: dict[bool, dict[str, object]] = {
            redacted: {
                name: self._one_step_ns(state, redacted) for name, state in self.steps.items()
            }
            for redacted in (False, True)
        }
        self._steps_ns = {
            redacted: Namespace.view(data, "steps") for redacted, data in self._steps_data.items()
        }

    # ----- state updates

    def begin(self, step: Step, attempt: int = 1) -> StepState:
        """Make ``step`` the current step (``step.*`` in templates), at ``attempt``."""
        self.current = StepState(name=step.name, status="running", attempt=attempt)
        return self.current

    def finish(
        self,
        step: Step | str,
        status: str,
        exit_code: int | None = None,
        outputs: Mapping[str, str] | None = None,
    ) -> None:
        """Record a finished (or skipped) step so later templates read ``steps.NAME.*``."""
        name = step if isinstance(step, str) else step.name
        self.steps[name] = StepState(
            name=name, status=status, exit_code=exit_code, outputs=dict(outputs or {})
        )
        for redacted, data in self._steps_data.items():
            data[name] = self._one_step_ns(self.steps[name], redacted)
        if self.current is not None and self.current.name == name:
            self.current = None

    def secrets(self) -> dict[str, str]:
        return self.params.secrets()

    # ----- variables

    def _current_for(self, step: Step | None) -> StepState:
        if step is None:
            return self.current or StepState()
        if self.current is not None and self.current.name == step.name:
            return self.current
        return StepState(name=step.name)

    def runbook_env(self, *, redacted: bool = False) -> dict[str, str]:
        """The runbook's top-level ``env``, rendered."""
        if redacted not in self._runbook_env:
            variables = {"params": self._params_ns(redacted), "run": self._run_ns()}
            rendered: dict[str, str] = {}
            for key, value in self.runbook.env.items():
                rendered[key] = _render(
                    value,
                    variables,
                    command=False,
                    secrets=self.secrets(),
                    where=f"{self.runbook.source}: env.{key}",
                )
            self._runbook_env[redacted] = rendered
        return self._runbook_env[redacted]

    def _one_step_ns(self, state: StepState, redacted: bool) -> Namespace:
        """``steps.NAME`` for one step's state."""
        secrets = self.secrets()
        outputs = {k: (redact(v, secrets) if redacted else v) for k, v in state.outputs.items()}
        return Namespace(
            {
                "exit_code": state.exit_code,
                "status": state.status,
                "outputs": Namespace(outputs, f"steps.{state.name}.outputs"),
            },
            f"steps.{state.name}",
        )

    def _params_ns(self, redacted: bool) -> Namespace:
        values = self.params.redacted() if redacted else self.params.values
        return Namespace(values, "params")

    def _run_ns(self) -> Namespace:
        return Namespace(
            {
                "id": self.run_id,
                "incident": self.incident,
                "trigger": self.trigger,
                "failed_step": self.failed_step,
            },
            "run",
        )

    def variables(self, step: Step | None = None, *, redacted: bool = False) -> dict[str, object]:
        """The template variables: params, steps, step, run, env."""
        secrets = self.secrets()

        def out(value: str) -> str:
            return redact(value, secrets) if redacted else value

        steps = self._steps_ns[redacted]
        current = self._current_for(step)
        step_ns = Namespace(
            {
                "name": current.name,
                "attempt": current.attempt,
                "exit_code": current.exit_code,
                "status": current.status,
                "outputs": Namespace(
                    {k: out(v) for k, v in current.outputs.items()}, "step.outputs"
                ),
            },
            "step",
        )
        captured: dict[str, object] = {
            name: self.captured_env.get(name) for name in self.runbook.capture_env
        }
        env = {**captured, **self.runbook_env(redacted=redacted)}
        return {
            "params": self._params_ns(redacted),
            "steps": steps,
            "step": step_ns,
            "run": self._run_ns(),
            "env": Namespace(env, "env"),
        }


_RENDER_ERRORS: Final = (TemplateError, ArithmeticError, TypeError, ValueError, LookupError)


def _render(
    source: str,
    variables: Mapping[str, object],
    *,
    command: bool,
    secrets: Mapping[str, str],
    where: str,
) -> str:
    try:
        text = templating.render(source, variables, command=command)
    except _RENDER_ERRORS as exc:
        detail = redact(str(getattr(exc, "message", None) or exc), secrets)
        raise RunbookError(
            f"{where}: the template cannot be rendered: {detail}.",
            hint="Fix the template in the runbook (check names with 'ledger validate'); a "
            "step's outputs exist only once it has run.",
        ) from None
    if "\0" in text:
        raise RunbookError(
            f"{where}: the rendered text contains a NUL byte.",
            hint="Check the values that flow into this template.",
        )
    return text


def _where(runbook: Runbook, step: Step, field_name: str) -> str:
    list_name = "steps" if step.phase == "main" else "on_failure"
    return (
        f"{runbook.source}:{step.line}: step {step.name!r} ({list_name}[{step.index}].{field_name})"
    )


def render_template(
    source: str,
    context: TemplateContext,
    *,
    step: Step | None = None,
    command: bool = False,
    where: str = "template",
) -> RenderedText:
    """Render any runbook template twice: with real values, and with secrets redacted."""
    secrets = context.secrets()
    text = _render(source, context.variables(step), command=command, secrets=secrets, where=where)
    if not secrets:
        # Without secrets the redacted variables are the real ones: the same text.
        return RenderedText(text=text, redacted=text)
    shown = _render(
        source,
        context.variables(step, redacted=True),
        command=command,
        secrets=secrets,
        where=where,
    )
    return RenderedText(text=text, redacted=redact(shown, secrets))


def render_command(step: Step, context: TemplateContext) -> RenderedCommand:
    """The step's ``run`` with every ``{{ value }}`` shell-quoted (unless ``| raw``)."""
    if step.run is None:
        raise RunbookError(
            f"{_where(context.runbook, step, 'run')}: an approval step has no command.",
            hint="Render commands of run steps only.",
        )
    rendered = render_template(
        step.run, context, step=step, command=True, where=_where(context.runbook, step, "run")
    )
    return RenderedCommand(text=rendered.text, redacted=rendered.redacted)


def render_cwd(step: Step, context: TemplateContext) -> RenderedText | None:
    """The step's working directory (``cwd`` or ``defaults.cwd``), or ``None``."""
    if step.cwd is None:
        return None
    return render_template(step.cwd, context, step=step, where=_where(context.runbook, step, "cwd"))


def step_environment(step: Step, context: TemplateContext) -> RenderedEnv:
    """Variables the step adds to the operator's environment, in increasing precedence:
    ``PARAM_<NAME>`` for every parameter, the runbook's ``env``, the step's ``env``."""
    values = {**context.params.environment(), **context.runbook_env()}
    shown = {**context.params.redacted_environment(), **context.runbook_env(redacted=True)}
    for key, value in step.env.items():
        rendered = render_template(
            value, context, step=step, where=_where(context.runbook, step, f"env.{key}")
        )
        values[key] = rendered.text
        shown[key] = rendered.redacted
    secrets = context.secrets()
    return RenderedEnv(values=values, redacted={k: redact(v, secrets) for k, v in shown.items()})


def render_lock(context: TemplateContext) -> str | None:
    """The run's lock name (``lock`` rendered), or ``None`` when the runbook has none."""
    runbook = context.runbook
    if runbook.lock is None:
        return None
    variables = {
        "params": context.variables()["params"],
        "env": context.variables()["env"],
    }
    return _render(
        runbook.lock,
        variables,
        command=False,
        secrets=context.secrets(),
        where=f"{runbook.source}: lock",
    )


def render_approval_message(step: Step, context: TemplateContext) -> RenderedText | None:
    """The approval step's ``message``, rendered, or ``None`` when it has none."""
    if step.approval is None or step.approval.message is None:
        return None
    return render_template(
        step.approval.message,
        context,
        step=step,
        where=_where(context.runbook, step, "approval.message"),
    )


_COND_TRUE: Final = frozenset({"true", "yes", "1"})
_COND_FALSE: Final = frozenset({"false", "no", "0"})


def evaluate_condition(
    expr: str, context: TemplateContext, *, step: Step | None = None, field_name: str = "when"
) -> bool:
    """Evaluate a ``when`` / ``until`` condition.

    A string with Jinja markup (``{{ params.x == 'a' }}``) is rendered and must give
    ``true``/``false`` (also ``yes``/``no``/``1``/``0``, any case, surrounding space
    ignored). Otherwise it is a bare expression (``params.x == 'a'``) that must give a
    boolean (or one of those strings, or the integers 0 and 1). Anything else is a
    :class:`RunbookError`.
    """
    where = (
        _where(context.runbook, step, field_name)
        if step is not None
        else f"{context.runbook.source}: {field_name}"
    )
    secrets = context.secrets()
    variables = context.variables(step)
    result: object
    if templating.is_template(expr):
        result = _render(expr, variables, command=False, secrets=secrets, where=where)
    else:
        try:
            result = templating.evaluate(expr, variables)
            if isinstance(result, templating.StrictUndefinedType):
                str(result)  # raises UndefinedError with the name
        except _RENDER_ERRORS as exc:
            detail = redact(str(getattr(exc, "message", None) or exc), secrets)
            raise RunbookError(
                f"{where}: the condition {expr!r} cannot be evaluated: {detail}.",
                hint="Fix the condition in the runbook (check it with 'ledger validate').",
            ) from None
    if isinstance(result, bool):
        return result
    if isinstance(result, int) and result in (0, 1):
        return bool(result)
    if isinstance(result, str | Raw):
        word = result.strip().lower()
        if word in _COND_TRUE:
            return True
        if word in _COND_FALSE:
            return False
    shown = redact(templating.to_text(result), secrets)
    raise RunbookError(
        f"{where}: the condition {expr!r} gave {shown!r}, which is neither true nor false.",
        hint="Write a comparison such as params.service == 'api' or steps.check.exit_code == 0.",
    )


def should_run(step: Step, context: TemplateContext) -> bool:
    """Whether the step's ``when`` allows it to run (true when it has none)."""
    if step.when is None:
        return True
    return evaluate_condition(step.when, context, step=step, field_name="when")


def attempt_succeeded(step: Step, context: TemplateContext) -> bool:
    """Whether the current attempt succeeded: its ``until`` if set, else exit code 0.

    Set ``context.current`` (see :meth:`TemplateContext.begin`) with the attempt's
    ``exit_code`` and ``outputs`` first.
    """
    current = context._current_for(step)
    if step.until is None:
        return current.exit_code == 0
    return evaluate_condition(step.until, context, step=step, field_name="until")


# --------------------------------------------------------------------------- outputs


def _output_error(step: Step, spec: OutputSpec, message: str) -> RunbookError:
    return RunbookError(
        f"step {step.name!r}: output {spec.name!r} cannot be captured: {message}.",
        hint="Check what the command prints, or the output's definition in the runbook.",
    )


def extract_output(step: Step, spec: OutputSpec, stdout: bytes, stderr: bytes = b"") -> str:
    """One output value from a command's streams (see :class:`OutputSpec`).

    Output text is decoded as UTF-8 (invalid bytes replaced). A JSON value that is not a
    string is given as compact JSON text. :class:`RunbookError` when the stream is not
    JSON, the key or a match is missing, or the value is longer than
    :data:`MAX_OUTPUT_CHARS`.
    """
    text = (stderr if spec.kind == "stderr" else stdout).decode("utf-8", errors="replace")
    if spec.kind in ("stdout", "stderr"):
        value = text.strip()
    elif spec.kind == "json":
        try:
            node: object = json.loads(text)
        except ValueError as exc:
            raise _output_error(step, spec, f"stdout is not JSON ({exc})") from None
        for part in (spec.expr or "").split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise _output_error(step, spec, f"the JSON has no {spec.expr!r} (at {part!r})")
        if isinstance(node, str):
            value = node
        else:
            value = json.dumps(node, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    else:
        pattern = re.compile(spec.expr or "", re.MULTILINE)
        match = pattern.search(text)
        if match is None:
            raise _output_error(step, spec, f"the pattern {spec.expr!r} does not match stdout")
        if "value" in pattern.groupindex:
            value = match.group("value") or ""
        elif pattern.groups >= 1:
            value = match.group(1) or ""
        else:
            value = match.group(0)
    if len(value) > MAX_OUTPUT_CHARS:
        raise _output_error(
            step, spec, f"the value is {len(value)} characters long (at most {MAX_OUTPUT_CHARS})"
        )
    return value


def extract_outputs(step: Step, stdout: bytes, stderr: bytes = b"") -> dict[str, str]:
    """Every output the step declares, from its streams (see :func:`extract_output`)."""
    return {name: extract_output(step, spec, stdout, stderr) for name, spec in step.outputs.items()}


__all__ = [
    "MAX_DEPTH",
    "MAX_RUNBOOK_BYTES",
    "MIN_SECRET_LENGTH",
    "PARAM_ENV_PREFIX",
    "ApprovalSpec",
    "OutputSpec",
    "Parameter",
    "Problem",
    "RenderedCommand",
    "RenderedEnv",
    "RenderedText",
    "ResolvedParams",
    "Runbook",
    "RunbookInvalid",
    "Step",
    "StepState",
    "TemplateContext",
    "attempt_succeeded",
    "evaluate_condition",
    "extract_output",
    "extract_outputs",
    "format_field",
    "load_runbook",
    "parse_assignments",
    "parse_duration",
    "parse_runbook",
    "redact",
    "redaction_label",
    "render_approval_message",
    "render_command",
    "render_cwd",
    "render_lock",
    "render_template",
    "resolve_parameters",
    "runbook_schema",
    "schema_text",
    "should_run",
    "step_environment",
]
