"""Protected remotes: creating one (:func:`init_remote`) with its configuration and
pre-receive hook, and the check that hook runs on every push (:func:`pre_receive`)."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import site
import stat
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pygit2

import ledger
from ledger import errors, store
from ledger.replicate import chain, check, remotes, shared
from ledger.verify import local

HOOK_SCRIPT = """#!/bin/sh
# Installed by 'ledger remote init': verifies every record pushed to this ledger remote,
# with the Python and the ledger package that created it.
{pythonpath}exec {python} -m ledger.hook {mode}
"""
#: The remote's config key of the user-presence policy (``git config ledger.requireUserPresence
#: true`` in the remote).
REQUIRE_USER_PRESENCE = "ledger.requireUserPresence"
_PYTHONPATH_LINES = """PYTHONPATH={home}${{PYTHONPATH:+:$PYTHONPATH}}
export PYTHONPATH
"""


def hook_script(
    python: str, package_home: Path, *, shared: bool = False, hook: str = "pre-receive"
) -> str:
    """The pre-receive script: ``python`` runs ``ledger.hook`` from ``package_home`` (the
    directory holding the ``ledger`` package), which goes first on PYTHONPATH unless it is
    one of the interpreter's site-packages directories (found there anyway; putting it
    before the standard library could shadow it). git runs hooks with the server's
    environment, where the package need not be importable: it may only have been on the
    PYTHONPATH of whoever ran ``ledger remote init``. ``shared``: the check of a shared
    remote (:mod:`.shared`) whatever the repository's config says (for servers such as
    gitolite that create the repository themselves). ``hook="post-receive"``: the shared
    remote's post-receive step (:func:`ledger.hook.post_receive`)."""
    site_dirs = {Path(d).resolve() for d in [*site.getsitepackages(), site.getusersitepackages()]}
    home = package_home.resolve()
    pythonpath = "" if home in site_dirs else _PYTHONPATH_LINES.format(home=shlex.quote(str(home)))
    return HOOK_SCRIPT.format(
        python=shlex.quote(python),
        pythonpath=pythonpath,
        mode=f"{hook} --shared" if shared and hook == "pre-receive" else hook,
    )


def init_remote(
    path: Path | str,
    *,
    genesis: str | None = None,
    shared: bool = False,
    require_user_presence: bool = False,
) -> Path:
    """Create a protected bare remote at ``path``.

    It refuses non-fast-forward updates and deletions, checks objects, and has a pre-receive
    hook that verifies every pushed record (``ledger hook pre-receive``). ``genesis`` pins the
    ledger it accepts; without it, the first push pins it. ``shared``: a remote for many
    ledgers, each at ``refs/ledgers/<ledger id>/main`` and checked as its own chain
    (:mod:`.shared`; ``ledger.shared = true``), each genesis pinned by its first push.
    ``require_user_presence`` sets :data:`REQUIRE_USER_PRESENCE` (FORMAT.md §6.1).
    """
    if shared and genesis is not None:
        raise errors.InputError(
            "a shared remote holds many ledgers: each one's genesis is pinned by its first "
            "push, so it takes no --trust-genesis.",
            hint="Leave out --trust-genesis, or create a remote for one ledger without --shared.",
        )
    path = remotes.new_directory(
        path,
        "ledger remote init",
        url_hint="It makes the repository on this machine's disk: run it on the server that "
        "will hold the remote and give the repository's path there (./NAME for a local name "
        "with a colon); to serve it over ssh://, git:// or https://, see docs/FLEET.md "
        "('Deploying on gitolite').",
        taken_hint="Choose a new path.",
    )
    if genesis is not None and not re.fullmatch(r"[0-9a-f]{40}", genesis):
        raise errors.InputError(
            f"{genesis!r} is not a full commit id (40 lowercase hex digits).",
            hint="Pass the genesis commit id that 'ledger log' shows as seq 0.",
        )
    try:
        with store.created(path):  # (a failure leaves no half-made remote behind)
            _make_remote(path, genesis, shared, require_user_presence)
    except (pygit2.GitError, OSError) as exc:
        raise errors.StorageError(
            f"could not create the remote at {path}: {exc}.",
            hint="Check the path, its permissions and free disk space; nothing was left there.",
        ) from None
    return path


