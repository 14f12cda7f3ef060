"""Temporary re-export for the package split; removed when importers move.

The engine lives in :mod:`ledger.run` now.
"""

from ledger.run.engine import Runner, RunRequest
from ledger.run.events import (
    RESUMED_REASON,
    STEP_OK,
    STEP_SKIPPED,
    EngineEvents,
    RunOutcome,
    StepEnd,
    StepStart,
    StopSignal,
)
from ledger.run.plan import Plan, PlannedStep, plan_run, prepare_resume
from ledger.run.verified import verify_before_run

__all__ = [
    "RESUMED_REASON",
    "STEP_OK",
    "STEP_SKIPPED",
    "EngineEvents",
    "Plan",
    "PlannedStep",
    "RunOutcome",
    "RunRequest",
    "Runner",
    "StepEnd",
    "StepStart",
    "StopSignal",
    "plan_run",
    "prepare_resume",
    "verify_before_run",
]
