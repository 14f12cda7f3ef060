"""The chain walk: verify a ledger's first-parent chain forward from its genesis (or from
the last verified head), commit by commit, while only the commit ids are held in memory.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pygit2

from ledger.errors import InputError, KeyProblem, LedgerNotFound, StorageError
from ledger.signing import PublicKey
from ledger.verify import findings, kinds, objects, records, state, tree, trust
from ledger.verify.rules import (
    HEX40,
    KEY_KINDS,
    MAIN_REF,
    MODE_BLOB,
    MODE_TREE,
    OBJ_BLOB,
    OBJ_COMMIT,
    OBJ_TREE,
)

# --- the verifier -------------------------------------------------------------------------


@dataclass
class _Prev:
    """What the next commit is checked against: its expected parent's facts."""

    commit: str | None
    seq: int | None
    digest: str | None
    tree: str | None
    known: bool = True  # False after a commit that could not be read


class _Verifier:
    def __init__(self, repo: pygit2.Repository) -> None:
        self.repo = repo
        self.odb = repo.odb
        self.findings: list[findings.Finding] = []
        self.trust: dict[str, trust.TrustedKey] = {}  # fingerprint -> latest entry
        self.history: list[trust.TrustedKey] = []
        self.ledger_id: str | None = None
        self.trust_known = True
        self._keys: dict[bytes, PublicKey] = {}
        # Trees read for the previous commit and for this one: a commit's parent trees are
        # the trees read for the previous commit, so each tree is inflated once.
        self._trees_old: dict[str, bytes] = {}
        self._trees: dict[str, bytes] = {}
        self._parsed: dict[str, dict[str, tuple[int, str]]] = {}
        self._raw_commits: dict[str, bytes] = {}
        self._lookups: dict[tuple[str, str, bool], tuple[int, str] | None] = {}
        self._raw_budget = 16 * 1024 * 1024
        self.checked = 0

    # -- findings and raw reads ------------------------------------------------------

    def add(self, rule: str, seq: int | None, commit: str | None, message: str) -> None:
        self.findings.append(findings.Finding(rule, seq, commit, message))

    def read(self, oid: str, want: int, what: str) -> bytes:
        try:
            typ, data = self.odb.read(oid)
        except KeyError:  # pygit2.NotFoundError is a KeyError
            raise objects.ObjectError("object-missing", f"{what} {oid} is missing") from None
        except (pygit2.GitError, ValueError, OSError) as exc:
            raise objects.ObjectError(
                "object-corrupt", f"{what} {oid} cannot be read: {exc}"
            ) from None
        if int(typ) != want:
            raise objects.ObjectError("object-corrupt", f"{what} {oid} has the wrong object type")
        return bytes(data)

    def read_tree(self, oid: str, what: str) -> bytes:
        cached = self._trees.get(oid)
        if cached is None:
            cached = self._trees_old.get(oid)
            if cached is None:
                cached = self.read(oid, OBJ_TREE, what)
            self._trees[oid] = cached
        return cached

    def next_generation(self) -> None:
        self._trees_old, self._trees = self._trees, {}
        self._lookups.clear()
        if len(self._parsed) > 64:
            self._parsed.clear()

    def entries(self, oid: str, raw: bytes) -> dict[str, tuple[int, str]]:
        parsed = self._parsed.get(oid)
        if parsed is None:
            parsed = objects.tree_entries(raw)
            self._parsed[oid] = parsed
        return parsed

    def lookup(self, oid: str, raw: bytes, name: str, directory: bool) -> tuple[int, str] | None:
        """One entry of a tree by name.

        The entry is found by searching the raw tree for its
        bytes with the mode the layout requires; that is only a hint, which the tree
        comparison confirms by rebuilding the parent tree's SHA-1 (and which falls back to
        parsing the whole tree when it does not match).
        """
        key = (oid, name, directory)
        if key in self._lookups:
            return self._lookups[key]
        mode = MODE_TREE if directory else MODE_BLOB
        needle = b"%o %s\0" % (mode, name.encode("utf-8"))
        at = raw.find(needle)
        hit = None
        if at >= 0 and at + len(needle) + 20 <= len(raw):
            end = at + len(needle)
            hit = mode, raw[end : end + 20].hex()
        self._lookups[key] = hit
        return hit

    # -- repository-wide checks ------------------------------------------------------

    def check_repository(self) -> None:
        for name in self.repo.references:
            if name.startswith("refs/replace/"):
                try:
                    target = str(self.repo.references[name].target)
                except (KeyError, pygit2.GitError):
                    target = "?"
                self.add(
                    "replace-refs",
                    None,
                    target if HEX40.fullmatch(target) else None,
                    f"{name} exists: it makes stock git show object {name[13:]} as {target}",
                )
        grafts = Path(self.repo.path) / "info" / "grafts"
        if grafts.exists():
            self.add("grafts", None, None, f"{grafts} exists: it rewrites parents for stock git")

    # -- walking ---------------------------------------------------------------------

    def parents_of(self, oid: str, keep: bool = False) -> list[str]:
        """The parent ids of a commit (the forward check re-parses it fully).

        With ``keep``, the raw commit is kept for the forward pass while the cache is
        under its budget, saving a second read of the object."""
        raw = self.read(oid, OBJ_COMMIT, "commit")
        if keep and self._raw_budget > 0:
            self._raw_commits[oid] = raw
            self._raw_budget -= len(raw) + 100
        parents = []
        pos = raw.find(b"\n") + 1
        while raw.startswith(b"parent ", pos):
            parents.append(raw[pos + 7 : pos + 47].decode("ascii", "replace"))
            pos += 48
        return parents

    # -- trust -----------------------------------------------------------------------

    def public_key(self, blob: bytes) -> PublicKey:
        pk = self._keys.get(blob)
        if pk is None:
            pk = PublicKey.from_blob(blob)
            self._keys[blob] = pk
        return pk

    def init_trust_from_genesis(self, rec: dict[str, Any]) -> None:
        self.trust.clear()
        self.history.clear()
        data = rec.get("data")
        signers = data.get("signers") if isinstance(data, dict) else None
        for s in signers if isinstance(signers, list) else []:
            if not isinstance(s, dict):
                continue
            problems, fp = kinds.check_key_line(s.get("key"), s.get("fingerprint"), "signer")
            if problems or fp is None or not isinstance(s.get("principal"), str):
                continue
            entry = trust.TrustedKey(s["principal"], s["key"], fp, 0, None)
            if fp not in self.trust:
                self.trust[fp] = entry
                self.history.append(entry)

    def load_trust(self, keys: list[trust.TrustedKey]) -> None:
        self.trust.clear()
        self.history = [trust.TrustedKey(**k.to_json()) for k in keys]
        for entry in self.history:
            self.trust[entry.fingerprint] = entry

    def apply_key_record(self, rec: dict[str, Any]) -> None:
        data = rec["data"]
        if rec["kind"] == "key.added":
            fp = data["fingerprint"]
            current = self.trust.get(fp)
            if current is not None and current.active:
                return
            entry = trust.TrustedKey(data["principal"], data["key"], fp, rec["seq"], rec["time"])
            self.trust[fp] = entry
            self.history.append(entry)
        else:
            current = self.trust.get(data["fingerprint"])
            if current is not None and current.active:
                current.revoked_seq = rec["seq"]
                current.revoked_time = rec["time"]

    # -- one commit --------------------------------------------------------------------

    def check_commit(self, oid: str, prev: _Prev, is_first: bool) -> _Prev:
        self.checked += 1
        guess = prev.seq + 1 if prev.seq is not None else None
        try:
            raw = self._raw_commits.pop(oid, None) or self.read(oid, OBJ_COMMIT, "commit")
            if hashlib.sha1(b"commit %d\0" % len(raw) + raw).hexdigest() != oid:  # noqa: S324
                raise objects.ObjectError("object-corrupt", f"commit {oid} does not hash to its id")
            commit = objects.parse_commit(raw)
        except objects.ObjectError as exc:
            self.add(exc.rule, guess, oid, exc.message)
            return _Prev(oid, guess, None, None, known=False)
        digest = hashlib.sha256(b"commit %d\0" % len(raw) + raw).hexdigest()
        try:
            return self._check_parsed(oid, raw, digest, commit, prev, is_first, guess)
        except objects.ObjectError as exc:
            self.add(exc.rule, guess, oid, exc.message)
            return _Prev(oid, guess, digest, None, known=False)

    def _check_parsed(
        self,
        oid: str,
        raw: bytes,
        digest: str,
        commit: objects.Commit,
        prev: _Prev,
        is_first: bool,
        guess: int | None,
    ) -> _Prev:
        pending: list[tuple[str, str]] = []  # (rule, message) until the seq is known

        def note(rule: str, message: str) -> None:
            pending.append((rule, message))

        self.next_generation()
        is_root = not commit.parents
        if commit.parents and prev.commit is not None and commit.parents[0] != prev.commit:
            note("parents", f"its first parent is {commit.parents[0]}, not {prev.commit}")
        if len(commit.parents) > 1:
            note("merge", f"it has {len(commit.parents)} parents: {', '.join(commit.parents)}")
        if is_root and not is_first:
            note("parents", "a commit without parent in the middle of the chain")
        for problem in commit.header_problems:
            note("commit-header", problem)

        # -- message and trailers --
        trailers, message_problems = records.parse_message(commit.message)
        for problem in message_problems:
            note("trailers", problem)

        # -- record file --
        readable = True
        rec_path = trailers.get("Ledger-Record")
        rec: dict[str, Any] | None = None
        rec_raw: bytes | None = None
        rec_entry: tuple[int, str] | None = None
        if rec_path is not None and records.is_safe_path(rec_path):
            try:
                rec_entry = self._find_path(commit.tree, rec_path)
                if rec_entry is None:
                    note("tree-append", f"the tree has no record file {rec_path}")
                else:
                    rec_raw = self.read(rec_entry[1], OBJ_BLOB, f"record {rec_path}")
            except objects.ObjectError as exc:
                readable = False
                note(exc.rule, exc.message)
        elif rec_path is not None:
            note("trailers", f"Ledger-Record {rec_path!r} is not a relative path")
        if rec_raw is not None:
            want = trailers.get("Ledger-Record-Sha256")
            have = hashlib.sha256(rec_raw).hexdigest()
            if want is not None and want != have:
                note("record-digest", f"{rec_path} has SHA-256 {have}, the trailer says {want}")
            try:
                rec = records.decode_record(rec_raw)
            except records.NotCanonical as exc:
                note("record-canonical", f"{rec_path} is not canonical JSON: {exc}")
        schema_ok = False
        if rec is not None:
            problems = records.check_schema(rec)
            for problem in problems:
                note("record-schema", problem)
            schema_ok = not problems

        # -- seq --
        rec_seq = rec.get("seq") if rec is not None else None
        seq: int | None = rec_seq if kinds.is_int(rec_seq) else None
        t_seq_text = trailers.get("Ledger-Seq")
        t_seq = int(t_seq_text) if t_seq_text is not None else None
        if seq is not None and t_seq is not None and seq != t_seq:
            note("seq", f"Ledger-Seq says {t_seq}, the record says {seq}")
        if seq is None:
            seq = t_seq
        if is_root:
            if seq is not None and seq != 0:
                note("seq", f"the first record has seq {seq}, not 0")
        elif seq is not None and prev.seq is not None and seq != prev.seq + 1:
            what = "repeat" if seq <= prev.seq else "gap"
            note("seq", f"seq {seq} follows seq {prev.seq} ({what}; expected {prev.seq + 1})")
        if seq is None:
            seq = guess

        kind = rec.get("kind") if rec is not None else trailers.get("Ledger-Kind")
        if is_root and rec is not None and kind != "genesis":
            note("parents", f"the chain's first commit holds a {kind!r} record, not genesis")
        if not is_root and kind == "genesis":
            note("record-schema", "a genesis record after the first commit")

        # -- genesis: ledger id and initial trust --
        if is_root and rec is not None and kind == "genesis":
            lid = rec.get("ledger")
            self.ledger_id = lid if isinstance(lid, str) else None
            self.init_trust_from_genesis(rec)
            self.trust_known = True

        # -- trailers consistent with the record, ledger id, commit idents --
        if rec is not None:
            records.compare_trailers(rec, trailers, rec_path, note)
            records.check_idents(commit, rec, note)
        if self.ledger_id is not None:
            foreign = []
            if rec is not None and rec.get("ledger") != self.ledger_id:
                foreign.append(f"the record says ledger {rec.get('ledger')!r}")
            if trailers.get("Ledger-Id") not in (None, self.ledger_id):
                foreign.append(f"Ledger-Id says {trailers.get('Ledger-Id')}")
            if foreign:
                note("ledger-id", f"{' and '.join(foreign)}; this ledger is {self.ledger_id}")

        # -- prev digest --
        t_prev = trailers.get("Ledger-Prev-Sha256")
        if is_root:
            if t_prev is not None:
                note("trailers", "the genesis commit has a Ledger-Prev-Sha256 trailer")
        elif t_prev is None:
            if trailers:
                note("trailers", "Ledger-Prev-Sha256 is missing or malformed")
        elif prev.digest is not None and t_prev != prev.digest:
            note(
                "prev-digest",
                f"Ledger-Prev-Sha256 is {t_prev}, but the parent {commit.parents[0]} "
                f"hashes to {prev.digest}",
            )

        # -- signature and trust --
        signer_fp = self._check_signature(commit, note)
        trusted = False
        if signer_fp is not None:
            trusted = self._check_trust(signer_fp, note)
            actor = rec.get("actor") if rec is not None else None
            if isinstance(actor, dict) and actor.get("key") != signer_fp:
                note(
                    "actor-key",
                    f"actor.key is {actor.get('key')!r} but the commit is signed by {signer_fp}",
                )

        # -- tree append and attachments --
        if rec is not None and rec_path is not None and rec_entry is not None and readable:
            try:
                self._check_tree(commit.tree, prev, is_root, rec, rec_path, rec_entry, note)
            except objects.ObjectError as exc:
                note(exc.rule, exc.message)

        if trusted and rec is not None and schema_ok and kind in KEY_KINDS and not is_root:
            self.apply_key_record(rec)

        for rule, message in pending:
            self.add(rule, seq, oid, message)
        return _Prev(oid, seq, digest, commit.tree)

    def _find_path(self, tree_oid: str, path: str) -> tuple[int, str] | None:
        """The (mode, id) of the blob at ``path`` under ``tree_oid``, or None if absent."""
        parts = path.split("/")
        current = tree_oid
        for i, part in enumerate(parts):
            raw = self.read_tree(current, f"tree of {path}")
            last = i == len(parts) - 1
            hit = self.lookup(current, raw, part, directory=not last)
            if hit is None:
                return None
            if last:
                return hit if hit[0] == MODE_BLOB else None
            if hit[0] != MODE_TREE:
                return None
            current = hit[1]
        return None

    def _check_signature(
        self, commit: objects.Commit, note: Callable[[str, str], None]
    ) -> str | None:
        """Verify the commit's signature; the signer's fingerprint, or None."""
        for problem in commit.signature_problems:
            note("signature-headers", problem)
        if not commit.signatures:
            note("unsigned", "the commit has no gpgsig header")
            return None
        if len(commit.signatures) > 1:
            note("signature-headers", f"the commit has {len(commit.signatures)} signature headers")
            return None
        if commit.signature_problems:
            return None
        try:
            sig = objects.parse_sshsig(commit.signatures[0])
            if sig.namespace != b"git":
                raise objects.SigError(f"namespace is {sig.namespace!r}, not 'git'")
            if sig.hash_algorithm != b"sha512":
                raise objects.SigError(f"hash is {sig.hash_algorithm!r}, not 'sha512'")
            if sig.reserved:
                raise objects.SigError("the reserved field is not empty")
            alg, _ = objects.read_string(sig.signature, 0)
            if alg == b"ssh-rsa":
                raise objects.SigError("RSA signatures with SHA-1 are not accepted")
            pk = self.public_key(sig.public_key)
            signed = (
                objects.SSHSIG_MAGIC
                + objects.ssh_string(sig.namespace)
                + objects.ssh_string(sig.reserved)
                + objects.ssh_string(sig.hash_algorithm)
                + objects.ssh_string(hashlib.sha512(commit.payload).digest())
            )
            if not pk.verify(sig.signature, signed):
                raise objects.SigError(f"the signature by {pk.fingerprint} does not verify")
        except objects.SigError as exc:
            note("bad-signature", str(exc))
            return None
        except KeyProblem as exc:
            note("bad-signature", f"the signature's public key is unusable: {exc.message}")
            return None
        return str(pk.fingerprint)

    def _check_trust(self, fp: str, note: Callable[[str, str], None]) -> bool:
        if not self.trust_known:
            return False
        entry = self.trust.get(fp)
        if entry is None:
            note("untrusted-key", f"signed by {fp}, which this ledger does not trust")
            return False
        if not entry.active:
            note(
                "revoked-key",
                f"signed by {fp} ({entry.principal}), revoked at seq {entry.revoked_seq}",
            )
            return False
        return True

    def _check_tree(
        self,
        tree_oid: str,
        prev: _Prev,
        is_root: bool,
        rec: dict[str, Any],
        rec_path: str,
        rec_entry: tuple[int, str],
        note: Callable[[str, str], None],
    ) -> None:
        """Tree-append (FORMAT.md §4) and the attachments' digests (§2)."""
        wanted = {rec_path}
        files = rec.get("files")
        checks: list[tuple[str, str, int, bool]] = []
        if isinstance(files, dict):
            for name, meta in files.items():
                if not isinstance(meta, dict) or not isinstance(meta.get("path"), str):
                    continue
                path = meta["path"]
                layout = tree.expected_file_path(rec, rec_path, name)
                if path != layout:
                    note(
                        "record-schema",
                        f"file {name!r} is at {path!r}; the layout of FORMAT.md §4 puts it at "
                        f"{layout!r}",
                    )
                    if not records.is_safe_path(path):
                        continue
                if path in wanted:
                    note("record-schema", f"file {name!r} repeats the path {path}")
                    continue
                wanted.add(path)
                if isinstance(meta.get("sha256"), str) and kinds.is_int(meta.get("size")):
                    checks.append((path, meta["sha256"], meta["size"], name == "incident-index"))
        found: dict[str, tuple[int, str]] = {}
        if is_root or prev.tree is not None:
            problems: list[str] = []
            parent = None if is_root else prev.tree
            self._compare(parent, tree_oid, tree.nest(wanted), "", problems, found)
            for problem in problems[:20]:
                note("tree-append", problem)
            if len(problems) > 20:
                note("tree-append", f"... and {len(problems) - 20} more differences")
            if rec_path in found and found[rec_path] != rec_entry:
                note("tree-append", f"the tree holds {rec_path} ambiguously")
        for path, sha, size, is_index in checks:
            entry = found.get(path) or self._find_path(tree_oid, path)
            if entry is None:
                continue  # reported by the comparison
            blob = self.read(entry[1], OBJ_BLOB, f"file {path}")
            have = hashlib.sha256(blob).hexdigest()
            if have != sha or len(blob) != size:
                note(
                    "file-digest",
                    f"{path} has SHA-256 {have} and {len(blob)} bytes; the record says "
                    f"{sha} and {size}",
                )
            elif is_index and blob != (rec_path + "\n").encode():
                note("record-schema", f"the incident index {path} does not name {rec_path}")

    def _compare(
        self,
        parent: str | None,
        child: str,
        adds: dict[str, Any],
        prefix: str,
        problems: list[str],
        found: dict[str, tuple[int, str]],
    ) -> None:
        """Check that tree ``child`` is tree ``parent`` plus exactly ``adds``.

        ``adds`` maps names to None (a file) or to the nested additions of a directory.
        Fast path: take the added entries out of the child's raw bytes (putting the
        parent's ids back for directories that gained files) and compare the SHA-1 of the
        result with the parent's id; equal means the trees differ by exactly those entries.
        Only otherwise are the trees parsed and compared entry by entry. ``found`` receives
        the (mode, id) of every listed file present in the child.
        """
        c_raw = self.read_tree(child, f"tree {prefix or '/'}")
        if parent is None:
            entries = self.entries(child, c_raw)
            for name, (mode, oid) in entries.items():
                path = prefix + name
                if name not in adds:
                    if mode == MODE_TREE and len(problems) < 50:
                        self._compare(None, oid, {}, path + "/", problems, found)
                    else:
                        problems.append(f"adds {path}, which the record does not list")
                elif adds[name] is None:
                    if mode != MODE_BLOB:
                        problems.append(f"{path} is not a regular file (mode {mode:o})")
                    else:
                        found[path] = (mode, oid)
                elif mode != MODE_TREE:
                    problems.append(f"{path} is not a directory")
                else:
                    self._compare(None, oid, adds[name], path + "/", problems, found)
            for name in sorted(adds.keys() - entries.keys()):
                problems.append(f"{prefix + name} is listed but not in the tree")
            return
        p_raw = self.read_tree(parent, f"tree {prefix or '/'}")
        candidate = c_raw
        fast = True
        known: set[str] = set()
        for name, sub in adds.items():
            path = prefix + name
            c_hit = self.lookup(child, c_raw, name, directory=sub is not None)
            if c_hit is None or c_hit[0] != (MODE_BLOB if sub is None else MODE_TREE):
                fast = False
                continue
            entry = objects.entry_bytes(c_hit[0], name, c_hit[1])
            at = candidate.find(entry)
            if sub is None:
                if at < 0 or self.lookup(parent, p_raw, name, directory=False) is not None:
                    fast = False
                    continue
                found[path] = c_hit
                known.add(name)
                candidate = candidate[:at] + candidate[at + len(entry) :]
                continue
            p_hit = self.lookup(parent, p_raw, name, directory=True)
            if p_hit is None:
                self._compare(None, c_hit[1], sub, path + "/", problems, found)
                replacement = b""
            elif p_hit[0] != MODE_TREE:
                fast = False
                continue
            else:
                self._compare(p_hit[1], c_hit[1], sub, path + "/", problems, found)
                replacement = objects.entry_bytes(MODE_TREE, name, p_hit[1])
            known.add(name)
            if at < 0:
                fast = False
                continue
            candidate = candidate[:at] + replacement + candidate[at + len(entry) :]
        header = b"tree %d\0" % len(candidate)
        if fast and hashlib.sha1(header + candidate).hexdigest() == parent:  # noqa: S324
            return
        before = len(problems)
        # Slow path: parse both trees and name exactly what differs.
        c_entries = self.entries(child, c_raw)
        p_entries = self.entries(parent, p_raw)
        for name, p_hit in sorted(p_entries.items()):
            c_hit = c_entries.get(name)
            path = prefix + name
            sub = adds.get(name, False)
            if c_hit is None:
                problems.append(f"removes {path}, which an earlier record added")
            elif sub is None:
                if c_hit == p_hit:
                    problems.append(f"{path} was already in the parent's tree")
                else:
                    problems.append(f"changes {path}, which an earlier record added")
            elif sub is False and c_hit != p_hit:
                if c_hit[0] == p_hit[0] == MODE_TREE:
                    self._compare(p_hit[1], c_hit[1], {}, path + "/", problems, found)
                else:
                    problems.append(f"changes {path}, which earlier records added")
            elif isinstance(sub, dict) and name not in known:
                if c_hit[0] != MODE_TREE or p_hit[0] != MODE_TREE:
                    problems.append(f"changes {path} between a file and a directory")
                else:
                    self._compare(p_hit[1], c_hit[1], sub, path + "/", problems, found)
        for name, c_hit in sorted(c_entries.items()):
            if name in p_entries or name in known:
                continue
            path = prefix + name
            sub = adds.get(name, False)
            if sub is False:
                if c_hit[0] == MODE_TREE:
                    self._compare(None, c_hit[1], {}, path + "/", problems, found)
                else:
                    problems.append(f"adds {path}, which the record does not list")
            elif sub is None:
                if c_hit[0] != MODE_BLOB:
                    problems.append(f"{path} is not a regular file (mode {c_hit[0]:o})")
                else:
                    found[path] = c_hit
            elif c_hit[0] != MODE_TREE:
                problems.append(f"{path} is not a directory")
            else:
                self._compare(None, c_hit[1], sub, path + "/", problems, found)
        for name in sorted(adds.keys() - c_entries.keys()):
            problems.append(f"{prefix + name} is listed but not in the tree")
        if len(problems) == before:
            problems.append(f"tree {prefix or '/'} is not its parent's tree plus the listed files")


