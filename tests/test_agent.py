"""Signing through ssh-agent: a real ``ssh-agent -a SOCKET`` per test, in the
test's temporary directory, killed afterwards. Stock ``git verify-commit`` judges the
commits made through it; every failure is exit 4 with nothing appended."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pygit2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from support.cli import CliResult, run_cli
from support.ledgers import wait_for_request

from ledger.errors import AgentError
from ledger.keys import SigningKey, blobs, parse_sshsig, split_signed_commit, sshwire
from ledger.keys.agent import checked_signature
from ledger.keys.keys import low_s
from ledger.store import Ledger

BOOK = """\
name: gated
steps:
  - name: before
    run: echo before
  - name: approve
    approval: {approvers: [approver@example.com], message: 'Go on?'}
  - name: after
    run: echo after
"""


class Agent:
    """A real ssh-agent listening on ``sock`` (started with ``extra_env``)."""

    def __init__(self, tmp: Path, name: str = "agent", extra_env: dict[str, str] | None = None):
        self.sock = tmp / f"{name}.sock"
        self.env_extra = dict(extra_env or {})
        out = subprocess.run(
            ["ssh-agent", "-s", "-a", str(self.sock)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, **self.env_extra},
        ).stdout
        self.pid = int(out.split("SSH_AGENT_PID=")[1].split(";")[0])

    @property
    def env(self) -> dict[str, str]:
        return {"SSH_AUTH_SOCK": str(self.sock)}

    def ssh_add(self, *args: str | Path, extra_env: dict[str, str] | None = None) -> None:
        subprocess.run(
            ["ssh-add", "-q", *[str(a) for a in args]],
            check=True,
            capture_output=True,
            env={**os.environ, **self.env, **(extra_env or {})},
            stdin=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)


@pytest.fixture()
def agents(tmp_path: Path) -> Iterator[list[Agent]]:
    """Agents a test starts (``agents.append(Agent(...))``); every one killed afterwards."""
    started: list[Agent] = []
    yield started
    for agent in started:
        agent.kill()


@pytest.fixture()
def agent(tmp_path: Path, agents: list[Agent]) -> Agent:
    started = Agent(tmp_path)
    agents.append(started)
    return started


def keygen(path: Path, key_type: str = "ed25519", comment: str = "op@example.com") -> str:
    """A key pair by ssh-keygen; the public key line (``type base64``)."""
    bits = ["-b", "2048"] if key_type == "rsa" else []
    subprocess.run(
        ["ssh-keygen", "-q", "-t", key_type, *bits, "-N", "", "-C", comment, "-f", str(path)],
        check=True,
    )
    return " ".join(path.with_name(path.name + ".pub").read_text().split()[:2])


def fingerprint(pub_line: str) -> str:
    from ledger.keys import PublicKey

    return PublicKey.parse(pub_line).fingerprint


def cli(*args: str | Path, env: dict[str, str], cwd: Path | None = None) -> CliResult:
    return run_cli(*args, env=env, cwd=cwd)


def head(path: Path) -> str:
    return str(pygit2.Repository(str(path)).references["refs/heads/main"].target)


# --------------------------------------------------------------------------- all commands


@pytest.mark.parametrize("key_type", ["ed25519", "ecdsa", "rsa"])
def test_every_command_signs_through_the_agent_with_the_private_file_deleted(
    tmp_path: Path, agent: Agent, key_type: str
) -> None:
    op_line = keygen(tmp_path / "op", key_type)
    ap_line = keygen(tmp_path / "ap", key_type, "approver@example.com")
    agent.ssh_add(tmp_path / "op")
    agent.ssh_add(tmp_path / "ap")
    (tmp_path / "op").unlink()
    (tmp_path / "ap").unlink()
    env = agent.env
    led = tmp_path / "ledger"
    work = tmp_path / "work"
    work.mkdir()

    res = cli("init", led, "--key", tmp_path / "op.pub", env=env)  # a .pub file
    assert res.code == 0, res.output
    assert "op@example.com" in res.out  # the principal from the agent's comment
    res = cli("keys", "add", "approver@example.com", tmp_path / "ap.pub", "-L", led, env=env)
    assert res.code == 0, res.output  # the key ledger.signingKey names (the .pub file)
    res = cli("record", "-m", "by literal", "-L", led, "--key", f"key::{op_line}", env=env)
    assert res.code == 0, res.output
    res = cli(
        "record", "-m", "file gone, .pub beside", "-L", led, "--key", tmp_path / "op", env=env
    )
    assert res.code == 0, res.output

    book = tmp_path / "book.yaml"
    book.write_text(BOOK)
    run_env = {**env, "LEDGER_SIGNING_KEY": fingerprint(op_line)}  # a fingerprint, from env
    proc = subprocess.Popen(
        [sys.executable, "-m", "ledger", "run", str(book), "-L", str(led), "--no-push"],
        env={**os.environ, **run_env},
        cwd=work,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        req = wait_for_request(led, step="approve", proc=proc)
        res = cli(
            "approve", req.run_id, "approve", "-L", led, "--key", fingerprint(ap_line), env=env
        )
        assert res.code == 0, res.output
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out

    allowed = tmp_path / "allowed"
    assert cli("keys", "allowed-signers", "-o", allowed, "-L", led, env=env).code == 0
    repo = pygit2.Repository(str(led))
    commits = [str(c.id) for c in repo.walk(repo.references["refs/heads/main"].target)]
    assert len(commits) >= 10
    git_judge = ["git", "-C", str(led), "-c", f"gpg.ssh.allowedSignersFile={allowed}"]
    for commit in commits:
        judged = subprocess.run(
            [*git_judge, "verify-commit", commit],
            capture_output=True,
            text=True,
        )
        assert judged.returncode == 0, judged.stderr
        _check_signature_form(repo.odb.read(commit)[1], key_type)
    res = cli("verify", "-L", led, env={})
    assert res.code == 0, res.output


def _check_signature_form(raw: bytes, key_type: str) -> None:
    """RSA signatures are rsa-sha2-512; ECDSA ones low-S."""
    _payload, sigs = split_signed_commit(raw)
    sig = parse_sshsig(sigs[0])
    if key_type == "rsa":
        assert sig.signature_type == "rsa-sha2-512"
    if key_type == "ecdsa":
        reader = sshwire.Reader(sig.signature_blob)
        reader.string()
        inner = sshwire.Reader(reader.string())
        inner.mpint()
        assert inner.mpint() <= blobs.ECDSA_ORDER["ecdsa-sha2-nistp256"] // 2


def test_an_encrypted_key_file_the_agent_holds_needs_no_passphrase(
    tmp_path: Path, agent: Agent
) -> None:
    key = tmp_path / "op"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "sekrit", "-C", "op@example.com", "-f", key],
        check=True,
    )
    askpass = tmp_path / "askpass"
    askpass.write_text("#!/bin/sh\necho sekrit\n")
    askpass.chmod(0o700)
    agent.ssh_add(key, extra_env={"SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force"})
    led = tmp_path / "ledger"
    res = cli("init", led, "--key", key, env=agent.env)  # no LEDGER_KEY_PASSPHRASE, no tty
    assert res.code == 0, res.output
    res = cli("record", "-m", "x", "-L", led, env=agent.env)
    assert res.code == 0, res.output
    # Without the agent it still asks for the passphrase, as before.
    res = cli("record", "-m", "x", "-L", led, env={})
    assert res.code == 4 and "LEDGER_KEY_PASSPHRASE" in res.output


# --------------------------------------------------------------------------- failures


@pytest.fixture()
def ledger_via(tmp_path: Path, agent: Agent) -> tuple[Path, str]:
    """A ledger made through ``agent`` with the op key (private file kept); its public line."""
    line = keygen(tmp_path / "op")
    agent.ssh_add(tmp_path / "op")
    led = tmp_path / "ledger"
    res = cli("init", led, "--key", f"key::{line}", env=agent.env)
    assert res.code == 0, res.output
    return led, line


def _refused(led: Path, env: dict[str, str], *words: str) -> CliResult:
    before = head(led)
    res = cli("record", "-m", "x", "-L", led, env=env)
    assert res.code == 4, res.output
    for word in words:
        assert word in res.err, res.err
    assert "Traceback" not in res.output
    assert head(led) == before  # nothing appended
    return res


def test_no_agent_socket(tmp_path: Path, ledger_via: tuple[Path, str]) -> None:
    led, _line = ledger_via
    _refused(led, {}, "SSH_AUTH_SOCK is not set", "ssh-agent")
    _refused(led, {"SSH_AUTH_SOCK": str(tmp_path / "none.sock")}, "there is no socket there")


def test_identity_not_in_the_agent(
    tmp_path: Path, ledger_via: tuple[Path, str], agents: list[Agent]
) -> None:
    led, line = ledger_via
    other = Agent(tmp_path, "other")
    agents.append(other)
    keygen(tmp_path / "someone", comment="someone@example.com")
    other.ssh_add(tmp_path / "someone")
    _refused(led, other.env, fingerprint(line), "ssh-add", "does not hold")


def test_locked_agent(tmp_path: Path, agent: Agent, ledger_via: tuple[Path, str]) -> None:
    led, _line = ledger_via
    askpass = tmp_path / "askpass"
    askpass.write_text("#!/bin/sh\necho lockpw\n")
    askpass.chmod(0o700)
    unlock = {"SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force"}
    agent.ssh_add("-x", extra_env=unlock)
    _refused(led, agent.env, "locked", "ssh-add -X")
    agent.ssh_add("-X", extra_env=unlock)
    assert cli("record", "-m", "x", "-L", led, env=agent.env).code == 0


def test_confirmation_declined(tmp_path: Path, agents: list[Agent]) -> None:
    agent = Agent(tmp_path, extra_env={"SSH_ASKPASS": "/bin/false", "SSH_ASKPASS_REQUIRE": "force"})
    agents.append(agent)
    line = keygen(tmp_path / "op")
    agent.ssh_add(tmp_path / "op")
    led = tmp_path / "ledger"
    assert cli("init", led, "--key", f"key::{line}", env=agent.env).code == 0
    agent.ssh_add("-d", tmp_path / "op.pub")
    agent.ssh_add("-c", tmp_path / "op")
    _refused(led, agent.env, "refused to sign", "-c")


def test_token_not_touched_in_time(tmp_path: Path, agents: list[Agent]) -> None:
    release = tmp_path / "release"
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    askpass = tmp_path / "askpass"
    # Blocks on the gate until the test releases it, at most 30 s; once released (or once
    # tmp_path is gone, for an askpass the agent starts after the test) it ends at once.
    askpass.write_text(
        f"#!/bin/sh\n[ -e {release} ] || timeout 30 cat {gate} >/dev/null 2>&1\nexit 1\n"
    )
    askpass.chmod(0o700)
    agent = Agent(tmp_path, extra_env={"SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force"})
    agents.append(agent)
    line = keygen(tmp_path / "op")
    agent.ssh_add(tmp_path / "op")
    led = tmp_path / "ledger"
    assert cli("init", led, "--key", f"key::{line}", env=agent.env).code == 0
    agent.ssh_add("-d", tmp_path / "op.pub")
    agent.ssh_add("-c", tmp_path / "op")
    try:
        _refused(
            led, {**agent.env, "LEDGER_AGENT_TIMEOUT": "1"}, "did not answer within 1 s", "touch"
        )
    finally:
        release.touch()
        with contextlib.suppress(OSError):  # (ENXIO: no askpass is waiting on the gate)
            os.close(os.open(gate, os.O_WRONLY | os.O_NONBLOCK))


def test_agent_killed_mid_run_stops_at_the_step_boundary(
    tmp_path: Path, agent: Agent, ledger_via: tuple[Path, str], agents: list[Agent]
) -> None:
    led, line = ledger_via
    work = tmp_path / "work"
    work.mkdir()
    book = tmp_path / "book.yaml"
    book.write_text(
        "name: doomed\nsteps:\n"
        f"  - name: kill-agent\n    run: kill {agent.pid}\n"
        f"  - name: after\n    run: touch {work / 'after'}\n"
    )
    res = cli("run", book, "-L", led, "--no-push", env=agent.env, cwd=work)
    assert res.code == 4, res.output
    assert "stopped after step 'kill-agent'" in res.err, res.err
    assert "ledger abandon" in res.err and "ledger resume" in res.err
    assert not (work / "after").exists()  # no step ran unrecorded
    ledger = Ledger.open(led)
    run_id = ledger.run_ids()[-1]
    kinds = [(r.kind, r.data.get("step")) for r in ledger.run_records(run_id)]
    assert kinds == [("run.started", None), ("step.started", "kill-agent")]
    assert cli("verify", "-L", led, env={}).code == 0
    # A new agent holding the key closes the run later.
    again = Agent(tmp_path, "again")
    agents.append(again)
    again.ssh_add(tmp_path / "op")
    res = cli("abandon", run_id, "--reason", "agent died", "-L", led, env=again.env)
    assert res.code == 0, res.output
    closing = Ledger.open(led).run_records(run_id)[-1]
    assert closing.kind == "run.finished" and closing.data["status"] == "abandoned"
    assert closing.record["actor"]["key"] == fingerprint(line)


# --------------------------------------------------------------------------- the checks


def test_an_rsa_sha1_reply_is_refused() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key = SigningKey(private)
    data = b"signed data"
    sha1 = private.sign(data, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303
    with pytest.raises(AgentError, match="rsa-sha2-512"):
        checked_signature(key.public_key, sshwire.string(b"ssh-rsa") + sshwire.string(sha1), data)
    good = key.sign(data)
    assert checked_signature(key.public_key, good, data) == good


def test_a_high_s_ecdsa_reply_is_made_low_s() -> None:
    key = SigningKey(ec.generate_private_key(ec.SECP256R1()))
    data = b"signed data"
    reader = sshwire.Reader(key.sign(data))
    sig_type = reader.string()
    inner = sshwire.Reader(reader.string())
    r, s = inner.mpint(), inner.mpint()
    order = blobs.ECDSA_ORDER["ecdsa-sha2-nistp256"]
    high = sshwire.string(sig_type) + sshwire.string(sshwire.mpint(r) + sshwire.mpint(order - s))
    assert key.public_key.verify(high, data)  # still valid: the other form
    fixed = checked_signature(key.public_key, high, data)
    again = sshwire.Reader(fixed)
    again.string()
    body = sshwire.Reader(again.string())
    assert body.mpint() == r and body.mpint() == s


def test_low_s_keeps_the_flags_and_counter_of_a_fido_signature() -> None:
    order = blobs.ECDSA_ORDER["ecdsa-sha2-nistp256"]
    r, s = 12345, order - 7
    tail = b"\x01" + (42).to_bytes(4, "big")  # flags (user present), counter
    sk_type = b"sk-ecdsa-sha2-nistp256@openssh.com"
    blob = sshwire.string(sk_type) + sshwire.string(sshwire.mpint(r) + sshwire.mpint(s)) + tail
    fixed = low_s(blob)
    assert fixed == (
        sshwire.string(sk_type) + sshwire.string(sshwire.mpint(r) + sshwire.mpint(7)) + tail
    )
    ed = sshwire.string(b"sk-ssh-ed25519@openssh.com") + sshwire.string(b"x" * 64) + tail
    assert low_s(ed) == ed  # anything else passes through as the agent made it


def test_a_refused_signature_mid_run_is_recorded_as_the_run_failing(
    tmp_path: Path, agents: list[Agent]
) -> None:
    deny = tmp_path / "deny-once"
    askpass = tmp_path / "askpass"  # confirms every signature, except once after 'deny-once'
    askpass.write_text(f"#!/bin/sh\nif [ -e {deny} ]; then rm -f {deny}; exit 1; fi\nexit 0\n")
    askpass.chmod(0o700)
    agent = Agent(tmp_path, extra_env={"SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force"})
    agents.append(agent)
    line = keygen(tmp_path / "op")
    agent.ssh_add("-c", tmp_path / "op")
    led = tmp_path / "ledger"
    assert cli("init", led, "--key", f"key::{line}", env=agent.env).code == 0
    work = tmp_path / "work"
    work.mkdir()
    book = tmp_path / "book.yaml"
    book.write_text(
        "name: declined\nsteps:\n"
        f"  - name: first\n    run: touch {deny}\n"
        f"  - name: after\n    run: touch {work / 'after'}\n"
    )
    res = cli("run", book, "-L", led, "--no-push", env=agent.env, cwd=work)
    assert res.code == 4, res.output
    assert "stopped after step 'first'" in res.err and "refused to sign" in res.err, res.err
    assert "recorded as failed" in res.err and "ledger resume" in res.err, res.err
    assert not (work / "after").exists()
    ledger = Ledger.open(led)
    recs = ledger.run_records(ledger.run_ids()[-1])
    assert [r.kind for r in recs] == ["run.started", "step.started", "run.finished"]
    assert recs[-1].data["status"] == "failed" and recs[-1].data["failed_step"] == "first"
    assert "refused to sign" in recs[-1].data["error"]
    assert cli("verify", "-L", led, env={}).code == 0


def test_what_a_named_key_means(tmp_path: Path) -> None:
    from ledger.errors import KeyProblem
    from ledger.keys.keyspec import parse_key_spec

    key = SigningKey.generate("op@example.com")
    key.save(tmp_path / "op")
    line = key.public_key.openssh()
    assert parse_key_spec(str(tmp_path / "op")).path == tmp_path / "op"  # a private key file
    for named in (str(tmp_path / "op.pub"), f"key::{line}", line, key.public_key.fingerprint):
        spec = parse_key_spec(named)
        assert spec.via_agent, named
        assert spec.fingerprint == key.public_key.fingerprint or spec.public == key.public_key
    (tmp_path / "op").unlink()  # the private file gone, PATH.pub beside it: the agent
    assert parse_key_spec(str(tmp_path / "op")).public == key.public_key
    assert parse_key_spec(f"key::{line}").text == f"key::{line}"  # as ledger.signingKey keeps it
    for bad in ("SHA256:tooshort", "key::ssh-ed25519 AAAA", "key::not a key"):
        with pytest.raises(KeyProblem):
            parse_key_spec(bad)
