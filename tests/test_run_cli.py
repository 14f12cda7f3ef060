"""`ledger run` and `ledger resume` as real subprocesses: exit codes, signals, secrets,
resume, dry run, a long runbook. Stock git judges what is in the repository."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import zlib
from pathlib import Path

import pytest
from support.cli import CliResult, alive, run_cli
from support.gitcmd import git
from support.ledgers import CliEnv as Env
from support.ledgers import finished
from support.waiting import wait_for

from ledger.keys import SigningKey
from ledger.run import RESUMED_REASON, runbook_lock

RUN_ID_RE = re.compile(r"Run (\d{8}T\d{6}Z-[0-9a-f]{8})")
SECRET = "Tr0ub4dor&3-zebra-SECRET"


@pytest.fixture()
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def run_id_of(result: CliResult) -> str:
    found = RUN_ID_RE.search(result.out)
    assert found, result.output
    return found.group(1)


# --------------------------------------------------------------------------- basics


def test_run_succeeds_and_prints_steps(env: Env) -> None:
    book = env.book(
        """
        name: hello
        parameters:
          who: {type: string, default: world}
        steps:
          - name: greet
            run: echo "hello {{ params.who }}"
          - name: skipped
            run: echo no
            when: "false"
        """
    )
    res = env.run("run", book, "-p", "who=ops", "--incident", "INC-7", "--trigger", "pager")
    assert res.code == 0, res.output
    run_id = run_id_of(res)
    assert "hello ops" in res.out
    assert "greet" in res.out and "skipped" in res.out
    assert "succeeded" in res.out
    recs = env.recs(run_id)
    assert [r.kind for r in recs] == [
        "run.started",
        "step.started",
        "step.finished",
        "step.finished",
        "run.finished",
    ]
    trigger = recs[0].data["trigger"]
    assert trigger["incident"] == "INC-7" and trigger["text"] == "pager"
    assert env.ledger.runs_for_incident("INC-7") == [run_id]
    assert git("--git-dir", env.path, "fsck", "--strict", check=False).returncode == 0


def test_status_lines_print_markup_like_text_verbatim(env: Env) -> None:
    """Commands and messages are printed as they are: text that looks like rich markup is
    neither styled nor swallowed."""
    book = env.book(
        """
        name: brackets
        steps:
          - name: show
            run: echo "[bold]x[/bold]" && exit 3
        """
    )
    res = env.run("run", book)
    assert res.code != 0
    assert '$ echo "[bold]x[/bold]" && exit 3' in res.out
    assert "\n[bold]x[/bold]\n" in res.out  # the command's own output
    assert "show failed (exit 3" in res.out


def test_exit_codes(env: Env) -> None:
    failing = env.book(
        """
        name: f
        steps:
          - name: bad
            run: echo oops >&2; exit 4
        """
    )
    res = env.run("run", failing)
    assert res.code == 10, res.output
    assert "failed at step 'bad'" in res.err and "ledger resume" in res.err

    invalid = env.book("name: x\nsteps:\n  - name: a\n    rn: true\n", name="bad.yaml")
    head = env.ledger.head()
    res = env.run("run", invalid)
    assert res.code == 3, res.output
    assert "bad.yaml:4:5" in res.err
    res = env.run("run", failing, "-p", "nope=1")
    assert res.code == 3 and "no parameter 'nope'" in res.err
    assert env.ledger.head() == head

    gated = env.book(
        """
        name: g
        steps:
          - name: gate
            approval: {approvers: [op@example.com], timeout: 200ms}
        """,
        name="gated.yaml",
    )
    res = env.run("run", gated)
    assert res.code == 10, res.output  # an approval timeout fails the run


def test_lock_held_exits_6_and_writes_nothing(env: Env) -> None:
    book = env.book(
        """
        name: locked
        lock: restart-api
        steps:
          - name: a
            run: "true"
        """
    )
    head = env.ledger.head()
    with runbook_lock(env.ledger, "restart-api", "20260101T000000Z-0000abcd"):
        res = env.run("run", book)
    assert res.code == 6, res.output
    assert "restart-api" in res.err and "20260101T000000Z-0000abcd" in res.err
    assert env.ledger.head() == head
    assert env.run("run", book).code == 0


def test_a_lock_held_by_someone_else_names_the_file_and_what_to_do(env: Env) -> None:
    """Anyone who can write the ledger directory can hold a runbook lock (denial of service,
    a documented limit) and write any holder into its file: the refusal says that the holder
    is the file's claim, names the file and how to find the process."""
    book = env.book(
        """
        name: locked
        lock: restart-api
        steps:
          - name: a
            run: "true"
        """
    )
    import hashlib
    import sys

    lock = env.ledger.gitdir / "ledger-state" / "locks"
    lock = lock / hashlib.sha256(b"restart-api").hexdigest()
    lock.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys\n"
            f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            'os.write(fd, b\'{"run": "forged\\u001b[2J", "pid": 1}\')\n'
            "print('held', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        head = env.ledger.head()
        res = env.run("run", book)
        assert res.code == 6, res.output
        assert "run forged?[2J (pid 1 on None), as its lock file" in res.err, res.output
        assert str(lock) in res.err and "fuser -v" in res.err and "\x1b" not in res.err
        assert env.ledger.head() == head
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    assert env.run("run", book).code == 0


