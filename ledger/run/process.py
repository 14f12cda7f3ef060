"""Run one shell command the way a runbook step runs it.

:func:`run_command` starts ``[shell, "-c", text]`` in a session (and process group) of its
own with stdin from ``/dev/null``, reads stdout and stderr concurrently, redacts secrets in
them, hands each redacted chunk to a live *sink* (the CLI prints it), and captures a bounded
head and tail of each redacted stream together with the full stream's size and SHA-256. A
timeout or a *stop* event terminates the whole process group: SIGTERM first, SIGKILL after a
grace period, so children that ignore SIGTERM and background grandchildren die too.

The module knows nothing of runbooks or of the ledger: the engine builds a
:class:`CommandSpec` (the command text is already rendered with safe quoting; this module
never builds a command by interpolation) and records the :class:`CommandResult`.

Failures to start (missing working directory, missing shell, permissions) are not raised:
they come back as a result with status ``"failed"`` and an ``error`` message. Only
programming errors (an invalid spec) raise :class:`ValueError`.

Redaction is :mod:`ledger.redact`'s (secrets are replaced while the streams are read).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from ledger import redact

__all__ = [
    "DEFAULT_CAPTURE_BYTES",
    "DEFAULT_DRAIN_S",
    "DEFAULT_KILL_GRACE_S",
    "SHELLS",
    "CapturedStream",
    "CommandResult",
    "CommandSpec",
    "OutputSink",
    "Status",
    "StreamName",
    "run_command",
]

Status = Literal["ok", "failed", "timeout", "interrupted"]
StreamName = Literal["stdout", "stderr"]
OutputSink = Callable[[StreamName, bytes], None]
"""Called with each redacted chunk of output, in the order it was read."""

SHELLS: tuple[str, ...] = ("bash", "sh")
DEFAULT_CAPTURE_BYTES = 1024 * 1024
DEFAULT_KILL_GRACE_S = 5.0
DEFAULT_DRAIN_S = 2.0

_READ_SIZE = 65536
_STOP_POLL_S = 0.05
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


# --------------------------------------------------------------------------- capture


@dataclass(frozen=True)
class CapturedStream:
    """What was kept of one redacted output stream.

    ``data`` is the whole stream when ``size <= cap``; otherwise its first ``cap // 2``
    bytes, a marker line ``[ledger: N bytes omitted]``, and its last ``cap - cap // 2``
    bytes. ``size`` and ``sha256`` (lowercase hex) describe the whole redacted stream;
    ``omitted`` says how many of its bytes ``data`` lacks.
    """

    data: bytes
    size: int
    sha256: str
    truncated: bool
    omitted: int = 0
    """How many bytes of the stream are not in ``data`` (0 unless truncated)."""

    @staticmethod
    def marker(head: bytes, omitted: int) -> bytes:
        """The marker line put between head and tail (exposed for tests and reports)."""
        lead = b"" if not head or head.endswith(b"\n") else b"\n"
        return lead + b"[ledger: %d bytes omitted]\n" % omitted


def _empty_stream() -> CapturedStream:
    return CapturedStream(data=b"", size=0, sha256=_EMPTY_SHA256, truncated=False)


class _Capture:
    """Keeps head and tail of a stream in bounded memory, hashing all of it."""

    def __init__(self, cap: int) -> None:
        self._head_cap = cap // 2
        self._tail_cap = cap - self._head_cap
        self._head = bytearray()
        self._tail = bytearray()
        self._size = 0
        self._hash = hashlib.sha256()

    def add(self, data: bytes) -> None:
        self._size += len(data)
        self._hash.update(data)
        room = self._head_cap - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if not data or self._tail_cap == 0:
            return
        if len(data) >= self._tail_cap:
            self._tail[:] = data[-self._tail_cap :]
            return
        self._tail += data
        if len(self._tail) >= 2 * self._tail_cap:
            del self._tail[: len(self._tail) - self._tail_cap]

    def result(self) -> CapturedStream:
        tail = bytes(self._tail[-self._tail_cap :]) if self._tail_cap else b""
        head = bytes(self._head)
        kept = len(head) + len(tail)
        omitted = self._size - kept
        data = head + CapturedStream.marker(head, omitted) + tail if omitted else head + tail
        return CapturedStream(
            data=data,
            size=self._size,
            sha256=self._hash.hexdigest(),
            truncated=omitted > 0,
            omitted=omitted,
        )


class _Stream:
    """One output stream: redaction, live sink, capture."""

    def __init__(
        self, name: StreamName, redactor: redact.Redactor, cap: int, sink: OutputSink | None
    ) -> None:
        self.name: StreamName = name
        self._redactor = redactor.stream()
        self._capture = _Capture(cap)
        self._sink = sink

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        self._capture.add(data)
        if self._sink is not None:
            self._sink(self.name, data)

    def feed(self, data: bytes) -> None:
        self._emit(self._redactor.feed(data))

    def close(self) -> CapturedStream:
        self._emit(self._redactor.flush())
        return self._capture.result()


# --------------------------------------------------------------------------- spec/result


@dataclass(frozen=True)
class CommandSpec:
    """One command to run.

    ``command`` is shell text run as ``[shell, "-c", command]``. ``env`` is the complete
    environment of the command (``None``: this process's environment). ``timeout_s``:
    ``None`` for no limit. ``capture_bytes`` bounds ``CapturedStream.data`` per stream (plus
    the marker line). ``redactions`` maps a secret's name to its value; ``derived`` adds
    texts computed from secrets, under the secret's name. ``kill_grace_s``:
    time between SIGTERM and SIGKILL of the process group on timeout or stop.
    ``drain_s``: after the shell exits, how long to keep reading output that background
    processes it started still hold open; after that reading stops, our ends of the pipes
    are closed, those processes are left running and ``CommandResult.lingering`` is set.
    """

    command: str
    shell: str = "bash"
    cwd: Path | None = None
    env: Mapping[str, str] | None = None
    timeout_s: float | None = None
    capture_bytes: int = DEFAULT_CAPTURE_BYTES
    redactions: Mapping[str, str] = field(default_factory=dict)
    derived: tuple[tuple[str, str], ...] = ()
    kill_grace_s: float = DEFAULT_KILL_GRACE_S
    drain_s: float = DEFAULT_DRAIN_S

    def __post_init__(self) -> None:
        if self.shell not in SHELLS:
            raise ValueError(f"shell must be one of {', '.join(SHELLS)}, not {self.shell!r}")
        if "\0" in self.command:
            raise ValueError("command text contains a NUL byte")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, not {self.timeout_s!r}")
        if self.capture_bytes < 0:
            raise ValueError(f"capture_bytes must not be negative, not {self.capture_bytes}")
        if not self.kill_grace_s >= 0 or not self.drain_s >= 0:
            raise ValueError("kill_grace_s and drain_s must not be negative")


@dataclass(frozen=True)
class CommandResult:
    """How a command ended.

    ``status``: ``"ok"`` (exit status 0), ``"failed"`` (non-zero exit, killed by a signal
    nobody here sent, or could not start), ``"timeout"``, ``"interrupted"`` (stop event).
    ``exit_code``: the shell's exit status, ``None`` when it was killed by a signal (then
    ``signal`` is the signal number) or never started. ``error``: a one-line explanation
    whenever ``status`` is not ``"ok"``. ``duration_ms``: monotonic wall time from just
    before starting to after reaping, in whole milliseconds (rounded down). ``pid``: the
    shell's pid (also its process group and session id), ``None`` if it never started.
    ``lingering``: processes the command started still held its output open ``drain_s``
    after it exited and were left running.
    """

    status: Status
    exit_code: int | None
    signal: int | None
    error: str | None
    duration_ms: int
    started_at: datetime
    finished_at: datetime
    stdout: CapturedStream
    stderr: CapturedStream
    pid: int | None = None
    lingering: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# --------------------------------------------------------------------------- running


def _now() -> datetime:
    return datetime.now(UTC)


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _cwd_problem(cwd: Path | None) -> str | None:
    if cwd is None:
        return None
    if not cwd.exists():
        return f"working directory {cwd} does not exist"
    if not cwd.is_dir():
        return f"working directory {cwd} is not a directory"
    if not os.access(cwd, os.X_OK):
        return f"working directory {cwd} is not accessible (permission denied)"
    return None


def _not_started(status: Status, error: str, started_at: datetime, t0: float) -> CommandResult:
    return CommandResult(
        status=status,
        exit_code=None,
        signal=None,
        error=error,
        duration_ms=int((time.monotonic() - t0) * 1000),
        started_at=started_at,
        finished_at=_now(),
        stdout=_empty_stream(),
        stderr=_empty_stream(),
    )


def _spawn_error(spec: CommandSpec, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError) and (
        exc.filename is None or str(exc.filename) == spec.shell
    ):
        where = "PATH of the command's environment"
        return f"shell {spec.shell!r} not found on the {where}"
    detail = exc.strerror or str(exc)
    return f"could not start {spec.shell} ({detail}: {exc.filename or spec.shell})"


def _exit_error(returncode: int) -> str | None:
    if returncode == 0:
        return None
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    if returncode == 127:
        return "exited with status 127: command not found (see stderr)"
    if returncode == 126:
        return "exited with status 126: command found but could not be executed (see stderr)"
    return f"exited with status {returncode}"


class _Child:
    """The started shell: exit detection without reaping, and group signals."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.pidfd: int | None = None
        if hasattr(os, "pidfd_open"):
            with contextlib.suppress(OSError):
                self.pidfd = os.pidfd_open(self.pid)
        self.exited = False
        self.reaped = False

    def poll_exit(self) -> bool:
        """Whether the shell has exited; it stays unreaped so its pgid cannot be reused."""
        if not self.exited:
            try:
                info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:  # reaped behind our back (SIGCHLD ignored)
                self.exited = True
            else:
                self.exited = info is not None and info.si_pid == self.pid
        return self.exited

    def signal_group(self, sig: int) -> None:
        if self.reaped:
            return
        # The group may be empty except for the unreaped shell, or hold only processes
        # that changed user: neither is an error here.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def reap(self) -> int:
        code = self.proc.wait()
        self.reaped = True
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        return code


