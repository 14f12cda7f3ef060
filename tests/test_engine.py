"""The runbook engine, driven as a library: real subprocesses, a real signed ledger.

Every test reads what the run wrote back from the ledger (the records are the product);
timing assertions use the records' own times, never sleeps.
"""

from __future__ import annotations

import os
import signal
import textwrap
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from support.cli import alive as _alive
from support.gitcmd import git
from support.ledgers import PRINCIPAL, finished, wait_for_request
from support.ledgers import EngineEnv as Env
from support.waiting import wait_for

from ledger.errors import (
    AbandonRefused,
    InputError,
    LockTimeout,
    ResumeRefused,
    RunbookError,
    RunFailed,
    RunInterrupted,
    RunRejected,
    UnknownRun,
)
from ledger.format import records
from ledger.keys import SigningKey
from ledger.run import (
    RESUMED_REASON,
    WHEN_REASON,
    EngineEvents,
    Runner,
    RunOutcome,
    RunRequest,
    StepEnd,
    StepStart,
    StopSignal,
    abandon_run,
    detect_ci,
    plan_run,
    prepare_resume,
    run_lock,
    runbook_lock,
    trigger_data,
)
from ledger.runbook import Runbook, resolve_parameters
from ledger.store import Ledger, StoredRecord


@pytest.fixture()
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def kinds(recs: list[StoredRecord]) -> list[str]:
    return [r.kind for r in recs]


def started(recs: list[StoredRecord], step: str) -> list[StoredRecord]:
    return [r for r in recs if r.kind == "step.started" and r.data["step"] == step]


def when(rec: StoredRecord) -> datetime:
    return records.parse_time(rec.time)


# --------------------------------------------------------------------------- records


def test_records_of_a_successful_run(env: Env) -> None:
    book = env.book(
        """
        name: hello
        description: say hello
        parameters:
          who: {type: string, default: world}
        capture_env: [DEPLOY_ENV, NOT_SET_HERE]
        env: {GREETING: hello}
        steps:
          - name: greet
            run: echo "$GREETING {{ params.who }}"; echo warn >&2
            cwd: "@W@"
            timeout: 10s
        """
    )
    environ = {**os.environ, "DEPLOY_ENV": "staging", "USER": "alice"}
    outcome = env.run(book, {"who": "ops"}, environ=environ)
    assert outcome.succeeded and outcome.status == "succeeded" and outcome.failed_step is None
    outcome.raise_for_status()
    recs = env.recs(outcome.run_id)
    assert kinds(recs) == ["run.started", "step.started", "step.finished", "run.finished"]
    assert [r.seq for r in recs] == [1, 2, 3, 4]
    rs = recs[0].data
    assert rs["runbook"] == {
        "name": "hello",
        "path": str((env.tmp / "rb.yaml").resolve()),
        "sha256": book.sha256,
        "description": "say hello",
    }
    assert recs[0].attachment("runbook") == (env.tmp / "rb.yaml").read_bytes()
    assert rs["params"] == {"who": "ops"}
    assert rs["param_sources"] == {"who": "given"}
    assert rs["env"] == {"DEPLOY_ENV": "staging"}
    assert rs["operator"] == {"principal": PRINCIPAL, "user": "alice"}
    assert rs["tool_version"].startswith("runbook-ledger ")
    assert rs["resumes"] is None and rs["steps"] == ["greet"]
    assert recs[0].record["actor"]["principal"] == PRINCIPAL
    assert recs[0].record["host"]

    st = recs[1].data
    assert st["step"] == "greet" and st["attempt"] == 1 and st["handler"] is False
    assert st["command"] == 'echo "$GREETING ops"; echo warn >&2'
    assert st["cwd"] == str(env.work)
    assert st["timeout_ms"] == 10000 and st["shell"] == "bash"
    assert "GREETING" in st["env"] and "PARAM_WHO" in st["env"]

    fin = recs[2].data
    assert fin["status"] == "ok" and fin["exit_code"] == 0 and fin["attempt"] == 1
    assert isinstance(fin["duration_ms"], int)
    assert recs[2].attachment("stdout") == b"hello ops\n"
    assert recs[2].attachment("stderr") == b"warn\n"
    assert fin["stdout"]["size"] == len(b"hello ops\n") and not fin["stdout"]["truncated"]
    assert fin["stdout"]["sha256"] == records.sha256_hex(b"hello ops\n")

    end = recs[3].data
    assert end["status"] == "succeeded" and end["failed_step"] is None
    assert isinstance(end["duration_ms"], int)


def test_step_started_is_durable_before_the_command_runs(env: Env) -> None:
    """Write-ahead: the command itself sees its own step.started at the ledger's head
    (read with stock git)."""
    gitdir = env.ledger.path
    book = env.book(
        f"""
        name: wal
        steps:
          - name: peek
            run: git --git-dir {gitdir} log -1 --format=%s refs/heads/main
        """
    )
    outcome = env.run(book)
    fin = finished(env.recs(outcome.run_id), "peek")[0]
    assert fin.attachment("stdout") == b"step.started: peek\n"


def test_params_are_exported_to_steps_but_env_values_are_not_recorded(env: Env) -> None:
    book = env.book(
        """
        name: envs
        parameters:
          service: {type: string, default: api}
        env: {MODE: "fast-{{ params.service }}"}
        steps:
          - name: show
            run: echo "$PARAM_SERVICE $MODE $STEPVAR $LEDGER_RUN_ID $LEDGER_STEP"
            env: {STEPVAR: private-value}
        """
    )
    outcome = env.run(book, environ={**os.environ, "LEDGER_KEY_PASSPHRASE": "pp-123456"})
    recs = env.recs(outcome.run_id)
    out = finished(recs, "show")[0].attachment("stdout").decode()
    assert out == f"api fast-api private-value {outcome.run_id} show\n"
    st = started(recs, "show")[0].data
    assert st["env"] == ["MODE", "PARAM_SERVICE", "STEPVAR"]
    assert "private-value" not in str(st)


