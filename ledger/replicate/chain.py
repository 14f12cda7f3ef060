"""Commits and chains as replication sees them: our main head, a commit's seq, the genesis
of a chain, ancestry, and how many records one head has beyond another."""

from __future__ import annotations

import pygit2

from ledger import errors, store
from ledger.format import records

MAIN_REF = store.MAIN_REF  # the replicate modules' short name for the store's one home
ZERO_OID = "0" * 40


def main_head(repo: pygit2.Repository) -> str | None:
    """Our ``main`` head; :class:`~ledger.errors.CorruptLedger` when it cannot be read."""
    from ledger.store import gitdir

    target = gitdir.main_target(repo, repo.path)
    return str(target) if target is not None else None


def commit_seq(repo: pygit2.Repository, oid: str) -> int | None:
    """The seq of a ledger commit (its ``Ledger-Seq`` trailer), or its chain position."""
    try:
        commit = repo[oid]
    except (KeyError, ValueError):
        return None
    if not isinstance(commit, pygit2.Commit):
        return None
    value = records.parse_trailers(commit.message).get("Ledger-Seq")
    if value is not None and value.isdigit():
        return int(value)
    n = 0
    while commit.parents:
        commit = commit.parents[0]
        n += 1
    return n


def root_commit(repo: pygit2.Repository, oid: str) -> str:
    """The first commit of the first-parent chain ending at ``oid`` (its genesis)."""
    commit = repo.get(oid)
    if not isinstance(commit, pygit2.Commit):
        raise errors.StorageError(f"object {oid} is not a commit or is missing.")
    while commit.parents:
        commit = commit.parents[0]
    return str(commit.id)


def short(oid: str | None) -> str:
    return oid[:12] if oid else "(none)"


def is_ancestor(repo: pygit2.Repository, ancestor: str, descendant: str) -> bool:
    if ancestor == descendant:
        return True
    try:
        return bool(repo.descendant_of(descendant, ancestor))
    except (KeyError, ValueError, pygit2.GitError):
        return False


def has(repo: pygit2.Repository, oid: str) -> bool:
    try:
        return oid in repo.odb
    except (ValueError, pygit2.GitError):
        return False


def ahead(repo: pygit2.Repository, new: str, old: str | None) -> int:
    """How many records ``new`` has that ``old`` has not (``old`` an ancestor or None)."""
    new_seq = commit_seq(repo, new)
    if old is None:
        return (new_seq or 0) + 1
    old_seq = commit_seq(repo, old)
    if new_seq is not None and old_seq is not None:
        return max(new_seq - old_seq, 0)
    ahead, _behind = repo.ahead_behind(new, old)
    return int(ahead)
