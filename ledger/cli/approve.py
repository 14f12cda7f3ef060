"""`ledger approve` and `ledger approvals`: give and list approvals of waiting runs.

Also the terminal prompt the run command passes to :func:`ledger.approvals.wait_for_approval`
when the operator may approve at their own terminal (:class:`TerminalPrompt`).
"""

from __future__ import annotations

import json
import os
import select
import sys
import threading
from typing import Annotated, TextIO

import typer
from rich.markup import escape

from ledger import approvals
from ledger.cli.common import JsonOpt, KeyOpt, LedgerOpt, app, console, console_err
from ledger.cli.core import open_ledger, signing_key_for

_YES = frozenset({"y", "yes", "approve", "approved"})
_NO = frozenset({"n", "no", "reject", "rejected"})


@app.command("approve")
def approve_cmd(
    run_id: Annotated[
        str, typer.Argument(help="The waiting run's id.", metavar="RUN_ID", show_default=False)
    ],
    step: Annotated[
        str, typer.Argument(help="The approval step's name.", metavar="STEP", show_default=False)
    ],
    key: KeyOpt = None,
    comment: Annotated[
        str, typer.Option("--comment", "-m", help="Why you approve or reject (recorded).")
    ] = "",
    reject: Annotated[
        bool, typer.Option("--reject", help="Reject instead: the run stops at this step.")
    ] = False,
    ledger: LedgerOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Approve (or --reject) a run waiting at an approval step, signed with your own key.

    The key must be trusted by the ledger and its principal among the step's approvers.
    Exit status 13 when the run is not waiting at STEP or you may not approve it.
    """
    led = open_ledger(ledger)
    signing_key = signing_key_for(led, key)
    decision: approvals.Decision = approvals.REJECTED if reject else approvals.APPROVED
    done = approvals.record_approval(
        led, run_id, step, key=signing_key, decision=decision, comment=comment
    )
    data = done.record["data"]
    if json_out:
        console.out(
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
    console.print(
        f"{verb} step {step!r} of run {run_id} as {data['principal']} "
        f"({data['fingerprint']}): seq {done.seq}, commit {done.commit_id}",
        markup=False,
    )


@app.command("approvals")
def approvals_cmd(ledger: LedgerOpt = None, json_out: JsonOpt = False) -> None:
    """Runs waiting at an approval step right now, with their approvers."""
    led = open_ledger(ledger)
    pending = approvals.pending_requests(led)
    if json_out:
        console.out(
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
        console.print("No run is waiting for an approval.")
        return
    for r in pending:
        console.print(
            f"{r.run_id}  {r.step}  needs {r.min_approvals} of: {', '.join(r.approvers)}"
            f"  (request seq {r.seq})",
            markup=False,
        )
        if r.message:
            console.print(f"    {r.message}", markup=False)
        console.print(f"    ledger approve {r.run_id} {r.step} --key KEY [--reject]", markup=False)


class TerminalPrompt:
    """Asks the operator at the terminal; an :data:`ledger.approvals.Interactive` callback.

    Reads answers from ``stream`` (standard input) with ``select`` so that :meth:`cancel`
    stops it as soon as the approval is decided elsewhere. An answer is ``y``/``yes`` or
    ``n``/``no``, optionally followed by a comment: ``y checked the dashboards``. End of
    input raises :class:`EOFError` (the run keeps waiting for approvals in the ledger).
    """

    def __init__(self, stream: TextIO | None = None, poll: float = 0.2) -> None:
        self.stream = stream or sys.stdin
        self.poll = poll
        self._cancel = threading.Event()
        self._buffer = b""

    @staticmethod
    def available(stream: TextIO | None = None) -> bool:
        """Whether an operator can answer: standard input is a terminal."""
        s = stream or sys.stdin
        try:
            return s.isatty()
        except ValueError:
            return False

    def cancel(self) -> None:
        self._cancel.set()

    def _readline(self) -> str | None:
        """The next line of input, or ``None`` once cancelled."""
        fd = self.stream.fileno()
        while b"\n" not in self._buffer:
            if self._cancel.is_set():
                return None
            ready, _, _ = select.select([fd], [], [], self.poll)
            if ready:
                raw = os.read(fd, 4096)
                if not raw:
                    if self._buffer:
                        break
                    raise EOFError("end of input")
                self._buffer += raw
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8", errors="replace")

    def __call__(self, question: str) -> tuple[bool, str]:
        console_err.print(f"[bold yellow]{escape(question)}[/]", highlight=False)
        while True:
            console_err.print(
                "Answer y or n, optionally followed by a comment (approvals from other "
                "shells count too): ",
                end="",
            )
            line = self._readline()
            if line is None:
                raise EOFError("the approval was decided elsewhere")
            word, _, rest = line.strip().partition(" ")
            if word.lower() in _YES:
                return True, rest.strip()
            if word.lower() in _NO:
                return False, rest.strip()