def test_runner_private_variables_do_not_reach_steps(env: Env) -> None:
    book = env.book(
        """
        name: private
        steps:
          - name: show
            run: echo "[${LEDGER_KEY_PASSPHRASE:-unset}]"
        """
    )
    outcome = env.run(book, environ={**os.environ, "LEDGER_KEY_PASSPHRASE": "pp-123456"})
    out = finished(env.recs(outcome.run_id), "show")[0].attachment("stdout")
    assert out == b"[unset]\n"


# --------------------------------------------------------------------------- timeout


def test_timeout_kills_the_whole_process_group(env: Env) -> None:
    pidfile = env.work / "bg.pid"
    book = env.book(
        f"""
        name: slow
        steps:
          - name: hang
            run: sleep 60 & echo $! > {pidfile}; sleep 60
            timeout: 500ms
        """
    )
    t0 = time.monotonic()
    outcome = env.run(book, kill_grace_s=1.0)
    assert time.monotonic() - t0 < 20
    assert outcome.status == "failed" and outcome.failed_step == "hang"
    fin = finished(env.recs(outcome.run_id), "hang")[0].data
    assert fin["status"] == "timeout"
    assert fin["exit_code"] is None and fin["signal"] == signal.SIGTERM
    assert "timed out" in fin["error"]
    assert fin["duration_ms"] >= 500
    bg = int(pidfile.read_text())
    wait_for(lambda: not _alive(bg), "the background child of the timed-out step to die", pids=[bg])


# --------------------------------------------------------------------------- retries


