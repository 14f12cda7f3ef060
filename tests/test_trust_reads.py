"""Every read that shows a record or decides from one reads the verified view.

Each test is an attack by someone who can write the ledger directory but holds no trusted
key (mallory): a record signed by an untrusted key appended on ``main``, an unreachable
forged commit, a seq-index entry pointed at it. Without ``--allow-unverified`` the commands
refuse with the findings named (exit 7); with it, display commands warn first, appending
commands sign ``Ledger-Unverified`` into their record, and decisions ignore the records a
finding names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support.cli import CliResult, run_cli
from support.gitcmd import git
from support.tamper import Built, forge_append, set_main, signed_commit
from test_approvals import Env, approve, make_env, start_waiting

from ledger.format import records
from ledger.keys import SigningKey

RUNBOOK = """\
name: tiny
steps:
  - name: hello
    run: echo hello
"""


@pytest.fixture()
def env(tmp_path: Path) -> Env:
    return make_env(tmp_path)


def no_traceback(res: CliResult) -> None:
    assert "Traceback" not in res.output, res.output


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[Path, Path]:
    key = tmp_path / "alice"
    assert run_cli("keys", "generate", key, "-C", "alice@example.com").code == 0
    led = tmp_path / "ledger.git"
    res = run_cli("init", led, "--key", key, "--name", "ops")
    assert res.code == 0, res.output
    return led, key


def head(led: Path) -> str:
    return git("rev-parse", "main", cwd=led).stdout.strip()


def forge(led: Path, *, kind: str = "event", **kwargs: Any) -> str:
    """A record signed by mallory (never trusted), appended to ``main``."""
    mallory = SigningKey.generate()
    return forge_append(
        Built(led, mallory, mallory, []),
        mallory,
        principal="alice@example.com",
        kind=kind,
        **kwargs,
    )


def forge_run(led: Path, name: str = "PWNED") -> str:
    """A forged run.started (and so a forged run directory in main's tree); its run id."""
    run_id = records.new_run_id()

    def edit(rec: dict[str, Any]) -> None:
        rec["run"] = run_id

    forge(led, kind="run.started", data={"runbook": {"name": name}}, edit_record=edit)
    return run_id


def commit_message(led: Path, commit: str = "main") -> str:
    return git("log", "-1", "--format=%B", commit, cwd=led).stdout


# --- record and approve: refused, or appended saying so ------------------------------------


def test_record_is_refused_on_an_unverified_head_and_appended_with_allow_unverified(
    setup: tuple[Path, Path],
) -> None:
    led, key = setup
    forge(led)
    before = head(led)
    res = run_cli("record", "-L", led, "-k", key, "-m", "on a forged head")
    assert res.code == 7, res.output
    assert "untrusted-key" in res.err and "--allow-unverified" in res.err, res.output
    no_traceback(res)
    assert head(led) == before
    res = run_cli("record", "-L", led, "-k", key, "-m", "investigated", "--allow-unverified")
    assert res.code == 0, res.output
    assert "WARNING" in res.err and "untrusted-key" in res.err, res.output
    assert head(led) != before
    assert "Ledger-Unverified: untrusted-key" in commit_message(led)
    # The record is honest about what it was appended onto, and verifies itself: the only
    # finding is the forgery's.
    verified = run_cli("verify", "-L", led, "--json")
    assert verified.code == 7, verified.output
    seqs = {f["seq"] for f in json.loads(verified.out)["findings"]}
    assert seqs == {1}, verified.out


def test_approve_is_refused_on_an_unverified_head_and_recorded_with_allow_unverified(
    env: Env,
) -> None:
    run_id, _ = start_waiting(env)
    forge(env.path)
    before = head(env.path)
    res = approve(env, "alice", run_id)
    assert res.returncode == 7, res.stderr
    assert "untrusted-key" in res.stderr and "--allow-unverified" in res.stderr
    assert head(env.path) == before
    res = approve(env, "alice", run_id, "approve", "--allow-unverified")
    assert res.returncode == 0, res.stderr
    assert "WARNING" in res.stderr
    message = commit_message(env.path)
    assert "Ledger-Kind: approval" in message
    assert "Ledger-Unverified: untrusted-key" in message


def test_record_run_ignores_a_forged_run_even_with_allow_unverified(
    setup: tuple[Path, Path],
) -> None:
    led, key = setup
    forged = forge_run(led)
    before = head(led)
    res = run_cli("record", "-L", led, "-k", key, "-m", "x", "--run", forged)
    assert res.code == 7, res.output
    res = run_cli("record", "-L", led, "-k", key, "-m", "x", "--run", forged, "--allow-unverified")
    assert res.code == 3 and f"no run {forged}" in res.err, res.output
    no_traceback(res)
    assert head(led) == before


# --- display commands ---------------------------------------------------------------------


def test_show_log_runs_status_refuse_a_chain_that_does_not_verify(
    setup: tuple[Path, Path],
) -> None:
    led, _key = setup
    forged = forge_run(led)
    for args in (("show", "1"), ("log",), ("log", "--run", forged), ("runs",), ("status",)):
        res = run_cli(*args, "-L", led)
        assert res.code == 7, (args, res.output)
        assert "untrusted-key" in res.err, (args, res.output)
        assert "PWNED" not in res.out and forged not in res.out, (args, res.output)
        no_traceback(res)
        shown = run_cli(*args, "-L", led, "--allow-unverified")
        assert shown.code == 0, (args, shown.output)
        assert "WARNING" in shown.err and "does NOT verify" in shown.err, (args, shown.output)


def test_approvals_never_lists_a_forged_request(env: Env) -> None:
    from ledger.run import approvals
    from ledger.runbook import ApprovalSpec

    spec = ApprovalSpec(approvers=["alice@example.com"], min_approvals=1, message="forged")
    run_id = forge_run(env.path, "t")

    def edit(rec: dict[str, Any]) -> None:
        rec["run"] = run_id

    data = {"step": "approve", "index": 0, "type": "approval"}
    data.update(approvals.request_data(spec, spec.message))  # type: ignore[arg-type]
    forge(env.path, kind="step.started", data=data, edit_record=edit)
    res = run_cli("approvals", "-L", env.path)
    assert res.code == 7 and run_id not in res.out, res.output
    res = run_cli("approvals", "-L", env.path, "--allow-unverified", "--json")
    assert res.code == 0, res.output
    assert json.loads(res.out) == [] and "WARNING" in res.err, res.output
    res = approve(env, "alice", run_id, "approve", "--allow-unverified")
    assert res.returncode == 3 and "no run" in res.stderr, res.stderr


def test_show_by_commit_id_refuses_an_unreachable_forgery(setup: tuple[Path, Path]) -> None:
    led, key = setup
    assert run_cli("record", "-L", led, "-k", key, "-m", "real").code == 0
    real = head(led)
    forged = forge(led, data={"message": "PWNED", "data": None})
    set_main(led, real)  # the forgery is left unreachable
    res = run_cli("show", forged, "-L", led)
    assert res.code == 3 and "not a record of this ledger's chain" in res.err, res.output
    assert "PWNED" not in res.out
    no_traceback(res)
    assert run_cli("show", real, "-L", led).code == 0


def _index_entry(led: Path, seq: int, commit: str) -> None:
    index = led / "ledger-state" / "seq-index"
    with open(index, "r+b") as fh:
        fh.seek(seq * 20)
        fh.write(bytes.fromhex(commit))


def test_index_entry_at_a_commit_with_the_same_tree_shows_the_chain_commit(
    setup: tuple[Path, Path],
) -> None:
    """A forged commit with the real record's tree (the same blobs) but its own message."""
    import pygit2

    led, key = setup
    for text in ("one", "two"):
        assert run_cli("record", "-L", led, "-k", key, "-m", text).code == 0
    repo = pygit2.Repository(str(led))
    real = repo.revparse_single("main~1")
    assert isinstance(real, pygit2.Commit)
    message = real.message.replace("event: one", "event: PWNED approved by the CEO")
    forged = signed_commit(
        repo,
        SigningKey.generate(),
        real.tree_id,
        [str(p) for p in real.parent_ids],
        message,
        real.author,
    )
    _index_entry(led, 1, forged)
    for args in (("show", "1", "--json"), ("show", "1")):
        res = run_cli(*args, "-L", led)
        assert res.code == 0, res.output
        assert forged not in res.out and "PWNED" not in res.out, res.output
        assert str(real.id) in res.out


def test_index_entry_at_another_record_is_not_shown_under_this_seq(
    setup: tuple[Path, Path],
) -> None:
    """A forged commit whose trailers claim seq 1 but name the path of record 2."""
    import pygit2

    led, key = setup
    for text in ("one", "two", "three"):
        assert run_cli("record", "-L", led, "-k", key, "-m", text).code == 0
    repo = pygit2.Repository(str(led))
    two = repo.revparse_single("main~1")
    assert isinstance(two, pygit2.Commit)
    message = two.message.replace("Ledger-Seq: 2", "Ledger-Seq: 1")
    forged = signed_commit(
        repo,
        SigningKey.generate(),
        repo.revparse_single("main").tree_id,
        [str(p) for p in two.parent_ids],
        message,
        two.author,
    )
    _index_entry(led, 1, forged)
    res = run_cli("show", "1", "--json", "-L", led)
    assert res.code == 0, res.output
    shown = json.loads(res.out)
    assert shown["record"]["seq"] == 1 and shown["record"]["data"]["message"] == "one"


# --- the report ---------------------------------------------------------------------------


def test_report_head_time_is_not_read_from_an_unverified_head(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    led, key = setup
    book = tmp_path / "tiny.yaml"
    book.write_text(RUNBOOK)
    res = run_cli("run", book, "-L", led, "-k", key, "--no-push")
    assert res.code == 0, res.output
    run_id = json.loads(run_cli("runs", "-L", led, "--json").out)[0]["run"]
    honest = run_cli("report", "--run", run_id, "-L", led)
    assert honest.code == 0, honest.output

    def future(rec: dict[str, Any]) -> None:
        rec["time"] = "2099-12-31T23:59:59.000000Z"

    forge(led, edit_record=future)
    res = run_cli("report", "--run", run_id, "-L", led)
    assert res.code == 0, res.output
    assert "2099-12-31" not in res.out, res.out  # (a date: "2099" alone may be in a commit id)
    assert "untrusted-key" in res.out  # the report says what failed


def test_report_shows_the_chain_commit_of_an_old_record_not_an_index_forgery(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    """The report names each record's commit: for a record at or below the last verified
    head, a seq-index entry at a forged commit with the record's tree must not be shown."""
    import pygit2

    led, key = setup
    book = tmp_path / "tiny.yaml"
    book.write_text(RUNBOOK)
    assert run_cli("run", book, "-L", led, "-k", key, "--no-push").code == 0
    run_id = json.loads(run_cli("runs", "-L", led, "--json").out)[0]["run"]
    assert run_cli("verify", "-L", led).code == 0  # the run's records are verified ones now
    repo = pygit2.Repository(str(led))
    started = next(
        c
        for c in repo.walk(repo.head.target)
        if records.parse_trailers(c.message).get("Ledger-Kind") == "run.started"
    )
    seq = int(records.parse_trailers(started.message)["Ledger-Seq"])
    forged = signed_commit(
        repo,
        SigningKey.generate(),
        started.tree_id,
        [str(p) for p in started.parent_ids],
        started.message.replace("run.started", "run.started PWNED", 1),
        started.author,
    )
    _index_entry(led, seq, forged)
    res = run_cli("report", "--run", run_id, "-L", led)
    assert res.code == 0, res.output
    assert forged[:12] not in res.out and "PWNED" not in res.out, res.out
    assert str(started.id)[:12] in res.out, res.out


# --- the ledger's config is no trust anchor ---------------------------------------------------


def test_remote_init_and_report_take_the_genesis_from_the_verified_chain(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    led, key = setup
    genesis = git("rev-list", "--max-parents=0", "main", cwd=led).stdout.strip()
    git("config", "ledger.genesis", "f" * 40, cwd=led)
    git("config", "ledger.name", "PWNED", cwd=led)
    res = run_cli("remote", "init", tmp_path / "remote.git", "-L", led)
    assert res.code == 0, res.output
    assert genesis in res.out and "f" * 40 not in res.out, res.output
    book = tmp_path / "tiny.yaml"
    book.write_text(RUNBOOK)
    assert run_cli("run", book, "-L", led, "-k", key, "--no-push").code == 0
    run_id = json.loads(run_cli("runs", "-L", led, "--json").out)[0]["run"]
    res = run_cli("report", "--run", run_id, "-L", led)
    assert res.code == 0, res.output
    assert genesis in res.out and "f" * 40 not in res.out and "PWNED" not in res.out


def test_push_never_replicates_a_chain_that_does_not_verify(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    """A path remote has no hook of its own: the forged record must not reach it."""
    led, _key = setup
    remote = tmp_path / "copy.git"
    git("init", "--bare", "-q", str(remote))
    assert run_cli("remote", "add", "copy", remote, "-L", led).code == 0
    assert run_cli("push", "-L", led).code == 0
    pushed = git("rev-parse", "main", cwd=remote).stdout.strip()
    assert pushed == head(led)
    forge(led)
    res = run_cli("push", "-L", led)
    assert res.code == 7, res.output
    assert "untrusted-key" in res.err and "not pushed" in res.err, res.output
    no_traceback(res)
    assert git("rev-parse", "main", cwd=remote).stdout.strip() == pushed
