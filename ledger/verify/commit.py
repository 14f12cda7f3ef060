"""One commit's checks: step 5 of FORMAT.md §10, one method per bullet of it, in the
document's order, numbered (5.1)–(5.9), each naming the §9 rules it can report.

:class:`Verifier` carries what the chain walk accumulates (findings, trust, the ledger id,
object caches); :meth:`Verifier.check_commit` checks one commit against the facts of the
commit before it (:class:`Expected`) and returns the facts the next one is checked against.
A commit's findings are held until its seq is known, then recorded under it.

Checking is two halves: :meth:`Verifier.check_alone` makes every check that needs nothing
carried along the chain but the previous commit's facts and the ledger id, and returns them
as a :class:`Checked`; :meth:`Verifier.settle` then replays trust (5.7, 5.9: the only other
state carried along) and records the findings. The sequential walk does both per commit;
:mod:`ledger.verify.parallel` runs the first half in worker processes and the second, in
chain order, in the parent: one code path, so both reach the same findings in the same order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import pygit2

from ledger.format import gitobj
from ledger.verify import findings, kinds, objects, records, rules, tree, trust


@dataclass(slots=True)
class Expected:
    """What the next commit is checked against: its expected parent's facts."""

    commit: str | None
    seq: int | None
    digest: str | None
    tree: str | None
    known: bool = True  # False after a commit that could not be read


@dataclass(slots=True)
class Checked:
    """One commit's findings before the trust replay, and what the replay needs (sent back
    by worker processes, so it holds plain data only)."""

    oid: str
    seq: int | None
    notes: list[tuple[str, str]]  # (rule, message), in the order the checks made them
    trust_at: int = 0  # where the trust findings (5.7) go among ``notes``
    signer: str | None = None  # the fingerprint whose signature verified (5.6)
    change: dict[str, Any] | None = None  # a well-formed key record, not the root's (5.9)
    genesis: dict[str, Any] | None = None  # the root's genesis record: trust starts there
    claims: list[findings.WitnessClaim] | None = None  # a well-formed witness record's heads


@dataclass(slots=True)
class _Facts:
    """What the steps learn about one commit, in the order they learn it."""

    oid: str
    digest: str
    commit: objects.Commit
    prev: Expected
    is_first: bool
    guess: int | None  # the seq the chain so far implies
    pending: list[tuple[str, str]] = field(default_factory=list)  # until the seq is known
    trailers: dict[str, str] = field(default_factory=dict)
    rec_path: str | None = None
    rec_entry: tree.Entry | None = None
    readable: bool = True  # False when the record's tree or blob could not be read
    rec: dict[str, Any] | None = None
    schema_ok: bool = False
    seq: int | None = None
    kind: Any = None
    signer: str | None = None
    trust_at: int = 0
    genesis: dict[str, Any] | None = None

    @property
    def is_root(self) -> bool:
        return not self.commit.parents

    def note(self, rule: str, message: str) -> None:
        self.pending.append((rule, message))


