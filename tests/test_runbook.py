"""The runbook format: loading, validation with locations, parameters, templating."""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from ledger.errors import InputError, RunbookError, UsageError
from ledger.redact import redact
from ledger.run.context import (
    TemplateContext,
    attempt_succeeded,
    evaluate_condition,
    render_approval_message,
    render_command,
    render_cwd,
    render_lock,
    render_template,
    should_run,
    step_environment,
)
from ledger.run.outputs import extract_outputs
from ledger.runbook import (
    MAX_RUNBOOK_BYTES,
    Problem,
    RunbookInvalid,
    load_runbook,
    parse_assignments,
    parse_duration,
    parse_runbook,
    resolve_parameters,
    runbook_schema,
    schema_text,
)

# The runbook of the issue that defined the format, verbatim.
ISSUE_RUNBOOK = b"""\
name: restart-api
description: Restart the API service and check it comes back
parameters:
  service: {type: string, default: api, choices: [api, web]}
  grace:   {type: int, default: 10, description: seconds to wait}
  token:   {type: string, secret: true, from_env: API_TOKEN}   # or from_file: PATH
env: {LOG_LEVEL: info}
capture_env: [DEPLOY_ENV]          # env vars whose values are recorded; others are not
lock: "restart-{{ params.service }}" # no two runs holding the same lock at once
steps:
  - name: check
    run: ./check.sh {{ params.service }}
    shell: bash
    cwd: /srv/app
    env: {TIMEOUT: "5"}
    timeout: 30s
    retries: 3
    retry_delay: 2s
    retry_backoff: 2.0
    until: "{{ step.exit_code == 0 }}"
    when: "{{ params.service == 'api' }}"
    continue_on_error: false
    outputs: {version: stdout}        # or {name: {json: key}} / {name: {regex: '...'}}
  - name: approve-restart
    approval: {approvers: [alice@example.com], min_approvals: 1,
               message: "Restart {{ params.service }} at {{ steps.check.outputs.version }}?"}
  - name: restart
    run: systemctl restart {{ params.service }}
on_failure:                        # run when the run fails, recorded like any step
  - name: rollback
    run: ./rollback.sh
"""

TOKEN = "tok-3f9a7c1e-very-secret"


def problems_of(text: bytes | str, source: str = "rb.yaml") -> list[Problem]:
    data = text.encode() if isinstance(text, str) else text
    with pytest.raises(RunbookInvalid) as info:
        parse_runbook(data, source)
    assert info.value.problems, "RunbookInvalid without problems"
    return info.value.problems


def one_problem(text: bytes | str) -> Problem:
    problems = problems_of(text)
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


def minimal(step_extra: str = "", top_extra: str = "") -> str:
    return f"name: x\n{top_extra}steps:\n  - name: a\n    run: echo hi\n{step_extra}"


