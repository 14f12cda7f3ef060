"""The auditor's memory of a fleet copy, kept in the user's state directory (never in the
copy, which is as untrusted as a ledger directory).

One directory per copy, keyed by the copy's real git directory path (as ``heads/`` of
``ledger.verify.local`` is), 0700 with 0600 files written atomically::

    <state_root>/fleets/<sha256 of the copy's real git dir path>/
        fleet.json          {"format": 1, "ledgers": {"<id>": {"first_seen", "last_seen"}},
                             "remotes": {"<NAME>": {"url": <URL as added, password masked>}},
                             "dismissed": {"<witness ledger id>": {"<record seq>":
                                                                   {"reason", "at"}}}}
        ledgers/<id>.json   {"format": 1, "ledger_id", "verified": <VerifiedState JSON>|null,
                             "remotes": {"<NAME>": {"head", "seq", "seen_at", "vanished_at",
                                                    "rewound_from"}},
                             "claims": [...], "outcome": {"ok", "findings", "checked_at"}|null}
        fleet.lock          taken by :func:`locked` while a fetch rewrites the state

``seen_at`` is when a fetch first saw that remote hold that head (it changes only when the
head does); ``vanished_at`` is when a fetch first found the ledger gone from that remote
(null while it is there); ``seq`` is the head's ``Ledger-Seq`` trailer as fetched (unverified;
null when unreadable); ``rewound_from`` is the head the remote held before a fetch found it
at a commit that does not descend from it (null otherwise). A missing file reads as nothing
remembered (``None`` or an empty :class:`FleetState`); a malformed one is a
:class:`~ledger.errors.StorageError` naming it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pygit2

from ledger import errors, store
from ledger.fleet import warm
from ledger.verify import home, local, state

FLEET_FILE = "fleet.json"
LOCK_FILE = "fleet.lock"
FORMAT = 1
LEDGER_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


def now() -> str:
    """A state timestamp: UTC, ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (as records' ``time``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class LedgerSeen:
    """When any fetch of this copy first and last found the ledger on some remote."""

    first_seen: str
    last_seen: str


@dataclass
class FleetState:
    """``fleet.json``: every ledger the auditor has seen in this copy, and the URL each
    shared remote was added with (a URL changed in the copy's config is not followed)."""

    ledgers: dict[str, LedgerSeen] = field(default_factory=dict)
    remotes: dict[str, str] = field(default_factory=dict)  # name -> URL (password masked)
    #: Witness records whose claims the auditor dismissed (``ledger fleet dismiss``):
    #: (witnessing ledger id, record seq) -> {"reason", "at"}.
    dismissed: dict[tuple[str, int], dict[str, str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        dismissed: dict[str, dict[str, dict[str, str]]] = {}
        for (lid, seq), why in sorted(self.dismissed.items()):
            dismissed.setdefault(lid, {})[str(seq)] = why
        return {
            "format": FORMAT,
            "ledgers": {
                lid: {"first_seen": s.first_seen, "last_seen": s.last_seen}
                for lid, s in sorted(self.ledgers.items())
            },
            "remotes": {name: {"url": url} for name, url in sorted(self.remotes.items())},
            "dismissed": dismissed,
        }


@dataclass
class RemoteHead:
    """What one remote held for one ledger when a fetch last looked."""

    head: str
    seq: int | None
    seen_at: str
    vanished_at: str | None = None
    #: The head this remote held before a fetch found it at a commit that does not extend
    #: it (``{"head", "seq", "seen_at"}``), kept until ``fleet verify`` has judged it.
    rewound_from: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "head": self.head,
            "seq": self.seq,
            "seen_at": self.seen_at,
            "vanished_at": self.vanished_at,
            "rewound_from": self.rewound_from,
        }


@dataclass
class Outcome:
    """The last ``fleet verify`` of one ledger."""

    ok: bool
    findings: list[dict[str, Any]]
    checked_at: str

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "findings": self.findings, "checked_at": self.checked_at}


@dataclass
class LedgerState:
    """``ledgers/<id>.json``: the auditor's memory of one ledger."""

    ledger_id: str
    verified: state.VerifiedState | None = None
    remotes: dict[str, RemoteHead] = field(default_factory=dict)
    claims: list[dict[str, Any]] = field(default_factory=list)
    outcome: Outcome | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "ledger_id": self.ledger_id,
            "verified": self.verified.to_json() if self.verified is not None else None,
            "remotes": {n: r.to_json() for n, r in sorted(self.remotes.items())},
            "claims": self.claims,
            "outcome": self.outcome.to_json() if self.outcome is not None else None,
        }


