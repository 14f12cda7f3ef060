"""The record model and its canonical encoding (pure: no I/O).

A record is a JSON object (see docs/FORMAT.md §2). This module builds records, encodes them
canonically, computes their paths in the ledger's tree (§4) and the commit message that
carries them (§3), and parses those messages back.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ledger.errors import InputError

SCHEMA_VERSION = 1

KIND_GENESIS = "genesis"
KIND_KEY_ADDED = "key.added"
KIND_KEY_REVOKED = "key.revoked"
KIND_EVENT = "event"
KIND_RUN_STARTED = "run.started"
KIND_STEP_STARTED = "step.started"
KIND_STEP_FINISHED = "step.finished"
KIND_APPROVAL = "approval"
KIND_RUN_FINISHED = "run.finished"

KINDS = frozenset(
    {
        KIND_GENESIS,
        KIND_KEY_ADDED,
        KIND_KEY_REVOKED,
        KIND_EVENT,
        KIND_RUN_STARTED,
        KIND_STEP_STARTED,
        KIND_STEP_FINISHED,
        KIND_APPROVAL,
        KIND_RUN_FINISHED,
    }
)
KEY_KINDS = frozenset({KIND_KEY_ADDED, KIND_KEY_REVOKED})

COMMON_FIELDS = ("schema", "ledger", "seq", "kind", "time", "run", "actor", "host", "data", "files")

TRAILER_ORDER = (
    "Ledger-Id",
    "Ledger-Seq",
    "Ledger-Kind",
    "Ledger-Record",
    "Ledger-Record-Sha256",
    "Ledger-Prev-Sha256",
    "Ledger-Unverified",
)

GENESIS_PATH = "genesis.json"
KEYS_DIR = "keys"
RUNS_DIR = "runs"
EVENTS_DIR = "events"
INCIDENTS_DIR = "incidents"

LEDGER_ID_RE = re.compile(r"^[0-9a-f]{32}\Z")
RUN_ID_RE = re.compile(r"^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z-([0-9a-f]{8})\Z")
FILE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}\Z")
INCIDENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z\Z")
SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")

SUMMARY_MAX = 200
EVENT_BUCKET = 1000
# FORMAT.md §3: a summary holds no C0/C1 control characters; a principal in an ident also
# loses U+2028, U+2029, "<" and ">".
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f\u0080-\u009f]")
_IDENT_DROP_RE = re.compile(r"[\x00-\x1f\x7f\u0080-\u009f\u2028\u2029<>]")


def _check_value(value: Any, where: str) -> None:
    """Refuse values that have no single canonical encoding."""
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return
    if isinstance(value, float):
        raise InputError(
            f"{where} holds the floating point number {value!r}; records allow no floating "
            "point numbers because their encoding is not canonical.",
            hint="Write it as a string or as an integer (for example milliseconds).",
        )
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise InputError(f"{where} has a non-string key {k!r}; record keys are strings.")
            _check_value(v, f"{where}.{k}")
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_value(v, f"{where}[{i}]")
        return
    raise InputError(f"{where} holds a {type(value).__name__}, which a record cannot store.")


def canonical_json(value: Any) -> bytes:
    """Encode ``value`` canonically: sorted keys, no whitespace, UTF-8, no floats."""
    _check_value(value, "record")
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_object_sha256(obj_type: str, content: bytes) -> str:
    """SHA-256 of a git object as git would hash it: ``<type> <len>\\0<content>``."""
    h = hashlib.sha256(f"{obj_type} {len(content)}\0".encode("ascii"))
    h.update(content)
    return h.hexdigest()


def new_ledger_id() -> str:
    return secrets.token_hex(16)


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_time(when: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC."""
    if when.tzinfo is None:
        raise ValueError("naive datetime")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    if not TIME_RE.match(text):
        raise ValueError(f"not a record time: {text!r}")
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def new_run_id(started: datetime | None = None) -> str:
    """``YYYYMMDDTHHMMSSZ-<8 hex>``: the start time (UTC) and 32 random bits."""
    when = (started or utc_now()).astimezone(UTC)
    return f"{when:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def is_run_id(text: str) -> bool:
    return bool(RUN_ID_RE.match(text))


def check_run_id(text: str) -> str:
    if not is_run_id(text):
        raise InputError(
            f"{text!r} is not a run id; run ids look like 20261122T014312Z-1a2b3c4d.",
            hint="Copy the run id from 'ledger log' or 'ledger status'.",
        )
    return text


