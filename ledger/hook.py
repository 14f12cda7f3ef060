"""The pre-receive hook of protected remotes, as a light entry point.

git runs ``python -m ledger.hook pre-receive`` in the remote with the ref updates on
standard input. This module imports only the library (not the CLI), so a push pays for as
little start-up as possible. Exit status 0 accepts the push; 1 refuses it, and what was
written to standard error reaches the pusher.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ledger.errors import LedgerError
from ledger.replicate import protect


def pre_receive(stdin_lines: list[str], *, shared: bool = False) -> int:
    """Check the pushed updates; print the verdict for the pusher; return the exit status.

    ``shared``: check them as a shared remote's (``refs/ledgers/<id>/main``, each its own
    chain) whatever the repository's config says."""
    repo_dir = Path(os.environ.get("GIT_DIR") or ".").resolve()
    try:
        result = protect.pre_receive(repo_dir, stdin_lines, shared_remote=shared)
    except LedgerError as exc:
        sys.stderr.write(f"ledger: push refused: the check could not run: {exc.diagnostics()}\n")
        return 1
    for message in result.messages:
        sys.stderr.write(f"ledger: {message}\n")
    sys.stderr.flush()
    return 0 if result.ok else 1


def post_receive(stdin_lines: list[str]) -> int:
    """A shared remote's post-receive step: the updated refs' verified states become the
    ones the next push resumes from and the pins of their genesis. Never fails the push
    (it has happened); a lost step only costs the next push a full verification."""
    repo_dir = Path(os.environ.get("GIT_DIR") or ".").resolve()
    try:
        protect.post_receive(repo_dir, stdin_lines)
    except LedgerError as exc:
        sys.stderr.write(f"ledger: post-receive: {exc.diagnostics()}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["post-receive"]:
        return post_receive(sys.stdin.read().splitlines())
    if args not in (["pre-receive"], ["pre-receive", "--shared"]):
        sys.stderr.write("usage: python -m ledger.hook pre-receive [--shared] | post-receive\n")
        return 2
    return pre_receive(sys.stdin.read().splitlines(), shared="--shared" in args)


if __name__ == "__main__":
    sys.exit(main())
