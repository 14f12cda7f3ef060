"""`ledger approve` and `ledger approvals`: give and list approvals of waiting runs.

The prompt for an operator approving at their own terminal is
:class:`ledger.cli.terminal.TerminalPrompt`.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ledger.cli import common, core


@common.app.command("approve")
def approve_cmd(
    run_id: Annotated[
        str, typer.Argument(help="The waiting run's id.", metavar="RUN_ID", show_default=False)
    ],
    step: Annotated[
        str, typer.Argument(help="The approval step's name.", metavar="STEP", show_default=False)
    ],
    key: common.KeyOpt = None,
    comment: Annotated[
        str, typer.Option("--comment", "-m", help="Why you approve or reject (recorded).")
    ] = "",
    reject: Annotated[
        bool, typer.Option("--reject", help="Reject instead: the run stops at this step.")
    ] = False,
    ledger: common.LedgerOpt = None,
    json_out: common.JsonOpt = False,
    trust_genesis: common.TrustGenesisOpt = None,
    allow_unverified: common.AppendUnverifiedOpt = False,
) -> None:
    """Approve (or --reject) a run waiting at an approval step, signed with your own key.

    The key must be trusted by the ledger and its principal among the step's approvers.
    Exit status 13 when the run is not waiting at STEP or you may not approve it.
    """
    from ledger.run import approvals  # here: 'ledger --help' starts without pygit2

    led = core.open_ledger(ledger)
    core.verify_for_append(led, trust_genesis, allow_unverified, "no approval is recorded in it")
    signing_key = core.signing_key_for(led, key)
    decision: approvals.Decision = approvals.REJECTED if reject else approvals.APPROVED
    done = approvals.record_approval(
        led, run_id, step, key=signing_key, decision=decision, comment=comment
    )
    data = done.record["data"]
    if json_out:
        common.console.out(
            json.dumps(
                {
                    "seq": done.seq,
                    "commit": done.commit_id,
                    "path": done.path,
                    "record": done.record,
                },
                ensure_ascii=False,
                indent=1,
            )
        )
        return
    verb = "Rejected" if reject else "Approved"
    common.console.print(
        f"{verb} step {step!r} of run {run_id} as {data['principal']} "
        f"({data['fingerprint']}): seq {done.seq}, commit {done.commit_id}",
        markup=False,
    )


@common.app.command("approvals")
def approvals_cmd(
    ledger: common.LedgerOpt = None,
    json_out: common.JsonOpt = False,
    allow_unverified: common.ShowUnverifiedOpt = False,
) -> None:
    """Runs waiting at an approval step right now (on the verified chain), with their
    approvers."""
    from ledger.run import approvals  # here: 'ledger --help' starts without pygit2

    led = core.open_verified(ledger, allow_unverified, "no approval request in it is listed")
    pending = approvals.pending_requests(led)
    if json_out:
        common.console.out(
            json.dumps(
                [
                    {
                        "run": r.run_id,
                        "step": r.step,
                        "request_seq": r.seq,
                        "request_commit": r.commit,
                        "approvers": list(r.approvers),
                        "min_approvals": r.min_approvals,
                        "message": r.message,
                        "timeout_ms": r.timeout_ms,
                    }
                    for r in pending
                ],
                ensure_ascii=False,
                indent=1,
            )
        )
        return
    if not pending:
        common.console.print("No run is waiting for an approval.")
        return
    for r in pending:
        common.console.print(
            f"{r.run_id}  {r.step}  needs {r.min_approvals} of: {', '.join(r.approvers)}"
            f"  (request seq {r.seq})",
            markup=False,
        )
        if r.message:
            common.console.print(f"    {r.message}", markup=False)
        common.console.print(
            f"    ledger approve {r.run_id} {r.step} --key KEY [--reject]", markup=False
        )


__all__ = ["approvals_cmd", "approve_cmd"]
