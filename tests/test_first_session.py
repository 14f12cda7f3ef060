"""A new user's first session: the README's commands as written, and what they rely on.

- the README's "A first session" block runs as written, as an unprivileged user in a fresh
  home directory, through bash (the way a user pastes it);
- `ledger keys generate` with no path, then `ledger init` with no `--key`, finds that key;
- `ledger init` inside a git work tree keeps the ledger out of the project's index;
- `ledger --version`, shell completion, examples in every command's help, the exit codes in
  `ledger --help` and in the README agree;
- `ledger runs` lists runs with their status, filtered by incident and status.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from support.cli import REPO_ROOT, run_cli
from support.gitcmd import git

from ledger import __version__
from ledger.cli import app, register
from ledger.cli import help as cli_help
from ledger.report import runs as run_list
from ledger.run import events

SECRET = "s3cr3t-value"


def _first_session_block() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## A first session", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "the README's first session has no sh block"
    return match.group(1)


def _user_env(tmp_path: Path) -> dict[str, str]:
    """A fresh home, and a `ledger` on PATH that is this checkout's (as pip would install)."""
    home = tmp_path / "home"
    home.mkdir()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    launcher = bindir / "ledger"
    launcher.write_text(f'#!/bin/sh\nexec {sys.executable} -m ledger "$@"\n')
    launcher.chmod(0o755)
    env = dict(os.environ)
    env.update(HOME=str(home), PATH=f"{bindir}:{env.get('PATH', '/usr/bin:/bin')}")
    for name in ("LEDGER_DIR", "LEDGER_SIGNING_KEY", "USER"):
        env.pop(name, None)
    return env


def test_the_readme_first_session_runs_as_written(tmp_path: Path) -> None:
    work = tmp_path / "checkout"
    shutil.copytree(REPO_ROOT / "runbooks", work / "runbooks")
    env = _user_env(tmp_path)
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", _first_session_block()],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    report = (work / "INC-42.md").read_text()
    assert "INC-42" in report
    assert "hello" in report
    assert SECRET not in report
    assert SECRET not in proc.stdout + proc.stderr
    # The run was pushed to the remote the session added.
    remote = Path(env["HOME"]) / "ledger-remotes" / "ops.git"
    head = git("--git-dir", remote, "rev-parse", "refs/heads/main").stdout.strip()
    local = git("--git-dir", work / ".ledger", "rev-parse", "refs/heads/main").stdout.strip()
    assert head == local


def test_generate_then_init_uses_the_default_key(tmp_path: Path) -> None:
    env = _user_env(tmp_path)
    gen = run_cli("keys", "generate", "-C", "ops@example.com", env=env, cwd=tmp_path)
    assert gen.code == 0, gen.output
    assert (Path(env["HOME"]) / ".ssh" / "ledger_ed25519").exists()
    init = run_cli("init", "L", "--name", "t", env=env, cwd=tmp_path)
    assert init.code == 0, init.output
    rec = run_cli("record", "-m", "hello", "-L", "L", env=env, cwd=tmp_path)
    assert rec.code == 0, rec.output


def test_without_any_key_the_error_names_the_default_path(tmp_path: Path) -> None:
    env = _user_env(tmp_path)
    res = run_cli("init", "L", env=env, cwd=tmp_path)
    assert res.code == 4
    assert "ledger_ed25519" in res.err
    assert "ledger keys generate" in res.err


def test_init_inside_a_work_tree_keeps_the_ledger_out_of_the_index(tmp_path: Path) -> None:
    env = _user_env(tmp_path)
    project = tmp_path / "project"
    project.mkdir()
    git("init", "-q", cwd=project)
    (project / "README").write_text("a project\n")
    assert run_cli("keys", "generate", env=env, cwd=project).code == 0
    res = run_cli("init", env=env, cwd=project)
    assert res.code == 0, res.output
    assert "excludes it" in res.out
    exclude = (project / ".git" / "info" / "exclude").read_text()
    assert "/.ledger/" in exclude.splitlines()
    status = git("status", "--porcelain", "--untracked-files=all", cwd=project).stdout
    assert ".ledger" not in status
    assert "README" in status
    # A second ledger does not add the line twice.
    assert run_cli("init", "sub/.ledger", env=env, cwd=project).code == 0
    lines = (project / ".git" / "info" / "exclude").read_text().splitlines()
    assert lines.count("/.ledger/") == 1
    assert "/sub/.ledger/" in lines


def test_init_outside_a_work_tree_writes_no_exclude(tmp_path: Path) -> None:
    env = _user_env(tmp_path)
    assert run_cli("keys", "generate", env=env, cwd=tmp_path).code == 0
    res = run_cli("init", "L", env=env, cwd=tmp_path)
    assert res.code == 0, res.output
    assert "excludes it" not in res.out


