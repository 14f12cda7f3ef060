"""Tests of ledger.redact: the one redactor (values and their encodings, longest match,
streaming in chunks, the label format)."""

from __future__ import annotations

import ast
import base64
import itertools
import json
import random
from pathlib import Path
from urllib.parse import quote

from ledger.redact import Redactor, redact, redaction_label


def test_redactor_replaces_every_occurrence() -> None:
    red = Redactor({"token": "abc123XYZ", "other": "zzz-999"})
    assert red.redact(b"x abc123XYZabc123XYZ zzz-999.") == (
        b"x [REDACTED:token][REDACTED:token] [REDACTED:other]."
    )
    assert red.redact_text("pw=abc123XYZ") == "pw=[REDACTED:token]"
    assert Redactor({}).redact(b"abc") == b"abc"
    assert Redactor({"empty": ""}).redact(b"abc") == b"abc"


def test_redactor_longest_secret_wins() -> None:
    red = Redactor({"short": "secret", "long": "secret-and-more"})
    assert red.redact(b"secret-and-more secret") == b"[REDACTED:long] [REDACTED:short]"


def test_redactor_label_never_contains_a_secret() -> None:
    red = Redactor({"token": "token"})
    assert red.redact(b"a token b") == b"a [REDACTED] b"


def test_redactor_covers_common_encodings() -> None:
    value = 'p@ss "word"/ü+x'
    red = Redactor({"pw": value})
    raw = value.encode()
    forms = {
        "raw": raw,
        "json": json.dumps(value)[1:-1].encode(),
        "json-utf8": json.dumps(value, ensure_ascii=False)[1:-1].encode(),
        "url": quote(value, safe="").encode(),
        "base64": base64.b64encode(raw),
        "base64-urlsafe": base64.urlsafe_b64encode(raw),
        # as in `echo "$PW" | base64` and Basic auth headers: the value inside a longer text
        "base64-newline": base64.b64encode(raw + b"\n"),
        "basic-auth": base64.b64encode(b"user:" + raw),
        "basic-auth2": base64.b64encode(b"me:" + raw + b"!"),
    }
    for name, form in forms.items():
        out = red.redact(b"<" + form + b">")
        assert b"[REDACTED:pw]" in out, name
        assert raw not in out and form not in out, name


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def test_stream_redactor_equals_whole_stream_for_every_split() -> None:
    red = Redactor({"a": "secret-value", "b": "secret-value-long", "c": "xsecret"})
    data = b"..secret-value-long..xsecret-value,secret-value-lon;secret-valu.secret-value"
    expected = red.redact(data)
    assert b"secret-value" not in expected
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            s = red.stream()
            out = b"".join(s.feed(c) for c in _chunks(data, [i, j])) + s.flush()
            assert out == expected, (i, j)


def test_stream_redactor_random_chunkings() -> None:
    rng = random.Random(1234)
    secrets = {"s1": "ab", "s2": "abcab", "s3": "\u00e9t\u00e9-secret", "s4": "ZZZZZZZZZZ"}
    red = Redactor(secrets)
    alphabet = [b"a", b"b", b"c", b"Z", "é".encode(), b"t", b"-secret", b"\xff", b"\n"]
    for _ in range(300):
        data = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 200)))
        cuts = [rng.randrange(0, len(data) + 1) for _ in range(rng.randrange(0, 30))]
        s = red.stream()
        out = b"".join(s.feed(c) for c in _chunks(data, cuts)) + s.flush()
        assert out == red.redact(data)


# --------------------------------------------------------------------------- redact() and the label


def test_redact_function_replaces_values_and_their_encodings() -> None:
    secrets = {"token": "s3cr3t/value+1"}
    text = "raw s3cr3t/value+1, url " + quote("s3cr3t/value+1", safe="") + ", b64 "
    text += base64.b64encode(b"user:s3cr3t/value+1").decode()
    out = redact(text, secrets)
    assert out.count(redaction_label("token")) == 3
    assert "s3cr3t" not in out and quote("s3cr3t/value+1", safe="") not in out


def test_redact_function_longest_match_and_empty_values() -> None:
    secrets = {"short": "secret", "long": "secret-and-more", "empty": ""}
    assert redact("secret-and-more secret", secrets) == "[REDACTED:long] [REDACTED:short]"
    assert redact("nothing here", {}) == "nothing here"
    assert redact("nothing here", {"empty": ""}) == "nothing here"


def test_redact_function_equals_the_redactor() -> None:
    rng = random.Random(99)
    secrets = {"a": "ab-cd-ef", "b": "ab-cd-ef-gh", "c": "é-value"}
    alphabet = ["ab", "-cd", "-ef", "-gh", "é", "-value", " ", "x"]
    red = Redactor(secrets)
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        assert redact(text, secrets) == red.redact_text(text)


def test_redact_function_round_trips_any_text() -> None:
    text = "surrogate \udcff and NUL \0 and é"
    assert redact(text, {"x": "absent-value"}) == text


def test_label_format() -> None:
    assert redaction_label("db_password") == "[REDACTED:db_password]"
    red = Redactor({"db_password": "correct horse"})
    assert red.redact_text("pw: correct horse") == "pw: " + redaction_label("db_password")


def _label_builders(path: Path) -> list[int]:
    """Lines of ``path`` that build a label: an f-string starting ``[REDACTED:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            first = node.values[0] if node.values else None
            if isinstance(first, ast.Constant) and str(first.value).endswith("[REDACTED:"):
                lines.append(node.lineno)
    return lines


def test_the_label_is_built_in_one_place() -> None:
    root = Path(__file__).resolve().parent.parent
    builders = {}
    for path in sorted((root / "ledger").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        found = _label_builders(path)
        if found:
            builders[rel] = found
    assert list(builders) == ["ledger/redact.py"], builders
    assert len(builders["ledger/redact.py"]) == 1


def test_redact_sits_on_the_ground_floor() -> None:
    """ledger.redact imports nothing from the package but its errors (the runbook layer
    imports it)."""
    source = Path(__file__).resolve().parent.parent / "ledger" / "redact.py"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert {m for m in imported if m.split(".")[0] == "ledger"} <= {"ledger.errors"}


def test_redactor_derived_values_are_redacted_under_their_secret_name() -> None:
    r = Redactor({"token": "s3cret-value"}, [("token", "S3CRET-VALUE"), ("token", "eulav")])
    out = r.redact_text("a s3cret-value b S3CRET-VALUE c eulav")
    assert out == "a [REDACTED:token] b [REDACTED:token] c [REDACTED:token]"
    # Encodings of a derived value are covered like a secret's.
    encoded = base64.b64encode(b"S3CRET-VALUE").decode()
    assert r.redact_text(f"<{encoded}>") == "<[REDACTED:token]>"
