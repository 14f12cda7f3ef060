"""Ending a `ledger` or hook process without the interpreter's teardown (ledger.quick_exit):
what exit must still do is done, in real child processes."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from support.cli import REPO_ROOT
from support.tamper import build

from ledger import quick_exit


def _child(code: str, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        **kwargs,  # type: ignore[call-overload]
    )


def test_exit_handlers_run_and_buffered_output_is_written() -> None:
    proc = _child(
        "import atexit, sys\n"
        "from ledger import quick_exit\n"
        "atexit.register(lambda: sys.stderr.write('handler ran'))\n"
        "sys.stdout.write('x' * 100000)\n"  # (still in the buffer: no newline, no flush)
        "quick_exit.end(5)\n",
        env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
    )
    assert proc.returncode == 5
    assert proc.stdout == "x" * 100000
    assert proc.stderr == "handler ran"


def test_a_running_non_daemon_thread_is_waited_for(tmp_path: Path) -> None:
    marker = tmp_path / "written"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, threading\n"
            "from ledger import quick_exit\n"
            "def work():\n"
            "    sys.stdin.read()\n"  # until the test closes the pipe
            f"    open({str(marker)!r}, 'w').write('done')\n"
            "threading.Thread(target=work).start()\n"
            "print('started', flush=True)\n"
            "quick_exit.end(3)\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline() == "started\n"
    proc.stdin.close()  # the thread goes on after end() was called
    assert proc.wait(timeout=60) == 3
    assert marker.read_text() == "done"


@pytest.mark.parametrize(
    ("given", "status", "said"), [(None, 0, ""), (4, 4, ""), ("no", 1, "no\n")]
)
def test_exit_status_is_the_interpreters(
    capsys: pytest.CaptureFixture[str], given: object, status: int, said: str
) -> None:
    assert quick_exit.exit_code(given) == status
    assert capsys.readouterr().err == said


def test_ledger_verify_with_workers_leaves_no_server_files(tmp_path: Path) -> None:
    """multiprocessing removes its forkserver's socket directory in an exit handler: the
    handlers still run."""
    built = build(tmp_path, events_after_key=8)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    with tempfile.TemporaryDirectory(dir="/tmp") as short:  # (a socket's path is short)
        temp = Path(short)
        proc = _child(
            "import sys\n"
            "from ledger.verify import parallel\n"
            "parallel.MIN_RECORDS = 1; parallel.SEGMENT = 2; parallel._HERE = 0\n"
            "from ledger import cli\n"
            "sys.argv = ['ledger', 'verify', '-L', sys.argv[1], '--jobs', '2', '--json']\n"
            "cli.run()\n",
            str(built.path),
            env={**os.environ, "TMPDIR": str(temp), "LEDGER_STATE_DIR": str(state)},
        )
        left = list(temp.iterdir())
    assert proc.returncode == 0, proc.stderr
    assert '"ok": true' in proc.stdout
    assert left == []


def test_a_reader_that_stopped_reading_is_no_failure(tmp_path: Path) -> None:
    """`ledger log | head -1`: standard output is closed before the command writes (the
    reader is gone before the interpreter has even started); exit 0, nothing on stderr."""
    built = build(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ledger", "log", "-L", str(built.path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0
    assert err == b""


def test_output_that_cannot_be_written_at_the_end_is_not_a_success() -> None:
    """The last flush fails (a full disk): the interpreter's own exit says 120; ours is the
    storage error's 6, with its paragraph."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    codes = []
    for end in ("pass", "from ledger import quick_exit; quick_exit.end(0)"):
        with open("/dev/full", "w") as full:
            proc = subprocess.run(
                [sys.executable, "-c", f"import sys; sys.stdout.write('x')\n{end}\n"],
                stdout=full,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=REPO_ROOT,
                timeout=60,
            )
        codes.append(proc.returncode)
    assert codes == [120, 6]
    assert proc.stderr.startswith("ledger: storage error: the output could not be written")
    assert "No space left on device" in proc.stderr