def context_for(
    text: bytes | str,
    given: dict[str, object] | None = None,
    environ: dict[str, str] | None = None,
    **kwargs: object,
) -> TemplateContext:
    data = text.encode() if isinstance(text, str) else text
    runbook = parse_runbook(data, "rb.yaml")
    params = resolve_parameters(runbook, given or {}, environ or {})
    return TemplateContext(runbook, params, environ=environ or {}, **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the model


def test_issue_runbook_parses_into_the_model() -> None:
    rb = parse_runbook(ISSUE_RUNBOOK, "restart-api.yaml")
    assert rb.name == "restart-api"
    assert rb.description == "Restart the API service and check it comes back"
    assert rb.sha256 == hashlib.sha256(ISSUE_RUNBOOK).hexdigest()
    assert rb.text == ISSUE_RUNBOOK
    assert rb.source == "restart-api.yaml"
    assert set(rb.parameters) == {"service", "grace", "token"}
    service, grace, token = (rb.parameters[n] for n in ("service", "grace", "token"))
    assert (service.type, service.default, service.choices) == ("string", "api", ["api", "web"])
    assert (grace.type, grace.default, grace.description) == ("int", 10, "seconds to wait")
    assert token.secret and token.from_env == "API_TOKEN" and token.required
    assert not service.required
    assert rb.env == {"LOG_LEVEL": "info"}
    assert rb.capture_env == ["DEPLOY_ENV"]
    assert rb.lock == "restart-{{ params.service }}"
    assert [s.name for s in rb.steps] == ["check", "approve-restart", "restart"]
    assert [s.name for s in rb.on_failure] == ["rollback"]
    check = rb.steps[0]
    assert check.run == "./check.sh {{ params.service }}"
    assert (check.shell, check.cwd, check.env) == ("bash", "/srv/app", {"TIMEOUT": "5"})
    assert (check.timeout_s, check.retries, check.retry_delay_s, check.retry_backoff) == (
        30.0,
        3,
        2.0,
        2.0,
    )
    assert check.until == "{{ step.exit_code == 0 }}"
    assert check.when == "{{ params.service == 'api' }}"
    assert check.continue_on_error is False
    assert check.outputs["version"].kind == "stdout"
    assert check.line == 11 and check.index == 0 and check.phase == "main"
    assert [check.retry_delay_for(n) for n in (1, 2, 3, 4)] == [0.0, 2.0, 4.0, 8.0]
    approve = rb.steps[1]
    assert approve.is_approval and approve.run is None
    assert approve.approval is not None
    assert approve.approval.approvers == ["alice@example.com"]
    assert approve.approval.min_approvals == 1
    assert approve.approval.timeout_s is None
    assert rb.steps[2].timeout_s is None and rb.steps[2].retries == 0
    assert rb.on_failure[0].phase == "on_failure" and rb.on_failure[0].index == 0
    assert rb.step("rollback") is rb.on_failure[0]
    with pytest.raises(RunbookError, match="no step called 'nope'"):
        rb.step("nope")


def test_load_runbook_keeps_exact_bytes(tmp_path: Path) -> None:
    path = tmp_path / "restart-api.yaml"
    path.write_bytes(ISSUE_RUNBOOK)
    rb = load_runbook(path)
    assert rb.path == path and rb.source == str(path)
    assert rb.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(RunbookError, match="does not exist"):
        load_runbook(tmp_path / "missing.yaml")
    with pytest.raises(RunbookError, match="is a directory"):
        load_runbook(tmp_path)


def test_defaults_apply_to_steps_that_do_not_set_the_field() -> None:
    rb = parse_runbook(
        b"name: x\ndefaults: {shell: sh, cwd: /tmp, timeout: 5m}\nsteps:\n"
        b"  - {name: a, run: 'true'}\n  - {name: b, run: 'true', shell: bash, timeout: 1}\n",
        "rb.yaml",
    )
    assert (rb.steps[0].shell, rb.steps[0].cwd, rb.steps[0].timeout_s) == ("sh", "/tmp", 300.0)
    assert (rb.steps[1].shell, rb.steps[1].timeout_s) == ("bash", 1.0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (30, 30.0),
        (1.5, 1.5),
        ("30s", 30.0),
        ("500ms", 0.5),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("2d", 172800.0),
        ("10", 10.0),
        (" 2.5s ", 2.5),
        ("1m 30s", 90.0),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 minutes", "s", "-1", "1x", "", True, "31d", [1]])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_yaml_12_scalars_no_norway_problem() -> None:
    rb = parse_runbook(
        b"name: x\nparameters:\n  country: {choices: [no, se], default: no}\n"
        b"  flag: {type: bool, default: false}\nenv: {on: yes, N: 0x1f}\nsteps:\n"
        b"  - {name: a, run: 'true'}\n",
        "rb.yaml",
    )
    assert rb.parameters["country"].choices == ["no", "se"]
    assert rb.parameters["flag"].default is False
    assert rb.env == {"on": "yes", "N": "31"}


# --------------------------------------------------------------------------- validation rules


def test_unknown_top_level_field() -> None:
    p = one_problem(minimal(top_extra="descripton: typo\n"))
    assert (p.line, p.column, p.field) == (2, 1, "descripton")
    assert "unknown field 'descripton'" in p.message and "did you mean 'description'" in p.message
    assert str(p).startswith("rb.yaml:2:1: descripton: unknown field")


def test_unknown_step_field() -> None:
    p = one_problem(minimal(step_extra="    retriez: 3\n"))
    assert (p.line, p.column, p.field) == (5, 5, "steps[0].retriez")
    assert "did you mean 'retries'" in p.message


def test_unknown_fields_in_nested_mappings() -> None:
    problems = problems_of(
        "name: x\nparameters:\n  a: {typ: int}\nsteps:\n  - name: a\n"
        "    approval: {approvers: [x], mesage: hi}\n    outputs: {}\n"
    )
    fields = {p.field for p in problems}
    assert "parameters.a.typ" in fields
    assert "steps[0].approval.mesage" in fields


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(
        "name: x\nfoo: 1\nsteps:\n  - name: a\n    run: echo\n    retriez: 3\n"
        "  - name: b\n    run: 5\n"
    )
    assert [p.field for p in problems] == ["foo", "steps[0].retriez", "steps[1].run"]
    assert "expected text, got the number 5" in problems[2].message


def test_wrong_types() -> None:
    problems = problems_of(
        "name: x\nsteps:\n  - name: a\n    run: [echo]\n    retries: two\n"
        "    continue_on_error: 'no'\n    env: {A: [1]}\n"
    )
    by_field = {p.field: p for p in problems}
    assert "expected text, got a list" in by_field["steps[0].run"].message
    assert "expected an integer" in by_field["steps[0].retries"].message
    assert (by_field["steps[0].retries"].line, by_field["steps[0].retries"].column) == (5, 14)
    assert "true or false" in by_field["steps[0].continue_on_error"].message
    assert "steps[0].env.A" in by_field


def test_missing_name_and_steps() -> None:
    problems = problems_of("description: nothing else\n")
    assert {(p.field, p.message) for p in problems} == {
        ("name", "required field is missing"),
        ("steps", "required field is missing"),
    }
    p = one_problem("name: x\nsteps: []\n")
    assert p.field == "steps" and "at least 1" in p.message


def test_missing_step_name() -> None:
    p = one_problem("name: x\nsteps:\n  - run: echo\n")
    assert (p.field, p.line) == ("steps[0].name", 3)


def test_step_with_both_run_and_approval_or_neither() -> None:
    problems = problems_of(
        "name: x\nsteps:\n  - name: a\n    run: echo\n    approval: {approvers: [bob]}\n"
        "  - name: b\n    when: 'true'\n"
    )
    assert [(p.field, p.line) for p in problems] == [("steps[0]", 3), ("steps[1]", 6)]
    assert all("exactly one of 'run'" in p.message for p in problems)


def test_command_fields_on_an_approval_step() -> None:
    p = one_problem(
        "name: x\nsteps:\n  - name: a\n    approval: {approvers: [bob]}\n    retries: 2\n"
    )
    assert p.field == "steps[0].retries" and "command steps only" in p.message


def test_duplicate_step_names_across_steps_and_handlers() -> None:
    problems = problems_of(
        "name: x\nsteps:\n  - {name: a, run: echo}\n  - {name: a, run: echo}\n"
        "on_failure:\n  - {name: a, run: echo}\n"
    )
    assert [(p.field, p.line) for p in problems] == [
        ("steps[1].name", 4),
        ("on_failure[0].name", 6),
    ]
    assert "duplicate step name 'a'" in problems[0].message


@pytest.mark.parametrize("name", ["bad name", "-lead", "a/b", "x" * 129, "é"])
def test_bad_step_names(name: str) -> None:
    p = one_problem(f"name: x\nsteps:\n  - name: {json.dumps(name)}\n    run: echo\n")
    assert p.field == "steps[0].name" and "letters, digits" in p.message


def test_bad_duration() -> None:
    p = one_problem(minimal(step_extra="    timeout: 5 minutes\n"))
    assert (p.field, p.line, p.column) == ("steps[0].timeout", 5, 14)
    assert "duration" in p.message and "'5 minutes'" in p.message
    p = one_problem(minimal(step_extra="    timeout: 0\n"))
    assert "more than zero" in p.message
    p = one_problem(minimal(step_extra="    retry_delay: 40d\n"))
    assert "30 days" in p.message
    p = one_problem("name: x\nsteps:\n  - name: a\n    approval: {approvers: [b], timeout: soon}\n")
    assert p.field == "steps[0].approval.timeout"


def test_bad_enum_and_bounds() -> None:
    problems = problems_of(
        minimal(step_extra="    shell: zsh\n    retries: -1\n    retry_backoff: 0.5\n")
    )
    messages = {p.field: p.message for p in problems}
    assert "must be one of: bash, sh" in messages["steps[0].shell"]
    assert "at least 0" in messages["steps[0].retries"]
    assert "at least 1" in messages["steps[0].retry_backoff"]


def test_parameter_rules() -> None:
    problems = problems_of(
        "name: x\nparameters:\n"
        "  service: {default: db, choices: [api, web]}\n"  # default not a choice
        "  grace: {type: int, default: '10'}\n"  # wrong default type
        "  token: {secret: true, default: hunter2hunter2}\n"  # secret with default
        "  level: {type: int, choices: [1, two]}\n"  # wrong choice type
        "  both: {default: a, required: true}\n"  # contradiction
        "  size: {type: int, min: 5, max: 1, default: 3}\n"
        "  host: {pattern: '[a-z]+', default: 'A1'}\n"
        "  flag: {type: bool, pattern: 'x'}\n"
        "  regex: {pattern: '('}\n"
        "  Svc: {}\n  svc: {}\n"  # same PARAM_SVC
        "  9lives: {}\n"
        "steps:\n  - {name: a, run: echo}\n"
    )
    text = "\n".join(str(p) for p in problems)
    assert (
        "rb.yaml:3:22: parameters.service.default: the default 'db' is not one of the choices"
        in text
    )
    assert "parameters.grace.default: the default must be of type int" in text
    assert "parameters.token.default: a secret parameter cannot have a default" in text
    assert "parameters.level.choices[1]: a choice must be of type int" in text
    assert "parameters.both.required:" in text
    assert "parameters.size.max: max 1 is less than min 5" in text
    assert "parameters.size.default: the default 3 is less than min" in text
    assert "parameters.host.default: the default 'A1' does not match the pattern" in text
    assert "parameters.flag.pattern: 'pattern' applies to string parameters only" in text
    assert "parameters.regex.pattern: not a valid regular expression" in text
    assert "both map to the environment variable PARAM_SVC" in text
    assert "parameters.9lives: invalid name" in text


def test_approval_rules() -> None:
    p = one_problem(
        "name: x\nsteps:\n  - name: a\n    approval: {approvers: [a], min_approvals: 2}\n"
    )
    assert p.field == "steps[0].approval.min_approvals" and "only 1 approver" in p.message
    p = one_problem("name: x\nsteps:\n  - name: a\n    approval: {approvers: []}\n")
    assert p.field == "steps[0].approval.approvers"
    p = one_problem("name: x\nsteps:\n  - name: a\n    approval: {message: hi}\n")
    assert p.field == "steps[0].approval.approvers" and "missing" in p.message


def test_output_rules() -> None:
    problems = problems_of(
        minimal(
            step_extra="    outputs:\n      a: stdin\n      b: {json: x, regex: y}\n"
            "      c: {regex: '(unclosed'}\n      d: {json: 'a..b'}\n      _e: stdout\n"
        )
    )
    by_field = {p.field: p.message for p in problems}
    assert "an output is stdout, stderr" in by_field["steps[0].outputs.a"]
    assert "an output is stdout, stderr" in by_field["steps[0].outputs.b"]
    assert "invalid name" in by_field["steps[0].outputs._e"]
    # semantic checks of regex/json come once the schema is satisfied
    problems = problems_of(
        minimal(step_extra="    outputs:\n      c: {regex: '(unclosed'}\n      d: {json: 'a..b'}\n")
    )
    by_field = {p.field: p.message for p in problems}
    assert "not a valid regular expression" in by_field["steps[0].outputs.c.regex"]
    assert "dotted path" in by_field["steps[0].outputs.d.json"]


def test_env_names_and_values() -> None:
    problems = problems_of(
        minimal(top_extra="env: {'BAD-NAME': x, OK: {a: 1}}\ncapture_env: [HOME, HOME, '1X']\n")
    )
    fields = {p.field for p in problems}
    assert {"env.BAD-NAME", "env.OK", "capture_env"} <= fields


# --------------------------------------------------------------------------- templates


def test_template_referencing_unknown_parameter() -> None:
    p = one_problem(
        "name: x\nparameters:\n  service: {default: api}\nsteps:\n  - name: a\n"
        "    run: echo {{ params.servce }}\n"
    )
    assert (p.line, p.column, p.field) == (6, 10, "steps[0].run")
    assert "no parameter 'servce'" in p.message and "did you mean 'service'" in p.message


def test_template_referencing_later_step_or_itself() -> None:
    problems = problems_of(
        "name: x\nsteps:\n  - name: a\n    run: echo {{ steps.b.outputs.v }}\n"
        "    when: steps.a.exit_code == 0\n"
        "  - name: b\n    run: echo\n    outputs: {v: stdout}\n"
    )
    messages = {p.field: p.message for p in problems}
    assert "step 'b' runs after this one" in messages["steps[0].run"]
    assert "cannot read its own results" in messages["steps[0].when"]


def test_template_referencing_undeclared_outputs_and_attributes() -> None:
    problems = problems_of(
        "name: x\nsteps:\n  - name: a\n    run: echo\n    outputs: {v: stdout}\n"
        "  - name: b\n    run: echo {{ steps.a.outputs.w }} {{ steps.a.exitcode }} "
        "{{ steps.zz.status }} {{ run.nope }} {{ env.HOME }} {{ step.outputs.q }} {{ nope }}\n"
    )
    text = "\n".join(p.message for p in problems)
    assert "step 'a' declares no output 'w' (declared: v)" in text
    assert "steps.a.exitcode: a step has exit_code, outputs, status" in text
    assert "no step 'zz'" in text
    assert "run.nope: run has" in text
    assert "'HOME' is not in the runbook's env or capture_env" in text
    assert "this step declares no output 'q'" in text
    assert "unknown variable 'nope'" in text


def test_handlers_may_read_every_main_step() -> None:
    rb = parse_runbook(
        b"name: x\nsteps:\n  - {name: a, run: echo, outputs: {v: stdout}}\n"
        b"on_failure:\n  - name: h\n    run: echo {{ steps.a.outputs.v }} {{ run.failed_step }}\n"
        b"    when: steps.a.status == 'failed'\n",
        "rb.yaml",
    )
    assert rb.on_failure[0].name == "h"


def test_template_scopes() -> None:
    problems = problems_of(
        "name: x\nparameters: {p: {default: a}}\nenv: {A: '{{ steps.a.status }}'}\n"
        "lock: 'l-{{ run.id }}'\nsteps:\n  - {name: a, run: echo}\n"
    )
    messages = {p.field: p.message for p in problems}
    assert "'steps' is not available in the runbook's env" in messages["env.A"]
    assert "'run' is not available in lock" in messages["lock"]


def test_jinja_syntax_error_points_at_the_line_in_a_block_scalar() -> None:
    p = one_problem(
        "name: x\nsteps:\n  - name: a\n    run: |\n      echo one\n      echo {% if %}\n"
    )
    assert (p.line, p.field) == (6, "steps[0].run")
    assert p.message.startswith("template error:")


def test_jinja_syntax_errors_everywhere() -> None:
    problems = problems_of(
        "name: x\nlock: '{{ '\nsteps:\n  - name: a\n    run: echo {{ 1 +}}\n"
        "    when: 'a ==' \n    until: '{{ x'\n    env: {A: '{% for %}'}\n"
        "    cwd: '{{ params|nofilter }}'\n"
    )
    fields = {p.field for p in problems}
    assert fields == {
        "lock",
        "steps[0].run",
        "steps[0].when",
        "steps[0].until",
        "steps[0].env.A",
        "steps[0].cwd",
    }


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ params.__class__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ (params|attr('__class__')) }}",
        "{{ ''['__class__'] }}",
        "{% include '/etc/passwd' %}",
        "{% import 'x' as y %}",
        "{% extends 'base' %}",
    ],
)
def test_template_injection_refused_by_validate(template: str) -> None:
    p = one_problem(minimal().replace("echo hi", json.dumps("echo " + template)))
    assert p.field == "steps[0].run" and "template error" in p.message


