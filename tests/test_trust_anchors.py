"""Trust anchors out of a writer's reach (FORMAT.md §8): the pin and the last verified head
live in the user's state directory, never in the ledger directory, and plain ``verify``
agrees with ``verify --since-last`` about how a chain left a remembered head.

Each test is an attack by someone who can write the ledger directory but holds no trusted
key, or a case where plain verification used to disagree with FORMAT.md §10."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pygit2
import pytest
from support.cli import run_cli
from support.gitcmd import git
from support.tamper import (
    MAIN,
    Built,
    build,
    forge_append,
    rebuild,
    set_main,
    signed_commit,
)

from ledger.keys import SigningKey
from ledger.store import Ledger
from ledger.verify import home, local

NOT_PINNED = 14


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state directory of this test's own (children inherit it through the environment)."""
    d = tmp_path / "state"
    monkeypatch.setenv("LEDGER_STATE_DIR", str(d))
    return d


def _ledger_dir_state(built: Built) -> Path:
    return built.path / "ledger-state" / "verified.json"


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in root.rglob("*")
        if p.is_file()
    }


def _pinned(built: Built) -> local.LocalVerification:
    first = local.verify_local(built.path)
    assert first.result.ok and first.pinned_now and first.remembered
    return first


# --- where the anchors live ---------------------------------------------------------------


def test_anchors_live_in_a_private_state_directory(tmp_path: Path, state_dir: Path) -> None:
    built = build(tmp_path)
    before = _files(built.path)
    _pinned(built)
    assert _files(built.path) == before  # verify writes nothing in the ledger directory
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((state_dir / "heads").stat().st_mode) == 0o700
    head = local.state_path(built.path)
    assert head.parent == state_dir / "heads"
    assert stat.S_IMODE(head.stat().st_mode) == 0o600
    pins = state_dir / "pins"
    assert stat.S_IMODE(pins.stat().st_mode) == 0o600
    lid = Ledger.open(built.path).ledger_id
    assert f"{lid} {built.genesis}" in pins.read_text().splitlines()


def test_state_directory_defaults_to_xdg(tmp_path: Path) -> None:
    assert home.state_root({"XDG_STATE_HOME": "/x"}) == Path("/x/runbook-ledger")
    assert home.state_root({"LEDGER_STATE_DIR": "/y", "XDG_STATE_HOME": "/x"}) == Path("/y")
    assert home.state_root({}) == Path.home() / ".local" / "state" / "runbook-ledger"


def test_a_state_directory_others_can_write_is_refused(tmp_path: Path, state_dir: Path) -> None:
    built = build(tmp_path, events_after_key=0)
    state_dir.mkdir()
    os.chmod(state_dir, 0o770)  # noqa: S103 (group-writable: the case under test)
    res = run_cli("verify", "-L", built.path)
    assert res.code == 6, res.output
    assert "not private" in res.output and "chmod 700" in res.output


def test_two_copies_share_a_pin_but_not_a_head(tmp_path: Path) -> None:
    built = build(tmp_path)
    _pinned(built)
    copy = tmp_path / "copy"
    git("clone", "-q", "--bare", "--mirror", built.path, copy)
    (copy / "config").write_text((built.path / "config").read_text())
    assert local.load_state(copy) is None
    again = local.verify_local(copy)
    assert again.result.ok and again.pin_source == "this machine" and not again.pinned_now


# --- the ledger directory's own state file is never believed -------------------------------


def test_deleted_ledger_dir_state_does_not_hide_a_rollback(tmp_path: Path) -> None:
    built = build(tmp_path)
    _pinned(built)
    set_main(built.path, built.ids[-3])
    _ledger_dir_state(built).unlink(missing_ok=True)
    res = run_cli("verify", "-L", built.path)
    assert res.code == 7, res.output
    assert "[rollback]" in res.output