# --- where ----------------------------------------------------------------------------------


def state_dir(copy: Path | str | pygit2.Repository) -> Path:
    """The state directory of the fleet copy ``copy`` (not created here)."""
    return warm.state_dir(Path(copy.path) if isinstance(copy, pygit2.Repository) else copy)


def _ledger_path(copy: Path | str | pygit2.Repository, ledger_id: str) -> Path:
    if not LEDGER_ID_RE.fullmatch(ledger_id):
        raise errors.InputError(
            f"{errors.quoted(ledger_id)} is not a ledger id (32 lowercase hex digits)."
        )
    return state_dir(copy) / warm.LEDGERS_DIR / f"{ledger_id}.json"


@contextlib.contextmanager
def locked(copy: Path | str | pygit2.Repository) -> Iterator[None]:
    """Hold the copy's state lock (an exclusive ``flock``) for the block. Not re-entrant:
    :func:`ledger.fleet.copy.fetch` takes it itself."""
    where = state_dir(copy)
    for directory in [*_private_dirs(where), where]:
        local.ensure_private_dir(directory)
    try:
        fd = os.open(where / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise errors.StorageError(
            f"cannot lock the fleet state in {where}: {exc.strerror or exc}.",
            hint=f"Check that directory's permissions, or set {home.ENV_STATE_DIR}.",
        ) from None
    try:
        store.flock(fd, wait=None)
        yield
    finally:
        os.close(fd)


# --- reading ---------------------------------------------------------------------------------


def _malformed(path: Path, why: str) -> errors.StorageError:
    return errors.StorageError(
        f"the fleet state file {path} is malformed ({why}).",
        hint="Move it aside (nothing else reads it): the next 'ledger fleet fetch' and "
        "'fleet verify' start that memory over, so heads seen before are forgotten (without "
        "fleet.json, accept each remote again with 'ledger fleet remote add NAME URL').",
    )


def _load(path: Path) -> dict[str, Any] | None:
    for directory in _private_dirs(path):
        local.check_private_dir(directory)
    text = local.read_private_text(path)  # (0700 directory checks, one error wording)
    if text is None:
        return None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise _malformed(path, f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _malformed(path, f"not a format-{FORMAT} object")
    return doc


def _str(obj: Any, key: str, path: Path) -> str:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, str):
        raise _malformed(path, f"{key!r} is not a string")
    return value


def _opt_str(obj: dict[str, Any], key: str, path: Path) -> str | None:
    return None if obj.get(key) is None else _str(obj, key, path)


def load_fleet(copy: Path | str | pygit2.Repository) -> FleetState:
    """``fleet.json`` (empty when the auditor never fetched this copy)."""
    path = state_dir(copy) / FLEET_FILE
    doc = _load(path)
    if doc is None:
        return FleetState()
    ledgers, remotes = doc.get("ledgers"), doc.get("remotes", {})
    if not isinstance(ledgers, dict) or not isinstance(remotes, dict):
        raise _malformed(path, "'ledgers' and 'remotes' must be objects")
    out = FleetState()
    for lid, seen in ledgers.items():
        if not LEDGER_ID_RE.fullmatch(lid):
            raise _malformed(path, f"{lid!r} is not a ledger id")
        out.ledgers[lid] = LedgerSeen(_str(seen, "first_seen", path), _str(seen, "last_seen", path))
    for name, entry in remotes.items():
        out.remotes[name] = _str(entry, "url", path)
    out.dismissed = _dismissed(doc.get("dismissed", {}), path)
    return out


def _dismissed(obj: Any, path: Path) -> dict[tuple[str, int], dict[str, str]]:
    if not isinstance(obj, dict):
        raise _malformed(path, "'dismissed' must be an object")
    out: dict[tuple[str, int], dict[str, str]] = {}
    for lid, records in obj.items():
        if not LEDGER_ID_RE.fullmatch(lid) or not isinstance(records, dict):
            raise _malformed(path, f"'dismissed' has {lid!r}, which is not a ledger id")
        for seq, why in records.items():
            if not (isinstance(seq, str) and seq.isdigit() and len(seq) < 19):
                raise _malformed(path, f"'dismissed' has {seq!r}, which is not a record seq")
            out[(lid, int(seq))] = {
                "reason": _str(why, "reason", path),
                "at": _str(why, "at", path),
            }
    return out


def _remote_head(obj: Any, path: Path) -> RemoteHead:
    if not isinstance(obj, dict) or not _HEX40.fullmatch(str(obj.get("head"))):
        raise _malformed(path, "a remote's 'head' is not a commit id")
    seq = obj.get("seq")
    if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool) or seq < 0):
        raise _malformed(path, "a remote's 'seq' is not a number")
    rewound = obj.get("rewound_from")
    if rewound is not None and (
        not isinstance(rewound, dict) or not _HEX40.fullmatch(str(rewound.get("head")))
    ):
        raise _malformed(path, "a remote's 'rewound_from' is not {head, seq, seen_at}")
    return RemoteHead(
        obj["head"],
        seq,
        _str(obj, "seen_at", path),
        _opt_str(obj, "vanished_at", path),
        rewound,
    )