@pytest.mark.parametrize(
    "expression",
    [
        "''.__class__.__mro__[1].__subclasses__()",
        "params|attr('__cl' ~ 'ass__')",  # a computed name: validate cannot see it
        "cycler|attr('__in' ~ 'it__')",
        "(params|attr('__cl' ~ 'ass__')).__init__",
    ],
)
def test_template_injection_refused_by_the_sandbox_at_run_time(expression: str) -> None:
    # Rendered directly, without validation: the sandbox itself must refuse.
    ctx = context_for(minimal())
    with pytest.raises(RunbookError, match="unsafe"):
        render_template("{{ " + expression + " }}", ctx, command=True)
    with pytest.raises(RunbookError, match="unsafe"):
        evaluate_condition(expression + " == 1", ctx)


def test_sandbox_caps_allocation() -> None:
    ctx = context_for(minimal())
    with pytest.raises(RunbookError, match="more than"):
        render_template("{{ 'x' * 100000000 }}", ctx)
    with pytest.raises(RunbookError, match="exponent"):
        render_template("{{ 9 ** 99999999 }}", ctx)
    with pytest.raises(RunbookError, match="longer than"):
        render_template("{% for i in range(20) %}{{ 'y' * 100000 }}{% endfor %}", ctx)


# --------------------------------------------------------------------------- hostile YAML


