"""Tamper tests: each builds a real ledger with the store, tampers with it using stock git or
pygit2 the way an attacker with write access to the repository could, and asserts that
`verify_ledger` reports the specific rule of docs/FORMAT.md §9."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

import pygit2
import pytest
from support.gitcmd import git, loose_object
from support.tamper import (
    MAIN,
    build,
    forge_append,
    raw_commit,
    rebuild,
    record_blob_id,
    rules_at,
    set_main,
    signed_commit,
    stock_git_tree_with,
    verify,
    write_raw_commit,
)

from ledger.format import gitobj, records
from ledger.keys import SigningKey, sign_commit, split_signed_commit
from ledger.store import Ledger
from ledger.verify import verify_ledger

# --- tests --------------------------------------------------------------------------------


def test_clean_ledger_has_no_findings(tmp_path: Path) -> None:
    built = build(tmp_path)
    result = verify(built, trust_genesis=built.genesis)
    assert result.findings == []
    assert result.ok
    assert result.seq == len(built.ids) - 1
    assert result.head == built.ids[-1]
    assert result.records_checked == len(built.ids)
    assert result.genesis == built.genesis and result.genesis_pinned
    assert result.state is not None and result.state.head == built.ids[-1]
    # Unpinned: still sound, but the result says it was not pinned.
    unpinned = verify(built)
    assert unpinned.ok and not unpinned.genesis_pinned


def test_record_edited_and_recommitted_unsigned(tmp_path: Path) -> None:
    built = build(tmp_path)
    repo = built.repo
    head = repo[built.ids[-1]]
    path = records.parse_trailers(head.message)["Ledger-Record"]
    rec = json.loads(repo[head.tree[path].id].data)
    rec["data"]["message"] = "nothing happened here"
    edited = json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    tree = stock_git_tree_with(
        built.path, built.ids[-2], {path: edited, **_attachments(repo, head)}
    )
    msg = built.path / "tamper-msg"
    msg.write_text(head.message)
    env = {
        "GIT_AUTHOR_NAME": "bob",
        "GIT_AUTHOR_EMAIL": "bob",
        "GIT_COMMITTER_NAME": "bob",
        "GIT_COMMITTER_EMAIL": "bob",
    }
    new = git("commit-tree", tree, "-p", built.ids[-2], "-F", msg, cwd=built.path, env=env)
    set_main(built.path, new.stdout.strip())
    result = verify(built)
    seq = len(built.ids) - 1
    assert ("unsigned", seq) in rules_at(result)
    assert ("record-digest", seq) in rules_at(result)
    assert not result.ok and result.state is None


def _attachments(repo: pygit2.Repository, commit: pygit2.Commit) -> dict[str, bytes]:
    path = records.parse_trailers(commit.message)["Ledger-Record"]
    rec = json.loads(repo[commit.tree[path].id].data)
    return {meta["path"]: repo[commit.tree[meta["path"]].id].data for meta in rec["files"].values()}


def test_signature_stripped(tmp_path: Path) -> None:
    built = build(tmp_path)
    raw = raw_commit(built.repo, built.ids[-1])
    lines = raw.split(b"\n")
    kept = []
    in_sig = False
    for line in lines:
        if line.startswith(b"gpgsig "):
            in_sig = True
            continue
        if in_sig and line.startswith(b" "):
            continue
        in_sig = False
        kept.append(line)
    set_main(built.path, write_raw_commit(built.path, b"\n".join(kept)))
    result = verify(built)
    assert ("unsigned", len(built.ids) - 1) in rules_at(result)
    assert {f.rule for f in result.findings} == {"unsigned"}


def test_second_signature_header(tmp_path: Path) -> None:
    built = build(tmp_path)
    raw = raw_commit(built.repo, built.ids[-1])
    head_block, _, message = raw.partition(b"\n\n")
    lines = head_block.split(b"\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(b"gpgsig "))
    end = start + 1
    while end < len(lines) and lines[end].startswith(b" "):
        end += 1
    doubled = lines[:end] + lines[start:end] + lines[end:]
    tampered = b"\n".join(doubled) + b"\n\n" + message
    set_main(built.path, write_raw_commit(built.path, tampered))
    result = verify(built)
    assert ("signature-headers", len(built.ids) - 1) in rules_at(result)
    # Stock git agrees that this is no longer a good signature.
    assert "gpgsig" in git("cat-file", "-p", built.head(), cwd=built.path).stdout


def test_resigned_by_key_outside_trust_chain(tmp_path: Path) -> None:
    built = build(tmp_path)
    mallory = SigningKey.generate()
    rebuild(built, built.ids[-3:], built.ids[-4], key=mallory, fix_prev=True)
    result = verify(built)
    n = len(built.ids)
    for seq in range(n - 3, n):
        assert ("untrusted-key", seq) in rules_at(result)
    assert "bad-signature" not in result.rules()
    assert "prev-digest" not in result.rules()


def test_one_middle_commit_dropped(tmp_path: Path) -> None:
    built = build(tmp_path)
    rebuild(built, built.ids[4:], built.ids[2])  # drop seq 3
    result = verify(built)
    assert ("seq", 4) in rules_at(result)
    assert ("prev-digest", 4) in rules_at(result)
    assert "bad-signature" not in result.rules()
    # Every re-signed commit names its old parent's digest, so the key.added of bob (seq 5)
    # has a finding too: it adds nothing, and bob's records are signed by an untrusted key.
    assert ("prev-digest", 5) in rules_at(result)
    bob = built.bob.public_key.fingerprint
    assert {f.seq for f in result.findings if f.rule == "untrusted-key"} == {6, 8}
    assert bob not in {k.fingerprint for k in result.keys}


def test_one_middle_commit_dropped_by_a_careful_attacker(tmp_path: Path) -> None:
    """Prev digests recomputed and re-signed by the trusted key: the seq gap and the
    dropped record's file left in the trees still show."""
    built = build(tmp_path)
    rebuild(built, built.ids[4:], built.ids[2], fix_prev=True)
    result = verify(built)
    assert ("seq", 4) in rules_at(result)
    assert "prev-digest" not in result.rules()
    assert ("tree-append", 4) in rules_at(result)


