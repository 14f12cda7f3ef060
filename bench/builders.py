"""Fast ledger builders for the benchmarks.

They write records with the same record, object, message and signing functions the store
uses (:mod:`ledger.format.records`, :mod:`ledger.format.gitobj`,
:func:`ledger.keys.sign_commit`, the store's pack writer), the objects kept in memory and
written as whole-object packs: no fsync, no per-append verification, no pack upkeep, so a
benchmark builds tens of thousands of records in seconds (about 1 ms per record). A ledger
they wrote verifies with no finding and passes ``git fsck --strict`` (the benchmarks check
the first), so it is a well-formed ledger; they measure reading, verifying and replicating,
never appending.

- :func:`fast_build`: a new bare ledger repository (no ledger config: a verifier's input).
- :func:`fast_extend`: more ``event`` records on an existing ledger made by
  :meth:`ledger.store.Ledger.init`, which keeps its config, pin and signing key usable by
  the CLI (``ledger push``, ``ledger run``).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pygit2

from ledger.format import gitobj, records
from ledger.keys import SigningKey, sign_commit
from ledger.store import packs as store_packs  # the store's own pack writer

START = datetime(2024, 1, 1, tzinfo=UTC)
STEP = timedelta(minutes=15)


class Dir:
    """One directory of the chain's tree, kept in memory: entries name -> (mode, id)."""

    def __init__(self) -> None:
        self.entries: dict[bytes, tuple[bytes, bytes]] = {}
        self.subdirs: dict[bytes, Dir] = {}

    @classmethod
    def load(cls, repo: pygit2.Repository, tree: pygit2.Tree) -> Dir:
        d = cls()
        for entry in tree:
            name, oid = entry.name.encode(), entry.id.raw
            if entry.type_str == "tree":
                d.entries[name] = (gitobj.MODE_TREE, oid)
                d.subdirs[name] = cls.load(repo, repo[entry.id])
            else:
                d.entries[name] = (gitobj.MODE_BLOB, oid)
        return d

    def add(self, pack: store_packs.PackWriter, parts: list[bytes], blob: bytes) -> bytes:
        """Add ``blob`` at ``parts`` below this directory; the new id of this directory
        (every tree on the path written to ``pack``)."""
        name = parts[0]
        if len(parts) == 1:
            self.entries[name] = (gitobj.MODE_BLOB, blob)
        else:
            sub = self.subdirs.setdefault(name, Dir())
            self.entries[name] = (gitobj.MODE_TREE, sub.add(pack, parts[1:], blob))
        raw = gitobj.serialize_tree((mode, n, oid) for n, (mode, oid) in self.entries.items())
        return pack.add(gitobj.OBJ_TREE, raw)


@dataclass(frozen=True)
class Appended:
    """What a writer knows of a record it wrote (as ``ledger.store.Appended``): what
    :func:`ledger.verify.local.extend_over_own_appends` takes to move the verified head."""

    commit_id: str
    seq: int
    record: dict[str, Any]
    parent: str | None


