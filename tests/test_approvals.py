"""Approvals: signed by the approver's own key, from another process, counted by the waiting
run only when the signer is trusted and among the approvers.

The run's side (run.started, the approval step's step.started request) is appended here
through the store as the engine does it; the approvals come from `python -m ledger approve`
subprocesses with their own keys, and the waiting side is the real wait_for_approval.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.cli import run_cli
from support.gitcmd import git
from support.waiting import wait_for

from ledger.errors import ApprovalRefused, UntrustedKey
from ledger.format import records
from ledger.keys import SigningKey
from ledger.run import approvals
from ledger.runbook import ApprovalSpec
from ledger.store import Ledger
from ledger.verify import local

WAIT_S = 60.0


@dataclass
class Env:
    tmp: Path
    path: Path
    ledger: Ledger
    operator: SigningKey
    operator_file: Path
    keys: dict[str, Path]

    def key(self, name: str) -> SigningKey:
        return SigningKey.load(self.keys[name])


def _keyfile(tmp: Path, name: str, comment: str = "") -> Path:
    path = tmp / "keys" / name
    path.parent.mkdir(exist_ok=True)
    SigningKey.generate(comment=comment).save(path)
    return path


@pytest.fixture()
def env(tmp_path: Path) -> Env:
    return make_env(tmp_path)


def make_env(tmp_path: Path) -> Env:
    """A pinned ledger whose operator trusts alice (two keys), bob and carol."""
    operator_file = _keyfile(tmp_path, "operator")
    operator = SigningKey.load(operator_file)
    path = tmp_path / "ledger"
    led = Ledger.init(path, name="approvals", key=operator, principal="ops@example.com")
    local.pin_after_init(path, led.genesis_id)  # as 'ledger init' does on its machine
    keys: dict[str, Path] = {"operator": operator_file}
    for who in ("alice", "bob", "alice2", "mallory", "carol"):
        keys[who] = _keyfile(tmp_path, who)
    # alice has two keys; carol is trusted but not an approver; mallory is never trusted.
    for who, principal in (
        ("alice", "alice@example.com"),
        ("bob", "bob@example.com"),
        ("alice2", "alice@example.com"),
        ("carol", "carol@example.com"),
    ):
        pub = SigningKey.load(keys[who]).public_key
        led.append(
            records.KIND_KEY_ADDED,
            {
                "principal": principal,
                "key": pub.openssh(),
                "fingerprint": pub.fingerprint,
                "comment": "",
            },
            key=operator,
        )
    return Env(tmp_path, path, Ledger.open(path), operator, operator_file, keys)


SPEC = ApprovalSpec(
    approvers=["alice@example.com", "bob@example.com"], min_approvals=1, message="Restart api?"
)


STEP = {"phase": "main", "handler": False, "attempt": 1}
DONE = {**STEP, "status": "ok", "exit_code": 0, "duration_ms": 1, "error": None, "outputs": {}}
RUNBOOK = b"name: t\n"


def _run_started() -> dict[str, object]:
    """A complete run.started (the chain must verify for approvals to count)."""
    return {
        "runbook": {
            "name": "t",
            "path": "/t.yaml",
            "sha256": records.sha256_hex(RUNBOOK),
            "description": None,
        },
        "params": {},
        "param_sources": {},
        "trigger": {
            "source": "manual",
            "incident": None,
            "text": None,
            "ci": None,
            "ci_run": None,
            "ci_url": None,
        },
        "operator": {"principal": "ops@example.com", "user": None},
        "tool_version": "test",
        "env": {},
        "lock": None,
        "resumes": None,
        "steps": ["check", "approve"],
        "on_failure": [],
    }


def start_waiting(env: Env, spec: ApprovalSpec = SPEC, step: str = "approve") -> tuple[str, int]:
    """Append what the engine appends before waiting: run.started and the request."""
    run_id = records.new_run_id()
    env.ledger.append(
        records.KIND_RUN_STARTED,
        _run_started(),
        key=env.operator,
        run=run_id,
        attachments={"runbook": RUNBOOK},
    )
    command = {"command": "true", "shell": "sh", "cwd": None, "timeout_ms": None, "env": []}
    env.ledger.append(
        records.KIND_STEP_STARTED,
        {"step": "check", "index": 0, **STEP, "type": "command", **command, "max_attempts": 1},
        key=env.operator,
        run=run_id,
    )
    env.ledger.append(
        records.KIND_STEP_FINISHED,
        {"step": "check", "index": 0, **DONE},
        key=env.operator,
        run=run_id,
    )
    req = env.ledger.append(
        records.KIND_STEP_STARTED,
        {
            "step": step,
            "index": 1,
            **STEP,
            "type": "approval",
            **approvals.request_data(spec, spec.message),
        },
        key=env.operator,
        run=run_id,
    )
    return run_id, req.seq


def approve(
    env: Env, who: str, run_id: str, step: str = "approve", *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "ledger",
            "approve",
            run_id,
            step,
            "--ledger",
            str(env.path),
            "--key",
            str(env.keys[who]),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class Waiter:
    """wait_for_approval in a thread, as the engine runs it."""

    def __init__(
        self,
        env: Env,
        run_id: str,
        spec: ApprovalSpec = SPEC,
        *,
        deadline: float | None = None,
        interactive: approvals.Interactive | None = None,
    ) -> None:
        self.stop = threading.Event()
        self.lines: list[str] = []
        self.result: approvals.ApprovalOutcome | None = None
        self.error: BaseException | None = None
        # A separate Ledger object, as the engine has its own.
        led = Ledger.open(env.path)

        def run() -> None:
            try:
                self.result = approvals.wait_for_approval(
                    led,
                    run_id,
                    "approve",
                    spec,
                    stop=self.stop,
                    deadline=deadline,
                    interactive=interactive,
                    operator_key=env.operator,
                    notify=self.lines.append,
                    poll_interval=0.05,
                )
            except BaseException as exc:  # noqa: BLE001  (re-raised by outcome())
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def outcome(self) -> approvals.ApprovalOutcome:
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive(), "wait_for_approval did not return"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    def wait_line(self, pred: Callable[[str], bool]) -> None:
        end = time.monotonic() + WAIT_S
        while time.monotonic() < end:
            if any(pred(x) for x in list(self.lines)):
                return
            self.thread.join(0.02)
        raise AssertionError(f"no such progress line in {self.lines}")


# --------------------------------------------------------------------------- happy path


def test_approval_from_second_process_with_second_key(env: Env) -> None:
    run_id, req_seq = start_waiting(env)
    waiter = Waiter(env, run_id)
    waiter.wait_line(lambda x: x.startswith("Waiting for 1 approval"))
    res = approve(env, "alice", run_id, "approve", "--comment", "dashboards green")
    assert res.returncode == 0, res.stderr
    assert "Approved step 'approve'" in res.stdout
    out = waiter.outcome()
    assert out.decision == "approved" and out.approved
    assert out.step_status == "ok"
    alice = env.key("alice").public_key.fingerprint
    assert [(v.principal, v.fingerprint) for v in out.approvers] == [("alice@example.com", alice)]
    assert out.comment == "alice@example.com: dashboards green"
    assert out.request_seq == req_seq

    # The record: signed by alice's own key, data fields as documented.
    vote = out.approvers[0]
    rec = env.ledger.record(vote.seq)
    assert rec.commit_id == vote.commit
    assert rec.kind == "approval" and rec.run == run_id
    assert rec.record["actor"] == {"principal": "alice@example.com", "key": alice}
    assert rec.data == {
        "step": "approve",
        "index": 1,
        "decision": "approved",
        "comment": "dashboards green",
        "principal": "alice@example.com",
        "fingerprint": alice,
        "request_seq": req_seq,
        "request_commit": env.ledger.record(req_seq).commit_id,
        "via": "command",
    }
    # Stock git agrees the commit is signed by alice's key.
    allowed = env.tmp / "allowed"
    assert run_cli("keys", "allowed-signers", "-o", allowed, "--ledger", env.path).code == 0
    check = git(
        "-c",
        f"gpg.ssh.allowedSignersFile={allowed}",
        "verify-commit",
        "--raw",
        vote.commit,
        cwd=env.path,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    assert alice in check.stderr and "alice@example.com" in check.stderr
    # finished_data is canonical-JSON-able for step.finished.
    records.canonical_json(out.finished_data())


def test_approval_already_in_ledger_before_waiting_counts(env: Env) -> None:
    run_id, _ = start_waiting(env)
    assert approve(env, "bob", run_id).returncode == 0
    out = Waiter(env, run_id).outcome()
    assert out.decision == "approved"
    assert [v.principal for v in out.approvers] == ["bob@example.com"]


def test_min_approvals_two_needs_two_distinct_principals(env: Env) -> None:
    spec = ApprovalSpec(approvers=["alice@example.com", "bob@example.com"], min_approvals=2)
    run_id, _ = start_waiting(env, spec)
    waiter = Waiter(env, run_id, spec)
    assert approve(env, "alice", run_id).returncode == 0
    waiter.wait_line(lambda x: x.startswith("Approved by alice@example.com") and "1 of 2" in x)
    # The same principal with the same key is refused by the command...
    again = approve(env, "alice", run_id)
    assert again.returncode == 13, again.stderr
    assert "already approved" in again.stderr
    # ...and with a second key of the same principal it is recorded but counts once.
    assert approve(env, "alice2", run_id).returncode == 13
    led = Ledger.open(env.path)
    req = approvals.pending_request(led, run_id, "approve")
    a2 = env.key("alice2")
    led.append(
        "approval",
        {
            "step": "approve",
            "index": 1,
            "decision": "approved",
            "comment": "",
            "principal": "alice@example.com",
            "fingerprint": a2.public_key.fingerprint,
            "request_seq": req.seq,
            "request_commit": req.commit,
            "via": "command",
        },
        key=a2,
        run=run_id,
    )
    waiter.wait_line(lambda x: "approved again" in x and "counted once" in x)
    assert waiter.thread.is_alive()
    assert approve(env, "bob", run_id).returncode == 0
    out = waiter.outcome()
    assert out.decision == "approved"
    assert [v.principal for v in out.approvers] == ["alice@example.com", "bob@example.com"]
    assert out.required == 2


def test_reject_aborts(env: Env) -> None:
    spec = ApprovalSpec(approvers=["alice@example.com", "bob@example.com"], min_approvals=2)
    run_id, _ = start_waiting(env, spec)
    waiter = Waiter(env, run_id, spec)
    assert approve(env, "alice", run_id).returncode == 0
    res = approve(env, "bob", run_id, "approve", "--reject", "--comment", "not now")
    assert res.returncode == 0, res.stderr
    assert "Rejected step" in res.stdout
    out = waiter.outcome()
    assert out.decision == "rejected" and out.step_status == "rejected"
    assert out.rejected_by is not None and out.rejected_by.principal == "bob@example.com"
    assert "bob@example.com: not now" in out.comment
    rec = env.ledger.record(out.rejected_by.seq)
    assert rec.data["decision"] == "rejected"


def test_timeout(env: Env) -> None:
    run_id, _ = start_waiting(env)
    start = time.monotonic()
    out = Waiter(env, run_id, deadline=time.monotonic() + 0.3).outcome()
    assert out.decision == "timeout" and out.step_status == "timeout"
    assert out.approvers == []
    assert time.monotonic() - start >= 0.3


def test_spec_timeout_is_the_default_deadline(env: Env) -> None:
    spec = ApprovalSpec(approvers=["alice@example.com"], timeout_s=0.2)
    run_id, _ = start_waiting(env, spec)
    assert Waiter(env, run_id, spec).outcome().decision == "timeout"


def test_stop_interrupts(env: Env) -> None:
    run_id, _ = start_waiting(env)
    waiter = Waiter(env, run_id)
    waiter.wait_line(lambda x: x.startswith("Waiting"))
    waiter.stop.set()
    assert waiter.outcome().decision == "interrupted"


# --------------------------------------------------------------------------- refusals


def test_untrusted_key_is_refused_and_its_record_ignored(env: Env) -> None:
    run_id, req_seq = start_waiting(env)
    res = approve(env, "mallory", run_id)
    assert res.returncode == 4, res.stderr
    assert "not trusted" in res.stderr and "ledger keys add" in res.stderr
    # A record naming bob but signed by carol (trusted, not an approver) must not count.
    waiter = Waiter(env, run_id, deadline=time.monotonic() + WAIT_S)
    led = Ledger.open(env.path)
    carol = env.key("carol")
    forged = led.append(
        "approval",
        {
            "step": "approve",
            "index": 1,
            "decision": "approved",
            "comment": "",
            "principal": "bob@example.com",
            "fingerprint": carol.public_key.fingerprint,
            "request_seq": req_seq,
            "request_commit": led.record(req_seq).commit_id,
            "via": "command",
        },
        key=carol,
        principal="bob@example.com",
        run=run_id,
    )
    waiter.wait_line(lambda x: f"seq {forged.seq}" in x and "trusts" in x)
    assert waiter.thread.is_alive()
    assert approve(env, "alice", run_id).returncode == 0
    out = waiter.outcome()
    assert out.decision == "approved"
    assert [v.principal for v in out.approvers] == ["alice@example.com"]
    assert [i.seq for i in out.ignored] == [forged.seq]


def test_revoked_key_refused_and_trust_judged_at_the_records_seq(env: Env) -> None:
    run_id, _ = start_waiting(env)
    bob = env.key("bob")
    fp = bob.public_key.fingerprint
    res = run_cli("keys", "revoke", fp, "--ledger", env.path, "--key", env.operator_file)
    assert res.code == 0, res.output
    refused = approve(env, "bob", run_id)
    assert refused.returncode == 4 and "not trusted" in refused.stderr
    led = Ledger.open(env.path)
    signer = next(s for s in led.signers() if s.fingerprint == fp)
    assert signer.revoked_seq is not None
    signers = led.signers()
    assert approvals._trusted_at(signers, fp, signer.added_seq) is None
    assert approvals._trusted_at(signers, fp, signer.added_seq + 1) == signer
    assert approvals._trusted_at(signers, fp, signer.revoked_seq) is None
    assert approvals._trusted_at(signers, fp, signer.revoked_seq + 5) is None
    assert [r.kind for r in led.run_records(run_id)].count("approval") == 0


def test_principal_not_in_approvers_refused_and_ignored(env: Env) -> None:
    run_id, req_seq = start_waiting(env)
    res = approve(env, "carol", run_id)
    assert res.returncode == 13, res.stderr
    assert "carol@example.com" in res.stderr and "may not approve" in res.stderr
    assert "alice@example.com, bob@example.com" in res.stderr
    # Written anyway (not through the command): the waiting run ignores it.
    carol = env.key("carol")
    led = Ledger.open(env.path)
    rec = led.append(
        "approval",
        {
            "step": "approve",
            "index": 1,
            "decision": "rejected",
            "comment": "",
            "principal": "carol@example.com",
            "fingerprint": carol.public_key.fingerprint,
            "request_seq": req_seq,
            "request_commit": led.record(req_seq).commit_id,
            "via": "command",
        },
        key=carol,
        run=run_id,
    )
    out = Waiter(env, run_id, deadline=time.monotonic() + 0.5).outcome()
    assert out.decision == "timeout"
    assert [(i.seq, i.principal) for i in out.ignored] == [(rec.seq, "carol@example.com")]
    assert "not among the approvers" in out.ignored[0].reason


def test_approval_for_another_request_does_not_count(env: Env) -> None:
    run_id, req_seq = start_waiting(env)
    alice = env.key("alice")
    led = Ledger.open(env.path)
    led.append(
        "approval",
        {
            "step": "approve",
            "index": 1,
            "decision": "approved",
            "comment": "",
            "principal": "alice@example.com",
            "fingerprint": alice.public_key.fingerprint,
            "request_seq": req_seq - 1,
            "request_commit": led.record(req_seq).commit_id,
            "via": "command",
        },
        key=alice,
        run=run_id,
    )
    assert Waiter(env, run_id, deadline=time.monotonic() + 0.3).outcome().decision == "timeout"


def test_approve_step_not_waiting_refused(env: Env) -> None:
    run_id, _ = start_waiting(env)
    unknown_run = records.new_run_id()
    res = approve(env, "alice", unknown_run)
    # an unknown run is unknown input (exit 3, as for 'report' and 'resume'), not a refusal
    assert res.returncode == 3 and f"has no run {unknown_run}" in res.stderr
    res = approve(env, "alice", run_id, "deploy")
    assert res.returncode == 13
    assert "not waiting at step 'deploy'" in res.stderr and "at step 'approve'" in res.stderr
    res = approve(env, "alice", run_id, "check")
    assert res.returncode == 13 and "not an approval step" in res.stderr
    res = approve(env, "alice", "not-a-run-id")
    assert res.returncode == 3 and "is not a run id" in res.stderr
    # Once decided, the step takes no more approvals.
    env.ledger.append(
        records.KIND_STEP_FINISHED,
        {"step": "approve", "index": 1, **DONE},
        key=env.operator,
        run=run_id,
    )
    res = approve(env, "alice", run_id)
    assert res.returncode == 13 and "no longer waiting" in res.stderr
    env.ledger.append(
        records.KIND_RUN_FINISHED,
        {
            "status": "succeeded",
            "failed_step": None,
            "error": None,
            "duration_ms": 1,
            "continued_after_failure": [],
            "handlers_run": [],
            "handlers_failed": [],
            "signal": None,
            "resumes": None,
        },
        key=env.operator,
        run=run_id,
    )
    res = approve(env, "alice", run_id)
    assert res.returncode == 13 and "already finished" in res.stderr
    # Nothing was appended by any refused attempt.
    assert [r.kind for r in env.ledger.run_records(run_id)].count("approval") == 0


def test_approvals_lists_waiting_runs(env: Env) -> None:
    run_id, req_seq = start_waiting(env)
    res = run_cli("approvals", "--ledger", env.path)
    assert res.code == 0, res.output
    assert run_id in res.out and "approve" in res.out and "alice@example.com" in res.out
    res = run_cli("approvals", "--ledger", env.path, "--json")
    import json

    listed = json.loads(res.out)
    assert listed[0]["run"] == run_id and listed[0]["request_seq"] == req_seq


# --------------------------------------------------------------------------- interactive


def test_interactive_operator_approves_with_own_key(env: Env) -> None:
    spec = ApprovalSpec(approvers=["ops@example.com"], message="Go?")
    run_id, _ = start_waiting(env, spec)
    asked: list[str] = []

    def ask(question: str) -> tuple[bool, str]:
        asked.append(question)
        return True, "looked fine"

    out = Waiter(env, run_id, spec, interactive=ask).outcome()
    assert out.decision == "approved"
    assert asked and "Go?" in asked[0] and "ops@example.com" in asked[0]
    rec = env.ledger.record(out.approvers[0].seq)
    assert rec.data["via"] == "terminal" and rec.data["comment"] == "looked fine"
    assert rec.record["actor"]["key"] == env.operator.public_key.fingerprint


def test_interactive_not_asked_when_operator_not_an_approver(env: Env) -> None:
    run_id, _ = start_waiting(env)
    asked: list[str] = []

    def ask(question: str) -> tuple[bool, str]:
        asked.append(question)
        return True, ""

    out = Waiter(env, run_id, interactive=ask, deadline=time.monotonic() + 0.3).outcome()
    assert out.decision == "timeout" and asked == []


def test_interactive_prompt_cancelled_when_approved_elsewhere(env: Env) -> None:
    spec = ApprovalSpec(approvers=["ops@example.com", "alice@example.com"])
    run_id, _ = start_waiting(env, spec)
    cancelled = threading.Event()

    class Prompt:
        def __call__(self, question: str) -> tuple[bool, str]:
            cancelled.wait(WAIT_S)
            raise EOFError("cancelled")

        def cancel(self) -> None:
            cancelled.set()

    waiter = Waiter(env, run_id, spec, interactive=Prompt())
    waiter.wait_line(lambda x: x.startswith("Waiting"))
    assert approve(env, "alice", run_id).returncode == 0
    assert waiter.outcome().decision == "approved"
    assert cancelled.is_set()


def test_library_refuses_untrusted_key(env: Env) -> None:
    run_id, _ = start_waiting(env)
    with pytest.raises(UntrustedKey):
        approvals.record_approval(env.ledger, run_id, "approve", key=env.key("mallory"))
    with pytest.raises(ApprovalRefused):
        approvals.record_approval(
            env.ledger, run_id, "approve", key=env.key("alice"), comment="x" * 5000
        )


# --------------------------------------------------------------------------- terminal prompt


def test_terminal_prompt_reads_answer_and_cancels() -> None:
    from ledger.cli.terminal import TerminalPrompt

    r, w = os.pipe()
    with os.fdopen(r, "r") as stream, os.fdopen(w, "w") as writer:
        prompt = TerminalPrompt(stream, poll=0.02)
        writer.write("maybe\nyes checked the graphs\n")
        writer.flush()
        assert prompt("Approve?") == (True, "checked the graphs")
        writer.write("n\n")
        writer.flush()
        assert prompt("Approve?") == (False, "")
        prompt.cancel()
        with pytest.raises(EOFError):
            prompt("Approve?")


def test_operator_approves_at_the_terminal_of_a_real_run(env: Env) -> None:
    book = env.tmp / "book.yaml"
    book.write_text(
        "name: gated\n"
        "steps:\n"
        "  - name: before\n"
        "    run: echo before\n"
        "  - name: approve\n"
        "    approval: {approvers: [ops@example.com], message: 'Go on?'}\n"
        "  - name: after\n"
        "    run: echo after\n"
    )
    work = env.tmp / "work"  # not env.tmp, which holds a directory named "ledger"
    work.mkdir()
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ledger",
            "run",
            str(book),
            "--ledger",
            str(env.path),
            "--key",
            str(env.operator_file),
            "--no-push",
        ],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=work,
    )
    os.close(slave)
    try:
        wait_for(
            lambda: (
                bool(approvals.pending_requests(Ledger.open(env.path))) or proc.poll() is not None
            ),
            "the run to ask for approval",
            files=[env.path / "refs" / "heads"],
            pids=[proc.pid],
            timeout=WAIT_S,
        )
        assert proc.poll() is None, proc.communicate()
        os.write(master, b"y fine by me\n")
        out, _ = proc.communicate(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert proc.returncode == 0, out
    assert "Go on?" in out
    led = Ledger.open(env.path)
    run_id = led.run_ids()[-1]
    rec = next(r for r in led.run_records(run_id) if r.kind == "approval")
    assert rec.data["via"] == "terminal" and rec.data["comment"] == "fine by me"
    assert rec.record["actor"] == {
        "principal": "ops@example.com",
        "key": env.operator.public_key.fingerprint,
    }
    kinds = [(r.kind, r.data.get("step")) for r in led.run_records(run_id)]
    assert ("step.finished", "after") in kinds


# --------------------------------------------------------------------------- forged trust


def test_key_added_forged_by_an_untrusted_key_gives_no_approval(env: Env) -> None:
    from support.tamper import Built, forge_append

    from ledger.errors import VerificationFailed

    run_id, _ = start_waiting(env)
    mallory = env.key("mallory")
    pub = mallory.public_key
    forge_append(
        Built(env.path, mallory, mallory, []),
        mallory,
        principal="alice@example.com",
        kind="key.added",
        data={
            "principal": "alice@example.com",
            "key": pub.openssh(),
            "fingerprint": pub.fingerprint,
            "comment": "",
        },
    )
    waiter = Waiter(env, run_id, deadline=time.monotonic() + WAIT_S)
    res = approve(env, "mallory", run_id)
    assert res.returncode == 7, res.stderr
    assert "untrusted-key" in res.stderr
    with pytest.raises(VerificationFailed, match="untrusted-key"):
        waiter.outcome()
    led = Ledger.open(env.path)
    led.allow_unverified = True  # (reads refuse a chain that does not verify)
    assert [r.kind for r in led.run_records(run_id)].count("approval") == 0
