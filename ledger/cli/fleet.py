"""Fleet commands (the auditor's side of docs/FLEET.md): ``ledger fleet clone``, ``remote
add``, ``fetch`` and ``status``. Other fleet commands register on :data:`fleet_app` from
their own modules, imported at the end of this one."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ledger import errors, fleet, redact, replicate
from ledger.cli import common
from ledger.cli import remote as cli_remote

fleet_app: typer.Typer = typer.Typer(
    help="An auditor's copy of every ledger of shared remotes (docs/FLEET.md).",
    no_args_is_help=True,
)
common.app.add_typer(fleet_app, name="fleet")

fleet_remote_app: typer.Typer = typer.Typer(
    help="Manage the shared remotes of a fleet copy.", no_args_is_help=True
)
fleet_app.add_typer(fleet_remote_app, name="remote")

ENV_FLEET = "LEDGER_FLEET"  # (ledger.fleet.copy.ENV_FLEET: not imported, for start-up time)

FleetOpt = Annotated[
    str | None,  # (not a Path, which turns '' into '.': see fleet_path)
    typer.Option(
        "--fleet",
        help=f"The fleet copy. Default: ${ENV_FLEET}, else the current directory.",
        show_default=False,
    ),
]
RemoteNameOpt = Annotated[
    str,
    typer.Option("--name", help="Name of the shared remote in the copy.", show_default=True),
]


def fleet_path(explicit: str | None) -> Path:
    """Where the fleet copy is: ``--fleet``, ``$LEDGER_FLEET``, else the current directory.
    An empty ``--fleet`` is refused (it would quietly mean the current directory); an empty
    ``$LEDGER_FLEET`` is unset, as an empty ``$LEDGER_DIR`` is."""
    if explicit is not None:
        if not explicit.strip():
            raise errors.InputError(
                "--fleet is empty.",
                hint="Name the fleet copy's directory (--fleet . for the current one), or "
                f"leave --fleet out to use ${ENV_FLEET}, else the current directory.",
            )
        return Path(explicit)
    env = os.environ.get(ENV_FLEET)
    return Path(env) if env else Path.cwd()


def _creds(ssh_key: Path | None, insecure: bool) -> replicate.Credentials:
    return replicate.Credentials.from_env(ssh_key=ssh_key, insecure_host_key=insecure)


def warn(text: str) -> None:
    """One warning line on stderr (URL passwords masked)."""
    common.console_err.print(
        f"[yellow]ledger: warning:[/] {escape(redact.mask_url(text))}",
        highlight=False,
        soft_wrap=True,
    )


def warn_unsaved(unsaved: Sequence[str]) -> None:
    """One warning when a verification could not save the auditor's state (``unsaved``:
    its messages): the verdict stands, and what was not saved is verified again."""
    if unsaved:
        more = f" (and {len(unsaved) - 1} more)" if len(unsaved) > 1 else ""
        warn(
            f"the verification stands, but the auditor's state could not be saved{more}: "
            f"{unsaved[0]} What was not saved is verified again next time; free disk space "
            "or fix the state directory's permissions."
        )


def print_fetch(result: fleet.FetchResult) -> None:
    """One line per ledger that changed, per ignored ref, per remote; then a summary."""
    for change in result.changes:
        common.console.print(change.line(), markup=False)
    for r in result.remotes:
        for ref in r.ignored:
            common.console.print(
                f"{r.name}: ignored {ref} (not refs/ledgers/<32 hex>/main)", markup=False
            )
    for r in result.remotes:
        line = r.line(result.changes)
        if r.error is not None:
            common.console.print(f"[bold red]{escape(line)}[/]", highlight=False)
        else:
            common.console.print(line, markup=False)
    common.console.print(result.summary(), markup=False)
    for w in result.warnings:
        warn(w)


@fleet_app.command("clone")
def clone_cmd(
    url: Annotated[
        str, typer.Argument(help="URL of a shared remote (ledger remote init --shared).")
    ],
    # (a str, not a Path: Path turns '' into '.', and the library refuses it as typed)
    path: Annotated[str, typer.Argument(help="A new (or empty) directory for the copy.")],
    name: RemoteNameOpt = "origin",
    ssh_key: cli_remote.SshKeyOpt = None,
    insecure_host_key: cli_remote.InsecureOpt = False,
) -> None:
    """Make a fleet copy of every ledger of a shared remote.

    Nothing is verified yet (run 'ledger fleet verify'); nothing is left at PATH if it fails."""
    result = fleet.clone(url, path, name, _creds(ssh_key, insecure_host_key))
    common.console.print(
        f"Cloned the shared remote {redact.mask_url(url)} into the fleet copy {path} "
        f"(remote {name})",
        markup=False,
    )
    print_fetch(result)


@fleet_remote_app.command("add")
def remote_add_cmd(
    name: Annotated[str, typer.Argument(help="Name of the shared remote, e.g. mirror.")],
    url: Annotated[
        str,
        typer.Argument(
            help="A path, file://, git://, ssh://, user@host:path, http:// or https:// URL."
        ),
    ],
    fleet_dir: FleetOpt = None,
) -> None:
    """Add another shared remote to a fleet copy (fetched by the next 'ledger fleet fetch')."""
    shown = fleet.add_remote(fleet_path(fleet_dir), name, url)
    common.console.print(f"Added shared remote {name}: {shown}", markup=False)


@fleet_app.command("fetch")
def fetch_cmd(
    fleet_dir: FleetOpt = None,
    remote: Annotated[
        list[str] | None,
        typer.Option("--remote", help="Fetch only this remote (repeatable; default: all)."),
    ] = None,
    ssh_key: cli_remote.SshKeyOpt = None,
    insecure_host_key: cli_remote.InsecureOpt = False,
) -> None:
    """Fetch every ledger of every shared remote of the copy.

    One line per ledger that is new, moved or vanished, and a summary; exit 8 when a remote
    could not be fetched."""
    result = fleet.fetch(fleet_path(fleet_dir), _creds(ssh_key, insecure_host_key), remote or None)
    print_fetch(result)
    result.raise_for_failures()


def _remote_cell(view: Any, now: str) -> str:
    from ledger.fleet import status  # (the library's module: loaded only when run)

    if view.head is None:
        when = f" since {view.vanished_at[:19]}Z" if view.vanished_at else ""
        return f"{view.name}: vanished{when}"
    first = status.age(view.first_seen, now) + " ago" if view.first_seen else "not recorded"
    return f"{view.name}: {first}"


@fleet_app.command("status")
def status_cmd(fleet_dir: FleetOpt = None, as_json: common.JsonOpt = False) -> None:
    """Per ledger: name, host, head seq, last record, when each head was first seen.

    Name, host and time are read from the head's records; each line says whether that head is
    the one 'ledger fleet verify' last verified."""
    st = fleet.fleet_status(fleet_path(fleet_dir))
    for w in st.warnings:
        warn(w)
    if as_json:
        common.console.out(json.dumps(st.to_json(), indent=2))
        return
    header = ("LEDGER", "NAME", "HOST", "SEQ", "LAST RECORD", "HEAD FIRST SEEN BY A FETCH", "CHECK")
    rows = [header]
    for ln in st.ledgers:
        rows.append(
            (
                ln.ledger_id,
                ln.name or "?",
                ln.host or "?",
                str(ln.seq) if ln.seq is not None else "-",
                ln.time[:19] + "Z" if ln.time and len(ln.time) >= 19 else ln.time or "-",
                ", ".join(_remote_cell(v, st.as_of) for v in ln.remotes),
                ln.check,
            )
        )
    if len(rows) == 1:
        common.console.print(f"The fleet copy {st.path} holds no ledger.", markup=False)
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r, widths, strict=False)]
        common.console.print("  ".join([*cells, r[-1]]).rstrip(), markup=False)
    common.console.print(
        "NAME, HOST and LAST RECORD are read from each head's records: trust them only on "
        "lines marked 'verified' (the head 'ledger fleet verify' last verified, without "
        "findings); 'unverified' heads were not checked. HEAD FIRST SEEN is when a fetch of "
        "this copy first saw that remote hold that head, not when it was pushed.",
        markup=False,
    )


# --- commands of other modules ----------------------------------------------------------------
# Each module below registers its commands on fleet_app when imported; add one line per module
# (ledger.cli.fleet_verify, fleet_witness, fleet_report) here.
from ledger.cli import fleet_report, fleet_verify, fleet_witness  # noqa: E402, F401
