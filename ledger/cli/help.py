"""What `ledger --help` and each command's help show beyond the option list.

- :data:`EXIT_CODES`: the documented exit codes (the README's table is checked against it);
  shown at the end of ``ledger --help``.
- :data:`EXAMPLES`: one or two examples per command, shown at the end of its ``--help``.
- :func:`version_option`: ``ledger --version``.

The examples are attached after the command modules are imported (:func:`attach`), so no
command module has to repeat them and a command without examples fails a test.
"""

from __future__ import annotations

from typing import Annotated

import typer

import ledger

#: Exit code -> meaning. The README's "Exit codes" table lists exactly these.
EXIT_CODES: tuple[tuple[str, str], ...] = (
    ("0", "success (run succeeded, ledger verified)"),
    ("1", "unexpected failure"),
    ("2", "usage error (unknown flag, missing argument, arguments that do not fit together)"),
    (
        "3",
        (
            "invalid input: runbook, template, `--data`, URL, parameter, text that is not "
            "UTF-8, unknown record or run (`report`, `resume`, `approve` alike), a malformed "
            "pin file (`--pins`), an `-o FILE` that cannot be written (no such directory, no "
            "permission, a read-only file system: the path you gave; no room is 6)"
        ),
    ),
    (
        "4",
        (
            "key problem: missing or unreadable key, wrong or missing passphrase, key not "
            "trusted by the ledger; ssh-agent: none at `$SSH_AUTH_SOCK`, locked, key not in "
            "it, confirmation declined, no answer in time (a run stops at the record it could "
            "not sign)"
        ),
    ),
    (
        "5",
        (
            "no ledger (or fleet copy) at that location, or a ledger, file (a key) or "
            "non-empty directory already exists where one would be created"
        ),
    ),
    (
        "6",
        (
            "storage problem: I/O error, disk full (an `-o FILE` included, left as it was), "
            "permissions of the ledger, a remote's or fleet copy's directory or your state "
            "directory, lock busy (including a run still held by its runner); a fleet copy "
            "damaged or tampered with (a file git reads there is a FIFO, link or device, its "
            "config includes other files, its refs cannot be read)"
        ),
    ),
    (
        "7",
        (
            "verification found problems (every finding is printed), or the ledger is "
            "corrupt: an object or reference that cannot be read (named in the message); an "
            "append, approval, resume, push, trust listing or display (`log`, `show`, `runs`, "
            "`approvals`, `status`) refused because the ledger's head does not verify "
            "(`--allow-unverified` goes on); a clone whose chain does not verify or starts at "
            "another genesis than the pin; `push` / `fetch` on a ledger that claims another "
            "ledger's id than the verified one"
        ),
    ),
    (
        "8",
        (
            "remote problem: unknown, unreachable, authentication or host key refused, "
            "rejected, diverged, an unknown remote (not added by you), `--require` not met, no "
            "remotes; a URL rewrite (`url.<base>.insteadOf` / `pushInsteadOf`) in the ledger's "
            "or fleet copy's own config; `verify --remotes`: a remote that could not be checked"
            " (not named with `--skip-remote`), or none to check"
        ),
    ),
    ("10", "run failed (a step failed)"),
    ("11", "run rejected at an approval step"),
    (
        "12",
        (
            "resume or abandon refused (runbook changed, run not failed, handlers ran and no "
            "`--from` restart point, a step never finished; abandon: run already finished)"
        ),
    ),
    ("13", "approval refused (run not waiting at that step, or signer not an approver)"),
    (
        "14",
        (
            "genesis not pinned: `verify --require-pin`, or `run` / `resume` / `record` / "
            "`approve` / `fleet witness` on a ledger this machine never pinned (pin it with "
            "`ledger verify`, "
            "`--trust-genesis`, `$LEDGER_TRUST_GENESIS` or `--pins`); `clone --require-pin` "
            "without a pin; `push` / `fetch` / `remote add` on a copy never verified on this "
            "machine"
        ),
    ),
    ("130, 143", "run interrupted by SIGINT / SIGTERM (recorded as aborted)"),
)

