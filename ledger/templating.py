"""Temporary re-export for the package split; removed when importers move.

The templating module now lives in :mod:`ledger.runbook.templating`; engine.py still reads
these names as ``ledger.templating.NAME``.
"""

from ledger.runbook.templating import (
    TemplateProblem,
    is_template,
    parse_expression,
    parse_template,
    references,
)

__all__ = ["TemplateProblem", "is_template", "parse_expression", "parse_template", "references"]
