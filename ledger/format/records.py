"""The record model and its canonical encoding (pure: no I/O).

A record is a JSON object (see docs/FORMAT.md §2). This module builds records, encodes them
canonically, computes their paths in the ledger's tree (§4) and the commit message that
carries them (§3), and parses those messages back. Each kind's ``data`` is typed (§5, §5.1:
:class:`GenesisData` … :class:`RunFinished`) for the layers that write and read records;
``tests/test_verify.py`` pins their fields to the verifier's own declaration.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ledger import errors
from ledger.format import shapes

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
KIND_WITNESS = "witness"

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
        KIND_WITNESS,
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
COMMIT_ID_RE = re.compile(r"^[0-9a-f]{40}\Z")
#: Most heads one ``witness`` record lists (FORMAT.md §5).
MAX_WITNESS_HEADS = 10_000

SUMMARY_MAX = 200
EVENT_BUCKET = 1000
# FORMAT.md §3: a summary holds no C0/C1 control characters; a principal in an ident also
# loses U+2028, U+2029, "<" and ">".
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f\u0080-\u009f]")
_IDENT_DROP_RE = re.compile(r"[\x00-\x1f\x7f\u0080-\u009f\u2028\u2029<>]")


#: Each kind's ``data`` type.
DATA_TYPES: dict[str, type] = {
    KIND_GENESIS: shapes.GenesisData,
    KIND_KEY_ADDED: shapes.KeyAdded,
    KIND_KEY_REVOKED: shapes.KeyRevoked,
    KIND_EVENT: shapes.EventData,
    KIND_RUN_STARTED: shapes.RunStarted,
    KIND_STEP_STARTED: shapes.StepStarted,
    KIND_STEP_FINISHED: shapes.StepFinished,
    KIND_APPROVAL: shapes.Approval,
    KIND_RUN_FINISHED: shapes.RunFinished,
    KIND_WITNESS: shapes.WitnessData,
}


#: Deepest nesting of lists and objects a record may hold.
MAX_DEPTH = 64
#: Most digits an integer of a record may have (Python's own limit for converting text).
MAX_INT_DIGITS = 4300


def _check_value(value: Any, where: str, depth: int = 0) -> None:
    """Refuse values that have no single canonical encoding, or that nest too deeply."""
    if depth > MAX_DEPTH:
        raise errors.InputError(
            f"{where} is nested more than {MAX_DEPTH} levels deep; records refuse deeper values.",
            hint="Flatten the value.",
        )
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if value.bit_length() > MAX_INT_DIGITS * 3:  # (3 bits < one decimal digit)
            raise errors.InputError(
                f"{where} holds an integer of more than {MAX_INT_DIGITS} digits.",
                hint="Write it as a string.",
            )
        return
    if isinstance(value, float):
        raise errors.InputError(
            f"{where} holds the floating point number {errors.quoted(value)}; records allow no "
            "floating point numbers because their encoding is not canonical.",
            hint="Write it as a string or as an integer (for example milliseconds).",
        )
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise errors.InputError(
                    f"{where} has a non-string key {errors.quoted(k)}; record keys are strings."
                )
            _check_value(v, f"{where}.{k}", depth + 1)
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_value(v, f"{where}[{i}]", depth + 1)
        return
    raise errors.InputError(f"{where} holds a {type(value).__name__}, which a record cannot store.")


def canonical_json(value: Any) -> bytes:
    """Encode ``value`` canonically: sorted keys, no whitespace, UTF-8, no floats."""
    _check_value(value, "record")
    text = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise errors.InputError(
            f"the record holds text that is not valid Unicode ({exc.reason}: "
            f"{exc.object[exc.start : exc.end]!a}); such text cannot be written as UTF-8. "
            "Text given as command-line arguments must be valid UTF-8; in JSON, "
            "'\\ud800' alone (a lone surrogate) is not a character.",
            hint="Give valid UTF-8 text.",
        ) from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {errors.quoted(key)} appears more than once in one object")
        out[key] = value
    return out


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer has more than {MAX_INT_DIGITS} digits")
    return int(text)


def parse_data(text: str, source: str) -> Any:
    """A JSON value given by a user (``ledger record --data``), strictly: no duplicate keys,
    no floats, integers of at most :data:`MAX_INT_DIGITS` digits, nesting of at most
    :data:`MAX_DEPTH` levels, valid Unicode; :class:`InputError` naming ``source`` if not."""
    hint = 'Pass a JSON value, e.g. --data \'{"ticket": "OPS-1"}\', or @FILE.'
    depth = 0
    for char in text:  # refuse deep nesting before the (recursive) parser sees it
        if char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise errors.InputError(
                    f"{source} is nested more than {MAX_DEPTH} levels deep; records refuse "
                    "deeper values.",
                    hint="Flatten the value.",
                )
        elif char in "]}":
            depth -= 1
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_int=_bounded_int)
    except json.JSONDecodeError as exc:
        raise errors.InputError(
            f"{source} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}.",
            hint=hint,
        ) from None
    except (ValueError, RecursionError) as exc:
        raise errors.InputError(f"{source} is refused: {exc}.", hint=hint) from None
    canonical_json(value)  # refuses floats and lone surrogates with a clear message
    return value


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new_ledger_id() -> str:
    return secrets.token_hex(16)


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_time(when: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC, the year always four digits (``strftime``'s
    ``%Y`` writes year 1 as ``1`` on glibc, which no record time matches)."""
    if when.tzinfo is None:
        raise ValueError("naive datetime")
    w = when.astimezone(UTC)
    return f"{w.year:04d}-{w:%m-%dT%H:%M:%S.%f}Z"


