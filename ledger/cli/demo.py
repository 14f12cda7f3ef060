"""`ledger demo`: the whole loop on an embedded example, with nothing to configure.

A fresh key, a new local ledger, two protected local remotes, the example runbook
``hello.yaml`` run end to end (with a secret that must never reach the ledger), push,
verification, and a Markdown report written to a file.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ledger import errors, keys, replicate, report, run, store
from ledger import runbook as ledger_runbook
from ledger.cli import common, terminal

MARKER = ".ledger-demo"
EXAMPLE = "hello.yaml"
INCIDENT = "DEMO-1"


def embedded_runbook() -> bytes:
    """The example runbook shipped inside the package (``ledger/runbooks/hello.yaml``)."""
    return resources.files("ledger").joinpath("runbooks", EXAMPLE).read_bytes()


def _heading(number: int, text: str) -> None:
    common.console.print(f"\n[bold]{number}/7 {escape(text)}[/]")


def fresh_directory(directory: Path) -> None:
    if directory.exists() and any(directory.iterdir()):
        if not (directory / MARKER).exists():
            raise errors.LedgerExists(
                f"{directory} exists and was not made by 'ledger demo'; the demo only "
                "replaces its own directories.",
                hint="Give another directory: 'ledger demo DIR'.",
            )
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).write_text("Made by 'ledger demo'; safe to delete.\n")


def _secret_in_objects(ledger_path: Path, secret: bytes) -> int:
    """How many objects of the repository contain ``secret`` (decompressed)."""
    import pygit2  # here: 'ledger --help' starts without pygit2

    repo = pygit2.Repository(str(ledger_path))
    return sum(1 for oid in repo.odb if secret in repo.odb.read(oid)[1])


def _make_key(root: Path) -> tuple[keys.SigningKey, Path, str]:
    _heading(1, "A signing key for the operator")
    principal = f"demo-operator@{socket.gethostname()}"
    key = keys.SigningKey.generate(comment=principal)
    key_path = root / "keys" / "operator"
    key_path.parent.mkdir(mode=0o700)
    key.save(key_path)
    common.console.print(f"  Ed25519 key {key.public_key.fingerprint} in {key_path} (mode 0600).")
    return key, key_path, principal


def _make_ledger(root: Path, key: keys.SigningKey, key_path: Path, principal: str) -> store.Ledger:
    _heading(2, "A new ledger: a bare git repository that only grows")
    # audit (and the verifier under it) is imported in the two steps that verify: every
    # other module this one imports is loaded by 'ledger --help' anyway, these are not.
    from ledger.verify import local

    led = store.Ledger.init(root / "ledger.git", name="demo", key=key, principal=principal)
    led.config_set("ledger.signingKey", str(key_path))
    local.pin_after_init(led.path, led.genesis_id)
    common.console.print(f"  {led.path}: ledger id {led.ledger_id}")
    common.console.print(
        f"  genesis commit {led.genesis_id} (auditors pin this id); trusted signer "
        f"{escape(principal)}."
    )
    return led


def _make_remotes(root: Path, led: store.Ledger) -> None:
    _heading(3, "Two protected remotes")
    for remote in ("primary", "secondary"):
        path = root / "remotes" / f"{remote}.git"
        path.parent.mkdir(exist_ok=True)
        replicate.init_remote(path, genesis=led.genesis_id)
        replicate.add_remote(led.path, remote, str(path))
        common.console.print(f"  {remote}: {path}")
    common.console.print(
        "  Each refuses force pushes and deletions and verifies every pushed record "
        "in its pre-receive hook when served over git://, ssh:// or http(s)://. "
        "(Here they are local paths, which git writes directly: see "
        "docs/REPLICATION.md.)"
    )


def _run_example(
    root: Path, led: store.Ledger, key: keys.SigningKey, name: str
) -> tuple[run.RunOutcome, str]:
    """Run the example runbook; the outcome and the secret token it was given."""
    _heading(4, f"Running the example runbook {EXAMPLE} (incident {INCIDENT})")
    runbook_path = root / "runbooks" / EXAMPLE
    runbook_path.parent.mkdir()
    runbook_path.write_bytes(embedded_runbook())
    token = secrets.token_urlsafe(12)
    environ = dict(os.environ, HELLO_TOKEN=token)
    runbook = ledger_runbook.load_runbook(runbook_path)
    params = ledger_runbook.resolve_parameters(runbook, {"name": name}, environ)
    common.console.print(
        f"  {runbook_path}: {len(runbook.steps)} steps; the secret parameter 'token' "
        "comes from $HELLO_TOKEN (a random value made for this demo).\n"
    )
    events = terminal.TerminalEvents()
    stop = run.StopSignal()
    runner = run.Runner(led, key, events=events, stop=stop)
    events.pusher = terminal.start_pusher(led, no_push=False)
    try:
        outcome = runner.run(
            run.RunRequest(
                runbook, params, incident=INCIDENT, trigger="ledger demo", environ=environ
            )
        )
    finally:
        if events.pusher is not None:
            for result in events.pusher.close(timeout=30.0).outcomes:
                common.console.print(
                    f"  background push to {escape(result.remote)}: {escape(result.line())}"
                )
    return outcome, token


def _push(led: store.Ledger) -> None:
    _heading(5, "Pushing the ledger to both remotes (never forced)")
    summary = replicate.push(led.path)
    for result in summary.outcomes:
        common.console.print(f"  {escape(result.remote)}: {escape(result.line())}")


def _verify(led: store.Ledger, token: str) -> tuple[bool, int]:
    """Verify the ledger and the remotes, look for the secret; (verified, objects leaking)."""
    _heading(6, "Verifying: signatures, trust, chain, tree, remotes, and the secret")
    from ledger.verify import local  # see _make_ledger

    check = local.verify_local(led.path)
    head = led.head()
    if check.result.ok:
        common.console.print(
            f"  [green]verified[/] {check.result.records_checked} records, every one "
            f"signed by a trusted key; head seq {head.seq if head else '?'}."
        )
    else:
        for finding in check.result.findings:
            common.console.print(f"  [red]FINDING[/] [{finding.rule}] {escape(finding.message)}")
    for state in replicate.check_remotes(led.path):
        common.console.print(f"  remote {escape(state.name)}: {escape(state.line())}")
    leaks = _secret_in_objects(led.path, token.encode())
    if leaks:
        common.console.print(f"  [red]the secret's value is in {leaks} git object(s)[/]")
    else:
        common.console.print(
            "  the secret's value appears in none of the ledger's git objects "
            "(it is recorded as [REDACTED:token]).",
            markup=False,
        )
    return check.result.ok, leaks


def _write_report(root: Path, led: store.Ledger) -> None:
    _heading(7, "The incident report")
    report_path = root / "report.md"
    report_path.write_text(report.report_for(led, incident=INCIDENT), encoding="utf-8")
    common.console.print(f"  Markdown report written to [bold]{escape(str(report_path))}[/]")


def _summary(root: Path, led: store.Ledger, outcome: run.RunOutcome) -> None:
    ledger_opt = f"--ledger {led.path}"
    common.console.print("\n[bold]What happened[/]")
    common.console.print(
        f"  Run {outcome.run_id} {outcome.status}: {outcome.records} signed records, each a git "
        "commit written before its step ran (step.started) and after (step.finished), then "
        "pushed to two remotes and verified."
    )
    common.console.print("\n[bold]Try next[/]")
    for line in (
        f"ledger log {ledger_opt}",
        f"ledger show {ledger_opt} 1",
        f"ledger verify {ledger_opt} --json",
        f"ledger keys allowed-signers {ledger_opt} -o {root / 'allowed_signers'}",
        f"git -C {led.path} -c gpg.ssh.allowedSignersFile={root / 'allowed_signers'} "
        "verify-commit main",
        f"ledger report {ledger_opt} --run {outcome.run_id}",
    ):
        common.console.print(f"  {escape(line)}")


@common.app.command("demo")
def demo_cmd(
    directory: Annotated[
        Path, typer.Argument(help="Where to put the demo's key, ledger, remotes and report.")
    ] = Path("ledger-demo"),
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Who the example greets (default: Ada). Not with --fleet, whose three "
            "runners greet each other by name.",
            show_default=False,
        ),
    ] = None,
    fleet: Annotated[
        bool,
        typer.Option(
            "--fleet",
            help="Three runners, one shared remote, an auditor's fleet verification and "
            "one fleet report of their incident (docs/FLEET.md).",
        ),
    ] = False,
) -> None:
    """Run the whole loop on an embedded example: key, ledger, remotes, run, push, verify,
    report (with --fleet: three runners, a shared remote, an auditor, a fleet report)."""
    if fleet and name is not None:
        raise errors.UsageError(
            "--name does not fit --fleet: the fleet demo's three runners greet each other by name.",
            hint="Drop --name, or run the single-ledger demo: 'ledger demo --name NAME'.",
        )
    root = directory.resolve()
    fresh_directory(root)
    if fleet:
        from ledger.cli import demo_fleet  # here: only the fleet demo needs the fleet

        demo_fleet.fleet_demo(root)
        return
    common.console.print(f"[bold]runbook-ledger demo[/] in {escape(str(root))}")
    key, key_path, principal = _make_key(root)
    led = _make_ledger(root, key, key_path, principal)
    _make_remotes(root, led)
    outcome, token = _run_example(root, led, key, name or "Ada")
    _push(led)
    verified, leaks = _verify(led, token)
    _write_report(root, led)
    _summary(root, led, outcome)
    if not outcome.succeeded or not verified or leaks:
        raise errors.RunFailed(
            "the demo did not complete cleanly (see above).",
            hint="Run 'ledger verify --ledger "
            f"{led.path}' and look at the run's records with 'ledger log'.",
        )


__all__ = ["demo_cmd"]
