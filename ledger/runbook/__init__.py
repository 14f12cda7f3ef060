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

from typing import TYPE_CHECKING

from ledger import lazy

if TYPE_CHECKING:
    from ledger.runbook.load import load_runbook, parse_runbook
    from ledger.runbook.model import (
        HANDLER_PHASES,
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

__getattr__, __dir__ = lazy.attach(
    __name__,
    {
        "ledger.runbook.load": ("load_runbook", "parse_runbook"),
        "ledger.runbook.model": (
            "HANDLER_PHASES",
            "MAX_DEPTH",
            "MAX_OUTPUT_CHARS",
            "MAX_RUNBOOK_BYTES",
            "MIN_SECRET_LENGTH",
            "PARAM_ENV_PREFIX",
            "ApprovalSpec",
            "OutputSpec",
            "Parameter",
            "Runbook",
            "Step",
            "parse_duration",
        ),
        "ledger.runbook.params": ("ResolvedParams", "parse_assignments", "resolve_parameters"),
        "ledger.runbook.problems": ("Problem", "RunbookInvalid", "format_field"),
        "ledger.runbook.schema": ("runbook_schema", "schema_text"),
    },
)

__all__ = [
    "HANDLER_PHASES",
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
