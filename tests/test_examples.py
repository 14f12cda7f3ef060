"""The example runbooks in runbooks/: each one validates, and each one really runs end to
end with `python -m ledger run` in a scratch directory, with its records checked.

The approval example is approved (or rejected) from a second process with a second key.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.cli import REPO_ROOT, run_cli
from support.gitcmd import git
from support.ledgers import wait_for_request

from ledger.format import records
from ledger.keys import SigningKey
from ledger.runbook import load_runbook
from ledger.store import Ledger, StoredRecord
from ledger.verify import local

RUNBOOKS = REPO_ROOT / "runbooks"
EXAMPLES = sorted(RUNBOOKS.glob("*.yaml"))
DEMO_SERVICE = RUNBOOKS / "demo-service" / "demo-service.sh"
RUN_ID_RE = re.compile(r"Run (\d{8}T\d{6}Z-[0-9a-f]{8})")
WAIT_S = 60.0


# --------------------------------------------------------------------------- validation


def test_there_are_enough_realistic_examples() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {"hello", "disk-cleanup", "restart-service", "rotate-credential", "deploy"} <= names
    books = [load_runbook(p) for p in EXAMPLES]
    assert any(s.is_approval for b in books for s in b.steps), "an example with an approval"
    assert any(b.on_failure for b in books), "an example with a failure handler"
    assert any(p.secret for b in books for p in b.parameters.values()), "an example secret"
    assert os.access(DEMO_SERVICE, os.X_OK)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_validates(path: Path) -> None:
    book = load_runbook(path)
    assert book.name == path.stem
    assert book.description
    for step in book.all_steps:
        assert step.name


def test_validate_command_accepts_every_example() -> None:
    res = run_cli("validate", *EXAMPLES)
    assert res.code == 0, res.output
    assert res.out.count(": ok (") == len(EXAMPLES)


# --------------------------------------------------------------------------- running


@dataclass
class Box:
    """A scratch ledger with an operator key (and an approver key for approvals)."""

    tmp: Path
    ledger_path: Path
    key: Path
    approver_key: Path

    def ledger(self) -> Ledger:
        return Ledger.open(self.ledger_path)

    def run(
        self,
        runbook: str,
        *params: str,
        env: dict[str, str] | None = None,
        extra: tuple[str, ...] = (),
    ) -> tuple[int, str, str]:
        res = run_cli(
            "run",
            RUNBOOKS / runbook,
            *[a for p in params for a in ("-p", p)],
            "--ledger",
            self.ledger_path,
            "--key",
            self.key,
            "--no-push",
            *extra,
            cwd=self.tmp,
            env=env,
        )
        m = RUN_ID_RE.search(res.out)
        assert m, res.output
        return res.code, m.group(1), res.output


@pytest.fixture()
def box(tmp_path: Path) -> Box:
    key = tmp_path / "operator"
    SigningKey.generate(comment="ops@example.com").save(key)
    operator = SigningKey.load(key)
    path = tmp_path / "audit.git"  # not "ledger": the runs' cwd is tmp_path
    led = Ledger.init(path, name="examples", key=operator, principal="ops@example.com")
    local.pin_after_init(path, led.genesis_id)  # as 'ledger init' does
    approver = tmp_path / "security"
    SigningKey.generate().save(approver)
    pub = SigningKey.load(approver).public_key
    led.append(
        records.KIND_KEY_ADDED,
        {
            "principal": "security@example.com",
            "key": pub.openssh(),
            "fingerprint": pub.fingerprint,
            "comment": "approver",
        },
        key=operator,
    )
    return Box(tmp_path, path, key, approver)


def steps_of(led: Ledger, run_id: str) -> dict[str, list[StoredRecord]]:
    """step name -> its step.finished records (one per attempt), in order."""
    out: dict[str, list[StoredRecord]] = {}
    for rec in led.run_records(run_id):
        if rec.kind == records.KIND_STEP_FINISHED:
            out.setdefault(rec.data["step"], []).append(rec)
    return out


def status(led: Ledger, run_id: str) -> tuple[str, dict[str, str]]:
    recs = led.run_records(run_id)
    finished = [r for r in recs if r.kind == records.KIND_RUN_FINISHED]
    assert len(finished) == 1, [r.kind for r in recs]
    per_step = {
        name: attempts[-1].data["status"] for name, attempts in steps_of(led, run_id).items()
    }
    return finished[0].data["status"], per_step


def stdout_of(led: Ledger, run_id: str, step: str) -> str:
    rec = steps_of(led, run_id)[step][-1]
    return rec.attachment("stdout").decode() if "stdout" in rec.files else ""


def assert_secret_absent(box: Box, secret: str) -> None:
    """No git object of the ledger holds the secret (cat-file decompresses every object)."""
    dump = subprocess.run(
        ["git", "cat-file", "--batch-all-objects", "--batch"],
        cwd=box.ledger_path,
        capture_output=True,
        check=True,
    ).stdout
    assert dump.count(b"ledger") > 0  # the dump is real
    assert secret.encode() not in dump


def assert_verifies(box: Box) -> None:
    res = run_cli("verify", "--ledger", box.ledger_path)
    assert res.code == 0, res.output
    allowed = box.tmp / "allowed"
    assert run_cli("keys", "allowed-signers", "-o", allowed, "--ledger", box.ledger_path).code == 0
    head = git("rev-parse", "refs/heads/main", cwd=box.ledger_path).stdout.strip()
    check = git(
        "-c",
        f"gpg.ssh.allowedSignersFile={allowed}",
        "verify-commit",
        head,
        cwd=box.ledger_path,
        check=False,
    )
    assert check.returncode == 0, check.stderr


def test_hello(box: Box) -> None:
    token = "tok-" + secrets.token_hex(8)
    start = time.monotonic()
    code, run_id, out = box.run("hello.yaml", "name=Ada", env={"HELLO_TOKEN": token})
    elapsed = time.monotonic() - start
    assert code == 0, out
    assert elapsed < 30
    led = box.ledger()
    outcome, steps = status(led, run_id)
    assert outcome == "succeeded"
    assert steps == {"greet": "ok", "facts": "ok", "use-token": "ok", "summary": "ok"}
    # Outputs flowed into the summary (as single shell words).
    summary = stdout_of(led, run_id, "summary")
    assert "Hello, Ada!" in summary and "kernel: Linux" in summary and run_id in summary
    fingerprint = steps_of(led, run_id)["use-token"][-1].data["outputs"]["token_fingerprint"]
    assert re.fullmatch(r"[0-9a-f]{12}", fingerprint) and fingerprint in summary
    # The secret: redacted on the terminal and in the records, absent from every object.
    assert "[REDACTED:token]" in stdout_of(led, run_id, "use-token")
    assert token not in out
    started = next(r for r in led.run_records(run_id) if r.kind == records.KIND_RUN_STARTED)
    assert started.data["params"]["token"] == "[REDACTED:token]"
    assert_secret_absent(box, token)
    assert_verifies(box)


def _aged(path: Path, days: int) -> None:
    when = time.time() - days * 86400
    os.utime(path, (when, when))


def test_disk_cleanup(box: Box) -> None:
    scratch = box.tmp / "scratch"
    scratch.mkdir()
    (scratch / "old-dir").mkdir()
    (scratch / "old-dir" / "inner.bin").write_bytes(b"x" * 4096)
    (scratch / "old.log").write_text("old\n")
    (scratch / "fresh.log").write_text("fresh\n")
    _aged(scratch / "old-dir", 30)
    _aged(scratch / "old.log", 30)
    roots = f"allowed_roots={box.tmp}"

    # Dry run: lists, deletes nothing, the delete step is recorded as skipped.
    code, run_id, out = box.run("disk-cleanup.yaml", f"path={scratch}", roots, "dry_run=true")
    assert code == 0, out
    led = box.ledger()
    assert status(led, run_id)[1]["delete-old"] == "skipped"
    assert "count=2" in stdout_of(led, run_id, "find-old")
    assert sorted(p.name for p in scratch.iterdir()) == ["fresh.log", "old-dir", "old.log"]

    code, run_id, out = box.run("disk-cleanup.yaml", f"path={scratch}", roots)
    assert code == 0, out
    outcome, steps = status(box.ledger(), run_id)
    assert outcome == "succeeded"
    assert steps == {
        "check-path": "ok",
        "disk-before": "ok",
        "find-old": "ok",
        "delete-old": "ok",
        "disk-after": "ok",
    }
    assert [p.name for p in scratch.iterdir()] == ["fresh.log"]

    # A directory outside the allowed roots is refused before anything is touched.
    code, run_id, out = box.run("disk-cleanup.yaml", f"path={box.tmp}", roots)
    assert code == 10, out
    outcome, steps = status(box.ledger(), run_id)
    assert outcome == "failed" and steps == {"check-path": "failed"}
    assert "refusing to clean" in out
    assert (scratch / "fresh.log").exists()


def test_restart_service(box: Box) -> None:
    state = box.tmp / "svc"
    params = (f"service={DEMO_SERVICE}", f"state_dir={state}")
    try:
        code, first, out = box.run("restart-service.yaml", *params)
        assert code == 0, out
        led = box.ledger()
        outcome, steps = status(led, first)
        assert outcome == "succeeded"
        assert steps["before"] == "ok" and steps["stop"] == "skipped"
        pid1 = int((state / "demo.pid").read_text())
        assert f"none -> {pid1}" in stdout_of(led, first, "verify").replace("'", "")

        code, second, out = box.run("restart-service.yaml", *params)
        assert code == 0, out
        outcome, steps = status(led, second)
        assert outcome == "succeeded" and steps["stop"] == "ok"
        pid2 = int((state / "demo.pid").read_text())
        assert pid2 != pid1
        with pytest.raises(ProcessLookupError):
            os.kill(pid1, 0)
        health = (state / "health").read_text().split()
        assert health[:2] == ["ok", str(pid2)]
        # Each poll of the health file is an attempt on the record.
        attempts = [r.data["attempt"] for r in steps_of(led, second)["wait-healthy"]]
        assert attempts == list(range(1, len(attempts) + 1))
        assert steps_of(led, second)["wait-healthy"][-1].data["outputs"]["pid"] == str(pid2)
    finally:
        subprocess.run(
            [str(DEMO_SERVICE), "stop", str(state)], capture_output=True, check=False, timeout=30
        )


def _start_rotation(box: Box, cred: Path, token: str) -> subprocess.Popen[str]:
    env = dict(os.environ, NEW_API_TOKEN=token)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ledger",
            "run",
            str(RUNBOOKS / "rotate-credential.yaml"),
            "-p",
            f"cred_file={cred}",
            "--incident",
            "OPS-7",
            "--ledger",
            str(box.ledger_path),
            "--key",
            str(box.key),
            "--no-push",
        ],
        cwd=box.tmp,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_rotate_credential_approved_from_second_process(box: Box) -> None:
    cred = box.tmp / "creds" / "api.token"
    cred.parent.mkdir()
    cred.write_text("old-credential-value\n")
    cred.chmod(0o644)
    token = "new-" + secrets.token_hex(12)
    proc = _start_rotation(box, cred, token)
    try:
        request = wait_for_request(box.ledger_path, proc=proc, timeout=WAIT_S)
        assert request.step == "approve-rotation"
        assert "security@example.com" in request.approvers
        assert request.message and "for incident OPS-7" in request.message
        assert cred.read_text() == "old-credential-value\n"  # nothing before the approval
        res = run_cli(
            "approve",
            request.run_id,
            "approve-rotation",
            "--key",
            box.approver_key,
            "--comment",
            "OPS-7 reviewed",
            "--ledger",
            box.ledger_path,
        )
        assert res.code == 0, res.output
        out, _ = proc.communicate(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    run_id = request.run_id
    led = box.ledger()
    outcome, steps = status(led, run_id)
    assert outcome == "succeeded"
    assert steps == {
        "inspect": "ok",
        "refuse-same-value": "ok",
        "approve-rotation": "ok",
        "backup": "ok",
        "write-new": "ok",
        "verify": "ok",
    }
    assert cred.read_text() == token + "\n"
    assert cred.stat().st_mode & 0o777 == 0o600
    backup = next(cred.parent.glob("api.token.bak-*"))
    assert backup.read_text() == "old-credential-value\n"
    assert backup.stat().st_mode & 0o777 == 0o600
    approval = next(r for r in led.run_records(run_id) if r.kind == records.KIND_APPROVAL)
    security = SigningKey.load(box.approver_key).public_key.fingerprint
    assert approval.record["actor"] == {"principal": "security@example.com", "key": security}
    assert approval.data["comment"] == "OPS-7 reviewed"
    finished = steps_of(led, run_id)["approve-rotation"][-1].data["approval"]
    assert finished["decision"] == "approved"
    assert [a["principal"] for a in finished["approvers"]] == ["security@example.com"]
    assert_secret_absent(box, token)
    assert_verifies(box)


def test_rotate_credential_rejected(box: Box) -> None:
    cred = box.tmp / "api.token"
    cred.write_text("old-credential-value\n")
    proc = _start_rotation(box, cred, "new-" + secrets.token_hex(12))
    try:
        request = wait_for_request(box.ledger_path, proc=proc, timeout=WAIT_S)
        res = run_cli(
            "approve",
            request.run_id,
            "approve-rotation",
            "--reject",
            "--key",
            box.approver_key,
            "--ledger",
            box.ledger_path,
        )
        assert res.code == 0, res.output
        out, _ = proc.communicate(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 11, out
    outcome, steps = status(box.ledger(), request.run_id)
    assert outcome == "rejected"
    assert steps["approve-rotation"] == "rejected"
    assert "backup" not in steps or steps["backup"] == "skipped"
    assert cred.read_text() == "old-credential-value\n"
    assert list(box.tmp.glob("api.token.*")) == []


def test_rotate_credential_interrupted_while_waiting(box: Box) -> None:
    cred = box.tmp / "api.token"
    cred.write_text("old-credential-value\n")
    proc = _start_rotation(box, cred, "new-" + secrets.token_hex(12))
    try:
        request = wait_for_request(box.ledger_path, proc=proc, timeout=WAIT_S)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out
    outcome, steps = status(box.ledger(), request.run_id)
    assert outcome == "aborted" and steps["approve-rotation"] == "interrupted"
    assert cred.read_text() == "old-credential-value\n"


def test_deploy_and_rollback(box: Box) -> None:
    app = box.tmp / "app"
    code, run_id, out = box.run("deploy.yaml", f"app_dir={app}", "version=1.0.0")
    assert code == 0, out
    outcome, steps = status(box.ledger(), run_id)
    assert outcome == "succeeded"
    assert steps == {"current-release": "ok", "build": "ok", "switch": "ok", "smoke-test": "ok"}
    assert os.readlink(app / "current") == "releases/1.0.0"

    code, run_id, out = box.run(
        "deploy.yaml", f"app_dir={app}", "version=1.1.0", "break_config=true"
    )
    assert code == 10, out
    led = box.ledger()
    outcome, steps = status(led, run_id)
    assert outcome == "failed"
    assert steps["smoke-test"] == "failed"
    assert [r.data["attempt"] for r in steps_of(led, run_id)["smoke-test"]] == [1, 2, 3]
    assert steps["rollback"] == "ok" and steps["remove-first-release"] == "skipped"
    assert steps_of(led, run_id)["rollback"][-1].data.get("handler") is True
    assert "rolled back to 1.0.0 after the failure of smoke-test" in stdout_of(
        led, run_id, "rollback"
    )
    assert os.readlink(app / "current") == "releases/1.0.0"
    finished = next(r for r in led.run_records(run_id) if r.kind == records.KIND_RUN_FINISHED)
    assert finished.data["failed_step"] == "smoke-test"
