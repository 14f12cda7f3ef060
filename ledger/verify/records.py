"""A record as the verifier reads it: canonical JSON (FORMAT.md §2), the common fields and
run links (§2, §5.1), the record's path (§4), and the commit message, trailers and idents
that carry it (§3)."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from datetime import date
from typing import Any

from ledger.verify import kinds, objects, rules

# --- records ------------------------------------------------------------------------------


class NotCanonical(Exception):
    pass


def _reject_float(text: str) -> Any:
    raise NotCanonical(f"it holds the floating point number {text}")


def _reject_constant(text: str) -> Any:
    raise NotCanonical(f"it holds {text}, which is not JSON")


#: ``json.loads``/``json.dumps`` with these arguments, made once (not at every record).
_DECODER = json.JSONDecoder(parse_float=_reject_float, parse_constant=_reject_constant)
#: (A decoded document holds no cycles: the encoder need not look for them.)
_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, check_circular=False
)


def decode_record(raw: bytes) -> dict[str, Any]:
    """Parse a record and check it is canonical (FORMAT.md §2); NotCanonical if not."""
    try:
        text = raw.decode("utf-8")
        if text.startswith("\ufeff"):  # (as json.loads refuses it)
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        obj = _DECODER.decode(text)
    except UnicodeDecodeError:
        raise NotCanonical("it is not UTF-8") from None
    except RecursionError:
        raise NotCanonical("it is nested too deeply") from None
    except ValueError as exc:
        raise NotCanonical(f"it is not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise NotCanonical("it is not a JSON object")
    try:
        again = _ENCODER.encode(obj)
        # ``text`` is ``raw`` decoded strictly: equal text is equal bytes.
        canonical = raw if again == text else again.encode("utf-8")
    except (UnicodeEncodeError, RecursionError, ValueError):
        raise NotCanonical("it cannot be re-encoded as UTF-8 JSON") from None
    if canonical != raw:
        raise NotCanonical("its bytes differ from its canonical encoding")
    return obj


def is_safe_path(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and all(p not in ("", ".", "..") for p in parts) and "\0" not in path


def expected_record_path(kind: str, seq: int, run: str | None, time: str) -> str | None:
    """The record file's path by FORMAT.md §4, or ``None`` if the inputs are malformed."""
    if kind == "genesis":
        return "genesis.json"
    name = f"{seq:010d}-{kind}.json"
    if kind in rules.KEY_KINDS:
        return f"keys/{name}"
    if run is not None:
        m = rules.RUN_ID.fullmatch(run)
        if not m:
            return None
        return f"runs/{m.group(1)}/{m.group(2)}/{m.group(3)}/{run}/{name}"
    t = time_fields(time)
    if t is None:
        return None
    return f"events/{t[0]}/{t[1]}/{t[2]}/{seq // 1000:07d}/{name}"


_EPOCH_DAY = date(1970, 1, 1).toordinal()


@functools.lru_cache(maxsize=8)
def time_fields(time: str) -> tuple[str, ...] | None:
    """The year, month, day, hour, minute and second of a string of the record time's
    pattern (``YYYY-MM-DDTHH:MM:SS.ffffffZ``), or None if it is not of that pattern. Each
    record's time is read by the schema, the path and the idents: it is matched once."""
    m = rules.TIME.fullmatch(time)
    return None if m is None else m.groups()


@functools.lru_cache(maxsize=8)
def epoch(time: str) -> int | None:
    """Whole seconds since the epoch of a record time, or None if it is not one (the
    date must exist: ``date`` refuses the 30th of February; the clock fields are bounded
    by the pattern's two digits and checked here)."""
    fields = time_fields(time)
    if fields is None:
        return None
    y, mo, d, h, mi, sec = map(int, fields)
    if h > 23 or mi > 59 or sec > 59:
        return None
    try:
        day = date(y, mo, d).toordinal() - _EPOCH_DAY
    except ValueError:
        return None
    return day * 86400 + h * 3600 + mi * 60 + sec


@functools.lru_cache(maxsize=64)
def ident(principal: str) -> str:
    """The git ident a principal stands as in author/committer (FORMAT.md §3)."""
    return rules.IDENT_DROP.sub("", principal).strip() or "unknown"


