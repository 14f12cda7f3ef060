"""The runbook format's JSON Schema, and its violations worded as located problems.

The schema (draft 2020-12) ships in ``ledger/schema/runbook.schema.json``; it may carry an
``errorMessage`` per keyword, which replaces the generic wording. A document is first put to
the check compiled once from the schema (:mod:`ledger.runbook.schemacheck`, exact and fast);
only when it fails does jsonschema (imported then) find and word the errors.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

from ledger.runbook import problems as runbook_problems
from ledger.runbook import schemacheck

if TYPE_CHECKING:
    import jsonschema


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
    import jsonschema  # about 0.1 s: only when a runbook does not pass the quick check

    return jsonschema.Draft202012Validator(runbook_schema())


@cache
def _quick_check() -> schemacheck.Check | None:
    return schemacheck.compile_schema(runbook_schema())


def _passes_quick_check(data: object) -> bool:
    check = _quick_check()
    if check is None:
        return False
    try:
        return check(data)
    except schemacheck.Unknown:
        return False


_TYPE_NAMES: Final = {
    "string": "text",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "null",
}


def _schema_message(error: jsonschema.ValidationError) -> str | None:
    custom = error.schema.get("errorMessage") if isinstance(error.schema, dict) else None
    if isinstance(custom, dict):
        custom = custom.get(str(error.validator))
    if isinstance(custom, str):
        if isinstance(error.instance, dict | list):
            return custom
        return f"{custom} (got {runbook_problems.describe(error.instance)})"
    return None


def schema_problems(
    data: object, where: runbook_problems.Locator, bad_paths: list[runbook_problems.FieldPath]
) -> list[runbook_problems.Problem]:
    """Schema violations as problems; ``bad_paths`` receives the path of each violation."""
    if _passes_quick_check(data):
        return []
    problems: dict[tuple[str, str], runbook_problems.Problem] = {}

    def add(problem: runbook_problems.Problem) -> None:
        problems.setdefault((problem.field, problem.message), problem)

    for error in _validator().iter_errors(data):
        path: runbook_problems.FieldPath = tuple(error.absolute_path)
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
                            f"unknown field {name!r}{runbook_problems.suggest(name, allowed)}; "
                            f"allowed here: {', '.join(allowed)}",
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
            message = f"expected {names}, got {runbook_problems.describe(instance)}"
        elif validator == "enum":
            options = ", ".join(str(v) for v in error.validator_value)
            message = f"must be one of: {options} (got {runbook_problems.describe(instance)})"
        elif validator == "minItems":
            message = f"must have at least {error.validator_value} item(s)"
        elif validator == "minLength":
            message = "must not be empty"
        elif validator == "uniqueItems":
            message = "has the same item more than once"
        elif validator == "minimum":
            got = runbook_problems.describe(instance)
            message = f"must be at least {error.validator_value} (got {got})"
        elif validator == "maximum":
            got = runbook_problems.describe(instance)
            message = f"must be at most {error.validator_value} (got {got})"
        else:
            message = error.message
        add(where.problem(path, message))
    return list(problems.values())