def test_billion_laughs_is_refused() -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    bomb = "name: x\n" + "\n".join(lines) + "\nsteps: [{name: a, run: echo}]\n"
    p = one_problem(bomb)
    assert p.line == 2 and "anchors" in p.message


def test_aliases_are_refused() -> None:
    p = one_problem("name: x\nsteps:\n  - name: a\n    run: *cmd\n")
    assert (p.line, p.column) == (4, 10) and "aliases" in p.message


def test_deep_nesting_is_refused() -> None:
    p = one_problem("name: x\nsteps: " + "[" * 100000 + "]" * 100000 + "\n")
    assert "nested more than 32 levels" in p.message and p.line == 2
    p = one_problem("name: x\nenv:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 40)))
    assert "nested more than 32 levels" in p.message


def test_huge_file_is_refused(tmp_path: Path) -> None:
    huge = minimal().encode() + b"#" * MAX_RUNBOOK_BYTES
    p = one_problem(huge)
    assert "at most 1048576 bytes" in p.message
    path = tmp_path / "huge.yaml"
    path.write_bytes(huge)
    with pytest.raises(RunbookInvalid, match="at most 1048576 bytes"):
        load_runbook(path)


def test_non_utf8_is_refused_with_its_offset() -> None:
    p = one_problem(b"name: x\n# caf\xe9\nsteps: []\n")
    assert (p.line, p.column) == (2, 6)
    assert "not UTF-8" in p.message and "byte offset 13" in p.message and "0xe9" in p.message


def test_control_characters_are_refused() -> None:
    p = one_problem(b"name: x\x07\nsteps: []\n")
    assert (p.line, p.column) == (1, 8)


def test_duplicate_keys_are_refused() -> None:
    p = one_problem("name: x\nsteps:\n  - name: a\n    run: echo\n    run: rm -rf /\n")
    assert (p.line, p.column, p.field) == (5, 5, "steps[0].run")
    assert "duplicate key 'run' (first at line 4)" in p.message


@pytest.mark.parametrize(
    "value",
    [
        "!!python/object/apply:os.system ['true']",
        "!!binary aGVsbG8=",
        "!custom x",
        "!!timestamp 2024-01-01",
        "!!set {a, b}",
    ],
)
def test_non_standard_tags_are_refused(value: str) -> None:
    p = one_problem(f"name: x\ndescription: {value}\nsteps: [{{name: a, run: echo}}]\n")
    assert p.line == 2 and "tag" in p.message


def test_yaml_syntax_errors_and_odd_documents() -> None:
    p = one_problem("name: x\nsteps: [\n")
    assert "YAML syntax error" in p.message
    assert "empty" in one_problem("").message
    assert "single document" in one_problem("name: x\n---\nname: y\n").message
    p = one_problem("- a\n- b\n")
    assert "expected a mapping" in p.message
    p = one_problem("name: x\nsteps: [{name: a, run: echo, timeout: .inf}]\n")
    assert "infinite" in p.message
    p = one_problem("name: x\n? [a, b]\n: 1\nsteps: [{name: a, run: echo}]\n")
    assert "plain text" in p.message


# --------------------------------------------------------------------------- schema


def test_schema_is_valid_draft_2020_12_and_closed_everywhere() -> None:
    schema = runbook_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert json.loads(schema_text()) == schema

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                assert node.get("additionalProperties") is False, node
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)


