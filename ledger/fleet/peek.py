"""Unverified reads of one object of a fleet copy, bounded in size, for what is shown
before (or without) a verification: a head's ``Ledger-Seq`` when a fetch records it, a
head's name and host for ``ledger fleet status``. Nothing decided from them is trusted:
``fleet status`` marks such lines ``unverified`` unless the head is the one ``fleet
verify`` verified (docs/FLEET.md)."""

from __future__ import annotations

import json

import pygit2

#: The largest object read here (a record is far smaller; a larger object is not read).
MAX_OBJECT_BYTES = 4 << 20


def head_seq(repo: pygit2.Repository, oid: str) -> int | None:
    """The ``Ledger-Seq`` trailer of commit ``oid`` (unverified), None when unreadable."""
    message = read_commit_message(repo, oid)
    if message is None:
        return None
    trailers = message.rstrip("\n").rsplit("\n\n", 1)[-1]
    for line in trailers.split("\n"):
        key, sep, value = line.partition(": ")
        if sep and key == "Ledger-Seq" and value.isdigit() and len(value) < 19:
            return int(value)
    return None


def read_commit_message(repo: pygit2.Repository, oid: str) -> str | None:
    """The message of commit ``oid`` if it is a commit of at most :data:`MAX_OBJECT_BYTES`."""
    try:
        kind, size = repo.odb.read_header(oid)
        if kind != pygit2.enums.ObjectType.COMMIT or size > MAX_OBJECT_BYTES:
            return None
        commit = repo[oid]
    except (KeyError, ValueError, pygit2.GitError):
        return None
    if not isinstance(commit, pygit2.Commit):
        return None
    try:
        return str(commit.message)
    except (UnicodeDecodeError, ValueError):
        return None


def read_json_blob(repo: pygit2.Repository, tree: pygit2.Tree, path: str) -> object:
    """The JSON file at ``path`` in ``tree`` (unverified), or None when it is not a readable
    JSON blob of at most :data:`MAX_OBJECT_BYTES`."""
    try:
        entry = tree[path]
        kind, size = repo.odb.read_header(entry.id)
        if kind != pygit2.enums.ObjectType.BLOB or size > MAX_OBJECT_BYTES:
            return None
        return json.loads(repo.odb.read(entry.id)[1])
    except (KeyError, ValueError, TypeError, pygit2.GitError, RecursionError):
        return None