def _outcome(obj: Any, path: Path) -> Outcome | None:
    if obj is None:
        return None
    if (
        not isinstance(obj, dict)
        or not isinstance(obj.get("ok"), bool)
        or not isinstance(obj.get("findings"), list)
    ):
        raise _malformed(path, "'outcome' is not {ok, findings, checked_at}")
    return Outcome(obj["ok"], list(obj["findings"]), _str(obj, "checked_at", path))


def load_ledger(copy: Path | str | pygit2.Repository, ledger_id: str) -> LedgerState | None:
    """``ledgers/<id>.json``, or ``None`` when the auditor never saw that ledger."""
    path = _ledger_path(copy, ledger_id)
    doc = _load(path)
    if doc is None:
        return None
    if doc.get("ledger_id") != ledger_id:
        raise _malformed(path, f"it is the state of ledger {doc.get('ledger_id')!r}")
    remotes, claims = doc.get("remotes", {}), doc.get("claims", [])
    if not isinstance(remotes, dict) or not isinstance(claims, list):
        raise _malformed(path, "'remotes' must be an object and 'claims' a list")
    verified = None
    if doc.get("verified") is not None:
        try:
            verified = state.VerifiedState.from_json(doc["verified"])
        except errors.InputError as exc:
            raise _malformed(path, f"'verified': {exc.message}") from None
    return LedgerState(
        ledger_id,
        verified,
        {str(n): _remote_head(r, path) for n, r in remotes.items()},
        [c for c in claims if isinstance(c, dict)],
        _outcome(doc.get("outcome"), path),
    )


# --- writing ---------------------------------------------------------------------------------


def _private_dirs(path: Path) -> list[Path]:
    """The directories between the state root and ``path`` (``fleets``, the copy's, ...)."""
    root = home.state_root()
    return [d for d in reversed(path.parents) if d != root and root in d.parents]