#: Command path (as typed after `ledger`) -> examples, one per line.
EXAMPLES: dict[str, tuple[str, ...]] = {
    "init": (
        "ledger keys generate && ledger init --name ops",
        "ledger init ops.git --key ~/.ssh/ledger_ed25519 --principal alice@example.com",
    ),
    "keys generate": ("ledger keys generate", "ledger keys generate ./ci_key -C ci@example.com"),
    "keys add": ("ledger keys add bob@example.com ~/bob_ed25519.pub",),
    "keys revoke": ("ledger keys revoke SHA256:abc... --reason 'laptop lost'",),
    "keys list": ("ledger keys list", "ledger keys list --json"),
    "keys allowed-signers": (
        "ledger keys allowed-signers -o signers",
        "git -c gpg.ssh.allowedSignersFile=signers verify-commit main",
    ),
    "record": (
        "ledger record -m 'pager acknowledged' --data '{\"alert\": \"api-5xx\"}'",
        "ledger record -m 'deploy done' --data @deploy.json",
        "ledger record -m 'investigated INC-7, going on' --allow-unverified",
    ),
    "log": ("ledger log -n 20", "ledger log --run RUN_ID --kind step.finished --json"),
    "show": (
        "ledger show 42",
        "ledger show 42 --file stdout",
        "ledger show 42 --allow-unverified",
    ),
    "verify": (
        "ledger verify",
        "ledger verify --since-last --remotes --skip-remote mirror --json",
    ),
    "runs": ("ledger runs", "ledger runs --incident INC-42 --status failed --json"),
    "validate": ("ledger validate runbooks/*.yaml", "ledger validate restart.yaml --json"),
    "schema": ("ledger schema > runbook.schema.json",),
    "run": (
        "ledger run runbooks/hello.yaml -p name=Ada --incident INC-42",
        "ledger run restart.yaml --dry-run",
    ),
    "resume": ("ledger resume RUN_ID", "ledger resume RUN_ID --from migrate"),
    "abandon": ("ledger abandon RUN_ID --reason 'runner host lost; finished by hand'",),
    "approve": (
        "ledger approve RUN_ID confirm --key ~/.ssh/ledger_ed25519",
        "ledger approve RUN_ID confirm --reject --comment 'not during peak'",
    ),
    "approvals": ("ledger approvals", "ledger approvals --json"),
    "remote init": ("ledger remote init ~/ledger-remotes/ops.git",),
    "remote add": (
        "ledger remote add backup ~/ledger-remotes/ops.git",
        "ledger remote add origin ssh://git@backup.example.com/srv/git/ops.git",
    ),
    "remote remove": ("ledger remote remove backup",),
    "remote trust": ("ledger remote trust backup",),
    "remote list": ("ledger remote list", "ledger remote list --json"),
    "push": ("ledger push", "ledger push origin --require all --json"),
    "fetch": ("ledger fetch", "ledger fetch origin"),
    "clone": (
        "ledger clone ssh://git@backup.example.com/srv/git/ops.git ops-audit.git "
        "--trust-genesis 3f1c...e9",
        "ledger clone https://git.example.com/ops/ledger.git audit --pins pins --require-pin",
    ),
    "status": ("ledger status", "ledger status --json"),
    "report": (
        "ledger report --incident INC-42 -o INC-42.md",
        "ledger report --since 2026-11-01 --until 2026-11-30 -t my.md.j2",
    ),
    "demo": ("ledger demo", "ledger demo /tmp/try-ledger", "ledger demo --fleet /tmp/try-fleet"),
    "fleet clone": (
        "ledger fleet clone ssh://git@git.example.com/fleet audit.git",
        "ledger fleet clone https://git.example.com/fleet.git audit.git --name primary",
    ),
    "fleet remote add": (
        "ledger fleet remote add mirror git://mirror.example.com/fleet --fleet audit.git",
    ),
    "fleet fetch": (
        "ledger fleet fetch --fleet audit.git",
        "LEDGER_FLEET=audit.git ledger fleet fetch --remote mirror",
    ),
    "fleet status": ("ledger fleet status --fleet audit.git", "ledger fleet status --json"),
    "fleet witness": ("ledger fleet witness", "ledger fleet witness --remote fleet --json"),
    "fleet verify": (
        "ledger fleet verify --fleet audit.git",
        "ledger fleet verify --pins pins --jobs 4 --json --no-fetch",
    ),
    "fleet dismiss": (
        "ledger fleet dismiss 0f3c2a9b8d7e6f5a4b3c2d1e0f9a8b7c 12 --reason 'key misused: INC-7'",
        "ledger fleet dismiss 0f3c2a9b8d7e6f5a4b3c2d1e0f9a8b7c 12 --fleet audit.git "
        "--reason 'claims judged false'",
    ),
    "fleet report": (
        "ledger fleet report --fleet audit.git --incident INC-42 -o INC-42.md",
        "ledger fleet report --since 2026-11-22 --until 2026-11-23 --pins pins",
    ),
}


def examples_epilog(lines: tuple[str, ...]) -> str:
    """Click keeps an epilog's line breaks only between paragraphs: one paragraph a line."""
    return "Examples:\n\n" + "\n\n".join(f"  $ {line}" for line in lines)


def exit_codes_epilog() -> str:
    rows = "\n\n".join(f"  {code:>8}  {meaning.replace('`', '')}" for code, meaning in EXIT_CODES)
    return "Exit codes:\n\n" + rows


def attach(app: typer.Typer) -> None:
    """Give every registered command its examples (as its help's epilog)."""
    app.info.epilog = exit_codes_epilog()
    _attach(app, "")


def _attach(group: typer.Typer, prefix: str) -> None:
    for command in group.registered_commands:
        name = command.name or (command.callback.__name__ if command.callback else "")
        lines = EXAMPLES.get(f"{prefix}{name}")
        if lines:
            command.epilog = examples_epilog(lines)
    for sub in group.registered_groups:
        if sub.typer_instance is not None and sub.name:
            _attach(sub.typer_instance, f"{prefix}{sub.name} ")


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"ledger {ledger.__version__}")
        raise typer.Exit(0)


VersionOpt = Annotated[
    bool,
    typer.Option(
        "--version",
        callback=_show_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
]


def version_option(version: VersionOpt = False) -> None:
    # No docstring: the app's own help text stays the one shown.
    return None


__all__ = ["EXAMPLES", "EXIT_CODES", "attach", "version_option"]
