"""Shared pieces of the CLI: the Typer app, consoles, and options every area uses."""

from __future__ import annotations

import contextlib
import getpass
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ledger import errors
from ledger.cli import help as cli_help

app = typer.Typer(
    name="ledger",
    help=(
        "Run runbooks and keep a signed, append-only git ledger of every step, "
        "replicated to remotes that refuse force pushes."
    ),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.callback()(cli_help.version_option)


def quiet_broken_pipe() -> None:
    """Standard output was closed by its reader (``ledger log | head``): send the rest to
    /dev/null, so that nothing more fails, and end with success."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    with contextlib.suppress(OSError, ValueError):
        os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    raise SystemExit(0)


class _Console(Console):
    """rich's console, except that a reader who stops reading is not a failure (rich ends
    with exit 1 there)."""

    def on_broken_pipe(self) -> None:
        quiet_broken_pipe()


console = _Console(highlight=False, soft_wrap=True)
console_err = _Console(stderr=True, highlight=False)

LedgerOpt = Annotated[
    Path | None,
    typer.Option(
        "--ledger",
        "-L",
        help="Ledger repository. Default: $LEDGER_DIR, else .ledger in this or a parent directory.",
        show_default=False,
    ),
]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--key",
        "-k",
        help="Signing key: an OpenSSH private key file, or a public key to sign through "
        "ssh-agent ($SSH_AUTH_SOCK): PATH.pub, 'key::ssh-ed25519 AAAA...' or SHA256:... "
        "Default: $LEDGER_SIGNING_KEY, else ledger config.",
        show_default=False,
        # Not click's own check (exit 2, "is not readable"): reading the key says why (exit 4).
        readable=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
PinsOpt = Annotated[
    Path | None,
    typer.Option(
        "--pins",
        help="A pin file you keep: lines '<ledger id> <genesis commit id>'.",
        show_default=False,
    ),
]
TrustGenesisOpt = Annotated[
    str | None,
    typer.Option(
        "--trust-genesis",
        help="Genesis commit id to pin (default: $LEDGER_TRUST_GENESIS, else the pin kept in "
        "your state directory).",
        show_default=False,
    ),
]

ShowUnverifiedOpt = Annotated[
    bool,
    typer.Option(
        "--allow-unverified",
        help="Show what the ledger holds even if its chain fails verification (after a "
        "warning on stderr); without it such a ledger is refused (exit 7).",
    ),
]
AppendUnverifiedOpt = Annotated[
    bool,
    typer.Option(
        "--allow-unverified",
        help="Append even if the ledger fails verification; the record says so (its signed "
        "Ledger-Unverified trailer names the rules broken).",
    ),
]


def check_jobs(value: int | None) -> int | None:
    """``--jobs`` of ``verify``, ``fleet verify`` and ``fleet report``: 1 to the verifier's
    ``MAX_JOBS`` worker processes, else a usage error (exit 2)."""
    from ledger.verify import warmup  # here: only these commands need it (it is light)

    if value is not None and not 1 <= value <= warmup.MAX_JOBS:
        raise typer.BadParameter(
            f"{value} is not a number of worker processes from 1 to {warmup.MAX_JOBS}."
        )
    return value


def find_ledger_path(explicit: Path | None) -> Path:
    """Where the ledger is: ``--ledger``, ``$LEDGER_DIR``, else the nearest ``.ledger``."""
    if explicit is not None:
        return explicit
    env = os.environ.get("LEDGER_DIR")
    if env:
        return Path(env)
    here = Path.cwd().resolve()
    for directory in (here, *here.parents):
        candidate = directory / ".ledger"
        if candidate.is_dir():
            return candidate
    raise errors.LedgerNotFound(
        f"no ledger found: no --ledger given, LEDGER_DIR is not set, and there is no .ledger "
        f"directory in {here} or any parent.",
        hint="Create one with 'ledger init', or point to one with --ledger PATH.",
    )


def default_ledger_path_for_init(explicit: Path | None) -> Path:
    """Where `ledger init` creates a ledger when given no path."""
    if explicit is not None:
        return explicit
    env = os.environ.get("LEDGER_DIR")
    return Path(env) if env else Path.cwd() / ".ledger"


def read_passphrase(path: Path) -> bytes:
    """The passphrase of an encrypted key: $LEDGER_KEY_PASSPHRASE, else a prompt on a terminal."""
    env = os.environ.get("LEDGER_KEY_PASSPHRASE")
    if env is not None:
        return env.encode()
    if not sys.stdin.isatty():
        raise errors.KeyProblem(
            f"the key {path} is encrypted and no passphrase is available "
            "(standard input is not a terminal).",
            hint="Set LEDGER_KEY_PASSPHRASE, or use an unencrypted key for unattended runs.",
        )
    return getpass.getpass(f"Passphrase for {path}: ").encode()


def default_key_path() -> Path:
    """Where `ledger keys generate` writes a key when given no path, and where the other
    commands look last for one: ``~/.ssh/ledger_ed25519``."""
    return Path.home() / ".ssh" / "ledger_ed25519"


def resolve_key_name(explicit: str | None, configured: str | None = None) -> str:
    """How the signing key is named (a private key file, or a public key or fingerprint for
    the agent: :func:`ledger.keys.keyspec.parse_key_spec`): ``--key``,
    ``$LEDGER_SIGNING_KEY``, the ledger's config, else the default path of
    `ledger keys generate` when a key is there."""
    if explicit:
        return explicit
    env = os.environ.get("LEDGER_SIGNING_KEY")
    if env:
        return env
    if configured:
        return configured
    default = default_key_path()
    if default.exists():
        return str(default)
    raise errors.KeyProblem(
        "no signing key given: no --key, LEDGER_SIGNING_KEY is not set, the ledger's config "
        f"has no ledger.signingKey, and there is no key at {default}.",
        hint="Pass --key PATH (or a public key such as key::ssh-ed25519 AAAA... to sign "
        "through ssh-agent), or create the default key with 'ledger keys generate'.",
    )


def check_text(value: str, option: str) -> str:
    """``value`` unless it holds bytes that are not UTF-8 (Python hands them over as lone
    surrogates); :class:`InputError` naming ``option`` then."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise errors.InputError(
            f"{option} is not valid UTF-8 text: byte "
            f"{exc.object[exc.start : exc.end].encode('utf-8', 'surrogateescape')!r} "
            f"at character {exc.start} is not UTF-8.",
            hint="Give the text in UTF-8 (check the terminal's or the calling program's encoding).",
        ) from None
    return value


@contextlib.contextmanager
def progress_bar(label: str, show: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A transient progress bar on stderr while the block runs, as the ``progress(done,
    total)`` callback the library takes; ``None`` (no bar) unless ``show``."""
    if not show:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        label,
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console_err,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)

        def tick(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield tick
