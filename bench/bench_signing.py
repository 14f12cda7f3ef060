"""Throughput of commit signing and signature verification (ledger.keys).

The ledger verifier must check more than 2,000 commits per second in one process; this
measures the signing layer's share: split the raw commit, parse the SSHSIG, verify Ed25519.

    python bench/bench_signing.py [N]
"""

from __future__ import annotations

import sys
import tempfile
import time

import pygit2

from ledger.keys import SigningKey, sign_commit, verify_signed_commit


def main(count: int = 5000) -> None:
    key = SigningKey.generate("bench")
    with tempfile.TemporaryDirectory() as tmp:
        repo = pygit2.init_repository(tmp, bare=True)
        tree = repo.TreeBuilder().write()
        parents: list[pygit2.Oid] = []
        start = time.perf_counter()
        oids = []
        for i in range(count):
            sig = pygit2.Signature("bench", "bench", 1_700_000_000 + i, 0)
            content = repo.create_commit_string(
                sig, sig, f"record {i}\n\nLedger-Seq: {i}\n", tree, parents
            )
            oid = repo.create_commit_with_signature(content, sign_commit(content, key))
            parents = [oid]
            oids.append(oid)
        signed = time.perf_counter() - start
        raws = [repo.odb.read(oid)[1] for oid in oids]

    start = time.perf_counter()
    for raw in raws:
        _payload, signer = verify_signed_commit(raw)
        assert signer == key.public_key
    verified = time.perf_counter() - start
    print(f"sign+write: {count / signed:,.0f} commits/s ({count} commits)")
    print(f"verify:     {count / verified:,.0f} commits/s ({verified / count * 1e6:.1f} µs each)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
