"""Benchmark: the ledger's overhead per runbook step.

Measures, in this one run, on a throwaway key and ledger:

- ``ledger run`` (a real ``python -m ledger`` subprocess, ``--no-push``) of a runbook of N
  steps that each run ``true``: two durable signed records per step (step.started before,
  step.finished after), plus run.started and run.finished;
- ``bash`` running the same N commands (a script of N lines ``true``);
- as a second baseline, N separate ``bash -c true`` processes (each step of a run is one
  such process, so this is the part of the difference that is not the ledger's).

Per-step overhead = (time of ``ledger run`` - time of bash) / N, for each repetition; the
median is printed and compared with the 15 ms target. The fixed cost of a run (Python
start-up, verification of the ledger, run.started/run.finished) and the cost of one more
step (with its bash process) are also shown, from a run of N and a run of N/10 steps.

Usage: python bench/bench_run.py [--steps 200] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ledger.keys import SigningKey
from ledger.store import Ledger

TARGET_MS = 15.0


def write_runbook(path: Path, steps: int) -> None:
    lines = ["name: bench", "steps:"]
    for i in range(steps):
        lines.append(f"  - name: s{i}")
        lines.append('    run: "true"')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def time_ledger_run(runbook: Path, ledger: Path, key: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ledger",
            "run",
            str(runbook),
            "--ledger",
            str(ledger),
            "--key",
            str(key),
            "--no-push",
        ],
        env=env,
        capture_output=True,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"ledger run failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    return elapsed


def time_bash_script(steps: int) -> float:
    script = "true\n" * steps
    start = time.perf_counter()
    subprocess.run(["bash", "-c", script], check=True)
    return time.perf_counter() - start


def time_bash_processes(steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        subprocess.run(["bash", "-c", "true"], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n = args.steps
    small = max(n // 10, 1)

    with tempfile.TemporaryDirectory(prefix="ledger-bench-run-") as tmp:
        root = Path(tmp)
        key = SigningKey.generate(comment="bench@example.com")
        key_path = root / "key"
        key.save(key_path)
        ledger = root / "ledger"
        Ledger.init(ledger, name="bench", key=key, principal="bench@example.com")
        big_book, small_book = root / "big.yaml", root / "small.yaml"
        write_runbook(big_book, n)
        write_runbook(small_book, small)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
        env["HOME"] = str(root)
        env["LEDGER_STATE_DIR"] = str(root / "state")
        # As after 'ledger init': this machine pins the genesis it created ('ledger run'
        # refuses a ledger whose genesis nobody pinned).
        subprocess.run(
            [sys.executable, "-m", "ledger", "verify", "--ledger", str(ledger)],
            env=env,
            capture_output=True,
            check=True,
        )
        time_ledger_run(small_book, ledger, key_path, env)  # warm-up, saves verified state
        overheads: list[float] = []
        fixed: list[float] = []
        slopes: list[float] = []
        spawn: list[float] = []
        for _ in range(args.repeat):
            t_run = time_ledger_run(big_book, ledger, key_path, env)
            t_small = time_ledger_run(small_book, ledger, key_path, env)
            t_bash = time_bash_script(n)
            t_proc = time_bash_processes(n)
            per_step = (t_run - t_bash) / n
            overheads.append(per_step * 1000)
            slope = (t_run - t_small) / (n - small)
            slopes.append(slope * 1000)
            fixed.append((t_small - slope * small) * 1000)
            spawn.append(t_proc / n * 1000)
            print(
                f"ledger run {n} steps: {t_run:.2f} s   bash script: {t_bash * 1000:.1f} ms   "
                f"{n} x bash -c: {t_proc:.2f} s   -> {per_step * 1000:.2f} ms/step"
            )

    median = statistics.median(overheads)
    print()
    print(f"per-step overhead (ledger run - bash) / N, median of {args.repeat}: {median:.2f} ms")
    print(f"  of which one 'bash -c true' process per step:     {statistics.median(spawn):.2f} ms")
    print(
        f"fixed cost per run (start-up, verification, run records): "
        f"{statistics.median(fixed):.0f} ms"
    )
    print(
        f"cost of one more step (slope between {small} and {n} steps, with its bash): "
        f"{statistics.median(slopes):.2f} ms"
    )
    verdict = "met" if median <= TARGET_MS else "NOT met"
    print(f"target <= {TARGET_MS:g} ms per step: {verdict}")


if __name__ == "__main__":
    main()
