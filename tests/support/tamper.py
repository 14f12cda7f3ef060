"""Building real ledgers with the store and tampering with them the way an attacker with
write access to the repository could (stock git or pygit2), for the verification tests."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pygit2

from ledger.format import records
from ledger.keys import SigningKey, sign_commit
from ledger.store import Ledger
from ledger.verify import VerifyResult, verify_ledger
from support.gitcmd import git

MAIN = "refs/heads/main"


# --- building ledgers -----------------------------------------------------------------------


@dataclass
class Built:
    path: Path
    alice: SigningKey
    bob: SigningKey
    ids: list[str]  # commit id by seq
    keys: dict[str, SigningKey] = field(default_factory=dict)  # fingerprint -> key

    @property
    def repo(self) -> pygit2.Repository:
        return pygit2.Repository(str(self.path))

    @property
    def genesis(self) -> str:
        return self.ids[0]

    def head(self) -> str:
        return git("rev-parse", MAIN, cwd=self.path).stdout.strip()


def build(tmp_path: Path, name: str = "ledger", events_after_key: int = 3) -> Built:
    """genesis (alice) · events 1-4 (alice) · key.added bob (5) · events 6.. (bob, alice)."""
    alice, bob = SigningKey.generate(), SigningKey.generate()
    path = tmp_path / name
    ledger = Ledger.init(path, name=name, key=alice, principal="alice")
    ids = [ledger.genesis_id]
    for i in range(1, 5):
        ids.append(
            ledger.append("event", {"message": f"e{i}", "data": {"i": i}}, key=alice).commit_id
        )
    pub = bob.public_key
    ids.append(
        ledger.append(
            "key.added",
            {
                "principal": "bob",
                "key": pub.openssh(),
                "fingerprint": pub.fingerprint,
                "comment": "",
            },
            key=alice,
        ).commit_id
    )
    for i in range(events_after_key):
        who = bob if i % 2 == 0 else alice
        ids.append(
            ledger.append(
                "event",
                {"message": f"later {i}", "data": None},
                key=who,
                attachments={"out": f"output {i}\n".encode()},
            ).commit_id
        )
    keys = {alice.public_key.fingerprint: alice, bob.public_key.fingerprint: bob}
    return Built(path, alice, bob, ids, keys)


def canonical(rec: dict[str, Any]) -> bytes:
    return json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def verify(built: Built, **kwargs: Any) -> VerifyResult:
    return verify_ledger(built.path, **kwargs)


def rules_at(result: VerifyResult) -> set[tuple[str, int | None]]:
    return {(f.rule, f.seq) for f in result.findings}


# --- tampering helpers ------------------------------------------------------------------------


def raw_commit(repo: pygit2.Repository, oid: str) -> bytes:
    return bytes(repo.odb.read(oid)[1])


def write_raw_commit(path: Path, raw: bytes) -> str:
    """Write a commit object with stock git, byte for byte."""
    tmp = path / "tamper-commit"
    tmp.write_bytes(raw)
    out = git("hash-object", "-t", "commit", "-w", "--literally", tmp, cwd=path).stdout.strip()
    tmp.unlink()
    return out


def set_main(path: Path, oid: str) -> None:
    git("update-ref", MAIN, oid, cwd=path)


def commit_digest(raw: bytes) -> str:
    return hashlib.sha256(b"commit %d\0" % len(raw) + raw).hexdigest()


def signed_commit(
    repo: pygit2.Repository,
    key: SigningKey,
    tree: pygit2.Oid | str,
    parents: list[str],
    message: str,
    author: pygit2.Signature,
) -> str:
    """A commit signed with ``key`` (pygit2 content + ledger.keys, as an attacker would)."""
    content = repo.create_commit_string(
        author, author, message, pygit2.Oid(hex=str(tree)), [pygit2.Oid(hex=p) for p in parents]
    )
    return str(repo.create_commit_with_signature(content, sign_commit(content, key)))


def set_trailer(message: str, name: str, value: str | None) -> str:
    lines = message.rstrip("\n").split("\n")
    out = []
    for line in lines:
        if line.startswith(f"{name}: "):
            if value is not None:
                out.append(f"{name}: {value}")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def rebuild(
    built: Built,
    originals: Iterable[str],
    base: str | None,
    *,
    fix_prev: bool = False,
    key: SigningKey | None = None,
) -> list[str]:
    """Re-create ``originals`` (same trees, messages and idents) on top of ``base``, each
    re-signed by ``key`` or by the key its record names; point main at the last."""
    repo = built.repo
    parent = base
    out = []
    for oid in originals:
        commit = repo[oid]
        message = commit.message
        if fix_prev and parent is not None:
            message = set_trailer(
                message, "Ledger-Prev-Sha256", commit_digest(raw_commit(repo, parent))
            )
        trailers = records.parse_trailers(commit.message)
        rec = json.loads(repo[commit.tree[trailers["Ledger-Record"]].id].data)
        signer = key or built.keys[rec["actor"]["key"]]
        parent = signed_commit(
            repo, signer, commit.tree_id, [parent] if parent else [], message, commit.author
        )
        out.append(parent)
    if parent is not None:
        set_main(built.path, parent)
    return out


def tree_with(
    repo: pygit2.Repository, base: pygit2.Tree | None, changes: dict[str, Any]
) -> pygit2.Oid:
    """``base`` with files set (path -> blob id) or removed (path -> None)."""
    nested: dict[str, Any] = {}
    for path, value in changes.items():
        node = nested
        parts = path.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return _write(repo, base, nested)


def _write(repo: pygit2.Repository, base: pygit2.Tree | None, node: dict[str, Any]) -> pygit2.Oid:
    builder = repo.TreeBuilder(base) if base is not None else repo.TreeBuilder()
    for name, value in node.items():
        if isinstance(value, dict):
            sub = repo[base[name].id] if base is not None and name in base else None
            builder.insert(name, _write(repo, sub, value), pygit2.GIT_FILEMODE_TREE)
        elif value is None:
            builder.remove(name)
        else:
            builder.insert(name, value, pygit2.GIT_FILEMODE_BLOB)
    return builder.write()


def forge_append(
    built: Built,
    key: SigningKey,
    *,
    principal: str = "alice",
    kind: str = "event",
    data: dict[str, Any] | None = None,
    seq: int | None = None,
    ledger_id: str | None = None,
    raw_record: bytes | None = None,
    edit_record: Callable[[dict[str, Any]], None] | None = None,
    edit_trailers: Callable[[dict[str, str]], None] | None = None,
    extra_tree: dict[str, Any] | None = None,
    parents: list[str] | None = None,
    ident: str | None = None,
) -> str:
    """Append a record the way the store would, but under the attacker's control."""
    repo = built.repo
    head = built.head()
    head_commit = repo[head]
    head_trailers = records.parse_trailers(head_commit.message)
    seq = int(head_trailers["Ledger-Seq"]) + 1 if seq is None else seq
    now = records.format_time(records.utc_now())
    if raw_record is None:
        rec = {
            "schema": 1,
            "ledger": ledger_id or head_trailers["Ledger-Id"],
            "seq": seq,
            "kind": kind,
            "time": now,
            "run": None,
            "actor": {"principal": principal, "key": key.public_key.fingerprint},
            "host": "attacker",
            "data": data if data is not None else {"message": "forged", "data": None},
            "files": {},
        }
        if edit_record:
            edit_record(rec)
        raw_record = canonical(rec)
    rec = json.loads(raw_record)
    try:
        path = records.record_path(rec["kind"], rec["seq"], rec["run"], rec["time"])
        when = int(records.parse_time(rec["time"]).timestamp())
    except (KeyError, ValueError):  # a deliberately malformed record
        path = f"events/2026/01/01/{seq // 1000:07d}/{seq:010d}-event.json"
        when = int(records.parse_time(now).timestamp())
    changes: dict[str, Any] = {path: repo.create_blob(raw_record)}
    changes.update(extra_tree or {})
    tree = tree_with(repo, head_commit.tree, changes)
    trailers = {
        "Ledger-Id": str(rec.get("ledger")),
        "Ledger-Seq": str(rec.get("seq")),
        "Ledger-Kind": str(rec.get("kind")),
        "Ledger-Record": path,
        "Ledger-Record-Sha256": hashlib.sha256(raw_record).hexdigest(),
        "Ledger-Prev-Sha256": commit_digest(raw_commit(repo, head)),
    }
    if edit_trailers:
        edit_trailers(trailers)
    message = records.build_message(f"{rec.get('kind')}: forged", trailers)
    ident = principal if ident is None else ident
    sig = pygit2.Signature(ident, ident, when, 0)
    oid = signed_commit(repo, key, tree, parents if parents is not None else [head], message, sig)
    set_main(built.path, oid)
    return oid


def stock_git_tree_with(path: Path, commit: str, changes: dict[str, bytes | None]) -> str:
    """A tree made with stock git: ``commit``'s tree with files set or removed."""
    env = {"GIT_INDEX_FILE": str(path / "tamper-index")}
    git("read-tree", commit, cwd=path, env=env)
    for file, content in changes.items():
        if content is None:
            git("update-index", "--force-remove", file, cwd=path, env=env)
            continue
        blob_file = path / "tamper-blob"
        blob_file.write_bytes(content)
        blob = git("hash-object", "-w", blob_file, cwd=path).stdout.strip()
        blob_file.unlink()
        git("update-index", "--add", "--cacheinfo", f"100644,{blob},{file}", cwd=path, env=env)
    tree = git("write-tree", cwd=path, env=env).stdout.strip()
    (path / "tamper-index").unlink()
    return tree


def record_blob_id(built: Built, seq: int) -> str:
    repo = built.repo
    commit = repo[built.ids[seq]]
    trailers = records.parse_trailers(commit.message)
    return str(commit.tree[trailers["Ledger-Record"]].id)
