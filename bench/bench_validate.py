"""Benchmark: validating large runbooks (``load_runbook``).

Prints the CPU time of validating a runbook of --steps steps (close to the 1 MiB limit at
16,000) and of one ten times smaller, and their ratio: about 10 when validation is linear in
the number of steps (it was quadratic: every step copied the scope of all earlier ones).
Each step has a templated command, so that template checks are part of what is measured.

Usage: python bench/bench_validate.py [--steps 16000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ledger.runbook import load_runbook


def write_runbook(path: Path, steps: int) -> int:
    lines = ["name: big", "parameters:", "  svc:", "    default: api", "steps:"]
    for i in range(steps):
        lines.append(f"  - name: s{i}\n    run: echo {{{{ params.svc }}}} {i}")
    text = "\n".join(lines) + "\n"
    path.write_text(text, encoding="utf-8")
    return len(text.encode("utf-8"))


def cpu_seconds(path: Path, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        book = load_runbook(path)
        best = min(best, time.process_time() - start)
        assert book.steps
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=16000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        big, small = Path(tmp) / "big.yaml", Path(tmp) / "small.yaml"
        big_bytes = write_runbook(big, args.steps)
        write_runbook(small, args.steps // 10)
        t_small = cpu_seconds(small, args.repeat)
        t_big = cpu_seconds(big, args.repeat)
    print(f"{args.steps // 10:>6} steps: {t_small:.3f} s CPU")
    print(f"{args.steps:>6} steps: {t_big:.3f} s CPU ({big_bytes} bytes)")
    print(f"ratio {args.steps} vs {args.steps // 10} steps: {t_big / t_small:.1f} (linear: ~10)")


if __name__ == "__main__":
    main()