def check_schema(rec: dict[str, Any]) -> list[str]:
    """Problems with the common fields and the kind-specific data (FORMAT.md §2, §5)."""
    out: list[str] = []
    missing, extra = kinds.key_difference(rec.keys(), rules.COMMON_FIELDS)
    if missing:
        out.append(f"missing field(s) {', '.join(missing)}")
    if extra:
        out.append(f"unknown field(s) {', '.join(extra)}")
    if "schema" in rec and not (kinds.is_int(rec["schema"]) and rec["schema"] == 1):
        out.append(f"schema is {rec['schema']!r}, not 1")
    if "ledger" in rec and not (
        isinstance(rec["ledger"], str) and rules.LEDGER_ID.fullmatch(rec["ledger"])
    ):
        out.append("ledger is not 32 lowercase hex digits")
    if "seq" in rec and not (kinds.is_int(rec["seq"]) and rec["seq"] >= 0):
        out.append("seq is not a non-negative integer")
    kind = rec.get("kind")
    if "kind" in rec and not (isinstance(kind, str) and kind in rules.KINDS):
        out.append(f"kind {kind!r} is not a kind of FORMAT.md §5")
    if "time" in rec:
        t = rec["time"]
        if not (isinstance(t, str) and time_fields(t) is not None):
            out.append("time is not YYYY-MM-DDTHH:MM:SS.ffffffZ")
        elif epoch(t) is None:
            out.append(f"time {t!r} is not a valid date and time")
    run = rec.get("run")
    if run is not None and not (isinstance(run, str) and rules.RUN_ID.fullmatch(run)):
        out.append("run is neither null nor a run id YYYYMMDDTHHMMSSZ-<8 hex>")
    actor = rec.get("actor")
    if "actor" in rec and not (
        isinstance(actor, dict)
        and actor.keys() == {"principal", "key"}
        and isinstance(actor["principal"], str)
        and isinstance(actor["key"], str)
        and rules.FINGERPRINT.fullmatch(actor["key"])
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
                if not rules.FILE_NAME.fullmatch(name):
                    out.append(f"files name {name!r} does not match [a-z0-9][a-z0-9._-]{{0,63}}")
                if not (
                    isinstance(meta, dict)
                    and meta.keys() == {"path", "sha256", "size"}
                    and isinstance(meta["path"], str)
                    and isinstance(meta["sha256"], str)
                    and rules.SHA256.fullmatch(meta["sha256"])
                    and kinds.is_int(meta["size"])
                    and meta["size"] >= 0
                ):
                    out.append(f'files entry {name!r} is not {{"path", "sha256", "size"}}')
    if isinstance(kind, str) and isinstance(rec.get("data"), dict):
        out.extend(kinds.check_data(kind, rec["data"]))
    if kind == "genesis" and rec.get("run") is not None:
        out.append("the genesis record has a run")
    if kind in rules.RUN_KINDS and "run" in rec and rec["run"] is None:
        out.append(f"a {kind} record without a run id")
    if kind == rules.WITNESS_KIND and rec.get("run") is not None:
        out.append("a witness record has a run")
    heads = rec["data"]["heads"] if not out and kind == rules.WITNESS_KIND else []
    if any(h["ledger"] == rec.get("ledger") for h in heads):
        out.append("a witness record lists its own ledger's head")
    if not out and kind in rules.RUN_KINDS:
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
            if not kinds.is_stream(summary):
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


#: The trailers whose values have a pattern, with it.
_TRAILER_PATTERNS = {
    "Ledger-Id": rules.LEDGER_ID,
    "Ledger-Seq": rules.SEQ,
    "Ledger-Kind": rules.KIND,
    "Ledger-Record-Sha256": rules.SHA256,
    "Ledger-Prev-Sha256": rules.SHA256,
    "Ledger-Unverified": rules.UNVERIFIED,
}


#: A message of the shape of FORMAT.md §3 with every trailer well-formed, in one match: the
#: same patterns as ``_TRAILER_PATTERNS`` (anything else takes the line-by-line parse). Each
#: trailer's group is its key with ``_`` for ``-``.
_WELL_FORMED = re.compile(
    r"(?P<summary>[^\n]*)\n\n"
    rf"Ledger-Id: (?P<Ledger_Id>{rules.LEDGER_ID.pattern})\n"
    rf"Ledger-Seq: (?P<Ledger_Seq>{rules.SEQ.pattern})\n"
    rf"Ledger-Kind: (?P<Ledger_Kind>{rules.KIND.pattern})\n"
    r"Ledger-Record: (?P<Ledger_Record>[^\n]*)\n"
    rf"Ledger-Record-Sha256: (?P<Ledger_Record_Sha256>{rules.SHA256.pattern})\n"
    rf"(?:Ledger-Prev-Sha256: (?P<Ledger_Prev_Sha256>{rules.SHA256.pattern})\n)?"
    rf"(?:Ledger-Unverified: (?P<Ledger_Unverified>{rules.UNVERIFIED.pattern})\n)?"
)
#: Each trailer and its group in ``_WELL_FORMED``.
_GROUPS = [(key, key.replace("-", "_")) for key in rules.TRAILERS]
_SUMMARY_PROBLEM = "the summary line is longer than 200 characters or has control characters"


def parse_message(message: bytes | None) -> tuple[dict[str, str], list[str]]:
    """Trailers of a commit message and the problems with its shape (FORMAT.md §3)."""
    if message is None:
        return {}, ["the commit has no message"]
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        return {}, ["the commit message is not UTF-8"]
    m = _WELL_FORMED.fullmatch(text)
    if m is not None:  # every trailer in place and well-formed: only the summary to check
        groups = m.groupdict()
        trailers = {key: value for key, group in _GROUPS if (value := groups[group]) is not None}
        summary = groups["summary"]
        if len(summary) > rules.SUMMARY_MAX or rules.CONTROL.search(summary):
            return trailers, [_SUMMARY_PROBLEM]
        return trailers, []
    return _parse_message_lines(text)


def _parse_message_lines(text: str) -> tuple[dict[str, str], list[str]]:
    """The line-by-line parse, which names every problem."""
    problems: list[str] = []
    if not text.endswith("\n"):
        problems.append("the commit message does not end with a newline")
    lines = text[:-1].split("\n") if text.endswith("\n") else text.split("\n")
    summary = lines[0]
    if len(summary) > rules.SUMMARY_MAX or rules.CONTROL.search(summary):
        problems.append(_SUMMARY_PROBLEM)
    if len(lines) < 3 or lines[1] != "":
        problems.append("the message is not a summary line, an empty line, then trailers")
        return {}, problems
    trailers: dict[str, str] = {}
    order: list[str] = []
    for line in lines[2:]:
        key, sep, value = line.partition(": ")
        if not sep or key not in rules.TRAILERS or key in trailers:
            problems.append(f"unexpected line in the trailers: {line[:80]!r}")
            continue
        trailers[key] = value
        order.append(key)
    if order != [k for k in rules.TRAILERS if k in trailers]:
        problems.append("the trailers are not in the order of FORMAT.md §3")
    missing = [k for k in rules.TRAILERS[:5] if k not in trailers]
    if missing:
        problems.append(f"missing trailer(s) {', '.join(missing)}")
    for key, pattern in _TRAILER_PATTERNS.items():
        if key in trailers and not pattern.fullmatch(trailers[key]):
            problems.append(f"{key} {trailers[key][:80]!r} is malformed")
            if key in ("Ledger-Seq", "Ledger-Record-Sha256", "Ledger-Prev-Sha256"):
                del trailers[key]
    return trailers, problems


def compare_trailers(
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


def check_idents(
    commit: objects.Commit, rec: dict[str, Any], note: Callable[[str, str], None]
) -> None:
    actor = rec.get("actor")
    time = rec.get("time")
    if not (isinstance(actor, dict) and isinstance(actor.get("principal"), str)):
        return
    when = epoch(time) if isinstance(time, str) else None
    if when is None:
        return
    name = ident(actor["principal"])
    want = f"{name} <{name}> {when} +0000".encode()
    for what, value in (("author", commit.author), ("committer", commit.committer)):
        if value != want:
            got = (value or b"").decode("utf-8", "replace")
            note(
                "commit-header",
                f"commit {what} is {got!r}, the record's actor and time give "
                f"{want.decode('utf-8', 'replace')!r}",
            )