def test_refuses_a_ledger_that_fails_verification(env: Env) -> None:
    book = env.book(
        """
        name: v
        steps:
          - name: a
            run: "true"
        """
    )
    assert env.run("run", book).code == 0
    genesis = env.ledger.genesis_id
    head = env.ledger.head()
    assert head is not None
    git("--git-dir", env.path, "update-ref", f"refs/replace/{genesis}", head.commit_id)
    res = env.run("run", book)
    assert res.code == 7, res.output
    assert "replace-refs" in res.err and "--allow-unverified" in res.err
    assert env.ledger.head() == head
    res = env.run("run", book, "--allow-unverified")
    assert res.code == 0, res.output
    assert "warning" in res.err


# --------------------------------------------------------------------------- dry run


def test_dry_run_prints_the_plan_and_writes_nothing(env: Env) -> None:
    book = env.book(
        """
        name: plan
        parameters:
          service: {type: string, default: api}
          token: {type: string, secret: true, from_env: API_TOKEN}
        lock: "restart-{{ params.service }}"
        steps:
          - name: version
            run: echo 1.0
            outputs: {v: stdout}
          - name: deploy
            run: >-
              deploy {{ params.service }} {{ steps.version.outputs.v }}
              --token {{ params.token }}
        on_failure:
          - name: rollback
            run: rollback {{ run.failed_step }}
        """
    )

    def snapshot() -> tuple[object, str, list[str]]:
        count = git("--git-dir", env.path, "count-objects", "-v").stdout
        files = sorted(str(p.relative_to(env.path)) for p in env.path.rglob("*"))
        return env.ledger.head(), count, files

    before = snapshot()
    res = env.run("run", book, "--dry-run", env={"API_TOKEN": SECRET})
    assert res.code == 0, res.output
    assert "deploy api '<steps.version.outputs.v>' --token '[REDACTED:token]'" in res.out
    assert "rollback '<failed step>'" in res.out
    assert "restart-api" in res.out
    assert "nothing was written" in res.out
    assert SECRET not in res.output
    assert snapshot() == before


# --------------------------------------------------------------------------- secrets


def _all_object_contents(gitdir: Path) -> list[bytes]:
    """Every object of the repository, decompressed: loose files read with zlib, packed
    ones through stock git."""
    out: list[bytes] = []
    objects = gitdir / "objects"
    for path in objects.glob("??/*"):
        out.append(zlib.decompress(path.read_bytes()))
    batch = subprocess.run(
        ["git", "--git-dir", str(gitdir), "cat-file", "--batch-all-objects", "--batch"],
        capture_output=True,
        check=True,
    ).stdout
    pos = 0
    while pos < len(batch):  # "<oid> <type> <size>\n<content>\n" per object
        header_end = batch.index(b"\n", pos)
        size = int(batch[pos:header_end].split()[2])
        out.append(batch[header_end + 1 : header_end + 1 + size])
        pos = header_end + 1 + size + 1
    return out


def _assert_secret_absent(gitdir: Path, secret: str) -> int:
    needle = secret.encode()
    contents = _all_object_contents(gitdir)
    for blob in contents:
        assert needle not in blob
    # Plain files beside the objects: refs, logs, config, local state, locks.
    for path in gitdir.rglob("*"):
        if path.is_file() and "objects" not in path.relative_to(gitdir).parts[:1]:
            assert needle not in path.read_bytes(), path
    return len(contents)


