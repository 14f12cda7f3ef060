"""STUB of FLEETAUDIT's ``verify_fleet`` (FLEET-CONTRACT §3), only so that the fleet report
runs end to end before the real one lands; the merger drops this commit.

Each ledger ``refs/fleet/<remote>/<id>/main`` of the copy is verified with
:func:`ledger.verify.chain.verify_chain`, incrementally from a state kept in
``<state_root>/fleet-stub/<id>.json``, pinned to the auditor's own pin (TOFU).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pygit2

from ledger import errors
from ledger.fleet import copy
from ledger.format import records
from ledger.verify import chain, findings, local, state


@dataclass
class LedgerOutcome:
    ledger_id: str
    name: str
    host: str
    heads: dict[str, str]
    seq: int | None
    head: str | None
    records_checked: int
    status: str
    findings: list[Any] = field(default_factory=list)


@dataclass
class FleetResult:
    ledgers: list[LedgerOutcome]

    @property
    def ok(self) -> bool:
        return all(o.status in ("ok", "new") for o in self.ledgers)


def _state_file(ledger_id: str) -> Path:
    return local.state_root() / "fleet-stub" / f"{ledger_id}.json"


def _load(ledger_id: str) -> state.VerifiedState | None:
    try:
        return state.VerifiedState.from_json(json.loads(_state_file(ledger_id).read_text()))
    except (OSError, ValueError, errors.LedgerError):
        return None


def _record_at(repo: pygit2.Repository, head: str, path: str | None = None) -> dict[str, Any]:
    commit = repo[head]
    if not isinstance(commit, pygit2.Commit):
        return {}
    path = path or records.parse_trailers(commit.message).get("Ledger-Record", "")
    doc = json.loads(repo[commit.tree[path].id].data)
    return doc if isinstance(doc, dict) else {}


def verify_fleet(
    path: Path,
    *,
    pins: Path | None = None,
    jobs: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FleetResult:
    repo = copy.open_copy(path)
    out: list[LedgerOutcome] = []
    for ledger_id, heads in sorted(copy.heads(repo).items()):
        saved = _load(ledger_id)
        head = sorted(heads.values())[0]
        pin = local.own_pin(ledger_id)
        result = chain.verify_chain(repo, head, since=saved, trust_genesis=pin)
        if result.ok and result.state is not None:
            local.ensure_private_dir(_state_file(ledger_id).parent)
            _state_file(ledger_id).write_text(json.dumps(result.state.to_json()))
            if pin is None:
                local.save_pin(ledger_id, result.state.genesis)
            verified: str | None = result.state.head
            seq: int | None = result.state.seq
        else:
            verified = saved.head if saved is not None else None
            seq = saved.seq if saved is not None else None
        name = host = ""
        if verified is not None:
            name = str(_record_at(repo, verified, records.GENESIS_PATH).get("data", {}).get("name"))
            host = str(_record_at(repo, verified).get("host", ""))
        fs: list[findings.Finding] = list(result.findings)
        out.append(
            LedgerOutcome(
                ledger_id,
                name,
                host,
                dict(heads),
                seq,
                verified,
                result.records_checked,
                "ok" if not fs else "findings",
                fs,
            )
        )
    return FleetResult(out)
