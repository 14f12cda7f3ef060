"""Benchmark: verifying a ledger.

Prints, from measurements taken in this one run:
- commits/s of ``verify_ledger`` over a ledger of --records records written by the store
  (as the store leaves it: an append's small packs and their merges; and repacked, as a clone or
  ``git gc`` has it);
- commits/s of stock ``git verify-commit`` run once per commit over a sample of the same
  commits (what an auditor without this tool would do), and the ratio of the two;
- peak memory (``ru_maxrss`` of a fresh process) verifying a ledger of --memory-records
  records, and its verify rate.

The ledgers' records are spread over many days by a simulated clock (one record every
15 minutes), as on a ledger that grew in real use, since FORMAT.md §4 shards the tree by day.
The --records ledger is written with ``Ledger.append`` (durability switched off while
building: the benchmark measures verifying, not appending). The --memory-records ledger is
written by a faster builder (bench/builders.py) from the same record, message and signing
functions the store uses, straight into the object database, packed every 10,000 records;
its verification
finding nothing shows it is a well-formed ledger.

Usage: python bench/bench_verify.py [--records 3000] [--git-sample 150]
                                    [--memory-records 100000 | --memory-records 0]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import builders

from ledger import store as store_mod
from ledger.format import records
from ledger.keys import SigningKey, allowed_signers_line
from ledger.store import Ledger
from ledger.verify import verify_ledger

START, STEP = builders.START, builders.STEP


@contextmanager
def simulated_store() -> Iterator[None]:
    """The store with a clock that advances 15 minutes per record and no fsync."""
    clock = [START]

    def now() -> datetime:
        clock[0] += STEP
        return clock[0]

    saved = (records.utc_now, store_mod.gitdir.syncfs)
    records.utc_now = now
    store_mod.gitdir.syncfs = lambda path, fd=None: None
    try:
        yield
    finally:
        records.utc_now, store_mod.gitdir.syncfs = saved


def build_with_store(path: Path, n: int, alice: SigningKey, bob: SigningKey) -> Ledger:
    with simulated_store():
        led = Ledger.init(path, name="bench", key=alice, principal="alice@example.com")
        pub = bob.public_key
        led.append(
            "key.added",
            {
                "principal": "bob",
                "key": pub.openssh(),
                "fingerprint": pub.fingerprint,
                "comment": "",
            },
            key=alice,
        )
        for i in range(2, n):
            key = bob if i % 3 == 0 else alice
            attachments = {"stdout": f"line {i}\n".encode() * 5} if i % 10 == 0 else None
            led.append(
                "event",
                {"message": f"bench {i}", "data": {"i": i}},
                key=key,
                attachments=attachments,
            )
    return led


# --- measurements -------------------------------------------------------------------------


def verify_rate(path: Path, runs: int = 3) -> tuple[float, int]:
    """Best of ``runs`` (after one run that warms the page cache, as for git below)."""
    verify_ledger(path)
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        result = verify_ledger(path)
        best = min(best, time.perf_counter() - start)
        if not result.ok:
            raise SystemExit(f"the benchmark ledger does not verify: {result.findings[:3]}")
    return result.records_checked / best, result.records_checked


def git_verify_rate(path: Path, led: Ledger, sample: int, tmp: Path, runs: int = 2) -> float:
    """Best of ``runs`` loops of ``git verify-commit`` over ``sample`` commits."""
    lines = []
    for s in led.signers():
        after = records.parse_time(s.added_time) if s.added_time else None
        line = allowed_signers_line(s.principal, s.public_key, after, None)
        lines.append(line if line.endswith("\n") else line + "\n")
    signers = tmp / "allowed_signers"
    signers.write_text("".join(lines))
    ids = [r.commit_id for r in led.iter_records()][:sample]
    env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull)
    cmd = [
        "git",
        "-C",
        str(path),
        "-c",
        "gpg.format=ssh",
        "-c",
        f"gpg.ssh.allowedSignersFile={signers}",
        "verify-commit",
    ]
    subprocess.run([*cmd, ids[0]], check=True, env=env, capture_output=True)  # warm up
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        for oid in ids:
            subprocess.run([*cmd, oid], check=True, env=env, capture_output=True)
        best = min(best, time.perf_counter() - start)
    return len(ids) / best


# The peak is read from /proc/self/status (VmHWM: this process's own address space). Not
# ru_maxrss: Linux carries the parent's peak into a child that was started by vfork+exec, so
# it would report the benchmark's own builder (hundreds of MB) instead of the verifier.
_CHILD = """
import json, resource, sys, time
from pathlib import Path
from ledger.verify import verify_ledger
start = time.perf_counter()
result = verify_ledger(Path(sys.argv[1]))
elapsed = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1])
except OSError:
    pass
print(json.dumps({"ok": result.ok, "n": result.records_checked, "s": elapsed,
                  "findings": [f.to_json() for f in result.findings[:3]],
                  "maxrss_kb": peak}))
"""


def memory_run(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path)], check=True, capture_output=True, text=True
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=3000)
    ap.add_argument("--git-sample", type=int, default=150)
    ap.add_argument("--memory-records", type=int, default=100_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        alice = SigningKey.generate(comment="alice@example.com")
        bob = SigningKey.generate(comment="bob@example.com")
        t = time.perf_counter()
        led = build_with_store(tmp / "ledger.git", args.records, alice, bob)
        print(f"built {args.records:,} records with the store in {time.perf_counter() - t:.0f} s")

        loose, n = verify_rate(led.path)
        packed_path = tmp / "packed.git"
        subprocess.run(
            ["git", "clone", "-q", "--no-local", "--mirror", str(led.path), str(packed_path)],
            check=True,
        )
        packed, _ = verify_rate(packed_path)
        git_rate = git_verify_rate(led.path, led, args.git_sample, tmp)
        best = min(loose, packed)
        print(f"ledger verify, as appended:       {loose:8.0f} commits/s ({n:,} commits)")
        print(f"ledger verify, packed (a clone): {packed:8.0f} commits/s")
        print(
            f"git verify-commit per commit:    {git_rate:8.1f} commits/s "
            f"(sample of {args.git_sample})"
        )
        print("(each rate is the best of several runs: other processes share this machine)")
        print(f"ratio ledger/git (slower case):  {best / git_rate:8.1f}x  (target >= 40x)")
        print(f"target >= 2,000 commits/s:       {'met' if best >= 2000 else 'NOT met'}")

        if args.memory_records:
            big = tmp / "big.git"
            t = time.perf_counter()
            builders.fast_build(big, args.memory_records, alice)
            print(
                f"built {args.memory_records:,} records (fast builder) in "
                f"{time.perf_counter() - t:.0f} s"
            )
            run = memory_run(big)
            if not run["ok"]:
                raise SystemExit(f"the large ledger does not verify: {run['findings']}")
            mb = run["maxrss_kb"] / 1024
            print(
                f"verify {run['n']:,} records:        {run['n'] / run['s']:8.0f} commits/s, "
                f"peak memory {mb:.0f} MB  (target < 200 MB: "
                f"{'met' if mb < 200 else 'NOT met'})"
            )


if __name__ == "__main__":
    main()
