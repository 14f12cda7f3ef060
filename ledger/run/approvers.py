"""Approvers of an approval step, rendered: an approver may be a template reading the run's
parameters (``approvers: ["{{ params.who }}"]``)."""

from __future__ import annotations

from ledger import errors, runbook
from ledger.run import context as run_context
from ledger.runbook import templating

__all__ = ["render_approvers"]


def render_approvers(step: runbook.Step, context: run_context.TemplateContext) -> list[str]:
    """The approval step's approvers, each rendered from the parameters (an approver may be
    ``{{ params.who }}``). :class:`RunbookError` when one renders empty, to text with
    whitespace or a secret, or to a principal listed twice, or fewer principals remain than
    ``min_approvals`` needs."""
    spec = step.approval
    if spec is None:
        return []
    out: list[str] = []
    for i, source in enumerate(spec.approvers):
        where = run_context.where_in_runbook(context.runbook, step, f"approval.approvers[{i}]")
        if not templating.is_template(source):
            out.append(source)
            continue
        rendered = run_context.render_template(source, context, where=where, names=("params",))
        text, shown = rendered.text.strip(), rendered.redacted.strip()
        problem = None
        if shown != text:
            problem = "renders to a secret parameter's value"
        elif not text or any(c.isspace() for c in text):
            problem = f"renders to {shown!r}, which is not one principal"
        elif text in out:
            problem = f"renders to {shown!r}, which is already an approver"
        if problem is not None:
            raise errors.RunbookError(
                f"{where}: the approver {source!r} {problem}.",
                hint="Give the parameter the principal of a trusted signer (see 'ledger keys "
                "list').",
            )
        out.append(text)
    return out