def date_digits(when: datetime) -> str:
    """``YYYYMMDD`` of ``when`` (as it is, no time zone conversion), the year always four
    digits: how the date shards of the runs directory name a day."""
    return f"{when.year:04d}{when.month:02d}{when.day:02d}"


def parse_time(text: str) -> datetime:
    if not TIME_RE.match(text):
        raise ValueError(f"not a record time: {errors.quoted(text)}")
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def new_run_id(started: datetime | None = None) -> str:
    """``YYYYMMDDTHHMMSSZ-<8 hex>``: the start time (UTC) and 32 random bits."""
    when = (started or utc_now()).astimezone(UTC)
    return f"{date_digits(when)}T{when:%H%M%S}Z-{secrets.token_hex(4)}"


def is_run_id(text: str) -> bool:
    return bool(RUN_ID_RE.match(text))


def check_run_id(text: str) -> str:
    if not is_run_id(text):
        what = "the run id is empty" if not text else f"{errors.quoted(text)} is not a run id"
        raise errors.InputError(
            f"{what}; run ids look like 20261122T014312Z-1a2b3c4d.",
            hint="Copy the run id from 'ledger log' or 'ledger status'.",
        )
    return text


def check_incident(text: str) -> str:
    if not INCIDENT_RE.match(text):
        what = "is empty" if not text else f"{errors.quoted(text)} is not valid"
        raise errors.InputError(
            f"the incident id {what}: use letters, digits, '.', '_' and '-' (at most 128 "
            "characters, starting with a letter or digit).",
        )
    return text


def clean_summary(text: str) -> str:
    """One line of at most 200 characters, without control characters."""
    line = _CONTROL_RE.sub(" ", text).strip()
    if len(line) > SUMMARY_MAX:
        line = line[: SUMMARY_MAX - 1] + "…"
    return line or "record"


# A principal names a signer in git's allowed-signers file (where white space separates
# fields, commas separate principals, quotes and backslashes quote, "*", "?" and "!" are
# patterns and a leading "#" comments the line out) and in commit identities (which drop
# "<", ">" and control characters): FORMAT.md §7.
PRINCIPAL_FORBIDDEN = frozenset("\"'\\,*?!<>")


def _principal_problem(principal: str) -> str | None:
    if not principal:
        return "it is empty"
    if principal.startswith("#"):
        return "it starts with '#'"
    for ch in principal:
        category = unicodedata.category(ch)
        if ch in PRINCIPAL_FORBIDDEN:
            return f"it contains {ch!r}"
        if category[0] == "Z" or ch.isspace():
            return f"it contains white space (U+{ord(ch):04X})"
        if category in ("Cc", "Cf", "Cs"):
            return f"it contains the control or format character U+{ord(ch):04X}"
    return None


