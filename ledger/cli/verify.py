"""`ledger verify`: this copy verified against its trust anchors, and optionally its remotes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ledger import errors, store
from ledger.cli import common

if TYPE_CHECKING:
    from ledger.verify import local

JobsOpt = Annotated[
    int | None,
    typer.Option(
        "--jobs",
        callback=common.check_jobs,
        help="Processes that check the records of a long chain (2,000 records or more "
        "to check); default: one per core; at most 256, and never more than there is "
        "work for. The findings are the same for any N.",
        show_default=False,
    ),
]


@common.app.command("verify")
def verify_cmd(
    since_last: Annotated[
        bool, typer.Option("--since-last", help="Verify only records after the last verified head.")
    ] = False,
    trust_genesis: common.TrustGenesisOpt = None,
    pins: common.PinsOpt = None,
    require_pin: Annotated[
        bool,
        typer.Option(
            "--require-pin",
            help="Exit 14 when no genesis is pinned, instead of trusting it on first use.",
        ),
    ] = False,
    remotes: Annotated[
        bool,
        typer.Option(
            "--remotes",
            help="Also fetch every remote and check it is a prefix of ours or ours of it; "
            "fails (exit 8) when a remote cannot be checked.",
        ),
    ] = False,
    skip_remote: Annotated[
        list[str] | None,
        typer.Option(
            "--skip-remote",
            help="With --remotes: a remote that may be skipped when it cannot be checked "
            "(unreachable, authentication, host key). Repeatable.",
            show_default=False,
        ),
    ] = None,
    require_user_presence: Annotated[
        bool,
        typer.Option(
            "--require-user-presence",
            help="A security key's (sk-*) signature made without touching the token is a "
            "finding (exit 7); by default it is accepted and counted, as git accepts it.",
        ),
    ] = False,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show a progress bar on a terminal.")
    ] = True,
    jobs: JobsOpt = None,
    ledger: common.LedgerOpt = None,
    json_out: common.JsonOpt = False,
) -> None:
    """Verify signatures, trust, chain and tree of every record; report every finding."""
    path = _ledger_path(ledger, jobs, since_last)
    store.Ledger.open(path)  # a clear error when there is no ledger
    if skip_remote and not remotes:
        raise errors.UsageError("--skip-remote only applies with --remotes.")
    show_bar = progress and not json_out and common.console_err.is_terminal
    from ledger.verify import local  # here: only 'ledger verify' needs the verifier

    anchors = local.Anchors.given(trust_genesis, pins)
    outcome = _verify_local(
        path,
        anchors,
        since_last,
        show_bar,
        remember=not require_pin,
        require_user_presence=require_user_presence,
        jobs=jobs,
    )
    result = outcome.result
    check = None
    if remotes:
        from ledger.cli import remote

        check = remote.check_for_verify(path, result, skip_remote or [])
    _show(outcome, check, json_out, since_last)
    _raise_for(outcome, check, path, require_pin, json_out)


def _ledger_path(ledger: Path | None, jobs: int | None, since_last: bool) -> Path:
    """The ledger's path; for a whole long chain the workers' server starts now, before
    the verifier is loaded (:mod:`ledger.verify.warmup`, light to import)."""
    path = common.find_ledger_path(ledger)
    if not since_last:
        from ledger.verify import warmup

        warmup.start_early(path, jobs)
    return path


def _show(outcome: local.LocalVerification, check: Any, json_out: bool, since_last: bool) -> None:
    result = outcome.result
    if json_out:
        doc = result.to_json()
        doc["pinned_now"] = outcome.pinned_now
        doc["pin_source"] = outcome.pin_source
        doc["state_saved"] = outcome.remembered
        if check is not None:
            doc["remotes"] = [s.to_json() for s in check.states]
            doc["remotes_unchecked"] = check.unchecked
            doc["remotes_skipped"] = check.skipped
            doc["ok"] = bool(doc["ok"]) and not check.failed
        common.console.out(json.dumps(doc, indent=1, ensure_ascii=False))
        return
    _print_verification(result, outcome.pinned_now, since_last)
    if check is not None:
        check.print()


def _raise_for(
    outcome: local.LocalVerification, check: Any, path: Path, require_pin: bool, json_out: bool
) -> None:
    """The verdict as an exit code: findings (7), an unchecked remote (8), no pin (14)."""
    result = outcome.result
    if not result.ok:
        where = "in the JSON output" if json_out else "above"
        raise errors.VerificationFailed(
            f"{len(result.findings)} finding(s), listed {where}.",
            findings=list(result.findings),
            hint="Each finding names the rule of docs/FORMAT.md §9 that it breaks.",
        )
    if check is not None:
        check.raise_if_failed()
    if require_pin and outcome.pin_source is None:
        raise errors.GenesisNotPinned(
            f"no genesis is pinned for the ledger at {path} (genesis {result.genesis}, "
            f"ledger id {result.ledger_id}); it was not pinned now (--require-pin).",
            hint="Compare the genesis with the ledger's owner, then pin it: 'ledger verify' "
            "without --require-pin, --trust-genesis, $LEDGER_TRUST_GENESIS or --pins FILE.",
        )


def _verify_local(
    path: Path,
    anchors: local.Anchors,
    since_last: bool,
    show_bar: bool,
    *,
    remember: bool,
    require_user_presence: bool,
    jobs: int | None = None,
) -> local.LocalVerification:
    """Verify this copy (:func:`ledger.verify.local.verify_local`), with a progress bar on stderr
    when ``show_bar``."""
    from ledger.verify import local

    with common.progress_bar("verifying", show_bar) as tick:
        return local.verify_local(
            path,
            anchors=anchors,
            since_last=since_last,
            progress=tick,
            remember=remember,
            require_user_presence=require_user_presence,
            jobs=jobs,
        )


def _print_verification(result: Any, pinned_now: bool, since_last: bool) -> None:
    for f in result.findings:
        where = f"seq {f.seq}" if f.seq is not None else "ledger"
        commit = f" commit {f.commit}" if f.commit else ""
        common.console.print(f"FINDING [{f.rule}] {where}{commit}: {f.message}", markup=False)
    scope = (
        f"{result.records_checked} new record(s)"
        if since_last
        else f"{result.records_checked} record(s)"
    )
    if result.ok:
        common.console.print(f"Verified {scope}: head seq {result.seq}, commit {result.head}.")
        if result.without_presence:
            common.console.print(
                f"{result.without_presence} record(s) signed by a security key without user "
                "presence (the token was not touched); --require-user-presence refuses them.",
                highlight=False,
            )
        if not result.genesis_pinned:
            now = (
                "it is pinned now (trust on first use)"
                if pinned_now
                else "it was not pinned now either"
            )
            common.console.print(
                f"[bold yellow]NOT PINNED:[/] genesis {result.genesis} (ledger "
                f"{result.ledger_id}) was not pinned on this machine; {now}. Compare it "
                "with the ledger's owner.",
                highlight=False,
            )
        elif result.genesis_pinned:
            common.console.print(f"Genesis {result.genesis} matches the pinned genesis.")
    else:
        common.console.print(
            f"Verification FAILED: {len(result.findings)} finding(s) over {scope}."
        )
