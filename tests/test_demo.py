"""The README's main-job command, run from a clean temporary directory."""

from __future__ import annotations

import re
from pathlib import Path

from support.cli import run_cli
from support.gitcmd import git
from support.markdown import MD


def test_demo_runs_the_whole_loop(tmp_path: Path) -> None:
    res = run_cli("demo", cwd=tmp_path)
    assert res.code == 0, res.output
    assert "Traceback" not in res.output
    root = tmp_path / "ledger-demo"
    led = root / "ledger.git"
    for words in ("1/7", "7/7", "succeeded", "verified", "in sync", "appears in none"):
        assert words in res.out, words
    report = root / "report.md"
    assert str(report) in res.out
    text = report.read_text()
    tokens = MD.parse(text)
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert headings[0] == "Incident DEMO-1"
    assert "[REDACTED:token]" in text.replace("\\", "")
    # Every commit id the report cites is a commit of the ledger.
    ledger_id = git("config", "ledger.id", cwd=led).stdout.strip()
    cited = set(re.findall(r"`([0-9a-f]{12,40})`", text)) - {ledger_id}
    assert cited
    for short in cited:
        assert git("cat-file", "-t", short, cwd=led, check=False).stdout.strip() == "commit"
    # Both remotes hold the same head as the ledger, and stock git accepts every signature.
    head = git("rev-parse", "main", cwd=led).stdout.strip()
    for remote in ("primary", "secondary"):
        assert (
            git("rev-parse", "main", cwd=root / "remotes" / f"{remote}.git").stdout.strip() == head
        )
    signers = root / "allowed_signers"
    assert run_cli("keys", "allowed-signers", "--ledger", led, "-o", signers).code == 0
    for commit in git("rev-list", "main", cwd=led).stdout.split():
        assert (
            git(
                "-c",
                f"gpg.ssh.allowedSignersFile={signers}",
                "verify-commit",
                commit,
                cwd=led,
                check=False,
            ).returncode
            == 0
        )
    # Running it again replaces its own directory; a foreign directory is refused.
    assert run_cli("demo", cwd=tmp_path).code == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "file").write_text("x")
    res = run_cli("demo", "mine", cwd=tmp_path)
    assert res.code == 5 and "not made by 'ledger demo'" in res.err


def test_demo_fleet_refuses_a_name_it_would_ignore(tmp_path: Path) -> None:
    res = run_cli("demo", "d", "--fleet", "--name", "Bob", cwd=tmp_path)
    assert res.code == 2 and "--name does not fit --fleet" in res.err, res.output
    assert not (tmp_path / "d").exists()


def test_demo_fleet_three_runners_one_shared_remote_one_report(tmp_path: Path) -> None:
    res = run_cli("demo", "--fleet", cwd=tmp_path)
    assert res.code == 0, res.output
    assert "Traceback" not in res.output
    root = tmp_path / "ledger-demo"
    shared = root / "shared" / "fleet.git"
    refs = git("for-each-ref", "--format=%(refname) %(objectname)", cwd=shared).stdout.split("\n")
    held = dict(line.split() for line in refs if line)
    ids = {}
    for name in ("web", "db", "batch"):
        led = root / "runners" / name / "ledger.git"
        ledger_id = git("config", "ledger.id", cwd=led).stdout.strip()
        ids[name] = ledger_id
        # the shared remote holds each runner's chain at its own ref
        assert (
            held[f"refs/ledgers/{ledger_id}/main"]
            == git("rev-parse", "main", cwd=led).stdout.strip()
        )
    assert len(held) == 3
    # the second and third runners witnessed the others first
    for name, seen in (("db", 1), ("batch", 2)):
        led = root / "runners" / name / "ledger.git"
        log = git("log", "--format=%B", "main", cwd=led).stdout
        assert log.count("Ledger-Kind: witness") == 1
        assert f"witnessed {seen} other ledger(s)" in res.out
    assert "0 finding(s)" in res.out
    text = (root / "fleet-report.md").read_text()
    assert text.startswith("# Incident DEMO-FLEET-1 across the fleet")
    for name, ledger_id in ids.items():
        assert ledger_id in text and f"| {name} |" in text
    assert "[REDACTED:token]" in text.replace("\\", "")
    # the auditor's copy verifies again, from the user's state, with nothing new to read
    again = run_cli("fleet", "verify", "--fleet", root / "auditor" / "fleet.git", "--no-fetch")
    assert again.code == 0, again.output
    # Run again in the same directory: the demo makes its copy anew, and what its auditor saw
    # of the first run's ledgers there is not taken for ledgers that vanished.
    res = run_cli("demo", "--fleet", cwd=tmp_path)
    assert res.code == 0, res.output
    assert "0 finding(s)" in res.out and "vanished" not in res.out
