"""`ledger fleet witness`: append a signed record of the other ledgers' heads that this
ledger's shared remotes hold (runner side; docs/FLEET.md, "Witnessing"). The witness at the
start of ``ledger run`` is ``ledger.cli.run``'s."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape

from ledger import redact
from ledger.cli import common, core, fleet
from ledger.cli import remote as cli_remote

RemoteOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--remote",
        help="Witness only this shared remote (repeatable). Default: every shared remote.",
        show_default=False,
    ),
]


_HELP = (
    "Fetch the other ledgers' heads from this ledger's shared remotes and append a signed "
    "witness record listing them (ledger id, seq, commit and its SHA-256).\n\n"
    "A witness states what it saw; it does not verify the other ledgers (an auditor's "
    "'ledger fleet verify' checks every claim). 'ledger run' witnesses the same way at its "
    "start unless 'git config ledger.witness false'. Exit 8 when a remote cannot be fetched "
    "(nothing is appended), 7 when this ledger does not verify, 14 when it is not pinned."
)


@fleet.fleet_app.command("witness", help=_HELP)
def witness_cmd(
    remote: RemoteOpt = None,
    ledger: common.LedgerOpt = None,
    key: common.KeyOpt = None,
    ssh_key: cli_remote.SshKeyOpt = None,
    insecure_host_key: cli_remote.InsecureOpt = False,
    trust_genesis: common.TrustGenesisOpt = None,
    allow_unverified: common.AppendUnverifiedOpt = False,
    as_json: common.JsonOpt = False,
) -> None:
    """Append a witness record of the shared remotes' other ledgers. See ``_HELP``."""
    from ledger import replicate  # here: 'ledger --help' starts without pygit2
    from ledger.fleet import witness  # (the same)

    led = core.open_ledger(ledger)
    core.verify_for_append(
        led, trust_genesis, allow_unverified, "no witness record is appended to it"
    )
    signing_key = core.signing_key_for(led, key)
    creds = replicate.Credentials.from_env(ssh_key=ssh_key, insecure_host_key=insecure_host_key)
    done = witness.append_witness(led, signing_key, creds, remote or None)
    for line in done.warnings:
        _warn(line)
    if as_json:
        doc = {
            "remotes": done.remotes,
            "ledgers": done.ledgers,
            "heads": [h.as_data() for h in done.heads],
            "records": [{"seq": a.seq, "commit": a.commit_id} for a in done.appended],
            "warnings": [redact.mask_url(w) for w in done.warnings],
        }
        common.console.out(json.dumps(doc, indent=2))
        return
    for h in done.heads:
        common.console.print(f"  {h.ledger}  seq {h.seq}  {h.commit}", highlight=False)
    seqs = ", ".join(str(a.seq) for a in done.appended)
    common.console.print(
        f"Witnessed {done.ledgers} other ledger(s), {len(done.heads)} head(s), on "
        f"{', '.join(done.remotes)}: witness record seq {seqs} "
        f"(commit {done.appended[-1].commit_id})",
        markup=False,
        highlight=False,
    )


def _warn(text: str) -> None:
    common.console_err.print(
        f"[yellow]ledger: warning:[/] {escape(redact.mask_url(text))}",
        highlight=False,
        soft_wrap=True,
    )


__all__ = ["witness_cmd"]