def test_retries_with_backoff_are_separate_attempts_with_growing_delays(env: Env) -> None:
    book = env.book(
        """
        name: retry
        steps:
          - name: never
            run: echo try $LEDGER_ATTEMPT; exit 7
            retries: 3
            retry_delay: 200ms
            retry_backoff: 2
        """
    )
    outcome = env.run(book)
    assert outcome.status == "failed" and outcome.failed_step == "never"
    with pytest.raises(RunFailed) as info:
        outcome.raise_for_status()
    assert info.value.exit_code == 10
    recs = env.recs(outcome.run_id)
    starts, ends = started(recs, "never"), finished(recs, "never")
    assert [r.data["attempt"] for r in starts] == [1, 2, 3, 4]
    assert [r.data["attempt"] for r in ends] == [1, 2, 3, 4]
    assert [r.data["will_retry"] for r in ends] == [True, True, True, False]
    assert all(r.data["status"] == "failed" and r.data["exit_code"] == 7 for r in ends)
    assert [r.attachment("stdout") for r in ends] == [b"try %d\n" % i for i in (1, 2, 3, 4)]
    # Strict alternation: started(n), finished(n), started(n+1), ...
    seq = [r for r in recs if r.kind.startswith("step.")]
    assert [r.kind for r in seq] == ["step.started", "step.finished"] * 4
    gaps = [(when(starts[i + 1]) - when(ends[i])).total_seconds() for i in range(3)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4 and gaps[2] >= 0.8, gaps
    assert gaps[0] < gaps[1] < gaps[2], gaps


def test_retry_until_a_condition_holds(env: Env) -> None:
    counter = env.work / "count"
    book = env.book(
        f"""
        name: until
        steps:
          - name: poll
            run: n=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 )); echo $n > {counter}; echo $n
            outputs: {{n: stdout}}
            retries: 5
            retry_delay: 10ms
            until: "{{{{ step.outputs.n == '3' }}}}"
          - name: after
            run: echo got {{{{ steps.poll.outputs.n }}}}
        """
    )
    outcome = env.run(book)
    assert outcome.succeeded
    recs = env.recs(outcome.run_id)
    ends = finished(recs, "poll")
    assert [e.data["status"] for e in ends] == ["failed", "failed", "ok"]
    assert "until" in ends[0].data["error"]
    assert finished(recs, "after")[0].attachment("stdout") == b"got 3\n"


def test_a_step_that_succeeds_on_retry_lets_the_run_go_on(env: Env) -> None:
    flag = env.work / "flag"
    book = env.book(
        f"""
        name: flaky
        steps:
          - name: flaky
            run: test -f {flag} || {{ touch {flag}; exit 3; }}
            retries: 2
            retry_delay: 0
          - name: next
            run: "true"
        """
    )
    outcome = env.run(book)
    assert outcome.succeeded
    recs = env.recs(outcome.run_id)
    assert [r.data["status"] for r in finished(recs, "flaky")] == ["failed", "ok"]
    assert finished(recs, "next")[0].data["status"] == "ok"


# --------------------------------------------------------------------------- when / outputs


def test_when_false_skips_with_a_single_skipped_record(env: Env) -> None:
    book = env.book(
        """
        name: cond
        parameters:
          service: {type: string, default: web, choices: [api, web]}
        steps:
          - name: api-only
            run: echo api
            when: "{{ params.service == 'api' }}"
          - name: web-only
            run: echo web
            when: params.service == 'web'
          - name: after-skip
            run: echo "{{ steps['api-only'].status }}"
        """
    )
    outcome = env.run(book)
    assert outcome.succeeded
    recs = env.recs(outcome.run_id)
    assert started(recs, "api-only") == []
    (skip,) = finished(recs, "api-only")
    assert skip.data["status"] == "skipped" and skip.data["reason"] == WHEN_REASON
    assert skip.data["exit_code"] is None and "stdout" not in skip.files
    assert finished(recs, "web-only")[0].attachment("stdout") == b"web\n"
    assert finished(recs, "after-skip")[0].attachment("stdout") == b"skipped\n"


def test_outputs_flow_into_later_steps_shell_quoted(env: Env) -> None:
    book = env.book(
        """
        name: outputs
        steps:
          - name: produce
            run: |
              echo '{"release": {"version": "2.4.1"}, "n": 3}'
            outputs:
              doc: stdout
              version: {json: release.version}
              n: {json: n}
          - name: hostile
            run: echo 'v=1.0; touch pwned'
            outputs:
              v: {regex: 'v=(?P<value>.*)'}
          - name: consume
            run: >-
              echo {{ steps.produce.outputs.version }} {{ steps.produce.outputs.n }}
              {{ steps.hostile.outputs.v }}
            cwd: "@W@"
        """
    )
    outcome = env.run(book)
    assert outcome.succeeded
    recs = env.recs(outcome.run_id)
    prod = finished(recs, "produce")[0].data["outputs"]
    assert prod["version"] == "2.4.1" and prod["n"] == "3"
    assert prod["doc"].startswith('{"release"')
    assert finished(recs, "hostile")[0].data["outputs"] == {"v": "1.0; touch pwned"}
    out = finished(recs, "consume")[0].attachment("stdout")
    assert out == b"2.4.1 3 1.0; touch pwned\n"
    assert not (env.work / "pwned").exists()
    assert started(recs, "consume")[0].data["command"] == "echo 2.4.1 3 '1.0; touch pwned'"


def test_missing_output_fails_the_step_with_a_recorded_reason(env: Env) -> None:
    book = env.book(
        """
        name: noout
        steps:
          - name: produce
            run: echo nothing here
            outputs: {version: {regex: 'version (\\d+)'}}
        """
    )
    outcome = env.run(book)
    assert outcome.status == "failed"
    fin = finished(env.recs(outcome.run_id), "produce")[0].data
    assert fin["status"] == "failed" and fin["exit_code"] == 0
    assert "does not match" in fin["error"]


# --------------------------------------------------------------------------- failure handling


def test_on_failure_handlers_run_when_the_run_fails(env: Env) -> None:
    book = env.book(
        """
        name: deploy
        steps:
          - name: ok
            run: echo fine
          - name: deploy
            run: echo broken >&2; exit 5
          - name: never
            run: echo never
        on_failure:
          - name: rollback
            run: echo "rolling back {{ run.failed_step }}"
          - name: notify
            run: exit 1
          - name: last
            run: echo still runs
        """
    )
    outcome = env.run(book)
    assert outcome.status == "failed" and outcome.failed_step == "deploy"
    assert outcome.handlers_failed == ["notify"]
    recs = env.recs(outcome.run_id)
    assert finished(recs, "never") == [] and started(recs, "never") == []
    rb = finished(recs, "rollback")[0]
    assert rb.data["handler"] is True and rb.data["phase"] == "on_failure"
    assert started(recs, "rollback")[0].data["handler"] is True
    assert rb.attachment("stdout") == b"rolling back deploy\n"
    assert finished(recs, "last")[0].data["status"] == "ok"
    end = recs[-1]
    assert end.kind == "run.finished"
    assert end.data["status"] == "failed" and end.data["failed_step"] == "deploy"
    assert end.data["handlers_run"] == ["rollback", "notify", "last"]
    assert end.data["handlers_failed"] == ["notify"]
    assert end.data["error"] == "exited with status 5"
    assert end.seq > finished(recs, "last")[0].seq


def test_handlers_do_not_run_on_success(env: Env) -> None:
    book = env.book(
        """
        name: fine
        steps:
          - name: ok
            run: "true"
        on_failure:
          - name: rollback
            run: echo rollback
        """
    )
    outcome = env.run(book)
    assert outcome.succeeded
    assert finished(env.recs(outcome.run_id), "rollback") == []


def test_continue_on_error(env: Env) -> None:
    book = env.book(
        """
        name: tolerant
        steps:
          - name: optional
            run: exit 3
            continue_on_error: true
          - name: next
            run: echo "{{ steps.optional.exit_code }} {{ steps.optional.status }}"
        on_failure:
          - name: rollback
            run: echo rollback
        """
    )
    outcome = env.run(book)
    assert outcome.succeeded
    recs = env.recs(outcome.run_id)
    assert finished(recs, "optional")[0].data["status"] == "failed"
    assert finished(recs, "next")[0].attachment("stdout") == b"3 failed\n"
    assert finished(recs, "rollback") == []
    assert recs[-1].data["continued_after_failure"] == ["optional"]


def test_a_step_that_cannot_start_fails_with_the_reason(env: Env) -> None:
    book = env.book(
        """
        name: nocwd
        steps:
          - name: lost
            run: "true"
            cwd: /nonexistent/dir/for/sure
        """
    )
    outcome = env.run(book)
    fin = finished(env.recs(outcome.run_id), "lost")[0].data
    assert fin["status"] == "failed" and "does not exist" in fin["error"]


def test_output_is_capped_with_size_and_digest_of_the_whole_stream(env: Env) -> None:
    book = env.book(
        """
        name: big
        steps:
          - name: spew
            run: head -c 100000 /dev/zero | tr '\\0' x
        """
    )
    outcome = env.run(book, capture_bytes=1000)
    fin = finished(env.recs(outcome.run_id), "spew")[0]
    meta = fin.data["stdout"]
    assert meta["size"] == 100000 and meta["truncated"] is True
    assert meta["omitted"] == 99000
    assert meta["sha256"] == records.sha256_hex(b"x" * 100000)
    blob = fin.attachment("stdout")
    assert blob.startswith(b"x" * 500) and blob.endswith(b"x" * 500)
    assert b"[ledger: 99000 bytes omitted]" in blob


# --------------------------------------------------------------------------- events, stop


class Recorder(EngineEvents):
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.out = bytearray()

    def run_started(self, run_id: str, runbook: Runbook, resumes: str | None) -> None:
        self.calls.append(("run_started", run_id))

    def step_started(self, info: StepStart) -> None:
        self.calls.append(("step_started", (info.step.name, info.attempt, info.command)))

    def output(self, stream: Any, data: bytes) -> None:
        self.out += data

    def step_finished(self, info: StepEnd) -> None:
        self.calls.append(("step_finished", (info.step.name, info.status)))

    def run_finished(self, outcome: RunOutcome) -> None:
        self.calls.append(("run_finished", outcome.status))


def test_events_report_the_run_as_it_goes(env: Env) -> None:
    book = env.book(
        """
        name: ev
        steps:
          - name: a
            run: echo live
          - name: b
            run: "true"
            when: "false"
        """
    )
    rec = Recorder()
    outcome = env.run(book, events=rec)
    assert rec.calls == [
        ("run_started", outcome.run_id),
        ("step_started", ("a", 1, "echo live")),
        ("step_finished", ("a", "ok")),
        ("step_finished", ("b", "skipped")),
        ("run_finished", "succeeded"),
    ]
    assert bytes(rec.out) == b"live\n"


def test_stop_interrupts_the_step_and_aborts_the_run(env: Env) -> None:
    mark = env.work / "started"
    pidfile = env.work / "pid"
    book = env.book(
        f"""
        name: stop
        steps:
          - name: long
            run: echo $$ > {pidfile}; touch {mark}; sleep 60
          - name: never
            run: echo never
        on_failure:
          - name: rollback
            run: echo rollback
        """
    )
    stop = StopSignal()

    def trigger() -> None:
        wait_for(mark.exists, "the step to start", files=[mark])
        stop.trigger(signal.SIGTERM)

    thread = threading.Thread(target=trigger)
    thread.start()
    outcome = env.run(book, stop=stop, kill_grace_s=1.0)
    thread.join()
    assert outcome.status == "aborted" and outcome.failed_step == "long"
    assert outcome.signum == signal.SIGTERM
    with pytest.raises(RunInterrupted) as info:
        outcome.raise_for_status()
    assert info.value.code == 143
    recs = env.recs(outcome.run_id)
    assert finished(recs, "long")[0].data["status"] == "interrupted"
    assert finished(recs, "never") == [] and finished(recs, "rollback") == []
    assert recs[-1].kind == "run.finished"
    assert recs[-1].data["status"] == "aborted" and recs[-1].data["signal"] == 15
    assert not _alive(int(pidfile.read_text()))


# --------------------------------------------------------------------------- lock


def test_lock_held_by_another_run_refuses_at_once(env: Env) -> None:
    book = env.book(
        """
        name: locked
        parameters:
          service: {type: string, default: api}
        lock: "restart-{{ params.service }}"
        steps:
          - name: a
            run: "true"
        """
    )
    head = env.ledger.head()
    with runbook_lock(env.ledger, "restart-api", "20260101T000000Z-00000000") as path:
        assert path.parent == env.ledger.gitdir / "ledger-state" / "locks"
        with pytest.raises(LockTimeout) as info:
            env.run(book)
        assert "restart-api" in info.value.message
        assert "20260101T000000Z-00000000" in info.value.message
        assert env.ledger.head() == head
        other = env.run(book, {"service": "web"})  # another lock name is free
        assert other.succeeded
    outcome = env.run(book)
    assert outcome.succeeded
    assert env.recs(outcome.run_id)[0].data["lock"] == "restart-api"


# --------------------------------------------------------------------------- trigger


def test_trigger_and_incident(env: Env) -> None:
    book = env.book(
        """
        name: trig
        steps:
          - name: a
            run: "true"
        """
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB", "CI"))}
    environ.update(
        {
            "GITHUB_ACTIONS": "true",
            "GITHUB_RUN_ID": "4242",
            "GITHUB_REPOSITORY": "acme/ops",
            "GITHUB_SERVER_URL": "https://github.example",
        }
    )
    resolved = resolve_parameters(book, {}, environ)
    runner = Runner(env.ledger, env.key)
    outcome = runner.run(
        RunRequest(
            runbook=book, params=resolved, environ=environ, incident="INC-42", trigger="pager"
        )
    )
    recs = env.recs(outcome.run_id)
    assert recs[0].data["trigger"] == {
        "source": "ci",
        "incident": "INC-42",
        "text": "pager",
        "ci": "github-actions",
        "ci_run": "4242",
        "ci_url": "https://github.example/acme/ops/actions/runs/4242",
    }
    assert env.ledger.runs_for_incident("INC-42") == [outcome.run_id]
    assert "incident-index" in recs[0].files


@pytest.mark.parametrize(
    ("environ", "system"),
    [
        ({}, None),
        ({"CI": "true"}, "ci"),
        ({"GITLAB_CI": "true", "CI_PIPELINE_ID": "7", "CI_JOB_URL": "https://gl/j/7"}, "gitlab-ci"),
        (
            {"JENKINS_URL": "https://j", "BUILD_URL": "https://j/b/3", "BUILD_NUMBER": "3"},
            "jenkins",
        ),
        ({"BUILD_URL": "https://ci/b/3"}, "ci"),
        ({"BUILDKITE": "true", "BUILDKITE_BUILD_URL": "https://bk/1"}, "buildkite"),
        ({"CIRCLECI": "true", "CIRCLE_BUILD_URL": "https://c/1"}, "circleci"),
    ],
)
def test_ci_detection(environ: dict[str, str], system: str | None) -> None:
    found = detect_ci(environ)
    assert (found or {}).get("system") == system
    data = trigger_data(None, None, environ)
    assert data["source"] == ("ci" if system else "manual")


# --------------------------------------------------------------------------- dry run


def test_plan_renders_everything_and_writes_nothing(env: Env) -> None:
    book = env.book(
        """
        name: plan
        parameters:
          service: {type: string, default: api}
          token: {type: string, secret: true}
        lock: "l-{{ params.service }}"
        steps:
          - name: version
            run: echo 1.0
            outputs: {v: stdout}
          - name: use
            run: deploy {{ params.service }} {{ steps.version.outputs.v }} {{ params.token }}
            when: "{{ steps.version.exit_code == 0 }}"
          - name: gate
            approval: {approvers: [a@example.com], message: "ship {{ steps.version.outputs.v }}?"}
          - name: web
            run: "true"
            when: "{{ params.service == 'web' }}"
        """
    )
    head = env.ledger.head()
    params = resolve_parameters(book, {"token": "hunter2-secret"}, {})
    plan = plan_run(book, params, environ={})
    assert plan.lock == "l-api"
    assert plan.params == {"service": "api", "token": "[REDACTED:token]"}
    steps = {s.name: s for s in plan.steps}
    assert steps["use"].command == ("deploy api '<steps.version.outputs.v>' '[REDACTED:token]'")
    assert steps["use"].will_run is None
    assert steps["web"].will_run is False
    assert steps["gate"].kind == "approval"
    assert steps["gate"].approval_message == "ship <steps.version.outputs.v>?"
    assert "hunter2" not in repr(plan)
    assert env.ledger.head() == head


# --------------------------------------------------------------------------- resume


def test_resume_skips_what_succeeded_and_carries_outputs(env: Env) -> None:
    counter = env.work / "first-ran"
    flag = env.work / "fixed"
    book = env.book(
        f"""
        name: resumable
        parameters:
          service: {{type: string, default: api}}
        steps:
          - name: first
            run: echo x >> {counter}; echo v9
            outputs: {{version: stdout}}
          - name: second
            run: test -f {flag}
          - name: third
            run: echo {{{{ steps.first.outputs.version }}}} {{{{ params.service }}}}
        """
    )
    original = env.run(book, {"service": "web"})
    assert original.status == "failed" and original.failed_step == "second"
    flag.touch()
    plan = prepare_resume(env.ledger, original.run_id, environ={})
    assert set(plan.carried) == {"first"}
    assert plan.params.values == {"service": "web"}
    runner = Runner(env.ledger, env.key)
    resumed = runner.run(
        RunRequest(
            runbook=plan.runbook,
            params=plan.params,
            resumes=original.run_id,
            carried=plan.carried,
            environ=dict(os.environ),
        )
    )
    assert resumed.succeeded and resumed.resumes == original.run_id
    assert counter.read_text() == "x\n"  # the first step did not run again
    recs = env.recs(resumed.run_id)
    assert recs[0].data["resumes"] == original.run_id
    (skip,) = finished(recs, "first")
    assert started(recs, "first") == []
    assert skip.data["status"] == "skipped" and skip.data["reason"] == RESUMED_REASON
    assert skip.data["outputs"] == {"version": "v9"}
    orig_first = finished(env.recs(original.run_id), "first")[0]
    assert skip.data["resumed_from"] == {"run": original.run_id, "seq": orig_first.seq}
    assert finished(recs, "third")[0].attachment("stdout") == b"v9 web\n"

    with pytest.raises(ResumeRefused, match="only failed, aborted or abandoned"):
        prepare_resume(env.ledger, resumed.run_id)


def test_resume_refuses_a_changed_runbook(env: Env) -> None:
    book = env.book(
        """
        name: r
        steps:
          - name: fail
            run: exit 1
        """
    )
    original = env.run(book)
    (env.tmp / "rb.yaml").write_text(
        (env.tmp / "rb.yaml").read_text() + "# edited\n", encoding="utf-8"
    )
    with pytest.raises(ResumeRefused) as info:
        prepare_resume(env.ledger, original.run_id)
    assert info.value.exit_code == 12
    assert "changed" in info.value.message and book.sha256 in info.value.message


def test_resume_refuses_unknown_and_unfinished_runs(env: Env) -> None:
    with pytest.raises(UnknownRun, match="has no run"):
        prepare_resume(env.ledger, "20260101T000000Z-00000000")
    run_id = records.new_run_id()
    env.ledger.append("run.started", {"runbook": {}}, key=env.key, run=run_id)
    with pytest.raises(ResumeRefused, match=r"no run\.finished"):
        prepare_resume(env.ledger, run_id)


def test_runs_started_in_one_second_are_listed_newest_first(env: Env) -> None:
    """A run id names its start to the second, then 32 random bits: two runs started within
    one second are ordered by their records, not by the random part."""
    from ledger.report import runs

    book = env.book("name: quick\nsteps:\n  - {name: a, run: 'true'}\n")
    second = records.new_run_id()[: -len("ffffffff")]
    for run_id in (second + "ffffffff", second + "00000000"):
        resolved = resolve_parameters(book, {}, {})
        outcome = Runner(env.ledger, env.key).run(
            RunRequest(runbook=book, params=resolved, run_id=run_id, environ=dict(os.environ))
        )
        assert outcome.succeeded
    listed = [r.run_id for r in runs.list_runs(env.ledger)]
    assert listed == [second + "00000000", second + "ffffffff"]


# --------------------------------------------------------------------------- approvals


def test_approval_from_a_second_key_lets_the_run_go_on(env: Env) -> None:
    from ledger.run import approvals

    bob = SigningKey.generate(comment="bob@example.com")
    env.ledger.append(
        "key.added",
        {
            "principal": "bob@example.com",
            "key": bob.public_key.openssh(),
            "fingerprint": bob.public_key.fingerprint,
            "comment": "",
        },
        key=env.key,
    )
    book = env.book(
        """
        name: gated
        steps:
          - name: check
            run: echo 3.1
            outputs: {version: stdout}
          - name: approve
            approval:
              approvers: [bob@example.com]
              message: "Ship {{ steps.check.outputs.version }}?"
              timeout: 60s
          - name: ship
            run: echo shipped
        """
    )
    run_id = records.new_run_id()

    def approve() -> None:
        wait_for_request(env.ledger.path, run_id, "approve")
        other = Ledger.open(env.ledger.path)
        approvals.record_approval(other, run_id, "approve", key=bob, comment="go")

    thread = threading.Thread(target=approve)
    thread.start()
    resolved = resolve_parameters(book, {}, {})
    outcome = Runner(env.ledger, env.key).run(
        RunRequest(runbook=book, params=resolved, run_id=run_id, environ=dict(os.environ))
    )
    thread.join()
    assert outcome.succeeded, outcome
    recs = env.recs(run_id)
    req = started(recs, "approve")[0].data
    assert req["type"] == "approval"
    assert req["approval"]["message"] == "Ship 3.1?"
    assert req["approval"]["approvers"] == ["bob@example.com"]
    appr = [r for r in recs if r.kind == "approval"]
    assert len(appr) == 1 and appr[0].record["actor"]["principal"] == "bob@example.com"
    fin = finished(recs, "approve")[0].data
    assert fin["status"] == "ok" and fin["approval"]["decision"] == "approved"
    assert fin["approval"]["approvers"][0]["principal"] == "bob@example.com"
    assert finished(recs, "ship")[0].data["status"] == "ok"


def test_approval_timeout_fails_the_run_and_rejection_rejects_it(env: Env) -> None:
    from ledger.run import approvals

    book = env.book(
        """
        name: gated
        steps:
          - name: approve
            approval: {approvers: [op@example.com], timeout: 300ms}
          - name: ship
            run: echo shipped
        on_failure:
          - name: cleanup
            run: echo cleanup
        on_cancel:
          - name: cancelled
            run: echo cancelled
        """
    )
    outcome = env.run(book)
    assert outcome.status == "failed" and outcome.failed_step == "approve"
    recs = env.recs(outcome.run_id)
    assert finished(recs, "approve")[0].data["status"] == "timeout"
    # A timed-out approval cancels the run: on_cancel runs, not on_failure.
    assert finished(recs, "cleanup") == []
    assert finished(recs, "cancelled")[0].data["phase"] == "on_cancel"

    book2 = env.book(
        """
        name: gated2
        steps:
          - name: approve
            approval: {approvers: [op@example.com]}
          - name: ship
            run: echo shipped
        """,
        name="rb2.yaml",
    )
    run_id = records.new_run_id()

    def reject() -> None:
        wait_for_request(env.ledger.path, run_id, "approve")
        other = Ledger.open(env.ledger.path)
        approvals.record_approval(
            other, run_id, "approve", key=env.key, decision="rejected", comment="no"
        )

    thread = threading.Thread(target=reject)
    thread.start()
    resolved = resolve_parameters(book2, {}, {})
    outcome = Runner(env.ledger, env.key).run(
        RunRequest(runbook=book2, params=resolved, run_id=run_id, environ=dict(os.environ))
    )
    thread.join()
    assert outcome.status == "rejected" and outcome.failed_step == "approve"
    with pytest.raises(RunRejected) as info:
        outcome.raise_for_status()
    assert info.value.exit_code == 11
    recs = env.recs(run_id)
    assert finished(recs, "approve")[0].data["status"] == "rejected"
    assert finished(recs, "ship") == []
    assert recs[-1].data["status"] == "rejected"


# --------------------------------------------------------------------------- judged by git


def test_stock_git_accepts_a_run(env: Env) -> None:
    book = env.book(
        """
        name: fsck
        steps:
          - name: a
            run: echo a
          - name: b
            run: exit 2
            continue_on_error: true
        """
    )
    env.run(book)
    res = git("--git-dir", env.ledger.path, "fsck", "--strict", check=False)
    assert res.returncode == 0, res.stderr


# --------------------------------------------------------------------------- verified state


def test_a_run_extends_the_verified_head_over_its_own_records(env: Env) -> None:
    from ledger import verify
    from ledger.verify import local

    book = env.book(
        """
        name: own
        steps:
          - name: a
            run: echo a
          - name: b
            run: echo b
        """
    )
    assert local.verify_before_append(env.ledger.path) == 0  # init verified the genesis
    outcome = env.run(book)
    state = verify.load_state(env.ledger.path)
    head = env.ledger.head()
    assert state is not None and head is not None
    assert (state.head, state.seq) == (head.commit_id, head.seq) == (outcome.head, 6)
    # What the runner saved is what the verifier establishes for that head.
    full = verify.verify_ledger(env.ledger.path, trust_genesis=env.ledger.genesis_id)
    assert full.ok and full.state is not None
    assert (full.state.prev_sha256, full.state.keys) == (state.prev_sha256, state.keys)
    # The next run's verification has nothing new to read.
    assert local.verify_before_append(env.ledger.path) == 0


def test_records_written_by_others_are_still_verified_before_the_next_run(env: Env) -> None:
    from ledger import verify
    from ledger.verify import local

    book = env.book(
        """
        name: own
        steps:
          - name: a
            run: echo a
        """
    )
    local.verify_before_append(env.ledger.path)
    before = verify.load_state(env.ledger.path)
    # Another writer appends between the verification and the run: not the run's record.
    Ledger.open(env.ledger.path).append("event", {"message": "x", "data": None}, key=env.key)
    outcome = env.run(book)
    # The run's first append verified the other writer's event (the verified view reads
    # records newer than its head before it appends onto them), then moved over its own.
    after = verify.load_state(env.ledger.path)
    assert before is not None and after is not None
    assert (after.head, after.seq) == (outcome.head, before.seq + 5)
    assert local.verify_before_append(env.ledger.path) == 0


def test_a_swapped_chain_under_a_run_is_not_marked_verified(env: Env) -> None:
    """A run whose first record's parent is not the verified head (the branch was moved
    behind the runner's back) leaves the verified head where it was."""
    from ledger import verify
    from ledger.verify import local

    local.verify_before_append(env.ledger.path)
    before = verify.load_state(env.ledger.path)
    first = env.ledger.append("event", {"message": "a", "data": None}, key=env.key)
    second = env.ledger.append("event", {"message": "b", "data": None}, key=env.key)
    extend = local.extend_over_own_appends
    assert extend(env.ledger.repo, env.ledger.path, [second]) is False  # parent is not the head
    assert verify.load_state(env.ledger.path) == before
    assert extend(env.ledger.repo, env.ledger.path, [first, second]) is True
    state = verify.load_state(env.ledger.path)
    assert state is not None and state.head == second.commit_id


# ------------------------------------------------------------------ handlers for every ending


def phases(recs: list[StoredRecord]) -> list[tuple[str, str]]:
    """(step, phase) of every step.finished, in order."""
    return [(r.data["step"], r.data["phase"]) for r in recs if r.kind == "step.finished"]


HANDLERS = textwrap.dedent(
    """
        on_failure:
          - name: rollback
            run: echo rollback {{ run.failed_step }}
        on_cancel:
          - name: cancelled
            run: echo cancelled {{ run.failed_step }}
        always:
          - name: cleanup
            run: echo cleanup {{ steps.rollback.status }} {{ steps.cancelled.status }}
    """
)


def test_always_handlers_run_on_success_and_after_on_failure(env: Env) -> None:
    ok = env.book("name: fine\nsteps:\n  - name: a\n    run: 'true'\n" + HANDLERS)
    outcome = env.run(ok)
    assert outcome.succeeded
    recs = env.recs(outcome.run_id)
    assert phases(recs) == [("a", "main"), ("cleanup", "always")]
    assert finished(recs, "cleanup")[0].attachment("stdout") == b"cleanup pending pending\n"
    assert started(recs, "cleanup")[0].data["handler"] is True
    assert recs[0].data["on_cancel"] == ["cancelled"] and recs[0].data["always"] == ["cleanup"]
    assert recs[-1].data["handlers_run"] == ["cleanup"]

    bad = env.book("name: bad\nsteps:\n  - name: a\n    run: exit 3\n" + HANDLERS, "bad.yaml")
    outcome = env.run(bad)
    assert outcome.status == "failed"
    recs = env.recs(outcome.run_id)
    assert phases(recs) == [("a", "main"), ("rollback", "on_failure"), ("cleanup", "always")]
    assert finished(recs, "cleanup")[0].attachment("stdout") == b"cleanup ok pending\n"
    assert recs[-1].data["handlers_run"] == ["rollback", "cleanup"]
    assert recs[-1].data["status"] == "failed"


def test_a_stop_runs_on_cancel_and_always_and_a_second_stop_stops_them(env: Env) -> None:
    mark = env.work / "started"
    hmark = env.work / "handler-started"
    book = env.book(
        f"""
        name: stop
        steps:
          - name: long
            run: touch {mark}; sleep 60
        on_failure:
          - name: rollback
            run: echo rollback
        on_cancel:
          - name: cancelled
            run: echo cancelled {{{{ run.failed_step }}}}
          - name: slow
            run: touch {hmark}; sleep 60
          - name: never
            run: echo never
        always:
          - name: cleanup
            run: echo cleanup
        """
    )
    stop = StopSignal()

    def trigger() -> None:
        wait_for(mark.exists, "the step to start", files=[mark])
        stop.trigger(signal.SIGINT)
        wait_for(hmark.exists, "the slow handler to start", files=[hmark])
        stop.trigger(signal.SIGINT)

    thread = threading.Thread(target=trigger)
    thread.start()
    outcome = env.run(book, stop=stop, kill_grace_s=1.0)
    thread.join()
    assert outcome.status == "aborted" and outcome.signum == signal.SIGINT
    recs = env.recs(outcome.run_id)
    assert phases(recs) == [("long", "main"), ("cancelled", "on_cancel"), ("slow", "on_cancel")]
    assert finished(recs, "cancelled")[0].attachment("stdout") == b"cancelled long\n"
    assert finished(recs, "slow")[0].data["status"] == "interrupted"
    assert recs[-1].data["handlers_run"] == ["cancelled", "slow"]
    assert recs[-1].data["status"] == "aborted"


def test_one_stop_lets_every_cancel_and_always_handler_finish(env: Env) -> None:
    mark = env.work / "started"
    book = env.book(
        f"""
        name: stop
        steps:
          - name: long
            run: touch {mark}; sleep 60
        on_cancel:
          - name: cancelled
            run: echo cancelled
        always:
          - name: cleanup
            run: echo cleanup
        """
    )
    stop = StopSignal()

    def trigger() -> None:
        wait_for(mark.exists, "the step to start", files=[mark])
        stop.trigger(signal.SIGTERM)

    thread = threading.Thread(target=trigger)
    thread.start()
    outcome = env.run(book, stop=stop, kill_grace_s=1.0)
    thread.join()
    recs = env.recs(outcome.run_id)
    assert outcome.status == "aborted" and recs[-1].data["signal"] == 15
    assert phases(recs) == [("long", "main"), ("cancelled", "on_cancel"), ("cleanup", "always")]
    assert [finished(recs, n)[0].data["status"] for n in ("cancelled", "cleanup")] == ["ok", "ok"]


def test_plan_shows_every_handler_list(env: Env) -> None:
    book = env.book("name: p\nsteps:\n  - name: a\n    run: 'true'\n" + HANDLERS)
    plan = plan_run(book, resolve_parameters(book, {}, {}), environ={})
    assert [s.name for s in plan.handlers] == ["rollback"]
    assert [(s.name, s.phase) for s in plan.on_cancel] == [("cancelled", "on_cancel")]
    assert [(s.name, s.phase) for s in plan.always] == [("cleanup", "always")]


# --------------------------------------------------------------------------- resume after handlers


def test_resume_after_handlers_ran_needs_a_restart_point(env: Env) -> None:
    state = env.work / "state"
    flag = env.work / "fixed"
    book = env.book(
        f"""
        name: deploy
        steps:
          - name: migrate
            run: echo migrated > {state}
          - name: deploy
            run: test -f {flag}
          - name: check
            run: grep migrated {state}
        on_failure:
          - name: rollback
            run: rm {state}
        """
    )
    original = env.run(book)
    assert original.status == "failed" and not state.exists()
    flag.touch()
    with pytest.raises(ResumeRefused, match=r"ran its handlers \(rollback\)") as info:
        prepare_resume(env.ledger, original.run_id, environ={})
    assert info.value.exit_code == 12 and "--from" in (info.value.hint or "")

    with pytest.raises(ResumeRefused, match="no main step"):
        prepare_resume(env.ledger, original.run_id, environ={}, from_step="rollback")
    with pytest.raises(ResumeRefused, match="'deploy', which comes before it, did not succeed"):
        prepare_resume(env.ledger, original.run_id, environ={}, from_step="check")

    plan = prepare_resume(env.ledger, original.run_id, environ={}, from_step="migrate")
    assert plan.carried == {} and plan.handlers_ran == ["rollback"]
    resumed = Runner(env.ledger, env.key).run(
        RunRequest(
            runbook=plan.runbook,
            params=plan.params,
            resumes=original.run_id,
            carried=plan.carried,
            resume_from=plan.resume_from,
            environ=dict(os.environ),
        )
    )
    assert resumed.succeeded and state.read_text() == "migrated\n"
    recs = env.recs(resumed.run_id)
    assert recs[0].data["resume_from"] == "migrate" and recs[0].data["resumes"] == original.run_id
    assert finished(recs, "migrate")[0].data["status"] == "ok"

    # --from a later step carries the ones before it.
    plan = prepare_resume(env.ledger, original.run_id, environ={}, from_step="deploy")
    assert set(plan.carried) == {"migrate"}


# --------------------------------------------------------------------------- templated approvers


def test_templated_approvers_are_rendered_from_parameters(env: Env) -> None:
    from ledger.run import approvals

    book = env.book(
        """
        name: gated
        parameters:
          who: {type: string}
        steps:
          - name: approve
            approval: {approvers: ["{{ params.who }}"], timeout: 60s}
          - name: ship
            run: echo shipped
        """
    )
    params = resolve_parameters(book, {"who": PRINCIPAL}, {})
    plan = plan_run(book, params, environ={})
    assert plan.steps[0].approvers == [PRINCIPAL]
    run_id = records.new_run_id()

    def approve() -> None:
        wait_for_request(env.ledger.path, run_id, "approve")
        other = Ledger.open(env.ledger.path)
        approvals.record_approval(other, run_id, "approve", key=env.key, comment="go")

    thread = threading.Thread(target=approve)
    thread.start()
    outcome = Runner(env.ledger, env.key).run(
        RunRequest(runbook=book, params=params, run_id=run_id, environ=dict(os.environ))
    )
    thread.join()
    assert outcome.succeeded
    request = started(env.recs(run_id), "approve")[0]
    assert request.data["approval"]["approvers"] == [PRINCIPAL]

    blank = resolve_parameters(book, {"who": ""}, {})
    with pytest.raises(RunbookError, match="not one principal"):
        plan_run(book, blank, environ={})
    head = env.ledger.head()
    with pytest.raises(RunbookError, match="not one principal"):
        Runner(env.ledger, env.key).run(RunRequest(runbook=book, params=blank, environ={}))
    assert env.ledger.head() == head  # refused before anything was recorded


# --------------------------------------------------------------------------- closing runs


def test_abandon_closes_an_unfinished_run_only_once_its_runner_is_gone(env: Env) -> None:
    run_id = records.new_run_id()
    env.ledger.append("run.started", {"runbook": {}, "resumes": None}, key=env.key, run=run_id)
    with (
        run_lock(env.ledger, run_id),
        pytest.raises(LockTimeout, match="still running"),
        run_lock(env.ledger, run_id, purpose="abandon"),
    ):
        pass
    with run_lock(env.ledger, run_id, purpose="abandon"):
        done = abandon_run(env.ledger, run_id, "  host died  ", key=env.key)
    rec = env.ledger.record(done.seq)
    assert rec.kind == "run.finished" and rec.run == run_id
    assert rec.data["status"] == "abandoned" and rec.data["reason"] == "host died"
    with pytest.raises(AbandonRefused, match="already finished") as info:
        abandon_run(env.ledger, run_id, "again", key=env.key)
    assert info.value.exit_code == 12
    with pytest.raises(InputError, match="no run"):
        abandon_run(env.ledger, records.new_run_id(), "x", key=env.key)
    with pytest.raises(InputError, match="empty"):
        abandon_run(env.ledger, run_id, " ", key=env.key)
    assert run_id not in env.ledger.unfinished_runs()
