"""Plans made before a run: the dry run (:func:`plan_run`, everything rendered and redacted,
nothing run) and the resume (:func:`prepare_resume`, what a failed or aborted run left)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ledger.errors import InputError, ResumeRefused, RunbookError, UnknownRun
from ledger.format import records, shapes
from ledger.run.context import (
    TemplateContext,
    render_approval_message,
    render_command,
    render_cwd,
    render_lock,
    should_run,
    step_environment,
)
from ledger.run.events import (
    RESUMED_REASON,
    RUN_ABORTED,
    RUN_FAILED,
    STEP_OK,
    STEP_SKIPPED,
)
from ledger.runbook import (
    ResolvedParams,
    Runbook,
    Step,
    load_runbook,
    resolve_parameters,
    templating,
)
from ledger.store import Ledger, StoredRecord

__all__ = ["CarriedStep", "Plan", "PlannedStep", "ResumePlan", "plan_run", "prepare_resume"]

#: Run statuses ``ledger resume`` continues from.
_RESUMABLE: Final = frozenset({RUN_FAILED, RUN_ABORTED})


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
            command=ctx.redactor().redact_text(command.redacted),
            shell=step.shell,
            cwd=ctx.redactor().redact_text(cwd.redacted) if cwd else None,
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
    return Plan(runbook, params.redacted(), lock.redacted if lock else None, steps, handlers)


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
    view = ledger.trust_view()  # the run's records are read from the verified chain
    if not view.ok and not ledger.allow_unverified:
        raise view.refuse(ledger.path, "no run in it is resumed")
    recs = ledger.run_records(run_id, at=view.head)
    started, finished = _resumable_run(ledger, run_id, recs)
    data = started.data_as(shapes.RunStarted)
    runbook = _same_runbook(run_id, started, runbook_path)
    recorded = data.get("params")
    recorded = recorded if isinstance(recorded, dict) else {}
    params = resolve_parameters(runbook, _resumed_values(runbook, recorded, given), environ)
    trigger = data.get("trigger")
    incident = trigger.get("incident") if isinstance(trigger, dict) else None
    failed_step = finished.data_as(shapes.RunFinished).get("failed_step")
    return ResumePlan(
        run_id=run_id,
        runbook=runbook,
        params=params,
        incident=incident if isinstance(incident, str) else None,
        carried=_carried_steps(run_id, recs),
        status=str(finished.data.get("status", "")),
        failed_step=failed_step if isinstance(failed_step, str) else None,
    )


def _resumable_run(
    ledger: Ledger, run_id: str, recs: list[StoredRecord]
) -> tuple[StoredRecord, StoredRecord]:
    """The run's run.started and last run.finished, if it ended failed or aborted."""
    started = next((r for r in recs if r.kind == records.KIND_RUN_STARTED), None)
    if started is None:
        raise UnknownRun(
            f"the ledger at {ledger.path} has no run {run_id}, so there is nothing to resume.",
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
    return started, finished[-1]


def _same_runbook(run_id: str, started: StoredRecord, runbook_path: Path | None) -> Runbook:
    """The runbook the run ran, loaded again; refused if it is gone or changed."""
    book = started.data.get("runbook")
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
    return runbook


def _resumed_values(
    runbook: Runbook, recorded: dict[str, Any], given: Mapping[str, str] | None
) -> dict[str, object]:
    """The recorded non-secret parameters plus the secrets ``given`` again."""
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
    return values


def _carried_steps(run_id: str, recs: list[StoredRecord]) -> dict[str, CarriedStep]:
    """The main steps whose last step.finished says they succeeded (or were carried)."""
    carried: dict[str, CarriedStep] = {}
    for name, rec in _final_main_steps(recs).items():
        d = rec.data_as(shapes.StepFinished)
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
    return carried