def _save(path: Path, doc: dict[str, Any]) -> Path:
    for directory in _private_dirs(path):
        local.ensure_private_dir(directory)  # (each 0700: mkdir's parents would not be)
    data = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
    return local.write_private(path, data)  # (atomic, 0600, private directories)


def save_fleet(copy: Path | str | pygit2.Repository, fleet: FleetState) -> Path:
    return _save(state_dir(copy) / FLEET_FILE, fleet.to_json())


def save_ledger(copy: Path | str | pygit2.Repository, ledger: LedgerState) -> Path:
    return _save(_ledger_path(copy, ledger.ledger_id), ledger.to_json())


# --- a new copy at a path the state may remember ----------------------------------------------


def remembered_remotes(copy: Path | str | pygit2.Repository) -> dict[str, str] | None:
    """The remotes the auditor's state of ``copy``'s path recorded (name to URL as added,
    password masked), or ``None`` when that state remembers nothing (no ``fleet.json`` and
    no ledger file)."""
    where = state_dir(copy)
    ledgers = where / warm.LEDGERS_DIR
    if not (where / FLEET_FILE).exists() and not (ledgers.is_dir() and any(ledgers.iterdir())):
        return None
    return load_fleet(copy).remotes


def _state_error(what: str, exc: OSError) -> errors.StorageError:
    return errors.StorageError(
        f"could not {what}: {exc.strerror or exc}.",
        hint=f"Check the state directory's permissions and free space, or set "
        f"{home.ENV_STATE_DIR}.",
    )


def discard(copy: Path | str | pygit2.Repository) -> None:
    """Forget everything remembered of the copy at ``copy``'s path (for a copy the caller
    owns and makes again: ``ledger demo --fleet``)."""
    where = state_dir(copy)
    try:
        if where.exists():
            shutil.rmtree(where)
    except OSError as exc:
        raise _state_error(f"remove the fleet state {where}", exc) from None


@contextlib.contextmanager
def for_new_copy(
    copy: Path | str, name: str, url: str, target: str | None = None
) -> Iterator[str | None]:
    """The state a new copy at ``copy``'s path (first remote ``name`` at ``url``, password
    masked) starts with, and what it was unless the block succeeds.

    A state remembering this very remote (same name, same URL) is kept: a copy moved aside
    and cloned again from the same remotes still judges rollbacks against what was verified
    (docs/FLEET.md). A state remembering anything else is moved aside to
    ``<key>.replaced-<time>`` beside it, and the block gets one line saying so (else
    ``None``): a copy of other remotes must not inherit what was seen of another fleet.
    If the block fails, the state is put back as it was (nothing new is left)."""
    where = state_dir(copy)
    recorded = remembered_remotes(copy)
    note: str | None = None
    aside = backup = None
    made_parent = not where.parent.exists()
    try:
        if recorded is not None and recorded.get(name) != url:
            aside = where.with_name(f"{where.name}.replaced-{now().replace(':', '')}")
            os.rename(where, aside)
            was = ", ".join(f"{n} ({u})" for n, u in recorded.items()) or "no remote"
            note = (
                f"the auditor's state for {target or copy} remembered another fleet ({was}), "
                f"not {name} ({url}): it was moved aside to {aside} and this copy starts "
                "afresh (move it back over the new one to keep judging that fleet)"
            )
        elif where.exists():
            backup = Path(tempfile.mkdtemp(prefix=f"{where.name}.clone-", dir=where.parent))
            shutil.copytree(where, backup, dirs_exist_ok=True)
    except OSError as exc:
        raise _state_error(f"set aside the fleet state {where}", exc) from None
    try:
        yield note
    except BaseException:
        shutil.rmtree(where, ignore_errors=True)
        restore = aside if aside is not None else backup
        if restore is not None:
            os.rename(restore, where)
            backup = None
        elif made_parent:
            with contextlib.suppress(OSError):
                where.parent.rmdir()
        raise
    finally:
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
