"""The core commands through the real CLI (a subprocess): happy paths and bad input."""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cli import CliResult, run_cli
from support.gitcmd import git, loose_object


def no_traceback(res: CliResult) -> None:
    assert "Traceback" not in res.output, res.output


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[Path, Path]:
    key = tmp_path / "alice"
    res = run_cli("keys", "generate", key, "-C", "alice@example.com")
    assert res.code == 0, res.output
    led = tmp_path / "ledger.git"
    res = run_cli("init", led, "--key", key, "--name", "ops")
    assert res.code == 0, res.output
    return led, key


def test_keys_generate_matches_ssh_keygen(tmp_path: Path) -> None:
    import subprocess

    key = tmp_path / "k"
    res = run_cli("keys", "generate", key, "-C", "bob@example.com")
    assert res.code == 0, res.output
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    ours = next(w for w in res.out.split() if w.startswith("SHA256:"))
    theirs = subprocess.run(
        ["ssh-keygen", "-lf", str(key)], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    assert ours == theirs
    again = run_cli("keys", "generate", key)
    assert again.code == 5 and "exists" in again.err
    no_traceback(again)


def test_encrypted_key_needs_passphrase(tmp_path: Path) -> None:
    key = tmp_path / "enc"
    env = {"LEDGER_KEY_PASSPHRASE": "correct horse"}
    assert run_cli("keys", "generate", key, "--passphrase", env=env).code == 0
    led = tmp_path / "l.git"
    res = run_cli("init", led, "--key", key)
    assert res.code == 4 and "passphrase" in res.err, res.output
    no_traceback(res)
    res = run_cli("init", led, "--key", key, env={"LEDGER_KEY_PASSPHRASE": "wrong"})
    assert res.code == 4 and "passphrase" in res.err.lower(), res.output
    no_traceback(res)
    res = run_cli("init", led, "--key", key, env=env)
    assert res.code == 0, res.output


def test_record_log_show_verify(setup: tuple[Path, Path], tmp_path: Path) -> None:
    led, key = setup
    data = tmp_path / "d.json"
    data.write_text('{"ticket": "OPS-1", "n": 2}')
    assert run_cli("record", "-L", led, "-k", key, "-m", "deploy window opened").code == 0
    res = run_cli("record", "-L", led, "-k", key, "-m", "from file", "--data", f"@{data}")
    assert res.code == 0, res.output
    log = run_cli("log", "-L", led, "--json")
    assert log.code == 0
    entries = json.loads(log.out)
    assert [e["seq"] for e in entries] == [2, 1, 0]
    assert entries[0]["record"]["data"] == {
        "message": "from file",
        "data": {"ticket": "OPS-1", "n": 2},
    }
    only = json.loads(run_cli("log", "-L", led, "--json", "--kind", "genesis").out)
    assert [e["seq"] for e in only] == [0]
    show = run_cli("show", "-L", led, "1", "--json")
    assert json.loads(show.out)["record"]["data"]["message"] == "deploy window opened"
    res = run_cli("verify", "-L", led)
    assert res.code == 0 and "Verified 3 record(s)" in res.out, res.output
    res = run_cli("verify", "-L", led, "--since-last", "--json")
    assert res.code == 0 and json.loads(res.out)["records_checked"] == 0


def test_keys_add_revoke_and_allowed_signers_for_stock_git(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    led, alice = setup
    bob = tmp_path / "bob"
    assert run_cli("keys", "generate", bob).code == 0
    res = run_cli("keys", "add", "-L", led, "-k", alice, "bob@example.com", f"{bob}.pub")
    assert res.code == 0, res.output
    assert run_cli("record", "-L", led, "-k", bob, "-m", "by bob").code == 0
    bob_fp = next(
        s["fingerprint"]
        for s in json.loads(run_cli("keys", "list", "-L", led, "--json").out)
        if s["principal"] == "bob@example.com"
    )
    res = run_cli("keys", "revoke", "-L", led, "-k", alice, bob_fp, "--reason", "left team")
    assert res.code == 0, res.output
    res = run_cli("record", "-L", led, "-k", bob, "-m", "after revocation")
    assert res.code == 4 and "not trusted" in res.err, res.output
    no_traceback(res)
    listed = json.loads(run_cli("keys", "list", "-L", led, "--json").out)
    assert [s["active"] for s in listed] == [True, False]

    signers = tmp_path / "allowed_signers"
    assert run_cli("keys", "allowed-signers", "-L", led, "-o", signers).code == 0
    text = signers.read_text()
    assert "valid-after=" in text and "valid-before=" in text
    commits = git("rev-list", "main", cwd=led).stdout.split()
    assert len(commits) == 4
    for commit in commits:
        out = git(
            "-c",
            f"gpg.ssh.allowedSignersFile={signers}",
            "verify-commit",
            commit,
            cwd=led,
            check=False,
        )
        assert out.returncode == 0, (commit, out.stderr)
    assert git("fsck", "--strict", cwd=led, check=False).returncode == 0
    assert run_cli("verify", "-L", led).code == 0


def test_untrusted_signer_cannot_add_keys(setup: tuple[Path, Path], tmp_path: Path) -> None:
    led, _ = setup
    mallory = tmp_path / "mallory"
    assert run_cli("keys", "generate", mallory).code == 0
    res = run_cli("keys", "add", "-L", led, "-k", mallory, "mallory@example.com", f"{mallory}.pub")
    assert res.code == 4 and "not trusted" in res.err
    no_traceback(res)


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["record", "-m", "x", "--data", "{not json"], 3, "not valid JSON"),
        (["record", "-m", "x", "--data", "@/nonexistent/file.json"], 3, "does not exist"),
        (["record", "-m", "x", "--data", '{"f": 1.5}'], 3, "floating point"),
        (["record", "-m", "x", "--kind", "run.started"], 2, "only 'event'"),
        (["record", "-m", "x", "-k", "/nonexistent/key"], 4, "/nonexistent/key"),
        (["show", "99"], 3, "no record with seq 99"),
        (["log", "--kind", "bogus"], 2, "unknown --kind"),
        (["log", "--run", "not-a-run"], 3, "not a run id"),
        (["keys", "revoke", "SHA256:nope"], 3, "no trusted key"),
        (["verify", "--bogus-flag"], 2, "No such option"),
    ],
)
def test_bad_input_is_a_clear_error(
    setup: tuple[Path, Path], args: list[str], code: int, words: str
) -> None:
    led, key = setup
    full = [*args, "-L", str(led)]
    if "-k" not in args:
        full += ["-k", str(key)] if args[0] in ("record", "keys") else []
    res = run_cli(*full)
    assert res.code == code, res.output
    assert words in res.output
    no_traceback(res)


