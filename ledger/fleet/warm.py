"""Starting ``ledger fleet verify``'s worker processes before the verifier is loaded.

The fleet's workers come from the verifier's forkserver (:mod:`ledger.verify.warmup`), which
imports the verifier and :mod:`ledger.fleet.schedule` once (about a quarter of a second).
:func:`start_early` starts it at the very start of the command, so that those imports
overlap the command's own, its fetch and its planning. It is decided from file names and
sizes alone (this module is light to import) and only for what looks like the auditor's first
verification of a large copy: packs that could hold IN_PROCESS_BELOW records, and no ledger of
the copy verified before (a later verification reads only what is new, and seldom needs
workers). Both are hints: they decide nothing the verification reports.

Where the auditor's state of a copy lives (:func:`state_dir`) is defined here, for the same
reason; :mod:`ledger.fleet.state` reads and writes it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ledger.verify import home, warmup

#: Fewer records than this in all (as the heads' trailers claim) are verified in the calling
#: process: starting worker processes costs more than they would save.
IN_PROCESS_BELOW = 2000
#: Bytes a record takes in a copy's packs, about: :func:`start_early`'s hint
#: (bench/bench_fleet.py measures 930 repacked and 2,000 as fetched; so the server may also
#: start for a copy of fewer records than IN_PROCESS_BELOW: its imports, on another core).
PACK_BYTES = 1024
#: What the workers' server imports before forking workers.
PRELOAD = [*warmup.PRELOAD, "ledger.fleet.schedule"]
FLEETS_DIR = "fleets"
LEDGERS_DIR = "ledgers"


def state_dir(copy: Path | str) -> Path:
    """The auditor's state directory of the fleet copy at ``copy`` (not created here)."""
    key = hashlib.sha256(str(Path(copy).resolve()).encode()).hexdigest()
    return home.state_root() / FLEETS_DIR / key


def start_early(path: Path, jobs: int | None, *, full: bool = False) -> None:
    """Start the workers' server now when ``jobs`` allows workers, the copy's packs could
    hold IN_PROCESS_BELOW records (PACK_BYTES each) and no ledger of it was verified before
    (or ``full``: every record is read again)."""
    if not warmup.workers_allowed(jobs):
        return
    try:
        if not full and any(state_dir(path).joinpath(LEDGERS_DIR).glob("*.json")):
            return
        with os.scandir(Path(path) / "objects" / "pack") as entries:
            packed = sum(e.stat().st_size for e in entries if e.name.endswith(".pack"))
    except OSError:
        return
    if packed >= IN_PROCESS_BELOW * PACK_BYTES:
        warmup.start_server(PRELOAD)
