"""`ledger demo --fleet`: three runners, one shared remote, one auditor, one fleet report.

Each runner gets its own key and ledger and pushes to one protected shared remote; the
second and third witness the heads they find there before their run; each runs the embedded
example runbook for the same incident. An auditor then clones the fleet, verifies every
ledger (and every witnessed head) and writes one fleet report of the incident.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from rich.markup import escape

from ledger import errors, keys, replicate, run, store
from ledger import runbook as ledger_runbook
from ledger.cli import common, demo

INCIDENT = "DEMO-FLEET-1"
RUNNERS = ("web", "db", "batch")
STEPS = 5


def _heading(number: int, text: str) -> None:
    common.console.print(f"\n[bold]{number}/{STEPS} {escape(text)}[/]")


def _shared_remote(root: Path) -> Path:
    _heading(1, "One protected shared remote for the whole fleet")
    path = root / "shared" / "fleet.git"
    path.parent.mkdir()
    replicate.init_remote(path, shared=True)
    common.console.print(
        f"  {path}: each ledger at refs/ledgers/<its id>/main, never forced. (A local path, "
        "which git writes directly: served over git://, ssh:// or http(s):// its hook "
        "verifies every push; docs/FLEET.md.)"
    )
    return path


def _runner(root: Path, name: str, shared: Path) -> tuple[store.Ledger, keys.SigningKey]:
    from ledger.verify import local  # here: 'ledger --help' does not load the verifier

    principal = f"runner-{name}@demo"
    key = keys.SigningKey.generate(comment=principal)
    home = root / "runners" / name
    (home / "keys").mkdir(parents=True, mode=0o700)
    key_path = home / "keys" / "runner"
    key.save(key_path)
    led = store.Ledger.init(home / "ledger.git", name=name, key=key, principal=principal)
    led.config_set("ledger.signingKey", str(key_path))
    local.pin_after_init(led.path, led.genesis_id)
    replicate.add_remote(led.path, "fleet", str(shared), shared=True)
    common.console.print(
        f"  {name}: ledger {led.ledger_id} ({led.path}), key {key.public_key.fingerprint}"
    )
    return led, key


def _witness(led: store.Ledger, key: keys.SigningKey) -> None:
    from ledger.fleet import witness  # here: only the fleet demo needs it

    done = witness.append_witness(led, key, replicate.Credentials.from_env(), None)
    seqs = ", ".join(str(a.seq) for a in done.appended)
    common.console.print(
        f"    witnessed {done.ledgers} other ledger(s) in the shared remote first: "
        f"witness record seq {seqs}"
    )


def _run_one(root: Path, led: store.Ledger, key: keys.SigningKey, name: str) -> run.RunOutcome:
    runbook_path = root / "runbooks" / demo.EXAMPLE
    if not runbook_path.exists():
        runbook_path.parent.mkdir(exist_ok=True)
        runbook_path.write_bytes(demo.embedded_runbook())
    environ = dict(os.environ, HELLO_TOKEN=secrets.token_urlsafe(12))
    runbook = ledger_runbook.load_runbook(runbook_path)
    params = ledger_runbook.resolve_parameters(runbook, {"name": name.title()}, environ)
    runner = run.Runner(led, key, events=run.EngineEvents(), stop=run.StopSignal())
    outcome = runner.run(
        run.RunRequest(
            runbook, params, incident=INCIDENT, trigger="ledger demo --fleet", environ=environ
        )
    )
    common.console.print(
        f"    run {outcome.run_id} {outcome.status}: {outcome.records} signed records"
    )
    return outcome


def _runs(root: Path, shared: Path) -> list[tuple[store.Ledger, run.RunOutcome]]:
    _heading(2, f"Three runners, each its own key and ledger; each runs {demo.EXAMPLE}")
    done = []
    for i, name in enumerate(RUNNERS):
        led, key = _runner(root, name, shared)
        if i:
            _witness(led, key)
        outcome = _run_one(root, led, key, name)
        for result in replicate.push(led.path).outcomes:
            common.console.print(f"    push to {escape(result.remote)}: {escape(result.line())}")
        done.append((led, outcome))
    return done


def _audit(root: Path, shared: Path) -> tuple[Path, bool]:
    _heading(3, "An auditor clones the fleet and verifies every ledger")
    from ledger.fleet import audit, copy, state  # here: the verifier and its worker pool

    path = root / "auditor" / "fleet.git"
    path.parent.mkdir()
    # The demo makes its copy anew each time (new ledgers at the same path and remote URL):
    # what an earlier demo's auditor saw there is its own to forget.
    state.discard(path)
    copy.clone(str(shared), path, "origin", replicate.Credentials.from_env())
    result = audit.verify_fleet(path)
    for o in result.ledgers:
        rules = ", ".join(sorted({f.rule for f in o.findings})) or "no finding"
        common.console.print(
            f"  {o.ledger_id}  {escape(o.name or '-'):8}  seq {o.seq}  {o.status}  ({rules})"
        )
    summary = result.summary()
    common.console.print(
        f"  {summary['ledgers']} ledger(s), {summary['records_checked']} record(s) checked, "
        f"{summary['findings']} finding(s); every witnessed head checked against the "
        "witnessed ledger's chain."
    )
    return path, result.ok


def _report(root: Path, copy_path: Path) -> Path:
    _heading(4, f"One fleet report of incident {INCIDENT}")
    from ledger.fleet import report  # here: jinja2

    out = root / "fleet-report.md"
    out.write_text(report.fleet_report(copy_path, incident=INCIDENT), encoding="utf-8")
    common.console.print(f"  Markdown report written to [bold]{escape(str(out))}[/]")
    return out


def _next(root: Path, copy_path: Path) -> None:
    _heading(5, "Try next")
    fleet_opt = f"--fleet {copy_path}"
    for line in (
        f"ledger fleet status {fleet_opt}",
        f"ledger fleet verify {fleet_opt} --json",
        f"ledger fleet report {fleet_opt} --incident {INCIDENT}",
        f"ledger log --ledger {root / 'runners' / RUNNERS[2] / 'ledger.git'}",
    ):
        common.console.print(f"  {escape(line)}")


def fleet_demo(root: Path) -> None:
    """The fleet demo in ``root`` (fresh, made by :func:`demo.fresh_directory`)."""
    common.console.print(f"[bold]runbook-ledger fleet demo[/] in {escape(str(root))}")
    shared = _shared_remote(root)
    runs = _runs(root, shared)
    copy_path, verified = _audit(root, shared)
    _report(root, copy_path)
    _next(root, copy_path)
    if not verified or not all(o.succeeded for _, o in runs):
        raise errors.RunFailed(
            "the fleet demo did not complete cleanly (see above).",
            hint=f"Run 'ledger fleet verify --fleet {copy_path}' for the findings.",
        )
