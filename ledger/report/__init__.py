"""Incident reports: a Markdown view of the ledger, rendered with Jinja2.

Two stages, kept apart so each can be tested on its own:

1. :func:`build_report` turns the records of one or more runs into a plain data model
   (:class:`Report` -> :class:`RunView` -> :class:`StepView` -> :class:`Attempt`, plus
   approvals and the :class:`Evidence` section). It is a pure function of the records, an
   attachment reader, and what the caller found out about verification and remotes.
2. :func:`render` renders the model with a template: the default ``incident.md.j2`` shipped
   in the package, or a user's template file, always in Jinja2's sandbox with
   ``StrictUndefined``. Every ``{{ value }}`` that did not go through one of the Markdown
   filters (:mod:`ledger.report.mdsafe`) is escaped as inline text, so a template cannot forget.

:func:`report_for` ties both to a :class:`ledger.store.Ledger`: it finds the records of a
run, of an incident (through the tree's incident index) or of a time range (through the
date shards) without walking the history, so its cost does not grow with the ledger.

The output is deterministic: the same ledger and arguments give byte-identical Markdown.
Nothing reads the clock; the report's time is the time of the newest record it shows.

Modules:

- :mod:`~ledger.report.model` -- the data model (dataclasses) a template sees;
- :mod:`~ledger.report.fields` -- lenient readers of record fields;
- :mod:`~ledger.report.build` -- records -> model (pure);
- :mod:`~ledger.report.rendering` -- Jinja2 environment, filters, :func:`render`;
- :mod:`~ledger.report.mdsafe` -- Markdown escaping of untrusted text;
- :mod:`~ledger.report.from_ledger` -- :func:`report_for`: selection, verification, remotes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ledger import lazy

if TYPE_CHECKING:
    from ledger.report.build import EXCERPT_LINES, build_report
    from ledger.report.from_ledger import (
        default_remotes,
        default_verifier,
        report_for,
        skip_verifier,
        write_report,
    )
    from ledger.report.model import (
        Approval,
        Attempt,
        Evidence,
        LedgerInfo,
        OutputExcerpt,
        RecordRef,
        RemoteView,
        Report,
        RunView,
        SignerView,
        StepView,
        Verification,
    )
    from ledger.report.rendering import (
        DEFAULT_TEMPLATE,
        FILTERS,
        TEMPLATES_DIR,
        environment,
        iter_filters,
        render,
    )

__getattr__, __dir__ = lazy.attach(
    __name__,
    {
        "ledger.report.build": ("EXCERPT_LINES", "build_report"),
        "ledger.report.from_ledger": (
            "default_remotes",
            "default_verifier",
            "report_for",
            "skip_verifier",
            "write_report",
        ),
        "ledger.report.model": (
            "Approval",
            "Attempt",
            "Evidence",
            "LedgerInfo",
            "OutputExcerpt",
            "RecordRef",
            "RemoteView",
            "Report",
            "RunView",
            "SignerView",
            "StepView",
            "Verification",
        ),
        "ledger.report.rendering": (
            "DEFAULT_TEMPLATE",
            "FILTERS",
            "TEMPLATES_DIR",
            "environment",
            "iter_filters",
            "render",
        ),
    },
)

__all__ = [
    "DEFAULT_TEMPLATE",
    "EXCERPT_LINES",
    "FILTERS",
    "TEMPLATES_DIR",
    "Approval",
    "Attempt",
    "Evidence",
    "LedgerInfo",
    "OutputExcerpt",
    "RecordRef",
    "RemoteView",
    "Report",
    "RunView",
    "SignerView",
    "StepView",
    "Verification",
    "build_report",
    "default_remotes",
    "default_verifier",
    "environment",
    "iter_filters",
    "render",
    "report_for",
    "skip_verifier",
    "write_report",
]
