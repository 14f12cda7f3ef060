"""Benchmark: durable signed appends.

Prints, from measurements taken in this one run:
- records/s of ``Ledger.append`` (durable: on disk before it returns);
- the same records committed by a script doing durable ``git commit -S`` with SSH signing
  (``git -c core.fsync=committed``), and the ratio of the two;
- the cost of one append once the ledger holds --large records against the cost at 1,000.

Usage: python bench/bench_append.py [--records 300] [--git-records 60] [--large 100000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from ledger.keys import SigningKey
from ledger.store import Ledger


def append_rate(led: Ledger, key: SigningKey, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        led.append("event", {"message": f"bench {i}", "data": {"i": i}}, key=key)
    return n / (time.perf_counter() - start)


def append_cost_ms(led: Ledger, key: SigningKey, n: int = 1000) -> tuple[float, float]:
    samples = []
    for i in range(n):
        t = time.perf_counter()
        led.append("event", {"message": f"probe {i}", "data": None}, key=key)
        samples.append((time.perf_counter() - t) * 1000)
    # Over one whole packing cycle (every 1,000 records): the median and the mean (which
    # includes the packing).
    return statistics.median(samples), statistics.fmean(samples)


def git_commit_rate(tmp: Path, key_path: Path, n: int) -> float:
    repo = tmp / "gitrepo"
    env = dict(
        os.environ,
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_AUTHOR_NAME="b",
        GIT_AUTHOR_EMAIL="b@example.com",
        GIT_COMMITTER_NAME="b",
        GIT_COMMITTER_EMAIL="b@example.com",
    )
    subprocess.run(["git", "init", "-q", str(repo)], check=True, env=env)
    cfg = [
        "-c",
        "gpg.format=ssh",
        "-c",
        f"user.signingkey={key_path}",
        "-c",
        "core.fsync=committed",
        "-c",
        "core.fsyncMethod=fsync",
    ]
    start = time.perf_counter()
    for i in range(n):
        (repo / f"{i:06d}.json").write_text(f'{{"message":"bench {i}"}}')
        subprocess.run(["git", "-C", str(repo), "add", f"{i:06d}.json"], check=True, env=env)
        subprocess.run(
            ["git", "-C", str(repo), *cfg, "commit", "-q", "-S", "-m", f"record {i}"],
            check=True,
            env=env,
        )
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=300)
    ap.add_argument("--git-records", type=int, default=60)
    ap.add_argument("--large", type=int, default=100_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        key = SigningKey.generate(comment="bench@example.com")
        key.save(tmp / "key")
        led = Ledger.init(tmp / "ledger.git", name="bench", key=key, principal="bench@example.com")
        ours = append_rate(led, key, args.records)
        theirs = git_commit_rate(tmp, tmp / "key", args.git_records)
        print(f"ledger append (durable, signed): {ours:8.1f} records/s")
        print(f"git commit -S (ssh, fsync):      {theirs:8.1f} records/s")
        print(f"ratio ledger/git:                {ours / theirs:8.2f}x  (target >= 4x)")
        print(f"target >= 150 records/s:         {'met' if ours >= 150 else 'NOT met'}")

        # Scaling: cost of an append at ~1,000 records against at --large records.
        head = led.head()
        n = head.seq if head else 0
        while n < 1000:
            led.append("event", {"message": "fill", "data": None}, key=key)
            n += 1
        at_1k = append_cost_ms(led, key)
        fill_start = time.perf_counter()
        n += 1000
        while n < args.large:
            led.append("event", {"message": "fill", "data": None}, key=key)
            n += 1
        fill_s = time.perf_counter() - fill_start
        at_large = append_cost_ms(led, key)
        print(f"append at 1,000 records:   {at_1k[0]:6.2f} ms median, {at_1k[1]:6.2f} ms mean")
        print(
            f"append at {args.large:,} records: {at_large[0]:6.2f} ms median, "
            f"{at_large[1]:6.2f} ms mean (filled in {fill_s:.0f} s)"
        )
        print(
            f"ratio large/1k: {at_large[0] / at_1k[0]:.2f}x median, "
            f"{at_large[1] / at_1k[1]:.2f}x mean  (target <= 1.5x)"
        )


if __name__ == "__main__":
    main()
