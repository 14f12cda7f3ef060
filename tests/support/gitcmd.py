"""Stock git in tests: an independent judge, never part of the product."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def git(
    *args: str | os.PathLike[str],
    cwd: Path | None = None,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run stock git with the test environment (plus ``env``) and capture its output."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(
        ["git", *[str(a) for a in args]],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        check=check,
    )


def explode_packs(gitdir: Path) -> None:
    """Turn every pack of a repository into loose objects with stock git, so a test can
    damage one object file (appends write packs)."""
    for pack in sorted((gitdir / "objects" / "pack").glob("pack-*.pack")):
        data = pack.read_bytes()
        for suffix in (".idx", ".rev", ".pack"):
            pack.with_suffix(suffix).unlink(missing_ok=True)
        subprocess.run(
            ["git", "--git-dir", str(gitdir), "unpack-objects", "-q"],
            input=data,
            capture_output=True,
            check=True,
        )


def loose_object(gitdir: Path, oid: str) -> Path:
    """The loose file of object ``oid`` (packs are exploded first)."""
    explode_packs(gitdir)
    return gitdir / "objects" / oid[:2] / oid[2:]