def run_command(
    spec: CommandSpec,
    *,
    sink: OutputSink | None = None,
    stop: threading.Event | None = None,
) -> CommandResult:
    """Run ``spec`` to completion, timeout or stop; see the module documentation."""
    started_at = _now()
    t0 = time.monotonic()
    problem = _cwd_problem(spec.cwd)
    if problem is not None:
        return _not_started("failed", problem, started_at, t0)
    if stop is not None and stop.is_set():
        return _not_started("interrupted", "interrupted before it started", started_at, t0)

    redactor = redact.Redactor(spec.redactions, spec.derived)
    streams = {
        "stdout": _Stream("stdout", redactor, spec.capture_bytes, sink),
        "stderr": _Stream("stderr", redactor, spec.capture_bytes, sink),
    }
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        proc = subprocess.Popen(
            [spec.shell, "-c", spec.command],
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            cwd=spec.cwd,
            env=dict(spec.env) if spec.env is not None else None,
            start_new_session=True,
            close_fds=True,
        )
    except BaseException as exc:
        for fd in (out_r, out_w, err_r, err_w):
            os.close(fd)
        if isinstance(exc, OSError):
            return _not_started("failed", _spawn_error(spec, exc), started_at, t0)
        raise  # e.g. ValueError: a NUL byte or "=" in the environment (a programming error)
    os.close(out_w)
    os.close(err_w)

    child = _Child(proc)
    try:
        reason, escalated, lingering = _supervise(
            child, spec, {out_r: streams["stdout"], err_r: streams["stderr"]}, stop, t0
        )
        returncode = child.reap()
    except BaseException:
        child.signal_group(signal.SIGKILL)
        child.reap()
        raise
    finally:
        os.close(out_r)
        os.close(err_r)

    stdout = streams["stdout"].close()
    stderr = streams["stderr"].close()
    duration_ms = int((time.monotonic() - t0) * 1000)
    status, error = _ending(spec, reason, escalated, returncode)
    return CommandResult(
        status=status,
        exit_code=returncode if returncode >= 0 else None,
        signal=-returncode if returncode < 0 else None,
        error=error,
        duration_ms=duration_ms,
        started_at=started_at,
        finished_at=_now(),
        stdout=stdout,
        stderr=stderr,
        pid=child.pid,
        lingering=lingering,
    )


