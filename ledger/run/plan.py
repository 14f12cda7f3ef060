"""Plans made before a run: the dry run (:func:`plan_run`, everything rendered and redacted,
nothing run) and the resume (:func:`prepare_resume`, what a failed, aborted, abandoned or
unfinished run left, and where to restart)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ledger import errors, store
from ledger import runbook as ledger_runbook
from ledger.format import records, shapes
from ledger.run import approvers as run_approvers
from ledger.run import context, events
from ledger.runbook import templating

__all__ = ["CarriedStep", "Plan", "PlannedStep", "ResumePlan", "plan_run", "prepare_resume"]

#: Run statuses ``ledger resume`` continues from.
_RESUMABLE: Final = frozenset({events.RUN_FAILED, events.RUN_ABORTED, events.RUN_ABANDONED})


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
    """What a run would do: parameters (redacted), lock, steps and handlers (``handlers``
    are the ``on_failure`` ones)."""

    runbook: ledger_runbook.Runbook
    params: dict[str, Any]
    lock: str | None
    steps: list[PlannedStep]
    handlers: list[PlannedStep]
    on_cancel: list[PlannedStep] = field(default_factory=list)
    always: list[PlannedStep] = field(default_factory=list)


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
    runbook: ledger_runbook.Runbook,
    params: ledger_runbook.ResolvedParams,
    *,
    environ: Mapping[str, str] | None = None,
) -> Plan:
    """Render every command, working directory, environment and message of ``runbook``
    without running or writing anything. Outputs of earlier steps read as placeholders
    ``<steps.NAME.outputs.KEY>``. Raises :class:`RunbookError` for anything that cannot be
    rendered."""
    env = os.environ if environ is None else environ
    ctx = context.TemplateContext(runbook, params, run_id="<run id>", environ=env, dry_run=True)
    lock = context.render_lock(ctx)

    def one(step: ledger_runbook.Step) -> PlannedStep:
        ctx.begin(step, 1)
        will_run: bool | None = None
        if step.when is None:
            will_run = True
        elif not _depends_on_steps(step.when):
            will_run = context.should_run(step, ctx)
        if step.approval is not None:
            message = context.render_approval_message(step, ctx)
            ctx.finish(step, events.STEP_OK)
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
                approvers=run_approvers.render_approvers(step, ctx),
            )
        command = context.render_command(step, ctx)
        cwd = context.render_cwd(step, ctx)
        step_env = context.step_environment(step, ctx)
        ctx.finish(
            step,
            events.STEP_OK,
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
    on_cancel = [one(s) for s in runbook.on_cancel]
    always = [one(s) for s in runbook.always]
    shown_lock = lock.redacted if lock else None
    return Plan(runbook, params.redacted(), shown_lock, steps, handlers, on_cancel, always)


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
    runbook: ledger_runbook.Runbook
    params: ledger_runbook.ResolvedParams
    incident: str | None
    carried: dict[str, CarriedStep]
    status: str
    """The run's run.finished status, or ``unfinished``."""
    failed_step: str | None
    resume_from: str | None = None
    """The step named with ``--from``: it and every later step run again."""
    unfinished_steps: list[str] = field(default_factory=list)
    """Steps whose step.started has no step.finished, described for the operator."""
    handlers_ran: list[str] = field(default_factory=list)


def _final_main_steps(recs: list[store.StoredRecord]) -> dict[str, store.StoredRecord]:
    last: dict[str, store.StoredRecord] = {}
    for rec in recs:
        if rec.kind != records.KIND_STEP_FINISHED or rec.data.get("handler") is True:
            continue
        name = rec.data.get("step")
        if isinstance(name, str):
            last[name] = rec
    return last


def _unfinished_steps(recs: list[store.StoredRecord]) -> list[store.StoredRecord]:
    """step.started records with no later step.finished of the same step and attempt (the
    write-ahead evidence of a step whose runner stopped while it ran: killed, crashed, or
    unable to write the step's end, as on a full disk)."""
    open_: dict[tuple[object, object, object], store.StoredRecord] = {}
    for rec in recs:
        key = (rec.data.get("step"), rec.data.get("phase"), rec.data.get("attempt"))
        if rec.kind == records.KIND_STEP_STARTED:
            open_[key] = rec
        elif rec.kind == records.KIND_STEP_FINISHED:
            open_.pop(key, None)
    return sorted(open_.values(), key=lambda r: r.seq)


def _describe_unfinished(rec: store.StoredRecord) -> str:
    d = rec.data
    what = f"step {d.get('step')!r} attempt {d.get('attempt')} (seq {rec.seq}, {rec.time})"
    command = d.get("command")
    return f"{what}: {command}" if isinstance(command, str) else what


