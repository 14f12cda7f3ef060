"""The verifier: an independent reading of docs/FORMAT.md over raw git objects.

Nothing here trusts the store, the repository config or any index: the chain is read as raw
objects (``repo.odb.read``), every commit is re-parsed from its bytes, every digest is
recomputed, and the set of trusted keys is replayed from the genesis record and the
``key.added`` / ``key.revoked`` records. Every problem becomes a :class:`Finding` naming the
rule of FORMAT.md §9 it breaks; verification goes on after a finding so that one run reports
them all.

The chain is verified forward from the genesis (or from the last verified head, see
:class:`VerifiedState`) while only the commit ids are held in memory, so that memory stays
small on long ledgers.
"""

from __future__ import annotations

import binascii
import calendar
import functools
import hashlib
import json
import os
import re
import struct
import tempfile
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pygit2

from ledger.errors import InputError, KeyProblem, LedgerNotFound, StorageError
from ledger.signing import PublicKey

MAIN_REF = "refs/heads/main"
STATE_DIR = "ledger-state"
STATE_FILE = "verified.json"
STATE_FORMAT = 1

#: Every rule name of docs/FORMAT.md §9.
RULES = frozenset(
    {
        "genesis-mismatch",
        "unsigned",
        "signature-headers",
        "bad-signature",
        "untrusted-key",
        "revoked-key",
        "actor-key",
        "prev-digest",
        "seq",
        "record-digest",
        "file-digest",
        "record-canonical",
        "record-schema",
        "commit-header",
        "trailers",
        "tree-append",
        "merge",
        "parents",
        "ledger-id",
        "replace-refs",
        "grafts",
        "rollback",
        "rewrite",
        "object-corrupt",
        "object-missing",
        "diverged",
    }
)

KINDS = frozenset(
    {
        "genesis",
        "key.added",
        "key.revoked",
        "event",
        "run.started",
        "step.started",
        "step.finished",
        "approval",
        "run.finished",
    }
)
_KEY_KINDS = frozenset({"key.added", "key.revoked"})
_RUN_KINDS = frozenset({"run.started", "step.started", "step.finished", "approval", "run.finished"})
_COMMON_FIELDS = frozenset(
    {"schema", "ledger", "seq", "kind", "time", "run", "actor", "host", "data", "files"}
)
_TRAILERS = (
    "Ledger-Id",
    "Ledger-Seq",
    "Ledger-Kind",
    "Ledger-Record",
    "Ledger-Record-Sha256",
    "Ledger-Prev-Sha256",
)

_HEX40 = re.compile(r"[0-9a-f]{40}")
_LEDGER_ID = re.compile(r"[0-9a-f]{32}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SEQ = re.compile(r"0|[1-9][0-9]*")
_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\.\d{6}Z")
_RUN_ID = re.compile(r"(\d{4})(\d{2})(\d{2})T\d{6}Z-[0-9a-f]{8}")
_FILE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_INCIDENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_KIND = re.compile(r"[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*")
_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_IDENT_DROP = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029<>]")
_SUMMARY_MAX = 200

_MODE_BLOB = 0o100644
_MODE_TREE = 0o040000
_OBJ_COMMIT = 1
_OBJ_TREE = 2
_OBJ_BLOB = 3

_SSHSIG_MAGIC = b"SSHSIG"
_ARMOR_BEGIN = "-----BEGIN SSH SIGNATURE-----"
_ARMOR_END = "-----END SSH SIGNATURE-----"

ProgressFn = Callable[[int, int], None]


# --- results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One problem: the FORMAT.md §9 rule it breaks, where, and what exactly is wrong."""

    rule: str
    seq: int | None
    commit: str | None
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "seq": self.seq, "commit": self.commit, "message": self.message}


@dataclass
class TrustedKey:
    """A key the ledger trusted at some point, with the records that added and revoked it.

    ``added_seq`` is 0 and ``added_time`` ``None`` for the genesis signers.
    """

    principal: str
    key: str
    fingerprint: str
    added_seq: int
    added_time: str | None
    revoked_seq: int | None = None
    revoked_time: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_seq is None

    def to_json(self) -> dict[str, Any]:
        return {
            "principal": self.principal,
            "key": self.key,
            "fingerprint": self.fingerprint,
            "added_seq": self.added_seq,
            "added_time": self.added_time,
            "revoked_seq": self.revoked_seq,
            "revoked_time": self.revoked_time,
        }


@dataclass
class VerifiedState:
    """What a successful verification established, to resume from next time.

    ``prev_sha256`` is the SHA-256 of the head commit object (what the next record's
    ``Ledger-Prev-Sha256`` must say); ``keys`` is the trust state at the head: every key
    ever trusted, in the order it was added, with its revocation if any.
    """

    genesis: str
    head: str
    seq: int
    prev_sha256: str
    ledger_id: str
    keys: list[TrustedKey]
    verified_at: str = field(default="", compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "genesis": self.genesis,
            "head": self.head,
            "seq": self.seq,
            "prev_sha256": self.prev_sha256,
            "ledger_id": self.ledger_id,
            "keys": [k.to_json() for k in self.keys],
            "verified_at": self.verified_at,
        }

    @classmethod
    def from_json(cls, obj: Any) -> VerifiedState:
        """Parse a saved state; :class:`InputError` if it is malformed."""
        try:
            if not isinstance(obj, dict) or obj.get("format") != STATE_FORMAT:
                raise ValueError("not a verified-state object of format 1")
            keys = []
            for k in obj["keys"]:
                keys.append(
                    TrustedKey(
                        principal=_want(k["principal"], str),
                        key=_want(k["key"], str),
                        fingerprint=_want(k["fingerprint"], str),
                        added_seq=_want(k["added_seq"], int),
                        added_time=_want_opt(k["added_time"], str),
                        revoked_seq=_want_opt(k["revoked_seq"], int),
                        revoked_time=_want_opt(k["revoked_time"], str),
                    )
                )
            state = cls(
                genesis=_want(obj["genesis"], str),
                head=_want(obj["head"], str),
                seq=_want(obj["seq"], int),
                prev_sha256=_want(obj["prev_sha256"], str),
                ledger_id=_want(obj["ledger_id"], str),
                keys=keys,
                verified_at=_want(obj.get("verified_at", ""), str),
            )
            if not (_HEX40.fullmatch(state.genesis) and _HEX40.fullmatch(state.head)):
                raise ValueError("genesis and head must be 40 hex digits")
            if state.seq < 0 or not _SHA256.fullmatch(state.prev_sha256):
                raise ValueError("bad seq or prev_sha256")
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(
                f"the saved verification state is malformed ({exc}).",
                hint="Delete it (ledger-state/verified.json in the ledger's git directory) "
                "and verify the whole ledger again.",
            ) from None
        return state