@dataclass
class Writer:
    """Where the next record goes: the chain's head, its tree, the signer and the clock.
    Objects collect in memory and are written as one pack every ``PACK_EVERY`` records and
    at :meth:`finish` (whole objects, no deltas: as the store's appends leave them)."""

    path: Path
    ledger_id: str
    key: SigningKey
    principal: str
    host: str
    root: Dir = field(default_factory=Dir)
    parent: bytes | None = None  # raw content of the head commit
    seq: int = 0
    when: datetime = START
    step: timedelta = STEP
    pack: store_packs.PackWriter = field(default_factory=store_packs.PackWriter)
    own: list[Appended] | None = None  # when a list: every record written is added to it

    PACK_EVERY = 10_000

    def write(self, kind: str, data: dict[str, Any]) -> str:
        """One signed record on top of the chain (as the store would write it); its id."""
        self.when += self.step
        time_s = records.format_time(self.when)
        rec = records.make_record(
            ledger_id=self.ledger_id,
            seq=self.seq,
            kind=kind,
            time=time_s,
            run=None,
            principal=self.principal,
            key_fingerprint=self.key.public_key.fingerprint,
            host=self.host,
            data=data,
            files={},
        )
        raw = records.canonical_json(rec)
        rpath = records.record_path(kind, self.seq, None, time_s)
        blob = self.pack.add(gitobj.OBJ_BLOB, raw)
        tree = self.root.add(self.pack, [p.encode() for p in rpath.split("/")], blob)
        trailers = {
            "Ledger-Id": self.ledger_id,
            "Ledger-Seq": str(self.seq),
            "Ledger-Kind": kind,
            "Ledger-Record": rpath,
            "Ledger-Record-Sha256": records.sha256_hex(raw),
        }
        parents: list[str] = []
        if self.parent is not None:
            trailers["Ledger-Prev-Sha256"] = gitobj.object_sha256(gitobj.OBJ_COMMIT, self.parent)
            parents = [gitobj.object_id(gitobj.OBJ_COMMIT, self.parent).hex()]
        message = records.build_message(records.summarize(kind, data), trailers)
        ident = records.clean_principal(self.principal)
        content = gitobj.commit_content(
            tree.hex(), parents, ident, int(self.when.timestamp()), message
        )
        signature = sign_commit(content, self.key).encode("ascii")
        self.parent = gitobj.add_signature(content, signature)
        oid = self.pack.add(gitobj.OBJ_COMMIT, self.parent).hex()
        if self.own is not None:
            self.own.append(Appended(oid, self.seq, dict(rec), parents[0] if parents else None))
        self.seq += 1
        if self.seq % self.PACK_EVERY == 0:
            self.flush()
        return oid

    def events(self, n: int, label: str = "bench") -> None:
        for _ in range(n):
            data = {"message": f"{label} {self.seq}", "data": {"i": self.seq}}
            self.write(records.KIND_EVENT, data)

    def flush(self) -> None:
        if len(self.pack):
            self.pack.write(self.path / "objects" / "pack")
            self.pack = store_packs.PackWriter()

    def finish(self, *, repack: bool = False) -> str:
        """Write the last pack and point ``main`` at the head; ``repack``: then pack
        everything into one pack with deltas (``git repack -ad``, as a clone has it)."""
        self.flush()
        assert self.parent is not None
        head = gitobj.object_id(gitobj.OBJ_COMMIT, self.parent).hex()
        repo = pygit2.Repository(str(self.path))
        repo.references.create("refs/heads/main", pygit2.Oid(hex=head), force=True)
        if repack:
            subprocess.run(["git", "-C", str(self.path), "repack", "-adq"], check=True)
        return head


def fast_build(
    path: Path, n: int, key: SigningKey, *, host: str = "bench", repack: bool = True
) -> str:
    """A new ledger of ``n`` records (genesis, then events every 15 simulated minutes from
    2024-01-01) in a new bare repository at ``path``; its head commit id."""
    pygit2.init_repository(str(path), bare=True, initial_head="main")
    principal = "alice@example.com"
    w = Writer(path, records.new_ledger_id(), key, principal, host)
    signer = {
        "principal": principal,
        "key": key.public_key.openssh(),
        "fingerprint": key.public_key.fingerprint,
    }
    genesis = {"name": "bench", "signers": [signer], "created_by": "runbook-ledger bench"}
    w.write(records.KIND_GENESIS, genesis)
    w.events(n - 1)
    return w.finish(repack=repack)


def fast_extend(
    path: Path,
    n: int,
    key: SigningKey,
    *,
    principal: str,
    host: str,
    step: timedelta = STEP,
    repack: bool = False,
    own: list[Appended] | None = None,
) -> str:
    """``n`` more ``event`` records on the ledger at ``path`` (its ``main`` must verify and
    ``key`` be trusted there), ``step`` apart from its head's time; the new head's id.
    ``own``: a list that receives what was written (:class:`Appended`), in order."""
    repo = pygit2.Repository(str(path))
    head = repo.references["refs/heads/main"].peel(pygit2.Commit)
    fields = dict(
        line.split(": ", 1) for line in head.message.splitlines() if line.startswith("Ledger-")
    )
    w = Writer(
        path,
        fields["Ledger-Id"],
        key,
        principal,
        host,
        root=Dir.load(repo, head.tree),
        parent=repo.odb.read(head.id)[1],
        seq=int(fields["Ledger-Seq"]) + 1,
        when=datetime.fromtimestamp(head.commit_time, UTC),
        step=step,
        own=own,
    )
    w.events(n)
    return w.finish(repack=repack)
