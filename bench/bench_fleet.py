"""Benchmark: a fleet of runners pushing into one shared remote, and its auditor.

The fleet's scale numbers, all measured in this one run (ratios are what carry over to another
machine; the load average is printed with them):

1. --runners ledgers (each its own ledger id, key, state directory and process) of --records
   records, built fast (bench/builders.py); --incident-ledgers of them also hold a real run
   (``ledger run --incident INC-1``) for the fleet report. One protected shared remote
   (``ledger remote init --shared``) served by ``git daemon`` on 127.0.0.1; each runner
   ``ledger remote add fleet git://... --shared``; then all the ``ledger push`` processes
   started together. Checked: every exit code is 0 and every server ref is its ledger's head
   afterwards (nothing lost). Measured: the hook's own check time per push in the order the
   pushes landed (``LEDGER_HOOK_TIMING``, wall and CPU) and the ratio median(last 10) /
   median(first 10), CPU per push on each side, the whole push of each runner, the total
   wall time. A push that could not reach the server is pushed again and counted; a
   refusal or a lost ref fails the benchmark.
2. The auditor side (skipped with a message when ``ledger fleet --help`` fails): ``ledger
   fleet clone`` and ``fleet verify --json`` from a fresh state directory (records/s; best of
   --verify-runs, each from a copy of the state the clone left, as other processes share the
   machine: every run is printed), a stock ``git verify-commit`` loop over --git-sample of
   the same commits and the ratio;
   --incremental-ledgers runners append 10 records each and push, then ``fleet fetch`` and
   ``fleet verify`` (incremental); ``ledger fleet report --incident INC-1`` with the whole
   fleet and with a --small-fleet fleet holding the same incident (flatness).
3. Unit costs for the estimate in docs/FLEET.md: verification per record on one core, bytes
   per record in packs (as pushed, and repacked), a stock fetch of 5 ledgers, and the ref
   advertisement of
   ``git ls-remote`` over git:// with the fleet's refs and with --refs refs (loose, packed,
   and protocol v2 asking for one ledger's ref).

Usage: python bench/bench_fleet.py [--runners 50] [--records 1000] [--keep DIR]
       (small: --runners 5 --records 100, under a minute; the defaults took 301 s on the
       2-core development machine, 455 s while other jobs loaded it)
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import builders
import pygit2

import ledger
from ledger import store as store_mod
from ledger.format import records
from ledger.keys import SigningKey, allowed_signers_line
from ledger.replicate import add_remote
from ledger.store import Ledger
from ledger.verify import local, verify_ledger

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))  # the test suite's git daemon helpers
import gitservers  # noqa: E402

INCIDENT = "INC-1"
RUNBOOK = """name: fleet-bench-note
description: One step, to put a real run with an incident id in the ledger.
steps:
  - name: note
    description: Say where it ran.
    run: echo "fleet bench step on $(hostname)"