def _check_genesis_arg(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip().lower()
    if not HEX40.fullmatch(text):
        raise InputError(
            f"{value!r} is not a full commit id; a genesis is pinned by all 40 hex digits.",
            hint="Copy the genesis commit id printed by 'ledger init' (or 'ledger verify').",
        )
    return text


def verify_ledger(
    repo_path: Path | str | pygit2.Repository,
    *,
    ref: str = MAIN_REF,
    trust_genesis: str | None = None,
    since: state.VerifiedState | None = None,
    progress: findings.ProgressFn | None = None,
    commits: Collection[str] = (),
) -> findings.VerifyResult:
    """Verify the ledger's branch ``ref`` (FORMAT.md), reporting every finding.

    ``trust_genesis`` pins the genesis commit (full id); otherwise ``since``'s genesis is
    the pin; otherwise the result is unpinned (``genesis_pinned`` false: the repository's
    own ``ledger.genesis`` config is on the same disk and is not used as a pin).
    ``since`` (a saved :class:`state.VerifiedState`) verifies only the records after its head,
    after checking that the chain still holds that head at its seq (``rewrite``) and has
    not been cut back (``rollback``). ``progress(done, total)`` is called as records are
    verified. ``commits`` are commit ids to look up on the verified chain
    (``result.included``). Raises :class:`LedgerNotFound` when there is no repository or
    (without ``since``) no ``ref``.
    """
    repo = objects.open_repo(repo_path)
    try:
        reference = repo.references.get(ref)
    except (pygit2.GitError, ValueError) as exc:
        raise StorageError(f"the ref {ref} cannot be read: {exc}.") from None
    if reference is None:
        if since is not None:
            v = _Verifier(repo)
            v.check_repository()
            v.add("rollback", None, None, f"{ref} does not exist; it was at seq {since.seq}")
            return findings.VerifyResult(
                False, v.findings, None, None, 0, since.genesis, None, True, since.ledger_id
            )
        raise LedgerNotFound(
            f"{repo.path} holds no {ref}; it is not a ledger or it is empty.",
            hint="Point --ledger at a ledger made by 'ledger init' or 'ledger clone'.",
        )
    try:
        target = str(reference.resolve().target)
    except (KeyError, pygit2.GitError) as exc:
        raise StorageError(f"the ref {ref} of {repo.path} cannot be resolved: {exc}.") from None
    return verify_chain(
        repo,
        target,
        trust_genesis=trust_genesis,
        since=since,
        progress=progress,
        commits=commits,
    )


def verify_chain(
    repo: Path | str | pygit2.Repository,
    head: str,
    *,
    trust_genesis: str | None = None,
    since: state.VerifiedState | None = None,
    progress: findings.ProgressFn | None = None,
    commits: Collection[str] = (),
    check_repository: bool = True,
) -> findings.VerifyResult:
    """Verify the first-parent chain ending at commit ``head``.

    For a pre-receive hook, pass the repository (with the quarantine directory as an odb
    alternate) and the pushed new head; ``since`` may be the state of the head the remote
    already had. Otherwise as :func:`verify_ledger`.
    """
    with _bounded_libgit2_memory():
        return _verify_chain(
            repo,
            head,
            trust_genesis=trust_genesis,
            since=since,
            progress=progress,
            commits=commits,
            check_repository=check_repository,
        )


_LIMITS_LOCK = threading.Lock()
_LIMITS_SAVED: list[int] = []
_LIMITS_USERS = [0]


@contextmanager
def _bounded_libgit2_memory() -> Iterator[None]:
    """Keep libgit2's caches and pack maps small while verifying.

    A verification reads every object once, so caching them does not help, and by default
    libgit2 keeps up to 256 MB of small objects and maps packs in 1 GB windows (resident
    pages count as the process's memory). The limits are process-wide, so they are put back
    afterwards.
    """
    settings = pygit2.settings
    with _LIMITS_LOCK:
        if not _LIMITS_SAVED:
            _LIMITS_SAVED.extend(
                [settings.cached_memory[1], settings.mwindow_size, settings.mwindow_mapped_limit]
            )
            settings.cache_max_size(8 * 1024 * 1024)
            settings.mwindow_size = min(_LIMITS_SAVED[1], 16 * 1024 * 1024)
            settings.mwindow_mapped_limit = min(_LIMITS_SAVED[2], 48 * 1024 * 1024)
        _LIMITS_USERS[0] += 1
    try:
        yield
    finally:
        with _LIMITS_LOCK:
            _LIMITS_USERS[0] -= 1
            if _LIMITS_USERS[0] == 0:
                cache, window, mapped = _LIMITS_SAVED
                settings.cache_max_size(cache)
                settings.mwindow_size = window
                settings.mwindow_mapped_limit = mapped
                _LIMITS_SAVED.clear()


def _verify_chain(
    repo: Path | str | pygit2.Repository,
    head: str,
    *,
    trust_genesis: str | None,
    since: state.VerifiedState | None,
    progress: findings.ProgressFn | None,
    commits: Collection[str],
    check_repository: bool,
) -> findings.VerifyResult:
    pin = _check_genesis_arg(trust_genesis)
    repo = objects.open_repo(repo)
    head = head.strip().lower()
    v = _Verifier(repo)
    if check_repository:
        v.check_repository()
    wanted = {c.strip().lower() for c in commits}

    # 1. Walk back from the head collecting ids only, stopping at the root or at the
    #    saved head.
    ids: list[str] = []
    reached_root = False
    found_base = False
    broken: objects.ObjectError | None = None
    broken_at: str | None = None
    position: dict[str, int] = {}
    cur: str | None = head
    while cur is not None:
        if since is not None and cur == since.head:
            found_base = True
            break
        try:
            parents = v.parents_of(cur, keep=True)
        except objects.ObjectError as exc:
            broken, broken_at = exc, cur
            break
        ids.append(cur)
        if cur in wanted:
            position[cur] = len(ids) - 1
        if not parents:
            reached_root = True
            break
        cur = parents[0]

    genesis = ids[-1] if reached_root else (since.genesis if since is not None else None)
    pinned = pin or (since.genesis if since is not None else None)
    if pin is not None and since is not None and since.genesis != pin:
        v.add(
            "genesis-mismatch",
            None,
            None,
            f"the saved state is for genesis {since.genesis}, not the pinned {pin}",
        )
    start_state: state.VerifiedState | None = None

    # 2. Against the last verified head.
    if since is not None and found_base:
        start_state = since
    elif since is not None and broken is None:
        head_seq = len(ids) - 1
        if head_seq < since.seq:
            v.add(
                "rollback",
                head_seq,
                head,
                f"the head is at seq {head_seq}, behind the verified head {since.head} "
                f"at seq {since.seq}",
            )
            if not _is_ancestor(v, head, since.head, since.seq - head_seq):
                v.add("rewrite", head_seq, head, "the head is not an ancestor of the verified head")
        else:
            at = ids[len(ids) - 1 - since.seq]
            v.add(
                "rewrite",
                since.seq,
                at,
                f"the commit at seq {since.seq} is {at}, the verified head was {since.head}",
            )

    # 3. The genesis pin.
    if reached_root and pinned is not None and ids[-1] != pinned:
        v.add(
            "genesis-mismatch",
            0,
            ids[-1],
            f"the chain starts at {ids[-1]}, the pinned genesis is {pinned}",
        )
    if broken is not None:
        v.add(broken.rule, None, broken_at, f"the chain is broken: {broken.message}")

    # 4. Verify forward.
    if start_state is not None:
        v.ledger_id = start_state.ledger_id
        v.load_trust(start_state.keys)
        base_tree: str | None = None
        try:
            base_raw = v.read(start_state.head, OBJ_COMMIT, "commit")
            base_tree = objects.parse_commit(base_raw).tree
        except objects.ObjectError as exc:
            v.add(exc.rule, start_state.seq, start_state.head, exc.message)
        prev = _Prev(start_state.head, start_state.seq, start_state.prev_sha256, base_tree)
    elif reached_root:
        prev = _Prev(None, None, None, None)
    else:
        v.trust_known = False
        prev = _Prev(broken_at, None, None, None, known=False)
    total = len(ids)
    step = max(1, min(1000, total // 100 or 1))
    if progress is not None:
        progress(0, total)
    first = True
    for done, oid in enumerate(_reversed(ids), start=1):
        prev = v.check_commit(oid, prev, is_first=first and reached_root)
        first = False
        if progress is not None and (done % step == 0 or done == total):
            progress(done, total)

    # 5. Commits asked about; keep walking back past the saved head if needed.
    included: dict[str, int | None] = {}
    head_seq_guess = prev.seq
    for c in wanted:
        if c in position and head_seq_guess is not None:
            included[c] = head_seq_guess - position[c]
    missing = wanted - position.keys()
    if missing and found_base and since is not None:
        cur, seq_here = since.head, since.seq
        while cur is not None and missing:
            if cur in missing:
                included[cur] = seq_here
                missing.discard(cur)
            try:
                parents = v.parents_of(cur)
            except objects.ObjectError:
                break
            cur = parents[0] if parents else None
            seq_here -= 1
    for c in missing:
        included[c] = None

    ok = not v.findings
    verified = None
    if ok and prev.digest is not None and prev.seq is not None and v.ledger_id is not None:
        verified = state.VerifiedState(
            genesis=str(genesis),
            head=head if ids else since.head if since is not None else head,
            seq=prev.seq,
            prev_sha256=prev.digest,
            ledger_id=v.ledger_id,
            keys=[trust.TrustedKey(**k.to_json()) for k in v.history],
            verified_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        )
    return findings.VerifyResult(
        ok=ok,
        findings=v.findings,
        head=head,
        seq=prev.seq,
        records_checked=v.checked,
        genesis=genesis,
        state=verified,
        genesis_pinned=pinned is not None,
        ledger_id=v.ledger_id,
        since_seq=start_state.seq if start_state is not None else None,
        included=included,
    )


def _reversed(ids: list[str]) -> Iterator[str]:
    for i in range(len(ids) - 1, -1, -1):
        yield ids[i]


def _is_ancestor(v: _Verifier, ancestor: str, descendant: str, steps: int) -> bool:
    """Whether ``ancestor`` is ``steps`` first-parent steps behind ``descendant``."""
    cur = descendant
    try:
        for _ in range(steps):
            parents = v.parents_of(cur)
            if not parents:
                return False
            cur = parents[0]
    except objects.ObjectError:
        return False
    return cur == ancestor
