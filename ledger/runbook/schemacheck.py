"""A yes/no check of a document against a JSON Schema, compiled once into closures.

jsonschema walks the schema afresh for every value (about 2 s for a runbook of 16,000
steps). Most runbooks are valid, and for them this check, compiled once from the same
schema, says so in milliseconds; when it says no, jsonschema runs and words the errors
(:mod:`ledger.runbook.schema`).

The check knows the keywords the shipped runbook schema uses, each with jsonschema's own
meaning for Draft 2020-12: ``type`` as jsonschema's type checker sees Python values (a bool
is not an integer, a list is an array), ``pattern`` by :func:`re.search`, ``$ref`` to
``#/$defs/NAME``, every keyword of a schema applying together. Its answer is exact: True
exactly when jsonschema finds no error. Where exactness would need more (``uniqueItems`` of
items that are not all text) it raises :class:`Unknown`, and a schema using any other
keyword is not compiled at all (:func:`compile_schema` returns None), so that a change to the
schema can never make the check pass what jsonschema refuses.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

Check = Callable[[object], bool]


class Unknown(Exception):
    """The check cannot tell exactly; ask jsonschema."""


class _Unsupported(Exception):
    """The schema uses something the check does not know."""


# Keywords that never make a value invalid.
_ANNOTATIONS: Final = frozenset(
    {"$schema", "$id", "$comment", "$defs", "title", "description", "default", "examples"}
    | {"errorMessage"}  # ours: the wording of errors, read by ledger.runbook.schema
)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


_TYPES: Final[dict[str, Check]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": _is_number,
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}


def compile_schema(schema: Mapping[str, Any]) -> Check | None:
    """The check of ``schema``, or None when the schema uses a keyword the check does not
    know (then only jsonschema can judge)."""
    try:
        return _Compiler(schema).compile(schema)
    except _Unsupported:
        return None


def _all(checks: list[Check]) -> Check:
    if not checks:
        return lambda value: True
    if len(checks) == 1:
        return checks[0]
    return lambda value: all(check(value) for check in checks)


class _Compiler:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self.refs: dict[str, Check] = {}

    def compile(self, schema: object) -> Check:
        if schema is True:
            return lambda value: True
        if schema is False:
            return lambda value: False
        if not isinstance(schema, Mapping):
            raise _Unsupported(repr(schema))
        checks: list[Check] = []
        for keyword, argument in schema.items():
            if keyword in _ANNOTATIONS or keyword == "additionalProperties":
                continue  # additionalProperties is compiled with properties
            if keyword == "properties":
                checks.append(self.properties(argument, schema.get("additionalProperties", True)))
                continue
            build = _KEYWORDS.get(keyword)
            if build is None:
                raise _Unsupported(keyword)
            checks.append(build(self, argument))
        if "additionalProperties" in schema and "properties" not in schema:
            checks.append(self.properties({}, schema["additionalProperties"]))
        return _all(checks)

    def ref(self, target: object) -> Check:
        prefix = "#/$defs/"
        if not isinstance(target, str) or not target.startswith(prefix):
            raise _Unsupported(f"$ref {target!r}")
        name = target[len(prefix) :]
        defs = self.root.get("$defs", {})
        if not re.fullmatch(r"[A-Za-z0-9_]+", name) or name not in defs:
            raise _Unsupported(f"$ref {target!r}")
        refs = self.refs
        if name not in refs:
            refs[name] = lambda value: False  # replaced below; a recursive $ref looks it up
            refs[name] = self.compile(defs[name])
        # looked up at each call: a recursive $ref is compiled before its target is
        return lambda value: refs[name](value)  # noqa: PLW0108

    def properties(self, properties: object, additional: object) -> Check:
        if not isinstance(properties, Mapping):
            raise _Unsupported("properties")
        known = {name: self.compile(sub) for name, sub in properties.items()}
        if additional is True:
            rest: Check | None = None
        elif additional is False:
            rest = lambda value: False  # noqa: E731
        else:
            rest = self.compile(additional)

        def check(value: object) -> bool:
            if not isinstance(value, dict):
                return True
            for name, item in value.items():
                sub = known.get(name)
                if sub is not None:
                    if not sub(item):
                        return False
                elif rest is not None and not rest(item):
                    return False
            return True

        return check

    def property_names(self, schema: object) -> Check:
        sub = self.compile(schema)
        return lambda value: not isinstance(value, dict) or all(sub(name) for name in value)

    def items(self, schema: object) -> Check:
        sub = self.compile(schema)
        return lambda value: not isinstance(value, list) or all(sub(item) for item in value)

    def one_of(self, schemas: object) -> Check:
        if not isinstance(schemas, list) or not schemas:
            raise _Unsupported("oneOf")
        subs = [self.compile(sub) for sub in schemas]
        return lambda value: sum(1 for sub in subs if sub(value)) == 1


def _type(compiler: _Compiler, names: object) -> Check:
    kinds = [names] if isinstance(names, str) else names
    if not isinstance(kinds, list) or not all(k in _TYPES for k in kinds):
        raise _Unsupported(f"type {names!r}")
    checks = [_TYPES[k] for k in kinds]
    if len(checks) == 1:
        return checks[0]
    return lambda value: any(check(value) for check in checks)


def _enum(compiler: _Compiler, values: object) -> Check:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise _Unsupported("enum")  # jsonschema's equality of other values is subtler
    allowed = frozenset(values)
    return lambda value: isinstance(value, str) and value in allowed


def _required(compiler: _Compiler, names: object) -> Check:
    if not isinstance(names, list):
        raise _Unsupported("required")
    return lambda value: not isinstance(value, dict) or all(n in value for n in names)


def _pattern(compiler: _Compiler, pattern: object) -> Check:
    if not isinstance(pattern, str):
        raise _Unsupported("pattern")
    search = re.compile(pattern).search
    return lambda value: not isinstance(value, str) or search(value) is not None


def _count(limit: object) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool):
        raise _Unsupported(f"limit {limit!r}")
    return limit


def _min_length(compiler: _Compiler, limit: object) -> Check:
    least = _count(limit)
    return lambda value: not isinstance(value, str) or len(value) >= least


def _min_items(compiler: _Compiler, limit: object) -> Check:
    least = _count(limit)
    return lambda value: not isinstance(value, list) or len(value) >= least


def _minimum(compiler: _Compiler, limit: object) -> Check:
    if not _is_number(limit):
        raise _Unsupported("minimum")
    return lambda value: not _is_number(value) or value >= limit  # type: ignore[operator]


def _maximum(compiler: _Compiler, limit: object) -> Check:
    if not _is_number(limit):
        raise _Unsupported("maximum")
    return lambda value: not _is_number(value) or value <= limit  # type: ignore[operator]


def _unique(items: list[object]) -> bool:
    if not all(isinstance(item, str) for item in items):
        raise Unknown("uniqueItems of values that are not all text")
    return len(set(items)) == len(items)


def _unique_items(compiler: _Compiler, unique: object) -> Check:
    if unique is False:
        return lambda value: True
    if unique is not True:
        raise _Unsupported("uniqueItems")
    return lambda value: not isinstance(value, list) or _unique(value)


_KEYWORDS: Final[dict[str, Callable[[_Compiler, Any], Check]]] = {
    "type": _type,
    "enum": _enum,
    "required": _required,
    "pattern": _pattern,
    "minLength": _min_length,
    "minItems": _min_items,
    "minimum": _minimum,
    "maximum": _maximum,
    "uniqueItems": _unique_items,
    "$ref": _Compiler.ref,
    "propertyNames": _Compiler.property_names,
    "items": _Compiler.items,
    "oneOf": _Compiler.one_of,
}
