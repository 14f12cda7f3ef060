"""Benchmark: validating large runbooks (``ledger validate``, ``load_runbook``).

Writes a runbook of --steps steps (close to the 1 MiB limit at 16,000), each with a templated
command, and one ten times smaller, then prints in one run:

- the whole process, ``python -m ledger validate BIG``, with the code of --baseline (a git
  revision, default ``main``, exported to a temporary directory; ``--baseline ''`` skips
  it) and with this tree: best wall time and CPU time of the child over --repeat runs;
- this tree's phases in process (best CPU time): composing the YAML with libyaml and with
  the pure-Python composer, the schema's quick check and jsonschema, the semantic checks;
- the ratio of the two sizes (about 10 when validation is linear in the number of steps);
- the target line: ``ledger validate`` of the big runbook in at most 2 s wall.

On a loaded machine wall time follows the load; the CPU time of the child is the steadier
figure.

Usage: python bench/bench_validate.py [--steps 16000] [--repeat 3] [--baseline main]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ledger.runbook import check as semantic
from ledger.runbook import load_runbook, schema, yamlsrc
from ledger.runbook.problems import FieldPath, Locator

REPO = Path(__file__).resolve().parent.parent
TARGET_S = 2.0


def write_runbook(path: Path, steps: int) -> int:
    lines = ["name: big", "parameters:", "  svc:", "    default: api", "steps:"]
    for i in range(steps):
        lines.append(f"  - name: s{i}\n    run: echo {{{{ params.svc }}}} {i}")
    text = "\n".join(lines) + "\n"
    path.write_text(text, encoding="utf-8")
    return len(text.encode("utf-8"))


def best_cpu(action: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        action()
        best = min(best, time.process_time() - start)
    return best


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def whole_process(code_dir: Path, book: Path, repeat: int) -> tuple[float, float]:
    """Best wall and best CPU time of ``python -m ledger validate BOOK`` run from code_dir
    (in the book's directory: the current directory comes first on a child's path)."""
    env = {**os.environ, "PYTHONPATH": str(code_dir)}
    where = subprocess.run(
        [sys.executable, "-c", "import ledger; print(ledger.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=book.parent,
    ).stdout
    if not Path(where.strip()).is_relative_to(code_dir):
        raise SystemExit(f"PYTHONPATH={code_dir} imports ledger from {where.strip()}")
    walls, cpus = [], []
    for _ in range(repeat):
        cpu_before, start = children_cpu(), time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "ledger", "validate", str(book)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            cwd=book.parent,
        )
        walls.append(time.perf_counter() - start)
        cpus.append(children_cpu() - cpu_before)
        if proc.returncode != 0:
            raise SystemExit(f"ledger validate failed ({code_dir}):\n{proc.stdout}{proc.stderr}")
    return min(walls), min(cpus)


def export(revision: str, into: Path) -> Path:
    """The package as it is at ``revision``, without touching the repository's work trees."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", revision, "ledger"],
        capture_output=True,
        check=True,
    ).stdout
    into.mkdir()
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def phases(book: Path, repeat: int) -> list[tuple[str, float]]:
    text = yamlsrc.decode(book.read_bytes(), str(book))
    data, locs = yamlsrc.compose(text, str(book))
    where = Locator(str(book), locs)

    def problems(quick: bool) -> None:
        bad: list[FieldPath] = []
        if quick:
            assert not schema.schema_problems(data, where, bad)
        else:
            assert not list(schema._validator().iter_errors(data))

    return [
        ("compose, libyaml", best_cpu(lambda: yamlsrc.compose(text, "b"), repeat)),
        ("compose, pure Python", best_cpu(lambda: yamlsrc.compose(text, "b", libyaml=False), 1)),
        ("schema, quick check", best_cpu(lambda: problems(True), repeat)),
        ("schema, jsonschema", best_cpu(lambda: problems(False), 1)),
        ("semantic checks", best_cpu(lambda: semantic.build(data, where, []), repeat)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=16000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", default="main", help="git revision to compare with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        big, small = Path(tmp) / "big.yaml", Path(tmp) / "small.yaml"
        big_bytes = write_runbook(big, args.steps)
        write_runbook(small, args.steps // 10)
        print(f"ledger validate, {args.steps} steps ({big_bytes} bytes), whole process:")
        if args.baseline:
            base_dir = export(args.baseline, Path(tmp) / "baseline")
            wall, cpu = whole_process(base_dir, big, 1)
            print(f"  before ({args.baseline}): {wall:6.2f} s wall {cpu:6.2f} s CPU")
        wall, cpu = whole_process(REPO, big, args.repeat)
        print(f"  after (this tree): {wall:6.2f} s wall {cpu:6.2f} s CPU")
        print(f"phases in process, {args.steps} steps (CPU):")
        for name, seconds in phases(big, args.repeat):
            print(f"  {name:<22} {seconds:6.3f} s")
        t_small = best_cpu(lambda: load_runbook(small), args.repeat)
        t_big = best_cpu(lambda: load_runbook(big), args.repeat)
    n_small = args.steps // 10
    print(f"load_runbook (CPU): {n_small} steps {t_small:.3f} s, {args.steps} steps {t_big:.3f} s")
    print(f"ratio {args.steps} vs {n_small} steps: {t_big / t_small:.1f} (linear: ~10)")
    verdict = "met" if wall <= TARGET_S else "NOT met"
    print(
        f"target: ledger validate of {args.steps} steps in <= {TARGET_S:.0f} s wall: {verdict} "
        f"({wall:.2f} s wall, {cpu:.2f} s CPU)"
    )


if __name__ == "__main__":
    main()
