"""The runbook engine: executes a validated runbook and writes every step to the ledger.

One run is a sequence of signed records (docs/FORMAT.md §5.1):

* ``run.started`` (the runbook's path and SHA-256, its text as the attachment ``runbook``,
  parameters with secrets redacted, operator, trigger, captured environment, tool version,
  the run it resumes);
* for every attempt of every command step, ``step.started`` *before* the command runs
  (write-ahead: the rendered command with secrets redacted) and ``step.finished`` after it
  (status, exit code, duration, captured outputs, stdout/stderr as attachments with their
  size and SHA-256); a step whose ``when`` is false, or that succeeded in the run being
  resumed, gets a single ``step.finished`` with status ``skipped``;
* approval steps: ``step.started`` carries the request, approvers append ``approval``
  records (:mod:`ledger.approvals`), ``step.finished`` carries the decision;
* ``on_failure`` handlers when the run failed, recorded like steps with ``handler: true``;
* ``run.finished`` (status succeeded / failed / aborted / rejected, failed step, duration).

A runner killed outright leaves a run without ``run.finished`` (and possibly a
``step.started`` without its ``step.finished``): visible evidence that it did not end.

Nothing here prints, prompts or exits. Progress goes to an :class:`EngineEvents` observer
(the CLI prints it); a stop request (Ctrl-C, SIGTERM) comes in through a
:class:`threading.Event` the caller sets (use :class:`StopSignal` to carry the signal
number). :meth:`RunOutcome.raise_for_status` turns an unsuccessful outcome into the error
the CLI maps to its exit code.

Secrets never reach the ledger: commands, working directories and messages are rendered
twice (real for execution, redacted for the record), output streams are redacted while they
are read (:mod:`ledger.process`), environment values are not recorded (only the names a
step adds, and the values of the runbook's ``capture_env``), and every string of every
record this module writes passes through a redactor once more before it is appended.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pygit2

from ledger import __version__, records, templating
from ledger.errors import (
    InputError,
    LedgerError,
    LockTimeout,
    ResumeRefused,
    RunbookError,
    RunFailed,
    RunInterrupted,
    RunRejected,
    StorageError,
    UntrustedKey,
    VerificationFailed,
)
from ledger.process import (
    DEFAULT_CAPTURE_BYTES,
    DEFAULT_KILL_GRACE_S,
    CapturedStream,
    CommandResult,
    CommandSpec,
    Redactor,
    StreamName,
    run_command,
)
from ledger.runbook import (
    ResolvedParams,
    Runbook,
    Step,
    TemplateContext,
    attempt_succeeded,
    extract_output,
    load_runbook,
    render_approval_message,
    render_command,
    render_cwd,
    render_lock,
    resolve_parameters,
    should_run,
    step_environment,
)
from ledger.signing import SigningKey
from ledger.store import Appended, Ledger, StoredRecord

__all__ = [
    "LOCKS_DIR",
    "RESUMED_REASON",
    "RUN_ABORTED",
    "RUN_FAILED",
    "RUN_REJECTED",
    "RUN_SUCCEEDED",
    "STEP_FAILED",
    "STEP_INTERRUPTED",
    "STEP_OK",
    "STEP_REJECTED",
    "STEP_SKIPPED",
    "STEP_TIMEOUT",
    "WHEN_REASON",
    "CarriedStep",
    "EngineEvents",
    "Plan",
    "PlannedStep",
    "ResumePlan",
    "RunOutcome",
    "RunRequest",
    "Runner",
    "StepEnd",
    "StepStart",
    "StopSignal",
    "detect_ci",
    "extend_verified_state",
    "plan_run",
    "prepare_resume",
    "run_environment",
    "runbook_lock",
    "trigger_data",
    "verify_before_run",
]

RUN_SUCCEEDED: Final = "succeeded"
RUN_FAILED: Final = "failed"
RUN_ABORTED: Final = "aborted"
RUN_REJECTED: Final = "rejected"

STEP_OK: Final = "ok"
STEP_FAILED: Final = "failed"
STEP_TIMEOUT: Final = "timeout"
STEP_SKIPPED: Final = "skipped"
STEP_INTERRUPTED: Final = "interrupted"
STEP_REJECTED: Final = "rejected"

#: ``reason`` of a step skipped because its ``when`` condition was false.
WHEN_REASON: Final = "when condition is false"
#: ``reason`` of a step skipped by ``ledger resume`` because it succeeded before.
RESUMED_REASON: Final = "succeeded in resumed run"

#: Directory (under ``<gitdir>/ledger-state``) holding the runbook lock files.
LOCKS_DIR: Final = "locks"

#: Variables of the runner's own environment that never reach a step.
_PRIVATE_ENV: Final = frozenset({"LEDGER_KEY_PASSPHRASE"})
#: Run statuses ``ledger resume`` continues from.
_RESUMABLE: Final = frozenset({RUN_FAILED, RUN_ABORTED})


# --------------------------------------------------------------------------- stop signal


class StopSignal(threading.Event):
    """A stop event that remembers the first signal that set it (for exit 128 + N)."""

    def __init__(self) -> None:
        super().__init__()
        self.signum: int | None = None

    def trigger(self, signum: int) -> None:
        """Ask the run to stop because of signal ``signum`` (safe in a signal handler)."""
        if self.signum is None:
            self.signum = signum
        self.set()


def _signum_of(stop: threading.Event) -> int:
    signum = getattr(stop, "signum", None)
    return signum if isinstance(signum, int) else 2


# --------------------------------------------------------------------------- observer


@dataclass(frozen=True)
class StepStart:
    """A step attempt is about to run (its step.started is durable)."""

    step: Step
    attempt: int
    max_attempts: int
    command: str | None
    """The rendered command with secrets redacted; ``None`` for an approval step."""
    handler: bool
    position: int
    """1-based position among the main steps (or among the handlers)."""
    total: int


@dataclass(frozen=True)
class StepEnd:
    """A step attempt ended, or a step was skipped (its step.finished is durable)."""

    step: Step
    attempt: int
    status: str
    exit_code: int | None
    duration_ms: int
    error: str | None
    handler: bool
    reason: str | None = None
    """Why a step was skipped."""
    will_retry: bool = False
    retry_delay_s: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)
    seq: int = 0


class EngineEvents:
    """What a run reports while it goes. Every method does nothing here; the CLI
    subclasses it to print. Methods are called on the thread that runs the engine, except
    :meth:`output`, which is called from the same thread while a command runs."""

    def run_started(self, run_id: str, runbook: Runbook, resumes: str | None) -> None:
        """run.started is durable."""

    def step_started(self, info: StepStart) -> None:
        """A step attempt's step.started is durable; the command starts next."""

    def output(self, stream: StreamName, data: bytes) -> None:
        """A redacted chunk of the running command's stdout or stderr."""

    def step_finished(self, info: StepEnd) -> None:
        """A step attempt's step.finished (or a skip) is durable."""

    def approval_waiting(self, step: Step, message: str | None) -> None:
        """The run waits at an approval step (message redacted)."""

    def approval_progress(self, text: str) -> None:
        """A progress line from the approval wait."""

    def record_appended(self, appended: Appended) -> None:
        """A record of this run is durable (replication hooks in here)."""

    def run_finished(self, outcome: RunOutcome) -> None:
        """run.finished is durable."""


