"""Hostile input through the real CLI (child processes): every case ends with a one-paragraph
message on stderr and a documented exit code, never a traceback, a hang or unbounded memory.

Children that could allocate without bound run under RLIMIT_AS (1 GiB), so a regression fails
the test instead of eating the machine.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pygit2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.cli import REPO_ROOT, CliResult, run_cli
from support.gitcmd import loose_object

MEMORY_LIMIT = 1 << 30


def _documented_codes() -> set[int]:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    table = text[text.index("## Exit codes") :]
    codes: set[int] = set()
    for line in table.splitlines()[1:]:
        if line.startswith("## "):
            break
        match = re.match(r"\|\s*([0-9, ]+)\s*\|", line)
        if match:
            codes.update(int(c) for c in match.group(1).split(",") if c.strip())
    return codes


DOCUMENTED = _documented_codes()


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def ledger_cli(
    *args: str | bytes | os.PathLike[str], cwd: Path | None = None, timeout: float = 120
) -> CliResult:
    """``python -m ledger ARGS`` with bytes arguments allowed and memory capped."""
    proc = subprocess.run(
        [sys.executable, "-m", "ledger", *[a if isinstance(a, bytes) else str(a) for a in args]],
        cwd=cwd,
        capture_output=True,
        timeout=timeout,
        preexec_fn=_limit_memory,
        check=False,
    )
    return CliResult(
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )


def refused(res: CliResult, code: int, *words: str) -> None:
    """A clear refusal: ``code``, a message on stderr naming ``words``, no traceback."""
    assert "Traceback" not in res.output, res.output
    assert res.code == code, res.output
    assert res.code in DOCUMENTED
    assert res.err.strip().startswith("ledger: "), res.output
    for word in words:
        assert word in res.err, res.output


@pytest.fixture()
def led(tmp_path: Path) -> tuple[Path, Path]:
    key = tmp_path / "k"
    assert run_cli("keys", "generate", key, "-C", "op@example.com").code == 0
    path = tmp_path / "ledger.git"  # not "ledger": a child's cwd is tmp_path (python -m)
    res = run_cli("init", path, "--key", key)
    assert res.code == 0, res.output
    return path, key


# --- record --data, -m, -p ---------------------------------------------------------------


def test_record_data_hostile_json(led: tuple[Path, Path], tmp_path: Path) -> None:
    path, key = led
    base = ["record", "-m", "x", "--ledger", path, "--key", key]
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    refused(ledger_cli(*base, "--data", f"@{deep}"), 3, "nested")
    refused(ledger_cli(*base, "--data", "1" * 4301), 3, "4300 digits")
    refused(ledger_cli(*base, "--data", '"\\ud800"'), 3, "Unicode")
    refused(ledger_cli(*base, "--data", '{"a": 1, "a": 2}'), 3, "more than once")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    refused(ledger_cli(*base, "--data", f"@{fifo}"), 3, "not a regular file")
    assert len(json.loads(run_cli("log", "--ledger", path, "--json").out)) == 1  # no record


def test_arguments_that_are_not_utf8(led: tuple[Path, Path], tmp_path: Path) -> None:
    path, key = led
    refused(ledger_cli("record", "-m", b"caf\xe9", "--ledger", path, "--key", key), 3, "UTF-8")
    book = tmp_path / "rb.yaml"
    book.write_text("name: t\nparameters:\n  who: {}\nsteps:\n  - name: a\n    run: echo hi\n")
    refused(
        ledger_cli("run", book, "-p", b"who=\xff\xfe", "--ledger", path, "--key", key),
        3,
        "UTF-8",
    )
    assert "run.started" not in run_cli("log", "--ledger", path).out


# --- a damaged ledger -------------------------------------------------------------------


def _copy(path: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(path, target)
    return target


def _flip(path: Path, oid: str) -> None:
    obj = loose_object(path, oid)
    obj.chmod(0o644)
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x01
    obj.write_bytes(bytes(data))


def test_garbage_main_ref(led: tuple[Path, Path], tmp_path: Path) -> None:
    path, key = led
    (path / "refs" / "heads" / "main").write_text("garbage\n")
    for args in (["record", "-m", "x", "--key", key], ["status"], ["log"], ["show", "0"]):
        refused(ledger_cli(*args, "--ledger", path), 7, "refs/heads/main", "corrupt")
    refused(ledger_cli("keys", "list", "--ledger", path), 7, "refs/heads/main")


def test_flipped_root_tree_and_genesis_blob(led: tuple[Path, Path], tmp_path: Path) -> None:
    path, key = led
    assert run_cli("record", "-m", "hello", "--ledger", path, "--key", key).code == 0
    head = pygit2.Repository(str(path)).revparse_single("refs/heads/main")
    assert isinstance(head, pygit2.Commit)
    tree_copy = _copy(path, tmp_path, "tree")
    _flip(tree_copy, str(head.tree_id))
    for args in (["record", "-m", "x", "--key", key], ["status"], ["keys", "list"]):
        refused(ledger_cli(*args, "--ledger", tree_copy), 7, str(head.tree_id))
    blob_copy = _copy(path, tmp_path, "blob")
    genesis = str(head.tree["genesis.json"].id)
    _flip(blob_copy, genesis)
    for args in (["record", "-m", "x", "--key", key], ["keys", "list"]):
        refused(ledger_cli(*args, "--ledger", blob_copy), 7, genesis)


# --- runbooks and templates -------------------------------------------------------------

RECURSIVE = "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}"


def _book(tmp_path: Path, run: str, name: str = "rb.yaml", extra: str = "") -> Path:
    book = tmp_path / name
    indented = run.replace("\n", "\n      ")
    book.write_text(
        f"name: t\n{extra}steps:\n  - name: a\n    run: |\n      {indented}\n", encoding="utf-8"
    )
    return book


@pytest.mark.parametrize(
    ("template", "words"),
    [
        (RECURSIVE, "calls itself"),
        (
            "{% macro f() %}{{ g() }}{% endmacro %}{% macro g() %}{{ f() }}{% endmacro %}{{ f() }}",
            "calls itself",
        ),
        ("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", "nested"),
        ("{% if true %}" * 5000 + "x" + "{% endif %}" * 5000, "nested"),
        ("{{ '%02000000000d' % 1 }}", "format"),
        ("{{ 'x'|center(3e8) }}", "center"),
        ("{{ '%0999999999d'|format(1) }}", "format"),
        ("{{ 'x' * 3000000000 }}", "repeating"),
        ("{{ 'a\nb'|indent(300000000) }}", "indent"),
        ("{{ 9 ** 9999 }}", "exponent"),
    ],
)
def test_validate_refuses_templates_that_blow_up(tmp_path: Path, template: str, words: str) -> None:
    book = _book(tmp_path, template)
    res = ledger_cli("validate", book)
    refused(res, 3, "invalid")
    assert words in res.out, res.output


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("{{ 'x'.center(300000000) }}", "center"),
        ("{{ 'x'.ljust(300000000) }}", "ljust"),
        ("{{ '{:>999999999}'.format(1) }}", "format"),
        ("{{ ('ab ' * 100000)|wordwrap(1, true, 'x' * 1000) }}", "wordwrap"),
        ("{{ range(100000)|join('x' * 100000) }}", "join"),
    ],
)
def test_run_fails_the_step_cleanly_when_a_cap_is_hit_at_render(
    led: tuple[Path, Path], tmp_path: Path, template: str, words: str
) -> None:
    path, key = led
    book = _book(tmp_path, template)
    refused(ledger_cli("run", book, "--dry-run", "--ledger", path, "--key", key), 3, words)
    res = ledger_cli("run", book, "--ledger", path, "--key", key)
    refused(res, 10, words)
    status = run_cli("status", "--ledger", path)
    assert "unfinished runs: none" in status.out or "unfinished" not in status.out, status.out


def test_validate_refuses_a_fifo_and_nested_quantifiers(tmp_path: Path) -> None:
    fifo = tmp_path / "book.yaml"
    os.mkfifo(fifo)
    res = ledger_cli("validate", fifo, timeout=60)
    refused(res, 3, "invalid")
    assert "not a regular file" in res.out, res.output
    book = _book(
        tmp_path,
        "echo {{ params.x }}",
        "p.yaml",
        "parameters:\n  x:\n    pattern: '(a+)+b'\n",
    )
    res = ledger_cli("validate", book)
    refused(res, 3)
    assert "nested" in res.out, res.output
    out = _book(
        tmp_path,
        "echo hi",
        "o.yaml",
    )
    text = out.read_text() + "    outputs:\n      v:\n        regex: '([a-z]{1,3})*x'\n"
    out.write_text(text)
    res = ledger_cli("validate", out)
    refused(res, 3)
    assert "nested" in res.out, res.output


def test_pattern_values_are_bounded(led: tuple[Path, Path], tmp_path: Path) -> None:
    path, key = led
    book = _book(
        tmp_path, "echo {{ params.x }}", extra="parameters:\n  x:\n    pattern: '[a-z]+b'\n"
    )
    assert ledger_cli("validate", book).code == 0
    refused(
        ledger_cli("run", book, "-p", "x=" + "a" * 5000, "--ledger", path, "--key", key),
        3,
        "at most",
    )


# --- exit codes -------------------------------------------------------------------------


def test_unknown_runs_and_existing_keys(led: tuple[Path, Path], tmp_path: Path) -> None:
    path, key = led
    run_id = "20261122T014312Z-1a2b3c4d"
    for args in (["resume", run_id, "--key", key], ["approve", run_id, "go", "--key", key]):
        refused(ledger_cli(*args, "--ledger", path), 3, "has no run", run_id)
    refused(ledger_cli("report", "--run", run_id, "--ledger", path), 3, run_id)
    res = ledger_cli("keys", "generate", key)
    refused(res, 5, "file exists", "never overwritten")
    assert "ledger exists" not in res.err


def test_unreadable_keys_exit_4(led: tuple[Path, Path], tmp_path: Path) -> None:
    path, key = led
    fifo = tmp_path / "fifo_key"
    os.mkfifo(fifo)
    for bad in (fifo, key / "sub", tmp_path, tmp_path / "missing"):
        refused(ledger_cli("record", "-m", "x", "--ledger", path, "--key", bad), 4, "key")


def test_closed_stdout_is_success(led: tuple[Path, Path]) -> None:
    path, _ = led
    for args in (["log", "--ledger", path], ["show", "0", "--ledger", path], ["--help"]):
        read, write = os.pipe()
        os.close(read)  # the reader is gone before anything is written
        proc = subprocess.run(
            [sys.executable, "-m", "ledger", *map(str, args)],
            stdout=write,
            stderr=subprocess.PIPE,
            check=False,
        )
        os.close(write)
        assert proc.returncode == 0, proc.stderr
        assert b"Traceback" not in proc.stderr and b"Exception ignored" not in proc.stderr


# --- generated hostile arguments --------------------------------------------------------

_HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            "-",
            "--",
            "@",
            "@/dev/null",
            "@/",
            "{}",
            '{"a":1,"a":1}',
            "[" * 200,
            "1" * 5000,
            '"\\udfff"',
            "NaN",
            "1e999",
            "../../etc/passwd",
            "20261122T014312Z-1a2b3c4d",
            "{{ 'x' * 99999999 }}",
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
            "a" * 4000,  # a slow pattern's worst case (RBP), under its length cap
            "a" * 10000,
        ]
    ),
)
_COMMANDS = st.sampled_from(
    [
        ["record", "-m"],
        ["record", "-m", "x", "--data"],
        ["record", "-m", "x", "--run"],
        ["show"],
        ["log", "--run"],
        ["log", "--kind"],
        ["log", "-n"],
        ["resume"],
        ["approve", "20261122T014312Z-1a2b3c4d"],
        ["report", "--run"],
        ["report", "--incident"],
        ["keys", "revoke"],
        ["keys", "add", "x@y"],
        ["validate"],
        ["run", "RB", "-p"],
        ["run", "RBP", "-p"],
        ["verify", "--trust-genesis"],
        ["remote", "add", "x"],
    ]
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(command=_COMMANDS, value=_HOSTILE_TEXT, raw=st.binary(max_size=8))
def test_generated_hostile_arguments(
    led: tuple[Path, Path], tmp_path: Path, command: list[str], value: str, raw: bytes
) -> None:
    path, key = led
    book = tmp_path / "gen.yaml"
    book.write_text(
        "name: t\nparameters:\n  p: {default: a}\nsteps:\n  - name: a\n    run: 'true'\n"
    )
    slow = tmp_path / "gen-pattern.yaml"  # a pattern that backtracks on long runs of 'a'
    slow.write_text(
        "name: t\nparameters:\n  p: {pattern: '(?:a|aa|aaa)+b', default: ab}\n"
        "steps:\n  - name: a\n    run: 'true'\n"
    )
    books = {"RB": str(book), "RBP": str(slow)}
    args: list[str | bytes] = [books.get(a, a) for a in command]
    value = value.replace("\0", "")
    raw = raw.replace(b"\0", b"")
    argument: str | bytes = value.encode("utf-8", "surrogatepass") + raw if raw else value
    if command[0] == "run" and isinstance(argument, str):
        argument = "p=" + argument
    res = ledger_cli(*args, argument, "--ledger", path, "--key", key, cwd=tmp_path, timeout=120)
    assert "Traceback" not in res.output, res.output
    assert res.code in DOCUMENTED, res.output
    assert res.code != 1, res.output  # 1 is a bug
    if res.code != 0:
        assert res.err.strip(), res.output