def test_two_consecutive_commits_dropped(tmp_path: Path) -> None:
    built = build(tmp_path)
    rebuild(built, built.ids[5:], built.ids[2])  # drop seq 3 and 4
    result = verify(built)
    seq_findings = [f for f in result.findings if f.rule == "seq"]
    assert [f.seq for f in seq_findings] == [5]
    assert "expected 3" in seq_findings[0].message
    assert ("prev-digest", 5) in rules_at(result)


def test_commits_reordered(tmp_path: Path) -> None:
    built = build(tmp_path)
    order = [built.ids[3], built.ids[2], *built.ids[4:]]
    rebuild(built, order, built.ids[1], fix_prev=True)
    result = verify(built)
    assert ("seq", 3) in rules_at(result)  # seq 3 right after seq 1
    assert ("seq", 2) in rules_at(result)  # then seq 2 again
    assert "tree-append" in result.rules()


def test_tail_truncated_against_last_verified_head(tmp_path: Path) -> None:
    built = build(tmp_path)
    first = verify(built)
    assert first.ok and first.state is not None
    set_main(built.path, built.ids[-3])  # cut off the last two records
    result = verify(built, since=first.state)
    assert "rollback" in result.rules()
    assert "rewrite" not in result.rules()
    rollback = next(f for f in result.findings if f.rule == "rollback")
    assert rollback.seq == len(built.ids) - 3
    # Without the saved state the shorter chain is internally sound: that is why the
    # verified head is remembered.
    assert verify(built).ok


def test_rewrite_against_last_verified_head(tmp_path: Path) -> None:
    built = build(tmp_path)
    first = verify(built)
    assert first.state is not None
    ledger = Ledger.open(built.path)
    set_main(built.path, built.ids[-2])
    ledger.append("event", {"message": "a different last record", "data": None}, key=built.alice)
    result = verify(built, since=first.state)
    assert ("rewrite", len(built.ids) - 1) in rules_at(result)


def test_merge_commit_injected(tmp_path: Path) -> None:
    built = build(tmp_path)
    forge_append(built, built.alice, parents=[built.ids[-1], built.ids[3]])
    result = verify(built)
    assert ("merge", len(built.ids)) in rules_at(result)


