"""The auditor's state of one fleet copy (FLEET-CONTRACT §2), in the user's state directory:
``fleets/<sha256 of the copy's real git dir>/fleet.json`` and ``ledgers/<id>.json``.

(Stub of the FLEETCOPY helper's module: the contract's JSON under the brief's names. The
merger keeps theirs.)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pygit2

from ledger import errors
from ledger.verify import local
from ledger.verify import state as verify_state

FORMAT = 1


@dataclass
class LedgerSeen:
    first_seen: str
    last_seen: str


@dataclass
class FleetState:
    ledgers: dict[str, LedgerSeen] = field(default_factory=dict)


@dataclass
class RemoteSeen:
    head: str
    seq: int | None
    seen_at: str


@dataclass
class LedgerState:
    ledger_id: str
    verified: verify_state.VerifiedState | None = None
    remotes: dict[str, RemoteSeen] = field(default_factory=dict)
    claims: list[dict[str, Any]] = field(default_factory=list)
    outcome: dict[str, Any] | None = None


def state_dir(copy_path: Path | str) -> Path:
    gitdir = Path(pygit2.Repository(str(copy_path)).path).resolve()
    key = hashlib.sha256(str(gitdir).encode()).hexdigest()
    return local.state_root() / "fleets" / key


def _read(path: Path) -> Any:
    local.check_private_dir(path.parent)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise errors.StorageError(
            f"the fleet state file {path} cannot be read: {exc}.",
            hint="Delete it: the next 'ledger fleet verify' verifies that ledger again.",
        ) from None


def _write(path: Path, doc: dict[str, Any]) -> None:
    local.ensure_private_dir(path.parent)
    local._write_private(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


def load_fleet(copy_path: Path | str) -> FleetState | None:
    doc = _read(state_dir(copy_path) / "fleet.json")
    if doc is None:
        return None
    try:
        return FleetState(
            {k: LedgerSeen(v["first_seen"], v["last_seen"]) for k, v in doc["ledgers"].items()}
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise errors.StorageError(f"the fleet state fleet.json is malformed ({exc}).") from None


def save_fleet(copy_path: Path | str, fleet: FleetState) -> None:
    doc = {
        "format": FORMAT,
        "ledgers": {
            k: {"first_seen": v.first_seen, "last_seen": v.last_seen}
            for k, v in sorted(fleet.ledgers.items())
        },
    }
    _write(state_dir(copy_path) / "fleet.json", doc)


def load_ledger(copy_path: Path | str, ledger_id: str) -> LedgerState | None:
    path = state_dir(copy_path) / "ledgers" / f"{ledger_id}.json"
    doc = _read(path)
    if doc is None:
        return None
    try:
        verified = doc.get("verified")
        return LedgerState(
            ledger_id=doc["ledger_id"],
            verified=None if verified is None else verify_state.VerifiedState.from_json(verified),
            remotes={
                k: RemoteSeen(v["head"], v.get("seq"), v["seen_at"])
                for k, v in doc.get("remotes", {}).items()
            },
            claims=list(doc.get("claims", [])),
            outcome=doc.get("outcome"),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise errors.StorageError(f"the fleet state {path} is malformed ({exc}).") from None


def save_ledger(copy_path: Path | str, led: LedgerState) -> None:
    doc = {
        "format": FORMAT,
        "ledger_id": led.ledger_id,
        "verified": None if led.verified is None else led.verified.to_json(),
        "remotes": {
            k: {"head": v.head, "seq": v.seq, "seen_at": v.seen_at}
            for k, v in sorted(led.remotes.items())
        },
        "claims": led.claims,
        "outcome": led.outcome,
    }
    _write(state_dir(copy_path) / "ledgers" / f"{led.ledger_id}.json", doc)