def test_not_a_ledger_and_existing(tmp_path: Path, setup: tuple[Path, Path]) -> None:
    led, key = setup
    res = run_cli("log", "-L", tmp_path / "nothing")
    assert res.code == 5 and "no ledger" in res.err
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x").write_text("x")
    res = run_cli("log", "-L", tmp_path / "plain")
    assert res.code == 5
    res = run_cli("init", led, "--key", key)
    assert res.code == 5 and "already exists" in res.err
    res = run_cli("log", cwd=tmp_path)
    assert res.code == 5 and "ledger init" in res.err
    for r in (res,):
        no_traceback(r)


def test_ledger_found_from_parent_directory(tmp_path: Path) -> None:
    key = tmp_path / "k"
    assert run_cli("keys", "generate", key).code == 0
    assert run_cli("init", "--key", key, cwd=tmp_path).code == 0
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    res = run_cli("record", "-m", "from a subdirectory", cwd=sub)  # key from ledger config
    assert res.code == 0, res.output
    assert run_cli("verify", cwd=sub).code == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_directory(tmp_path: Path, setup: tuple[Path, Path]) -> None:
    _, key = setup
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    res = run_cli("init", ro / "l.git", "--key", key)
    assert res.code == 6, res.output
    no_traceback(res)


def test_unwritable_ledger_objects(tmp_path: Path, setup: tuple[Path, Path]) -> None:
    """Appending into a repository whose objects cannot be written fails cleanly."""
    led, key = setup
    objects = led / "objects"
    blocker = tmp_path / "moved-objects"
    objects.rename(blocker)
    objects.write_text("not a directory")
    try:
        res = run_cli("record", "-L", led, "-k", key, "-m", "x")
        assert res.code in (5, 6), res.output
        no_traceback(res)
    finally:
        objects.unlink()
        blocker.rename(objects)
    assert run_cli("verify", "-L", led).code == 0


