"""The pack (ledger.store.packs) and object encoding (ledger.format.gitobj) of appends,
judged by stock git and libgit2."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pygit2
import pytest
from support.gitcmd import git

from ledger.format import gitobj
from ledger.keys import SigningKey, sign_commit
from ledger.store import packs


@pytest.fixture()
def bare(tmp_path: Path) -> Path:
    path = tmp_path / "repo.git"
    git("init", "--bare", "-q", path)
    return path


def _hash_object(repo: Path, kind: str, content: bytes) -> str:
    return (
        subprocess.run(
            ["git", "--git-dir", str(repo), "hash-object", "-t", kind, "--stdin"],
            input=content,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .strip()
    )


def test_object_ids_are_gits(bare: Path) -> None:
    for content in (b"", b"hello\n", bytes(range(256)) * 100):
        assert gitobj.object_id(gitobj.OBJ_BLOB, content).hex() == _hash_object(
            bare, "blob", content
        )


def test_trees_are_ordered_as_git_orders_them(bare: Path) -> None:
    """A subtree sorts as if its name ended in '/', so 'a.b' (file) comes before 'a' (tree)."""
    blob = bytes.fromhex(_hash_object(bare, "blob", b"x"))
    sub = bytes.fromhex(git("--git-dir", bare, "mktree", "--missing").stdout.strip() or "0" * 40)
    entries = [
        (gitobj.MODE_TREE, b"a", sub),
        (gitobj.MODE_BLOB, b"a.b", blob),
        (gitobj.MODE_BLOB, b"a0", blob),
        (gitobj.MODE_BLOB, b"Z", blob),
        (gitobj.MODE_TREE, b"runs", sub),
    ]
    raw = gitobj.serialize_tree(entries)
    listing = "".join(
        f"{'040000 tree' if m == gitobj.MODE_TREE else '100644 blob'} {o.hex()}\t{n.decode()}\n"
        for m, n, o in entries
    )
    made = subprocess.run(
        ["git", "--git-dir", str(bare), "mktree", "--missing"],
        input=listing.encode(),
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert gitobj.object_id(gitobj.OBJ_TREE, raw).hex() == made.strip()
    assert gitobj.parse_tree(raw) == sorted(
        entries, key=lambda e: e[1] + b"/" if e[0] == gitobj.MODE_TREE else e[1]
    )
    with pytest.raises(ValueError):
        gitobj.serialize_tree([*entries, (gitobj.MODE_BLOB, b"Z", blob)])
    with pytest.raises(ValueError):
        gitobj.parse_tree(raw[:-3])


def test_a_written_pack_is_read_by_stock_git_and_libgit2(bare: Path) -> None:
    writer = packs.PackWriter()
    blobs = [writer.add(gitobj.OBJ_BLOB, b"record %d\n" % i * (i + 1)) for i in range(5)]
    big = writer.add(gitobj.OBJ_BLOB, bytes(range(256)) * 400)  # multi-byte size header
    tree = writer.add(
        gitobj.OBJ_TREE,
        gitobj.serialize_tree(
            [(gitobj.MODE_BLOB, b"f%d" % i, oid) for i, oid in enumerate([*blobs, big])]
        ),
    )
    assert writer.add(gitobj.OBJ_BLOB, b"record 0\n") == blobs[0]  # stored once
    name = writer.write(bare / "objects" / "pack")
    idx = bare / "objects" / "pack" / f"pack-{name}.idx"
    verify = git("--git-dir", bare, "verify-pack", "-v", idx)
    assert verify.returncode == 0
    assert f"{tree.hex()} tree" in verify.stdout
    size = git("--git-dir", bare, "cat-file", "-s", big.hex()).stdout.strip()
    assert size == str(256 * 400)
    repo = pygit2.Repository(str(bare))
    assert repo[pygit2.Oid(raw=blobs[3])].data == b"record 3\n" * 4
    assert [e.name for e in repo[pygit2.Oid(raw=tree)]] == [f"f{i}" for i in range(6)]
    assert not list((bare / "objects" / "pack").glob("tmp_*"))


def test_whole_entries_copy_and_refuse_deltas(bare: Path, tmp_path: Path) -> None:
    writer = packs.PackWriter()
    ids = [writer.add(gitobj.OBJ_BLOB, b"line %d\n" % i * 50) for i in range(4)]
    pack, idx, _ = writer.encode()
    entries = packs.whole_entries(pack, idx)
    assert entries is not None and sorted(oid for oid, _ in entries) == sorted(ids)
    merged = packs.PackWriter()
    for oid, entry in entries:
        merged.add_entry(oid, entry)
    name = merged.write(bare / "objects" / "pack")
    assert git("--git-dir", bare, "verify-pack", bare / "objects" / "pack" / f"pack-{name}.idx")
    with pytest.raises(ValueError):
        packs.whole_entries(pack[:-20] + b"\0" * 20, idx)
    # A pack stock git made with deltas is not copied entry by entry.
    work = tmp_path / "work"
    git("init", "-q", work)
    for i in range(3):
        (work / "f").write_text("same line\n" * 200 + f"{i}\n")
        git("-C", work, "add", "f")
        git("-C", work, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", f"c{i}")
    git("-C", work, "repack", "-adq", "--window=10")
    (gpack,) = (work / ".git" / "objects" / "pack").glob("pack-*.pack")
    deltas = packs.whole_entries(gpack.read_bytes(), gpack.with_suffix(".idx").read_bytes())
    assert deltas is None


def test_signature_header_is_formatted_as_libgit2_does(bare: Path) -> None:
    repo = pygit2.Repository(str(bare))
    key = SigningKey.generate(comment="a@example.com")
    tree = repo.TreeBuilder().write()
    sig = pygit2.Signature("a@example.com", "a@example.com", 1795321012, 0)
    content = str(repo.create_commit_string(sig, sig, "msg\n\nbody\n", tree, []))
    signature = sign_commit(content, key)
    expected = repo.create_commit_with_signature(content, signature)
    raw = gitobj.add_signature(content.encode(), signature.encode())
    assert gitobj.object_id(gitobj.OBJ_COMMIT, raw).hex() == str(expected)
    with pytest.raises(ValueError):
        gitobj.add_signature(b"tree x\n", signature.encode())


def test_commit_bytes_match_libgit2(bare: Path) -> None:
    """The store formats commits itself (their trees are not written yet); byte for byte
    what libgit2's create_commit_string and create_commit_with_signature make."""
    from ledger.store.append import signed_commit_bytes

    repo = pygit2.Repository(str(bare))
    key = SigningKey.generate(comment="op@example.com")
    tree = repo.TreeBuilder().write()
    parent_sig = pygit2.Signature("p", "p@example.com", 1, 0)
    parent = repo.create_commit(None, parent_sig, parent_sig, "p\n", tree, [])
    when = "2026-11-22T04:16:52.123456Z"
    raw = signed_commit_bytes(
        key, "op@example.com", when, "summary\n\nLedger-Seq: 1\n", tree, [parent]
    )
    payload = raw.split(b"gpgsig ")[0] + raw.split(b"-----END SSH SIGNATURE-----\n")[1]
    ident = pygit2.Signature("op@example.com", "op@example.com", 1795321012, 0)
    made = repo.create_commit_string(ident, ident, "summary\n\nLedger-Seq: 1\n", tree, [parent])
    assert payload.decode() == str(made)
    oid = repo.odb.write(pygit2.enums.ObjectType.COMMIT, raw)
    assert git("--git-dir", bare, "cat-file", "-p", str(oid)).returncode == 0
    assert git("--git-dir", bare, "fsck", "--strict", "--no-dangling").returncode == 0