def check_incident(text: str) -> str:
    if not INCIDENT_RE.match(text):
        raise InputError(
            f"{text!r} is not a valid incident id: use letters, digits, '.', '_' and '-' "
            "(at most 128 characters, starting with a letter or digit).",
        )
    return text


def clean_summary(text: str) -> str:
    """One line of at most 200 characters, without control characters."""
    line = _CONTROL_RE.sub(" ", text).strip()
    if len(line) > SUMMARY_MAX:
        line = line[: SUMMARY_MAX - 1] + "…"
    return line or "record"


def clean_principal(text: str) -> str:
    """A principal as it can stand in a git ident (no ``<``, ``>`` or control characters)."""
    cleaned = _IDENT_DROP_RE.sub("", text).strip()
    return cleaned or "unknown"


def record_dir(kind: str, seq: int, run: str | None, time: str) -> str:
    """The directory of a record's file in the tree ('' for the root)."""
    if kind == KIND_GENESIS:
        return ""
    if kind in KEY_KINDS:
        return KEYS_DIR
    if run is not None:
        m = RUN_ID_RE.match(run)
        if not m:
            raise InputError(f"{run!r} is not a run id")
        return f"{RUNS_DIR}/{m.group(1)}/{m.group(2)}/{m.group(3)}/{run}"
    # Bucketed by seq within the day so that no directory holds more than 1,000 records,
    # however many events a day brings (an append rewrites the trees on its path).
    return f"{EVENTS_DIR}/{time[0:4]}/{time[5:7]}/{time[8:10]}/{seq // EVENT_BUCKET:07d}"


def record_path(kind: str, seq: int, run: str | None, time: str) -> str:
    """Path of the record file in the tree (docs/FORMAT.md §4)."""
    if kind == KIND_GENESIS:
        return GENESIS_PATH
    return f"{record_dir(kind, seq, run, time)}/{seq:010d}-{kind}.json"


def attachment_path(record_file: str, name: str) -> str:
    if not FILE_NAME_RE.match(name):
        raise InputError(f"{name!r} is not a valid attachment name")
    return f"{record_file[: -len('.json')]}.{name}"


def incident_index_path(incident: str, run: str) -> str:
    return f"{INCIDENTS_DIR}/{check_incident(incident)}/{run}"


def make_record(
    *,
    ledger_id: str,
    seq: int,
    kind: str,
    time: str,
    run: str | None,
    principal: str,
    key_fingerprint: str,
    host: str,
    data: Mapping[str, Any],
    files: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    if kind not in KINDS:
        raise InputError(f"unknown record kind {kind!r}; known kinds: {', '.join(sorted(KINDS))}.")
    return {
        "schema": SCHEMA_VERSION,
        "ledger": ledger_id,
        "seq": seq,
        "kind": kind,
        "time": time,
        "run": run,
        "actor": {"principal": principal, "key": key_fingerprint},
        "host": host,
        "data": dict(data),
        "files": {k: dict(v) for k, v in files.items()},
    }


def build_message(summary: str, trailers: Mapping[str, str]) -> str:
    lines = [clean_summary(summary), ""]
    for key in TRAILER_ORDER:
        if key in trailers:
            lines.append(f"{key}: {trailers[key]}")
    return "\n".join(lines) + "\n"


def parse_trailers(message: str) -> dict[str, str]:
    """The ``Ledger-*`` trailers of a commit message (last paragraph)."""
    out: dict[str, str] = {}
    paragraphs = message.rstrip("\n").split("\n\n")
    if len(paragraphs) < 2:
        return out
    for line in paragraphs[-1].split("\n"):
        key, sep, value = line.partition(": ")
        if sep and key.startswith("Ledger-"):
            out[key] = value
    return out


def summarize(kind: str, data: Mapping[str, Any]) -> str:
    """A default one-line summary for a record."""
    if kind == KIND_GENESIS:
        return f"genesis: ledger {data.get('name', '')}"
    if kind == KIND_KEY_ADDED:
        return f"key.added: {data.get('principal', '')} {data.get('fingerprint', '')}"
    if kind == KIND_KEY_REVOKED:
        return f"key.revoked: {data.get('fingerprint', '')}"
    if kind == KIND_EVENT:
        return f"event: {data.get('message', '')}"
    step = data.get("step")
    status = data.get("status")
    parts = [kind]
    if step:
        parts.append(str(step))
    if status:
        parts.append(str(status))
    return ": ".join([parts[0], " ".join(parts[1:])]) if len(parts) > 1 else kind