class Verifier:
    """The state carried along the chain, and the checks of each commit."""

    def __init__(self, repo: pygit2.Repository, require_user_presence: bool = False) -> None:
        self.repo = repo
        self.reader = objects.ObjectReader(repo)
        self.trees = tree.TreeChecker(self.reader)
        self.trust = trust.Trust()
        self.signatures = trust.Signatures(require_user_presence)
        self.findings: list[findings.Finding] = []
        self.ledger_id: str | None = None
        self.checked = 0
        self.witnessed: list[findings.WitnessClaim] = []

    def add(self, rule: str, seq: int | None, commit: str | None, message: str) -> None:
        self.findings.append(findings.Finding(rule, seq, commit, message))

    def check_commit(self, oid: str, prev: Expected, is_first: bool) -> Expected:
        """Check commit ``oid``, whose parent should be ``prev``; the facts for the next."""
        checked, following = self.check_alone(oid, prev, is_first)
        self.settle(checked)
        return following

    def check_alone(self, oid: str, prev: Expected, is_first: bool) -> tuple[Checked, Expected]:
        """Every check of commit ``oid`` but trust (its findings held in the result for
        :meth:`settle`), and the facts the next commit is checked against."""
        self.checked += 1
        guess = prev.seq + 1 if prev.seq is not None else None
        try:
            raw = self.reader.commit(oid)  # (its id checked by the reader)
            commit = objects.parse_commit(raw)
        except objects.ObjectError as exc:
            return Checked(oid, guess, [(exc.rule, exc.message)]), Expected(
                oid, guess, None, None, known=False
            )
        digest = gitobj.object_sha256(gitobj.OBJ_COMMIT, raw)
        c = _Facts(oid, digest, commit, prev, is_first, guess)
        try:
            following = self._check_parsed(c)
        except objects.ObjectError as exc:
            checked = Checked(oid, guess, [(exc.rule, exc.message)], genesis=c.genesis)
            return checked, Expected(oid, guess, digest, None, known=False)
        checked = Checked(oid, c.seq, c.pending, c.trust_at, c.signer, genesis=c.genesis)
        if c.rec is not None and not c.is_root and c.schema_ok:
            if c.kind in rules.KEY_KINDS:
                checked.change = c.rec
            elif c.kind == rules.WITNESS_KIND:
                checked.claims = self._claims(c)
        return checked, following

    def _claims(self, c: _Facts) -> list[findings.WitnessClaim] | None:
        """The heads a well-formed witness record lists, as claims by this ledger."""
        if c.rec is None or c.seq is None or self.ledger_id is None:
            return None
        lid, seq, oid = self.ledger_id, c.seq, c.oid
        return [
            findings.WitnessClaim(lid, seq, oid, h["ledger"], h["seq"], h["commit"], h["sha256"])
            for h in c.rec["data"]["heads"]
        ]

    def settle(self, c: Checked) -> None:
        """The trust half of one commit's checks, in chain order: the genesis starts trust;
        the signer must be trusted now (5.7); a key record that passed every check changes
        trust (5.9: signed by a trusted key, well-formed, no finding of any rule), and a
        witness record's heads are reported on the same terms (``VerifyResult.witnessed``);
        then the commit's findings are recorded."""
        if c.genesis is not None:
            self.trust.init_from_genesis(c.genesis)
        notes = c.notes
        if c.signer is not None:
            said: list[tuple[str, str]] = []
            trusted = self.trust.check(c.signer, lambda rule, message: said.append((rule, message)))
            if said:
                notes = notes[: c.trust_at] + said + notes[c.trust_at :]
            if trusted and not notes:  # (5.9) the commit passed every check
                if c.change is not None:
                    self.trust.apply_key_record(c.change)
                if c.claims is not None:
                    self.witnessed.extend(c.claims)
        for rule, message in notes:
            self.add(rule, c.seq, c.oid, message)

    def _check_parsed(self, c: _Facts) -> Expected:
        self.reader.next_generation()
        self._check_object(c)  # (5.1) merge, parents, commit-header
        self._check_message(c)  # (5.2) trailers
        self._check_record(c)  # (5.3) tree-append, record-digest, record-canonical
        self._check_schema(c)  # (5.4) record-schema
        self._check_seq(c)  # (5.5) consistency: seq
        self._check_genesis(c)  # parents, record-schema; the genesis starts ledger id, trust
        self._check_consistency(c)  # trailers, commit-header, ledger-id
        self._check_prev_digest(c)  # prev-digest, trailers
        self._check_signer(c)  # (5.6) unsigned, signature-headers, bad-signature; actor-key
        self._check_tree(c)  # (5.8) tree-append, file-digest, record-schema
        # (5.7) trust and (5.9) trust changes, witness heads: settle()
        return Expected(c.oid, c.seq, c.digest, c.commit.tree)

    # (5.1) Object: one parent, the previous commit (none for the root); only the headers
    #     tree, parent, author, committer (the SHA-1 and parse are in check_commit).
    def _check_object(self, c: _Facts) -> None:
        commit, prev = c.commit, c.prev
        if commit.parents and prev.commit is not None and commit.parents[0] != prev.commit:
            c.note("parents", f"its first parent is {commit.parents[0]}, not {prev.commit}")
        if len(commit.parents) > 1:
            c.note("merge", f"it has {len(commit.parents)} parents: {', '.join(commit.parents)}")
        if c.is_root and not c.is_first:
            c.note("parents", "a commit without parent in the middle of the chain")
        for problem in commit.header_problems:
            c.note("commit-header", problem)

    # (5.2) Message: a summary line, an empty line, then the trailers of §3 in order.
    def _check_message(self, c: _Facts) -> None:
        c.trailers, problems = records.parse_message(c.commit.message)
        for problem in problems:
            c.note("trailers", problem)

    # (5.3) Record: the blob at Ledger-Record, its SHA-256, its canonical JSON.
    def _check_record(self, c: _Facts) -> None:
        c.rec_path = rec_path = c.trailers.get("Ledger-Record")
        rec_raw: bytes | None = None
        if rec_path is not None and records.is_safe_path(rec_path):
            try:
                parent_tree = None if c.is_root else c.prev.tree
                c.rec_entry = self.trees.find_record(c.commit.tree, rec_path, parent_tree)
                if c.rec_entry is None:
                    c.note("tree-append", f"the tree has no record file {rec_path}")
                else:
                    rec_raw = self.reader.read(c.rec_entry[1], rules.OBJ_BLOB, f"record {rec_path}")
            except objects.ObjectError as exc:
                c.readable = False
                c.note(exc.rule, exc.message)
        elif rec_path is not None:
            c.note("trailers", f"Ledger-Record {rec_path!r} is not a relative path")
        if rec_raw is None:
            return
        want = c.trailers.get("Ledger-Record-Sha256")
        have = hashlib.sha256(rec_raw).hexdigest()
        if want is not None and want != have:
            c.note("record-digest", f"{rec_path} has SHA-256 {have}, the trailer says {want}")
        try:
            c.rec = records.decode_record(rec_raw)
        except records.NotCanonical as exc:
            c.note("record-canonical", f"{rec_path} is not canonical JSON: {exc}")

    # (5.4) Schema: the common fields, each kind's data, a run record's links.
    def _check_schema(self, c: _Facts) -> None:
        if c.rec is None:
            return
        problems = records.check_schema(c.rec)
        for problem in problems:
            c.note("record-schema", problem)
        c.schema_ok = not problems

    # (5.5) Consistency: Ledger-Seq is the record's seq, one more than the previous one's
    #     (0 at the root); after a gap the count resumes from the seq found.
    def _check_seq(self, c: _Facts) -> None:
        rec_seq = c.rec.get("seq") if c.rec is not None else None
        seq: int | None = rec_seq if kinds.is_int(rec_seq) else None
        t_seq_text = c.trailers.get("Ledger-Seq")
        t_seq = int(t_seq_text) if t_seq_text is not None else None
        if seq is not None and t_seq is not None and seq != t_seq:
            c.note("seq", f"Ledger-Seq says {t_seq}, the record says {seq}")
        if seq is None:
            seq = t_seq
        prev_seq = c.prev.seq
        if c.is_root:
            if seq is not None and seq != 0:
                c.note("seq", f"the first record has seq {seq}, not 0")
        elif seq is not None and prev_seq is not None and seq != prev_seq + 1:
            what = "repeat" if seq <= prev_seq else "gap"
            c.note("seq", f"seq {seq} follows seq {prev_seq} ({what}; expected {prev_seq + 1})")
        c.seq = seq if seq is not None else c.guess

    #     The root holds the genesis record, and only the root: its ledger id and signers
    #     start the chain's ledger id and trust.
    def _check_genesis(self, c: _Facts) -> None:
        rec = c.rec
        c.kind = rec.get("kind") if rec is not None else c.trailers.get("Ledger-Kind")
        if c.is_root and rec is not None and c.kind != "genesis":
            c.note("parents", f"the chain's first commit holds a {c.kind!r} record, not genesis")
        if not c.is_root and c.kind == "genesis":
            c.note("record-schema", "a genesis record after the first commit")
        if c.is_root and rec is not None and c.kind == "genesis":
            lid = rec.get("ledger")
            self.ledger_id = lid if isinstance(lid, str) else None
            c.genesis = rec

    #     Trailers agree with the record (kind, path of §4), author and committer are the
    #     record's actor and time, and the record and Ledger-Id name the genesis's ledger.
    def _check_consistency(self, c: _Facts) -> None:
        rec, trailers = c.rec, c.trailers
        if rec is not None:
            records.compare_trailers(rec, trailers, c.rec_path, c.note)
            records.check_idents(c.commit, rec, c.note)
        if self.ledger_id is None:
            return
        foreign = []
        if rec is not None and rec.get("ledger") != self.ledger_id:
            foreign.append(f"the record says ledger {rec.get('ledger')!r}")
        if trailers.get("Ledger-Id") not in (None, self.ledger_id):
            foreign.append(f"Ledger-Id says {trailers.get('Ledger-Id')}")
        if foreign:
            c.note("ledger-id", f"{' and '.join(foreign)}; this ledger is {self.ledger_id}")

    #     Ledger-Prev-Sha256 is the SHA-256 of the parent commit object (absent at the root).
    def _check_prev_digest(self, c: _Facts) -> None:
        t_prev = c.trailers.get("Ledger-Prev-Sha256")
        if c.is_root:
            if t_prev is not None:
                c.note("trailers", "the genesis commit has a Ledger-Prev-Sha256 trailer")
        elif t_prev is None:
            if c.trailers:
                c.note("trailers", "Ledger-Prev-Sha256 is missing or malformed")
        elif c.prev.digest is not None and t_prev != c.prev.digest:
            c.note(
                "prev-digest",
                f"Ledger-Prev-Sha256 is {t_prev}, but the parent {c.commit.parents[0]} "
                f"hashes to {c.prev.digest}",
            )

    # (5.6) Signature: one gpgsig header whose SSHSIG verifies over the payload.
    # (5.7) Trust: the signer is trusted at this seq (settle(): its findings go here, at
    #     trust_at), and is the record's actor.key.
    def _check_signer(self, c: _Facts) -> None:
        signer_fp = self.signatures.check(c.commit, c.note)
        if signer_fp is None:
            return
        c.signer, c.trust_at = signer_fp, len(c.pending)
        actor = c.rec.get("actor") if c.rec is not None else None
        if isinstance(actor, dict) and actor.get("key") != signer_fp:
            c.note(
                "actor-key",
                f"actor.key is {actor.get('key')!r} but the commit is signed by {signer_fp}",
            )

    # (5.8) Tree: the parent's tree plus exactly the record file and its listed files.
    def _check_tree(self, c: _Facts) -> None:
        if c.rec is None or c.rec_path is None or c.rec_entry is None or not c.readable:
            return
        try:
            self.trees.check(
                c.commit.tree, c.prev.tree, c.is_root, c.rec, c.rec_path, c.rec_entry, c.note
            )
        except objects.ObjectError as exc:
            c.note(exc.rule, exc.message)
