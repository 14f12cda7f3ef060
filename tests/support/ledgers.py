"""A ledger ready for running runbooks: an operator key, a work directory, runbooks written
from text; driven in this process through the engine (``EngineEnv``) or as ``ledger``
child processes (``CliEnv``). Plus filters over a run's records, and waiting until a run
asks for approval."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

from ledger.errors import ApprovalRefused, UnknownRun
from ledger.keys import SigningKey
from ledger.run import EngineEvents, Runner, RunOutcome, RunRequest, approvals
from ledger.runbook import Runbook, load_runbook, resolve_parameters
from ledger.store import Ledger, StoredRecord
from ledger.verify import local
from support.cli import CliResult, run_cli
from support.waiting import wait_for

PRINCIPAL = "op@example.com"


class RunbookEnv:
    """``tmp/ledger`` initialised by the operator key (``tmp/op_key``, principal
    ``PRINCIPAL``) and an empty ``tmp/work``. In runbook text, ``@W@`` stands for the work
    directory."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.key = SigningKey.generate(comment=PRINCIPAL)
        self.key_path = tmp / "op_key"
        self.key.save(self.key_path)
        self.path = tmp / "ledger"
        self.initialized = Ledger.init(self.path, name="test", key=self.key, principal=PRINCIPAL)
        # As 'ledger init' does: the creator's machine pins the genesis it wrote.
        local.pin_after_init(self.path, self.initialized.genesis_id)
        self.work = tmp / "work"
        self.work.mkdir()

    @property
    def ledger(self) -> Ledger:
        """The ledger, opened afresh at each use (a child process may have appended)."""
        return Ledger.open(self.path)

    def book_file(self, text: str, name: str = "rb.yaml") -> Path:
        """Write a runbook (dedented, ``@W@`` replaced) into ``tmp``."""
        path = self.tmp / name
        path.write_text(textwrap.dedent(text).replace("@W@", str(self.work)), encoding="utf-8")
        return path

    def recs(self, run_id: str) -> list[StoredRecord]:
        return self.ledger.run_records(run_id)


class EngineEnv(RunbookEnv):
    """Runs runbooks in this process (``Runner``), always through the one ``Ledger`` instance
    that ``init`` returned, which is also what ``ledger`` gives the test."""

    @property
    def ledger(self) -> Ledger:
        return self.initialized

    def book(self, text: str, name: str = "rb.yaml") -> Runbook:
        return load_runbook(self.book_file(text, name))

    def run(
        self,
        book: Runbook,
        params: dict[str, str] | None = None,
        *,
        environ: dict[str, str] | None = None,
        events: EngineEvents | None = None,
        stop: threading.Event | None = None,
        **kw: Any,
    ) -> RunOutcome:
        env = dict(os.environ) if environ is None else environ
        resolved = resolve_parameters(book, params or {}, env)
        runner = Runner(self.ledger, self.key, events=events, stop=stop, **kw)
        return runner.run(RunRequest(runbook=book, params=resolved, environ=env))


class CliEnv(RunbookEnv):
    """Runs ``ledger`` commands as child processes in ``work``, with ``--ledger`` and
    ``--key`` appended; ``ledger`` opens the repository afresh each time."""

    def book(self, text: str, name: str = "rb.yaml") -> Path:
        return self.book_file(text, name)

    def args(self) -> list[str]:
        return ["--ledger", str(self.path), "--key", str(self.key_path)]

    def run(self, *args: str | Path, env: dict[str, str] | None = None) -> CliResult:
        return run_cli(*args, *self.args(), env=env, cwd=self.work)

    def popen(self, *args: str | Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "ledger", *[str(a) for a in args], *self.args()],
            cwd=self.work,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def finished(recs: list[StoredRecord], step: str) -> list[StoredRecord]:
    """The ``step.finished`` records of ``step``."""
    return [r for r in recs if r.kind == "step.finished" and r.data["step"] == step]


def _pending(path: Path, run_id: str | None, step: str | None) -> approvals.ApprovalRequest | None:
    led = Ledger.open(path)
    if run_id is not None and step is not None:
        try:
            return approvals.pending_request(led, run_id, step)
        except (ApprovalRefused, UnknownRun):  # (not asked yet, or the run not started yet)
            return None
    found = [
        r
        for r in approvals.pending_requests(led)
        if run_id in (None, r.run_id) and step in (None, r.step)
    ]
    return found[0] if found else None


def wait_for_request(
    path: Path,
    run_id: str | None = None,
    step: str | None = None,
    *,
    proc: subprocess.Popen[str] | None = None,
    timeout: float = 30.0,
) -> approvals.ApprovalRequest:
    """Until a run of the ledger at ``path`` (``run_id`` if given) waits for approval (at
    ``step`` if given), woken by each append. With ``proc`` (the process running it): also
    woken when it exits, which fails with its output; killed if the wait times out."""
    pending: list[approvals.ApprovalRequest] = []

    def asked() -> bool:
        found = _pending(path, run_id, step)
        pending[:] = [found] if found else []
        return bool(pending) or (proc is not None and proc.poll() is not None)

    try:
        wait_for(
            asked,
            f"the run to wait for approval at {step or 'its approval step'}",
            files=[path / "refs" / "heads"],
            pids=[proc.pid] if proc else [],
            timeout=timeout,
        )
    except AssertionError:
        if proc is not None:
            proc.kill()
        raise
    assert pending, proc.communicate()[0] if proc else "no request"
    return pending[0]
