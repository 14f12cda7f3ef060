"""`ledger validate` and `ledger schema`, run as real subprocesses."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from support.cli import run_cli

from tests.test_runbook import ISSUE_RUNBOOK


def test_validate_ok(tmp_path: Path) -> None:
    path = tmp_path / "restart-api.yaml"
    path.write_bytes(ISSUE_RUNBOOK)
    result = run_cli("validate", path)
    assert result.code == 0, result.output
    assert result.out == f"{path}: ok (3 steps)\n"


def test_validate_reports_every_problem_with_location_and_exits_3(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_bytes(ISSUE_RUNBOOK)
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nparameters:\n  s: {default: db, choices: [api]}\nsteps:\n"
        "  - name: a\n    run: echo {{ params.nope }}\n  - name: a\n    run: echo\n"
    )
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("name: x\nstep: []\n")
    missing = tmp_path / "missing.yaml"
    result = run_cli("validate", good, bad, unknown, missing)
    assert result.code == 3, result.output
    lines = result.out.splitlines()
    assert lines[0] == f"{good}: ok (3 steps)"
    assert f"{bad}:3:16: parameters.s.default: the default 'db' is not one of the choices" in (
        result.out
    )
    assert f"{bad}:6:10: steps[0].run: params.nope: no parameter 'nope'" in result.out
    assert f"{bad}:7:11: steps[1].name: duplicate step name 'a'" in result.out
    assert f"{unknown}:2:1: step: unknown field 'step' (did you mean 'steps'?)" in result.out
    assert f"{unknown}:1:1: steps: required field is missing" in result.out
    assert f"{missing}: the runbook {missing} does not exist." in result.out
    assert "3 of 4 runbooks are invalid" in result.err
    assert "Traceback" not in result.output


def test_validate_json(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_bytes(ISSUE_RUNBOOK)
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"name: x\n# \xff\nsteps: []\n")
    result = run_cli("validate", "--json", good, bad)
    assert result.code == 3
    report = json.loads(result.out)
    assert report[0] == {"file": str(good), "ok": True, "steps": 3, "problems": []}
    assert report[1]["ok"] is False
    assert report[1]["problems"][0]["line"] == 2
    assert "not UTF-8" in report[1]["problems"][0]["message"]


def test_validate_refuses_hostile_files_cleanly(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    lines = ["name: x", 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"b{i}: &b{i} [*a,*a,*a,*a,*a,*a,*a,*a,*a]" for i in range(9)]
    bomb.write_text("\n".join(lines) + "\n")
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: x\nsteps: " + "[" * 50000 + "]" * 50000 + "\n")
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"name: x\n" + b"#" * (1 << 20) + b"\n")
    inject = tmp_path / "inject.yaml"
    inject.write_text("name: x\nsteps:\n  - name: a\n    run: echo {{ ''.__class__.__mro__ }}\n")
    result = run_cli("validate", bomb, deep, huge, inject, timeout=60)
    assert result.code == 3, result.output
    assert f"{bomb}:2:4: YAML anchors (&a) are not allowed" in result.out
    assert f"{deep}:2:" in result.out and "nested more than 32 levels" in result.out
    assert f"{huge}:1:1: the file is" in result.out and "at most 1048576 bytes" in result.out
    assert f"{inject}:4:10: steps[0].run: template error" in result.out
    assert "Traceback" not in result.output


def test_schema_command_prints_the_shipped_schema(tmp_path: Path) -> None:
    result = run_cli("schema")
    assert result.code == 0, result.output
    schema = json.loads(result.out)
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load(ISSUE_RUNBOOK), schema)
    assert schema["additionalProperties"] is False


@pytest.mark.slow
def test_validate_of_16000_steps_is_quick_and_loads_only_what_it_needs(tmp_path: Path) -> None:
    # 16,000 templated steps (0.84 MB): 9.5 s of CPU with PyYAML's pure-Python composer and
    # jsonschema on every step; about 1.5 s now, most of it starting Python and importing.
    book = tmp_path / "big.yaml"
    lines = ["name: big", "parameters:", "  svc:", "    default: api", "steps:"]
    lines += [f"  - name: s{i}\n    run: echo {{{{ params.svc }}}} {i}" for i in range(16000)]
    book.write_text("\n".join(lines) + "\n")
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print(sorted(m for m in ('pygit2', 'jsonschema') "
        "if m in sys.modules), file=sys.stderr))\n"
        "from ledger.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        [sys.executable, "-c", code, "validate", str(book)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        cwd=tmp_path,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == f"{book}: ok (16000 steps)\n"
    assert proc.stderr == "[]\n"  # neither the git store nor jsonschema was imported
    assert cpu < 4.0, cpu
