"""Running a runbook: every step executed and written to the ledger as it goes.

- ``context.py``           the template state of one run: rendering, conditions, outputs
- ``engine.py``            Runner and _Run: run.started, main steps, handlers, run.finished
- ``steps.py``             a step to its step.finished: carried, skipped, attempts, approval
- ``journal.py``           the records of one run: appended, redacted once more, counted
- ``unsigned.py``          a run stopped because the agent could not sign its next record
- ``events.py``            statuses, StopSignal, EngineEvents, StepStart/StepEnd, RunOutcome
- ``plan.py``              the dry-run plan (plan_run) and the resume plan (prepare_resume)
- ``trigger.py``           CI detection, the trigger of run.started, the steps' base environment
- ``locks.py``             runbook locks (runbook_lock) and run locks (run_lock)
- ``approvers.py``         approvers rendered from parameters (render_approvers)
- ``abandon.py``           closing a run whose runner is gone (abandon_run)
- ``verified.py``          verify before a run, remember the verified head after it
- ``process.py``           one shell command: process group, timeout, tee, bounded capture
- ``approvals.py``         approval requests, giving approvals, vote checks, the wait
- ``approval_records.py``  what approval records say: decisions, request, votes, outcome

Secrets are redacted by :mod:`ledger.redact`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ledger import lazy

if TYPE_CHECKING:
    from ledger.run.abandon import abandon_run
    from ledger.run.engine import Runner, RunRequest
    from ledger.run.events import (
        RESUMED_REASON,
        RUN_ABANDONED,
        RUN_ABORTED,
        RUN_FAILED,
        RUN_REJECTED,
        RUN_SUCCEEDED,
        STEP_FAILED,
        STEP_INTERRUPTED,
        STEP_OK,
        STEP_REJECTED,
        STEP_SKIPPED,
        STEP_TIMEOUT,
        WHEN_REASON,
        EngineEvents,
        RunOutcome,
        StepEnd,
        StepStart,
        StopSignal,
    )
    from ledger.run.locks import LOCKS_DIR, run_lock, runbook_lock
    from ledger.run.plan import CarriedStep, Plan, PlannedStep, ResumePlan, plan_run, prepare_resume
    from ledger.run.process import StreamName
    from ledger.run.trigger import detect_ci, run_environment, trigger_data

__getattr__, __dir__ = lazy.attach(
    __name__,
    {
        "ledger.run.abandon": ("abandon_run",),
        "ledger.run.engine": ("Runner", "RunRequest"),
        "ledger.run.events": (
            "RESUMED_REASON",
            "RUN_ABANDONED",
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
            "EngineEvents",
            "RunOutcome",
            "StepEnd",
            "StepStart",
            "StopSignal",
        ),
        "ledger.run.locks": ("LOCKS_DIR", "run_lock", "runbook_lock"),
        "ledger.run.plan": (
            "CarriedStep",
            "Plan",
            "PlannedStep",
            "ResumePlan",
            "plan_run",
            "prepare_resume",
        ),
        "ledger.run.process": ("StreamName",),
        "ledger.run.trigger": ("detect_ci", "run_environment", "trigger_data"),
    },
)

__all__ = [
    "LOCKS_DIR",
    "RESUMED_REASON",
    "RUN_ABANDONED",
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
    "StreamName",
    "abandon_run",
    "detect_ci",
    "plan_run",
    "prepare_resume",
    "run_environment",
    "run_lock",
    "runbook_lock",
    "trigger_data",
]