def _make_remote(
    path: Path, genesis: str | None, shared: bool, require_user_presence: bool
) -> None:
    """The bare repository of :func:`init_remote`: protected, configured, with its hooks."""
    repo = pygit2.init_repository(str(path), bare=True, initial_head="main")
    cfg = repo.config
    store.protect(cfg)
    cfg["ledger.remote"] = True
    if shared:
        cfg["ledger.shared"] = True
    if genesis:
        cfg["ledger.genesis"] = genesis
    if require_user_presence:
        cfg[REQUIRE_USER_PRESENCE] = True
    hooks = Path(repo.path) / "hooks"
    hooks.mkdir(exist_ok=True)
    home = Path(ledger.__file__).parent.parent
    for name in ("pre-receive", "post-receive") if shared else ("pre-receive",):
        hook = hooks / name
        hook.write_text(hook_script(sys.executable, home, shared=shared, hook=name))
        hook.chmod(hook.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@dataclass
class HookResult:
    ok: bool
    messages: list[str]


def pre_receive(
    repo_dir: Path,
    updates: Iterable[str],
    environ: Mapping[str, str] | None = None,
    *,
    shared_remote: bool = False,
) -> HookResult:
    """The pre-receive check of a protected remote.

    ``updates`` are the hook's input lines ``OLD NEW REFNAME``. Only ``refs/heads/main`` may
    change, only forward, and the resulting chain must verify from the pinned genesis
    (``ledger.genesis`` of the remote; pinned by the first accepted push when unset). With
    ``ledger.requireUserPresence`` true in the remote's config, a security key's signature
    without the user-presence flag refuses the push (FORMAT.md §6).
    A shared remote (``shared_remote``, or ``ledger.shared`` in its config) is checked by
    :func:`.shared.check_updates` instead: each ``refs/ledgers/<id>/main`` its own chain.
    """
    repo = _open_received(repo_dir, os.environ if environ is None else environ)
    presence = _config_bool(repo, REQUIRE_USER_PRESENCE)
    if shared_remote or _config_bool(repo, "ledger.shared"):
        return HookResult(*shared.check_updates(repo, updates, require_user_presence=presence))
    pinned = str(repo.config["ledger.genesis"]) if "ledger.genesis" in repo.config else None
    messages: list[str] = []
    verified: list[Any] = []
    ok = True
    pin_now: str | None = None
    for line in updates:
        fields = line.split()
        if len(fields) != 3:
            continue
        old, new, ref = fields
        refusal = _refusal(repo, old, new, ref)
        if refusal is not None:
            ok = False
            messages.append(refusal)
            continue
        genesis = pinned or pin_now
        # The remote's own state for the head being extended: that chain verified from the
        # pinned genesis, and NEW descends from OLD (checked above), so its root is known
        # without walking the whole history (a push costs what it adds).
        since = local.hook_since(repo, old, genesis) if genesis is not None else None
        root = since.genesis if since is not None else chain.root_commit(repo, new)
        if genesis is not None and root != genesis:
            ok = False
            messages.append(
                f"refusing {ref}: the chain of {new} starts at {root}, not at the "
                f"pinned genesis {genesis} of this remote [rule: genesis-mismatch]"
            )
            continue
        if since is None:
            since = local.hook_since(repo, old, genesis or root)
        problems, result = check.verify_head(
            repo,
            new,
            trust_genesis=genesis or root,
            since=since,
            require_user_presence=presence,
        )
        if problems:
            ok = False
            messages.append(f"refusing {ref} -> {new}: {len(problems)} problem(s) found:")
            messages.extend(f"  {p}" for p in problems[:20])
            if len(problems) > 20:
                messages.append(f"  ... and {len(problems) - 20} more")
            continue
        if result.state is not None:
            verified.append(result.state)
        if genesis is None:
            pin_now = root
        messages.append(
            f"accepted {ref}: {chain.short(old) if old != chain.ZERO_OID else 'new'} -> "
            f"{chain.short(new)} (seq {chain.commit_seq(repo, new)})"
        )
    if ok and pin_now and pinned is None:
        repo.config["ledger.genesis"] = pin_now
        messages.append(f"pinned genesis {pin_now}")
    if ok and verified:
        # Lets the next push verify only its new records (matched by the old head).
        local.hook_remember(repo, verified[-1])
    return HookResult(ok, messages)


def _config_bool(repo: pygit2.Repository, name: str) -> bool:
    """A boolean of the remote's config; a value git would not read as one is true (the
    stricter reading: a typo must not switch a check off)."""
    try:
        return name in repo.config and repo.config.get_bool(name)
    except (pygit2.GitError, ValueError):
        return True


def _open_received(repo_dir: Path, env: Mapping[str, str]) -> pygit2.Repository:
    """The remote's repository, seeing the pushed objects too: during pre-receive git keeps
    them in a quarantine directory named by the environment."""
    extra: list[Path] = []
    for var in ("GIT_QUARANTINE_PATH", "GIT_OBJECT_DIRECTORY"):
        value = env.get(var)
        if value:
            p = Path(value)
            extra.append(p if p.is_absolute() else (repo_dir / p))
    for value in (env.get("GIT_ALTERNATE_OBJECT_DIRECTORIES") or "").split(":"):
        if value:
            extra.append(Path(value) if Path(value).is_absolute() else repo_dir / value)
    repo = pygit2.Repository(str(repo_dir), store.OPEN_FLAGS)
    for d in extra:
        with contextlib.suppress(pygit2.GitError):
            repo.odb.add_disk_alternate(str(d))
    return repo


def _refusal(repo: pygit2.Repository, old: str, new: str, ref: str) -> str | None:
    """Why the update ``old -> new`` of ``ref`` is refused before any record is read, or
    None: only main, never deleted, only forward, and the new head must be a pushed commit."""
    if ref != chain.MAIN_REF:
        return (
            f"refusing {ref}: only {chain.MAIN_REF} may be updated on a ledger "
            "remote [rule: main-only]"
        )
    if new == chain.ZERO_OID:
        return f"refusing to delete {ref}: a ledger is never deleted [rule: no-delete]"
    try:
        commit = repo[new]
    except (KeyError, ValueError):
        return f"refusing {ref} -> {new}: the commit is not in the push"
    if not isinstance(commit, pygit2.Commit):
        return f"refusing {ref} -> {new}: not a commit"
    if old != chain.ZERO_OID and not chain.is_ancestor(repo, old, new):
        return (
            f"refusing {ref}: {new} does not extend {old}; a ledger only grows [rule: fast-forward]"
        )
    return None