def test_object_swapped_through_replace_refs(tmp_path: Path) -> None:
    built = build(tmp_path)
    repo = built.repo
    # A replacement for seq 2 whose record says something else, made with stock git.
    commit = repo[built.ids[2]]
    path = records.parse_trailers(commit.message)["Ledger-Record"]
    rec = json.loads(repo[commit.tree[path].id].data)
    rec["data"]["message"] = "rewritten"
    edited = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode()
    tree = stock_git_tree_with(built.path, built.ids[2], {path: edited})
    fake = git("commit-tree", tree, "-p", built.ids[1], "-m", "e2", cwd=built.path).stdout.strip()
    git("replace", built.ids[2], fake, cwd=built.path)
    # Stock git now shows the substitute ...
    shown = git("log", "-1", "--format=%B", built.ids[2], cwd=built.path).stdout
    assert shown.strip() == "e2"
    result = verify(built)
    assert "replace-refs" in result.rules()
    finding = next(f for f in result.findings if f.rule == "replace-refs")
    assert built.ids[2] in finding.message
    # ... while the chain itself is still verified from the real objects.
    assert result.rules() == {"replace-refs"}


def test_grafts_file(tmp_path: Path) -> None:
    built = build(tmp_path)
    (built.path / "info").mkdir(exist_ok=True)
    (built.path / "info" / "grafts").write_text(f"{built.ids[4]} {built.ids[2]}\n")
    assert verify(built).rules() == {"grafts"}


def test_key_added_signed_by_untrusted_key(tmp_path: Path) -> None:
    built = build(tmp_path)
    mallory, eve = SigningKey.generate(), SigningKey.generate()
    pub = eve.public_key
    forge_append(
        built,
        mallory,
        principal="mallory",
        kind="key.added",
        data={
            "principal": "eve",
            "key": pub.openssh(),
            "fingerprint": pub.fingerprint,
            "comment": "",
        },
    )
    forge_append(built, eve, principal="eve")
    result = verify(built)
    n = len(built.ids)
    assert ("untrusted-key", n) in rules_at(result)
    assert ("untrusted-key", n + 1) in rules_at(result)  # eve was never added


def test_key_revoked_then_used(tmp_path: Path) -> None:
    built = build(tmp_path)
    forge_append(
        built,
        built.alice,
        kind="key.revoked",
        data={"fingerprint": built.bob.public_key.fingerprint, "reason": "left"},
    )
    forge_append(built, built.bob, principal="bob")
    result = verify(built)
    assert rules_at(result) == {("revoked-key", len(built.ids) + 1)}


def test_tree_changes_an_earlier_file(tmp_path: Path) -> None:
    built = build(tmp_path)
    repo = built.repo
    old = repo[built.ids[2]]
    path = records.parse_trailers(old.message)["Ledger-Record"]
    forge_append(built, built.alice, extra_tree={path: repo.create_blob(b"{}")})
    result = verify(built)
    n = len(built.ids)
    assert ("tree-append", n) in rules_at(result)
    assert any(path in f.message for f in result.findings if f.rule == "tree-append")


def test_tree_removes_an_earlier_file(tmp_path: Path) -> None:
    built = build(tmp_path)
    repo = built.repo
    old = repo[built.ids[3]]
    path = records.parse_trailers(old.message)["Ledger-Record"]
    forge_append(built, built.alice, extra_tree={path: None})
    result = verify(built)
    assert ("tree-append", len(built.ids)) in rules_at(result)
    assert any("removes" in f.message and path in f.message for f in result.findings)


@pytest.mark.parametrize("up", [1, 2, 3])
def test_tree_adds_an_unlisted_file_beside_the_records_path(tmp_path: Path, up: int) -> None:
    """A file added in a directory on the record's path (``up`` levels above the record):
    every tree on the path but the one holding it differs only by the changed entry."""
    built = build(tmp_path)
    last = records.parse_trailers(built.repo[built.ids[-1]].message)["Ledger-Record"]
    where = "/".join(last.split("/")[:-up])
    forge_append(
        built, built.alice, extra_tree={f"{where}/zz-unlisted": built.repo.create_blob(b"x")}
    )
    result = verify(built)
    assert ("tree-append", len(built.ids)) in rules_at(result)
    assert any("zz-unlisted" in f.message for f in result.findings if f.rule == "tree-append")


def test_tree_adds_an_unlisted_file(tmp_path: Path) -> None:
    built = build(tmp_path)
    forge_append(built, built.alice, extra_tree={"notes/secret.txt": built.repo.create_blob(b"x")})
    result = verify(built)
    assert ("tree-append", len(built.ids)) in rules_at(result)


def test_record_copied_from_another_ledger(tmp_path: Path) -> None:
    built = build(tmp_path)
    other = build(tmp_path, name="other", events_after_key=4)
    repo = other.repo
    commit = repo[other.ids[len(built.ids)]]  # the other ledger's record with our next seq
    path = records.parse_trailers(commit.message)["Ledger-Record"]
    raw = repo[commit.tree[path].id].data
    forge_append(built, built.alice, raw_record=raw)
    result = verify(built)
    assert ("ledger-id", len(built.ids)) in rules_at(result)