def test_corrupted_object_is_reported(setup: tuple[Path, Path]) -> None:
    led, key = setup
    assert run_cli("record", "-L", led, "-k", key, "-m", "x").code == 0
    head = git("rev-parse", "main", cwd=led).stdout.strip()
    obj = loose_object(led, head)
    obj.chmod(0o644)
    obj.write_bytes(b"garbage, not zlib")
    res = run_cli("verify", "-L", led)
    assert res.code in (6, 7), res.output
    assert "object" in res.output.lower()
    no_traceback(res)
    res = run_cli("log", "-L", led)
    assert res.code == 7 and head in res.err, res.output  # corruption, with the object named
    no_traceback(res)


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A directory on its own 8 MiB filesystem (tmpfs), so that a test can fill it up."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(disk)],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {made.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_record_on_a_full_disk_fails_cleanly_and_loses_nothing(
    small_disk: Path, tmp_path: Path
) -> None:
    key = tmp_path / "alice"
    assert run_cli("keys", "generate", key, "-C", "alice@example.com").code == 0
    led = small_disk / "ledger.git"
    assert run_cli("init", led, "--key", key, "--name", "ops").code == 0
    assert run_cli("record", "-L", led, "-k", key, "-m", "before").code == 0
    filler = small_disk / "filler"
    with open(filler, "wb") as fh:  # take every block that is left
        chunk = b"\0" * 65536
        with contextlib.suppress(OSError):
            while True:
                fh.write(chunk)
                fh.flush()
    res = run_cli("record", "-L", led, "-k", key, "-m", "on a full disk")
    assert res.code == 6, res.output
    assert "disk is full" in res.err, res.output
    no_traceback(res)
    assert not list((led / "objects" / "pack").glob("tmp_*"))  # nothing half-written kept
    filler.unlink()
    assert run_cli("verify", "-L", led).code == 0  # the failed append left no trace
    assert run_cli("record", "-L", led, "-k", key, "-m", "after").code == 0
    log = run_cli("log", "-L", led, "--json")
    messages = [r["record"]["data"].get("message") for r in json.loads(log.out)]
    assert "on a full disk" not in messages and {"before", "after"} <= set(messages)
    assert git("fsck", "--strict", cwd=led, check=False).returncode == 0


