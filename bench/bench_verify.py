"""Benchmark: verifying a ledger.

Prints, from measurements taken in this one run:
- commits/s of ``verify_ledger`` in this process (jobs=1) over a ledger of --records records
  written by the store (as the store leaves it: an append's small packs and their merges;
  and repacked, as a clone or ``git gc`` has it);
- records/s of ``ledger verify`` as a subprocess (start-up and imports counted; default
  --jobs: one per core) over the same ledger, and of stock ``git verify-commit`` run once per
  commit over a sample of the same commits (what an auditor without this tool would do),
  and the ratio of the two (target: >= 40x on 2,000 records), the two measured in turn;
- records/s of ``ledger verify --jobs 1`` and ``--jobs 2`` as subprocesses over a ledger of
  --big-records records (target: >= 5,000 records/s on 50,000), measured alternately, with
  the seq index a runner's own ledger and a ``ledger clone`` keep and (``--jobs 2``)
  without it, as in a copy made by stock git;
- peak memory (``VmHWM`` of a fresh process verifying with jobs=1) over that ledger, and its
  verify rate.

The ledgers' records are spread over many days by a simulated clock (one record every
15 minutes), as on a ledger that grew in real use, since FORMAT.md §4 shards the tree by day.
The --records ledger is written with ``Ledger.append`` (durability switched off while
building: the benchmark measures verifying, not appending). The --big-records ledger is
written by a faster builder (bench/builders.py) from the same record, message and signing
functions the store uses, straight into the object database; its verification
finding nothing shows it is a well-formed ledger.

Rates are the best of several runs (other processes share the machine); compare ratios
measured in one run, not rates across runs.

Usage: python bench/bench_verify.py [--records 2000] [--git-sample 150]
                                    [--big-records 50000 | --big-records 0] [--cli-runs 2]
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
import pygit2

from ledger import store as store_mod
from ledger.format import records
from ledger.keys import SigningKey, allowed_signers_line
from ledger.store import Ledger, seqindex
from ledger.verify import home, verify_ledger

START, STEP = builders.START, builders.STEP
SEQ_INDEX = Path(store_mod.gitdir.STATE_DIR) / store_mod.gitdir.SEQ_INDEX  # (FORMAT.md §8)


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


def built_ledger(path: Path, n: int, key: SigningKey) -> str:
    """A fast-built ledger with the config 'ledger init' leaves ('ledger verify' opens it)
    and the seq index the store's appends leave; its genesis commit id."""
    builders.fast_build(path, n, key)
    chain = subprocess.run(
        ["git", "-C", str(path), "rev-list", "--first-parent", "--reverse", "main"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    genesis = chain[0]
    index = seqindex.SeqIndex(path, str(SEQ_INDEX))
    for seq, oid in enumerate(chain):
        index.put(seq, pygit2.Oid(hex=oid))
    index.close()
    repo = pygit2.Repository(str(path))
    message = repo[genesis].message
    ledger_id = next(
        line.split(": ", 1)[1] for line in message.splitlines() if line.startswith("Ledger-Id: ")
    )
    for name, value in (("id", ledger_id), ("name", "bench"), ("genesis", genesis)):
        repo.config[f"ledger.{name}"] = value
    return genesis


# --- measurements -------------------------------------------------------------------------


def verify_rate(path: Path, runs: int = 3) -> tuple[float, int]:
    """In this process, one core: best of ``runs`` (after one run that warms the page
    cache, as for git below)."""
    verify_ledger(path, jobs=1)
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        result = verify_ledger(path, jobs=1)
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


def cli_rates(
    path: Path,
    genesis: str,
    tmp: Path,
    jobs: list[int | None],
    runs: int,
    indexed: list[bool] | None = None,
) -> list[float]:
    """Records/s of ``ledger verify`` as a subprocess (start-up and imports counted) with
    each ``--jobs`` value (None: the default), best of ``runs``, the values taken in turn so
    that they see the same load. The state directory is a fresh one (no pin, no head
    remembered: each run verifies the whole chain, pinned by --trust-genesis). ``indexed``:
    per value, whether the ledger keeps its seq index (False: hidden for that run, as in a
    copy made by stock git, which has none)."""
    env = dict(os.environ, **{home.ENV_STATE_DIR: str(tmp / "cli-state")})
    best = [float("inf")] * len(jobs)
    n = 0
    index, hidden = path / SEQ_INDEX, tmp / "seq-index.hidden"
    for _ in range(runs):
        for i, j in enumerate(jobs):
            with_index = indexed is None or indexed[i]
            if not with_index:
                index.rename(hidden)
            cmd = [sys.executable, "-m", "ledger", "verify", "-L", str(path), "--json"]
            cmd += ["--no-progress", "--trust-genesis", genesis]
            cmd += ["--jobs", str(j)] if j is not None else []
            start = time.perf_counter()
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            best[i] = min(best[i], time.perf_counter() - start)
            if not with_index:
                hidden.rename(index)
            if out.returncode != 0:
                raise SystemExit(f"ledger verify failed ({out.returncode}): {out.stderr[-2000:]}")
            n = json.loads(out.stdout)["records_checked"]
    return [n / b for b in best]


# The peak is read from /proc/self/status (VmHWM: this process's own address space). Not
# ru_maxrss: Linux carries the parent's peak into a child that was started by vfork+exec, so
# it would report the benchmark's own builder (hundreds of MB) instead of the verifier.
_CHILD = """
import json, resource, sys, time
from pathlib import Path
from ledger.verify import verify_ledger
start = time.perf_counter()
result = verify_ledger(Path(sys.argv[1]), jobs=1)
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
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--git-sample", type=int, default=150)
    ap.add_argument("--big-records", type=int, default=50_000)
    ap.add_argument("--cli-runs", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        alice = SigningKey.generate(comment="alice@example.com")
        bob = SigningKey.generate(comment="bob@example.com")
        t = time.perf_counter()
        led = build_with_store(tmp / "ledger.git", args.records, alice, bob)
        print(f"built {args.records:,} records with the store in {time.perf_counter() - t:.0f} s")
        print(f"({os.cpu_count()} cores; rates are the best of several runs: other processes")
        print(" share this machine, so compare the ratios measured here, not rates across runs)")

        loose, n = verify_rate(led.path)
        packed_path = tmp / "packed.git"
        subprocess.run(
            ["git", "clone", "-q", "--no-local", "--mirror", str(led.path), str(packed_path)],
            check=True,
        )
        packed, _ = verify_rate(packed_path)
        # taken in turn, so that both see the same machine (its speed drifts over minutes)
        git_rate = cli = 0.0
        for _ in range(args.cli_runs + 1):
            git_rate = max(git_rate, git_verify_rate(led.path, led, args.git_sample, tmp, runs=1))
            (once,) = cli_rates(led.path, led.genesis_id, tmp, [None], 1)
            cli = max(cli, once)
        print(f"verify_ledger, jobs=1, as appended: {loose:8.0f} commits/s ({n:,} commits)")
        print(f"verify_ledger, jobs=1, packed:      {packed:8.0f} commits/s")
        print(f"ledger verify (whole process):      {cli:8.0f} records/s (default --jobs)")
        print(
            f"git verify-commit per commit:       {git_rate:8.1f} commits/s "
            f"(sample of {args.git_sample})"
        )
        print(
            f"ratio ledger verify / git:          {cli / git_rate:8.1f}x  (whole process; "
            f"target >= 40x: {'met' if cli / git_rate >= 40 else 'NOT met'})"
        )
        print(f"ratio verify_ledger jobs=1 / git:   {min(loose, packed) / git_rate:8.1f}x")

        if args.big_records:
            big = tmp / "big.git"
            t = time.perf_counter()
            genesis = built_ledger(big, args.big_records, alice)
            print(
                f"built {args.big_records:,} records (fast builder) in "
                f"{time.perf_counter() - t:.0f} s"
            )
            one, two, fresh = cli_rates(
                big, genesis, tmp, [1, 2, 2], args.cli_runs, indexed=[True, True, False]
            )
            print(f"ledger verify --jobs 1 ({args.big_records:,}): {one:8.0f} records/s")
            print(
                f"ledger verify --jobs 2 ({args.big_records:,}): {two:8.0f} records/s  "
                f"({two / one:.2f}x; target >= 5,000 records/s: "
                f"{'met' if two >= 5000 else 'NOT met'})"
            )
            print(
                f"  the same without its seq index:   {fresh:8.0f} records/s  "
                "(as a copy made by stock git: the chain is walked back before the workers start)"
            )
            run = memory_run(big)
            if not run["ok"]:
                raise SystemExit(f"the large ledger does not verify: {run['findings']}")
            mb = run["maxrss_kb"] / 1024
            print(
                f"verify {run['n']:,} records, jobs=1:   {run['n'] / run['s']:8.0f} commits/s, "
                f"peak memory {mb:.0f} MB  (target < 200 MB: "
                f"{'met' if mb < 200 else 'NOT met'})"
            )


if __name__ == "__main__":
    main()
