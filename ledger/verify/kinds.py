"""The ``data`` of each kind (FORMAT.md §5): the exact field sets of ``genesis``,
``key.added``, ``key.revoked``, ``event`` and ``witness``, and the field -> predicate tables
of the run records of §5.1."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Set
from typing import Any

from ledger import errors, keys
from ledger.verify import rules


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def key_difference(have: Set[str], want: Set[str]) -> tuple[list[str], list[str]]:
    """The keys ``want`` has and ``have`` lacks, and the keys ``have`` has beyond ``want``,
    each sorted; two empty lists at once when they are equal (the common case)."""
    if have == want:
        return [], []
    return sorted(want - have), sorted(have - want)


def check_key_line(key: Any, fingerprint: Any, where: str) -> tuple[list[str], str | None]:
    """Problems with an OpenSSH public key line and its stated fingerprint."""
    if not isinstance(key, str) or not isinstance(fingerprint, str):
        return [f"{where}: key and fingerprint must be strings"], None
    try:
        pk = keys.PublicKey.parse(key)
    except errors.KeyProblem as exc:
        return [f"{where}: the key is not an OpenSSH public key ({exc.message})"], None
    out = []
    if pk.openssh() != key:
        out.append(f"{where}: the key line is not '<type> <base64>' without comment")
    if pk.fingerprint != fingerprint:
        out.append(f"{where}: fingerprint {fingerprint} is not the key's ({pk.fingerprint})")
    return out, pk.fingerprint


def check_data(kind: str, data: dict[str, Any]) -> list[str]:
    def fields(spec: dict[str, Callable[[Any], bool]]) -> list[str]:
        problems = []
        missing, extra = key_difference(data.keys(), spec.keys())
        if missing:
            problems.append(f"{kind} data lacks {', '.join(missing)}")
        if extra:
            problems.append(f"{kind} data has unknown field(s) {', '.join(extra)}")
        for name, ok in spec.items():
            if name in data and not ok(data[name]):
                problems.append(f"{kind} data field {name} is malformed")
        return problems

    if kind == "genesis":
        out = fields(_EXACT_SPECS[kind])
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
                out.extend(check_key_line(s["key"], s["fingerprint"], f"genesis signer {i}")[0])
        return out
    if kind == "key.added":
        out = fields(_EXACT_SPECS[kind])
        if not out:
            out.extend(check_key_line(data["key"], data["fingerprint"], "key.added")[0])
        return out
    if kind in ("key.revoked", "event"):
        return fields(_EXACT_SPECS[kind])
    if kind == rules.WITNESS_KIND:
        out = fields(_EXACT_SPECS[kind])
        return out or check_witness_heads(data["heads"])
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
    for name, ok in _OPTIONAL.get(kind, {}).items():
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
    return is_int(v)


def _int_or_null(v: Any) -> bool:
    return v is None or is_int(v)


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _obj(v: Any) -> bool:
    return isinstance(v, dict)


def _strs(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _hex64(v: Any) -> bool:
    return isinstance(v, str) and bool(rules.SHA256.fullmatch(v))


def _one_of(*values: str) -> Callable[[Any], bool]:
    return lambda v: v in values


def _shape(**spec: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, dict) and all(k in v and ok(v[k]) for k, ok in spec.items())


def _run_id_or_null(v: Any) -> bool:
    return v is None or (isinstance(v, str) and bool(rules.RUN_ID.fullmatch(v)))


def _fingerprint(v: Any) -> bool:
    return isinstance(v, str) and bool(rules.FINGERPRINT.fullmatch(v))


#: The kinds whose ``data`` has exactly these fields (FORMAT.md §2, §5).
_EXACT_SPECS: dict[str, dict[str, Callable[[Any], bool]]] = {
    "genesis": {
        "name": _str,
        "signers": lambda v: isinstance(v, list) and len(v) > 0,
        "created_by": _str,
    },
    "key.added": {"principal": _str, "key": _str, "fingerprint": _str, "comment": _str},
    "key.revoked": {"fingerprint": _fingerprint, "reason": _str},
    "event": {"message": _str, "data": lambda v: True},
    "witness": {"heads": lambda v: isinstance(v, list)},
}

_WITNESS_HEAD = {"ledger", "seq", "commit", "sha256"}


def check_witness_heads(heads: list[Any]) -> list[str]:
    """Problems with a ``witness`` record's ``heads`` (FORMAT.md §5): each exactly
    ``{"ledger", "seq", "commit", "sha256"}`` and well-formed, sorted by (ledger, commit)
    without repeats, at most :data:`rules.WITNESS_MAX_HEADS`. (That no head names the
    witnessing ledger itself is checked with the record's ``ledger``.)"""
    if len(heads) > rules.WITNESS_MAX_HEADS:
        return [f"witness data lists {len(heads)} heads, more than {rules.WITNESS_MAX_HEADS}"]
    out: list[str] = []
    keys: list[tuple[str, str]] = []
    for i, h in enumerate(heads):
        if not (isinstance(h, dict) and h.keys() == _WITNESS_HEAD):
            out.append(f'witness head {i} is not {{"ledger", "seq", "commit", "sha256"}}')
            continue
        lid, seq, commit, digest = h["ledger"], h["seq"], h["commit"], h["sha256"]
        if not (
            isinstance(lid, str)
            and rules.LEDGER_ID.fullmatch(lid)
            and is_int(seq)
            and seq >= 0
            and isinstance(commit, str)
            and rules.HEX40.fullmatch(commit)
            and _hex64(digest)
        ):
            out.append(f"witness head {i} is malformed")
            continue
        keys.append((lid, commit))
    if not out and any(a >= b for a, b in itertools.pairwise(keys)):
        out.append("witness heads are not sorted by (ledger, commit) without repeats")
    return out


is_stream = _shape(size=_int, sha256=_hex64, truncated=_bool, omitted=_int)
_STEP_COMMON: dict[str, Callable[[Any], bool]] = {
    "step": _str,
    "index": _int,
    "phase": _one_of("main", "on_failure", "on_cancel", "always"),
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
        "fingerprint": _fingerprint,
        "request_seq": _int,
        "request_commit": lambda v: isinstance(v, str) and bool(rules.HEX40.fullmatch(v)),
        "via": _one_of("command", "terminal"),
    },
    "run.finished": {
        "status": _one_of("succeeded", "failed", "aborted", "rejected", "abandoned"),
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
    ("run.finished", None, "abandoned"): {"reason": _str},
}
# Fields added to a kind after records without them were written: checked when present.
_OPTIONAL: dict[str, dict[str, Callable[[Any], bool]]] = {
    "run.started": {"on_cancel": _strs, "always": _strs, "resume_from": _str_or_null},
}


def field_sets(kind: str) -> tuple[frozenset[str], frozenset[str]]:
    """The fields of ``kind``'s ``data`` as checked here: those every record of the kind
    must have, and those some must have (by ``type`` or ``status``). For the conformance
    test that pins the writer's record types to this reading."""
    if kind in _EXACT_SPECS:
        return frozenset(_EXACT_SPECS[kind]), frozenset()
    some = {name for (k, _, _), spec in _STEP_EXTRA.items() if k == kind for name in spec}
    return frozenset(_RUN_SPECS.get(kind, {})), frozenset(some)