@dataclass
class VerifyResult:
    """The outcome of one verification.

    ``ok`` is true when there are no findings. ``head``/``seq`` name the chain's head as
    read; ``records_checked`` how many records this run verified (fewer than ``seq + 1``
    when resuming from a saved state). ``genesis`` is the chain's first commit and
    ``genesis_pinned`` whether it was compared to a pinned id (``trust_genesis`` or the
    saved state); an unpinned result proves the chain is sound but not that it is the
    ledger you meant. ``state`` is set only when ``ok``: save it with :func:`save_state`.
    ``included`` maps each commit asked about to its seq on the chain, or ``None``.
    """

    ok: bool
    findings: list[Finding]
    head: str | None
    seq: int | None
    records_checked: int
    genesis: str | None
    state: VerifiedState | None
    genesis_pinned: bool = False
    ledger_id: str | None = None
    since_seq: int | None = None
    included: dict[str, int | None] = field(default_factory=dict)

    def rules(self) -> set[str]:
        return {f.rule for f in self.findings}

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "head": self.head,
            "seq": self.seq,
            "records_checked": self.records_checked,
            "genesis": self.genesis,
            "genesis_pinned": self.genesis_pinned,
            "ledger_id": self.ledger_id,
            "since_seq": self.since_seq,
            "findings": [f.to_json() for f in self.findings],
            "included": dict(self.included),
        }


def _want(value: Any, typ: type) -> Any:
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise TypeError(f"expected {typ.__name__}, got {type(value).__name__}")
    return value


def _want_opt(value: Any, typ: type) -> Any:
    return None if value is None else _want(value, typ)


# --- local state --------------------------------------------------------------------------


def _gitdir(repo_path: Path | str | pygit2.Repository) -> Path:
    if isinstance(repo_path, pygit2.Repository):
        return Path(repo_path.path)
    return Path(_open_repo(repo_path).path)


def state_path(repo_path: Path | str | pygit2.Repository) -> Path:
    """Where the last verified head of this copy is kept."""
    return _gitdir(repo_path) / STATE_DIR / STATE_FILE


def save_state(repo_path: Path | str | pygit2.Repository, state: VerifiedState) -> Path:
    """Write ``state`` atomically (temporary file, fsync, rename, fsync of the directory)."""
    path = state_path(repo_path)
    try:
        path.parent.mkdir(exist_ok=True)
        data = (json.dumps(state.to_json(), indent=2, sort_keys=True) + "\n").encode()
        fd, tmp = tempfile.mkstemp(prefix=".verified-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        raise StorageError(
            f"could not save the verified head to {path}: {exc.strerror or exc}.",
            hint="Check the permissions of the ledger's directory and free disk space.",
        ) from None
    return path


