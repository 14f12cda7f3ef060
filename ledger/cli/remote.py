"""Replication commands: remote add/remove/list/init, push, fetch, clone, status, and the
hidden pre-receive hook entry of protected remotes."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ledger import errors, hook, redact, replicate, store
from ledger.cli import common, core

remote_app = typer.Typer(
    help="Manage the ledger's remotes (ordinary git remotes in the ledger's config).",
    no_args_is_help=True,
)
common.app.add_typer(remote_app, name="remote")

hook_app = typer.Typer(help="Git hooks of protected remotes (run by git).", hidden=True)
common.app.add_typer(hook_app, name="hook", hidden=True)

SshKeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--ssh-key",
        help="SSH private key for ssh remotes. Default: $LEDGER_SSH_KEY, then ssh-agent, "
        "then ~/.ssh/id_ed25519, id_ecdsa, id_rsa.",
        show_default=False,
    ),
]
InsecureOpt = Annotated[
    bool,
    typer.Option(
        "--insecure-host-key",
        help="Accept any SSH host key (skips the check against ~/.ssh/known_hosts).",
    ),
]


NO_REMOTES_TO_PUSH = "this ledger has no remotes to push to"
NO_REMOTES_TO_FETCH = "this ledger has no remotes to fetch from"


def _warn(text: str) -> None:
    common.console_err.print(
        f"[yellow]ledger: warning:[/] {escape(redact.mask_url(text))}",
        highlight=False,
        soft_wrap=True,
    )


def _creds(ssh_key: Path | None, insecure: bool) -> replicate.Credentials:
    return replicate.Credentials.from_env(ssh_key=ssh_key, insecure_host_key=insecure)


def _parse_require(value: str | None) -> int | None:
    if value is None or value.strip().lower() == "all":
        return None
    try:
        n = int(value)
    except ValueError:
        raise errors.UsageError(
            f"--require takes a number of remotes or 'all', not {errors.quoted(value)}."
        ) from None
    if n < 0:
        raise errors.UsageError("--require must be 0 or more.")
    return n


# --- remote add / remove / list / init ------------------------------------------------------


@remote_app.command("add")
def remote_add(
    name: Annotated[str, typer.Argument(help="Name of the remote, e.g. origin.")],
    url: Annotated[
        str,
        typer.Argument(
            help="A path, file://, git://, ssh://, user@host:path, http:// or https:// URL."
        ),
    ],
    shared: Annotated[
        bool,
        typer.Option(
            "--shared",
            help="The remote is shared by many ledgers: push this one to "
            "refs/ledgers/<ledger id>/main there (see docs/FLEET.md).",
        ),
    ] = False,
    ledger: common.LedgerOpt = None,
) -> None:
    """Add a remote (stored in the ledger repository's git config)."""
    info = replicate.add_remote(common.find_ledger_path(ledger), name, url, shared=shared)
    kind = f"{info.transport}, shared" if info.shared else info.transport
    common.console.print(f"Added remote {info.name} ({kind}): {info.url}", markup=False)
    if info.warning:
        _warn(info.warning)


@remote_app.command("trust")
def remote_trust(
    name: Annotated[str, typer.Argument(help="Name of a remote in the ledger's config.")],
    ledger: common.LedgerOpt = None,
) -> None:
    """Accept a remote you put in the config yourself (e.g. with git remote add), at the URL
    it has now, or a URL you changed: until then it is unknown, never contacted or counted."""
    info = replicate.trust_remote(common.find_ledger_path(ledger), name)
    common.console.print(f"Trusted remote {info.name} ({info.transport}): {info.url}", markup=False)
    if info.warning:
        _warn(info.warning)


@remote_app.command("remove")
def remote_remove(
    name: Annotated[str, typer.Argument(help="Name of the remote.")],
    ledger: common.LedgerOpt = None,
) -> None:
    """Remove a remote from the ledger's config (the remote itself is not touched)."""
    replicate.remove_remote(common.find_ledger_path(ledger), name)
    common.console.print(f"Removed remote {name}.", markup=False)


@remote_app.command("list")
def remote_list(ledger: common.LedgerOpt = None, as_json: common.JsonOpt = False) -> None:
    """List the remotes, with a warning for those whose server-side rules cannot apply."""
    remotes = replicate.list_remotes(common.find_ledger_path(ledger))
    if as_json:
        common.console.print(
            json.dumps(
                [
                    {
                        "name": r.name,
                        "url": r.url,
                        "transport": r.transport,
                        "shared": r.shared,
                        "warning": r.warning,
                    }
                    for r in remotes
                ],
                indent=2,
            )
        )
        return
    if not remotes:
        common.console.print("No remotes. Add one with 'ledger remote add NAME URL'.")
    for r in remotes:
        shared = "\tshared" if r.shared else ""
        common.console.print(f"{r.name}\t{r.transport}\t{r.url}{shared}", markup=False)
    for r in remotes:
        if r.warning:
            _warn(r.warning)


def _verified_genesis(led: store.Ledger) -> str | None:
    """The genesis of the ledger's verified chain (never its config, which anyone who can
    write the ledger directory can change); refused (exit 7) when the chain does not verify."""
    if led.head() is None:
        return None
    view = led.trust_view()
    if not view.ok or view.state is None:
        raise view.refuse(led.path, "no remote is made to accept its genesis")
    return view.state.genesis


def _no_one_ledger(trust_genesis: str | None, ledger: Path | None) -> None:
    """``remote init --shared`` names no one ledger (usage error, exit 2, before anything
    is made): each ledger of a shared remote is pinned by its own first push."""
    if trust_genesis is not None or ledger is not None:
        given = "--trust-genesis" if trust_genesis is not None else "--ledger"
        raise errors.UsageError(
            f"--shared takes no {given}: a shared remote holds many ledgers, each pinned by "
            "its own first push, so no one ledger's genesis is given to it.",
            hint="Drop that option, or drop --shared to make a remote for one ledger.",
        )


@remote_app.command("init")
def remote_init(
    # (a str: Path makes '' '.' and git://h/x git:/h/x; the library refuses both as typed)
    path: Annotated[str, typer.Argument(help="Where to create the protected bare remote.")],
    trust_genesis: Annotated[
        str | None,
        typer.Option(
            "--trust-genesis",
            help="Genesis commit id this remote accepts (default: the current ledger's "
            "pinned genesis, else pinned by the first push). Refused with --shared (exit 2): "
            "each ledger of a shared remote is pinned by its own first push.",
        ),
    ] = None,
    require_user_presence: Annotated[
        bool,
        typer.Option(
            "--require-user-presence",
            help="Refuse records a security key (sk-*) signed without a touch "
            "(sets ledger.requireUserPresence in the remote's config).",
        ),
    ] = False,
    shared: Annotated[
        bool,
        typer.Option(
            "--shared",
            help="A remote for many ledgers, each at refs/ledgers/<ledger id>/main and "
            "verified as its own chain (see docs/FLEET.md).",
        ),
    ] = False,
    ledger: common.LedgerOpt = None,
) -> None:
    """Create a protected bare remote: no force pushes, no deletions, every record verified."""
    if shared:
        _no_one_ledger(trust_genesis, ledger)
        replicate.init_remote(
            path, genesis=trust_genesis, shared=True, require_user_presence=require_user_presence
        )
        common.console.print(f"Created protected shared remote at {path}", markup=False)
        common.console.print(
            "  receive.denyNonFastForwards, receive.denyDeletes, receive.fsckObjects: on"
        )
        common.console.print(
            "  pre-receive hook: only refs/ledgers/<ledger id>/main, each verified as its own "
            "chain (only the new records), each genesis pinned by its ledger's first push"
        )
        common.console.print(
            "Serve it over ssh://, git:// or https:// (a path or file:// remote is written "
            "directly and its rules do not run); see docs/FLEET.md for gitolite."
        )
        return
    genesis = trust_genesis
    if genesis is None:
        try:
            led = store.Ledger.open(common.find_ledger_path(ledger))
        except errors.LedgerNotFound:
            if ledger is not None:
                raise
        else:
            from ledger.verify import local

            # The pin (exit 14 without one), never the config's ledger.genesis: anyone who
            # can write the ledger directory could make the remote accept another chain; and
            # the chain must verify from it (exit 7).
            genesis = local.require_pin(led.path).genesis
            _verified_genesis(led)
    replicate.init_remote(path, genesis=genesis, require_user_presence=require_user_presence)
    common.console.print(f"Created protected remote at {path}", markup=False)
    common.console.print(
        "  receive.denyNonFastForwards, receive.denyDeletes, receive.fsckObjects: on"
    )
    common.console.print("  pre-receive hook: verifies every pushed record")
    if genesis:
        common.console.print(f"  accepts only the ledger with genesis {genesis}", markup=False)
    else:
        common.console.print("  genesis: pinned by the first push")
    if require_user_presence:
        common.console.print("  security-key signatures must show user presence (a touch)")
    common.console.print(
        "Serve it over ssh://, git:// or https:// (a path or file:// remote is written "
        "directly and its rules do not run)."
    )


# --- push / fetch / clone / status -----------------------------------------------------------


@common.app.command("push")
def push_cmd(
    names: Annotated[
        list[str] | None, typer.Argument(help="Remotes to push to (default: all).")
    ] = None,
    require: Annotated[
        str | None,
        typer.Option(
            "--require",
            help="Succeed when at least N remotes hold our head afterwards ('all', the "
            "default, needs every remote).",
            show_default=False,
        ),
    ] = None,
    ssh_key: SshKeyOpt = None,
    insecure_host_key: InsecureOpt = False,
    allow_unverified: Annotated[
        bool,
        typer.Option(
            "--allow-unverified",
            help="Push even a chain that does not verify (after a warning naming the "
            "findings): to keep evidence, or to see a protected remote's hook refuse it.",
        ),
    ] = False,
    ledger: common.LedgerOpt = None,
    as_json: common.JsonOpt = False,
) -> None:
    """Push the ledger to its remotes in parallel; never forces. Only a chain that verifies
    is pushed (exit 7 otherwise) unless --allow-unverified."""
    need = _parse_require(require)
    path = common.find_ledger_path(ledger)
    if allow_unverified:
        common.console_err.print(
            "ledger: WARNING: --allow-unverified: the chain is pushed without being verified "
            "first (a protected remote's hook still checks every record it receives).",
            style="bold red",
            markup=False,
            soft_wrap=True,
        )
    summary = replicate.push(
        path,
        names or None,
        credentials=_creds(ssh_key, insecure_host_key),
        allow_unverified=allow_unverified,
    )
    if not summary.outcomes:
        if as_json:
            doc = {**summary.to_json(), "error": NO_REMOTES_TO_PUSH}
            common.console.out(json.dumps(doc, indent=2))
        raise errors.RemoteError(
            f"{NO_REMOTES_TO_PUSH}.",
            hint="Add one with 'ledger remote add NAME URL' (see 'ledger remote init').",
        )
    if as_json:
        common.console.print(json.dumps(summary.to_json(), indent=2))
    else:
        width = max(len(o.remote) for o in summary.outcomes)
        for o in summary.outcomes:
            line = f"{o.remote:<{width}}  {o.line()}"
            if o.problem:
                common.console.print(f"[bold red]{escape(line)}[/]", highlight=False)
            else:
                common.console.print(line, highlight=False, markup=False)
    for w in summary.warnings:
        _warn(w)
    summary.check(need)


@common.app.command("fetch")
def fetch_cmd(
    names: Annotated[
        list[str] | None, typer.Argument(help="Remotes to fetch from (default: all).")
    ] = None,
    ssh_key: SshKeyOpt = None,
    insecure_host_key: InsecureOpt = False,
    ledger: common.LedgerOpt = None,
    as_json: common.JsonOpt = False,
) -> None:
    """Fetch each remote's head into refs/remotes/NAME/main and compare it with ours.

    Our own main is never changed. Divergence and rollback are reported with both commit
    ids and exit 8, as does a remote that could not be checked."""
    path = common.find_ledger_path(ledger)
    states = replicate.check_remotes(
        path, names or None, credentials=_creds(ssh_key, insecure_host_key)
    )
    if not states:
        if as_json:
            doc = {"ok": False, "remotes": [], "error": NO_REMOTES_TO_FETCH}
            common.console.out(json.dumps(doc, indent=2))
        raise errors.RemoteError(
            f"{NO_REMOTES_TO_FETCH}.",
            hint="Add one with 'ledger remote add NAME URL'.",
        )
    print_remote_states(states, as_json=as_json)
    raise_for_remote_states(states)


def print_remote_states(states: list[replicate.RemoteState], *, as_json: bool = False) -> None:
    """Print one line per remote, with the URL checked (or JSON: ``{"ok", "remotes"}``)."""
    if as_json:
        ok = all(s.checked and not s.problem for s in states)
        doc = {"ok": ok, "remotes": [s.to_json() for s in states]}
        common.console.out(json.dumps(doc, indent=2))
        return
    width = max(len(s.name) for s in states)
    for s in states:
        line = f"{s.name:<{width}}  {s.line()}  [{s.url}]"
        if s.problem:
            common.console.print(f"[bold red]{escape(line)}[/]", highlight=False)
        else:
            common.console.print(line, highlight=False, markup=False)


def _raise_if_no_room(unchecked: list[replicate.RemoteState]) -> None:
    """:class:`StorageError` (exit 6) when a remote could not be checked because this
    machine had no room to store what it sent: not the remote's doing."""
    full = [s for s in unchecked if errors.no_room(s.message or "")]
    if full:
        raise errors.StorageError(
            "could not fetch "
            + "; ".join(f"{s.name} ({s.url}): {s.message}" for s in full)
            + " (this machine could not store what it received).",
            hint="Free disk space where the ledger is (or raise the quota or file size limit), "
            "then try again. The ledger's own records were not touched.",
        )


def raise_for_remote_states(states: list[replicate.RemoteState]) -> None:
    """Raise :class:`RemoteError` (exit 8) for divergence, rollback or unchecked remotes."""
    problems = [s for s in states if s.problem]
    if problems:
        raise errors.RemoteError(
            "possible tampering: "
            + "; ".join(f"{s.name}: {s.condition.value}: {s.message}" for s in problems),
            hint="Nothing was overwritten. Keep the evidence (refs/remotes/NAME/main) and "
            "investigate before pushing there again.",
        )
    unchecked = [s for s in states if not s.checked]
    _raise_if_no_room(unchecked)
    if unchecked:
        raise errors.RemoteError(
            "could not check "
            + "; ".join(f"{s.name} ({s.url}): {s.condition.value}: {s.message}" for s in unchecked)
            + ".",
            hint="Check that the remotes are reachable and the credentials are right.",
        )


# --- verify --remotes -----------------------------------------------------------------------


@dataclass
class RemoteCheck:
    """What 'verify --remotes' found: every remote's state, and the names of those that could
    not be checked (failing the command) or could not be checked but may be skipped."""

    states: list[Any]
    unchecked: list[str]
    skipped: list[str]

    @property
    def failed(self) -> bool:
        return bool(self.unchecked) or not self.states

    def print(self) -> None:
        if not self.states:
            common.console.print("Remotes: none configured, nothing to compare with.")
        for st in self.states:
            note = " (may be skipped)" if st.name in self.skipped else ""
            common.console.print(f"remote {st.name} ({st.url}): {st.line()}{note}", markup=False)

    def raise_if_failed(self) -> None:
        if not self.states:
            raise errors.RemoteError(
                "--remotes was given but this ledger has no remotes to check.",
                hint="Add one with 'ledger remote add NAME URL', or verify without --remotes.",
            )
        if self.unchecked:
            by = {s.name: s for s in self.states}
            _raise_if_no_room([by[n] for n in self.unchecked])
            raise errors.RemoteError(
                "the ledger verifies, but these remotes could not be checked: "
                + "; ".join(
                    f"{n} ({by[n].url}): {by[n].condition.value}: {by[n].message}"
                    for n in self.unchecked
                )
                + ".",
                hint="Make them reachable (network, credentials, host key), or name the "
                "ones that may be skipped with --skip-remote NAME.",
            )


def check_for_verify(path: Path, result: Any, skip: list[str]) -> RemoteCheck:
    """Fetch and compare every remote; divergence and rollback become findings of
    ``result``; remotes that could not be checked are named, unless ``skip`` allows it."""
    from ledger import verify

    verified = result.state.ledger_id if result.ok and result.state is not None else None
    states = replicate.check_remotes(path, ledger_id=verified)
    known = {s.name for s in states}
    unknown = sorted(set(skip) - known)
    if unknown:
        raise errors.UsageError(
            f"--skip-remote names no remote of this ledger: {', '.join(unknown)} "
            f"(remotes: {', '.join(sorted(known)) or 'none'})."
        )
    for st in states:
        if st.problem:
            result.add(  # (not ok from now on: ok is derived from the findings)
                verify.Finding(
                    st.rule or "diverged",
                    st.remote_seq,
                    st.remote_head,
                    f"remote {st.name} ({st.url}): {st.line()}",
                )
            )
    down = [s.name for s in states if not s.checked]
    return RemoteCheck(states, [n for n in down if n not in skip], [n for n in down if n in skip])


@common.app.command("clone")
def clone_cmd(
    url: Annotated[str, typer.Argument(help="URL of a ledger remote.")],
    path: Annotated[
        Path | None, typer.Argument(help="Where to put the copy (default: from the URL).")
    ] = None,
    trust_genesis: Annotated[
        str | None,
        typer.Option(
            "--trust-genesis",
            help="The genesis commit id the copy must start at (default: "
            "$LEDGER_TRUST_GENESIS, else a pin of --pins FILE or of this machine).",
            show_default=False,
        ),
    ] = None,
    pins: common.PinsOpt = None,
    require_pin: Annotated[
        bool,
        typer.Option(
            "--require-pin",
            help="Exit 14 (keeping nothing) when no genesis is pinned, instead of trusting it "
            "on first use.",
        ),
    ] = False,
    ssh_key: SshKeyOpt = None,
    insecure_host_key: InsecureOpt = False,
) -> None:
    """Make a verified copy of a remote ledger (an auditor's copy)."""
    result = replicate.clone(
        url,
        path,
        trust_genesis=trust_genesis,
        pins_file=pins,
        require_pin=require_pin,
        credentials=_creds(ssh_key, insecure_host_key),
    )
    common.console.print(
        f"Cloned and verified {redact.mask_url(url)} into {result.path}", markup=False
    )
    common.console.print(f"  ledger:  {result.ledger_id}", markup=False)
    common.console.print(f"  genesis: {result.genesis}", markup=False)
    common.console.print(f"  head:    {result.head} (seq {result.seq})", markup=False)
    if result.pin_source is not None:
        common.console.print(f"  genesis matches the pin ({result.pin_source})", markup=False)
    for w in result.warnings:
        _warn(w)


@common.app.command("status")
def status_cmd(
    ledger: common.LedgerOpt = None,
    as_json: common.JsonOpt = False,
    allow_unverified: common.ShowUnverifiedOpt = False,
) -> None:
    """The verified head and seq, each remote's last known head and lag, unfinished runs."""
    led = core.open_verified(ledger, allow_unverified, "its status is not shown")
    st = replicate.status(led.path, allow_unverified=allow_unverified)
    if as_json:
        common.console.print(json.dumps(st.to_json(), indent=2))
        return
    common.console.print(f"ledger {st.path}", markup=False)
    common.console.print(f"  head: {st.head or '(none)'} (seq {st.seq})", markup=False)
    if not st.remotes:
        common.console.print("  remotes: none")
    for r in st.remotes:
        if r.last_head is None:
            where = "never pushed or fetched"
        else:
            where = f"at seq {r.last_seq} ({r.last_head[:12]}) as of {r.last_time}"
        lag = "" if r.behind is None else f", {r.behind} record(s) behind"
        last = f", last attempt: {r.last_status}" if r.last_status else ""
        common.console.print(f"  remote {r.name}: {where}{lag}{last}", markup=False)
        if r.problem:
            common.console.print(f"    [bold red]problem:[/] {escape(r.problem)}", highlight=False)
        if r.warning:
            _warn(r.warning)
    if st.unfinished_runs:
        common.console.print(f"  unfinished runs: {', '.join(st.unfinished_runs)}", markup=False)
    else:
        common.console.print("  unfinished runs: none")


# --- hook -----------------------------------------------------------------------------------


@hook_app.command("pre-receive")
def hook_pre_receive() -> None:
    """The pre-receive check of a protected remote (git runs it with the updates on stdin)."""
    # sys.exit, not typer.Exit: git reads the hook's exit status.
    sys.exit(hook.pre_receive(sys.stdin.read().splitlines()))
