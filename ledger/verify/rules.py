"""The format's vocabulary as the verifier reads it: FORMAT.md §9 rule names, the kinds,
fields and trailers of §2–§5, and the regular expressions of its identifiers.

Declared here again on purpose rather than imported from ``ledger.format.records`` (see the
package docstring); ``tests/test_verify.py`` checks, constant by constant, that the two
readings agree.
"""

from __future__ import annotations

import re

MAIN_REF = "refs/heads/main"

#: Every rule name of docs/FORMAT.md §9.
RULES = frozenset(
    {
        "genesis-mismatch",
        "unsigned",
        "signature-headers",
        "bad-signature",
        "user-presence",
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
        "unknown-remote",
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
        "witness",
    }
)
KEY_KINDS = frozenset({"key.added", "key.revoked"})
WITNESS_KIND = "witness"
#: Most heads one ``witness`` record may list (FORMAT.md §5).
WITNESS_MAX_HEADS = 10_000
RUN_KINDS = frozenset({"run.started", "step.started", "step.finished", "approval", "run.finished"})
COMMON_FIELDS = frozenset(
    {"schema", "ledger", "seq", "kind", "time", "run", "actor", "host", "data", "files"}
)
TRAILERS = (
    "Ledger-Id",
    "Ledger-Seq",
    "Ledger-Kind",
    "Ledger-Record",
    "Ledger-Record-Sha256",
    "Ledger-Prev-Sha256",
    "Ledger-Unverified",
)

HEX40 = re.compile(r"[0-9a-f]{40}")
LEDGER_ID = re.compile(r"[0-9a-f]{32}")
UNVERIFIED = re.compile(r"[a-z][a-z-]*( [a-z][a-z-]*)*")  # Ledger-Unverified: rule names
SHA256 = re.compile(r"[0-9a-f]{64}")
SEQ = re.compile(r"0|[1-9][0-9]*")
TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\.\d{6}Z")
RUN_ID = re.compile(r"(\d{4})(\d{2})(\d{2})T\d{6}Z-[0-9a-f]{8}")
FILE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
INCIDENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
KIND = re.compile(r"[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*")
FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
IDENT_DROP = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029<>]")
SUMMARY_MAX = 200

MODE_BLOB = 0o100644
MODE_TREE = 0o040000
OBJ_COMMIT = 1
OBJ_TREE = 2
OBJ_BLOB = 3