def load_state(repo_path: Path | str | pygit2.Repository) -> VerifiedState | None:
    """The saved state of this copy, or ``None`` if it was never verified."""
    path = state_path(repo_path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise StorageError(
            f"could not read the saved verification state {path}: {exc}.",
            hint="Check its permissions, or delete it and verify the whole ledger again.",
        ) from None
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise InputError(
            f"the saved verification state {path} is not JSON ({exc}).",
            hint="Delete it and verify the whole ledger again.",
        ) from None
    return VerifiedState.from_json(obj)


# --- raw object parsing -------------------------------------------------------------------


class _ObjectError(Exception):
    """An object could not be read; ``rule`` is object-missing or object-corrupt."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


@dataclass
class _Commit:
    tree: str
    parents: list[str]
    author: bytes | None
    committer: bytes | None
    signatures: list[str]  # values of gpgsig / gpgsig-sha256 headers
    header_problems: list[str]
    signature_problems: list[str]
    payload: bytes
    message: bytes | None


_CANONICAL_COMMIT = re.compile(
    rb"tree ([0-9a-f]{40})\n((?:parent [0-9a-f]{40}\n)*)author ([^\n]*)\ncommitter ([^\n]*)\n"
    rb"(gpgsig ([^\n]*\n(?: [^\n]*\n)*))\n"
)


def _parse_commit(raw: bytes) -> _Commit:
    """Split a raw commit into its headers, signature(s), signed payload and message."""
    m = _CANONICAL_COMMIT.match(raw)
    if m is not None:  # the layout of FORMAT.md §3 and §6: one quick match
        parents_block = m.group(2)
        fast_parents = [
            parents_block[i + 7 : i + 47].decode() for i in range(0, len(parents_block), 48)
        ]
        signature = m.group(6)[:-1].replace(b"\n ", b"\n").decode("utf-8", "replace")
        return _Commit(
            m.group(1).decode(),
            fast_parents,
            m.group(3),
            m.group(4),
            [signature],
            [],
            [],
            raw[: m.start(5)] + raw[m.end(5) :],
            raw[m.end() :],
        )
    end = raw.find(b"\n\n")
    if end < 0:
        head_block, message = raw.rstrip(b"\n"), None
    else:
        head_block, message = raw[:end], raw[end + 2 :]
    lines = head_block.split(b"\n")
    headers: list[tuple[bytes, list[bytes], int, int]] = []  # name, value lines, first, last
    for i, line in enumerate(lines):
        if line.startswith(b" ") and headers:
            name, values, first, _ = headers[-1]
            values.append(line[1:])
            headers[-1] = (name, values, first, i)
            continue
        name, _, value = line.partition(b" ")
        headers.append((name, [value], i, i))
    tree = ""
    parents: list[str] = []
    author = committer = None
    sigs: list[str] = []
    problems: list[str] = []
    sig_problems: list[str] = []
    drop: set[int] = set()
    order: list[bytes] = []
    for name, values, first, last in headers:
        value = b"\n".join(values)
        order.append(name)
        if name == b"tree" and not tree:
            tree = value.decode("ascii", "replace")
        elif name == b"parent":
            parents.append(value.decode("ascii", "replace"))
        elif name == b"author" and author is None:
            author = value
        elif name == b"committer" and committer is None:
            committer = value
        elif name in (b"gpgsig", b"gpgsig-sha256"):
            sigs.append(value.decode("utf-8", "replace"))
            drop.update(range(first, last + 1))
            if name != b"gpgsig":
                sig_problems.append(f"it has a {name.decode()} header")
        else:
            problems.append(f"unexpected commit header {name.decode('utf-8', 'replace')!r}")
    if not _HEX40.fullmatch(tree) or any(not _HEX40.fullmatch(p) for p in parents):
        raise _ObjectError("object-corrupt", "the commit's tree or parent header is malformed")
    structural = [n for n in order if n not in (b"gpgsig", b"gpgsig-sha256")]
    want = [b"tree"] + [b"parent"] * len(parents) + [b"author", b"committer"]
    if structural != want:
        problems.append("its headers are not tree, parent, author, committer in that order")
    if sigs and order[len(want) : len(want) + 1] != [b"gpgsig"]:
        sig_problems.append("the gpgsig header does not directly follow the committer line")
    if drop:
        kept = [line for i, line in enumerate(lines) if i not in drop]
        payload = b"\n".join(kept) + (raw[end:] if end >= 0 else b"\n")
    else:
        payload = raw
    return _Commit(tree, parents, author, committer, sigs, problems, sig_problems, payload, message)


class _SigError(Exception):
    pass


def _read_string(buf: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 4 > len(buf):
        raise _SigError("truncated SSHSIG blob")
    (n,) = struct.unpack_from(">I", buf, pos)
    pos += 4
    if pos + n > len(buf):
        raise _SigError("truncated SSHSIG blob")
    return buf[pos : pos + n], pos + n


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


@dataclass(frozen=True)
class _SshSig:
    public_key: bytes
    namespace: bytes
    reserved: bytes
    hash_algorithm: bytes
    signature: bytes


def _parse_sshsig(armored: str) -> _SshSig:
    """Parse an armored SSHSIG (OpenSSH PROTOCOL.sshsig)."""
    lines = armored.strip("\n").split("\n")
    if len(lines) < 3 or lines[0] != _ARMOR_BEGIN or lines[-1] != _ARMOR_END:
        raise _SigError("the signature is not an armored SSH signature")
    try:
        blob = binascii.a2b_base64("".join(lines[1:-1]), strict_mode=True)
    except binascii.Error as exc:
        raise _SigError(f"the signature's base64 is malformed ({exc})") from None
    if not blob.startswith(_SSHSIG_MAGIC) or len(blob) < 10:
        raise _SigError("the signature blob does not start with SSHSIG")
    (version,) = struct.unpack_from(">I", blob, 6)
    if version != 1:
        raise _SigError(f"unsupported SSHSIG version {version}")
    pos = 10
    public_key, pos = _read_string(blob, pos)
    namespace, pos = _read_string(blob, pos)
    reserved, pos = _read_string(blob, pos)
    hash_algorithm, pos = _read_string(blob, pos)
    signature, pos = _read_string(blob, pos)
    if pos != len(blob):
        raise _SigError("trailing bytes after the SSHSIG signature")
    return _SshSig(public_key, namespace, reserved, hash_algorithm, signature)


# --- records ------------------------------------------------------------------------------


class _NotCanonical(Exception):
    pass


def _reject_float(text: str) -> Any:
    raise _NotCanonical(f"it holds the floating point number {text}")


def _reject_constant(text: str) -> Any:
    raise _NotCanonical(f"it holds {text}, which is not JSON")


def _decode_record(raw: bytes) -> dict[str, Any]:
    """Parse a record and check it is canonical (FORMAT.md §2); _NotCanonical if not."""
    try:
        text = raw.decode("utf-8")
        obj = json.loads(text, parse_float=_reject_float, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise _NotCanonical("it is not UTF-8") from None
    except RecursionError:
        raise _NotCanonical("it is nested too deeply") from None
    except ValueError as exc:
        raise _NotCanonical(f"it is not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise _NotCanonical("it is not a JSON object")
    try:
        again = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        canonical = again.encode("utf-8")
    except (UnicodeEncodeError, RecursionError, ValueError):
        raise _NotCanonical("it cannot be re-encoded as UTF-8 JSON") from None
    if canonical != raw:
        raise _NotCanonical("its bytes differ from its canonical encoding")
    return obj


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_safe_path(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and all(p not in ("", ".", "..") for p in parts) and "\0" not in path


def expected_record_path(kind: str, seq: int, run: str | None, time: str) -> str | None:
    """The record file's path by FORMAT.md §4, or ``None`` if the inputs are malformed."""
    if kind == "genesis":
        return "genesis.json"
    name = f"{seq:010d}-{kind}.json"
    if kind in _KEY_KINDS:
        return f"keys/{name}"
    if run is not None:
        m = _RUN_ID.fullmatch(run)
        if not m:
            return None
        return f"runs/{m.group(1)}/{m.group(2)}/{m.group(3)}/{run}/{name}"
    t = _TIME.fullmatch(time)
    if not t:
        return None
    return f"events/{t.group(1)}/{t.group(2)}/{t.group(3)}/{seq // 1000:07d}/{name}"


@functools.lru_cache(maxsize=8)
def _epoch(time: str) -> int | None:
    """Whole seconds since the epoch of a record time, or None if it is not one."""
    m = _TIME.fullmatch(time)
    if m is None:
        return None
    try:
        y, mo, d, h, mi, sec = (int(g) for g in m.groups())
        return calendar.timegm(datetime(y, mo, d, h, mi, sec, tzinfo=UTC).utctimetuple())
    except ValueError:
        return None


def _ident(principal: str) -> str:
    """The git ident a principal stands as in author/committer (FORMAT.md §3)."""
    return _IDENT_DROP.sub("", principal).strip() or "unknown"


def _check_schema(rec: dict[str, Any]) -> list[str]:
    """Problems with the common fields and the kind-specific data (FORMAT.md §2, §5)."""
    out: list[str] = []
    missing = sorted(_COMMON_FIELDS - rec.keys())
    extra = sorted(rec.keys() - _COMMON_FIELDS)
    if missing:
        out.append(f"missing field(s) {', '.join(missing)}")
    if extra:
        out.append(f"unknown field(s) {', '.join(extra)}")
    if "schema" in rec and not (_is_int(rec["schema"]) and rec["schema"] == 1):
        out.append(f"schema is {rec['schema']!r}, not 1")
    if "ledger" in rec and not (
        isinstance(rec["ledger"], str) and _LEDGER_ID.fullmatch(rec["ledger"])
    ):
        out.append("ledger is not 32 lowercase hex digits")
    if "seq" in rec and not (_is_int(rec["seq"]) and rec["seq"] >= 0):
        out.append("seq is not a non-negative integer")
    kind = rec.get("kind")
    if "kind" in rec and not (isinstance(kind, str) and kind in KINDS):
        out.append(f"kind {kind!r} is not a kind of FORMAT.md §5")
    if "time" in rec:
        t = rec["time"]
        if not (isinstance(t, str) and _TIME.fullmatch(t)):
            out.append("time is not YYYY-MM-DDTHH:MM:SS.ffffffZ")
        elif _epoch(t) is None:
            out.append(f"time {t!r} is not a valid date and time")
    run = rec.get("run")
    if run is not None and not (isinstance(run, str) and _RUN_ID.fullmatch(run)):
        out.append("run is neither null nor a run id YYYYMMDDTHHMMSSZ-<8 hex>")
    actor = rec.get("actor")
    if "actor" in rec and not (
        isinstance(actor, dict)
        and actor.keys() == {"principal", "key"}
        and isinstance(actor["principal"], str)
        and isinstance(actor["key"], str)
        and _FINGERPRINT.fullmatch(actor["key"])
    ):
        out.append('actor is not {"principal": string, "key": "SHA256:..."}')
    if "host" in rec and not isinstance(rec["host"], str):
        out.append("host is not a string")
    if "data" in rec and not isinstance(rec["data"], dict):
        out.append("data is not an object")
    files = rec.get("files")
    if "files" in rec:
        if not isinstance(files, dict):
            out.append("files is not an object")
        else:
            for name, meta in files.items():
                if not _FILE_NAME.fullmatch(name):
                    out.append(f"files name {name!r} does not match [a-z0-9][a-z0-9._-]{{0,63}}")
                if not (
                    isinstance(meta, dict)
                    and meta.keys() == {"path", "sha256", "size"}
                    and isinstance(meta["path"], str)
                    and isinstance(meta["sha256"], str)
                    and _SHA256.fullmatch(meta["sha256"])
                    and _is_int(meta["size"])
                    and meta["size"] >= 0
                ):
                    out.append(f'files entry {name!r} is not {{"path", "sha256", "size"}}')
    if isinstance(kind, str) and isinstance(rec.get("data"), dict):
        out.extend(_check_data(kind, rec["data"]))
    if kind == "genesis" and rec.get("run") is not None:
        out.append("the genesis record has a run")
    if kind in _RUN_KINDS and "run" in rec and rec["run"] is None:
        out.append(f"a {kind} record without a run id")
    if not out and kind in _RUN_KINDS:
        out.extend(_check_run_links(rec))
    return out


def _check_run_links(rec: dict[str, Any]) -> list[str]:
    """§5.1 facts that tie a run record's data to its attachments and its signer."""
    kind, data, files = rec["kind"], rec["data"], rec["files"]
    out = []
    if kind == "run.started":
        attached = files.get("runbook")
        if attached is None:
            out.append("run.started has no runbook attachment")
        elif attached.get("sha256") != data["runbook"]["sha256"]:
            out.append("runbook.sha256 differs from the runbook attachment's digest")
        incident = data["trigger"]["incident"]
        index = files.get("incident-index")
        if incident is not None and (
            index is None or index.get("path") != f"incidents/{incident}/{rec['run']}"
        ):
            out.append(f"the run names incident {incident!r} but has no index file for it")
        if incident is None and index is not None:
            out.append("an incident index file for a run without an incident")
    elif kind == "step.finished":
        for stream in ("stdout", "stderr"):
            summary = data.get(stream)
            if summary is None:
                continue
            if not _stream(summary):
                out.append(f"step.finished data field {stream} is malformed")
                continue
            attached = files.get(stream)
            if (attached is not None) != (summary["size"] > 0):
                out.append(f"{stream} must be attached exactly when it is not empty")
            elif (
                attached is not None
                and not summary["truncated"]
                and (attached.get("sha256"), attached.get("size"))
                != (summary["sha256"], summary["size"])
            ):
                out.append(f"the {stream} attachment differs from the step's {stream} digest")
    elif kind == "approval" and data["fingerprint"] != rec["actor"]["key"]:
        out.append("the approval's fingerprint is not actor.key")
    return out


def _check_key_line(key: Any, fingerprint: Any, where: str) -> tuple[list[str], str | None]:
    """Problems with an OpenSSH public key line and its stated fingerprint."""
    if not isinstance(key, str) or not isinstance(fingerprint, str):
        return [f"{where}: key and fingerprint must be strings"], None
    try:
        pk = PublicKey.parse(key)
    except KeyProblem as exc:
        return [f"{where}: the key is not an OpenSSH public key ({exc.message})"], None
    out = []
    if pk.openssh() != key:
        out.append(f"{where}: the key line is not '<type> <base64>' without comment")
    if pk.fingerprint != fingerprint:
        out.append(f"{where}: fingerprint {fingerprint} is not the key's ({pk.fingerprint})")
    return out, pk.fingerprint


def _check_data(kind: str, data: dict[str, Any]) -> list[str]:
    def fields(spec: dict[str, Callable[[Any], bool]]) -> list[str]:
        problems = []
        missing = sorted(spec.keys() - data.keys())
        extra = sorted(data.keys() - spec.keys())
        if missing:
            problems.append(f"{kind} data lacks {', '.join(missing)}")
        if extra:
            problems.append(f"{kind} data has unknown field(s) {', '.join(extra)}")
        for name, ok in spec.items():
            if name in data and not ok(data[name]):
                problems.append(f"{kind} data field {name} is malformed")
        return problems

    def is_str(v: Any) -> bool:
        return isinstance(v, str)

    if kind == "genesis":
        out = fields(
            {
                "name": is_str,
                "signers": lambda v: isinstance(v, list) and len(v) > 0,
                "created_by": is_str,
            }
        )
        signers = data.get("signers")
        if isinstance(signers, list):
            for i, s in enumerate(signers):
                if not (
                    isinstance(s, dict)
                    and s.keys() == {"principal", "key", "fingerprint"}
                    and isinstance(s["principal"], str)
                ):
                    out.append(f'genesis signer {i} is not {{"principal", "key", "fingerprint"}}')
                    continue
                out.extend(_check_key_line(s["key"], s["fingerprint"], f"genesis signer {i}")[0])
        return out
    if kind == "key.added":
        out = fields(
            {
                "principal": is_str,
                "key": is_str,
                "fingerprint": is_str,
                "comment": is_str,
            }
        )
        if not out:
            out.extend(_check_key_line(data["key"], data["fingerprint"], "key.added")[0])
        return out
    if kind == "key.revoked":
        return fields(
            {
                "fingerprint": lambda v: isinstance(v, str) and bool(_FINGERPRINT.fullmatch(v)),
                "reason": is_str,
            }
        )
    if kind == "event":
        return fields({"message": is_str, "data": lambda v: True})
    spec = _RUN_SPECS.get(kind)
    if spec is None:
        return []
    # §5.1: every listed field is present and well-typed; unknown fields are ignored.
    out = []
    missing = sorted(spec.keys() - data.keys())
    if missing:
        out.append(f"{kind} data lacks {', '.join(missing)}")
    for name, ok in spec.items():
        if name in data and not ok(data[name]):
            out.append(f"{kind} data field {name} is malformed")
    extra = _STEP_EXTRA.get((kind, data.get("type"), data.get("status")), {})
    for name, ok in extra.items():
        if name not in data:
            out.append(f"{kind} data lacks {name}")
        elif not ok(data[name]):
            out.append(f"{kind} data field {name} is malformed")
    return out


# --- §5.1 run records: field -> predicate ---------------------------------------------------


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _str_or_null(v: Any) -> bool:
    return v is None or isinstance(v, str)


def _int(v: Any) -> bool:
    return _is_int(v)


def _int_or_null(v: Any) -> bool:
    return v is None or _is_int(v)


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _obj(v: Any) -> bool:
    return isinstance(v, dict)


def _strs(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _hex64(v: Any) -> bool:
    return isinstance(v, str) and bool(_SHA256.fullmatch(v))


def _one_of(*values: str) -> Callable[[Any], bool]:
    return lambda v: v in values


def _shape(**spec: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, dict) and all(k in v and ok(v[k]) for k, ok in spec.items())


def _run_id_or_null(v: Any) -> bool:
    return v is None or (isinstance(v, str) and bool(_RUN_ID.fullmatch(v)))


_stream = _shape(size=_int, sha256=_hex64, truncated=_bool, omitted=_int)
_STEP_COMMON: dict[str, Callable[[Any], bool]] = {
    "step": _str,
    "index": _int,
    "phase": _one_of("main", "on_failure"),
    "handler": _bool,
    "attempt": _int,
}
_RUN_SPECS: dict[str, dict[str, Callable[[Any], bool]]] = {
    "run.started": {
        "runbook": _shape(name=_str, path=_str, sha256=_hex64, description=_str_or_null),
        "params": _obj,
        "param_sources": lambda v: isinstance(v, dict) and all(map(_str, v.values())),
        "trigger": _shape(
            source=_one_of("manual", "ci"),
            incident=_str_or_null,
            text=_str_or_null,
            ci=_str_or_null,
            ci_run=_str_or_null,
            ci_url=_str_or_null,
        ),
        "operator": _shape(principal=_str, user=_str_or_null),
        "tool_version": _str,
        "env": _obj,
        "lock": _str_or_null,
        "resumes": _run_id_or_null,
        "steps": _strs,
        "on_failure": _strs,
    },
    "step.started": {**_STEP_COMMON, "type": _one_of("command", "approval")},
    "step.finished": {
        **_STEP_COMMON,
        "status": _one_of("ok", "failed", "timeout", "interrupted", "skipped", "rejected"),
        "exit_code": _int_or_null,
        "duration_ms": _int,
        "error": _str_or_null,
        "outputs": lambda v: isinstance(v, dict) and all(map(_str, v.values())),
    },
    "approval": {
        "step": _str_or_null,
        "index": _int_or_null,
        "decision": _one_of("approved", "rejected"),
        "comment": _str,
        "principal": _str,
        "fingerprint": lambda v: isinstance(v, str) and bool(_FINGERPRINT.fullmatch(v)),
        "request_seq": _int,
        "request_commit": lambda v: isinstance(v, str) and bool(_HEX40.fullmatch(v)),
        "via": _one_of("command", "terminal"),
    },
    "run.finished": {
        "status": _one_of("succeeded", "failed", "aborted", "rejected"),
        "failed_step": _str_or_null,
        "error": _str_or_null,
        "duration_ms": _int,
        "continued_after_failure": _strs,
        "handlers_run": _strs,
        "handlers_failed": _strs,
        "signal": _int_or_null,
        "resumes": _run_id_or_null,
    },
}
# Fields that depend on the step's type (step.started) or status (step.finished).
_STEP_EXTRA: dict[tuple[str, Any, Any], dict[str, Callable[[Any], bool]]] = {
    ("step.started", "command", None): {
        "command": _str,
        "shell": _one_of("bash", "sh"),
        "cwd": _str_or_null,
        "timeout_ms": _int_or_null,
        "max_attempts": _int,
        "env": _strs,
    },
    ("step.started", "approval", None): {
        "approval": _shape(
            approvers=_strs, min_approvals=_int, message=_str_or_null, timeout_ms=_int_or_null
        ),
    },
    ("step.finished", None, "skipped"): {"reason": _str},
}


# --- trees --------------------------------------------------------------------------------


def _nest(paths: Collection[str]) -> dict[str, Any]:
    """Paths as a nested dict: directory name -> dict, file name -> None."""
    root: dict[str, Any] = {}
    for path in paths:
        parts = path.split("/")
        node = root
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if nxt is None:  # a file and a directory of the same name: caught by layout
                break
            node = nxt
        else:
            node.setdefault(parts[-1], None)
    return root


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
        self.findings: list[Finding] = []
        self.trust: dict[str, TrustedKey] = {}  # fingerprint -> latest entry
        self.history: list[TrustedKey] = []
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
        self.findings.append(Finding(rule, seq, commit, message))

    def read(self, oid: str, want: int, what: str) -> bytes:
        try:
            typ, data = self.odb.read(oid)
        except KeyError:  # pygit2.NotFoundError is a KeyError
            raise _ObjectError("object-missing", f"{what} {oid} is missing") from None
        except (pygit2.GitError, ValueError, OSError) as exc:
            raise _ObjectError("object-corrupt", f"{what} {oid} cannot be read: {exc}") from None
        if int(typ) != want:
            raise _ObjectError("object-corrupt", f"{what} {oid} has the wrong object type")
        return bytes(data)

    def read_tree(self, oid: str, what: str) -> bytes:
        cached = self._trees.get(oid)
        if cached is None:
            cached = self._trees_old.get(oid)
            if cached is None:
                cached = self.read(oid, _OBJ_TREE, what)
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
            parsed = _tree_entries(raw)
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
        mode = _MODE_TREE if directory else _MODE_BLOB
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
                    target if _HEX40.fullmatch(target) else None,
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
        raw = self.read(oid, _OBJ_COMMIT, "commit")
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
            problems, fp = _check_key_line(s.get("key"), s.get("fingerprint"), "signer")
            if problems or fp is None or not isinstance(s.get("principal"), str):
                continue
            entry = TrustedKey(s["principal"], s["key"], fp, 0, None)
            if fp not in self.trust:
                self.trust[fp] = entry
                self.history.append(entry)

    def load_trust(self, keys: list[TrustedKey]) -> None:
        self.trust.clear()
        self.history = [TrustedKey(**k.to_json()) for k in keys]
        for entry in self.history:
            self.trust[entry.fingerprint] = entry

    def apply_key_record(self, rec: dict[str, Any]) -> None:
        data = rec["data"]
        if rec["kind"] == "key.added":
            fp = data["fingerprint"]
            current = self.trust.get(fp)
            if current is not None and current.active:
                return
            entry = TrustedKey(data["principal"], data["key"], fp, rec["seq"], rec["time"])
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
            raw = self._raw_commits.pop(oid, None) or self.read(oid, _OBJ_COMMIT, "commit")
            if hashlib.sha1(b"commit %d\0" % len(raw) + raw).hexdigest() != oid:  # noqa: S324
                raise _ObjectError("object-corrupt", f"commit {oid} does not hash to its id")
            commit = _parse_commit(raw)
        except _ObjectError as exc:
            self.add(exc.rule, guess, oid, exc.message)
            return _Prev(oid, guess, None, None, known=False)
        digest = hashlib.sha256(b"commit %d\0" % len(raw) + raw).hexdigest()
        try:
            return self._check_parsed(oid, raw, digest, commit, prev, is_first, guess)
        except _ObjectError as exc:
            self.add(exc.rule, guess, oid, exc.message)
            return _Prev(oid, guess, digest, None, known=False)

    def _check_parsed(
        self,
        oid: str,
        raw: bytes,
        digest: str,
        commit: _Commit,
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
        trailers, message_problems = _parse_message(commit.message)
        for problem in message_problems:
            note("trailers", problem)

        # -- record file --
        readable = True
        rec_path = trailers.get("Ledger-Record")
        rec: dict[str, Any] | None = None
        rec_raw: bytes | None = None
        rec_entry: tuple[int, str] | None = None
        if rec_path is not None and _is_safe_path(rec_path):
            try:
                rec_entry = self._find_path(commit.tree, rec_path)
                if rec_entry is None:
                    note("tree-append", f"the tree has no record file {rec_path}")
                else:
                    rec_raw = self.read(rec_entry[1], _OBJ_BLOB, f"record {rec_path}")
            except _ObjectError as exc:
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
                rec = _decode_record(rec_raw)
            except _NotCanonical as exc:
                note("record-canonical", f"{rec_path} is not canonical JSON: {exc}")
        schema_ok = False
        if rec is not None:
            problems = _check_schema(rec)
            for problem in problems:
                note("record-schema", problem)
            schema_ok = not problems

        # -- seq --
        rec_seq = rec.get("seq") if rec is not None else None
        seq: int | None = rec_seq if _is_int(rec_seq) else None
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
            _compare_trailers(rec, trailers, rec_path, note)
            _check_idents(commit, rec, note)
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
            except _ObjectError as exc:
                note(exc.rule, exc.message)

        if trusted and rec is not None and schema_ok and kind in _KEY_KINDS and not is_root:
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
                return hit if hit[0] == _MODE_BLOB else None
            if hit[0] != _MODE_TREE:
                return None
            current = hit[1]
        return None

    def _check_signature(self, commit: _Commit, note: Callable[[str, str], None]) -> str | None:
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
            sig = _parse_sshsig(commit.signatures[0])
            if sig.namespace != b"git":
                raise _SigError(f"namespace is {sig.namespace!r}, not 'git'")
            if sig.hash_algorithm != b"sha512":
                raise _SigError(f"hash is {sig.hash_algorithm!r}, not 'sha512'")
            if sig.reserved:
                raise _SigError("the reserved field is not empty")
            alg, _ = _read_string(sig.signature, 0)
            if alg == b"ssh-rsa":
                raise _SigError("RSA signatures with SHA-1 are not accepted")
            pk = self.public_key(sig.public_key)
            signed = (
                _SSHSIG_MAGIC
                + _ssh_string(sig.namespace)
                + _ssh_string(sig.reserved)
                + _ssh_string(sig.hash_algorithm)
                + _ssh_string(hashlib.sha512(commit.payload).digest())
            )
            if not pk.verify(sig.signature, signed):
                raise _SigError(f"the signature by {pk.fingerprint} does not verify")
        except _SigError as exc:
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
        tree: str,
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
                layout = _expected_file_path(rec, rec_path, name)
                if path != layout:
                    note(
                        "record-schema",
                        f"file {name!r} is at {path!r}; the layout of FORMAT.md §4 puts it at "
                        f"{layout!r}",
                    )
                    if not _is_safe_path(path):
                        continue
                if path in wanted:
                    note("record-schema", f"file {name!r} repeats the path {path}")
                    continue
                wanted.add(path)
                if isinstance(meta.get("sha256"), str) and _is_int(meta.get("size")):
                    checks.append((path, meta["sha256"], meta["size"], name == "incident-index"))
        found: dict[str, tuple[int, str]] = {}
        if is_root or prev.tree is not None:
            problems: list[str] = []
            parent = None if is_root else prev.tree
            self._compare(parent, tree, _nest(wanted), "", problems, found)
            for problem in problems[:20]:
                note("tree-append", problem)
            if len(problems) > 20:
                note("tree-append", f"... and {len(problems) - 20} more differences")
            if rec_path in found and found[rec_path] != rec_entry:
                note("tree-append", f"the tree holds {rec_path} ambiguously")
        for path, sha, size, is_index in checks:
            entry = found.get(path) or self._find_path(tree, path)
            if entry is None:
                continue  # reported by the comparison
            blob = self.read(entry[1], _OBJ_BLOB, f"file {path}")
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
                    if mode == _MODE_TREE and len(problems) < 50:
                        self._compare(None, oid, {}, path + "/", problems, found)
                    else:
                        problems.append(f"adds {path}, which the record does not list")
                elif adds[name] is None:
                    if mode != _MODE_BLOB:
                        problems.append(f"{path} is not a regular file (mode {mode:o})")
                    else:
                        found[path] = (mode, oid)
                elif mode != _MODE_TREE:
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
            if c_hit is None or c_hit[0] != (_MODE_BLOB if sub is None else _MODE_TREE):
                fast = False
                continue
            entry = _entry_bytes(c_hit[0], name, c_hit[1])
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
            elif p_hit[0] != _MODE_TREE:
                fast = False
                continue
            else:
                self._compare(p_hit[1], c_hit[1], sub, path + "/", problems, found)
                replacement = _entry_bytes(_MODE_TREE, name, p_hit[1])
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
                if c_hit[0] == p_hit[0] == _MODE_TREE:
                    self._compare(p_hit[1], c_hit[1], {}, path + "/", problems, found)
                else:
                    problems.append(f"changes {path}, which earlier records added")
            elif isinstance(sub, dict) and name not in known:
                if c_hit[0] != _MODE_TREE or p_hit[0] != _MODE_TREE:
                    problems.append(f"changes {path} between a file and a directory")
                else:
                    self._compare(p_hit[1], c_hit[1], sub, path + "/", problems, found)
        for name, c_hit in sorted(c_entries.items()):
            if name in p_entries or name in known:
                continue
            path = prefix + name
            sub = adds.get(name, False)
            if sub is False:
                if c_hit[0] == _MODE_TREE:
                    self._compare(None, c_hit[1], {}, path + "/", problems, found)
                else:
                    problems.append(f"adds {path}, which the record does not list")
            elif sub is None:
                if c_hit[0] != _MODE_BLOB:
                    problems.append(f"{path} is not a regular file (mode {c_hit[0]:o})")
                else:
                    found[path] = c_hit
            elif c_hit[0] != _MODE_TREE:
                problems.append(f"{path} is not a directory")
            else:
                self._compare(None, c_hit[1], sub, path + "/", problems, found)
        for name in sorted(adds.keys() - c_entries.keys()):
            problems.append(f"{prefix + name} is listed but not in the tree")
        if len(problems) == before:
            problems.append(f"tree {prefix or '/'} is not its parent's tree plus the listed files")


# --- helpers used by the verifier ---------------------------------------------------------


def _entry_bytes(mode: int, name: str, oid: str) -> bytes:
    return b"%o %s\0" % (mode, name.encode("utf-8")) + bytes.fromhex(oid)


def _tree_entries(raw: bytes) -> dict[str, tuple[int, str]]:
    """All entries of a raw tree: name -> (mode, hex id). _ObjectError if malformed."""
    out: dict[str, tuple[int, str]] = {}
    pos = 0
    n = len(raw)
    while pos < n:
        sp = raw.find(b" ", pos)
        nul = raw.find(b"\0", sp + 1)
        if sp < 0 or nul < 0 or nul + 21 > n:
            raise _ObjectError("object-corrupt", "a tree object is malformed")
        try:
            mode = int(raw[pos:sp], 8)
            name = raw[sp + 1 : nul].decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise _ObjectError("object-corrupt", "a tree entry is malformed") from None
        out[name] = (mode, raw[nul + 1 : nul + 21].hex())
        pos = nul + 21
    return out


def _expected_file_path(rec: dict[str, Any], rec_path: str, name: str) -> str | None:
    if name == "incident-index":
        run = rec.get("run")
        if rec.get("kind") != "run.started" or not isinstance(run, str):
            return None
        meta = rec.get("files", {}).get(name, {})
        path = meta.get("path") if isinstance(meta, dict) else None
        if isinstance(path, str):
            parts = path.split("/")
            if len(parts) == 3 and parts[0] == "incidents" and _INCIDENT.fullmatch(parts[1]):
                return f"incidents/{parts[1]}/{run}"
        return None
    if not rec_path.endswith(".json"):
        return None
    return f"{rec_path[: -len('.json')]}.{name}"


def _parse_message(message: bytes | None) -> tuple[dict[str, str], list[str]]:
    """Trailers of a commit message and the problems with its shape (FORMAT.md §3)."""
    if message is None:
        return {}, ["the commit has no message"]
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        return {}, ["the commit message is not UTF-8"]
    problems: list[str] = []
    if not text.endswith("\n"):
        problems.append("the commit message does not end with a newline")
    lines = text[:-1].split("\n") if text.endswith("\n") else text.split("\n")
    summary = lines[0]
    if len(summary) > _SUMMARY_MAX or _CONTROL.search(summary):
        problems.append("the summary line is longer than 200 characters or has control characters")
    if len(lines) < 3 or lines[1] != "":
        problems.append("the message is not a summary line, an empty line, then trailers")
        return {}, problems
    trailers: dict[str, str] = {}
    order: list[str] = []
    for line in lines[2:]:
        key, sep, value = line.partition(": ")
        if not sep or key not in _TRAILERS or key in trailers:
            problems.append(f"unexpected line in the trailers: {line[:80]!r}")
            continue
        trailers[key] = value
        order.append(key)
    if order != [k for k in _TRAILERS if k in trailers]:
        problems.append("the trailers are not in the order of FORMAT.md §3")
    missing = [k for k in _TRAILERS[:5] if k not in trailers]
    if missing:
        problems.append(f"missing trailer(s) {', '.join(missing)}")
    checks = {
        "Ledger-Id": _LEDGER_ID,
        "Ledger-Seq": _SEQ,
        "Ledger-Kind": _KIND,
        "Ledger-Record-Sha256": _SHA256,
        "Ledger-Prev-Sha256": _SHA256,
    }
    for key, pattern in checks.items():
        if key in trailers and not pattern.fullmatch(trailers[key]):
            problems.append(f"{key} {trailers[key][:80]!r} is malformed")
            if key in ("Ledger-Seq", "Ledger-Record-Sha256", "Ledger-Prev-Sha256"):
                del trailers[key]
    return trailers, problems


def _compare_trailers(
    rec: dict[str, Any],
    trailers: dict[str, str],
    rec_path: str | None,
    note: Callable[[str, str], None],
) -> None:
    kind = rec.get("kind")
    if "Ledger-Id" in trailers and trailers["Ledger-Id"] != rec.get("ledger"):
        note("trailers", f"Ledger-Id {trailers['Ledger-Id']} differs from the record's ledger")
    if "Ledger-Kind" in trailers and trailers["Ledger-Kind"] != kind:
        note("trailers", f"Ledger-Kind {trailers['Ledger-Kind']} differs from the record's kind")
    seq, run, time = rec.get("seq"), rec.get("run"), rec.get("time")
    if (
        isinstance(kind, str)
        and isinstance(seq, int)
        and (run is None or isinstance(run, str))
        and isinstance(time, str)
    ):
        want = expected_record_path(kind, seq, run, time)
        if want is not None and rec_path is not None and rec_path != want:
            note("trailers", f"Ledger-Record is {rec_path}, FORMAT.md §4 puts the record at {want}")


def _check_idents(commit: _Commit, rec: dict[str, Any], note: Callable[[str, str], None]) -> None:
    actor = rec.get("actor")
    time = rec.get("time")
    if not (isinstance(actor, dict) and isinstance(actor.get("principal"), str)):
        return
    when = _epoch(time) if isinstance(time, str) else None
    if when is None:
        return
    ident = _ident(actor["principal"])
    want = f"{ident} <{ident}> {when} +0000".encode()
    for what, value in (("author", commit.author), ("committer", commit.committer)):
        if value != want:
            got = (value or b"").decode("utf-8", "replace")
            note(
                "commit-header",
                f"commit {what} is {got!r}, the record's actor and time give "
                f"{want.decode('utf-8', 'replace')!r}",
            )


# --- public entry points ------------------------------------------------------------------


def _open_repo(repo: Path | str | pygit2.Repository) -> pygit2.Repository:
    if isinstance(repo, pygit2.Repository):
        return repo
    path = Path(repo)
    if not path.exists():
        raise LedgerNotFound(
            f"there is no ledger at {path} (the path does not exist).",
            hint="Point --ledger at an existing ledger.",
        )
    try:
        return pygit2.Repository(str(path), pygit2.enums.RepositoryOpenFlag.NO_SEARCH)
    except pygit2.GitError as exc:
        raise LedgerNotFound(
            f"{path} is not a ledger: it is not a git repository ({exc}).",
            hint="Point --ledger at a ledger repository.",
        ) from None


def _check_genesis_arg(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip().lower()
    if not _HEX40.fullmatch(text):
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
    since: VerifiedState | None = None,
    progress: ProgressFn | None = None,
    commits: Collection[str] = (),
) -> VerifyResult:
    """Verify the ledger's branch ``ref`` (FORMAT.md), reporting every finding.

    ``trust_genesis`` pins the genesis commit (full id); otherwise ``since``'s genesis is
    the pin; otherwise the result is unpinned (``genesis_pinned`` false: the repository's
    own ``ledger.genesis`` config is on the same disk and is not used as a pin).
    ``since`` (a saved :class:`VerifiedState`) verifies only the records after its head,
    after checking that the chain still holds that head at its seq (``rewrite``) and has
    not been cut back (``rollback``). ``progress(done, total)`` is called as records are
    verified. ``commits`` are commit ids to look up on the verified chain
    (``result.included``). Raises :class:`LedgerNotFound` when there is no repository or
    (without ``since``) no ``ref``.
    """
    repo = _open_repo(repo_path)
    try:
        reference = repo.references.get(ref)
    except (pygit2.GitError, ValueError) as exc:
        raise StorageError(f"the ref {ref} cannot be read: {exc}.") from None
    if reference is None:
        if since is not None:
            v = _Verifier(repo)
            v.check_repository()
            v.add("rollback", None, None, f"{ref} does not exist; it was at seq {since.seq}")
            return VerifyResult(
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
    since: VerifiedState | None = None,
    progress: ProgressFn | None = None,
    commits: Collection[str] = (),
    check_repository: bool = True,
) -> VerifyResult:
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
    since: VerifiedState | None,
    progress: ProgressFn | None,
    commits: Collection[str],
    check_repository: bool,
) -> VerifyResult:
    pin = _check_genesis_arg(trust_genesis)
    repo = _open_repo(repo)
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
    broken: _ObjectError | None = None
    broken_at: str | None = None
    position: dict[str, int] = {}
    cur: str | None = head
    while cur is not None:
        if since is not None and cur == since.head:
            found_base = True
            break
        try:
            parents = v.parents_of(cur, keep=True)
        except _ObjectError as exc:
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
    start_state: VerifiedState | None = None

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
            base_raw = v.read(start_state.head, _OBJ_COMMIT, "commit")
            base_tree = _parse_commit(base_raw).tree
        except _ObjectError as exc:
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
            except _ObjectError:
                break
            cur = parents[0] if parents else None
            seq_here -= 1
    for c in missing:
        included[c] = None

    ok = not v.findings
    state = None
    if ok and prev.digest is not None and prev.seq is not None and v.ledger_id is not None:
        state = VerifiedState(
            genesis=str(genesis),
            head=head if ids else since.head if since is not None else head,
            seq=prev.seq,
            prev_sha256=prev.digest,
            ledger_id=v.ledger_id,
            keys=[TrustedKey(**k.to_json()) for k in v.history],
            verified_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        )
    return VerifyResult(
        ok=ok,
        findings=v.findings,
        head=head,
        seq=prev.seq,
        records_checked=v.checked,
        genesis=genesis,
        state=state,
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
    except _ObjectError:
        return False
    return cur == ancestor


__all__ = [
    "MAIN_REF",
    "RULES",
    "Finding",
    "TrustedKey",
    "VerifiedState",
    "VerifyResult",
    "expected_record_path",
    "load_state",
    "save_state",
    "state_path",
    "verify_chain",
    "verify_ledger",
]