def _handlers_ran(recs: list[store.StoredRecord]) -> list[str]:
    """Handlers that ran (or started) in the run, in order."""
    names: list[str] = []
    for rec in recs:
        if rec.kind not in (records.KIND_STEP_STARTED, records.KIND_STEP_FINISHED):
            continue
        name = rec.data.get("step")
        if rec.data.get("handler") is not True or rec.data.get("status") == events.STEP_SKIPPED:
            continue
        if isinstance(name, str) and name not in names:
            names.append(name)
    return names


def prepare_resume(
    ledger: store.Ledger,
    run_id: str,
    *,
    runbook_path: Path | None = None,
    given: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    from_step: str | None = None,
    runner_gone: bool = False,
    rerun_unfinished: bool = False,
) -> ResumePlan:
    """Everything needed to resume ``run_id``; :class:`ResumeRefused` when it cannot be.

    Refused when the run is unknown, succeeded or was rejected; when the runbook file
    (recorded path, or ``runbook_path``) is missing or its SHA-256 differs from the recorded
    one; when handlers ran (they may have undone the earlier steps) and no ``from_step``
    names the restart point; when the run did not finish (no run.finished) unless
    ``runner_gone`` (pass it only while holding :func:`~ledger.run.locks.run_lock` of the
    run); and when a step of it started but never finished, unless ``from_step`` or
    ``rerun_unfinished``. With ``from_step`` the main steps before it that succeeded are
    carried and it and every later step run again. Non-secret parameters are the recorded
    values; secret ones are resolved again from their sources (``from_env``,
    ``from_file``) or ``given`` (``-p NAME=VALUE``, only for secrets).
    """
    records.check_run_id(run_id)
    view = ledger.trust_view()  # the run's records are read from the verified chain
    if not view.ok and not ledger.allow_unverified:
        raise view.refuse(ledger.path, "no run in it is resumed")
    recs = ledger.usable_run_records(run_id, at=view.head)
    started, finished = _resumable_run(ledger, run_id, recs, runner_gone)
    data = started.data_as(shapes.RunStarted)
    runbook = _same_runbook(run_id, started, runbook_path)
    recorded = data.get("params")
    recorded = recorded if isinstance(recorded, dict) else {}
    params = ledger_runbook.resolve_parameters(
        runbook, _resumed_values(runbook, recorded, given), environ
    )
    trigger = data.get("trigger")
    incident = trigger.get("incident") if isinstance(trigger, dict) else None
    failed_step = (
        finished.data_as(shapes.RunFinished).get("failed_step") if finished is not None else None
    )
    handlers = _handlers_ran(recs)
    unfinished = [_describe_unfinished(r) for r in _unfinished_steps(recs)]
    if from_step is None:
        _check_plain_resume(run_id, handlers, unfinished, rerun_unfinished, failed_step)
        carried = _carried_steps(run_id, recs)
    else:
        carried = _carried_before(run_id, recs, runbook, from_step)
    return ResumePlan(
        run_id=run_id,
        runbook=runbook,
        params=params,
        incident=incident if isinstance(incident, str) else None,
        carried=carried,
        status=str(finished.data.get("status", "")) if finished is not None else "unfinished",
        failed_step=failed_step if isinstance(failed_step, str) else None,
        resume_from=from_step,
        unfinished_steps=unfinished,
        handlers_ran=handlers,
    )


def _check_plain_resume(
    run_id: str,
    handlers: list[str],
    unfinished: list[str],
    rerun_unfinished: bool,
    failed_step: object,
) -> None:
    """A resume without ``--from``: refused after handlers, or over an unfinished step."""
    if handlers:
        where = f" at step {failed_step!r}" if isinstance(failed_step, str) else ""
        raise errors.ResumeRefused(
            f"run {run_id} ran its handlers ({', '.join(handlers)}) after it stopped{where}; "
            "they may have undone what the earlier steps did, so carrying those steps over "
            "would report a success that did not happen.",
            hint=f"Name the step to restart from: 'ledger resume {run_id} --from STEP' (the "
            "steps before it that succeeded are carried over, it and every later step run "
            "again).",
        )
    if unfinished and not rerun_unfinished:
        raise errors.ResumeRefused(
            f"run {run_id} has a step that started and never finished (its runner stopped "
            "before it could record the step's end: killed, crashed, or out of disk space): "
            f"{'; '.join(unfinished)}. It may have done part of its work.",
            hint=f"Check what it did, then run it again with 'ledger resume {run_id} "
            "--rerun-unfinished', or restart from an earlier step with --from STEP.",
        )


