"""The compiled schema check says "valid" exactly when jsonschema finds no error."""

from __future__ import annotations

import contextlib

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.runbook import runbook_schema, schemacheck

VALIDATOR = jsonschema.Draft202012Validator(runbook_schema())


def agrees(check: schemacheck.Check, data: object) -> None:
    valid = not list(VALIDATOR.iter_errors(data))
    with contextlib.suppress(schemacheck.Unknown):
        assert check(data) is valid, data


def test_the_shipped_schema_compiles() -> None:
    # Without it every runbook goes through jsonschema (about 2 s for 16,000 steps).
    assert schemacheck.compile_schema(runbook_schema()) is not None


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "patternProperties": {"^a": {}}},
        {"anyOf": [{"type": "string"}]},
        {"const": 1},
        {"enum": [1, 2]},
        {"$ref": "https://example.com/schema"},
        {"$ref": "#/$defs/missing"},
        {"type": "strin"},
        {"format": "email"},
        {"items": {"not": {}}},
    ],
)
def test_a_keyword_it_does_not_know_leaves_it_uncompiled(schema: dict[str, object]) -> None:
    assert schemacheck.compile_schema(schema) is None


def test_unique_items_of_values_not_all_text_are_left_to_jsonschema() -> None:
    check = schemacheck.compile_schema({"type": "array", "uniqueItems": True})
    assert check is not None
    assert check(["a", "b"]) and not check(["a", "a"])
    with pytest.raises(schemacheck.Unknown):
        check([1, True])


def test_a_recursive_ref() -> None:
    schema = {
        "$ref": "#/$defs/tree",
        "$defs": {"tree": {"type": "array", "items": {"$ref": "#/$defs/tree"}}},
    }
    check = schemacheck.compile_schema(schema)
    assert check is not None
    assert check([[], [[]]]) and not check([[], [1]])


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=20_000),
    st.floats(min_value=-2, max_value=200, allow_nan=False),
    st.sampled_from(
        ["", "a", "x-1", "1a", "_a", "A_B", "bash", "sh", "zsh", "stdout", "stderr", "5m",
         "1h30m", " 2 ", "500ms", "1.5", "-1", "string", "int", "bool", "{{ params.x }}",
         "a" * 64, "a" * 65, "a" * 129, "é"]
    ),
)  # fmt: skip
KEYS = st.sampled_from(
    ["name", "description", "parameters", "env", "capture_env", "lock", "defaults", "steps",
     "on_failure", "on_cancel", "always", "run", "approval", "shell", "cwd", "timeout",
     "retries", "retry_delay", "retry_backoff", "until", "when", "continue_on_error",
     "outputs", "approvers", "min_approvals", "message", "type", "default", "choices",
     "required", "secret", "from_env", "from_file", "pattern", "min", "max", "json", "regex",
     "A", "x", "1x", "p_1", "nme"]
)  # fmt: skip
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=25,
)
STEP = st.dictionaries(KEYS, VALUES, max_size=5).map(lambda d: {"name": "s", **d})
STEPS = st.lists(STEP | st.fixed_dictionaries({"name": SCALARS, "run": SCALARS}), max_size=4)
RUNBOOK = st.fixed_dictionaries(
    {"name": SCALARS, "steps": STEPS},
    optional={
        "parameters": st.dictionaries(KEYS, st.dictionaries(KEYS, VALUES, max_size=4)),
        "env": st.dictionaries(KEYS, SCALARS, max_size=3),
        "capture_env": st.lists(SCALARS, max_size=3),
        "defaults": st.dictionaries(KEYS, SCALARS, max_size=3),
        "on_failure": STEPS,
        "lock": SCALARS,
        "x": VALUES,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RUNBOOK)
def test_it_agrees_with_jsonschema_on_runbook_shaped_documents(data: object) -> None:
    check = schemacheck.compile_schema(runbook_schema())
    assert check is not None
    agrees(check, data)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(VALUES)
def test_it_agrees_with_jsonschema_on_any_document(data: object) -> None:
    check = schemacheck.compile_schema(runbook_schema())
    assert check is not None
    agrees(check, data)


def test_valid_runbooks_pass_it() -> None:
    check = schemacheck.compile_schema(runbook_schema())
    assert check is not None
    valid: list[object] = [
        {"name": "x", "steps": [{"name": "a", "run": "echo"}]},
        {
            "name": "x.y-1",
            "description": "d",
            "parameters": {"svc": {"type": "string", "default": "api", "choices": ["api"]}},
            "env": {"A": 1, "B": "b", "C": 1.5, "D": True},
            "capture_env": ["HOME", "_X"],
            "lock": "l",
            "defaults": {"shell": "sh", "cwd": "/", "timeout": "5m"},
            "steps": [
                {"name": "a", "run": "x", "timeout": 3, "retries": 2, "retry_backoff": 1.5},
                {"name": "b", "approval": {"approvers": ["al"], "min_approvals": 1}},
                {"name": "c", "run": "x", "outputs": {"v": "stdout", "w": {"json": "a.b"}}},
            ],
            "on_failure": [{"name": "f", "run": "x", "when": "true"}],
        },
    ]
    for data in valid:
        assert check(data) is True
        agrees(check, data)
    for data in ({"name": "x", "steps": [{"name": "a"}]}, {"name": "x", "steps": []}):
        assert check(data) is False
        agrees(check, data)