def test_rewritten_ledger_dir_state_does_not_move_the_pin(tmp_path: Path) -> None:
    built = build(tmp_path)
    first = _pinned(built)
    other = build(tmp_path, name="other")
    assert first.result.state is not None
    forged = first.result.state.to_json()
    forged.update(genesis=other.genesis, head=other.ids[-1], seq=len(other.ids) - 1)
    _ledger_dir_state(built).parent.mkdir(exist_ok=True)
    _ledger_dir_state(built).write_text(json.dumps(forged))
    git("fetch", "-q", other.path, f"{MAIN}:refs/heads/other", cwd=built.path)
    set_main(built.path, other.ids[-1])
    res = run_cli("verify", "-L", built.path, "--json")
    assert res.code == 7, res.output
    rules = {f["rule"] for f in json.loads(res.out)["findings"]}
    assert "genesis-mismatch" in rules


def test_extended_ledger_dir_state_does_not_trust_a_key(tmp_path: Path) -> None:
    built = build(tmp_path)
    first = _pinned(built)
    mallory = SigningKey.generate()
    assert first.result.state is not None
    forged = first.result.state.to_json()
    forged["keys"].append(
        {
            "principal": "mallory",
            "key": mallory.public_key.openssh(),
            "fingerprint": mallory.public_key.fingerprint,
            "added_seq": 1,
            "added_time": None,
            "revoked_seq": None,
            "revoked_time": None,
        }
    )
    _ledger_dir_state(built).parent.mkdir(exist_ok=True)
    _ledger_dir_state(built).write_text(json.dumps(forged))
    forge_append(built, mallory, principal="mallory")
    for args in ((), ("--since-last",)):
        res = run_cli("verify", "-L", built.path, "--json", *args)
        assert res.code == 7, res.output
        assert "untrusted-key" in {f["rule"] for f in json.loads(res.out)["findings"]}