def _resumable_run(
    ledger: store.Ledger, run_id: str, recs: list[store.StoredRecord], runner_gone: bool
) -> tuple[store.StoredRecord, store.StoredRecord | None]:
    """The run's run.started and last run.finished (``None`` for an unfinished run whose
    runner is gone), if it may be resumed."""
    started = next((r for r in recs if r.kind == records.KIND_RUN_STARTED), None)
    if started is None:
        raise errors.UnknownRun(
            f"the ledger at {ledger.path} has no run {run_id}, so there is nothing to resume.",
            hint="Check the run id ('ledger log --kind run.started' lists runs).",
        )
    finished = [r for r in recs if r.kind == records.KIND_RUN_FINISHED]
    if not finished:
        if runner_gone:
            return started, None
        raise errors.ResumeRefused(
            f"run {run_id} has no run.finished record: it is still running, or its runner "
            "was killed before it could record how the run ended.",
            hint=f"'ledger resume {run_id}' resumes it once no process runs it; 'ledger "
            f"abandon {run_id} --reason TEXT' closes it.",
        )
    status = str(finished[-1].data.get("status", ""))
    if status not in _RESUMABLE:
        raise errors.ResumeRefused(
            f"run {run_id} ended with status {status!r}; only failed, aborted or abandoned "
            "runs can be resumed.",
            hint="Start a new run with 'ledger run' instead.",
        )
    return started, finished[-1]


def _same_runbook(
    run_id: str, started: store.StoredRecord, runbook_path: Path | None
) -> ledger_runbook.Runbook:
    """The runbook the run ran, loaded again; refused if it is gone or changed."""
    book = started.data.get("runbook")
    book = book if isinstance(book, dict) else {}
    recorded_sha = str(book.get("sha256", ""))
    path = runbook_path or Path(str(book.get("path", "")))
    try:
        runbook = ledger_runbook.load_runbook(path)
    except errors.RunbookError as exc:
        raise errors.ResumeRefused(
            f"the runbook of run {run_id} ({path}) cannot be loaded: {exc.message}",
            hint="Pass --runbook PATH to point at the same runbook (same SHA-256) elsewhere.",
        ) from None
    if runbook.sha256 != recorded_sha:
        raise errors.ResumeRefused(
            f"the runbook {path} changed since run {run_id}: its SHA-256 is now "
            f"{runbook.sha256}, the run recorded {recorded_sha}. Resuming would run steps the "
            "run never had.",
            hint="Restore the runbook as it was (the original is attached to the run.started "
            f"record seq {started.seq}: 'ledger show {started.seq} --file runbook'), or start a "
            "new run with 'ledger run'.",
        )
    return runbook


def _resumed_values(
    runbook: ledger_runbook.Runbook, recorded: dict[str, Any], given: Mapping[str, str] | None
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
            raise errors.InputError(
                f"parameter {name!r} is not a secret; a resumed run keeps the recorded value "
                f"({recorded.get(name)!r}).",
                hint="Give -p only for secret parameters, or start a new run with 'ledger run'.",
            )
        values[name] = value
    return values


def _carried_before(
    run_id: str, recs: list[store.StoredRecord], runbook: ledger_runbook.Runbook, from_step: str
) -> dict[str, CarriedStep]:
    """The steps before ``from_step`` carried over; refused when ``from_step`` is not a main
    step, or a step before it did not succeed (or was not skipped by its ``when``)."""
    names = [s.name for s in runbook.steps]
    if from_step not in names:
        raise errors.ResumeRefused(
            f"--from {from_step!r}: the runbook {runbook.name!r} has no main step of that "
            f"name (its steps: {', '.join(names)}).",
            hint="Name one of its steps; handlers cannot be restart points.",
        )
    carried = _carried_steps(run_id, recs)
    final = _final_main_steps(recs)
    before = names[: names.index(from_step)]
    for name in before:
        rec = final.get(name)
        if name in carried or (rec is not None and rec.data.get("status") == events.STEP_SKIPPED):
            continue
        status = rec.data.get("status") if rec is not None else "never ran"
        raise errors.ResumeRefused(
            f"--from {from_step!r}: step {name!r}, which comes before it, did not succeed in "
            f"run {run_id} ({status}), so it cannot be carried over.",
            hint=f"Restart from {name!r} or an earlier step.",
        )
    return {name: carried[name] for name in before if name in carried}


def _carried_steps(run_id: str, recs: list[store.StoredRecord]) -> dict[str, CarriedStep]:
    """The main steps whose last step.finished says they succeeded (or were carried)."""
    carried: dict[str, CarriedStep] = {}
    for name, rec in _final_main_steps(recs).items():
        d = rec.data_as(shapes.StepFinished)
        ok = d.get("status") == events.STEP_OK or (
            d.get("status") == events.STEP_SKIPPED and d.get("reason") == events.RESUMED_REASON
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
