"""Benchmark: pushing a run's records to three protected remotes against pushing them to one.

Starts a real git daemon (or the HTTP server of the tests) on 127.0.0.1 serving protected
remotes made by ``ledger remote init`` (pre-receive verification on), then, per round:
appends --records records (a run), pushes them to one remote, and pushes the same records to
three remotes; the order alternates between rounds so that load changes hit both alike.
Prints the median wall time of each and their ratio (the target: at most 1.5, because the
pushes run in parallel).

Usage: python bench/bench_push.py [--records 20] [--rounds 5] [--transport git|http]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from gitservers import GitDaemon, GitHttpServer, GitServer

from ledger import replicate
from ledger.keys import SigningKey
from ledger.store import Ledger


def one_round(
    base: Path, server: GitServer, n: int, i: int, protected: bool
) -> tuple[float, float]:
    key = SigningKey.generate(comment="bench@example.com")
    led = Ledger.init(base / f"led{i}", name="bench", key=key, principal="bench@example.com")
    names = ["one", "a", "b", "c"]
    for name in names:
        path = server.base / f"{name}-{i}-{int(protected)}.git"
        if protected:
            replicate.init_remote(path, genesis=led.genesis_id)
        else:
            server.make_repo(path.name, protected=False)
        replicate.add_remote(led.path, name, server.url(path.name))
    # The state before the run: every remote holds the genesis and a few records.
    for _ in range(3):
        led.append("event", {"message": "before the run", "data": None}, key=key)
    replicate.push(led.path).check(None)
    for j in range(n):
        led.append("event", {"message": f"run record {j}", "data": {"j": j}}, key=key)

    def timed(which: list[str]) -> float:
        start = time.perf_counter()
        summary = replicate.push(led.path, which)
        elapsed = time.perf_counter() - start
        summary.check(None)
        assert all(o.records == n for o in summary.outcomes), summary.to_json()
        return elapsed

    if i % 2 == 0:
        single = timed(["one"])
        triple = timed(["a", "b", "c"])
    else:
        triple = timed(["a", "b", "c"])
        single = timed(["one"])
    return single, triple


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--records", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--transport", choices=["git", "http"], default="git")
    parser.add_argument(
        "--protected",
        action="store_true",
        help="Remotes made by 'ledger remote init' (their pre-receive check runs a Python "
        "verifier per push on this same machine, so server CPU competes with the client).",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-push-") as tmp:
        base = Path(tmp)
        server: GitDaemon | GitHttpServer
        server = (
            GitDaemon(base / "repos") if args.transport == "git" else GitHttpServer(base / "repos")
        )
        server.start()
        try:
            singles, triples = [], []
            for i in range(args.rounds):
                s, t = one_round(base, server, args.records, i, args.protected)
                singles.append(s)
                triples.append(t)
                print(f"round {i}: one remote {s * 1000:7.1f} ms   three {t * 1000:7.1f} ms")
        finally:
            server.stop()
    s_med, t_med = statistics.median(singles), statistics.median(triples)
    ratio = t_med / s_med
    print(
        f"{args.records} records over {args.transport}:// "
        f"({'protected' if args.protected else 'plain'} remotes), median of {args.rounds}: "
        f"one remote {s_med * 1000:.1f} ms, three remotes {t_med * 1000:.1f} ms, "
        f"ratio {ratio:.2f} (target <= 1.5)"
    )


if __name__ == "__main__":
    main()