def test_seq_gap(tmp_path: Path) -> None:
    built = build(tmp_path)
    forge_append(built, built.alice, seq=len(built.ids) + 1)
    result = verify(built)
    assert rules_at(result) == {("seq", len(built.ids) + 1)}


def test_seq_repeat(tmp_path: Path) -> None:
    built = build(tmp_path)
    forge_append(built, built.alice, seq=len(built.ids) - 1)
    result = verify(built)
    assert ("seq", len(built.ids) - 1) in rules_at(result)


def test_prev_digest_mismatch(tmp_path: Path) -> None:
    built = build(tmp_path)

    def wrong(trailers: dict[str, str]) -> None:
        trailers["Ledger-Prev-Sha256"] = "0" * 64

    forge_append(built, built.alice, edit_trailers=wrong)
    result = verify(built)
    assert rules_at(result) == {("prev-digest", len(built.ids))}


def test_actor_key_differs_from_signer(tmp_path: Path) -> None:
    built = build(tmp_path)

    def claim_bob(rec: dict[str, Any]) -> None:
        rec["actor"]["key"] = built.bob.public_key.fingerprint

    forge_append(built, built.alice, edit_record=claim_bob)
    assert rules_at(verify(built)) == {("actor-key", len(built.ids))}


def test_record_not_canonical(tmp_path: Path) -> None:
    built = build(tmp_path)
    rec_text = json.dumps(
        {
            "schema": 1,
            "ledger": records.parse_trailers(built.repo[built.ids[0]].message)["Ledger-Id"],
            "seq": len(built.ids),
            "kind": "event",
            "time": records.format_time(records.utc_now()),
            "run": None,
            "actor": {"principal": "alice", "key": built.alice.public_key.fingerprint},
            "host": "h",
            "data": {"message": "spaced", "data": 1.5},
            "files": {},
        },
        sort_keys=True,
    )
    forge_append(built, built.alice, raw_record=rec_text.encode())
    result = verify(built)
    assert ("record-canonical", len(built.ids)) in rules_at(result)


def test_corrupted_record_blob_on_disk(tmp_path: Path) -> None:
    built = build(tmp_path)
    blob = record_blob_id(built, 3)
    obj = loose_object(built.path, blob)
    os.chmod(obj, 0o644)
    obj.write_bytes(zlib.compress(b"garbage that is not a git object"))
    result = verify(built)
    assert ("object-corrupt", 3) in rules_at(result)
    # The rest of the chain is still verified: nothing else is wrong.
    assert result.rules() == {"object-corrupt"}
    assert result.records_checked == len(built.ids)


def test_corrupted_commit_on_disk(tmp_path: Path) -> None:
    built = build(tmp_path)
    obj = loose_object(built.path, built.ids[3])
    os.chmod(obj, 0o644)
    obj.write_bytes(b"\x78\x9c not zlib at all")
    result = verify(built)
    corrupt = [f for f in result.findings if f.rule == "object-corrupt"]
    assert corrupt and corrupt[0].commit == built.ids[3]
    # The records after the break are still checked (signatures, digests, trees).
    assert result.records_checked == len(built.ids) - 4


def test_missing_object(tmp_path: Path) -> None:
    built = build(tmp_path)
    blob = record_blob_id(built, 2)
    loose_object(built.path, blob).unlink()
    result = verify(built)
    assert ("object-missing", 2) in rules_at(result)


def test_genesis_changed(tmp_path: Path) -> None:
    built = build(tmp_path)
    old_genesis = built.genesis
    repo = built.repo
    g = repo[old_genesis]
    later = pygit2.Signature(g.author.name, g.author.email, g.author.time + 1, 0)
    new_genesis = signed_commit(repo, built.alice, g.tree_id, [], g.message, later)
    rebuild(built, built.ids[1:], new_genesis, fix_prev=True)
    result = verify(built, trust_genesis=old_genesis)
    assert ("genesis-mismatch", 0) in rules_at(result)
    # An attacker can make the new chain self-consistent except for the author time
    # mismatch in genesis; only the pin catches the swap itself.
    assert verify(built, trust_genesis=new_genesis).rules() <= {"commit-header"}


