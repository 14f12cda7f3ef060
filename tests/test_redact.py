"""Tests of ledger.redact: the one redactor (values and their encodings, longest match,
streaming in chunks, the label format)."""

from __future__ import annotations

import base64
import itertools
import json
import random
from urllib.parse import quote

from ledger.redact import Redactor


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