def test_schema_accepts_the_issue_runbook_and_rejects_unknown_fields() -> None:
    import yaml

    data = yaml.safe_load(ISSUE_RUNBOOK)
    jsonschema.validate(data, runbook_schema())
    data["steps"][0]["bogus"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, runbook_schema())


# --------------------------------------------------------------------------- parameters


def test_resolve_parameters_types_sources_and_redaction() -> None:
    rb = parse_runbook(ISSUE_RUNBOOK, "rb.yaml")
    resolved = resolve_parameters(rb, {"service": "web", "grace": "15"}, {"API_TOKEN": TOKEN})
    assert resolved.values == {"service": "web", "grace": 15, "token": TOKEN}
    assert resolved.sources == {"service": "given", "grace": "given", "token": "env:API_TOKEN"}
    assert resolved.redacted() == {"service": "web", "grace": 15, "token": "[REDACTED:token]"}
    assert resolved.secrets() == {"token": TOKEN}
    assert resolved.environment() == {
        "PARAM_SERVICE": "web",
        "PARAM_GRACE": "15",
        "PARAM_TOKEN": TOKEN,
    }
    assert resolved.redacted_environment()["PARAM_TOKEN"] == "[REDACTED:token]"
    assert TOKEN not in repr(resolved)
    defaults = resolve_parameters(rb, {"token": TOKEN}, {})
    assert defaults.values["service"] == "api" and defaults.sources["service"] == "default"


@pytest.mark.parametrize(
    ("given", "match"),
    [
        ({"grace": "ten"}, "'grace' .* must be an integer"),
        ({"service": "db"}, "must be one of: api, web"),
        ({"nope": "1"}, "no parameter 'nope'"),
        ({"servce": "api"}, "did you mean 'service'"),
    ],
)
def test_resolve_parameters_errors(given: dict[str, str], match: str) -> None:
    rb = parse_runbook(ISSUE_RUNBOOK, "rb.yaml")
    with pytest.raises(InputError, match=match):
        resolve_parameters(rb, given, {"API_TOKEN": TOKEN})


def test_missing_required_secret_says_how_to_give_it() -> None:
    rb = parse_runbook(ISSUE_RUNBOOK, "rb.yaml")
    with pytest.raises(InputError) as info:
        resolve_parameters(rb, {}, {})
    text = info.value.diagnostics()
    assert "secret parameter 'token'" in text
    assert "-p token=VALUE" in text and "API_TOKEN" in text


def test_bool_int_coercion_and_bounds() -> None:
    rb = parse_runbook(
        b"name: x\nparameters:\n  f: {type: bool}\n  n: {type: int, min: 1, max: 5, "
        b"required: false}\n  s: {pattern: '[a-z]+', required: false}\n"
        b"steps: [{name: a, run: echo}]\n",
        "rb.yaml",
    )
    for text, value in [
        ("true", True),
        ("YES", True),
        ("1", True),
        ("on", True),
        ("false", False),
        ("no", False),
        ("0", False),
        ("Off", False),
    ]:
        assert resolve_parameters(rb, {"f": text}, {}).values["f"] is value
    resolved = resolve_parameters(rb, {"f": "no"}, {})
    assert resolved.values["n"] is None and resolved.sources["n"] == "unset"
    assert resolved.environment()["PARAM_N"] == ""
    assert resolve_parameters(rb, {"f": True, "n": 3}, {}).values["n"] == 3  # typed (resume)
    for bad in (
        {"f": "maybe"},
        {"f": "1", "n": "9"},
        {"f": "1", "n": "0"},
        {"f": "1", "s": "ABC"},
        {"f": "1", "s": "a\0b"},
    ):
        with pytest.raises(InputError):
            resolve_parameters(rb, bad, {})


