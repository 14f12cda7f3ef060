"""Benchmark: durable appends signed through ssh-agent against signed with a key file.

Starts its own ``ssh-agent -a SOCKET`` in a temporary directory, loads the key there with
``ssh-add``, and appends to one ledger in alternating rounds: with the key file loaded in
this process (``SigningKey``), and through the agent (``AgentKey``, one connection for the
whole run). Both are durable appends (``Ledger.append`` returns once the record is on disk).

Prints records/s for each, per key type, and the target line: the agent path stays above
150 durable appends/s.

Usage: python bench/bench_agent.py [--records 300] [--rounds 3] [--types ed25519,ecdsa]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from ledger.keys import SigningIdentity, SigningKey
from ledger.keys.agent import AgentClient, AgentKey
from ledger.store import Ledger

TARGET = 150.0


def rate(led: Ledger, key: SigningIdentity, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        led.append("event", {"message": f"bench {i}", "data": {"i": i}}, key=key)
    return n / (time.perf_counter() - start)


def start_agent(tmp: Path) -> tuple[int, str]:
    sock = str(tmp / "agent.sock")
    out = subprocess.run(
        ["ssh-agent", "-s", "-a", sock], capture_output=True, text=True, check=True
    ).stdout
    pid = int(out.split("SSH_AGENT_PID=")[1].split(";")[0])
    return pid, sock


def bench_type(tmp: Path, key_type: str, sock: str, records: int, rounds: int) -> float:
    path = tmp / f"key_{key_type}"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", "bench@example.com", "-f", path],
        check=True,
    )
    env = dict(os.environ, SSH_AUTH_SOCK=sock)
    subprocess.run(["ssh-add", "-q", str(path)], check=True, env=env, capture_output=True)
    file_key = SigningKey.load(path)
    agent_key = AgentKey.find(file_key.public_key, AgentClient(sock))
    led = Ledger.init(
        tmp / f"ledger_{key_type}.git", name="bench", key=file_key, principal="bench@example.com"
    )
    rate(led, file_key, 20)  # warm up both paths
    rate(led, agent_key, 20)
    with_file: list[float] = []
    with_agent: list[float] = []
    for _ in range(rounds):
        with_file.append(rate(led, file_key, records))
        with_agent.append(rate(led, agent_key, records))
    led.wait_for_packing()  # the background pack upkeep is done before the directory goes
    led.close()
    best_file, best_agent = max(with_file), max(with_agent)
    print(
        f"{key_type:8} key file: {best_file:7.1f} appends/s   agent: {best_agent:7.1f} "
        f"appends/s   ({best_agent / best_file:.2f}x; best of {rounds} rounds of {records})"
    )
    return best_agent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--types", default="ed25519,ecdsa")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        pid, sock = start_agent(tmp)
        try:
            results = [
                bench_type(tmp, key_type, sock, args.records, args.rounds)
                for key_type in args.types.split(",")
            ]
        finally:
            os.kill(pid, signal.SIGTERM)
    worst = min(results)
    print(
        f"target: agent path > {TARGET:.0f} durable appends/s: "
        f"{'met' if worst > TARGET else 'NOT met'} ({worst:.1f})"
    )


if __name__ == "__main__":
    main()