def test_secret_never_reaches_the_ledger(env: Env) -> None:
    book = env.book(
        """
        name: secretive
        parameters:
          token: {type: string, secret: true, from_env: API_TOKEN}
        capture_env: [API_TOKEN, DEPLOY_ENV]
        env: {TOKEN_COPY: "{{ params.token }}"}
        lock: "lock-{{ params.token }}"
        steps:
          - name: echo
            run: |
              echo token is {{ params.token }}
              echo "env is $PARAM_TOKEN and $TOKEN_COPY"
              printf '%s' "$PARAM_TOKEN" | base64
              env | grep -e TOKEN -e STEP_SECRET
            outputs: {said: stdout, word: {regex: 'token is (\\S+)'}}
            env: {STEP_SECRET: "x{{ params.token }}x"}
          - name: export
            run: export T={{ params.token }}; echo "T=$T"; echo "{{ steps.echo.outputs.word }}"
          - name: fail
            run: echo "bad token {{ params.token }}" >&2; exit 3
        on_failure:
          - name: handler
            run: echo "cleanup with {{ params.token }}" >&2
        """
    )
    environ = {"API_TOKEN": SECRET, "DEPLOY_ENV": "prod"}
    res = env.run("run", book, "--trigger", "rotate", env=environ)
    assert res.code == 10, res.output
    run_id = run_id_of(res)
    assert SECRET not in res.output
    assert "[REDACTED:token]" in res.out
    recs = env.recs(run_id)
    assert recs[0].data["env"] == {"API_TOKEN": "[REDACTED:token]", "DEPLOY_ENV": "prod"}
    echo = finished(recs, "echo")[0]
    stdout = echo.attachment("stdout").decode()
    assert stdout.count("[REDACTED:token]") >= 5, stdout
    assert echo.data["outputs"]["word"] == "[REDACTED:token]"
    assert "[REDACTED:token]" in finished(recs, "fail")[0].attachment("stderr").decode()

    lp = ("--ledger", env.path)
    # log --json holds every record's data; show prints commits and attachments.
    shown = [run_cli("log", "--json", *lp), run_cli("log", *lp)]
    shown += [run_cli("show", str(recs[0].seq), *lp)]
    shown += [run_cli("show", str(echo.seq), "--file", name, *lp) for name in echo.files]
    shown.append(run_cli("report", "--run", run_id, *lp, cwd=env.work))
    for out in shown:
        assert out.code == 0, out.output
        assert SECRET not in out.output

    count = _assert_secret_absent(env.path, SECRET)
    assert count > 10
    # Packed as well: after stock git packs everything, no pack holds it either.
    git("--git-dir", env.path, "gc", "--quiet", "--prune=now")
    assert not list((env.path / "objects").glob("??/*"))
    _assert_secret_absent(env.path, SECRET)


# The tool's own credentials: never in a step's environment, redacted anyway.
CREDENTIALS = {
    "LEDGER_HTTP_TOKEN": "ghp-tool-token-0123456789abcdef",
    "LEDGER_HTTP_PASSWORD": "tool-http-password-Zq9",
    "LEDGER_SSH_PASSPHRASE": "tool-ssh-passphrase-Wx7",
    "LEDGER_KEY_PASSPHRASE": "tool-key-passphrase-Vy5",
}


def test_tool_credentials_never_reach_a_step_and_are_redacted(env: Env) -> None:
    (env.work / "creds.txt").write_text("".join(f"{v}\n" for v in CREDENTIALS.values()))
    book = env.book(
        """
        name: creds
        capture_env: [LEDGER_HTTP_TOKEN, LEDGER_SSH_PASSPHRASE]
        steps:
          - name: environment
            run: |
              env | grep -e '^LEDGER_' | sort
              echo "token=${LEDGER_HTTP_TOKEN:-unset} password=${LEDGER_HTTP_PASSWORD:-unset}"
              echo "ssh=${LEDGER_SSH_PASSPHRASE:-unset} key=${LEDGER_KEY_PASSPHRASE:-unset}"
          - name: otherwise
            run: cat @W@/creds.txt
            outputs: {first: {regex: '^(\\S+)'}}
        """
    )
    res = env.run("run", book, env=CREDENTIALS)
    assert res.code == 0, res.output
    recs = env.recs(run_id_of(res))
    assert recs[0].data["env"] == {}
    shown = finished(recs, "environment")[0].attachment("stdout").decode()
    assert "token=unset password=unset" in shown and "ssh=unset key=unset" in shown
    assert "LEDGER_RUN_ID=" in shown  # the step's own variables still arrive
    other = finished(recs, "otherwise")[0]
    text = other.attachment("stdout").decode()
    for name in CREDENTIALS:
        assert f"[REDACTED:{name}]" in text, text
    assert other.data["outputs"]["first"] == "[REDACTED:LEDGER_HTTP_TOKEN]"
    listing = run_cli("log", "--json", "--ledger", env.path)
    for value in CREDENTIALS.values():
        assert value not in res.output and value not in listing.output
        _assert_secret_absent(env.path, value)