# --------------------------------------------------------------------------- outcome


@dataclass
class RunOutcome:
    """How a run ended."""

    run_id: str
    runbook: str
    status: str
    failed_step: str | None
    duration_ms: int
    error: str | None = None
    """The failed step's error message (redacted)."""
    resumes: str | None = None
    signum: int | None = None
    head: str | None = None
    """The commit id of the run.finished record."""
    records: int = 0
    handlers_failed: list[str] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.status == RUN_SUCCEEDED

    def raise_for_status(self) -> None:
        """Raise the error that stands for an unsuccessful outcome (nothing if it succeeded):
        :class:`RunFailed` (exit 10), :class:`RunRejected` (11), :class:`RunInterrupted`
        (128 + signal number)."""
        if self.status == RUN_SUCCEEDED:
            return
        where = f"at step {self.failed_step!r}" if self.failed_step else "before its first step"
        detail = f": {self.error}" if self.error else ""
        if self.status == RUN_REJECTED:
            raise RunRejected(
                f"run {self.run_id} of {self.runbook!r} was rejected {where}{detail}.",
                hint=f"The decision is recorded; see 'ledger log --run {self.run_id}'.",
            )
        if self.status == RUN_ABORTED:
            raise RunInterrupted(
                f"run {self.run_id} of {self.runbook!r} was interrupted {where}; the step's "
                "processes were stopped and the run is recorded as aborted.",
                signum=self.signum or 2,
                hint=f"Continue it later with 'ledger resume {self.run_id}'.",
            )
        handlers = ""
        if self.handlers_failed:
            handlers = f" The on_failure handler(s) {', '.join(self.handlers_failed)} failed too."
        raise RunFailed(
            f"run {self.run_id} of {self.runbook!r} failed {where}{detail}.{handlers}",
            hint=f"See 'ledger show' / 'ledger log --run {self.run_id}' for its records; once "
            f"the cause is fixed, continue with 'ledger resume {self.run_id}'.",
        )


# --------------------------------------------------------------------------- trigger


