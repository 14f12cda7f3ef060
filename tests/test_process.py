"""Tests of ledger.run.process: real shells, real process groups, real signals."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pytest
from support.waiting import wait_for

from ledger.run.process import (
    CapturedStream,
    CommandResult,
    CommandSpec,
    StreamName,
    run_command,
)

PY = shlex.quote(sys.executable)
SECRET = "hunter2-S3cr3t/value+x"


def pid_gone(pid: int) -> bool:
    """True when no live process has this pid (a zombie awaiting its reaper counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def read_pid(path: Path) -> int:
    wait_for(lambda: path.exists() and path.read_text().strip() != "", str(path), files=[path])
    return int(path.read_text())


@pytest.fixture()
def pidfiles(tmp_path: Path) -> Iterator[Path]:
    """A directory for pidfiles; any process named there is killed at teardown if alive."""
    d = tmp_path / "pids"
    d.mkdir()
    yield d
    for f in d.glob("*.pid"):
        text = f.read_text().strip()
        if text.isdigit() and not pid_gone(int(text)):
            os.kill(int(text), signal.SIGKILL)


class Recorder:
    def __init__(self) -> None:
        self.chunks: list[tuple[StreamName, bytes]] = []

    def __call__(self, stream: StreamName, data: bytes) -> None:
        self.chunks.append((stream, data))

    def joined(self, stream: StreamName) -> bytes:
        return b"".join(d for s, d in self.chunks if s == stream)


def run(command: str, **kw: object) -> CommandResult:
    return run_command(CommandSpec(command, **kw))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- basics


@pytest.mark.parametrize(
    ("command", "status", "exit_code", "sig"),
    [
        ("true", "ok", 0, None),
        ("exit 3", "failed", 3, None),
        ("exit 255", "failed", 255, None),
        ("kill -TERM $$", "failed", None, 15),
    ],
)
def test_exit_codes(command: str, status: str, exit_code: int | None, sig: int | None) -> None:
    r = run(command)
    assert (r.status, r.exit_code, r.signal) == (status, exit_code, sig)
    assert (r.error is None) == (status == "ok")
    assert r.ok == (status == "ok")
    assert r.pid is not None and pid_gone(r.pid)


def test_stdout_and_stderr_are_separate() -> None:
    r = run("echo out1; echo err1 >&2; echo out2; echo err2 >&2")
    assert r.stdout.data == b"out1\nout2\n"
    assert r.stderr.data == b"err1\nerr2\n"
    assert r.stdout.size == 10 and not r.stdout.truncated
    assert r.stdout.sha256 == hashlib.sha256(b"out1\nout2\n").hexdigest()


def test_sh_shell_is_used() -> None:
    r = run('echo "$0"', shell="sh")  # noqa: S604 (the field names the interpreter)
    assert r.stdout.data == b"sh\n"


def test_timestamps_and_duration() -> None:
    r = run("true")
    assert r.started_at.tzinfo is UTC and r.finished_at.tzinfo is UTC
    assert r.started_at <= r.finished_at
    assert isinstance(r.duration_ms, int) and r.duration_ms >= 0


def test_stdin_is_dev_null() -> None:
    # `cat` would block forever on an inherited terminal or pipe.
    r = run("cat; echo done", timeout_s=30)
    assert r.status == "ok" and r.stdout.data == b"done\n"


def test_runs_in_its_own_session_and_group() -> None:
    r = run(f"{PY} -c 'import os; print(os.getpid(), os.getpgrp(), os.getsid(0))'")
    pid, pgrp, sid = map(int, r.stdout.data.split())
    assert pgrp == sid == pid or (pgrp == sid == r.pid)
    assert pgrp != os.getpgrp() and sid != os.getsid(0)


def test_env_is_exactly_the_given_mapping(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "GREETING": "hello world", "EMPTY": ""}
    r = run(f"{PY} -c 'import json, os; print(json.dumps(dict(os.environ)))'", env=env)
    seen = json.loads(r.stdout.data)
    assert seen["GREETING"] == "hello world" and seen["EMPTY"] == ""
    assert "HOME" not in seen  # nothing inherited from this process
    assert set(seen) <= set(env) | {"PWD", "SHLVL", "_", "LC_CTYPE"}


def test_cwd_is_used(tmp_path: Path) -> None:
    r = run("pwd -P", cwd=tmp_path)
    assert r.stdout.data.decode().strip() == str(tmp_path.resolve())


def test_non_utf8_output_is_preserved_as_bytes() -> None:
    r = run(r"printf '\377\376\000abc\351\n'; printf '\200' >&2")
    assert r.stdout.data == b"\xff\xfe\x00abc\xe9\n"
    assert r.stderr.data == b"\x80"


# --------------------------------------------------------------------------- failures


def test_missing_cwd_is_a_failed_result(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    r = run("true", cwd=missing)
    assert r.status == "failed" and r.exit_code is None and r.pid is None
    assert r.error == f"working directory {missing} does not exist"
    assert r.stdout == CapturedStream(b"", 0, hashlib.sha256(b"").hexdigest(), False)


def test_cwd_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    r = run("true", cwd=f)
    assert r.status == "failed" and r.error == f"working directory {f} is not a directory"


def test_missing_shell(tmp_path: Path) -> None:
    r = run("true", env={"PATH": str(tmp_path)})
    assert r.status == "failed" and r.exit_code is None
    assert r.error is not None and "shell 'bash' not found" in r.error


def test_command_not_found() -> None:
    r = run("no-such-command-xyz --flag")
    assert r.status == "failed" and r.exit_code == 127
    assert r.error is not None and "command not found" in r.error
    assert b"no-such-command-xyz" in r.stderr.data


@pytest.mark.parametrize(
    "kw",
    [
        {"shell": "zsh -x"},
        {"timeout_s": 0},
        {"timeout_s": -1.0},
        {"capture_bytes": -1},
        {"kill_grace_s": -1.0},
    ],
)
def test_invalid_spec_is_a_programming_error(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        CommandSpec("true", **kw)  # type: ignore[arg-type]


def test_nul_in_command_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        CommandSpec("echo a\0b")


def test_bad_environment_raises_without_leaking_descriptors() -> None:
    """Counted in a fresh interpreter: in this one, other tests' threads (a worker pool
    shutting down, a background pusher) may open or close descriptors meanwhile."""
    code = (
        "import os\n"
        "from ledger.run.process import CommandSpec, run_command\n"
        "before = len(os.listdir('/proc/self/fd'))\n"
        "for _ in range(3):\n"
        "    try:\n"
        "        run_command(CommandSpec('true', env={'A=B': 'x'}))\n"
        "    except ValueError:\n"
        "        pass\n"
        "    else:\n"
        "        raise SystemExit('no ValueError')\n"
        "after = len(os.listdir('/proc/self/fd'))\n"
        "raise SystemExit(0 if after == before else f'{before} descriptors, then {after}')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# --------------------------------------------------------------------------- live output


def test_sink_receives_chunks_live_and_in_order(tmp_path: Path) -> None:
    """The child waits for the sink to have seen each piece before writing the next one."""
    acks = [tmp_path / f"ack{i}" for i in range(3)]
    wait = "while [ ! -e {0} ]; do sleep 0.01; done"
    command = "; ".join(
        [
            "printf one",
            wait.format(acks[0]),
            "printf two >&2",
            wait.format(acks[1]),
            "printf 'three\\n'",
            wait.format(acks[2]),
            "echo four >&2",
        ]
    )
    seen: list[tuple[StreamName, bytes]] = []

    def sink(stream: StreamName, data: bytes) -> None:
        seen.append((stream, data))
        text = b"".join(d for _, d in seen)
        for marker, ack in zip((b"one", b"two", b"three"), acks, strict=True):
            if marker in text:
                ack.touch()

    r = run_command(CommandSpec(command, timeout_s=60), sink=sink)
    assert r.status == "ok", r.error
    assert seen == [
        ("stdout", b"one"),
        ("stderr", b"two"),
        ("stdout", b"three\n"),
        ("stderr", b"four\n"),
    ]
    assert r.stdout.data == b"onethree\n" and r.stderr.data == b"twofour\n"


def test_sink_sees_exactly_what_is_captured() -> None:
    rec = Recorder()
    r = run_command(CommandSpec("seq 1 20000; seq 1 5000 >&2"), sink=rec)
    assert rec.joined("stdout") == r.stdout.data
    assert rec.joined("stderr") == r.stderr.data
    assert all(chunk for _, chunk in rec.chunks)


def test_sink_exception_kills_the_group_and_propagates(pidfiles: Path) -> None:
    pidfile = pidfiles / "bg.pid"

    def sink(stream: StreamName, data: bytes) -> None:
        if b"ready" in data:
            raise RuntimeError("terminal went away")

    command = f"sleep 1000 & echo $! > {pidfile}; echo ready; wait"
    with pytest.raises(RuntimeError, match="terminal went away"):
        run_command(CommandSpec(command, timeout_s=60), sink=sink)
    bg = read_pid(pidfile)
    wait_for(lambda: pid_gone(bg), "background sleep to die", pids=[bg])


# --------------------------------------------------------------------------- redaction
# (the redactor itself is tested in test_redact.py; here, redaction of a command's output)


def test_secret_printed_one_byte_at_a_time_is_redacted() -> None:
    child = (
        "import os, sys, time\n"
        "s = os.environ['TOKEN'].encode()\n"
        "for stream in (sys.stdout.buffer, sys.stderr.buffer):\n"
        "    stream.write(b'token=')\n"
        "    for i in range(len(s)):\n"
        "        stream.write(s[i:i+1]); stream.flush(); time.sleep(0.002)\n"
        "    stream.write(b' end\\n'); stream.flush()\n"
    )
    env = dict(os.environ, TOKEN=SECRET)
    rec = Recorder()
    r = run_command(
        CommandSpec(f"{PY} -c {shlex.quote(child)}", env=env, redactions={"token": SECRET}),
        sink=rec,
    )
    assert r.status == "ok", r.stderr.data
    for stream in ("stdout", "stderr"):
        captured: CapturedStream = getattr(r, stream)
        assert captured.data == b"token=[REDACTED:token] end\n"
        assert rec.joined(stream) == captured.data  # type: ignore[arg-type]
        assert captured.sha256 == hashlib.sha256(captured.data).hexdigest()
    assert SECRET.encode() not in b"".join(d for _, d in rec.chunks)


def test_secret_in_command_output_and_encoded_is_redacted() -> None:
    env = dict(os.environ, TOKEN=SECRET)
    r = run(
        'echo "$TOKEN"; printf %s "$TOKEN" | base64; echo "$TOKEN" | base64 >&2',
        env=env,
        redactions={"token": SECRET},
    )
    assert r.stdout.data == b"[REDACTED:token]\n[REDACTED:token]\n"
    assert b"[REDACTED:token]" in r.stderr.data
    assert SECRET.encode() not in r.stdout.data + r.stderr.data


def test_texts_computed_from_a_secret_are_redacted_from_output() -> None:
    derived = SECRET.upper()[::-1]
    env = dict(os.environ, TOKEN=SECRET, D=derived)
    r = run(
        'echo "$D"; echo "x$D" >&2',
        env=env,
        redactions={"token": SECRET},
        derived=(("token", derived),),
    )
    assert r.stdout.data == b"[REDACTED:token]\n"
    assert r.stderr.data == b"x[REDACTED:token]\n"


# --------------------------------------------------------------------------- capture


def _seq(n: int) -> bytes:
    return "".join(f"{i}\n" for i in range(1, n + 1)).encode()


def test_capture_keeps_head_and_tail_and_hashes_everything() -> None:
    cap = 64 * 1024
    r = run("seq 1 300000", capture_bytes=cap)
    expected = _seq(300000)  # computed independently of the command
    assert r.stdout.truncated
    assert r.stdout.size == len(expected)
    assert r.stdout.sha256 == hashlib.sha256(expected).hexdigest()
    head, tail = expected[: cap // 2], expected[-(cap - cap // 2) :]
    omitted = len(expected) - cap
    marker = f"[ledger: {omitted} bytes omitted]\n".encode()
    assert r.stdout.data.startswith(head)
    assert r.stdout.data.endswith(tail)
    middle = r.stdout.data[len(head) : len(r.stdout.data) - len(tail)]
    assert middle.strip(b"\n") + b"\n" == marker
    assert r.stdout.omitted == omitted
    assert len(r.stdout.data) <= cap + len(marker) + 1


@pytest.mark.parametrize(
    ("size", "truncated"), [(0, False), (999, False), (1000, False), (1001, True), (5000, True)]
)
def test_capture_boundaries(size: int, truncated: bool) -> None:
    r = run(f"head -c {size} /dev/zero | tr '\\0' x", capture_bytes=1000)
    assert r.stdout.size == size and r.stdout.truncated is truncated
    assert r.stdout.omitted == max(size - 1000, 0)
    assert r.stdout.sha256 == hashlib.sha256(b"x" * size).hexdigest()
    if not truncated:
        assert r.stdout.data == b"x" * size
    else:
        assert r.stdout.data == (
            b"x" * 500 + f"\n[ledger: {size - 1000} bytes omitted]\n".encode() + b"x" * 500
        )


def test_capture_is_of_the_redacted_stream() -> None:
    secret = "s" * 40
    env = dict(os.environ, S=secret)
    r = run(
        'for i in $(seq 1 2000); do echo "$i $S"; done',
        env=env,
        redactions={"s": secret},
        capture_bytes=4096,
    )
    full = "".join(f"{i} [REDACTED:s]\n" for i in range(1, 2001)).encode()
    assert r.stdout.size == len(full)
    assert r.stdout.sha256 == hashlib.sha256(full).hexdigest()
    assert r.stdout.truncated and secret.encode() not in r.stdout.data


def _vm_hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/self/status")


def test_large_output_uses_bounded_memory() -> None:
    size = 200 * 1000 * 1000
    before = _vm_hwm_kib()
    r = run(f"head -c {size} /dev/zero; yes | head -c 1000000 >&2", timeout_s=120)
    grown_mib = (_vm_hwm_kib() - before) / 1024
    assert r.status == "ok"
    assert r.stdout.size == size and r.stdout.truncated
    h = hashlib.sha256()
    block = b"\0" * (1 << 20)
    for _ in range(size // len(block)):
        h.update(block)
    h.update(b"\0" * (size % len(block)))
    assert r.stdout.sha256 == h.hexdigest()
    marker = CapturedStream.marker(b"\0", size - 1024 * 1024)
    assert len(r.stdout.data) <= 1024 * 1024 + len(marker)
    assert r.stderr.size == 1000000 and not r.stderr.truncated
    assert grown_mib < 64, f"peak memory grew by {grown_mib:.0f} MiB"


# --------------------------------------------------------------------------- stopping


def test_timeout_kills_the_group_including_a_grandchild_ignoring_sigterm(
    pidfiles: Path,
) -> None:
    gc = pidfiles / "gc.pid"
    bg = pidfiles / "bg.pid"
    command = (
        f"( trap '' TERM; echo $BASHPID > {gc}.tmp; mv {gc}.tmp {gc}; exec sleep 1000 ) & "
        f"sleep 1000 & echo $! > {bg}; "
        f"while [ ! -e {gc} ]; do sleep 0.01; done; echo started; wait"
    )
    rec = Recorder()
    r = run_command(CommandSpec(command, timeout_s=3, kill_grace_s=0.5), sink=rec)
    assert r.status == "timeout"
    assert rec.joined("stdout") == b"started\n"
    assert r.error is not None and "timed out after 3 s" in r.error
    assert "SIGKILL" in r.error  # the grandchild ignored SIGTERM
    assert r.exit_code is None and r.signal == 15  # the shell itself died of SIGTERM
    assert 3500 <= r.duration_ms < 30000
    for path in (gc, bg):
        pid = read_pid(path)
        wait_for(lambda pid=pid: pid_gone(pid), f"pid {pid} to die", pids=[pid])
    assert r.pid is not None and pid_gone(r.pid)


def test_timeout_on_a_simple_command() -> None:
    r = run("sleep 1000", timeout_s=0.2, kill_grace_s=5)
    assert r.status == "timeout" and r.signal == 15
    assert r.error is not None and "SIGKILL" not in r.error
    assert 200 <= r.duration_ms < 4000


def test_stop_event_interrupts(pidfiles: Path) -> None:
    bg = pidfiles / "bg.pid"
    stop = threading.Event()

    def sink(stream: StreamName, data: bytes) -> None:
        if b"ready" in data:
            stop.set()

    command = f"sleep 1000 & echo $! > {bg}; echo ready; wait"
    r = run_command(CommandSpec(command, timeout_s=60), sink=sink, stop=stop)
    assert r.status == "interrupted"
    assert r.error is not None and r.error.startswith("interrupted")
    assert r.exit_code is None and r.signal == 15
    assert r.duration_ms < 10000
    sleeper = read_pid(bg)
    wait_for(lambda: pid_gone(sleeper), "background sleep to die", pids=[sleeper])


def test_stop_event_from_another_thread(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    stop = threading.Event()

    def stopper() -> None:
        wait_for(ready.exists, "child to start", files=[ready])
        stop.set()

    t = threading.Thread(target=stopper)
    t.start()
    r = run_command(CommandSpec(f"touch {ready}; exec sleep 1000"), stop=stop)
    t.join()
    assert r.status == "interrupted" and r.signal == 15


def test_stop_already_set_runs_nothing(tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    marker = tmp_path / "ran"
    r = run_command(CommandSpec(f"touch {marker}"), stop=stop)
    assert r.status == "interrupted" and r.pid is None
    assert not marker.exists()


def test_background_process_holding_output_is_left_after_drain(pidfiles: Path) -> None:
    bg = pidfiles / "bg.pid"
    command = f"sleep 1000 & echo $! > {bg}; echo done"
    r = run(command, drain_s=0.2, timeout_s=60)
    sleeper = read_pid(bg)
    assert r.status == "ok" and r.exit_code == 0 and r.lingering
    assert r.stdout.data == b"done\n"
    assert not pid_gone(sleeper)  # a step may start a service; it is not killed


def test_background_process_with_redirected_output_does_not_delay(pidfiles: Path) -> None:
    bg = pidfiles / "bg.pid"
    r = run(f"sleep 1000 >/dev/null 2>&1 & echo $! > {bg}", drain_s=30)
    sleeper = read_pid(bg)
    assert r.status == "ok" and not r.lingering and r.duration_ms < 10000
    assert not pid_gone(sleeper)


def test_output_closed_early_but_process_still_running() -> None:
    # The shell closes its output and keeps running: the exit is still noticed.
    r = run("exec >&- 2>&-; sleep 0.3; exit 4", timeout_s=30)
    assert r.status == "failed" and r.exit_code == 4 and r.duration_ms >= 300