def test_secret_from_file_and_from_env(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_text(TOKEN + "\n")
    path = tmp_path / "rb.yaml"
    path.write_bytes(
        b"name: x\nparameters:\n  token: {secret: true, from_env: TOK, from_file: secrets/token}\n"
        b"steps: [{name: a, run: echo}]\n"
    )
    rb = load_runbook(path)
    resolved = resolve_parameters(rb, {}, {})
    assert resolved.values["token"] == TOKEN
    assert resolved.sources["token"] == "file:secrets/token"
    assert resolve_parameters(rb, {}, {"TOK": "from-env-value"}).values["token"] == "from-env-value"
    assert resolve_parameters(rb, {"token": "given-value"}, {}).values["token"] == "given-value"
    with pytest.raises(InputError, match="shorter than 4") as info:
        resolve_parameters(rb, {"token": "abc"}, {})
    assert "abc" not in info.value.diagnostics()
    (tmp_path / "secrets" / "token").unlink()
    with pytest.raises(InputError) as missing:
        resolve_parameters(rb, {}, {})
    assert "create the file secrets/token" in missing.value.diagnostics()


def test_secret_values_never_appear_in_error_messages() -> None:
    rb = parse_runbook(
        b"name: x\nparameters:\n  pin: {type: int, secret: true}\n  k: {secret: true, "
        b"choices: [aaaa, bbbb]}\nsteps: [{name: a, run: echo}]\n",
        "rb.yaml",
    )
    for given in (
        {"pin": "not-a-number-secret", "k": "aaaa"},
        {"pin": "12345", "k": "other-secret-value"},
    ):
        with pytest.raises(InputError) as info:
            resolve_parameters(rb, given, {})
        for value in given.values():
            if value != "aaaa":
                assert value not in info.value.diagnostics()


def test_parse_assignments() -> None:
    assert parse_assignments(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    with pytest.raises(UsageError):
        parse_assignments(["novalue"])
    with pytest.raises(UsageError):
        parse_assignments(["a=1", "a=2"])


# --------------------------------------------------------------------------- rendering


def test_rendering_the_issue_runbook() -> None:
    ctx = context_for(
        ISSUE_RUNBOOK,
        {"service": "api"},
        {"API_TOKEN": TOKEN, "DEPLOY_ENV": "prod", "OTHER": "x"},
        run_id="R1",
    )
    rb = ctx.runbook
    lock = render_lock(ctx)
    assert lock is not None and lock.text == lock.redacted == "restart-api"
    check = rb.steps[0]
    assert should_run(check, ctx)
    assert render_command(check, ctx).text == "./check.sh api"
    cwd = render_cwd(check, ctx)
    assert cwd is not None and cwd.text == "/srv/app"
    env = step_environment(check, ctx)
    assert env.values == {
        "PARAM_SERVICE": "api",
        "PARAM_GRACE": "10",
        "PARAM_TOKEN": TOKEN,
        "LOG_LEVEL": "info",
        "TIMEOUT": "5",
    }
    assert env.redacted["PARAM_TOKEN"] == "[REDACTED:token]"
    ctx.begin(check, attempt=1)
    assert ctx.current is not None
    ctx.current.exit_code = 1
    assert not attempt_succeeded(check, ctx)
    ctx.current.exit_code = 0
    assert attempt_succeeded(check, ctx)
    ctx.finish(check, "ok", 0, extract_outputs(check, b"1.4.2\n"))
    message = render_approval_message(rb.steps[1], ctx)
    assert message is not None and message.text == "Restart api at 1.4.2?"
    assert render_command(rb.steps[2], ctx).text == "systemctl restart api"
    assert ctx.variables()["env"].DEPLOY_ENV == "prod"  # type: ignore[attr-defined]
    web = context_for(ISSUE_RUNBOOK, {"service": "web"}, {"API_TOKEN": TOKEN})
    assert not should_run(web.runbook.steps[0], web)


HOSTILE = [
    "; rm -rf /",
    "$(touch pwned)",
    "`touch pwned`",
    "a' b \"c",
    "x\ny; touch pwned",
    "* ? [a]",
    "$HOME ${IFS} \\",
    "",
    "-n",
    "'",
    "--",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_parameter_values_are_one_shell_word(value: str, tmp_path: Path) -> None:
    ctx = context_for(
        "name: x\nparameters: {v: {required: false}}\nsteps:\n"
        "  - name: a\n    run: printf '%s\\0' {{ params.v }} end\n",
        {"v": value},
    )
    rendered = render_command(ctx.runbook.steps[0], ctx)
    proc = subprocess.run(
        ["bash", "-c", rendered.text], cwd=tmp_path, capture_output=True, check=True
    )
    assert proc.stdout.split(b"\0")[:-1] == [value.encode(), b"end"]
    assert not (tmp_path / "pwned").exists()


def test_step_outputs_cannot_inject_either(tmp_path: Path) -> None:
    ctx = context_for(
        "name: x\nsteps:\n  - {name: a, run: echo, outputs: {v: stdout}}\n"
        "  - name: b\n    run: printf '%s\\0' {{ steps.a.outputs.v }}{{ '-suffix' }}\n",
    )
    ctx.finish("a", "ok", 0, {"v": "$(touch pwned); touch pwned2"})
    rendered = render_command(ctx.runbook.steps[1], ctx)
    proc = subprocess.run(
        ["bash", "-c", rendered.text], cwd=tmp_path, capture_output=True, check=True
    )
    assert proc.stdout == b"$(touch pwned); touch pwned2-suffix\0"
    assert list(tmp_path.iterdir()) == []


def test_raw_opts_out_of_quoting_and_shell_quote_composes(tmp_path: Path) -> None:
    ctx = context_for(
        "name: x\nparameters:\n  flags: {default: '-l -a'}\n  path: {default: 'a b'}\n"
        'steps:\n  - name: a\n    run: "echo {{ params.flags | raw }} '
        "{{ ('--path=' ~ (params.path | shell_quote)) | raw }} {{ 7 }} {{ true }}\"\n",
    )
    assert render_command(ctx.runbook.steps[0], ctx).text == "echo -l -a --path='a b' 7 true"


def test_redacted_command_hides_secrets_in_every_form() -> None:
    secret = "pa ss'wo$rd-1234"
    ctx = context_for(
        "name: x\nparameters:\n  token: {secret: true}\nsteps:\n"
        "  - name: a\n    run: \"curl -H {{ 'Bearer ' ~ params.token }} {{ params.token | upper }}"
        ' {{ params.token }}"\n    outputs: {v: stdout}\n'
        "  - name: b\n    run: echo {{ steps.a.outputs.v }}\n",
        {"token": secret},
    )
    rendered = render_command(ctx.runbook.steps[0], ctx)
    assert shlex.split(rendered.text)[-1] == secret
    assert secret not in rendered.redacted and secret.upper() not in rendered.redacted
    assert shlex.quote(secret) not in rendered.redacted
    assert "[REDACTED:token]" in rendered.redacted
    ctx.finish("a", "ok", 0, {"v": f"got {secret}!"})
    second = render_command(ctx.runbook.steps[1], ctx)
    assert secret in shlex.split(second.text)[1]
    assert secret not in second.redacted and "[REDACTED:token]" in second.redacted
    assert redact(f"x{secret}y", {"token": secret}) == "x[REDACTED:token]y"


def test_values_computed_from_a_secret_are_redacted_by_differential_rendering() -> None:
    secret = "Tr0ub4dor&3-zebra"
    ctx = context_for(
        "name: x\nparameters:\n  token: {secret: true}\n  pin: {type: int, secret: true}\n"
        "steps:\n  - name: a\n    run: echo\n",
        {"token": secret, "pin": "48151623"},
    )
    step = ctx.runbook.steps[0]

    def shown(source: str, command: bool = False) -> str:
        return render_template(source, ctx, step=step, command=command).redacted

    assert shown("a {{ params.token | upper }} b") == "a [REDACTED:token] b"
    assert shown("{{ params.token[::-1] }}/{{ params.pin + 1 }}") == (
        "[REDACTED:token]/[REDACTED:pin]"
    )
    assert shown("x {{ params.token | replace('zebra', 'Z') }}", True) == "x '[REDACTED:token]'"
    # Not computed from the secret's value: kept.
    assert shown("{{ params.token | length > 3 }} {{ 'lit' | upper }}") == "true LIT"
    # The secret decides the structure (a loop over its characters): the whole text goes.
    assert shown("{% for c in params.token %}{{ c | upper }}{% endfor %}!") == "[REDACTED:token]"
    # A condition picking literals character by character rebuilds the secret from
    # untainted text; it differs with the placeholders all the same.
    rebuild = "{% for c in params.token %}{% if c == 'T' %}T{% else %}-{% endif %}{% endfor %}"
    assert "T" not in shown(rebuild).replace("REDACTED:token", "")
    # The real texts of redacted chunks are redacted from then on (output, records).
    assert ctx.redactor().redact_text(f"got {secret.upper()}") == "got [REDACTED:token]"


def test_error_messages_computed_from_a_secret_are_withheld() -> None:
    secret = "Tr0ub4dor&3-zebra"
    ctx = context_for(
        "name: x\nparameters:\n  token: {secret: true}\nsteps:\n"
        "  - {name: a, run: echo, outputs: {v: stdout}}\n"
        "  - name: b\n    run: echo {{ steps.a.outputs[params.token | lower] }}\n"
        "  - name: c\n    run: echo\n    when: params.token[1:]\n"
        "  - name: d\n    run: echo {{ steps.a.outputs.v | int // 0 }}\n",
        {"token": secret},
    )
    ctx.finish("a", "ok", 0, {"v": "1"})
    b, c, d = ctx.runbook.steps[1:]
    with pytest.raises(RunbookError) as err:
        render_command(b, ctx)
    assert secret.lower() not in err.value.message and "not shown" in err.value.message
    with pytest.raises(RunbookError) as err:
        evaluate_condition(c.when or "", ctx, step=c)
    assert secret[1:] not in err.value.message and "computed from a secret" in err.value.message
    with pytest.raises(RunbookError) as err:  # unrelated to the secret: shown in full
        render_command(d, ctx)
    assert "division" in err.value.message


def test_env_values_are_templates_and_redacted() -> None:
    ctx = context_for(
        "name: x\nparameters:\n  token: {secret: true}\nenv: {RUN: '{{ run.id }}'}\n"
        "steps:\n  - name: a\n    run: echo\n    env: {AUTH: 'Bearer {{ params.token }}', N: 5}\n",
        {"token": TOKEN},
        run_id="20260101T000000Z-0000abcd",
    )
    env = step_environment(ctx.runbook.steps[0], ctx)
    assert env.values["AUTH"] == f"Bearer {TOKEN}" and env.values["N"] == "5"
    assert env.values["RUN"] == "20260101T000000Z-0000abcd"
    assert env.redacted["AUTH"] == "Bearer [REDACTED:token]"
    assert TOKEN not in json.dumps(env.redacted)


def test_undefined_at_run_time_is_an_error_naming_the_variable() -> None:
    ctx = context_for(
        "name: x\nsteps:\n  - {name: a, run: echo, outputs: {v: stdout}}\n"
        "  - name: b\n    run: echo {{ steps.a.outputs.v }}\n"
    )
    ctx.finish("a", "skipped")
    with pytest.raises(RunbookError, match=r"steps\.a\.outputs\.v' is undefined"):
        render_command(ctx.runbook.steps[1], ctx)


def test_conditions() -> None:
    ctx = context_for(
        "name: x\nparameters:\n  s: {default: api}\n  flag: {type: bool, default: true}\n"
        "steps:\n  - {name: a, run: echo}\n",
    )
    true_ones = [
        "params.s == 'api'",
        "{{ params.s == 'api' }}",
        "params.flag",
        "{{ params.flag }}",
        "{{ 'yes' }}",
        " {{ 'TRUE' }} ",
        "1",
        "'true'",
    ]
    false_ones = [
        "params.s == 'web'",
        "{{ params.s != 'api' }}",
        "not params.flag",
        "{{ 'no' }}",
        "0",
        "{% if params.flag %}false{% else %}true{% endif %}",
    ]
    for expr in true_ones:
        assert evaluate_condition(expr, ctx) is True, expr
    for expr in false_ones:
        assert evaluate_condition(expr, ctx) is False, expr
    for bad in ["params.s", "{{ params.s }}", "2", "params.nope == 1", "{{ 1 / 0 }}"]:
        with pytest.raises(RunbookError):
            evaluate_condition(bad, ctx)


def test_until_sees_the_current_attempt() -> None:
    ctx = context_for(
        "name: x\nsteps:\n  - name: a\n    run: echo\n    retries: 5\n"
        "    until: step.outputs.state == 'ready' and step.attempt >= 2\n"
        "    outputs: {state: {json: status.state}}\n"
    )
    step = ctx.runbook.steps[0]
    for attempt, expected in ((1, False), (2, True)):
        current = ctx.begin(step, attempt)
        current.exit_code = 0
        current.outputs = extract_outputs(step, b'{"status": {"state": "ready"}}')
        assert attempt_succeeded(step, ctx) is expected


def test_extract_outputs() -> None:
    rb = parse_runbook(
        b"name: x\nsteps:\n  - name: a\n    run: echo\n    outputs:\n      whole: stdout\n"
        b"      err: stderr\n      ver: {json: app.version}\n      first: {json: items.0}\n"
        b"      obj: {json: app}\n      named: {regex: 'port=(?P<value>[0-9]+)'}\n"
        b"      group: {regex: 'host=(\\S+)'}\n      whole_match: {regex: '[0-9]+ms'}\n",
        "rb.yaml",
    )
    step = rb.steps[0]
    stdout = b'{"app": {"version": "1.2"}, "items": [3, 4], "x": "port=8080 host=db 25ms"}\n'
    values = extract_outputs(step, stdout, b"  warn  \n")
    assert values == {
        "whole": stdout.decode().strip(),
        "err": "warn",
        "ver": "1.2",
        "first": "3",
        "obj": '{"version":"1.2"}',
        "named": "8080",
        "group": "db",
        "whole_match": "25ms",
    }
    with pytest.raises(RunbookError, match="not JSON"):
        extract_outputs(step, b"nope")
    with pytest.raises(RunbookError, match="does not match"):
        extract_outputs(step, b'{"app": {"version": "1"}, "items": [1]}')


def test_dry_run_placeholders() -> None:
    ctx = context_for(ISSUE_RUNBOOK, {"token": TOKEN}, dry_run=True)
    message = render_approval_message(ctx.runbook.steps[1], ctx)
    assert message is not None
    assert message.text == "Restart api at <steps.check.outputs.version>?"


def test_env_variable_reads_declared_env_and_captured_env_only() -> None:
    ctx = context_for(
        "name: x\ncapture_env: [DEPLOY_ENV, REGION, X]\nenv: {X: mine}\n"
        "steps: [{name: a, run: echo}]\n",
        environ={"X": "theirs", "REGION": "eu", "HOME": "/root"},
    )
    rendered = render_template("{{ env.DEPLOY_ENV or 'dev' }} {{ env.REGION }} {{ env.X }}", ctx)
    assert rendered.text == "dev eu mine"
    assert ctx.captured_env == {"X": "theirs", "REGION": "eu"}
    with pytest.raises(RunbookError, match=r"'env\.HOME' is undefined"):
        render_template("{{ env.HOME }}", ctx)


@pytest.mark.parametrize("first", ["ledger.runbook", "ledger.run.context"])
def test_runbook_package_is_read_at_load_time_only(first: str) -> None:
    # ledger.run builds on ledger.runbook, never the other way round: loading a runbook
    # (what 'ledger validate' does) imports nothing of ledger.run, and either package can
    # be imported first.
    code = (
        "import importlib, sys\n"
        f"importlib.import_module({first!r})\n"
        "import ledger.runbook\n"
        "run = sorted(m for m in sys.modules if m == 'ledger.run' or m.startswith('ledger.run.'))\n"
        "print(' '.join(run))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    loaded = proc.stdout.split()
    if first == "ledger.runbook":
        assert loaded == []
    else:
        assert "ledger.run.context" in loaded


def test_on_cancel_and_always_handler_lists() -> None:
    rb = parse_runbook(
        b"name: x\nsteps:\n  - {name: a, run: echo, outputs: {v: stdout}}\n"
        b"on_failure:\n  - {name: f, run: echo}\n"
        b"on_cancel:\n  - name: c\n    run: echo {{ steps.a.outputs.v }} {{ run.failed_step }}\n"
        b"always:\n  - name: z\n    run: echo {{ steps.f.status }} {{ steps.c.status }}\n",
        "rb.yaml",
    )
    assert [(s.name, s.phase, s.index) for s in rb.on_cancel] == [("c", "on_cancel", 0)]
    assert [(s.name, s.phase, s.index) for s in rb.always] == [("z", "always", 0)]
    assert [s.name for s in rb.all_steps] == ["a", "f", "c", "z"]
    schema = runbook_schema()
    assert {"on_cancel", "always"} <= set(schema["properties"])


def test_handler_lists_share_names_and_do_not_read_each_other() -> None:
    problems = problems_of(
        "name: x\nsteps:\n  - {name: a, run: echo}\non_failure:\n  - {name: f, run: echo}\n"
        "on_cancel:\n  - {name: f, run: echo}\n  - {name: c, run: 'echo {{ steps.f.status }}'}\n"
        "always:\n  - {name: z, run: echo, bogus: 1}\n"
    )
    fields = [p.field for p in problems]
    assert "always[0].bogus" in fields  # the schema applies to every list
    problems = problems_of(
        "name: x\nsteps:\n  - {name: a, run: echo}\non_failure:\n  - {name: f, run: echo}\n"
        "on_cancel:\n  - {name: f, run: echo}\n"
    )
    assert [(p.field, p.line) for p in problems] == [("on_cancel[0].name", 7)]
    problems = problems_of(
        "name: x\nsteps:\n  - {name: a, run: echo}\non_failure:\n  - {name: f, run: echo}\n"
        "on_cancel:\n  - {name: c, run: 'echo {{ steps.f.status }}'}\n"
    )
    assert [p.field for p in problems] == ["on_cancel[0].run"]
    assert "'f' runs after this one" in problems[0].message or "no step 'f'" in problems[0].message


def test_templated_approvers_read_only_non_secret_parameters() -> None:
    rb = parse_runbook(
        b"name: x\nparameters: {who: {type: string}}\nsteps:\n"
        b'  - name: a\n    approval: {approvers: ["{{ params.who }}", bob]}\n',
        "rb.yaml",
    )
    assert rb.steps[0].approval is not None
    assert rb.steps[0].approval.approvers == ["{{ params.who }}", "bob"]
    problems = problems_of(
        "name: x\nparameters:\n  who: {type: string}\n  tok: {secret: true, from_env: T}\n"
        "steps:\n  - name: a\n    approval:\n      approvers:\n"
        "        - '{{ params.nobody }}'\n        - '{{ steps.a.status }}'\n"
        "        - '{{ params.tok }}'\n"
    )
    messages = {p.field: p.message for p in problems}
    assert "no parameter 'nobody'" in messages["steps[0].approval.approvers[0]"]
    assert "'steps' is not available in an approver" in messages["steps[0].approval.approvers[1]"]
    assert "is a secret" in messages["steps[0].approval.approvers[2]"]
