"""Benchmark: the report for one run out of a large ledger.

Builds one ledger of real signed records (runs of 10 records each, spread over a year of
date shards the way real runs are), and measures the report for the newest run and for an
incident of two runs once the ledger holds --small records and again at --large records.
Before each measurement the ledger is verified once (as `ledger verify` does), so the
report's verification resumes from the verified head like it does in practice.

Filling uses Ledger.append with the per-append syncfs switched off in this process only
(the records and commits are the real ones; only the flush to stable storage is skipped),
in a directory on tmpfs (/dev/shm) when there is one, with stock `git repack -d` every
10,000 records so that the million loose objects do not pile up: building 100,000 records
then takes minutes rather than an hour.

Prints the median report time at each size and their ratio (target: under 1 s at the large
size, ratio close to 1: no scan of the whole history).

Usage: python bench/bench_report.py [--small 10000] [--large 100000] [--repeat 5] [--dir D]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ledger import report, store, verify
from ledger.format import records
from ledger.keys import SigningKey
from ledger.store import Ledger

RECORDS_PER_RUN = 10


def append_run(led: Ledger, key: SigningKey, started: datetime, incident: str | None) -> str:
    """One run as the engine writes it (FORMAT.md §5.1): run.started, 4 steps (started +
    finished with output), run.finished."""
    rid = records.new_run_id(started)
    book = b"name: bench\n"
    names = [f"s{i}" for i in range(4)]
    led.append(
        "run.started",
        {
            "runbook": {
                "name": "bench",
                "path": "runbooks/bench.yaml",
                "sha256": records.sha256_hex(book),
                "description": None,
            },
            "params": {"service": "api"},
            "param_sources": {"service": "default"},
            "trigger": {
                "source": "manual",
                "incident": incident,
                "text": None,
                "ci": None,
                "ci_run": None,
                "ci_url": None,
            },
            "operator": {"principal": "bench@example.com", "user": None},
            "tool_version": "runbook-ledger bench",
            "env": {},
            "lock": None,
            "resumes": None,
            "steps": names,
            "on_failure": [],
        },
        key=key,
        run=rid,
        incident=incident,
        attachments={"runbook": book},
    )
    for i, name in enumerate(names):
        step = {"step": name, "index": i, "phase": "main", "handler": False, "attempt": 1}
        led.append(
            "step.started",
            {
                **step,
                "type": "command",
                "command": f"echo {i}",
                "shell": "sh",
                "cwd": None,
                "timeout_ms": None,
                "max_attempts": 1,
                "env": [],
            },
            key=key,
            run=rid,
        )
        out = f"step {i} output\n".encode() * 50
        empty = {"size": 0, "sha256": records.sha256_hex(b""), "truncated": False, "omitted": 0}
        led.append(
            "step.finished",
            {
                **step,
                "status": "ok",
                "exit_code": 0,
                "duration_ms": 5,
                "error": None,
                "outputs": {},
                "signal": None,
                "stdout": {
                    "size": len(out),
                    "sha256": records.sha256_hex(out),
                    "truncated": False,
                    "omitted": 0,
                },
                "stderr": empty,
                "lingering": False,
                "will_retry": False,
            },
            key=key,
            run=rid,
            attachments={"stdout": out},
        )
    led.append(
        "run.finished",
        {
            "status": "succeeded",
            "failed_step": None,
            "error": None,
            "duration_ms": 50,
            "continued_after_failure": [],
            "handlers_run": [],
            "handlers_failed": [],
            "signal": None,
            "resumes": None,
        },
        key=key,
        run=rid,
    )
    return rid


def fill(led: Ledger, key: SigningKey, target: int, start: datetime) -> str | None:
    """Append runs up to ``target`` records; returns the first run appended."""
    first: str | None = None
    head = led.head()
    n = head.seq if head else 0
    i = n
    t0 = time.perf_counter()
    while n + RECORDS_PER_RUN <= target:
        # About 30 runs a day, over the year before `start`.
        when = start - timedelta(days=365) + timedelta(minutes=47 * i // RECORDS_PER_RUN)
        rid = append_run(led, key, min(when, start - timedelta(days=1)), None)
        first = first or rid
        n += RECORDS_PER_RUN
        i += RECORDS_PER_RUN
        if n % 10_000 < RECORDS_PER_RUN:
            subprocess.run(["git", "--git-dir", str(led.path), "repack", "-d", "-q"], check=True)
            rate = (n - (head.seq if head else 0)) / (time.perf_counter() - t0)
            print(f"  filled {n:>7,} records ({rate:,.0f}/s)", file=sys.stderr, flush=True)
    return first


def timed(fn: object, repeat: int) -> float:
    fn()  # type: ignore[operator]  (warm-up: imports, caches)
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def measure(led: Ledger, key: SigningKey, repeat: int, oldest: str) -> dict[str, float]:
    now = datetime.now(UTC)
    head = led.head()
    incident = f"INC-BENCH-{head.seq if head else 0}"
    append_run(led, key, now, incident)
    last = append_run(led, key, now + timedelta(seconds=1), incident)
    t = time.perf_counter()
    result = verify.verify_ledger(
        led.path, trust_genesis=led.genesis_id, since=verify.load_state(led.path)
    )
    assert result.ok and result.state is not None, result.findings[:3]
    verify.save_state(led.path, result.state)
    print(
        f"  verify (from the last verified head): {time.perf_counter() - t:.1f} s", file=sys.stderr
    )
    out = {
        "run": timed(lambda: report.report_for(led, run=last), repeat),
        "run, no verify": timed(
            lambda: report.report_for(led, run=last, verifier=report.skip_verifier), repeat
        ),
        "incident (2 runs)": timed(lambda: report.report_for(led, incident=incident), repeat),
        # The first run of the ledger: the verifier walks back from the head to show that
        # its records are on the verified chain.
        "CLI, whole process": timed(
            lambda: subprocess.run(
                [sys.executable, "-m", "ledger", "report", "-L", str(led.path), "--run", last],
                check=True,
                capture_output=True,
            ),
            repeat,
        ),
        "oldest run": timed(lambda: report.report_for(led, run=oldest), repeat),
        "oldest, no verify": timed(
            lambda: report.report_for(led, run=oldest, verifier=report.skip_verifier), repeat
        ),
    }
    text = report.report_for(led, run=last)
    assert "Result: **verified**" in text, text[-2000:]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--large", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None)
    args = ap.parse_args()
    store.gitdir.syncfs = lambda path, fd=None: None  # bulk fill only; see the docstring
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-report-") as d:
        key = SigningKey.generate(comment="bench@example.com")
        led = Ledger.init(
            Path(d) / "ledger.git", name="bench", key=key, principal="bench@example.com"
        )
        start = datetime.now(UTC)
        results = {}
        oldest: str | None = None
        for size in (args.small, args.large):
            print(f"filling to {size:,} records", file=sys.stderr)
            first = fill(led, key, size, start)
            oldest = oldest or first
            assert oldest is not None
            head = led.head()
            print(f"measuring at {head.seq if head else 0:,} records", file=sys.stderr)
            results[size] = measure(led, key, args.repeat, oldest)
        small, large = results[args.small], results[args.large]
        print(
            f"report times (median of {args.repeat}), ledger of {args.small:,} vs "
            f"{args.large:,} records:"
        )
        for name in small:
            ratio = large[name] / small[name]
            print(
                f"  {name:<18} {small[name] * 1000:8.1f} ms  {large[name] * 1000:8.1f} ms  "
                f"ratio {ratio:5.2f}x"
            )
        worst = max(large.values())
        print(
            f"target: one-run report under 1 s at {args.large:,} records: "
            f"{'met' if large['run'] < 1.0 else 'NOT met'} ({large['run'] * 1000:.0f} ms); "
            f"slowest {worst * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()