def test_commits_decode_as_libgit2_and_git_split_them(bare: Path) -> None:
    """One codec decodes commits for the keys and the verifier: the quick decoding of the
    layout the store writes, the header-by-header one and git's own split agree with
    libgit2 on a signed commit, and the header split keeps any other layout's order."""
    repo = pygit2.Repository(str(bare))
    key = SigningKey.generate(comment="a@example.com")
    tree = repo.TreeBuilder().write()
    sig = pygit2.Signature("a@example.com", "a@example.com", 1795321012, 0)
    parent = repo.create_commit(None, sig, sig, "p\n", tree, [])
    content = str(repo.create_commit_string(sig, sig, "msg\n\nbody\n", tree, [parent]))
    signature = sign_commit(content, key)
    raw = repo.odb.read(repo.create_commit_with_signature(content, signature))[1]
    commit = repo.get(repo.create_commit_with_signature(content, signature))
    assert isinstance(commit, pygit2.Commit)

    fast = gitobj.parse_signed_commit(raw)
    assert fast is not None
    assert (fast.tree, fast.parents) == (str(tree), [str(parent)])
    assert fast.signature.decode() == signature
    assert fast.payload == content.encode() == gitobj.split_signed_commit(raw)[0]
    assert fast.message == commit.raw_message == b"msg\n\nbody\n"

    split = gitobj.split_headers(raw)
    names = [h.name for h in split.headers]
    assert names == [b"tree", b"parent", b"author", b"committer", b"gpgsig"]
    assert split.headers[-1].value.decode() == signature
    assert split.without({b"gpgsig"}) == fast.payload
    assert split.message == fast.message

    odd = content.replace("\n\n", "\nencoding UTF-8\ngpgsig-sha256 x\n y\n\n", 1).encode()
    assert gitobj.parse_signed_commit(odd) is None
    split = gitobj.split_headers(odd)
    assert [h.name for h in split.headers][-2:] == [b"encoding", b"gpgsig-sha256"]
    assert split.headers[-1].value == b"x\ny"
    assert split.without({b"gpgsig-sha256"}) == gitobj.split_signed_commit(odd)[0]
    assert split.without({b"nothing"}) is odd


def test_a_pack_cut_short_under_the_same_name_is_replaced(bare: Path) -> None:
    """Packs are named by their content, so a merge redone after a crash writes the same
    name again: a partial file left there must not be taken for the pack."""
    writer = packs.PackWriter()
    writer.add(gitobj.OBJ_BLOB, b"the only object\n" * 100)
    pack, _idx, name = writer.encode()
    pack_dir = bare / "objects" / "pack"
    partial = pack_dir / f"pack-{name}.pack"
    partial.write_bytes(pack[: len(pack) // 2])
    assert writer.write(pack_dir) == name
    assert partial.read_bytes() == pack
    assert git("--git-dir", bare, "verify-pack", pack_dir / f"pack-{name}.idx").returncode == 0
    assert writer.write(pack_dir) == name  # the same pack again: kept as it is
    assert partial.read_bytes() == pack