def test_a_read_only_copy_verifies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing is written to the ledger, and a state directory that cannot be written only
    means the head is not remembered."""
    built = build(tmp_path)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("LEDGER_STATE_DIR", str(blocker / "state"))
    before = _files(built.path)
    res = run_cli("verify", "-L", built.path, "--json")
    assert res.code == 0, res.output
    doc = json.loads(res.out)
    assert doc["ok"] and not doc["pinned_now"] and doc["state_saved"] is False
    assert _files(built.path) == before


# --- explicit anchors and --require-pin ---------------------------------------------------


def test_require_pin_exits_14_and_pins_nothing(tmp_path: Path, state_dir: Path) -> None:
    built = build(tmp_path, events_after_key=0)
    res = run_cli("verify", "-L", built.path, "--require-pin")
    assert res.code == NOT_PINNED, res.output
    assert "NOT PINNED" in res.out and "--pins" in res.err
    assert not (state_dir / "pins").exists()
    res = run_cli("verify", "-L", built.path)
    assert res.code == 0 and "NOT PINNED" in res.out and "pinned now" in res.out
    res = run_cli("verify", "-L", built.path, "--require-pin")
    assert res.code == 0 and "NOT PINNED" not in res.out, res.output


def test_pin_file_and_environment(tmp_path: Path) -> None:
    built = build(tmp_path, events_after_key=0)
    lid = Ledger.open(built.path).ledger_id
    pins = tmp_path / "auditor-pins"
    pins.write_text(f"# ours\n{lid} {built.genesis}\n")
    res = run_cli("verify", "-L", built.path, "--require-pin", "--pins", pins, "--json")
    assert res.code == 0, res.output
    assert json.loads(res.out)["pin_source"] == "pin file"
    other = build(tmp_path, name="other", events_after_key=0)
    pins.write_text(f"{lid} {other.genesis}\n")
    res = run_cli("verify", "-L", built.path, "--pins", pins)
    assert res.code == 7 and "genesis-mismatch" in res.output
    pins.write_text("not a pin line\n")
    assert run_cli("verify", "-L", built.path, "--pins", pins).code == 3
    res = run_cli(
        "verify", "-L", built.path, "--require-pin", env={"LEDGER_TRUST_GENESIS": other.genesis}
    )
    assert res.code == 7 and "genesis-mismatch" in res.output


def test_a_malformed_pin_file_is_an_input_error_never_advice_to_delete_it(
    tmp_path: Path,
) -> None:
    """An auditor's pin file is their input, not a cache: every command that takes --pins
    refuses a malformed one with exit 3, naming the file and what is wrong."""
    built = build(tmp_path, events_after_key=0)
    fleet = tmp_path / "copy.git"
    git("init", "-q", "--bare", fleet)
    git("--git-dir", fleet, "config", "ledger.fleet", "true")
    binary = tmp_path / "p_bin"
    binary.write_bytes(b"\x00\xb0" + bytes(range(256)) * 12)
    commands = (
        ("verify", "-L", built.path),
        ("fleet", "verify", "--fleet", fleet, "--no-fetch"),
        ("fleet", "report", "--since", "2026-01-01", "--fleet", fleet),
    )
    for pins, what in ((binary, "is not UTF-8 text"), (tmp_path, "is a directory")):
        for command in commands:
            res = run_cli(*command, "--pins", pins)
            assert res.code == 3, (command, res.output)
            assert f"the pin file {pins} {what}" in res.err, res.output
            assert "delete" not in res.output and "Traceback" not in res.output


def test_a_ledger_pinned_to_two_genesis_commits_is_refused(tmp_path: Path) -> None:
    built = build(tmp_path, events_after_key=0)
    other = build(tmp_path, name="other", events_after_key=0)
    lid = Ledger.open(built.path).ledger_id
    pins = tmp_path / "auditor-pins"
    pins.write_text(f"{lid} {built.genesis}\n# again\n{lid} {built.genesis}\n")
    res = run_cli("verify", "-L", built.path, "--require-pin", "--pins", pins)
    assert res.code == 0, res.output  # the same pin twice is one pin
    pins.write_text(f"{lid} {built.genesis}\n\n{lid} {other.genesis}\n")
    res = run_cli("verify", "-L", built.path, "--pins", pins)
    assert res.code == 3, res.output
    assert f"lines 1 and 3 of the pin file {pins}" in res.err
    assert built.genesis in res.err and other.genesis in res.err


def test_appending_commands_refuse_an_unpinned_genesis(tmp_path: Path) -> None:
    key = SigningKey.generate(comment="op@example.com")
    key.save(tmp_path / "op_key")
    path = tmp_path / "ledger"
    res = run_cli("init", path, "--key", tmp_path / "op_key")
    assert res.code == 0, res.output
    genesis = Ledger.open(path).genesis_id
    # Right after init on this machine: pinned by init.
    res = run_cli("record", "-L", path, "-k", tmp_path / "op_key", "-m", "after init")
    assert res.code == 0, res.output
    elsewhere = {"LEDGER_STATE_DIR": str(tmp_path / "another-machine")}
    book = tmp_path / "rb.yaml"
    book.write_text("name: t\nsteps:\n  - name: s\n    run: echo hi\n")
    for args in (
        ("record", "-m", "x"),
        ("run", book, "--no-push"),
        ("approve", "0" * 32, "gate"),
    ):
        res = run_cli(*args, "-L", path, "-k", tmp_path / "op_key", env=elsewhere)
        assert res.code == NOT_PINNED, (args, res.output)
        assert "ledger verify" in res.err and "--trust-genesis" in res.err
    res = run_cli(
        "record",
        "-m",
        "x",
        "-L",
        path,
        "-k",
        tmp_path / "op_key",
        "--trust-genesis",
        genesis,
        env=elsewhere,
    )
    assert res.code == 0, res.output


def test_appending_commands_check_an_explicit_genesis_against_the_chain(tmp_path: Path) -> None:
    """--trust-genesis is a pin, not a password: on a machine that never verified the ledger,
    a malformed or wrong one appends nothing (exit 3, or 7 genesis-mismatch, even with
    --allow-unverified), and the right one is verified and remembered, as 'ledger run'
    does."""
    key = SigningKey.generate(comment="op@example.com")
    key.save(tmp_path / "op_key")
    path = tmp_path / "ledger"
    assert run_cli("init", path, "--key", tmp_path / "op_key").code == 0
    genesis = Ledger.open(path).genesis_id
    other = build(tmp_path, name="other", events_after_key=0).genesis
    elsewhere = {"LEDGER_STATE_DIR": str(tmp_path / "another-machine")}
    book = tmp_path / "rb.yaml"
    book.write_text("name: t\nsteps:\n  - name: s\n    run: echo hi\n")
    head = Ledger.open(path).head()
    for args in (
        ("record", "-m", "x"),
        ("record", "-m", "x", "--allow-unverified"),
        ("approve", "0" * 32, "gate"),
        ("approve", "0" * 32, "gate", "--allow-unverified"),
        ("fleet", "witness"),
        ("run", book, "--no-push"),
    ):
        for wrong, code in (("zzzz", 3), ("0" * 40, 7), (other, 7)):
            res = run_cli(
                *args, "-L", path, "-k", tmp_path / "op_key", "--trust-genesis", wrong,
                env=elsewhere,
            )  # fmt: skip
            assert res.code == code, (args, wrong, res.output)
            assert code == 3 or "genesis-mismatch" in res.err, (args, res.output)
            assert "Traceback" not in res.output
    assert Ledger.open(path).head() == head  # nothing was appended
    res = run_cli(
        "record", "-m", "x", "-L", path, "-k", tmp_path / "op_key", "--trust-genesis", genesis,
        env=elsewhere,
    )  # fmt: skip
    assert res.code == 0, res.output
    # Verified against it and remembered: the next append needs no --trust-genesis.
    res = run_cli("record", "-m", "y", "-L", path, "-k", tmp_path / "op_key", env=elsewhere)
    assert res.code == 0, res.output
    # A witness gets past the pin to its own question (no shared remote: exit 8, not 14).
    res = run_cli("fleet", "witness", "-L", path, "-k", tmp_path / "op_key", env=elsewhere)
    assert res.code == 8 and "no shared remote" in res.err, res.output


# --- plain verify agrees with --since-last (FORMAT.md §10 step 3) ---------------------------


def _both(built: Built) -> tuple[set[str], set[str]]:
    plain = local.verify_local(built.path, remember=False).result
    since = local.verify_local(built.path, since_last=True, remember=False).result
    return plain.rules(), since.rules()


def test_seq_gap_on_the_verified_head_is_no_rewrite(tmp_path: Path) -> None:
    built = build(tmp_path)
    _pinned(built)
    forge_append(built, built.alice, seq=len(built.ids) + 1)
    plain, since = _both(built)
    assert plain == since == {"seq"}


def test_last_two_records_swapped_is_a_rewrite_not_a_rollback(tmp_path: Path) -> None:
    built = build(tmp_path)
    _pinned(built)
    rebuild(built, [built.ids[-1], built.ids[-2]], built.ids[-3], fix_prev=True)
    plain, since = _both(built)
    assert plain == since
    assert "rewrite" in plain and "rollback" not in plain


def test_middle_record_dropped_is_a_rollback(tmp_path: Path) -> None:
    built = build(tmp_path)
    _pinned(built)
    rebuild(built, built.ids[4:], built.ids[2])
    plain, since = _both(built)
    assert plain == since
    assert {"rollback", "rewrite"} <= plain


def test_genesis_swap_is_a_rewrite_too(tmp_path: Path) -> None:
    built = build(tmp_path)
    _pinned(built)
    repo = built.repo
    g = repo[built.genesis]
    later = pygit2.Signature(g.author.name, g.author.email, g.author.time + 1, 0)
    new_genesis = signed_commit(repo, built.alice, g.tree_id, [], g.message, later)
    rebuild(built, built.ids[1:], new_genesis, fix_prev=True)
    plain, since = _both(built)
    assert plain == since
    assert {"genesis-mismatch", "rewrite"} <= plain


def test_tail_cut_is_a_rollback_only(tmp_path: Path) -> None:
    built = build(tmp_path)
    _pinned(built)
    set_main(built.path, built.ids[-3])
    plain, since = _both(built)
    assert plain == since == {"rollback"}


def test_deleted_main_is_a_rollback(tmp_path: Path) -> None:
    built = build(tmp_path)
    _pinned(built)
    git("update-ref", "-d", MAIN, cwd=built.path)
    for args in ((), ("--since-last",)):
        res = run_cli("verify", "-L", built.path, *args)
        assert res.code == 7, res.output
        assert "[rollback]" in res.output
