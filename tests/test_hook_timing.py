"""The opt-in timing of a protected remote's pre-receive check (``LEDGER_HOOK_TIMING`` in the
server's environment), which bench/bench_fleet.py reads to show a push's check is flat as a
shared remote fills. Real hooks run by stock ``git push``: a push to a path runs the remote's
hooks with the pusher's environment, which here stands for the server's."""

from __future__ import annotations

import re
from pathlib import Path

from support.cli import run_cli
from support.gitcmd import git
from support.replicas import TestLedger, make_ledger

LINE = re.compile(
    r"ledger-hook: checked 1 ref update\(s\) in [0-9.]+ ms \(cpu [0-9.]+ ms; before it, "
    r"import [0-9.]+ ms\) at [0-9.]+, (accepted|refused): (refs/ledgers/[0-9a-f]{32}/main)$"
)


def shared_remote(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.git"
    r = run_cli("remote", "init", path, "--shared")
    assert r.code == 0, r.output
    return path


def push(t: TestLedger, remote: Path, env: dict[str, str] | None = None) -> str:
    ref = f"refs/ledgers/{t.ledger.ledger_id}/main"
    return git("push", remote, f"main:{ref}", cwd=t.path, env=env).stderr


def test_timing_is_silent_unless_asked_then_reaches_the_pusher_or_a_log(tmp_path: Path) -> None:
    remote = shared_remote(tmp_path)
    t = make_ledger(tmp_path, "a")
    ref = f"refs/ledgers/{t.ledger.ledger_id}/main"
    assert "ledger-hook:" not in push(t, remote)

    t.append(2)
    err = push(t, remote, {"LEDGER_HOOK_TIMING": "1"})
    said = (line.strip().removeprefix("remote: ") for line in err.splitlines())
    lines = [m for line in said if (m := LINE.match(line))]
    assert [(m[1], m[2]) for m in lines] == [("accepted", ref)], err

    log = tmp_path / "hook-timing.log"
    for _ in range(2):
        t.append()
        assert "ledger-hook:" not in push(t, remote, {"LEDGER_HOOK_TIMING": str(log)})
    logged = [LINE.match(line) for line in log.read_text().splitlines()]
    assert [(m[1], m[2]) if m else None for m in logged] == [("accepted", ref)] * 2
