"""`ledger fleet verify`: every ledger of an auditor's fleet copy, verified in parallel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ledger import errors
from ledger.cli import common, fleet
from ledger.cli import remote as cli_remote

if TYPE_CHECKING:
    from ledger.fleet import outcome

JobsOpt = Annotated[
    int | None,
    typer.Option(
        "--jobs",
        "-j",
        callback=common.check_jobs,
        help="Worker processes verifying ledgers at once (at most 256, and never more "
        "than there is work for). Default: the number of CPUs.",
        show_default=False,
    ),
]


@fleet.fleet_app.command("verify")
def verify_cmd(
    fleet_dir: fleet.FleetOpt = None,
    pins: common.PinsOpt = None,
    jobs: JobsOpt = None,
    no_fetch: Annotated[
        bool,
        typer.Option("--no-fetch", help="Verify the copy as it is, without fetching first."),
    ] = False,
    full: Annotated[
        bool,
        typer.Option(
            "--full",
            help="Read every record of every ledger again, not only those after the heads "
            "verified before (which still judge rollbacks): for a copy that may have been "
            "damaged since.",
        ),
    ] = False,
    ssh_key: cli_remote.SshKeyOpt = None,
    insecure_host_key: cli_remote.InsecureOpt = False,
    json_out: common.JsonOpt = False,
) -> None:
    """Verify every ledger of the fleet copy (incrementally) and detect vanished, rolled
    back, forked and new ledgers and witnessed heads no ledger holds."""
    path = fleet.fleet_path(fleet_dir)
    from ledger.fleet import warm

    warm.start_early(path, jobs, full=full)  # (before the imports below: its own overlap them)
    # here: only this command needs the verifier, pygit2 and the worker pool
    from ledger.fleet import audit, copy
    from ledger.replicate import transport

    copy.open_copy(path)  # a clear error when it is not a fleet copy
    fetched = None
    if not no_fetch:
        fetched = copy.fetch(
            path,
            transport.Credentials.from_env(ssh_key=ssh_key, insecure_host_key=insecure_host_key),
        )
        if fetched.failed:
            common.console_err.print(
                f"ledger: warning: {len(fetched.failed)} remote(s) could not be fetched; "
                "verifying what the copy holds from them.",
                highlight=False,
            )
    show_bar = not json_out and common.console_err.is_terminal
    result = _verify(audit, path, pins, jobs, show_bar, full)
    if json_out:
        common.console.out(json.dumps(result.to_json(), indent=1, ensure_ascii=False))
    else:
        _print(result)
    if not result.ok:
        # (the findings' exit code wins; without findings, 6 below)
        fleet.warn_unsaved(result.unsaved)
        failing = result.summary()["findings"]
        where = "in the JSON output" if json_out else "above"
        raise errors.VerificationFailed(
            f"{failing} finding(s) in the fleet, listed {where}.",
            hint="Each finding names its rule (docs/FORMAT.md §9, fleet findings in "
            "docs/FLEET.md); the verified state of a ledger with findings does not move, so "
            "they are found again until resolved.",
        )
    if result.unsaved:
        raise errors.StorageError(
            f"the fleet verified with no finding, but {len(result.unsaved)} file(s) of the "
            f"auditor's state could not be saved; the first: {result.unsaved[0]}",
            hint="Free disk space or fix the state directory's permissions, then verify "
            "again: what was not saved is verified again from the state before.",
        )
    if fetched is not None:
        fetched.raise_for_failures()  # (exit 8: the fleet was verified as it was)


@fleet.fleet_app.command("dismiss")
def dismiss_cmd(
    ledger_id: Annotated[
        str,
        typer.Argument(
            help="The witnessing ledger (a witness finding's by_ledger).", show_default=False
        ),
    ],
    seq: Annotated[
        int,
        typer.Argument(
            min=0, help="Its witness record's seq (the finding's by_seq).", show_default=False
        ),
    ],
    reason: Annotated[
        str,
        typer.Option(
            "--reason",
            help="Why the record's claims are false (kept and shown): one line, at most 500 "
            "characters.",
            show_default=False,
        ),
    ],
    fleet_dir: fleet.FleetOpt = None,
) -> None:
    """Dismiss the claims of one witness record: after an investigation found them false (a
    witness key misused), they stop being findings; the dismissal and its reason are kept in
    your state directory and said at the next verification."""
    path = fleet.fleet_path(fleet_dir)
    from ledger.fleet import audit  # here: only this command needs it

    kept = audit.dismiss_claims(path, ledger_id, seq, reason)
    common.console.print(
        f"Dismissed {kept} claim(s) of ledger {ledger_id}'s witness record at seq {seq}; "
        "'ledger fleet verify' will say so once and no longer report them.",
        markup=False,
    )


def _verify(
    audit: Any, path: Path, pins: Path | None, jobs: int | None, show_bar: bool, full: bool
) -> outcome.FleetResult:
    with common.progress_bar("verifying ledgers", show_bar) as tick:
        result: outcome.FleetResult = audit.verify_fleet(
            path, pins=pins, jobs=jobs, progress=tick, full=full
        )
    for warning in result.warnings:  # (refs of remotes not added here: one line)
        fleet.warn(warning)
    return result


def _clean(text: str | None) -> str:
    """Text from records, shown on one line (no control characters)."""
    return "".join(c if c.isprintable() else "?" for c in text or "-")


def _print(result: outcome.FleetResult) -> None:
    out = common.console
    for led in result.ledgers:
        where = f"seq {led.seq}" if led.seq is not None else "not verified"
        lag = "".join(f", {n} {k} behind" for k, n in sorted(led.lag.items()))
        out.print(
            f"{led.status.upper():<9} {led.ledger_id}  {_clean(led.name)}@{_clean(led.host)}  "
            f"{where}  {led.records_checked} record(s) checked  "
            f"remotes: {', '.join(sorted(led.heads)) or 'none'}{lag}",
            markup=False,
        )
        for f in led.findings:
            kind = "INFO" if getattr(f, "info", False) else "FINDING"
            seq = f"seq {f.seq}" if f.seq is not None else "ledger"
            out.print(f"  {kind} [{f.rule}] {seq}: {_clean(f.message)}", markup=False)
    s = result.summary()
    verdict = "Fleet verified" if s["ok"] else "Fleet verification FAILED"
    by = ", ".join(f"{k} {n}" for k, n in s["by_status"].items())
    info = f" and {s['info']} note(s)" if s["info"] else ""
    out.print(
        f"{verdict}: {s['ledgers']} ledger(s) ({by}), {s['findings']} finding(s){info}, "
        f"{s['records_checked']} record(s) checked with {s['jobs']} job(s).",
        markup=False,
    )