def test_genesis_changed_against_saved_state(tmp_path: Path) -> None:
    built = build(tmp_path)
    first = verify(built)
    assert first.state is not None
    other = build(tmp_path, name="other")
    # Replace the whole ledger's history with another chain (as a force push would).
    git("fetch", other.path, f"{MAIN}:refs/heads/other", cwd=built.path)
    set_main(built.path, other.ids[-1])
    result = verify(built, since=first.state)
    assert "genesis-mismatch" in result.rules()
    assert "rewrite" in result.rules()


def test_all_findings_of_independent_tamperings(tmp_path: Path) -> None:
    built = build(tmp_path)
    loose = loose_object(built.path, record_blob_id(built, 2))
    os.chmod(loose, 0o644)
    loose.write_bytes(zlib.compress(b"blob 3\0abc"))
    forge_append(built, SigningKey.generate(), principal="mallory")
    git("replace", built.ids[1], built.ids[2], cwd=built.path)
    result = verify(built)
    assert ("object-corrupt", 2) in rules_at(result)
    assert ("untrusted-key", len(built.ids)) in rules_at(result)
    assert "replace-refs" in result.rules()


def test_findings_keep_going_after_a_bad_signature(tmp_path: Path) -> None:
    built = build(tmp_path)
    raw = raw_commit(built.repo, built.ids[-1])
    tampered = raw.replace(b"later 2", b"later X")  # not in the commit: message unchanged
    tampered = raw.replace(b"author bob <bob> ", b"author eve <eve> ")
    set_main(built.path, write_raw_commit(built.path, tampered))
    forge_append(built, built.alice)
    result = verify(built)
    n = len(built.ids)
    assert ("bad-signature", n - 1) in rules_at(result)
    assert ("prev-digest", n) not in rules_at(result)  # forge_append chained on the tampered one
    assert result.records_checked == n + 1


@pytest.mark.parametrize("shape", ["no-trailers", "bad-seq-trailer", "extra-line"])
def test_malformed_trailers(tmp_path: Path, shape: str) -> None:
    built = build(tmp_path)

    def edit(trailers: dict[str, str]) -> None:
        if shape == "no-trailers":
            trailers.clear()
        elif shape == "bad-seq-trailer":
            trailers["Ledger-Seq"] = "007"
        else:
            trailers["Ledger-Kind"] = "event\nSigned-off-by: someone"

    forge_append(built, built.alice, edit_trailers=edit)
    assert ("trailers", len(built.ids)) in rules_at(verify(built))


def test_commit_ident_that_is_not_the_records_actor(tmp_path: Path) -> None:
    """A commit signed by a trusted key whose author is not the record's actor (at its time)
    is its own finding, not a malformed record."""
    built = build(tmp_path)
    seq = len(built.ids)
    forge_append(built, built.alice, ident="mallory")
    assert ("commit-header", seq) in rules_at(verify(built))


def test_commit_with_an_extra_header(tmp_path: Path) -> None:
    built = build(tmp_path)
    raw = raw_commit(built.repo, built.ids[-1])
    payload, _sig = split_signed_commit(raw)
    tampered = payload.replace(b"\ncommitter ", b"\nencoding ISO-8859-1\ncommitter ", 1)
    assert tampered != payload
    signer = built.bob if b"author bob " in payload else built.alice
    signed = gitobj.add_signature(tampered, sign_commit(tampered, signer).encode())
    set_main(built.path, write_raw_commit(built.path, signed))
    assert ("commit-header", len(built.ids) - 1) in rules_at(verify(built))


