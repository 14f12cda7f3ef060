"""Runbooks at load time: reading, validation, parameters and templating.

:func:`load_runbook` reads a runbook file and returns a validated :class:`Runbook`, or raises
:class:`RunbookInvalid` listing every problem as ``file:line:column: field.path: message``.
:func:`resolve_parameters` gives the typed values of one run. The run-time state of the
templates (``TemplateContext`` and the renderers) lives in :mod:`ledger.run.context`.

Modules:

* ``model``      -- Runbook, Step, Parameter, ApprovalSpec, OutputSpec, durations, limits
* ``problems``   -- Problem, RunbookInvalid, locations of document paths, message wording
* ``yamlsrc``    -- YAML composer with locations; refuses anchors, aliases, deep nesting
* ``schema``     -- the JSON Schema and its violations as located problems
* ``check``      -- semantic checks the schema cannot express; builds the model
* ``load``       -- parse_runbook, load_runbook
* ``params``     -- resolve_parameters, ResolvedParams, parse_assignments
* ``templating`` -- Jinja sandbox environments, template parsing and references
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ledger.runbook.load import load_runbook, parse_runbook
from ledger.runbook.model import (
    MAX_DEPTH,
    MAX_OUTPUT_CHARS,
    MAX_RUNBOOK_BYTES,
    MIN_SECRET_LENGTH,
    PARAM_ENV_PREFIX,
    ApprovalSpec,
    OutputSpec,
    Parameter,
    Runbook,
    Step,
    parse_duration,
)
from ledger.runbook.params import (
    ResolvedParams,
    parse_assignments,
    resolve_parameters,
)
from ledger.runbook.problems import Problem, RunbookInvalid, format_field
from ledger.runbook.schema import runbook_schema, schema_text

__all__ = [
    "MAX_DEPTH",
    "MAX_OUTPUT_CHARS",
    "MAX_RUNBOOK_BYTES",
    "MIN_SECRET_LENGTH",
    "PARAM_ENV_PREFIX",
    "ApprovalSpec",
    "OutputSpec",
    "Parameter",
    "Problem",
    "ResolvedParams",
    "Runbook",
    "RunbookInvalid",
    "Step",
    "format_field",
    "load_runbook",
    "parse_assignments",
    "parse_duration",
    "parse_runbook",
    "resolve_parameters",
    "runbook_schema",
    "schema_text",
]

# --------------------------------------------------------------------------- temporary shim
# Temporary re-export for the package split; removed when importers move: engine.py still
# imports these run-time names from ledger.runbook. They live in ledger.run.context, which
# imports this package, so they are looked up on first use instead of imported here (an
# import here would run back up a layer and make a cycle). Not part of __all__.

_MOVED_TO_RUN_CONTEXT = frozenset(
    {
        "TemplateContext",
        "attempt_succeeded",
        "extract_output",
        "render_approval_message",
        "render_command",
        "render_cwd",
        "render_lock",
        "should_run",
        "step_environment",
    }
)

if TYPE_CHECKING:
    from ledger.run.context import TemplateContext as TemplateContext
    from ledger.run.context import attempt_succeeded as attempt_succeeded
    from ledger.run.context import extract_output as extract_output
    from ledger.run.context import render_approval_message as render_approval_message
    from ledger.run.context import render_command as render_command
    from ledger.run.context import render_cwd as render_cwd
    from ledger.run.context import render_lock as render_lock
    from ledger.run.context import should_run as should_run
    from ledger.run.context import step_environment as step_environment


def __getattr__(name: str) -> object:
    if name in _MOVED_TO_RUN_CONTEXT:
        return getattr(importlib.import_module("ledger.run.context"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
