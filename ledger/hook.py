"""The hooks of protected remotes, as a light entry point.

git runs ``python -m ledger.hook pre-receive`` in the remote with the ref updates on
standard input. This module imports only the library (not the CLI), so a push pays for as
little start-up as possible. Exit status 0 accepts the push; 1 refuses it, and what was
written to standard error reaches the pusher.

A shared remote also runs ``python -m ledger.hook post-receive``, which needs nothing but
the standard library (it only promotes the state files the pre-receive check wrote; see
:mod:`ledger.replicate.shared`), so it does not import the replication package at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from ledger import errors, quick_exit

# The layout of ledger.replicate.shared (a test checks they agree): not imported from
# there, so that post-receive pays for no more than the standard library.
SHARED_REF_RE = re.compile(r"^refs/ledgers/([0-9a-f]{32})/main$")
SHARED_STATE_SUBDIR = ("ledger-state", "ledgers")
#: Opt-in timing of the pre-receive check (:func:`report_timing`).
TIMING_ENV = "LEDGER_HOOK_TIMING"


def pre_receive(stdin_lines: list[str], *, shared: bool = False) -> int:
    """Check the pushed updates; print the verdict for the pusher; return the exit status.

    ``shared``: check them as a shared remote's (``refs/ledgers/<id>/main``, each its own
    chain) whatever the repository's config says."""
    started = (time.perf_counter(), time.process_time())
    from ledger.replicate import protect  # the heavy part: only the check needs it

    imported = (time.perf_counter(), time.process_time())
    repo_dir = Path(os.environ.get("GIT_DIR") or ".").resolve()
    try:
        result = protect.pre_receive(repo_dir, stdin_lines, shared_remote=shared)
    except errors.LedgerError as exc:
        sys.stderr.write(f"ledger: push refused: the check could not run: {exc.diagnostics()}\n")
        return 1
    for message in result.messages:
        sys.stderr.write(f"ledger: {message}\n")
    timing = os.environ.get(TIMING_ENV, "")
    if timing:
        report_timing(timing, stdin_lines, started, imported, ok=result.ok)
    sys.stderr.flush()
    return 0 if result.ok else 1


def report_timing(
    where: str,
    stdin_lines: list[str],
    started: tuple[float, float],
    imported: tuple[float, float],
    *,
    ok: bool,
) -> None:
    """``LEDGER_HOOK_TIMING`` (opt-in, the server's environment): one line saying how long
    the check took, to standard error (``1``: it reaches the pusher as ``remote:`` lines)
    or appended to a file (an absolute path: a server-side log). Wall and CPU time of the
    check (this process's own CPU, so other load on the server does not inflate it), and
    the import of the replication package that precedes it."""
    wall, cpu = time.perf_counter() - imported[0], time.process_time() - imported[1]
    refs = " ".join(f[2] for f in (line.split() for line in stdin_lines) if len(f) == 3)
    line = (
        f"ledger-hook: checked {len(refs.split())} ref update(s) in {wall * 1000:.1f} ms "
        f"(cpu {cpu * 1000:.1f} ms; before it, import {(imported[0] - started[0]) * 1000:.1f} "
        f"ms) at {time.time():.3f}, "
        f"{'accepted' if ok else 'refused'}: {refs}\n"
    )
    if where == "1":
        sys.stderr.write(line)
        return
    if os.path.isabs(where):
        with contextlib.suppress(OSError):
            fd = os.open(where, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())  # one write: lines of concurrent hooks stay whole
            finally:
                os.close(fd)


def post_receive(stdin_lines: list[str]) -> int:
    """A shared remote's post-receive step: for each ref git updated, the state the
    pre-receive check left pending for that head becomes confirmed (the ledger's pin and
    where its next push resumes). Never fails the push (it has happened); a lost step only
    costs the next push a full verification of that ledger."""
    repo_dir = Path(os.environ.get("GIT_DIR") or ".").resolve()
    for line in stdin_lines:
        fields = line.split()
        match = SHARED_REF_RE.match(fields[2]) if len(fields) == 3 else None
        if match is not None:
            confirm_pending(repo_dir.joinpath(*SHARED_STATE_SUBDIR, f"{match[1]}.json"), fields[1])
    return 0


def confirm_pending(path: Path, new: str) -> None:
    """Promote the file's ``pending`` state to ``confirmed`` if its head is ``new``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    pending = data.get("pending") if isinstance(data, dict) else None
    if not isinstance(pending, dict) or pending.get("head") != new:
        return
    data["confirmed"] = pending
    with contextlib.suppress(OSError):
        fd, tmp = tempfile.mkstemp(prefix=".slot-", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["post-receive"]:
        return post_receive(sys.stdin.read().splitlines())
    if args not in (["pre-receive"], ["pre-receive", "--shared"]):
        sys.stderr.write("usage: python -m ledger.hook pre-receive [--shared] | post-receive\n")
        return 2
    return pre_receive(sys.stdin.read().splitlines(), shared="--shared" in args)


if __name__ == "__main__":
    quick_exit.end(main())
