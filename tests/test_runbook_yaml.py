"""The YAML composers: libyaml's parser (when PyYAML has it) and PyYAML's pure-Python one give
the same values, locations, problems and refusals; the hostile-input limits hold with both."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.cli import REPO_ROOT

from ledger.runbook import MAX_RUNBOOK_BYTES, RunbookInvalid, parse_runbook, yamlsrc

needs_libyaml = pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML without libyaml")


def outcome(text: str, *, libyaml: bool) -> tuple[object, ...]:
    """What composing gives: the values and every location, or the problems."""
    try:
        data, locs = yamlsrc.compose(text, "rb.yaml", libyaml=libyaml)
    except RunbookInvalid as exc:
        return ("invalid", [str(p) for p in exc.problems])
    return ("ok", repr(data), sorted((repr(path), loc) for path, loc in locs.items()))


def assert_same(text: str) -> tuple[object, ...]:
    python = outcome(text, libyaml=False)
    assert outcome(text, libyaml=True) == python, repr(text)
    return python


def took_libyaml(text: str) -> bool:
    """Whether libyaml's reading stands (rather than the pure-Python composer's)."""
    try:
        return yamlsrc._compose_libyaml(text, "rb.yaml") is not None
    except RunbookInvalid:
        return True


# Texts that libyaml reads otherwise than PyYAML's scanner (or cannot read): each gives
# PyYAML's answer.
DIVERGENT = [
    "key:\tvalue\n",  # libyaml takes a tab after ':' as a blank; PyYAML refuses it
    "a: b\t\n",
    "a: b\t# comment\n",
    "run: |\t\n  echo\n",  # a tab in a block scalar's header
    "run: |\n  \tindented by a tab\n",  # libyaml refuses it
    "run: |#c\n  echo\n",  # a comment right after the indicator
    "run: >-#c\n  echo\n",
    "steps: [alice?]\n",  # '?' ends a plain scalar in [] for PyYAML
    "steps: [{name? : a}]\n",
    "p: {default: , type: int}\n",  # an empty value in {}: PyYAML places it at the ':'
    "steps: [{name: , run: x}]\n",
    "? a",  # an empty value at the very end, no final line break
    "a:",
    "---",
    "! \n",  # an empty scalar tagged '!' is null for PyYAML
    "a: ! \n",
    "a: 1\nb: \ufeffx\n",  # a byte order mark inside the text
    "a: &x |#c\n  b\n",  # refused anchor on a scalar PyYAML cannot read
    "*x\t #c\n",  # an alias before a tab PyYAML refuses
    "a: b\n---\nc: d\n",  # two documents
    "",
    "# only a comment\n",
    "a: [1, 2\n",
    "a: 'unterminated\n",
    "\x07bell: x\n",
]

# Texts both read alike, where libyaml's reading is taken.
SAME = [
    "name: x\nsteps:\n  - name: a\n    run: echo {{ params.svc }}\n",
    "a: 'x\ty'\nb: \"\\t\"\nc: |\n  a\ttab\n  more\nd: |2\n  \tindented\n",
    "a: |\n  keep\n\n\nb: >+\n  folded\n  text\n\nc: |2-\n    two\n",
    "a: 1\nb: -2\nc: 0x1f\nd: 0o17\ne: 1.5e3\nf: .5\ng: true\nh: yes\ni: null\nj: ~\nk: on\n",
    "a: !!str 1\nb: !!int '3'\nc: !!binary QQ==\nd: !x y\ne: ! 12\nf: !!map {}\ng: !!seq []\n",
    "a: .inf\nb: -.Inf\nc: .nan\nd: 1e999\n",
    "a: 1\na: 2\nb: {c: 1, c: 2}\n",
    "? [a, b]\n: value\nc: d\n",
    "a:\n  - x\n  - [y, {z: 1}]\n  - {b: [c, d], e: f}\n",
    "- a\n- b:\n  - c\n",
    "\"quoted key\": 1\n'single': 2\nplain key: 3\n",
    "a: 'it''s'\nb: \"\\x41\\u00e9\\U0001F600\"\nc: é𝄞\n",
    "a: b\r\nc: d\r\n",
    'a: multi\n  line\n  plain\nb: "multi\n  line"\n',
    "%YAML 1.1\n---\na: b\n...\n",
    "a: x # comment\n# another\nb: y\n",
    "name: x\nsteps: [{name: a, run: x}]\n",
]


@needs_libyaml
@pytest.mark.parametrize("text", DIVERGENT)
def test_libyaml_gives_way_where_it_reads_otherwise(text: str) -> None:
    assert_same(text)


@needs_libyaml
@pytest.mark.parametrize("text", SAME)
def test_libyaml_reads_like_pyyaml(text: str) -> None:
    assert_same(text)
    assert took_libyaml(text)


@needs_libyaml
def test_the_shipped_runbooks_read_alike() -> None:
    books = sorted((REPO_ROOT / "runbooks").glob("*.yaml"))
    books += sorted((REPO_ROOT / "ledger" / "runbooks").rglob("*.yaml"))
    assert books
    for book in books:
        text = yamlsrc.decode(book.read_bytes(), str(book))
        assert assert_same(text)[0] == "ok", book
        assert took_libyaml(text), book


# Pieces of YAML, including the ones libyaml and PyYAML read differently.
PIECES = [
    "a", "b c", "1", "-2", "0x1F", "1.5", "true", "yes", "null", "~", ".inf", "-", "- ", ": ",
    ":", "? ", "#c", " #c", "\n", "\n", "  ", "    ", " ", "\t", "\r\n", "\r", "\x85",
    "\u2028", "\ufeff", "é", "𝄞", "'q'", '"q\\n"', '"a\\tb"', "'it''s'", "|", ">", "|-", ">+",
    "|2", "[", "]", "{", "}", ",", "&x ", "*x", "!!str ", "!!int ", "!foo ", "! ", "!!map ",
    "---", "...", "%YAML 1.1\n", "@", "key: value\n", "- item\n", "k:\n  - x\n  - y\n",
    "m: {a: 1, b: [x, y]}\n", "s: |\n  l1\n\tl2\n", "x: a:b\n", "[a:b]", "?x", "x?",
]  # fmt: skip


@needs_libyaml
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=25))
def test_any_text_reads_alike(pieces: list[str]) -> None:
    assert_same("".join(pieces))


# ----------------------------------------------------------------------- hostile input


@needs_libyaml
def test_libyaml_refuses_an_alias_bomb_at_its_first_anchor() -> None:
    lines = ["name: x", 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [
        f"b{i}: &b{i} [" + ",".join([f"*b{i - 1}" if i else "*a"] * 9) + "]" for i in range(30)
    ]
    text = "\n".join(lines) + "\n"
    with pytest.raises(RunbookInvalid) as caught:
        yamlsrc._compose_libyaml(text, "rb.yaml")
    [problem] = caught.value.problems
    assert (problem.line, problem.column) == (2, 4)
    assert "YAML anchors (&a) are not allowed" in problem.message
    assert_same(text)
    # an alias without its anchor is refused where it stands
    with pytest.raises(RunbookInvalid, match="aliases"):
        yamlsrc._compose_libyaml("name: x\nsteps:\n  - name: a\n    run: *cmd\n", "rb.yaml")


@needs_libyaml
@pytest.mark.parametrize("flow", [True, False])
def test_libyaml_refuses_deep_nesting_without_reading_it_all(flow: bool) -> None:
    if flow:
        text = "name: x\nsteps: " + "[" * 500_000 + "]" * 500_000 + "\n"
    else:
        text = "name: x\nenv:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 5000))
    start = time.process_time()
    try:
        composed = yamlsrc._compose_libyaml(text, "rb.yaml")
    except RunbookInvalid as exc:
        caught = exc
    else:
        # libyaml 0.2.5 and later (PyYAML 6.0.4's wheels) stop at their own nesting limit
        # while scanning ahead, before any event: the reader falls back to the pure-Python
        # composer, which refuses it the same way.
        assert composed is None
        with pytest.raises(RunbookInvalid) as info:
            parse_runbook(text.encode(), "rb.yaml")
        caught = info.value
    assert time.process_time() - start < 1.0
    [problem] = caught.problems
    assert "nested more than 32 levels" in problem.message
    assert problem.line == (2 if flow else 33), problem
    assert_same(text[:20_000] if flow else text)


def test_an_oversized_file_is_refused_before_any_composer_reads_it() -> None:
    huge = b"name: x\nsteps: [" + b"[" * MAX_RUNBOOK_BYTES + b"\n"
    with pytest.raises(RunbookInvalid) as caught:
        parse_runbook(huge, "rb.yaml")
    [problem] = caught.value.problems
    assert (problem.line, problem.column) == (1, 1) and "at most 1048576 bytes" in problem.message


def test_validate_without_libyaml_says_the_same(tmp_path: Path) -> None:
    # PyYAML built without libyaml: the pure-Python composer, with the same messages.
    good = tmp_path / "good.yaml"
    good.write_text("name: x\nsteps:\n  - name: a\n    run: echo hi\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsteps:\n  - name: a\n    run: echo\n    run: again\n  - {nme: b}\n")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("name: x\na: &a [1]\nb: [*a, *a]\nsteps: [{name: a, run: x}]\n")
    code = (
        "import sys\n"
        "if sys.argv[1] == 'blocked':\n"
        "    sys.modules['yaml._yaml'] = None\n"
        "import yaml\n"
        "print(yaml.__with_libyaml__)\n"
        "from ledger.cli import main\n"
        "sys.argv = ['ledger', *sys.argv[2:]]\n"
        "main()\n"
    )
    outputs = []
    for blocked in ("blocked", "as-installed"):
        proc = subprocess.run(
            [sys.executable, "-c", code, blocked, "validate", str(good), str(bad), str(bomb)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            cwd=REPO_ROOT,
        )
        assert proc.returncode == 3, proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr
        libyaml, _, out = proc.stdout.partition("\n")
        assert libyaml == str(blocked != "blocked" and yaml.__with_libyaml__)
        outputs.append(out)
    assert outputs[0] == outputs[1]
    assert f"{bad}:5:5: steps[0].run: duplicate key 'run' (first at line 4)" in outputs[0]
    assert f"{bomb}:2:4: YAML anchors (&a) are not allowed" in outputs[0]
