"""Overhead of ledger.run.process.run_command against a bare subprocess.run.

Runs ``true`` N times each way (interleaved, so load changes hit both alike) and prints the
median wall time of each and their ratio and difference. A benchmark, not a test:

    python bench/bench_process.py [-n 300] [--redact]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import threading
import time

from ledger.run.process import CommandSpec, run_command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="runs of each (default 300)")
    parser.add_argument("--redact", action="store_true", help="with two secrets to redact")
    parser.add_argument("--command", default="true", help="shell command (default: true)")
    args = parser.parse_args()

    redactions = {"token": "s3cr3t-token-value", "pw": "hunter2-password"} if args.redact else {}
    spec = CommandSpec(args.command, timeout_s=60, redactions=redactions)
    stop = threading.Event()  # as the engine calls it
    sink_bytes = 0

    def sink(stream: str, data: bytes) -> None:
        nonlocal sink_bytes
        sink_bytes += len(data)

    def ours() -> None:
        run_command(spec, sink=sink, stop=stop)

    def bare() -> None:
        subprocess.run(["bash", "-c", args.command], capture_output=True, check=False)

    for f in (ours, bare):  # warm up
        for _ in range(5):
            f()
    times: dict[str, list[float]] = {"run_command": [], "subprocess.run": []}
    for _ in range(args.n):
        for name, f in (("run_command", ours), ("subprocess.run", bare)):
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)

    med = {name: statistics.median(ts) * 1000 for name, ts in times.items()}
    for name, ms in med.items():
        print(f"{name:15} median {ms:7.3f} ms over {args.n} runs")
    ratio = med["run_command"] / med["subprocess.run"]
    diff = med["run_command"] - med["subprocess.run"]
    print(f"ratio run_command / subprocess.run = {ratio:.2f} (overhead {diff:+.3f} ms)")


if __name__ == "__main__":
    main()