def test_high_s_ecdsa_signature_is_reported(tmp_path: Path) -> None:
    """ECDSA signatures are malleable: (r, n - s) verifies wherever (r, s) does, so anyone can
    give a signed head a new commit id with a signature stock git still calls good. The
    writer signs low-S only; the verifier reports a high-S one (``bad-signature``)."""
    import struct

    from cryptography.hazmat.primitives.asymmetric import ec

    from ledger.keys import allowed_signers_line, parse_sshsig, sshsig, sshwire

    p256_order = int("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16)
    key = SigningKey(ec.generate_private_key(ec.SECP256R1()))
    path = tmp_path / "ec.git"
    led = Ledger.init(path, name="ec", key=key, principal="alice")
    for i in range(3):
        led.append("event", {"message": f"e{i}", "data": None}, key=key)
    head = led.head()
    assert head is not None and verify_ledger(path, trust_genesis=led.genesis_id).ok
    led.close()

    content, [armored] = split_signed_commit(
        raw_commit(pygit2.Repository(str(path)), head.commit_id)
    )
    sig = parse_sshsig(armored)
    outer = sshwire.Reader(sig.signature_blob)
    alg = outer.string()
    inner = sshwire.Reader(outer.string())
    r, s = inner.mpint(), inner.mpint()
    assert s <= p256_order // 2  # as written
    string = sshwire.string
    flipped_blob = string(alg) + string(sshwire.mpint(r) + sshwire.mpint(p256_order - s))
    blob = (
        b"SSHSIG" + struct.pack(">I", 1) + string(sig.public_key.blob) + string(b"git")
        + string(b"") + string(b"sha512") + string(flipped_blob)
    )  # fmt: skip
    tampered = gitobj.add_signature(content, sshsig._armor(blob).rstrip("\n").encode())
    new_id = write_raw_commit(path, tampered)
    assert new_id != head.commit_id
    set_main(path, new_id)

    # Stock git calls the mirrored signature good ...
    signers = tmp_path / "allowed"
    signers.write_text(allowed_signers_line("alice", key.public_key) + "\n")
    out = git(
        "-c", f"gpg.ssh.allowedSignersFile={signers}", "verify-commit", new_id,
        cwd=path, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    # ... the ledger's verifier does not.
    result = verify_ledger(path, trust_genesis=led.genesis_id)
    assert rules_at(result) == {("bad-signature", head.seq)}
    finding = result.findings[0]
    assert "high-S" in finding.message and finding.commit == new_id


def test_shallow_file(tmp_path: Path) -> None:
    """A ``shallow`` file cuts history for stock git as ``info/grafts`` does: reported."""
    built = build(tmp_path)
    (built.path / "shallow").write_text(f"{built.ids[3]}\n")
    count = git("rev-list", "--count", MAIN, cwd=built.path).stdout.strip()
    assert int(count) < len(built.ids)  # stock git now shows a shorter history
    result = verify(built)
    assert result.rules() == {"grafts"}
    assert "shallow" in result.findings[0].message


# --- a key record that fails any check has no effect on trust (FORMAT.md §10 step 5) -------


def _eve_added(built: Any, eve: SigningKey) -> dict[str, Any]:
    pub = eve.public_key
    return {"principal": "eve", "key": pub.openssh(), "fingerprint": pub.fingerprint, "comment": ""}


def test_key_added_failing_its_record_digest_adds_nothing(tmp_path: Path) -> None:
    built = build(tmp_path)
    eve = SigningKey.generate()

    def wrong_digest(trailers: dict[str, str]) -> None:
        trailers["Ledger-Record-Sha256"] = "0" * 64

    forge_append(
        built,
        built.alice,
        kind="key.added",
        data=_eve_added(built, eve),
        edit_trailers=wrong_digest,
    )
    forge_append(built, eve, principal="eve")
    n = len(built.ids)
    result = verify(built)
    assert ("record-digest", n) in rules_at(result)
    assert ("untrusted-key", n + 1) in rules_at(result)  # eve was not added
    assert eve.public_key.fingerprint not in {k.fingerprint for k in result.keys}


def test_key_added_whose_actor_is_not_its_signer_adds_nothing(tmp_path: Path) -> None:
    built = build(tmp_path)
    eve = SigningKey.generate()

    def claim_bob(rec: dict[str, Any]) -> None:
        rec["actor"]["key"] = built.bob.public_key.fingerprint

    data = _eve_added(built, eve)
    forge_append(built, built.alice, kind="key.added", data=data, edit_record=claim_bob)
    forge_append(built, eve, principal="eve")
    n = len(built.ids)
    result = verify(built)
    assert ("actor-key", n) in rules_at(result)
    assert ("untrusted-key", n + 1) in rules_at(result)


def test_key_revoked_failing_a_check_revokes_nothing(tmp_path: Path) -> None:
    built = build(tmp_path)

    def bad_prev(trailers: dict[str, str]) -> None:
        trailers["Ledger-Prev-Sha256"] = "0" * 64

    forge_append(
        built,
        built.alice,
        kind="key.revoked",
        data={"fingerprint": built.bob.public_key.fingerprint, "reason": "x"},
        edit_trailers=bad_prev,
    )
    forge_append(built, built.bob, principal="bob")
    n = len(built.ids)
    result = verify(built)
    assert rules_at(result) == {("prev-digest", n)}  # bob's later record is still trusted
    bob = next(k for k in result.keys if k.fingerprint == built.bob.public_key.fingerprint)
    assert bob.active