"""
STEP = timedelta(minutes=15)


@dataclass
class Runner:
    name: str
    path: Path
    key: Path
    state: Path
    ledger_id: str = ""
    genesis: str = ""
    head: str = ""
    principal: str = ""

    def env(self) -> dict[str, str]:
        return dict(
            os.environ,
            LEDGER_STATE_DIR=str(self.state),
            LEDGER_DIR=str(self.path),
            # git daemon accepts and forks for one connection at a time: with 50 runners
            # connecting at once on a loaded machine, the default 10 s connect timeout
            # expired for one of them in a run (its push then said 'unreachable')
            LEDGER_REMOTE_CONNECT_TIMEOUT="60",
        )


def ledger_cmd(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "ledger", *[str(a) for a in args]]


def run(
    cmd: Sequence[str | Path], env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True, check=False
    )


def must(r: subprocess.CompletedProcess[str], what: str) -> subprocess.CompletedProcess[str]:
    if r.returncode != 0:
        raise SystemExit(f"{what} failed (exit {r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def timed(fn: Callable[[], subprocess.CompletedProcess[str]]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


# --- phase 0: the runners ------------------------------------------------------------------


def build_runner(runner: Runner, records_n: int, url: str, start: datetime) -> Runner:
    """In a worker process: a ledger as 'ledger init' makes it (genesis pinned in the runner's
    own state directory, signing key in its config), grown to ``records_n`` records by the
    fast builder, with the shared remote added."""
    os.environ["LEDGER_STATE_DIR"] = str(runner.state)
    store_mod.gitdir.syncfs = lambda path, fd=None: None  # building, not measuring appends
    records.utc_now = lambda: start
    key = SigningKey.generate(comment=runner.principal)
    key.save(runner.key)
    led = Ledger.init(
        runner.path, name=runner.name, key=key, principal=runner.principal, host=runner.name
    )
    led.config_set("ledger.signingKey", str(runner.key))
    local.pin_after_init(led.path, led.genesis_id)
    runner.ledger_id, runner.genesis = led.ledger_id, led.genesis_id
    led.close()
    own: list[builders.Appended] = []
    runner.head = builders.fast_extend(
        runner.path,
        records_n - 1,
        key,
        principal=runner.principal,
        host=runner.name,
        step=STEP,
        own=own,
    )
    # A runner's verified head follows its own appends (as after 'ledger run'), so a push
    # measures pushing, not a verification the runner would not do again.
    if not local.extend_over_own_appends(pygit2.Repository(str(runner.path)), runner.path, own):
        local.verify_before_append(runner.path)
    add_remote(runner.path, "fleet", url, shared=True)
    return runner


def build_fleet(base: Path, n: int, records_n: int, url: str, jobs: int) -> list[Runner]:
    # Records every 15 simulated minutes, ending an hour ago: real runs come after them.
    start = datetime.now(UTC) - STEP * (records_n + 4)
    runners = []
    for i in range(n):
        d = base / "runners" / f"runner-{i:03d}"
        (d / "state").mkdir(parents=True, mode=0o700)
        r = Runner(f"runner-{i:03d}", d / "ledger", d / "key", d / "state")
        r.principal = f"{r.name}@example.com"
        runners.append(r)
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(build_runner, r, records_n, url, start) for r in runners]
        return [f.result() for f in futures]


def incident_runs(base: Path, runners: list[Runner]) -> None:
    """A real run with --incident on each of ``runners`` (not pushed yet), concurrently."""
    book = base / "note.yaml"
    book.write_text(RUNBOOK)
    procs = [
        subprocess.Popen(
            ledger_cmd("run", book, "--incident", INCIDENT, "--no-push"),
            env=r.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in runners
    ]
    for r, p in zip(runners, procs, strict=True):
        out, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"ledger run on {r.name} failed ({p.returncode}):\n{out}\n{err}")
        r.head = must(run(["git", "-C", r.path, "rev-parse", "main"]), "rev-parse").stdout.strip()


# --- phase 1: the server and the concurrent pushes ------------------------------------------


class FleetDaemon(gitservers.GitDaemon):
    """The test suite's git daemon with no limit on concurrent connections: git daemon's
    default (32) kills a running connection from the same address to make room, which
    would cut pushes short when 50 runners on 127.0.0.1 push at once."""

    def start(self, port: int | None = None) -> None:
        self.port = port or gitservers.free_port()
        with self.log.open("ab") as logf:
            self.proc = subprocess.Popen(
                [
                    gitservers.GIT_DAEMON,
                    "--enable=receive-pack",
                    "--export-all",
                    "--reuseaddr",
                    "--informative-errors",
                    "--verbose",
                    "--max-connections=0",
                    f"--base-path={self.base}",
                    f"--port={self.port}",
                    "--listen=127.0.0.1",
                    str(self.base),
                ],
                stdout=logf,
                stderr=logf,
                stdin=subprocess.DEVNULL,
                env=self.env,
            )
        gitservers.wait_for_port(self.port, self.proc, log=self.log)


@dataclass
class HookTiming:
    ref: str
    wall_ms: float
    cpu_ms: float
    import_ms: float
    at: float


def read_hook_log(path: Path) -> list[HookTiming]:
    """The lines LEDGER_HOOK_TIMING appended (see ledger/hook.py), in the order they landed."""
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        # ledger-hook: checked 1 ref update(s) in W ms (cpu C ms; before it, import I ms)
        # at T, accepted: REF
        words = line.replace("(", " ").replace(")", " ").replace(";", " ").replace(",", " ")
        w = words.split()
        out.append(
            HookTiming(
                ref=w[-1],
                wall_ms=float(w[w.index("in") + 1]),
                cpu_ms=float(w[w.index("cpu") + 1]),
                import_ms=float(w[w.index("import") + 1]),
                at=float(w[w.index("at") + 1]),
            )
        )
    return sorted(out, key=lambda h: h.at)


def children_cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system) of the finished children of ``pid`` (None: of this
    process): for the git daemon, every receive-pack, index-pack and hook it served."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Pushed:
    code: int
    seconds: float
    status: str  # of the one remote, as 'ledger push --json' says it
    message: str


def concurrent_pushes(runners: list[Runner]) -> tuple[float, list[Pushed]]:
    """Start ``ledger push`` for every runner at once; (total wall s, each runner's push)."""
    start = time.perf_counter()
    procs = []
    for r in runners:
        p = subprocess.Popen(
            ledger_cmd("push", "--json"),
            env=r.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append((p, time.perf_counter()))
    results = []
    for p, started in procs:
        out, err = p.communicate()
        seconds = time.perf_counter() - started
        try:
            outcome = json.loads(out)["outcomes"][0]
            status, message = str(outcome["status"]), str(outcome.get("message", ""))
        except (ValueError, KeyError, IndexError, TypeError):
            status, message = "no JSON", (out + err).strip()[-400:]
        results.append(Pushed(p.returncode, seconds, status, message))
    return time.perf_counter() - start, results


def server_refs(repo: Path) -> dict[str, str]:
    out = must(
        run(["git", "-C", repo, "for-each-ref", "--format=%(refname) %(objectname)"]), "refs"
    )
    return dict(line.split() for line in out.stdout.splitlines())


def count_records(runners: list[Runner]) -> int:
    """Records on the runners' chains now (``git rev-list --count`` of each main)."""
    return sum(
        int(must(run(["git", "-C", r.path, "rev-list", "--count", "main"]), "count").stdout)
        for r in runners
    )


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def phase_push(runners: list[Runner], daemon: FleetDaemon, hook_log: Path) -> dict[str, Any]:
    print(f"\n1. {len(runners)} runners push at once into one shared remote ({load()})")
    remote = daemon.path("fleet.git")
    assert daemon.proc is not None
    cpu = children_cpu_s(), children_cpu_s(daemon.proc.pid)
    total, results = concurrent_pushes(runners)
    client_cpu = (children_cpu_s() - cpu[0]) / len(runners)
    server_cpu = (children_cpu_s(daemon.proc.pid) - cpu[1]) / len(runners)
    # A runner whose push could not reach the server pushes again later (the background
    # pusher of its next run, or its operator): here at once, and counted.
    unreachable = [r for r, p in zip(runners, results, strict=True) if p.status == "unreachable"]
    retried: list[Pushed] = []
    if unreachable:
        why = next(p.message for p in results if p.status == "unreachable")
        print(f"   {len(unreachable)} push(es) could not reach the server ({why[:200]}); again:")
        _, retried = concurrent_pushes(unreachable)
        again = dict(zip([r.name for r in unreachable], retried, strict=True))
        results = [again.get(r.name, p) for r, p in zip(runners, results, strict=True)]
    bad = [(r.name, p) for r, p in zip(runners, results, strict=True) if p.code]
    refs = server_refs(remote)
    pushed_bytes = pack_bytes(remote)  # before anything else is pushed
    pushed_records = count_records(runners)
    lost = [r.name for r in runners if refs.get(f"refs/ledgers/{r.ledger_id}/main") != r.head]
    timings = read_hook_log(hook_log)
    k = min(10, max(1, len(timings) // 2))
    first, last = timings[:k], timings[-k:]
    pushes = [p.seconds for p in results]
    print(f"   exit codes: {len(runners) - len(bad)} of {len(runners)} zero", end="")
    print(f"; server refs equal to each ledger's head: {len(runners) - len(lost)}")
    for name, p in bad[:3]:
        print(f"   {name}: exit {p.code}, {p.status}: {p.message[:400]}")
    if lost:
        print(f"   LOST (server ref is not the ledger's head): {', '.join(lost[:10])}")
    print(
        f"   total wall time, all pushes: {total:.1f} s; one push (whole process): median "
        f"{med(pushes):.1f} s, max {max(pushes):.1f} s"
    )
    print(
        f"   CPU per push: {client_cpu:.2f} s in the runner's 'ledger push', {server_cpu:.2f} s "
        "on the server (git daemon's children: receive-pack, index-pack, the hooks)"
    )
    print(
        f"   hook check per push ({len(timings)} logged), median of the first {k} / last {k} "
        "to land:"
    )
    for label, attr in (("wall", "wall_ms"), ("cpu", "cpu_ms"), ("import", "import_ms")):
        a = med([getattr(h, attr) for h in first])
        b = med([getattr(h, attr) for h in last])
        print(f"     {label:<6} {a:8.1f} ms / {b:8.1f} ms   ratio last/first {b / a:5.2f}")
    return {
        "ok": not bad and not lost and len(timings) == len(runners),
        "retried": len(retried),
        "pushed_bytes": pushed_bytes,
        "pushed_records": pushed_records,
        "total_s": total,
        "push_s": pushes,
        "cpu_first": med([h.cpu_ms for h in first]),
        "cpu_last": med([h.cpu_ms for h in last]),
        "cpu_all": med([h.cpu_ms for h in timings]),
        "import_all": med([h.import_ms for h in timings]),
        "client_cpu": client_cpu,
        "server_cpu": server_cpu,
    }


# --- phase 2: the auditor --------------------------------------------------------------------


def fleet_cli_available() -> bool:
    return run(ledger_cmd("fleet", "--help")).returncode == 0


def records_in(doc: Any) -> int | None:
    """The records a ``fleet verify --json`` document says it checked (None: not found)."""
    if isinstance(doc, dict):
        ledgers = doc.get("ledgers")
        if isinstance(ledgers, list):
            counts = [x.get("records_checked") for x in ledgers if isinstance(x, dict)]
            if counts and all(isinstance(c, int) for c in counts):
                return sum(counts)
        summary = doc.get("summary")
        if isinstance(summary, dict) and isinstance(summary.get("records_checked"), int):
            return int(summary["records_checked"])
    return None


def fleet_verify(copy: Path, env: dict[str, str], *, fetch: bool) -> tuple[float, int | None]:
    args = ["fleet", "verify", "--json"] + ([] if fetch else ["--no-fetch"])
    seconds, r = timed(lambda: run(ledger_cmd(*args), env=env, cwd=copy))
    must(r, "ledger fleet verify")
    try:
        return seconds, records_in(json.loads(r.stdout))
    except ValueError:
        return seconds, None


def git_verify_loop(remote: Path, runners: list[Runner], sample: int, tmp: Path) -> float:
    """commits/s of stock ``git verify-commit``, one process per commit, over ``sample``
    commits spread over every ledger (an allowed-signers file of every runner's key)."""
    signers = tmp / "allowed_signers"
    lines = []
    for r in runners:
        pub = SigningKey.load(r.key).public_key
        line = allowed_signers_line(r.principal, pub, None, None)
        lines.append(line if line.endswith("\n") else line + "\n")
    signers.write_text("".join(lines))
    per = max(1, sample // len(runners))
    ids: list[str] = []
    for r in runners:
        out = run(["git", "-C", remote, "rev-list", f"--max-count={per}", r.head]).stdout
        ids += out.split()
    ids = ids[:sample]
    env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull)
    cmd = [
        "git",
        "-C",
        str(remote),
        "-c",
        "gpg.format=ssh",
        "-c",
        f"gpg.ssh.allowedSignersFile={signers}",
        "verify-commit",
    ]
    must(run([*cmd, ids[0]], env=env), "git verify-commit")  # warm up
    start = time.perf_counter()
    for oid in ids:
        must(run([*cmd, oid], env=env), f"git verify-commit {oid}")
    return len(ids) / (time.perf_counter() - start)


def phase_auditor(
    base: Path, url: str, runners: list[Runner], args: argparse.Namespace, daemon: FleetDaemon
) -> dict[str, Any]:
    total = count_records(runners)
    print(f"\n2. the auditor: a fresh copy of {len(runners)} ledgers, {total:,} records ({load()})")
    state = base / "auditor-state"
    state.mkdir(mode=0o700)
    env = dict(os.environ, LEDGER_STATE_DIR=str(state))
    copy = base / "audit.git"
    env["LEDGER_FLEET"] = str(copy)
    clone_s, r = timed(lambda: run(ledger_cmd("fleet", "clone", url, copy), env=env))
    must(r, "ledger fleet clone")
    fresh = base / "auditor-state.fresh"
    shutil.copytree(state, fresh)  # the state as the clone left it: nothing verified yet
    runs = [fleet_verify(copy, env, fetch=True)]
    for i in range(1, args.verify_runs):  # again from that state, each in a copy of it
        again = base / f"auditor-state.{i}"
        shutil.copytree(fresh, again)
        runs.append(fleet_verify(copy, dict(env, LEDGER_STATE_DIR=str(again)), fetch=True))
    verify_s, checked = min(runs, key=lambda run: run[0])
    rate = total / verify_s
    git_rate = git_verify_loop(daemon.path("fleet.git"), runners, args.git_sample, base)
    print(
        f"   fleet clone: {clone_s:.1f} s; fleet verify (whole process): {verify_s:.2f} s, "
        f"{rate:,.0f} records/s (records checked as reported: {checked}); best of "
        f"{len(runs)} from the fresh state: {', '.join(f'{s:.2f}' for s, _ in runs)} s"
    )
    print(
        f"   git verify-commit per commit: {git_rate:.1f} commits/s (sample of "
        f"{args.git_sample}); ratio {rate / git_rate:.0f}x  (targets: <= 10 s, >= 5,000/s, "
        ">= 100x)"
    )

    # Incremental: a few runners append 10 records each and push; the auditor fetches.
    movers = runners[: args.incremental_ledgers]
    for m in movers:
        m.head = builders.fast_extend(
            m.path, 10, SigningKey.load(m.key), principal=m.principal, host=m.name, step=STEP
        )
    _, pushed = concurrent_pushes(movers)
    if any(p.code for p in pushed):
        raise SystemExit(f"incremental pushes failed: {pushed}")
    fetch_s, r = timed(lambda: run(ledger_cmd("fleet", "fetch"), env=env, cwd=copy))
    must(r, "ledger fleet fetch")
    inc_s, inc_checked = fleet_verify(copy, env, fetch=False)
    print(
        f"   after {10 * len(movers)} new records on {len(movers)} ledgers: fleet fetch "
        f"{fetch_s:.2f} s, fleet verify {inc_s:.2f} s (records checked: {inc_checked}); "
        f"together {fetch_s + inc_s:.2f} s  (target verify <= 1 s)"
    )

    report = phase_report(base, runners, args, daemon, env, copy)
    return {
        "verify_s": verify_s,
        "rate": rate,
        "git_rate": git_rate,
        "inc_s": inc_s,
        "fetch_s": fetch_s,
        "clone_s": clone_s,
        **report,
    }


def timed_report(copy: Path, env: dict[str, str], out: Path, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        seconds, r = timed(
            lambda: run(
                ledger_cmd("fleet", "report", "--incident", INCIDENT, "--output", out),
                env=dict(env, LEDGER_FLEET=str(copy)),
                cwd=copy,
            )
        )
        must(r, "ledger fleet report")
        best = min(best, seconds)
    return best


def phase_report(
    base: Path,
    runners: list[Runner],
    args: argparse.Namespace,
    daemon: FleetDaemon,
    env: dict[str, str],
    copy: Path,
) -> dict[str, float]:
    """The incident report over the whole fleet, then over a small fleet holding the same
    incident ledgers (a second shared remote on the same server, filled server-side)."""
    big = timed_report(copy, env, base / "report-all.md")
    small_n = min(args.small_fleet, len(runners))
    small_remote = daemon.path("fleet-small.git")
    must(run(["git", "init", "-q", "--bare", small_remote]), "git init")
    refspecs = [
        f"refs/ledgers/{r.ledger_id}/main:refs/ledgers/{r.ledger_id}/main"
        for r in runners[-small_n:]
    ]
    must(
        run(["git", "-C", small_remote, "fetch", "-q", daemon.path("fleet.git"), *refspecs]),
        "git fetch (small fleet)",
    )
    small_copy = base / "audit-small.git"
    small_env = dict(env, LEDGER_FLEET=str(small_copy))
    must(
        run(ledger_cmd("fleet", "clone", daemon.url("fleet-small.git"), small_copy), env=small_env),
        "ledger fleet clone (small)",
    )
    fleet_verify(small_copy, small_env, fetch=False)
    small = timed_report(small_copy, small_env, base / "report-small.md")
    text = (base / "report-all.md").read_text()
    found = sum(1 for r in runners if r.ledger_id in text)
    print(
        f"   fleet report --incident {INCIDENT}: {big:.2f} s with {len(runners)} ledgers, "
        f"{small:.2f} s with {small_n}; ratio {big / small:.2f}  (target < 1 s, flat); "
        f"the report names {found} ledgers"
    )
    return {"report_all_s": big, "report_small_s": small}


# --- phase 3: unit costs for the paper estimate ---------------------------------------------


def pack_bytes(repo: Path) -> int:
    out = must(run(["git", "-C", repo, "count-objects", "-v"]), "count-objects").stdout
    fields = dict(line.split(": ") for line in out.splitlines())
    return (int(fields["size-pack"]) + int(fields["size"])) * 1024


def ls_remote_s(url: str, *extra: str, repeat: int = 5) -> tuple[float, int]:
    """Median seconds of a stock ``git ls-remote`` (``extra``: options and patterns), and the
    bytes it printed."""
    times, size = [], 0
    for _ in range(repeat):
        seconds, r = timed(lambda: run(["git", *extra[:2], "ls-remote", url, *extra[2:]]))
        must(r, "git ls-remote")
        times.append(seconds)
        size = len(r.stdout)
    return med(times), size


def phase_units(
    base: Path, runners: list[Runner], daemon: FleetDaemon, n_refs: int, push: dict[str, Any]
) -> dict[str, float]:
    """``push``: what :func:`phase_push` measured (the shared remote's bytes after it)."""
    print(f"\n3. unit costs for the estimate ({load()})")
    remote = daemon.path("fleet.git")
    pushed, total = push["pushed_bytes"], push["pushed_records"]
    one = runners[0]
    verify_ledger(one.path)  # warm the page cache
    seconds, result = timed(lambda: verify_ledger(one.path))
    per_record_ms = seconds * 1000 / result.records_checked
    print(
        f"   verify, one core, in-process: {per_record_ms:.3f} ms per record "
        f"({result.records_checked:,} records of {one.name})"
    )

    sample = runners[: min(5, len(runners))]
    few = base / "sample.git"
    must(run(["git", "init", "-q", "--bare", few]), "git init")
    refspecs = [f"refs/ledgers/{r.ledger_id}/main:refs/ledgers/{r.ledger_id}/main" for r in sample]
    fetch_s, r = timed(
        lambda: run(["git", "-C", few, "fetch", "-q", daemon.url("fleet.git"), *refspecs])
    )
    must(r, "git fetch")
    few_records = sum(
        int(run(["git", "-C", few, "rev-list", "--count", r.head]).stdout) for r in sample
    )
    fetched = pack_bytes(few)
    must(run(["git", "-C", few, "repack", "-adfq"]), "git repack")
    repacked = pack_bytes(few)
    print(
        f"   packs: {pushed / total:,.0f} bytes per record as pushed ({pushed / 2**20:.1f} MiB "
        f"for {total:,} records); {repacked / few_records:,.0f} bytes per record after "
        f"'git repack -adf' ({len(sample)} ledgers)"
    )
    print(
        f"   stock 'git fetch' of {len(sample)} ledgers over git://: {fetch_s:.1f} s "
        f"({few_records / fetch_s:,.0f} records/s, {fetched / few_records:,.0f} bytes per record)"
    )

    # The ref advertisement: a scratch repository sharing the fleet's objects.
    refs_repo = daemon.path("refs.git")
    must(run(["git", "init", "-q", "--bare", refs_repo]), "git init")
    (refs_repo / "objects" / "info" / "alternates").write_text(str(remote / "objects") + "\n")
    lines = [f"create refs/ledgers/{r.ledger_id}/main {r.head}\n" for r in runners]
    must(
        subprocess.run(
            ["git", "-C", refs_repo, "update-ref", "--stdin"],
            input="".join(lines),
            text=True,
            capture_output=True,
            check=False,
        ),
        "update-ref",
    )
    url = daemon.url("refs.git")
    v0 = ("-c", "protocol.version=0")
    v2 = ("-c", "protocol.version=2")
    few_s, few_b = ls_remote_s(url, *v0)
    extra = n_refs - len(runners)
    fake = [
        f"create refs/ledgers/{i:032x}/main {runners[i % len(runners)].head}\n"
        for i in range(extra)
    ]
    must(
        subprocess.run(
            ["git", "-C", refs_repo, "update-ref", "--stdin"],
            input="".join(fake),
            text=True,
            capture_output=True,
            check=False,
        ),
        "update-ref",
    )
    loose_s, many_b = ls_remote_s(url, *v0)
    must(run(["git", "-C", refs_repo, "pack-refs", "--all"]), "pack-refs")
    packed_s, _ = ls_remote_s(url, *v0)
    v2_s, _ = ls_remote_s(url, *v2, f"refs/ledgers/{runners[0].ledger_id}/main")
    per_ref_us = (packed_s - few_s) / extra * 1e6
    print(
        f"   git ls-remote over git://, protocol v0: {len(runners)} refs {few_s * 1000:.0f} ms "
        f"({few_b:,} bytes); {n_refs:,} refs loose {loose_s * 1000:.0f} ms, packed "
        f"{packed_s * 1000:.0f} ms ({many_b:,} bytes): {per_ref_us:.1f} us and "
        f"{(many_b - few_b) / extra:.0f} bytes per ref"
    )
    print(
        f"   protocol v2 asking for one ledger's ref among {n_refs:,} packed: {v2_s * 1000:.0f} ms"
    )
    return {
        "verify_ms": per_record_ms,
        "bytes_pushed": pushed / total,
        "bytes_repacked": repacked / few_records,
        "fetch_rate": few_records / fetch_s,
        "ref_us": per_ref_us,
        "ref_bytes": (many_b - few_b) / extra,
    }


# --- main --------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runners", type=int, default=50)
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--incident-ledgers", type=int, default=3)
    ap.add_argument("--incremental-ledgers", type=int, default=5)
    ap.add_argument("--small-fleet", type=int, default=10)
    ap.add_argument("--git-sample", type=int, default=100)
    ap.add_argument(
        "--verify-runs", type=int, default=3, help="fleet verify runs from the fresh state"
    )
    ap.add_argument("--refs", type=int, default=5000)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="build processes")
    ap.add_argument("--keep", type=Path, help="build in DIR (must not exist) and leave it")
    args = ap.parse_args()
    # Every push starts Python twice (the runner's 'ledger push', the server's hook): with no
    # byte-code cache each would compile the package again. A real install has its cache;
    # make sure this one has too, written once before 100 processes need it.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    compileall.compile_dir(Path(ledger.__file__).parent, quiet=1)
    if args.keep:
        args.keep.mkdir(parents=True)
        base = args.keep.resolve()
    else:
        base = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    began = time.perf_counter()
    hook_log = base / "hook-timing.log"
    srv = base / "srv"
    srv.mkdir()
    must(run(ledger_cmd("remote", "init", srv / "fleet.git", "--shared")), "remote init")
    daemon = FleetDaemon(srv, env=dict(os.environ, LEDGER_HOOK_TIMING=str(hook_log)))
    daemon.start()
    try:
        url = daemon.url("fleet.git")
        print(
            f"bench_fleet: {args.runners} runners x {args.records:,} records, in {base} "
            f"({os.cpu_count()} cores, {load()})"
        )
        seconds, runners = timed(
            lambda: build_fleet(base, args.runners, args.records, url, args.jobs)
        )
        print(
            f"built {args.runners} ledgers in {seconds:.0f} s (fast builder, {args.jobs} processes)"
        )
        t = time.perf_counter()
        incident_runs(base, runners[-args.incident_ledgers :])
        seconds = time.perf_counter() - t
        print(
            f"ran a runbook with --incident {INCIDENT} on {args.incident_ledgers} of them "
            f"in {seconds:.0f} s"
        )
        push = phase_push(runners, daemon, hook_log)
        if not push["ok"]:
            raise SystemExit("the concurrent pushes lost or refused something (above)")
        if fleet_cli_available():
            phase_auditor(base, url, runners, args, daemon)
        else:
            print(
                "\n2. skipped: 'ledger fleet --help' fails (the auditor side is not built "
                "in this tree)"
            )
        phase_units(base, runners, daemon, args.refs, push)
    finally:
        daemon.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print(f"\nbench_fleet done in {time.perf_counter() - began:.0f} s ({load()})")


if __name__ == "__main__":
    main()
