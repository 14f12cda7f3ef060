"""``ledger fleet status``: per ledger of a fleet copy, its name, host, head seq, the time of
its last record and when each remote's head was first seen by a fetch.

Nothing here verifies anything. Name, host and time are read from the records of the head
commit (the genesis record's ``data.name``, the head record's ``host`` and ``time``): bytes
anyone who can write a shared remote or the copy controls, unless that head is the one
``ledger fleet verify`` last verified (the auditor state's ``verified.head``). Each line says
which: ``verified`` only then, and only when that verification had no finding; ``findings``
when the last verification had findings; ``unverified`` otherwise. "First seen" is when a
fetch of this copy first found a remote holding that head, not when it was pushed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pygit2

from ledger.fleet import copy, peek, state

#: Control characters, line separators and bidirectional overrides: never shown as read.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
MAX_SHOWN = 120

VERIFIED = "verified"
UNVERIFIED = "unverified"
FINDINGS = "findings"
VANISHED = "vanished"


@dataclass
class RemoteView:
    """One remote's head of one ledger, as the copy holds it and the state remembers it."""

    name: str
    head: str | None  # in the copy now (None: not on this remote any more)
    seq: int | None
    first_seen: str | None  # when a fetch first saw this remote hold this head
    vanished_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "head": self.head,
            "seq": self.seq,
            "first_seen": self.first_seen,
            "vanished_at": self.vanished_at,
        }


@dataclass
class LedgerLine:
    """One ledger of the fleet; ``name``, ``host`` and ``time`` are unverified unless
    ``check`` is ``verified``."""

    ledger_id: str
    check: str  # verified, unverified, findings, vanished
    head: str | None = None
    seq: int | None = None
    name: str | None = None
    host: str | None = None
    time: str | None = None  # the head record's time
    remotes: list[RemoteView] = field(default_factory=list)
    verified_head: str | None = None
    verified_seq: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ledger_id": self.ledger_id,
            "check": self.check,
            "verified": self.check == VERIFIED,
            "head": self.head,
            "seq": self.seq,
            "name": self.name,
            "host": self.host,
            "last_record_time": self.time,
            "verified_head": self.verified_head,
            "verified_seq": self.verified_seq,
            "remotes": {r.name: r.to_json() for r in self.remotes},
        }


@dataclass
class FleetStatus:
    path: Path
    ledgers: list[LedgerLine]
    as_of: str
    warnings: list[str] = field(default_factory=list)  # refs of remotes not added here

    def to_json(self) -> dict[str, Any]:
        return {
            "fleet": str(self.path),
            "as_of": self.as_of,
            "ledgers": [line.to_json() for line in self.ledgers],
            "warnings": list(self.warnings),
        }


def shown(value: object) -> str | None:
    """A string read from unverified bytes, safe for one line of a terminal."""
    if not isinstance(value, str):
        return None
    text = _CONTROL_RE.sub("?", value).strip()
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"


def _read_head(repo: pygit2.Repository, line: LedgerLine) -> None:
    """Name, host and time from the records of ``line.head`` (bounded reads; anything
    unreadable is left unknown)."""
    head = line.head
    message = peek.read_commit_message(repo, head) if head else None
    if head is None or message is None:
        return
    try:
        commit = repo[head]
        tree = commit.tree if isinstance(commit, pygit2.Commit) else None
    except (KeyError, ValueError, pygit2.GitError):
        return
    if tree is None:
        return
    trailers = dict(
        part.partition(": ")[::2] for part in message.rstrip("\n").rsplit("\n\n", 1)[-1].split("\n")
    )
    genesis = peek.read_json_blob(repo, tree, "genesis.json")
    if isinstance(genesis, dict) and isinstance(genesis.get("data"), dict):
        line.name = shown(genesis["data"].get("name"))
    record = peek.read_json_blob(repo, tree, trailers.get("Ledger-Record", ""))
    if isinstance(record, dict):
        line.host = shown(record.get("host"))
        line.time = shown(record.get("time"))


def _choose_head(views: list[RemoteView], verified: str | None) -> RemoteView | None:
    """The head a line shows: the verified one if a remote holds it, else the furthest."""
    held = [v for v in views if v.head is not None]
    for v in held:
        if v.head == verified:
            return v
    return max(held, key=lambda v: v.seq if v.seq is not None else -1, default=None)


def _line(
    repo: pygit2.Repository,
    lid: str,
    held: dict[str, str],
    remembered: state.LedgerState | None,
    remotes: dict[str, str],
) -> LedgerLine:
    views: list[RemoteView] = []
    mem = remembered.remotes if remembered is not None else {}
    mem = {name: r for name, r in mem.items() if name in remotes}  # (only those added)
    for name in sorted(set(held) | set(mem)):
        head = held.get(name)
        before = mem.get(name)
        if head is None:
            vanished = before.vanished_at if before is not None else None
            views.append(RemoteView(name, None, None, None, vanished))
            continue
        seen = before.seen_at if before is not None and before.head == head else None
        views.append(RemoteView(name, head, peek.head_seq(repo, head), seen))
    verified = remembered.verified if remembered is not None else None
    line = LedgerLine(lid, UNVERIFIED, remotes=views)
    if verified is not None:
        line.verified_head, line.verified_seq = verified.head, verified.seq
    chosen = _choose_head(views, line.verified_head)
    if chosen is None:
        line.check = VANISHED
        return line
    line.head, line.seq = chosen.head, chosen.seq
    _read_head(repo, line)
    outcome = remembered.outcome if remembered is not None else None
    if outcome is not None and not outcome.ok:
        line.check = FINDINGS
    elif line.verified_head is not None and chosen.head == line.verified_head:
        line.check = VERIFIED
    return line


def fleet_status(path: Path | str) -> FleetStatus:
    """The status of every ledger in the copy and in the auditor's memory of it."""
    repo = copy.open_copy(path)
    remembered = state.load_fleet(repo)
    in_copy, warnings = copy.added_heads(repo, remembered.remotes)  # (only those added here)
    lines = []
    for lid in sorted(set(in_copy) | set(remembered.ledgers)):
        saved = state.load_ledger(repo, lid)
        if saved is None and lid not in in_copy:
            continue  # (its file deleted by the auditor: forgotten, as fleet verify does)
        lines.append(_line(repo, lid, in_copy.get(lid, {}), saved, remembered.remotes))
    return FleetStatus(Path(path), lines, state.now(), warnings)


def age(since: str | None, now: str) -> str:
    """``3m``, ``5h``, ``2d`` between two state timestamps (``?`` when unreadable)."""
    try:
        fmt = "%Y-%m-%dT%H:%M:%S.%fZ"
        a = datetime.strptime(since or "", fmt).replace(tzinfo=UTC)
        b = datetime.strptime(now, fmt).replace(tzinfo=UTC)
    except ValueError:
        return "?"
    seconds = max(int((b - a).total_seconds()), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