def test_a_key_revoked_and_added_back_verifies_with_stock_git_in_both_windows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key trusted in two windows (added, revoked, added back) gets one allowed-signers line
    per window, so stock ``git verify-commit`` accepts what it signed in each (one line with
    only the latest window rejected the earlier ones). Records an hour apart (a clock the
    test sets), written by the library."""
    from datetime import UTC, datetime, timedelta

    from ledger.format import records
    from ledger.keys import SigningKey
    from ledger.store import Ledger

    clock = [datetime(2026, 1, 1, tzinfo=UTC)]

    def tick() -> datetime:
        clock[0] += timedelta(hours=1)
        return clock[0]

    monkeypatch.setattr(records, "utc_now", tick)
    alice, bob = SigningKey.generate(), SigningKey.generate()
    led = Ledger.init(tmp_path / "l.git", name="ops", key=alice, principal="alice@example.com")
    added = {
        "principal": "bob@example.com",
        "key": bob.public_key.openssh(),
        "fingerprint": bob.public_key.fingerprint,
        "comment": "",
    }
    revoked = {"fingerprint": bob.public_key.fingerprint, "reason": "on leave"}
    led.append("key.added", added, key=alice)
    first = led.append("event", {"message": "bob, first window", "data": None}, key=bob)
    led.append("key.revoked", revoked, key=alice)
    led.append("key.added", added, key=alice)
    second = led.append("event", {"message": "bob, second window", "data": None}, key=bob)
    led.append("key.revoked", revoked, key=alice)
    led.append("key.added", added, key=alice)
    third = led.append("event", {"message": "bob, third window", "data": None}, key=bob)
    led.close()

    signers = tmp_path / "allowed_signers"
    res = run_cli("keys", "allowed-signers", "-L", led.path, "-o", signers)
    assert res.code == 0, res.output
    lines = signers.read_text().splitlines()
    bob_lines = [line for line in lines if line.startswith("bob@example.com ")]
    assert len(bob_lines) == 3, lines
    assert "valid-before" not in bob_lines[2]
    commits = git("rev-list", "main", cwd=led.path).stdout.split()
    assert len(commits) == 9
    for commit in commits:
        out = git(
            "-c", f"gpg.ssh.allowedSignersFile={signers}", "verify-commit", commit,
            cwd=led.path, check=False,
        )  # fmt: skip
        assert out.returncode == 0, (commit, out.stderr)
    assert {first.commit_id, second.commit_id, third.commit_id} <= set(commits)
    listed = json.loads(run_cli("keys", "list", "-L", led.path, "--json").out)
    assert [(s["principal"], s["active"]) for s in listed] == [
        ("alice@example.com", True),
        ("bob@example.com", False),
        ("bob@example.com", False),
        ("bob@example.com", True),
    ]
    assert run_cli("verify", "-L", led.path).code == 0


ODD_PRINCIPALS = [
    "two words",
    "a,b",
    'quo"te',
    "it's",
    "back\\slash",
    "*",
    "al?ce",
    "!neg",
    "#comment",
    "<angle>",
    "tab\tin",
    "bell\x07",
    "del\x7f",
    "c1\x85",
    "nbsp\u00a0",
    "line\u2028sep",
    "bidi\u202e",
    " ",
]


@pytest.mark.parametrize("principal", ODD_PRINCIPALS)
def test_init_and_keys_add_refuse_the_same_principals(
    setup: tuple[Path, Path], tmp_path: Path, principal: str
) -> None:
    """One check for every principal written into a trust record: what ``keys add`` and the
    allowed-signers export refuse, ``init --principal`` refuses too (exit 3), before
    anything is written."""
    led, key = setup
    fresh = tmp_path / "fresh.git"
    res = run_cli("init", fresh, "--key", key, "--principal", principal)
    assert res.code == 3, res.output
    assert "is not a usable principal" in res.err
    no_traceback(res)
    assert not fresh.exists()
    res_add = run_cli("keys", "add", "-L", led, "-k", key, principal, f"{key}.pub")
    assert res_add.code == 3, res_add.output
    assert "is not a usable principal" in res_add.err
    no_traceback(res_add)


def test_usable_principals_are_accepted_and_exported(tmp_path: Path) -> None:
    key = tmp_path / "k"
    assert run_cli("keys", "generate", key, "-C", "Alice Example <alice@example.com>").code == 0
    led = tmp_path / "l.git"
    res = run_cli("init", led, "--key", key)  # the comment is no principal: USER@HOST
    assert res.code == 0, res.output
    res = run_cli("keys", "add", "-L", led, "-k", key, "bjørn+ops@example.com", f"{key}.pub")
    assert res.code == 3 and "already trusted" in res.err  # the principal itself passed
    signers = run_cli("keys", "allowed-signers", "-L", led)
    assert signers.code == 0, signers.output


# --- trust comes from the verified chain, not from the tree's bytes ------------------------


def _forge_key_record(led: Path, attacker: Path, kind: str, data: dict[str, str]) -> str:
    """A key record signed by ``attacker`` (never trusted), appended to ``main`` as someone
    with write access to the ledger directory could."""
    from support.tamper import Built, forge_append

    from ledger.keys import SigningKey

    key = SigningKey.load(attacker)
    built = Built(led, key, key, [])
    return forge_append(built, key, principal="alice@example.com", kind=kind, data=data)


def _forged_key_added(tmp_path: Path, led: Path) -> tuple[Path, str]:
    from ledger.keys import PublicKey

    mallory = tmp_path / "mallory"
    assert run_cli("keys", "generate", mallory).code == 0
    pub = PublicKey.parse(Path(f"{mallory}.pub").read_text())
    data = {
        "principal": "alice@example.com",
        "key": pub.openssh(),
        "fingerprint": pub.fingerprint,
        "comment": "",
    }
    _forge_key_record(led, mallory, "key.added", data)
    return mallory, pub.fingerprint


def test_forged_key_added_is_not_trusted_anywhere(setup: tuple[Path, Path], tmp_path: Path) -> None:
    led, _alice = setup
    mallory, fp = _forged_key_added(tmp_path, led)
    head = git("rev-parse", "main", cwd=led).stdout.strip()
    listed = run_cli("keys", "list", "-L", led, "--json")
    assert fp not in listed.out, listed.output
    assert listed.code == 7 and "untrusted-key" in listed.err, listed.output
    no_traceback(listed)
    exported = run_cli("keys", "allowed-signers", "-L", led)
    pub = Path(f"{mallory}.pub").read_text().split()[1]
    assert pub not in exported.out
    assert exported.code == 7 and "untrusted-key" in exported.err, exported.output
    res = run_cli("record", "-L", led, "-k", mallory, "-m", "on top of the forgery")
    assert res.code != 0, res.output
    no_traceback(res)
    assert git("rev-parse", "main", cwd=led).stdout.strip() == head


def test_forged_key_revoked_does_not_revoke_and_append_names_the_finding(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    led, alice = setup
    fp = json.loads(run_cli("keys", "list", "-L", led, "--json").out)[0]["fingerprint"]
    mallory = tmp_path / "mallory"
    assert run_cli("keys", "generate", mallory).code == 0
    _forge_key_record(led, mallory, "key.revoked", {"fingerprint": fp, "reason": "forged"})
    listed = run_cli("keys", "list", "-L", led, "--json")
    assert [s["active"] for s in json.loads(listed.out)] == [True], listed.output
    res = run_cli("record", "-L", led, "-k", alice, "-m", "after the forgery")
    assert res.code == 7, res.output
    assert "untrusted-key" in res.err and "does not verify" in res.err, res.output
    no_traceback(res)