# Texts computed from a secret: every one is redacted wherever it would show.
TRANSFORMS = {
    "upper": ("params.token | upper", SECRET.upper()),
    "lower": ("params.token | lower", SECRET.lower()),
    "replace": ("params.token | replace('zebra', 'horse')", SECRET.replace("zebra", "horse")),
    "reverse": ("params.token | reverse", SECRET[::-1]),
    "slice": ("params.token[1:]", SECRET[1:]),
    "concat": ("'pre-' ~ params.token ~ '-post'", f"pre-{SECRET}-post"),
    "title": ("params.token | title", SECRET.title()),
    "join": ("params.token | list | join('.')", ".".join(SECRET)),
    "method": ("params.token.swapcase()", SECRET.swapcase()),
    "format": ("'<%s>' | format(params.token | upper)", f"<{SECRET.upper()}>"),
    "percent": ("'%s!' % (params.token | lower)", f"{SECRET.lower()}!"),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_texts_computed_from_a_secret_are_redacted(env: Env, name: str) -> None:
    expr, value = TRANSFORMS[name]
    q = expr.replace("'", "''")  # inside single-quoted YAML
    book = env.book(
        f"""
        name: derived
        parameters:
          token: {{type: string, secret: true, from_env: API_TOKEN}}
        lock: 'lk-{{{{ {q} }}}}'
        env: {{BOOK_DERIVED: '{{{{ {q} }}}}'}}
        steps:
          - name: cmd
            run: 'echo {{{{ {q} }}}}; echo "env=$DERIVED book=$BOOK_DERIVED"'
            env: {{DERIVED: 'x-{{{{ {q} }}}}'}}
            outputs: {{said: stdout}}
          - name: when-template
            run: echo never
            when: '{{{{ {q} }}}}'
            continue_on_error: true
          - name: when-expression
            run: echo never
            when: '{q}'
            continue_on_error: true
          - name: missing-cwd
            run: echo never
            cwd: '/nonexistent/{{{{ {q} }}}}'
            continue_on_error: true
          - name: lookup
            run: 'echo {{{{ steps.cmd.outputs[{q}] }}}}'
            continue_on_error: true
          - name: lookup-when
            run: echo never
            when: 'steps.cmd.outputs[{q}] == "x"'
            continue_on_error: true
        """
    )
    res = env.run("run", book, env={"API_TOKEN": SECRET})
    assert "Traceback" not in res.output
    assert res.code in (0, 10), res.output
    recs = env.recs(run_id_of(res))
    errors = " ".join(str(r.data.get("error")) for r in recs if r.data.get("error"))
    assert "neither true nor false" in errors and "does not exist" in errors, errors
    assert "cannot be rendered" in errors and "cannot be evaluated" in errors, errors
    assert "[REDACTED:token]" in recs[0].data["lock"]
    said = finished(recs, "cmd")[0]
    assert said.data["outputs"]["said"].count("[REDACTED:token]") >= 2, said.data
    listing = run_cli("log", "--json", "--ledger", env.path)
    for needle in (SECRET, value):
        assert needle not in res.output and needle not in listing.output
        _assert_secret_absent(env.path, needle)


def test_dry_run_redacts_the_lock_like_the_run(env: Env) -> None:
    book = env.book(
        """
        name: plan-lock
        parameters:
          token: {type: string, secret: true, from_env: API_TOKEN}
        lock: "lk-{{ params.token }}-{{ params.token | upper }}"
        steps:
          - name: a
            run: echo {{ params.token | reverse }}
            cwd: "/tmp/{{ params.token | lower }}"
        """
    )
    res = env.run("run", book, "--dry-run", env={"API_TOKEN": SECRET})
    assert res.code == 0, res.output
    assert "lk-[REDACTED:token]-[REDACTED:token]" in res.out
    for needle in (SECRET, SECRET.upper(), SECRET.lower(), SECRET[::-1]):
        assert needle not in res.output


# --------------------------------------------------------------------------- signals


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_the_step_and_records_the_abort(env: Env, sig: int, code: int) -> None:
    mark = env.work / "started"
    pidfile = env.work / "pid"
    book = env.book(
        f"""
        name: long
        steps:
          - name: wait
            run: sleep 120 & echo $! > {pidfile}; touch {mark}; wait
          - name: never
            run: echo never
        on_failure:
          - name: rollback
            run: echo rollback
        """
    )
    proc = env.popen("run", book)
    try:
        wait_for(mark.exists, "the step to start", files=[mark], pids=[proc.pid])
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, out + err
    assert "interrupted" in err
    run_id = RUN_ID_RE.search(out)
    assert run_id, out
    recs = env.recs(run_id.group(1))
    assert finished(recs, "wait")[0].data["status"] == "interrupted"
    assert finished(recs, "never") == [] and finished(recs, "rollback") == []
    assert recs[-1].kind == "run.finished"
    assert recs[-1].data["status"] == "aborted" and recs[-1].data["signal"] == sig
    bg = int(pidfile.read_text())
    wait_for(lambda: not alive(bg), "the step's background process to die", pids=[bg], timeout=15)


def test_sigkill_of_the_runner_leaves_an_unfinished_run(env: Env) -> None:
    mark = env.work / "started"
    pidfile = env.work / "pid"
    book = env.book(
        f"""
        name: killed
        steps:
          - name: wait
            run: echo $$ > {pidfile}; touch {mark}; sleep 120
        """
    )
    proc = env.popen("run", book)
    step_pid = 0
    try:
        wait_for(mark.exists, "the step to start", files=[mark], pids=[proc.pid])
        step_pid = int(pidfile.read_text())
        proc.kill()
        proc.communicate(timeout=30)
    finally:
        if step_pid:
            # The step runs in its own session; nobody is left to stop it but us.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(step_pid, signal.SIGKILL)
    led = env.ledger
    (run_id,) = led.unfinished_runs()
    recs = led.run_records(run_id)
    assert [r.kind for r in recs] == ["run.started", "step.started"]
    assert recs[-1].data["step"] == "wait"
    status = run_cli("status", "--ledger", env.path)
    assert run_id in status.output
    assert run_cli("verify", "--ledger", env.path).code == 0
    # The runbook lock and the ledger lock die with the process: the next run goes ahead.
    assert (
        env.run("run", env.book("name: n\nsteps:\n  - name: a\n    run: 'true'\n", "n.yaml")).code
        == 0
    )
    # Its runner is gone, but the step may have done part of its work: shown, not re-run.
    res = env.run("resume", run_id)
    assert res.code == 12 and "never finished" in res.err and "sleep 120" in res.err


# --------------------------------------------------------------------------- resume


def test_resume_continues_from_the_failed_step(env: Env) -> None:
    counter = env.work / "first-ran"
    flag = env.work / "fixed"
    book = env.book(
        f"""
        name: deploy
        parameters:
          service: {{type: string, default: api}}
          token: {{type: string, secret: true, from_env: API_TOKEN}}
        steps:
          - name: build
            run: echo x >> {counter}; echo build-17
            outputs: {{artifact: stdout}}
          - name: deploy
            run: test -f {flag} && echo "deploying {{{{ steps.build.outputs.artifact }}}}"
          - name: verify
            run: echo "{{{{ params.service }}}} ok [$PARAM_TOKEN]"
        """
    )
    res = env.run("run", book, "-p", "service=web", env={"API_TOKEN": SECRET})
    assert res.code == 10, res.output
    original = run_id_of(res)
    flag.touch()

    # Secrets are resolved again from their sources: without API_TOKEN there is none.
    missing = env.run("resume", original)
    assert missing.code == 3 and "API_TOKEN" in missing.err

    res = env.run("resume", original, env={"API_TOKEN": SECRET})
    assert res.code == 0, res.output
    resumed = run_id_of(res)
    assert resumed != original
    assert counter.read_text() == "x\n"
    recs = env.recs(resumed)
    assert recs[0].data["resumes"] == original
    assert recs[0].data["params"] == {"service": "web", "token": "[REDACTED:token]"}
    build = finished(recs, "build")
    assert len(build) == 1 and build[0].data["status"] == "skipped"
    assert build[0].data["reason"] == RESUMED_REASON
    assert build[0].data["outputs"] == {"artifact": "build-17"}
    assert finished(recs, "deploy")[0].attachment("stdout") == b"deploying build-17\n"
    assert finished(recs, "verify")[0].attachment("stdout") == b"web ok [[REDACTED:token]]\n"

    res = env.run("resume", resumed)
    assert res.code == 12 and "succeeded" in res.err


def test_resume_refuses_a_changed_runbook(env: Env) -> None:
    book = env.book(
        """
        name: r
        steps:
          - name: fail
            run: exit 1
        """
    )
    res = env.run("run", book)
    assert res.code == 10
    run_id = run_id_of(res)
    book.write_text(book.read_text() + "# changed\n", encoding="utf-8")
    head = env.ledger.head()
    res = env.run("resume", run_id)
    assert res.code == 12, res.output
    assert "SHA-256" in res.err and "changed" in res.err
    assert env.ledger.head() == head
    # The same runbook (same SHA-256) elsewhere is accepted with --runbook.
    copy = env.tmp / "copy.yaml"
    copy.write_text(book.read_text().removesuffix("# changed\n"), encoding="utf-8")
    res = env.run("resume", run_id, "--runbook", copy)
    assert res.code == 10, res.output  # runs again, and fails again
    assert RUN_ID_RE.search(res.out)


# --------------------------------------------------------------------------- approvals


def test_approval_from_a_second_process_with_a_second_key(env: Env) -> None:
    bob = SigningKey.generate(comment="bob@example.com")
    bob_path = env.tmp / "bob_key"
    bob.save(bob_path)
    added = run_cli("keys", "add", "bob@example.com", f"{bob_path}.pub", *env.args(), cwd=env.work)
    assert added.code == 0, added.output
    book = env.book(
        """
        name: gated
        steps:
          - name: approve
            approval: {approvers: [bob@example.com], message: "Go?", timeout: 60s}
          - name: ship
            run: echo shipped
        """
    )
    for decision, code in (("approve", 0), ("reject", 11)):
        known = set(env.ledger.run_ids())
        proc = env.popen("run", book)
        try:

            def waiting(known: set[str] = known) -> bool:
                runs = [r for r in env.ledger.unfinished_runs() if r not in known]
                return bool(runs) and any(
                    r.kind == "step.started" for r in env.ledger.run_records(runs[0])
                )

            wait_for(
                waiting,
                "the run to wait for approval",
                files=[env.path / "refs" / "heads"],
                pids=[proc.pid],
            )
            (run_id,) = [r for r in env.ledger.unfinished_runs() if r not in known]
            extra = ["--reject"] if decision == "reject" else []
            res = run_cli(
                "approve",
                run_id,
                "approve",
                "--ledger",
                env.path,
                "--key",
                bob_path,
                *extra,
                cwd=env.work,
            )
            assert res.code == 0, res.output
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == code, out + err
        recs = env.recs(run_id)
        appr = [r for r in recs if r.kind == "approval"]
        assert appr[0].record["actor"]["principal"] == "bob@example.com"
        ship = finished(recs, "ship")
        assert (len(ship) == 1) == (decision == "approve")


# --------------------------------------------------------------------------- scale


def test_a_200_step_runbook(env: Env) -> None:
    steps = "".join(f"  - name: step-{i:03d}\n    run: echo {i}\n" for i in range(200))
    book = env.book("name: long\nsteps:\n" + steps, name="long.yaml")
    res = env.run("run", book, "--no-push")
    assert res.code == 0, res.output[-2000:]
    run_id = run_id_of(res)
    recs = env.recs(run_id)
    assert len(recs) == 402
    fins = [r for r in recs if r.kind == "step.finished"]
    assert [r.data["step"] for r in fins] == [f"step-{i:03d}" for i in range(200)]
    assert fins[-1].attachment("stdout") == b"199\n"
    assert recs[-1].data["status"] == "succeeded"


# --------------------------------------------------------------------------- replication


def test_run_pushes_its_records_to_the_remotes(env: Env) -> None:
    remote = env.tmp / "remote.git"
    git("init", "--bare", "--quiet", remote)
    added = run_cli("remote", "add", "origin", remote, "--ledger", env.path)
    assert added.code == 0, added.output
    book = env.book(
        """
        name: pushed
        steps:
          - name: a
            run: echo a
        """
    )
    res = env.run("run", book)
    assert res.code == 0, res.output
    assert "push origin" in res.err
    head = env.ledger.head()
    assert head is not None
    remote_head = git("--git-dir", remote, "rev-parse", "refs/heads/main").stdout.strip()
    assert remote_head == head.commit_id

    res = env.run("run", book, "--no-push")
    assert res.code == 0 and "push origin" not in res.err
    remote_head = git("--git-dir", remote, "rev-parse", "refs/heads/main").stdout.strip()
    assert remote_head == head.commit_id  # not pushed
    unreachable = run_cli("remote", "add", "down", env.tmp / "missing.git", "--ledger", env.path)
    assert unreachable.code == 0, unreachable.output
    res = env.run("run", book)
    assert res.code == 0, res.output  # a remote that is down never fails the run
    assert "push down" in res.err and "safe in the local ledger" in res.err


def test_hostile_runbooks_are_refused_before_anything_is_written(env: Env) -> None:
    head = env.ledger.head()
    bomb = env.book(
        'name: bomb\na: &a ["lol","lol"]\nb: &b [*a,*a,*a]\nc: [*b,*b,*b]\n'
        "steps:\n  - name: x\n    run: 'true'\n",
        name="bomb.yaml",
    )
    injection = env.book(
        """
        name: inject
        steps:
          - name: x
            run: "{{ ''.__class__.__mro__[1].__subclasses__() }}"
        """,
        name="inject.yaml",
    )
    binary = env.tmp / "binary.yaml"
    binary.write_bytes(b"name: x\nsteps:\n  - name: \xff\n    run: 'true'\n")
    for path in (bomb, injection, binary):
        res = env.run("run", path)
        assert res.code == 3, res.output
        assert str(path) in res.err
    assert env.ledger.head() == head


def test_forged_seq_index_entry_is_not_believed_by_show_log_or_resume(env: Env) -> None:
    """An unreachable forged step.finished plus 20 bytes changed in ledger-state/seq-index."""
    import json

    import pygit2
    from support.tamper import Built, canonical, forge_append, set_main

    pwned = env.work / "PWNED"
    flag = env.work / "fixed"
    book = env.book(
        f"""
        name: deploy
        steps:
          - name: build
            run: echo build-17
            outputs: {{artifact: stdout}}
          - name: deploy
            run: test -f {flag} && echo "deploying {{{{ steps.build.outputs.artifact }}}}"
        """
    )
    res = env.run("run", book)
    assert res.code == 10, res.output
    original = run_id_of(res)
    real = finished(env.recs(original), "build")[0]
    head = git("rev-parse", "main", cwd=env.path).stdout.strip()
    mallory = SigningKey.generate()
    forged_rec = dict(real.record)
    forged_rec["data"] = {**real.data, "outputs": {"artifact": f"x; touch {pwned}; echo"}}
    parent = str(pygit2.Repository(str(env.path))[real.commit_id].parent_ids[0])
    set_main(env.path, parent)  # the forgery is built on the real record's parent...
    forged = forge_append(
        Built(env.path, mallory, mallory, []), mallory, raw_record=canonical(forged_rec)
    )
    set_main(env.path, head)  # ...and left unreachable
    index = env.path / "ledger-state" / "seq-index"
    with open(index, "r+b") as fh:
        fh.seek(real.seq * 20)
        fh.write(bytes.fromhex(forged))
    shown = run_cli("show", str(real.seq), "--json", "--ledger", env.path)
    assert shown.code == 0, shown.output
    assert json.loads(shown.out)["commit"] == real.commit_id
    assert "PWNED" not in shown.out
    logged = run_cli("log", "--run", original, "--json", "--ledger", env.path)
    assert logged.code == 0 and "PWNED" not in logged.out, logged.output
    flag.touch()
    res = env.run("resume", original)
    assert res.code == 0, res.output
    assert not pwned.exists()
    assert "deploying build-17" in res.out


def test_resume_after_a_rollback_needs_from_and_the_report_tells_it(env: Env) -> None:
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
        always:
          - name: notify
            run: echo done
        """
    )
    res = env.run("run", book)
    assert res.code == 10, res.output
    original = run_id_of(res)
    assert not state.exists()
    flag.touch()
    # Carrying 'migrate' over would report a success the rollback undid.
    res = env.run("resume", original)
    assert res.code == 12 and "rollback" in res.err and "--from" in res.err, res.output
    res = env.run("resume", original, "--from", "nosuch")
    assert res.code == 12 and "no main step" in res.err
    res = env.run("resume", original, "--from", "migrate")
    assert res.code == 0, res.output
    resumed = run_id_of(res)
    assert state.read_text() == "migrated\n"
    recs = env.recs(resumed)
    assert recs[0].data["resume_from"] == "migrate"
    assert finished(recs, "migrate")[0].data["status"] == "ok"
    assert run_cli("verify", "--ledger", env.path).code == 0

    report = run_cli("report", "--run", original, "--ledger", env.path, "--no-verify")
    assert report.code == 0, report.output
    assert "rollback (on failure)" in report.out and "notify (always)" in report.out
    report = run_cli("report", "--run", resumed, "--ledger", env.path, "--no-verify")
    assert f"{original} (from step migrate)" in report.out.replace("\\", "")


def _killed_run(env: Env, book: Path, mark: Path, pidfile: Path) -> str:
    """Start ``book``, SIGKILL its runner (and the step) once ``mark`` exists; the run id."""
    proc = env.popen("run", book)
    step_pid = 0
    try:
        wait_for(mark.exists, "the step to start", files=[mark], pids=[proc.pid])
        step_pid = int(pidfile.read_text())
        proc.kill()
        proc.communicate(timeout=30)
    finally:
        if step_pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(step_pid, signal.SIGKILL)
    (run_id,) = env.ledger.unfinished_runs()
    return run_id


def test_a_killed_run_can_be_resumed_or_abandoned(env: Env) -> None:
    mark, pidfile, flag = env.work / "started", env.work / "pid", env.work / "flag"
    counter = env.work / "counter"
    book = env.book(
        f"""
        name: killed
        steps:
          - name: first
            run: echo x >> {counter}
          - name: wait
            run: echo $$ > {pidfile}; touch {mark}; test -f {flag} || sleep 120
          - name: after
            run: echo after
        """
    )
    run_id = _killed_run(env, book, mark, pidfile)
    res = env.run("resume", run_id)
    assert res.code == 12 and "never finished" in res.err and "--rerun-unfinished" in res.err
    flag.touch()
    res = env.run("resume", run_id, "--rerun-unfinished")
    assert res.code == 0, res.output
    assert "Never finished" in res.err and f"Closed run {run_id} as abandoned" in res.out
    resumed = run_id_of(res)
    assert counter.read_text() == "x\n"  # 'first' was carried over
    closing = env.recs(run_id)[-1]
    assert closing.kind == "run.finished" and closing.data["status"] == "abandoned"
    assert closing.data["reason"] == f"runner gone; resumed by run {resumed}"
    assert closing.data["failed_step"] == "wait"
    assert env.ledger.unfinished_runs() == []

    res = env.run("abandon", run_id, "--reason", "again")
    assert res.code == 12 and "already finished" in res.err

    mark.unlink()
    flag.unlink()
    second = _killed_run(env, book, mark, pidfile)
    res = env.run("abandon", second, "--reason", "host lost; finished by hand")
    assert res.code == 0, res.output
    rec = env.recs(second)[-1]
    assert rec.data["status"] == "abandoned" and rec.data["reason"] == "host lost; finished by hand"
    assert env.ledger.unfinished_runs() == []
    assert run_cli("verify", "--ledger", env.path).code == 0
    report = run_cli("report", "--run", second, "--ledger", env.path, "--no-verify")
    assert "| Outcome | abandoned |" in report.out and "host lost" in report.out
    assert env.run("abandon", "20260101T000000Z-00000000", "--reason", "x").code == 3


def test_abandon_and_resume_refuse_a_run_whose_runner_is_alive(env: Env) -> None:
    mark, pidfile = env.work / "started", env.work / "pid"
    book = env.book(
        f"""
        name: alive
        steps:
          - name: wait
            run: echo $$ > {pidfile}; touch {mark}; sleep 120
        """
    )
    proc = env.popen("run", book)
    try:
        wait_for(mark.exists, "the step to start", files=[mark], pids=[proc.pid])
        (run_id,) = env.ledger.unfinished_runs()
        res = env.run("abandon", run_id, "--reason", "x")
        assert res.code == 6 and "still running" in res.err, res.output
        res = env.run("resume", run_id, "--rerun-unfinished")
        assert res.code == 6 and "still running" in res.err, res.output
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert env.recs(run_id)[-1].data["status"] == "aborted"


def test_record_refuses_an_event_for_a_run_that_does_not_exist(env: Env) -> None:
    head = env.ledger.head()
    res = env.run("record", "-m", "note", "--run", "20260101T000000Z-00000000")
    assert res.code == 3 and "no run" in res.err, res.output
    assert env.ledger.head() == head
    ok = env.run("run", env.book("name: n\nsteps:\n  - name: a\n    run: 'true'\n"))
    assert env.run("record", "-m", "note", "--run", run_id_of(ok)).code == 0


def test_dry_run_shows_every_handler_list_and_rendered_approvers(env: Env) -> None:
    book = env.book(
        """
        name: plan
        parameters:
          who: {type: string}
        steps:
          - name: gate
            approval: {approvers: ["{{ params.who }}"]}
        on_cancel:
          - name: undo
            run: echo undo
        always:
          - name: tidy
            run: echo tidy
        """
    )
    res = env.run("run", book, "-p", "who=alice@example.com", "--dry-run")
    assert res.code == 0, res.output
    assert "approval by alice@example.com" in res.out
    assert "On cancel:" in res.out and "undo" in res.out
    assert "Always:" in res.out and "tidy" in res.out