def _env(environ: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = environ.get(name)
        if value:
            return value
    return None


def detect_ci(environ: Mapping[str, str]) -> dict[str, str | None] | None:
    """The CI system the run comes from, by its well-known variables, or ``None``.

    Returns ``{"system", "run", "url"}`` (``run``/``url`` ``None`` when unknown).
    """
    if environ.get("GITHUB_ACTIONS") or environ.get("GITHUB_RUN_ID"):
        run = _env(environ, "GITHUB_RUN_ID")
        server = _env(environ, "GITHUB_SERVER_URL") or "https://github.com"
        repo = _env(environ, "GITHUB_REPOSITORY")
        url = f"{server}/{repo}/actions/runs/{run}" if run and repo else None
        return {"system": "github-actions", "run": run, "url": url}
    if environ.get("GITLAB_CI"):
        return {
            "system": "gitlab-ci",
            "run": _env(environ, "CI_PIPELINE_ID", "CI_JOB_ID"),
            "url": _env(environ, "CI_JOB_URL", "CI_PIPELINE_URL"),
        }
    if environ.get("BUILDKITE"):
        return {
            "system": "buildkite",
            "run": _env(environ, "BUILDKITE_BUILD_NUMBER", "BUILDKITE_BUILD_ID"),
            "url": _env(environ, "BUILDKITE_BUILD_URL"),
        }
    if environ.get("CIRCLECI"):
        return {
            "system": "circleci",
            "run": _env(environ, "CIRCLE_BUILD_NUM", "CIRCLE_WORKFLOW_ID"),
            "url": _env(environ, "CIRCLE_BUILD_URL"),
        }
    if environ.get("JENKINS_URL") or environ.get("BUILD_URL"):
        return {
            "system": "jenkins" if environ.get("JENKINS_URL") else "ci",
            "run": _env(environ, "BUILD_NUMBER", "BUILD_ID"),
            "url": _env(environ, "BUILD_URL"),
        }
    if environ.get("CI", "").lower() in ("true", "1", "yes"):
        return {"system": "ci", "run": _env(environ, "BUILD_ID", "CI_BUILD_ID"), "url": None}
    return None


def trigger_data(
    incident: str | None, text: str | None, environ: Mapping[str, str]
) -> dict[str, str | None]:
    """The ``trigger`` object of run.started: what started the run.

    ``source`` is ``ci`` when a CI system is detected, else ``manual``; ``incident`` and
    ``text`` come from ``--incident`` and ``--trigger``; ``ci``, ``ci_run`` and ``ci_url``
    name the CI system, its run and its web page (``None`` when not in CI).
    """
    ci = detect_ci(environ)
    return {
        "source": "ci" if ci else "manual",
        "incident": incident,
        "text": text,
        "ci": ci["system"] if ci else None,
        "ci_run": ci["run"] if ci else None,
        "ci_url": ci["url"] if ci else None,
    }


# --------------------------------------------------------------------------- verification


def verify_before_run(ledger: Ledger) -> int:
    """Verify the ledger before a run appends to it (incrementally from the saved state).

    Returns how many records were checked. Raises :class:`VerificationFailed` listing the
    findings when the ledger does not verify; saves the new verified head otherwise.
    """
    from ledger import verify

    state = verify.load_state(ledger.path)
    result = verify.verify_ledger(ledger.path, since=state)
    if not result.ok:
        lines = "; ".join(f"{f.rule} at seq {f.seq}: {f.message}" for f in result.findings[:5])
        more = len(result.findings) - 5
        if more > 0:
            lines += f"; and {more} more"
        raise VerificationFailed(
            f"the ledger at {ledger.path} does not verify, so no run is appended to it: {lines}.",
            findings=list(result.findings),
            hint="Run 'ledger verify' for the full findings and investigate. To run anyway "
            "(the run's records are then appended to a ledger that failed verification), pass "
            "--allow-unverified.",
        )
    if result.state is not None:
        verify.save_state(ledger.path, result.state)
    return result.records_checked


def extend_verified_state(ledger: Ledger, appended: list[Appended]) -> bool:
    """Move this copy's verified head over the records a run has just appended itself.

    Only when they form an unbroken chain from the verified head: the first one's parent is
    that head, each next one's parent the one before (so nothing else was appended, or
    swapped in, between them), and none of them changes trust. This process computed and
    signed every one of them, so the next run's incremental verification need not read
    them again; a record anyone else wrote is always verified. ``ledger verify`` without
    ``--since-last`` still checks the whole chain. Returns whether the state moved.
    """
    from ledger import verify

    if not appended or any(a.record.get("kind") in records.KEY_KINDS for a in appended):
        return False
    try:
        state = verify.load_state(ledger.path)
        if state is None:
            return False
        expected = state.head
        for done in appended:
            if done.parent != expected:  # (the store names the parent of every append)
                return False
            expected = done.commit_id
        last = appended[-1]
        raw = ledger.repo.odb.read(last.commit_id)[1]
        verify.save_state(
            ledger.path,
            dataclasses.replace(
                state,
                head=last.commit_id,
                seq=last.seq,
                prev_sha256=records.git_object_sha256("commit", raw),
                verified_at=records.format_time(records.utc_now()),
            ),
        )
    except (LedgerError, pygit2.GitError, KeyError, ValueError):
        return False  # the next run verifies these records instead
    return True


# --------------------------------------------------------------------------- lock


def _lock_path(ledger: Ledger, name: str) -> Path:
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()
    return ledger.gitdir / "ledger-state" / LOCKS_DIR / digest


@contextlib.contextmanager
def runbook_lock(
    ledger: Ledger, name: str, run_id: str, *, shown: str | None = None
) -> Iterator[Path]:
    """Hold the runbook lock ``name`` for a run (an ``flock`` on
    ``<gitdir>/ledger-state/locks/<sha256(name)>``), released when the block ends or the
    process dies.

    Fails at once with :class:`LockTimeout` naming the run that holds it: runs never queue
    behind one another silently. ``shown`` is the name as written into the lock file and
    messages (the name with secrets redacted; default ``name``).
    """
    label = name if shown is None else shown
    path = _lock_path(ledger, name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StorageError(
            f"cannot create the runbook lock file {path}: {exc.strerror or exc}.",
            hint="Check the permissions of the ledger's directory.",
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            raise LockTimeout(
                f"the runbook lock {label!r} is held by {holder}; a run holding the same lock "
                "is in progress, so this one does not start.",
                hint="Wait for that run to finish ('ledger status' shows unfinished runs), "
                "then start this one again.",
            ) from None
        info = json.dumps(
            {"lock": label, "run": run_id, "pid": os.getpid(), "host": os.uname().nodename}
        ).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, info + b"\n", 0)
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def _lock_holder(fd: int) -> str:
    try:
        raw = os.pread(fd, 4096, 0)
        info = json.loads(raw.decode("utf-8") or "{}")
    except (OSError, ValueError):
        return "another process"
    if not isinstance(info, dict) or "run" not in info:
        return "another process"
    return f"run {info.get('run')} (pid {info.get('pid')} on {info.get('host')})"


# --------------------------------------------------------------------------- environment


def run_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The base environment of every step: the runner's own, minus its private variables."""
    return {k: v for k, v in environ.items() if k not in _PRIVATE_ENV}


# --------------------------------------------------------------------------- dry run


@dataclass(frozen=True)
class PlannedStep:
    """One step as a dry run shows it (everything redacted)."""

    name: str
    phase: str
    kind: str
    """``command`` or ``approval``."""
    command: str | None
    shell: str | None
    cwd: str | None
    when: str | None
    will_run: bool | None
    """The ``when`` condition's value; ``None`` when it depends on earlier steps."""
    timeout_s: float | None
    max_attempts: int
    continue_on_error: bool
    outputs: list[str]
    env: list[str]
    approval_message: str | None = None
    approvers: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Plan:
    """What a run would do: parameters (redacted), lock, steps and handlers."""

    runbook: Runbook
    params: dict[str, Any]
    lock: str | None
    steps: list[PlannedStep]
    handlers: list[PlannedStep]


def _depends_on_steps(expr: str) -> bool:
    try:
        tree: Any = (
            templating.parse_template(expr)
            if templating.is_template(expr)
            else templating.parse_expression(expr)
        )
    except templating.TemplateProblem:
        return False
    undeclared, _refs = templating.references(tree)
    return bool(undeclared & {"steps", "step", "run"})


def plan_run(
    runbook: Runbook, params: ResolvedParams, *, environ: Mapping[str, str] | None = None
) -> Plan:
    """Render every command, working directory, environment and message of ``runbook``
    without running or writing anything. Outputs of earlier steps read as placeholders
    ``<steps.NAME.outputs.KEY>``. Raises :class:`RunbookError` for anything that cannot be
    rendered."""
    env = os.environ if environ is None else environ
    ctx = TemplateContext(runbook, params, run_id="<run id>", environ=env, dry_run=True)
    lock = render_lock(ctx)
    secrets = params.secrets()
    redactor = Redactor(secrets)

    def one(step: Step) -> PlannedStep:
        ctx.begin(step, 1)
        will_run: bool | None = None
        if step.when is None:
            will_run = True
        elif not _depends_on_steps(step.when):
            will_run = should_run(step, ctx)
        if step.approval is not None:
            message = render_approval_message(step, ctx)
            ctx.finish(step, STEP_OK)
            return PlannedStep(
                name=step.name,
                phase=step.phase,
                kind="approval",
                command=None,
                shell=None,
                cwd=None,
                when=step.when,
                will_run=will_run,
                timeout_s=step.approval.timeout_s,
                max_attempts=1,
                continue_on_error=False,
                outputs=[],
                env=[],
                approval_message=message.redacted if message else None,
                approvers=list(step.approval.approvers),
            )
        command = render_command(step, ctx)
        cwd = render_cwd(step, ctx)
        step_env = step_environment(step, ctx)
        ctx.finish(
            step,
            STEP_OK,
            0,
            {k: f"<steps.{step.name}.outputs.{k}>" for k in step.outputs},
        )
        return PlannedStep(
            name=step.name,
            phase=step.phase,
            kind="command",
            command=redactor.redact_text(command.redacted),
            shell=step.shell,
            cwd=redactor.redact_text(cwd.redacted) if cwd else None,
            when=step.when,
            will_run=will_run,
            timeout_s=step.timeout_s,
            max_attempts=step.max_attempts,
            continue_on_error=step.continue_on_error,
            outputs=list(step.outputs),
            env=sorted(step_env.values),
        )

    steps = [one(s) for s in runbook.steps]
    ctx.failed_step = "<failed step>"
    handlers = [one(s) for s in runbook.on_failure]
    return Plan(runbook, params.redacted(), lock, steps, handlers)


# --------------------------------------------------------------------------- resume


@dataclass(frozen=True)
class CarriedStep:
    """A step that succeeded in the run being resumed: skipped, its outputs carried over."""

    name: str
    exit_code: int | None
    outputs: dict[str, str]
    run: str
    seq: int


@dataclass(frozen=True)
class ResumePlan:
    """What ``ledger resume`` needs: the original run's runbook, parameters, trigger, and
    the steps that succeeded in it."""

    run_id: str
    runbook: Runbook
    params: ResolvedParams
    incident: str | None
    carried: dict[str, CarriedStep]
    status: str
    failed_step: str | None


def _final_main_steps(recs: list[StoredRecord]) -> dict[str, StoredRecord]:
    last: dict[str, StoredRecord] = {}
    for rec in recs:
        if rec.kind != records.KIND_STEP_FINISHED or rec.data.get("handler") is True:
            continue
        name = rec.data.get("step")
        if isinstance(name, str):
            last[name] = rec
    return last


def prepare_resume(
    ledger: Ledger,
    run_id: str,
    *,
    runbook_path: Path | None = None,
    given: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ResumePlan:
    """Everything needed to resume ``run_id``; :class:`ResumeRefused` when it cannot be.

    Refused when the run is unknown, unfinished (its runner may still be running, or was
    killed: there is no record of how it ended), succeeded or was rejected, and when the
    runbook file (recorded path, or ``runbook_path``) is missing or its SHA-256 differs
    from the recorded one. Non-secret parameters are the recorded values; secret ones are
    resolved again from their sources (``from_env``, ``from_file``) or ``given``
    (``-p NAME=VALUE``, only for secrets).
    """
    records.check_run_id(run_id)
    recs = ledger.run_records(run_id)
    started = next((r for r in recs if r.kind == records.KIND_RUN_STARTED), None)
    if started is None:
        raise ResumeRefused(
            f"there is no run {run_id} in the ledger at {ledger.path}.",
            hint="Check the run id ('ledger log --kind run.started' lists runs).",
        )
    finished = [r for r in recs if r.kind == records.KIND_RUN_FINISHED]
    if not finished:
        raise ResumeRefused(
            f"run {run_id} has no run.finished record: it is still running, or its runner "
            "was killed before it could record how the run ended.",
            hint="If its runner is gone, record what happened with 'ledger record' and start "
            "a new run with 'ledger run'.",
        )
    status = str(finished[-1].data.get("status", ""))
    if status not in _RESUMABLE:
        raise ResumeRefused(
            f"run {run_id} ended with status {status!r}; only failed or aborted runs can be "
            "resumed.",
            hint="Start a new run with 'ledger run' instead.",
        )
    data = started.data
    book = data.get("runbook")
    book = book if isinstance(book, dict) else {}
    recorded_sha = str(book.get("sha256", ""))
    path = runbook_path or Path(str(book.get("path", "")))
    try:
        runbook = load_runbook(path)
    except RunbookError as exc:
        raise ResumeRefused(
            f"the runbook of run {run_id} ({path}) cannot be loaded: {exc.message}",
            hint="Pass --runbook PATH to point at the same runbook (same SHA-256) elsewhere.",
        ) from None
    if runbook.sha256 != recorded_sha:
        raise ResumeRefused(
            f"the runbook {path} changed since run {run_id}: its SHA-256 is now "
            f"{runbook.sha256}, the run recorded {recorded_sha}. Resuming would run steps the "
            "run never had.",
            hint="Restore the runbook as it was (the original is attached to the run.started "
            f"record seq {started.seq}: 'ledger show {started.seq} --file runbook'), or start a "
            "new run with 'ledger run'.",
        )
    recorded = data.get("params")
    recorded = recorded if isinstance(recorded, dict) else {}
    values: dict[str, object] = {}
    for name, param in runbook.parameters.items():
        if param.secret:
            continue
        if name in recorded and recorded[name] is not None:
            values[name] = recorded[name]
    for name, value in (given or {}).items():
        declared = runbook.parameters.get(name)
        if declared is not None and not declared.secret:
            raise InputError(
                f"parameter {name!r} is not a secret; a resumed run keeps the recorded value "
                f"({recorded.get(name)!r}).",
                hint="Give -p only for secret parameters, or start a new run with 'ledger run'.",
            )
        values[name] = value
    params = resolve_parameters(runbook, values, environ)
    carried: dict[str, CarriedStep] = {}
    for name, rec in _final_main_steps(recs).items():
        d = rec.data
        ok = d.get("status") == STEP_OK or (
            d.get("status") == STEP_SKIPPED and d.get("reason") == RESUMED_REASON
        )
        if not ok:
            continue
        outputs = d.get("outputs")
        exit_code = d.get("exit_code")
        carried[name] = CarriedStep(
            name=name,
            exit_code=exit_code if isinstance(exit_code, int) else None,
            outputs={str(k): str(v) for k, v in (outputs or {}).items()}
            if isinstance(outputs, dict)
            else {},
            run=run_id,
            seq=rec.seq,
        )
    trigger = data.get("trigger")
    incident = trigger.get("incident") if isinstance(trigger, dict) else None
    failed_step = finished[-1].data.get("failed_step")
    return ResumePlan(
        run_id=run_id,
        runbook=runbook,
        params=params,
        incident=incident if isinstance(incident, str) else None,
        carried=carried,
        status=status,
        failed_step=failed_step if isinstance(failed_step, str) else None,
    )


# --------------------------------------------------------------------------- running


@dataclass
class RunRequest:
    """One run to execute."""

    runbook: Runbook
    params: ResolvedParams
    incident: str | None = None
    trigger: str | None = None
    environ: Mapping[str, str] | None = None
    """The runner's environment (default :data:`os.environ`): steps inherit it, CI is
    detected from it, ``capture_env`` reads it."""
    resumes: str | None = None
    carried: dict[str, CarriedStep] = field(default_factory=dict)
    run_id: str | None = None


@dataclass
class _StepResult:
    status: str
    error: str | None = None


def _stream_meta(stream: CapturedStream) -> dict[str, Any]:
    return {
        "size": stream.size,
        "sha256": stream.sha256,
        "truncated": stream.truncated,
        "omitted": stream.omitted,
    }


def _duration_ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


class Runner:
    """Executes runs on one ledger, signing with one key.

    ``principal`` defaults to the principal the ledger trusts ``key`` as. ``interactive``
    is the approval prompt (see :func:`ledger.approvals.wait_for_approval`); ``None``
    means approvals come only from ``ledger approve``.
    """

    def __init__(
        self,
        ledger: Ledger,
        key: SigningKey,
        *,
        principal: str | None = None,
        events: EngineEvents | None = None,
        stop: threading.Event | None = None,
        interactive: Any = None,
        capture_bytes: int = DEFAULT_CAPTURE_BYTES,
        kill_grace_s: float = DEFAULT_KILL_GRACE_S,
    ) -> None:
        self.ledger = ledger
        self.key = key
        signer = ledger.trusted_signer(key.public_key.fingerprint)
        if signer is None:
            raise UntrustedKey(
                f"the key {key.public_key.fingerprint} is not trusted by the ledger at "
                f"{ledger.path}, so it cannot sign this run's records.",
                hint="Use a trusted key (see 'ledger keys list'), or have a trusted signer add "
                "this one with 'ledger keys add'.",
            )
        self.principal = principal or signer.principal
        self.events = events or EngineEvents()
        self.stop = stop or StopSignal()
        self.interactive = interactive
        self.capture_bytes = capture_bytes
        self.kill_grace_s = kill_grace_s

    # ----- public

    def run(self, request: RunRequest) -> RunOutcome:
        """Execute ``request``; returns how it ended (see :meth:`RunOutcome.raise_for_status`).

        Takes the runbook's lock (if it has one) for the whole run. Errors writing the ledger
        propagate (:class:`StorageError`): a run never goes on without its records.
        """
        run_id = request.run_id or records.new_run_id()
        environ = dict(os.environ if request.environ is None else request.environ)
        ctx = TemplateContext(
            request.runbook,
            request.params,
            run_id=run_id,
            incident=request.incident,
            trigger=request.trigger,
            environ=environ,
        )
        lock_name = render_lock(ctx)
        if lock_name is None:
            run = _Run(self, request, run_id, ctx, environ, None)
            outcome = run.execute()
        else:
            shown = Redactor(request.params.secrets()).redact_text(lock_name)
            with runbook_lock(self.ledger, lock_name, run_id, shown=shown):
                run = _Run(self, request, run_id, ctx, environ, lock_name)
                outcome = run.execute()
        extend_verified_state(self.ledger, run.appended)
        return outcome


class _Run:
    """The state of one run while it executes."""

    def __init__(
        self,
        runner: Runner,
        request: RunRequest,
        run_id: str,
        ctx: TemplateContext,
        environ: dict[str, str],
        lock_name: str | None,
    ) -> None:
        self.r = runner
        self.req = request
        self.book = request.runbook
        self.run_id = run_id
        self.ctx = ctx
        self.environ = environ
        self.lock_name = lock_name
        self.secrets = request.params.secrets()
        self.redactor = Redactor(self.secrets)
        self.base_env = run_environment(environ)
        self.count = 0
        self.head: str | None = None
        self.appended: list[Appended] = []

    # ----- records

    def scrub(self, value: Any) -> Any:
        """Redact every string in a record's data (defence in depth)."""
        if not self.redactor:
            return value
        if isinstance(value, str):
            return self.redactor.redact_text(value)
        if isinstance(value, dict):
            return {self.scrub(k): self.scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.scrub(v) for v in value]
        return value

    def append(
        self,
        kind: str,
        data: Mapping[str, Any],
        *,
        summary: str,
        attachments: Mapping[str, bytes] | None = None,
        incident: str | None = None,
    ) -> Appended:
        done = self.r.ledger.append(
            kind,
            self.scrub(dict(data)),
            key=self.r.key,
            principal=self.r.principal,
            run=self.run_id,
            attachments=attachments,
            summary=self.scrub(summary),
            incident=incident,
        )
        self.count += 1
        self.head = done.commit_id
        self.appended.append(done)
        self.r.events.record_appended(done)
        return done

    def redact(self, text: str | None) -> str | None:
        return None if text is None else self.redactor.redact_text(text)

    # ----- the run

    def execute(self) -> RunOutcome:
        t0 = time.monotonic()
        book = self.book
        data: dict[str, Any] = {
            "runbook": {
                "name": book.name,
                "path": str(book.path.resolve()) if book.path is not None else book.source,
                "sha256": book.sha256,
                "description": book.description,
            },
            "params": self.req.params.redacted(),
            "param_sources": dict(self.req.params.sources),
            "trigger": trigger_data(self.req.incident, self.req.trigger, self.environ),
            "operator": {
                "principal": self.r.principal,
                "user": self.environ.get("USER") or self.environ.get("LOGNAME"),
            },
            "tool_version": f"runbook-ledger {__version__}",
            "env": dict(self.ctx.captured_env),
            "lock": self.lock_name,
            "resumes": self.req.resumes,
            "steps": [s.name for s in book.steps],
            "on_failure": [s.name for s in book.on_failure],
        }
        self.append(
            records.KIND_RUN_STARTED,
            data,
            summary=f"run.started: {book.name}"
            + (f" (resumes {self.req.resumes})" if self.req.resumes else ""),
            attachments={"runbook": book.text},
            incident=self.req.incident,
        )
        self.r.events.run_started(self.run_id, book, self.req.resumes)

        status = RUN_SUCCEEDED
        failed_step: str | None = None
        error: str | None = None
        continued: list[str] = []
        total = len(book.steps)
        for position, step in enumerate(book.steps, 1):
            if self.r.stop.is_set():
                status, failed_step = RUN_ABORTED, step.name
                break
            result = self.step(step, handler=False, position=position, total=total)
            if result.status in (STEP_OK, STEP_SKIPPED):
                continue
            if result.status == STEP_INTERRUPTED:
                status, failed_step, error = RUN_ABORTED, step.name, result.error
                break
            if result.status == STEP_REJECTED:
                status, failed_step, error = RUN_REJECTED, step.name, result.error
                break
            if step.continue_on_error:
                continued.append(step.name)
                continue
            status, failed_step, error = RUN_FAILED, step.name, result.error
            break

        handlers_failed: list[str] = []
        handlers_run: list[str] = []
        if status == RUN_FAILED and book.on_failure:
            self.ctx.failed_step = failed_step
            total = len(book.on_failure)
            for position, handler in enumerate(book.on_failure, 1):
                if self.r.stop.is_set():
                    status = RUN_ABORTED
                    break
                result = self.step(handler, handler=True, position=position, total=total)
                if result.status == STEP_SKIPPED:
                    continue
                handlers_run.append(handler.name)
                if result.status == STEP_INTERRUPTED:
                    status = RUN_ABORTED
                    break
                if result.status != STEP_OK:
                    handlers_failed.append(handler.name)
        signum = _signum_of(self.r.stop) if status == RUN_ABORTED else None
        duration_ms = int((time.monotonic() - t0) * 1000)
        finished = {
            "status": status,
            "failed_step": failed_step,
            "error": self.redact(error),
            "duration_ms": duration_ms,
            "continued_after_failure": continued,
            "handlers_run": handlers_run,
            "handlers_failed": handlers_failed,
            "signal": signum,
            "resumes": self.req.resumes,
        }
        self.append(
            records.KIND_RUN_FINISHED,
            finished,
            summary=f"run.finished: {book.name} {status}"
            + (f" at {failed_step}" if failed_step else ""),
        )
        outcome = RunOutcome(
            run_id=self.run_id,
            runbook=book.name,
            status=status,
            failed_step=failed_step,
            duration_ms=duration_ms,
            error=self.redact(error),
            resumes=self.req.resumes,
            signum=signum,
            head=self.head,
            records=self.count,
            handlers_failed=handlers_failed,
        )
        self.r.events.run_finished(outcome)
        return outcome

    # ----- steps

    def base_data(self, step: Step, handler: bool, attempt: int) -> dict[str, Any]:
        return {
            "step": step.name,
            "index": step.index,
            "phase": step.phase,
            "handler": handler,
            "attempt": attempt,
        }

    def finish(
        self,
        step: Step,
        handler: bool,
        attempt: int,
        status: str,
        *,
        exit_code: int | None = None,
        duration_ms: int = 0,
        error: str | None = None,
        reason: str | None = None,
        outputs: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
        attachments: Mapping[str, bytes] | None = None,
        will_retry: bool = False,
        retry_delay_s: float = 0.0,
    ) -> Appended:
        data = self.base_data(step, handler, attempt)
        data.update(
            {
                "status": status,
                "exit_code": exit_code,
                "duration_ms": duration_ms,
                "error": self.redact(error),
                "outputs": dict(outputs or {}),
            }
        )
        if reason is not None:
            data["reason"] = reason
        if extra:
            data.update(extra)
        done = self.append(
            records.KIND_STEP_FINISHED,
            data,
            summary=f"step.finished: {step.name} {status}"
            + (f" (attempt {attempt})" if attempt > 1 else "")
            + (" [handler]" if handler else ""),
            attachments=attachments,
        )
        self.r.events.step_finished(
            StepEnd(
                step=step,
                attempt=attempt,
                status=status,
                exit_code=exit_code,
                duration_ms=duration_ms,
                error=self.redact(error),
                handler=handler,
                reason=reason,
                will_retry=will_retry,
                retry_delay_s=retry_delay_s,
                outputs=dict(outputs or {}),
                seq=done.seq,
            )
        )
        return done

    def step(self, step: Step, *, handler: bool, position: int, total: int) -> _StepResult:
        carried = None if handler else self.req.carried.get(step.name)
        if carried is not None:
            self.finish(
                step,
                handler,
                0,
                STEP_SKIPPED,
                exit_code=carried.exit_code,
                reason=RESUMED_REASON,
                outputs=carried.outputs,
                extra={"resumed_from": {"run": carried.run, "seq": carried.seq}},
            )
            self.ctx.finish(step, STEP_OK, carried.exit_code, carried.outputs)
            return _StepResult(STEP_OK)
        self.ctx.begin(step, 1)
        try:
            runs = should_run(step, self.ctx)
        except RunbookError as exc:
            self.finish(step, handler, 1, STEP_FAILED, error=exc.message)
            self.ctx.finish(step, STEP_FAILED)
            return _StepResult(STEP_FAILED, exc.message)
        if not runs:
            self.finish(step, handler, 0, STEP_SKIPPED, reason=WHEN_REASON)
            self.ctx.finish(step, STEP_SKIPPED)
            return _StepResult(STEP_SKIPPED)
        if step.approval is not None:
            return self.approval(step, handler=handler, position=position, total=total)
        return self.command(step, handler=handler, position=position, total=total)

    def command(self, step: Step, *, handler: bool, position: int, total: int) -> _StepResult:
        ctx = self.ctx
        last_status = STEP_FAILED
        last_error: str | None = None
        last_exit: int | None = None
        last_outputs: dict[str, str] = {}
        for attempt in range(1, step.max_attempts + 1):
            if attempt > 1 and self.r.stop.wait(step.retry_delay_for(attempt)):
                ctx.finish(step, last_status, last_exit, last_outputs)
                return _StepResult(STEP_INTERRUPTED, "interrupted while waiting to retry")
            ctx.begin(step, attempt)
            try:
                command = render_command(step, ctx)
                cwd = render_cwd(step, ctx)
                env = step_environment(step, ctx)
            except RunbookError as exc:
                self.finish(step, handler, attempt, STEP_FAILED, error=exc.message)
                ctx.finish(step, STEP_FAILED)
                return _StepResult(STEP_FAILED, exc.message)
            started = self.base_data(step, handler, attempt)
            started.update(
                {
                    "type": "command",
                    "max_attempts": step.max_attempts,
                    "command": command.redacted,
                    "shell": step.shell,
                    "cwd": cwd.redacted if cwd is not None else None,
                    "timeout_ms": _duration_ms(step.timeout_s),
                    "env": sorted(env.values),
                }
            )
            self.append(
                records.KIND_STEP_STARTED,
                started,
                summary=f"step.started: {step.name}"
                + (f" (attempt {attempt})" if attempt > 1 else "")
                + (" [handler]" if handler else ""),
            )
            self.r.events.step_started(
                StepStart(
                    step=step,
                    attempt=attempt,
                    max_attempts=step.max_attempts,
                    command=self.redact(command.redacted),
                    handler=handler,
                    position=position,
                    total=total,
                )
            )
            full_env = dict(self.base_env)
            full_env.update(env.values)
            full_env["LEDGER_RUN_ID"] = self.run_id
            full_env["LEDGER_STEP"] = step.name
            full_env["LEDGER_ATTEMPT"] = str(attempt)
            spec = CommandSpec(
                command=command.text,
                shell=step.shell,
                cwd=Path(cwd.text) if cwd is not None else None,
                env=full_env,
                timeout_s=step.timeout_s,
                capture_bytes=self.r.capture_bytes,
                redactions=self.secrets,
                kill_grace_s=self.r.kill_grace_s,
            )
            result = run_command(spec, sink=self.r.events.output, stop=self.r.stop)
            status, error, outputs = self.judge(step, result)
            will_retry = (
                status in (STEP_FAILED, STEP_TIMEOUT)
                and attempt < step.max_attempts
                and not self.r.stop.is_set()
            )
            attachments = {
                name: stream.data
                for name, stream in (("stdout", result.stdout), ("stderr", result.stderr))
                if stream.size
            }
            self.finish(
                step,
                handler,
                attempt,
                status,
                exit_code=result.exit_code,
                duration_ms=result.duration_ms,
                error=error,
                outputs=outputs,
                extra={
                    "signal": result.signal,
                    "stdout": _stream_meta(result.stdout),
                    "stderr": _stream_meta(result.stderr),
                    "lingering": result.lingering,
                    "will_retry": will_retry,
                },
                attachments=attachments,
                will_retry=will_retry,
                retry_delay_s=step.retry_delay_for(attempt + 1) if will_retry else 0.0,
            )
            last_status, last_error, last_exit, last_outputs = (
                status,
                error,
                result.exit_code,
                outputs,
            )
            if not will_retry:
                break
        ctx.finish(step, last_status, last_exit, last_outputs)
        return _StepResult(last_status, last_error)

    def judge(self, step: Step, result: CommandResult) -> tuple[str, str | None, dict[str, str]]:
        """The attempt's status, error and outputs (``until`` and outputs evaluated)."""
        current = self.ctx.current or self.ctx.begin(step, 1)
        current.exit_code = result.exit_code
        current.status = result.status
        if result.status == "interrupted":
            return STEP_INTERRUPTED, result.error, {}
        outputs: dict[str, str] = {}
        problems: list[str] = []
        if result.status == "ok" or step.until is not None:
            for name, spec in step.outputs.items():
                try:
                    outputs[name] = extract_output(
                        step, spec, result.stdout.data, result.stderr.data
                    )
                except RunbookError as exc:
                    problems.append(exc.message)
        current.outputs = dict(outputs)
        if result.status == "timeout":
            return STEP_TIMEOUT, result.error, outputs
        if step.until is not None:
            try:
                ok = attempt_succeeded(step, self.ctx)
            except RunbookError as exc:
                return STEP_FAILED, exc.message, outputs
            if not ok:
                detail = f"; {result.error}" if result.error else ""
                return STEP_FAILED, f"the until condition is false{detail}", outputs
            if problems:
                return STEP_FAILED, "; ".join(problems), outputs
            return STEP_OK, None, outputs
        if result.status != "ok":
            return STEP_FAILED, result.error, outputs
        if problems:
            return STEP_FAILED, "; ".join(problems), outputs
        return STEP_OK, None, outputs

    def approval(self, step: Step, *, handler: bool, position: int, total: int) -> _StepResult:
        from ledger import approvals

        spec = step.approval
        if spec is None:  # pragma: no cover (callers check)
            raise RunbookError(f"step {step.name!r} is not an approval step.")
        try:
            message = render_approval_message(step, self.ctx)
        except RunbookError as exc:
            self.finish(step, handler, 1, STEP_FAILED, error=exc.message)
            self.ctx.finish(step, STEP_FAILED)
            return _StepResult(STEP_FAILED, exc.message)
        shown = self.redact(message.redacted) if message is not None else None
        started = self.base_data(step, handler, 1)
        started["type"] = "approval"
        started.update(approvals.request_data(spec, shown))
        t0 = time.monotonic()
        request = self.append(
            records.KIND_STEP_STARTED,
            started,
            summary=f"step.started: {step.name} (approval)" + (" [handler]" if handler else ""),
        )
        self.r.events.step_started(
            StepStart(
                step=step,
                attempt=1,
                max_attempts=1,
                command=None,
                handler=handler,
                position=position,
                total=total,
            )
        )
        self.r.events.approval_waiting(step, shown)
        try:
            outcome = approvals.wait_for_approval(
                self.r.ledger,
                self.run_id,
                step.name,
                spec,
                stop=self.r.stop,
                interactive=self.r.interactive,
                operator_key=self.r.key,
                request_seq=request.seq,
                notify=self.r.events.approval_progress,
            )
        except StorageError:
            raise
        except LedgerError as exc:
            # The wait itself broke (not a decision): the step fails with the reason.
            self.finish(
                step,
                handler,
                1,
                STEP_FAILED,
                duration_ms=int((time.monotonic() - t0) * 1000),
                error=exc.message,
            )
            self.ctx.finish(step, STEP_FAILED)
            return _StepResult(STEP_FAILED, exc.message)
        status = outcome.step_status
        error: str | None = None
        if outcome.decision == approvals.REJECTED:
            who = outcome.rejected_by.principal if outcome.rejected_by else "an approver"
            error = f"rejected by {who}"
        elif outcome.decision == approvals.TIMEOUT:
            error = (
                f"no decision within the approval timeout ({len(outcome.approvers)} of "
                f"{outcome.required} approvals)"
            )
        elif outcome.decision == approvals.INTERRUPTED:
            error = "interrupted while waiting for approval"
        self.finish(
            step,
            handler,
            1,
            status,
            duration_ms=int((time.monotonic() - t0) * 1000),
            error=error,
            extra=outcome.finished_data(),
        )
        self.ctx.finish(step, status)
        return _StepResult(status, error)