def _ending(
    spec: CommandSpec, reason: str | None, escalated: bool, returncode: int
) -> tuple[Status, str | None]:
    """The result's status and error, from why supervision stopped and the exit status."""
    if reason == "timeout":
        limit = _seconds(spec.timeout_s or 0.0)
        return "timeout", f"timed out after {limit}; " + _stop_note(spec, escalated)
    if reason == "interrupted":
        return "interrupted", "interrupted; " + _stop_note(spec, escalated)
    return ("ok" if returncode == 0 else "failed"), _exit_error(returncode)


def _stop_note(spec: CommandSpec, escalated: bool) -> str:
    note = "its process group was sent SIGTERM"
    if escalated:
        note += f", then SIGKILL after {_seconds(spec.kill_grace_s)}"
    return note


def _supervise(
    child: _Child,
    spec: CommandSpec,
    pipes: Mapping[int, _Stream],
    stop: threading.Event | None,
    t0: float,
) -> tuple[str | None, bool, bool]:
    """Pump output until the shell exited and its output closed (or was given up).

    Returns (stop reason or None, whether SIGKILL was needed after the grace, lingering).
    """
    return _Supervisor(child, spec, stop, t0).run(pipes)


class _Supervisor:
    """The state of one :func:`_supervise`: what was sent to the group, and when."""

    def __init__(
        self, child: _Child, spec: CommandSpec, stop: threading.Event | None, t0: float
    ) -> None:
        self.child = child
        self.spec = spec
        self.stop = stop
        self.deadline = t0 + spec.timeout_s if spec.timeout_s is not None else None
        self.reason: str | None = None  # "timeout" or "interrupted" once SIGTERM was sent
        self.term_at = 0.0  # when SIGTERM was sent (meaningful once reason is set)
        self.killed = False  # SIGKILL sent to the group
        self.escalated = False  # ... because the grace period ran out
        self.exited = False
        self.drain_from = 0.0  # when waiting for the pipes to close began (once exited)
        self.poll_step = 0.001
        self.open_pipes = 0

    def run(self, pipes: Mapping[int, _Stream]) -> tuple[str | None, bool, bool]:
        with selectors.DefaultSelector() as sel:
            for fd, stream in pipes.items():
                sel.register(fd, selectors.EVENT_READ, stream)
            self.open_pipes = len(pipes)
            if self.child.pidfd is not None:
                sel.register(self.child.pidfd, selectors.EVENT_READ, None)

            while True:
                now = time.monotonic()
                self._notice_exit(sel, now)
                self._terminate_if_due(now)
                self._kill_if_due(now)
                if self.exited and self.open_pipes == 0:
                    break
                draining = self.exited and (self.reason is None or self.killed)
                if draining and self._give_up_draining(now):
                    return self.reason, self.escalated, True
                self._pump(sel, self._select_timeout(now, draining))
        return self.reason, self.escalated, False

    def _stop_set(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def _notice_exit(self, sel: selectors.BaseSelector, now: float) -> None:
        if not self.exited and self.child.poll_exit():
            self.exited = True
            self.drain_from = now
            if self.child.pidfd is not None:
                sel.unregister(self.child.pidfd)

    def _terminate_if_due(self, now: float) -> None:
        """SIGTERM to the group on stop or timeout, while the shell runs."""
        if self.reason is not None or self.exited:
            return
        if self._stop_set():
            self.reason = "interrupted"
        elif self.deadline is not None and now >= self.deadline:
            self.reason = "timeout"
        if self.reason is not None:
            self.child.signal_group(signal.SIGTERM)
            self.term_at = now

    def _kill_if_due(self, now: float) -> None:
        """SIGKILL to the group once it is done, or when the grace period ran out."""
        if self.reason is None or self.killed:
            return
        done = self.exited and self.open_pipes == 0
        if done or now >= self.term_at + self.spec.kill_grace_s:
            # Whatever of the group survived SIGTERM (or ignored it) dies now.
            self.escalated = not done
            self.child.signal_group(signal.SIGKILL)
            self.killed = True
            self.drain_from = now

    def _give_up_draining(self, now: float) -> bool:
        """Whether to stop waiting for background processes to close the output."""
        if self._stop_set() and self.reason is None:
            # Stopped while waiting for background processes to close the output.
            self.child.signal_group(signal.SIGKILL)
            return True
        return now >= self.drain_from + self.spec.drain_s

    def _select_timeout(self, now: float, draining: bool) -> float | None:
        """How long select may block."""
        waits: list[float] = []
        watch_stop = self.stop is not None and self.reason is None
        if not self.exited:
            if self.deadline is not None and self.reason is None:
                waits.append(self.deadline - now)
            if watch_stop:
                waits.append(_STOP_POLL_S)
            if self.child.pidfd is None:
                waits.append(self.poll_step)
                self.poll_step = min(self.poll_step * 2, _STOP_POLL_S)
        if draining:
            waits.append(self.drain_from + self.spec.drain_s - now)
            if watch_stop:
                waits.append(_STOP_POLL_S)
        if self.reason is not None and not self.killed:
            waits.append(self.term_at + self.spec.kill_grace_s - now)
        return max(min(waits), 0.0) if waits else None

    def _pump(self, sel: selectors.BaseSelector, timeout: float | None) -> None:
        for key, _ in sel.select(timeout):
            stream = key.data
            if stream is None:
                continue  # pidfd readable: the shell exited; noticed at the loop top
            data = os.read(key.fd, _READ_SIZE)
            if data:
                stream.feed(data)
            else:
                sel.unregister(key.fd)
                self.open_pipes -= 1