def check_principal(principal: str) -> str:
    """``principal`` if it can name a signer (FORMAT.md §7), else :class:`InputError`.

    The one check for every principal the tool writes into a trust record (``ledger init``,
    ``ledger keys add``) or exports (``ledger keys allowed-signers``): no white space
    (Unicode categories Z*, or anything ``str.isspace`` calls white space), no control or
    format characters (Cc, including DEL and C1; Cf; lone surrogates), none of
    ``" ' \\ , * ? ! < >``, not empty, no leading ``#``.
    """
    problem = _principal_problem(principal)
    if problem is not None:
        raise errors.InputError(
            f"{errors.quoted(principal)} is not a usable principal: {problem}.",
            hint="A principal names a signer in git's allowed-signers file and in commit "
            "identities: use one without white space, quotes, commas, backslashes, wildcards "
            "(* ? !), angle brackets or control characters, such as an e-mail address.",
        )
    return principal


def clean_principal(text: str) -> str:
    """A principal as it can stand in a git ident (no ``<``, ``>`` or control characters)."""
    cleaned = _IDENT_DROP_RE.sub("", text).strip()
    return cleaned or "unknown"


_WITNESS_FIELDS = frozenset({"ledger", "seq", "commit", "sha256"})


def _witness_head_problem(head: Any) -> str | None:
    if not isinstance(head, Mapping) or set(head) != _WITNESS_FIELDS:
        return "is not exactly {ledger, seq, commit, sha256}"
    seq = head["seq"]
    if not isinstance(head["ledger"], str) or not LEDGER_ID_RE.match(head["ledger"]):
        return "has a ledger that is not 32 lowercase hex digits"
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        return "has a seq that is not an integer >= 0"
    if not isinstance(head["commit"], str) or not COMMIT_ID_RE.match(head["commit"]):
        return "has a commit that is not 40 lowercase hex digits"
    if not isinstance(head["sha256"], str) or not SHA256_RE.match(head["sha256"]):
        return "has a sha256 that is not 64 lowercase hex digits"
    return None


def check_witness(data: Mapping[str, Any], ledger_id: str | None = None) -> None:
    """:class:`InputError` unless ``data`` is a ``witness`` record's (FORMAT.md §5): exactly
    ``heads``, at most :data:`MAX_WITNESS_HEADS` well-formed entries sorted by (ledger,
    commit) without repeats, none of them ``ledger_id`` (the witnessing ledger's own)."""
    heads = data.get("heads") if set(data) == {"heads"} else None
    if not isinstance(heads, list):
        raise errors.InputError("a witness record's data is exactly {'heads': [...]}.")
    if len(heads) > MAX_WITNESS_HEADS:
        raise errors.InputError(
            f"a witness record lists at most {MAX_WITNESS_HEADS} heads, not {len(heads)}."
        )
    previous: tuple[str, str] | None = None
    for i, head in enumerate(heads):
        problem = _witness_head_problem(head)
        if problem is None and head["ledger"] == ledger_id:
            problem = "names the witnessing ledger itself"
        if (
            problem is None
            and previous is not None
            and (head["ledger"], head["commit"]) <= previous
        ):
            problem = "is out of (ledger, commit) order or repeats an entry"
        if problem is not None:
            raise errors.InputError(f"the witness record's head {i} {problem}.")
        previous = (head["ledger"], head["commit"])


def record_dir(kind: str, seq: int, run: str | None, time: str) -> str:
    """The directory of a record's file in the tree ('' for the root)."""
    if kind == KIND_GENESIS:
        return ""
    if kind in KEY_KINDS:
        return KEYS_DIR
    if run is not None:
        m = RUN_ID_RE.match(run)
        if not m:
            raise errors.InputError(f"{errors.quoted(run)} is not a run id")
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
        raise errors.InputError(f"{errors.quoted(name)} is not a valid attachment name")
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
    files: Mapping[str, shapes.FileEntry],
) -> shapes.Record:
    if kind not in KINDS:
        raise errors.InputError(
            f"unknown record kind {errors.quoted(kind)}; known kinds: {', '.join(sorted(KINDS))}."
        )
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
        "files": {
            k: shapes.FileEntry(path=v["path"], sha256=v["sha256"], size=v["size"])
            for k, v in files.items()
        },
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
    if kind == KIND_WITNESS:
        heads = data.get("heads")
        return f"witness: {len(heads) if isinstance(heads, list) else 0} ledger head(s)"
    step = data.get("step")
    status = data.get("status")
    parts = [kind]
    if step:
        parts.append(str(step))
    if status:
        parts.append(str(status))
    return ": ".join([parts[0], " ".join(parts[1:])]) if len(parts) > 1 else kind
