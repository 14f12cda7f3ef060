"""Benchmark: the cost of a push into a shared remote as it fills with ledgers.

Creates a protected shared remote ('ledger remote init --shared') and pushes --ledgers
ledgers of --records records into it with stock ``git push`` (which runs the hook). Then,
for the 1st ledger while it is alone, the Nth ledger once N are there, the 1st again, and
one ledger of --long records, it appends --add records and measures:

- the hook's check in-process (:func:`ledger.replicate.shared.check_updates`, the pushed
  objects reached as an alternate, as in git's quarantine), median of --repeat;
- the whole stock ``git push`` of those records (transport, hook process start, check).

Flat numbers from the 1st to the Nth ledger and for the long ledger mean the cost of a push
grows neither with the number of ledgers nor with their length.

Usage: python bench/bench_shared_hook.py [--ledgers 50] [--records 100] [--long 2000]
       [--add 10] [--repeat 5]
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
from ledger.replicate import protect, shared
from ledger.store import Ledger


def make(base: Path, name: str, records: int) -> tuple[Ledger, SigningKey]:
    key = SigningKey.generate(comment=f"{name}@example.com")
    led = Ledger.init(base / name, name=name, key=key, principal=f"{name}@example.com")
    for i in range(records):
        led.append("event", {"message": f"{name} {i}", "data": None}, key=key)
    return led, key


def git_push(led: Ledger, remote: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        ["git", "push", "-q", str(remote), f"main:refs/ledgers/{led.ledger_id}/main"],
        cwd=led.path,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def head(led: Ledger) -> str:
    h = led.head()
    assert h is not None
    return h.commit_id


def measure(
    led: Ledger, key: SigningKey, remote: Path, add: int, repeat: int
) -> tuple[float, float]:
    """Median ms of the in-process check and of the whole git push, for ``add`` records."""
    checks, pushes = [], []
    for _ in range(repeat):
        old = head(led)
        for i in range(add):
            led.append("event", {"message": f"more {i}", "data": None}, key=key)
        new = head(led)
        env = {"GIT_ALTERNATE_OBJECT_DIRECTORIES": str(Path(led.path) / "objects")}
        repo = protect._open_received(remote, env)
        line = f"{old} {new} refs/ledgers/{led.ledger_id}/main"
        start = time.perf_counter()
        ok, said = shared.check_updates(repo, [line])
        checks.append((time.perf_counter() - start) * 1000)
        if not ok:
            raise SystemExit("\n".join(said))
        pushes.append(git_push(led, remote) * 1000)
    return statistics.median(checks), statistics.median(pushes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ledgers", type=int, default=50)
    ap.add_argument("--records", type=int, default=100)
    ap.add_argument("--long", type=int, default=2000)
    ap.add_argument("--add", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-shared-") as tmp:
        base = Path(tmp)
        os.environ.setdefault("XDG_STATE_HOME", str(base / "state"))
        remote = protect.init_remote(base / "fleet.git", shared=True)
        rows = []
        first, first_key = make(base, "l0", args.records)
        git_push(first, remote)
        rows.append(
            (
                "1st ledger, 1 in the remote",
                *measure(first, first_key, remote, args.add, args.repeat),
            )
        )
        last = first, first_key
        for i in range(1, args.ledgers):
            led, key = make(base, f"l{i}", args.records)
            git_push(led, remote)
            last = led, key
        n = args.ledgers
        rows.append(
            (f"{n}th ledger, {n} in the remote", *measure(*last, remote, args.add, args.repeat))
        )
        rows.append(
            (
                f"1st ledger, {n} in the remote",
                *measure(first, first_key, remote, args.add, args.repeat),
            )
        )
        long_led, long_key = make(base, "long", args.long)
        git_push(long_led, remote)
        rows.append(
            (
                f"a {args.long}-record ledger, {n + 1} in the remote",
                *measure(long_led, long_key, remote, args.add, args.repeat),
            )
        )
        print(f"push of {args.add} records into a shared remote (median of {args.repeat}):")
        print(f"  {'case':<42} {'hook check':>11} {'git push':>10}")
        for name, check_ms, push_ms in rows:
            print(f"  {name:<42} {check_ms:>8.1f} ms {push_ms:>7.1f} ms")
        base_check = rows[0][1]
        nth, long_ = rows[1][1] / base_check, rows[3][1] / base_check
        print(f"  ratio Nth/1st (hook check): {nth:.2f}; long/1st: {long_:.2f}")


if __name__ == "__main__":
    main()
