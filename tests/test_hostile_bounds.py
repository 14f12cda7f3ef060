"""Hostile input through the real CLI, part two: work that is bounded in time, not only in
memory. Templates that loop for ever, regular expressions that backtrack for ever on long
values, and key files that cannot be read (for real: as an unprivileged user when the tests
run as root). Every case ends within seconds with a one-paragraph message and a documented
exit code, never a traceback, a hang or a run left unfinished.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.cli import REPO_ROOT, CliResult, run_cli
from test_hostile import DOCUMENTED, _book, led, ledger_cli, refused

__all__ = ["led"]  # the fixture, shared with test_hostile

#: What a refusal may take, at most, on a loaded machine (the bounds are 2 s of CPU or less
#: per rendering; a run renders a step's command for the plan and again to run it).
PROMPT = 60.0

# --- templates that loop ----------------------------------------------------------------

NESTED_RANGES = (
    "{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}"
    "{% for d in range(1000) %}{% endfor %}{% endfor %}{% endfor %}{% endfor %}"
)
SLOW_TEMPLATES = [
    # Nested loops over a variable: nothing static to see, only the run can count.
    "{% set r = range(100000) %}{% for a in r %}{% for b in r %}{% endfor %}{% endfor %}",
    # Few iterations, each of them expensive: the CPU-time bound catches those.
    "{% set r = range(100000) %}{% for a in r %}{% set x = r|list|sort|join %}{% endfor %}",
    # A recursive loop that calls itself with fresh ranges (exponential, no output).
    "{% for x in range(4) recursive %}{% if loop.depth < 40 %}{{ loop(range(4)) }}"
    "{% endif %}{% endfor %}",
    # A filtered loop: the items the test skips cost too.
    "{% set r = range(100000) %}{% for a in r if a >= 0 %}{% for b in r if b < 0 %}{% endfor %}"
    "{% endfor %}",
    # A macro and a call block, each looping.
    "{% macro m() %}{% for a in range(100000) %}{% endfor %}{% endmacro %}"
    "{% for b in range(100000) %}{{ m() }}{% endfor %}",
]
BIG_TEMPLATES = [
    # Doubling a value with '~' or '+' builds gigabytes in 40 steps.
    "{% set ns = namespace(s='x' * 1000) %}{% for i in range(40) %}"
    "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
    "{% set ns = namespace(s=['x'] * 1000) %}{% for i in range(40) %}"
    "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
    "{% set a = 'x' * 1000000 %}{% set b = a ~ a %}{% set c = b ~ b %}{{ c|length }}",
]


def _timed(*args: str | os.PathLike[str]) -> tuple[CliResult, float]:
    start = time.monotonic()
    res = ledger_cli(*args, timeout=120)
    return res, time.monotonic() - start


def test_validate_refuses_nested_constant_ranges(tmp_path: Path) -> None:
    book = _book(tmp_path, NESTED_RANGES)
    res, took = _timed("validate", book)
    refused(res, 3, "invalid")
    assert "loop iterations" in res.out, res.output
    assert took < PROMPT


def test_run_refuses_nested_constant_ranges(led: tuple[Path, Path], tmp_path: Path) -> None:
    path, key = led
    book = _book(tmp_path, NESTED_RANGES)
    for extra in (["--dry-run"], []):
        res, took = _timed("run", book, *extra, "--ledger", path, "--key", key)
        refused(res, 3, "loop iterations")
        assert took < PROMPT
    assert "run.started" not in run_cli("log", "--ledger", path).out


@pytest.mark.parametrize("template", [*SLOW_TEMPLATES, *BIG_TEMPLATES])
def test_a_template_that_does_too_much_fails_the_step(
    led: tuple[Path, Path], tmp_path: Path, template: str
) -> None:
    path, key = led
    book = _book(tmp_path, template)
    res, took = _timed("run", book, "--dry-run", "--ledger", path, "--key", key)
    refused(res, 3, "template")
    assert took < PROMPT, took
    res, took = _timed("run", book, "--ledger", path, "--key", key)
    refused(res, 10, "template")
    assert took < PROMPT, took
    records = [r["record"] for r in json.loads(run_cli("log", "--ledger", path, "--json").out)]
    finished = [r["data"] for r in records if r["kind"] == "run.finished"]
    assert [f["status"] for f in finished] == ["failed"], finished
    steps = [r["data"] for r in records if r["kind"] == "step.finished"]
    assert [s["status"] for s in steps] == ["failed"], steps
    assert any(w in steps[0]["error"] for w in ("loop iterations", "CPU", "characters")), steps
    unfinished = run_cli("runs", "--status", "unfinished", "--ledger", path, "--json")
    assert json.loads(unfinished.out) == [], unfinished.output


def test_conditions_that_do_too_much_fail_cleanly(led: tuple[Path, Path], tmp_path: Path) -> None:
    path, key = led
    book = tmp_path / "when.yaml"
    heavy = " and ".join(["(range(100000)|list|sort|join|length) > 0"] * 60)
    book.write_text(f'name: t\nsteps:\n  - name: a\n    run: echo hi\n    when: "{heavy}"\n')
    res, took = _timed("run", book, "--ledger", path, "--key", key)
    assert "Traceback" not in res.output, res.output
    assert res.code in (0, 10), res.output
    assert took < PROMPT, took
    deep = " and ".join(["x > 0"] * 400)  # no brackets, but 400 levels for the compiler
    book.write_text(f'name: t\nsteps:\n  - name: a\n    run: echo hi\n    when: "{deep}"\n')
    res = ledger_cli("validate", book)
    refused(res, 3, "invalid")
    assert "nested too deeply" in res.out, res.output


def test_loops_nested_deeper_than_python_allows(tmp_path: Path) -> None:
    book = _book(tmp_path, "{% for a in [1] %}" * 20 + "x" + "{% endfor %}" * 20)
    res = ledger_cli("validate", book)
    refused(res, 3, "invalid")
    assert "nested more than 16" in res.out, res.output


def test_ordinary_loops_still_render(led: tuple[Path, Path], tmp_path: Path) -> None:
    path, key = led
    book = _book(
        tmp_path,
        "echo {% for a in range(300) %}{% for b in range(300) %}{% endfor %}{% endfor %}"
        "{{ range(50000)|sum }}",
    )
    res = ledger_cli("run", book, "--ledger", path, "--key", key)
    assert res.code == 0, res.output
    assert "1249975000" in res.output


# --- regular expressions on long values -------------------------------------------------

SLOW_PATTERNS = [
    ("a*a*a*a*b", "a"),
    ("(a|aa)*c", "a"),
    (r"\d*\d*\d*x", "1"),
    ("(?:x|xx|xxx)+y", "x"),
    ("(?:a|aa|aaa)+(?:b|bb|bbb)+c", "a"),
]


@pytest.mark.parametrize(("pattern", "letter"), SLOW_PATTERNS)
def test_a_slow_pattern_on_a_long_default_is_refused(
    tmp_path: Path, pattern: str, letter: str
) -> None:
    book = _book(
        tmp_path,
        "echo {{ params.x }}",
        extra=f"parameters:\n  x:\n    pattern: '{pattern}'\n    default: '{letter * 10000}'\n",
    )
    res, took = _timed("validate", book)
    refused(res, 3, "invalid")
    assert "pattern" in res.out, res.output
    assert took < PROMPT, took


@pytest.mark.parametrize(("pattern", "letter"), SLOW_PATTERNS)
def test_a_slow_pattern_on_a_long_value_is_refused(
    led: tuple[Path, Path], tmp_path: Path, pattern: str, letter: str
) -> None:
    path, key = led
    book = _book(
        tmp_path, "echo {{ params.x }}", extra=f"parameters:\n  x:\n    pattern: '{pattern}'\n"
    )
    assert ledger_cli("validate", book).code == 0
    for size in (4000, 10000):
        res, took = _timed("run", book, "-p", f"x={letter * size}", "--ledger", path, "--key", key)
        refused(res, 3, "pattern")
        assert took < PROMPT, took
    assert "run.started" not in run_cli("log", "--ledger", path).out


def test_a_slow_output_regex_fails_the_step(led: tuple[Path, Path], tmp_path: Path) -> None:
    path, key = led
    book = _book(tmp_path, "python3 -c \"print('a' * 10000)\"")
    book.write_text(book.read_text() + "    outputs:\n      v:\n        regex: '(?:a|aa|aaa)+b'\n")
    res, took = _timed("run", book, "--ledger", path, "--key", key)
    refused(res, 10, "regular expression")
    assert took < PROMPT, took
    records = [r["record"] for r in json.loads(run_cli("log", "--ledger", path, "--json").out)]
    assert [r["data"]["status"] for r in records if r["kind"] == "run.finished"] == ["failed"]
    assert "1 s" in json.dumps(records), records[:2]


def test_ordinary_patterns_still_match(led: tuple[Path, Path], tmp_path: Path) -> None:
    path, key = led
    book = _book(
        tmp_path,
        "echo {{ params.x }}",
        extra="parameters:\n  x:\n    pattern: '[a-z0-9-]+'\n    default: 'api-1'\n",
    )
    assert ledger_cli("validate", book).code == 0
    assert (
        ledger_cli("run", book, "-p", "x=" + "a" * 4000, "--ledger", path, "--key", key).code == 0
    )
    refused(ledger_cli("run", book, "-p", "x=A", "--ledger", path, "--key", key), 3, "pattern")


# --- key files that cannot be read ------------------------------------------------------


def _unprivileged(env: dict[str, str], cwd: Path) -> list[str] | None:
    """A command prefix under which this interpreter runs the CLI without the privilege of
    reading any file whatever its mode, or None. As root: the user nobody if the interpreter
    is readable by it, else root without the capabilities that bypass file permissions
    (``CAP_DAC_OVERRIDE``, ``CAP_DAC_READ_SEARCH``, ``CAP_FOWNER``), for which a mode-000
    file is as unreadable as for anybody."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    candidates = []
    if setpriv:
        candidates.append([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        candidates.append([setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"])
    for prefix in candidates:
        probe = subprocess.run(
            [*prefix, sys.executable, "-c", "import ledger.cli, pygit2"],
            env=env,
            cwd=cwd,
            capture_output=True,
            check=False,
            timeout=60,
        )
        if probe.returncode == 0:
            return prefix
    return None


def _reachable(path: Path) -> None:
    """Make ``path`` and every directory above it enterable by anyone."""
    for directory in (path, *path.parents):
        mode = stat.S_IMODE(directory.stat().st_mode)
        if mode & 0o011 != 0o011:
            directory.chmod(mode | 0o011)


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX only")
def test_an_unreadable_key_exits_4_for_an_unprivileged_user(tmp_path: Path) -> None:
    key = tmp_path / "k"
    assert run_cli("keys", "generate", key, "-C", "op@example.com").code == 0
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o777)
    _reachable(work)
    env = {
        **os.environ,
        "HOME": str(work),
        "TMPDIR": str(work),
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    prefix = _unprivileged(env, work)
    if prefix is None:
        pytest.skip("running as root with no way to drop privileges (setpriv)")
    key.chmod(0o000)
    assert os.geteuid() != 0 or key.read_bytes()  # root reads it: the test needs a drop
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "ledger", "init", str(work / "l"), "--key", str(key)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output
    assert proc.returncode == 4, output
    assert proc.stderr.startswith("ledger: "), output
    assert "permission" in proc.stderr.lower(), output
    assert str(key) in proc.stderr, output
    assert not (work / "l").exists()


def test_other_bad_key_files_exit_4(led: tuple[Path, Path], tmp_path: Path) -> None:
    path, key = led
    fifo = tmp_path / "fifo_key"
    os.mkfifo(fifo)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    huge = tmp_path / "huge"
    with huge.open("wb") as fh:
        fh.truncate(1 << 30)  # sparse: a gigabyte that costs nothing on disk
    public = Path(str(key) + ".pub")
    assert public.exists()
    for bad in (fifo, tmp_path, dangling, huge, public, key / "sub"):
        for args in (["record", "-m", "x", "--ledger", path], ["init", tmp_path / "fresh"]):
            res, took = _timed(*args, "--key", bad)
            refused(res, 4, "key")
            assert took < PROMPT, took
            assert res.code in DOCUMENTED