def test_version() -> None:
    res = run_cli("--version")
    assert res.code == 0
    assert res.out.strip() == f"ledger {__version__}"


def test_shell_completion_is_offered() -> None:
    res = run_cli("--help")
    assert "--install-completion" in res.out
    assert "--show-completion" in res.out
    # The shell named, not detected: detection walks the process tree (shellingham), which
    # under pytest-xdist may find no shell and print "Shell  not supported".
    shown = run_cli(
        "--show-completion",
        "bash",
        env={"SHELL": "/bin/bash", "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"},
    )
    assert shown.code == 0, shown.output
    assert "_LEDGER_COMPLETE" in shown.out


def _command_paths() -> list[str]:
    register([])
    return _paths(typer.main.get_command(app), "")


def _paths(group: object, prefix: str) -> list[str]:
    """Every command's path, through nested groups (``fleet remote add``)."""
    out = []
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        if getattr(cmd, "hidden", False):
            continue
        if getattr(cmd, "commands", None):
            out.extend(_paths(cmd, f"{prefix}{name} "))
        else:
            out.append(f"{prefix}{name}")
    return out


def test_every_command_has_examples() -> None:
    paths = _command_paths()
    assert set(paths) <= set(cli_help.EXAMPLES), set(paths) - set(cli_help.EXAMPLES)
    assert set(cli_help.EXAMPLES) <= set(paths), "examples for commands that do not exist"
    for path in ("keys list", "run"):
        res = run_cli(*path.split(), "--help")
        assert res.code == 0
        tail = res.out[res.out.index("Examples:") :]
        for line in cli_help.EXAMPLES[path]:
            assert line in tail


def test_help_lists_the_exit_codes_of_the_readme() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    table = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| ([0-9, ]+) \| (.+?) \|$", table, re.M)
    assert rows == list(cli_help.EXIT_CODES)
    res = run_cli("--help")
    assert "Exit codes:" in res.out
    flat = " ".join(res.out.split())
    for code, meaning in cli_help.EXIT_CODES:
        assert code in flat
        assert meaning.replace("`", "").split(":")[0] in flat


def test_runs_statuses_are_the_engines() -> None:
    engine = {
        events.RUN_SUCCEEDED,
        events.RUN_FAILED,
        events.RUN_ABORTED,
        events.RUN_REJECTED,
        events.RUN_ABANDONED,
    }
    assert set(run_list.STATUSES) == engine | {run_list.UNFINISHED}


def test_runs_lists_runs_with_status_and_filters(tmp_path: Path) -> None:
    env = _user_env(tmp_path)
    assert run_cli("keys", "generate", env=env, cwd=tmp_path).code == 0
    assert run_cli("init", "L", env=env, cwd=tmp_path).code == 0
    ok = tmp_path / "ok.yaml"
    ok.write_text("name: ok\nsteps:\n  - {name: a, run: 'true'}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nsteps:\n  - {name: b, run: 'false'}\n")
    run = ("run", "-L", "L", "--no-push")
    assert run_cli(*run, ok, "--incident", "INC-1", env=env, cwd=tmp_path).code == 0
    assert run_cli(*run, bad, "--incident", "INC-2", env=env, cwd=tmp_path).code == 10
    res = run_cli("runs", "-L", "L", "--json", env=env, cwd=tmp_path)
    assert res.code == 0, res.output
    listed = json.loads(res.out)
    assert [(r["runbook"], r["status"], r["incident"]) for r in listed] == [
        ("bad", "failed", "INC-2"),
        ("ok", "succeeded", "INC-1"),
    ]
    assert listed[0]["failed_step"] == "b"
    only = run_cli("runs", "-L", "L", "--incident", "INC-1", "--json", env=env, cwd=tmp_path)
    assert [r["runbook"] for r in json.loads(only.out)] == ["ok"]
    failed = run_cli("runs", "-L", "L", "--status", "failed", env=env, cwd=tmp_path)
    assert failed.code == 0
    assert "bad" in failed.out
    assert " ok " not in failed.out
    wrong = run_cli("runs", "-L", "L", "--status", "nope", env=env, cwd=tmp_path)
    assert wrong.code == 2
    assert "succeeded" in wrong.err


@pytest.mark.parametrize("status", ["unfinished"])
def test_runs_filter_accepts_unfinished(tmp_path: Path, status: str) -> None:
    env = _user_env(tmp_path)
    assert run_cli("keys", "generate", env=env, cwd=tmp_path).code == 0
    assert run_cli("init", "L", env=env, cwd=tmp_path).code == 0
    res = run_cli("runs", "-L", "L", "--status", status, env=env, cwd=tmp_path)
    assert res.code == 0, res.output
    assert "No runs." in res.out
