"""The ``witness`` record kind as the verifier reads it (FORMAT.md §5): its data shape, and the
heads it reports (``VerifyResult.witnessed``) only for records that passed every check."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from support.gitcmd import git
from support.tamper import build, forge_append, rules_at

from ledger.keys import SigningKey
from ledger.store import Ledger
from ledger.verify import WitnessClaim, verify_ledger

OTHER = "0123456789abcdef0123456789abcdef"


def head_entry(ledger_id: str, seq: int, commit: str, raw: bytes | None = None) -> dict[str, Any]:
    body = raw if raw is not None else commit.encode()
    digest = hashlib.sha256(b"commit %d\0" % len(body) + body).hexdigest()
    return {"ledger": ledger_id, "seq": seq, "commit": commit, "sha256": digest}


def test_a_witness_record_verifies_and_reports_its_heads(tmp_path: Path) -> None:
    other = build(tmp_path, "other")
    other_id = Ledger.open(other.path).ledger_id
    raw = git("cat-file", "commit", other.head(), cwd=other.path).stdout.encode()
    entry = head_entry(other_id, len(other.ids) - 1, other.head(), raw)
    # the digest is that of the commit object as stock git stores it
    assert entry["sha256"] == hashlib.sha256(b"commit %d\0" % len(raw) + raw).hexdigest()
    built = build(tmp_path, "witnessing")
    ledger = Ledger.open(built.path)
    heads = sorted(
        [entry, head_entry(OTHER, 0, "a" * 40)], key=lambda h: (h["ledger"], h["commit"])
    )
    appended = ledger.append("witness", {"heads": heads}, key=built.alice)
    result = verify_ledger(built.path)
    assert result.ok, result.findings
    assert result.witnessed == [
        WitnessClaim(
            ledger.ledger_id,
            appended.seq,
            appended.commit_id,
            h["ledger"],
            h["seq"],
            h["commit"],
            h["sha256"],
        )
        for h in heads
    ]
    # resumed verification reports only the claims of the records it checked
    assert result.state is not None
    ledger.append("event", {"message": "after", "data": None}, key=built.alice)
    again = verify_ledger(built.path, since=result.state)
    assert again.ok and again.witnessed == []
    empty = ledger.append("witness", {"heads": []}, key=built.alice)
    assert verify_ledger(built.path).ok and empty.seq > appended.seq


@pytest.mark.parametrize(
    ("heads", "why"),
    [
        ([{"ledger": OTHER, "seq": 1, "commit": "a" * 40}], "a head without sha256"),
        ([{**head_entry(OTHER, 1, "a" * 40), "extra": 1}], "an unknown field"),
        ([head_entry(OTHER, -1, "a" * 40)], "a negative seq"),
        ([{**head_entry(OTHER, 1, "a" * 40), "seq": True}], "a boolean seq"),
        ([head_entry(OTHER.upper(), 1, "a" * 40)], "an upper-case ledger id"),
        ([head_entry(OTHER, 1, "A" * 40)], "an upper-case commit id"),
        ([head_entry(OTHER, 1, "b" * 40), head_entry(OTHER, 2, "a" * 40)], "unsorted"),
        ([head_entry(OTHER, 1, "a" * 40), head_entry(OTHER, 1, "a" * 40)], "a repeat"),
        ("not a list", "heads not a list"),
    ],
)
def test_a_malformed_witness_record_is_a_schema_finding(
    tmp_path: Path, heads: Any, why: str
) -> None:
    built = build(tmp_path, events_after_key=0)
    forge_append(built, built.alice, kind="witness", data={"heads": heads})
    result = verify_ledger(built.path)
    assert ("record-schema", len(built.ids)) in rules_at(result), (why, result.findings)
    assert result.witnessed == []


def test_a_witness_of_its_own_ledger_is_a_schema_finding(tmp_path: Path) -> None:
    built = build(tmp_path, events_after_key=0)
    own = Ledger.open(built.path).ledger_id
    forge_append(
        built, built.alice, kind="witness", data={"heads": [head_entry(own, 0, built.genesis)]}
    )
    result = verify_ledger(built.path)
    assert ("record-schema", len(built.ids)) in rules_at(result), result.findings
    assert result.witnessed == []


def test_too_many_heads_is_a_schema_finding(tmp_path: Path) -> None:
    built = build(tmp_path, events_after_key=0)
    heads = [head_entry(f"{i:032x}", 1, "a" * 40) for i in range(10_001)]
    forge_append(built, built.alice, kind="witness", data={"heads": heads})
    result = verify_ledger(built.path)
    assert ("record-schema", len(built.ids)) in rules_at(result)
    assert result.witnessed == []


def test_a_witness_signed_by_an_untrusted_key_reports_no_heads(tmp_path: Path) -> None:
    built = build(tmp_path, events_after_key=0)
    mallory = SigningKey.generate()
    forge_append(built, mallory, kind="witness", data={"heads": [head_entry(OTHER, 3, "c" * 40)]})
    result = verify_ledger(built.path)
    assert ("untrusted-key", len(built.ids)) in rules_at(result), result.findings
    assert result.witnessed == []


def test_a_witness_inside_a_run_is_a_schema_finding(tmp_path: Path) -> None:
    built = build(tmp_path, events_after_key=0)
    forge_append(
        built,
        built.alice,
        kind="witness",
        data={"heads": []},
        edit_record=lambda r: r.update(run="20261121T235959Z-0a1b2c3d"),
    )
    result = verify_ledger(built.path)
    assert ("record-schema", len(built.ids)) in rules_at(result), result.findings
