"""Reading a ledger's runs through the tree: a run's records (its directory), the run ids by
start date (the date shards), the runs of an incident (the incident index) and the runs
without ``run.finished``, without scanning history.

:class:`RunReads` is part of :class:`ledger.store.Ledger`, a mixin over
:class:`~ledger.store.reads.Reads`. Like every read, each one not given a commit to read at
(``at``) reads at the head of the verified view (:meth:`Reads.verified_head`).
"""

from __future__ import annotations

from datetime import datetime

from ledger.format import records
from ledger.store import reads, types


class RunReads(reads.Reads):
    """Runs and incidents, looked up in the tree of the verified head (or of ``at``)."""

    def run_dir(self, run_id: str) -> str:
        return records.record_dir(records.KIND_RUN_STARTED, 0, records.check_run_id(run_id), "")

    def run_records(
        self, run_id: str, *, at: str | None = None, signed: bool = False
    ) -> list[types.StoredRecord]:
        """All records of one run, in seq order, found through the tree (no history scan)
        of commit ``at`` (default: the verified head); ``signed`` as :meth:`commit_for_seq`."""
        at = self.verified_head(at)
        directory = self.run_dir(run_id)
        tree = self._tree_at(directory, at)
        if tree is None:
            return []
        names = sorted(e.name for e in tree if e.name and e.name.endswith(".json"))
        return [self.record(int(name.split("-", 1)[0]), at=at, signed=signed) for name in names]

    def usable_run_records(self, run_id: str, *, at: str | None = None) -> list[types.StoredRecord]:
        """:meth:`run_records` for a decision: on a chain read with :attr:`allow_unverified`
        that does not verify, without the records a finding names (a record that fails any
        check has no effect, as in the verifier's trust replay)."""
        at = self.verified_head(at)
        failed = self._view.failed_seqs() if self._view is not None else frozenset()
        return [r for r in self.run_records(run_id, at=at) if r.seq not in failed]

    def run_file_names(self, run_id: str, *, at: str | None = None) -> list[str]:
        """The record files of one run (``SEQ-KIND.json``), in seq order, from the tree."""
        tree = self._tree_at(self.run_dir(run_id), at)
        return sorted(e.name for e in tree or [] if e.name and e.name.endswith(".json"))

    def run_ids(
        self, since: datetime | None = None, until: datetime | None = None, *, at: str | None = None
    ) -> list[str]:
        """Run ids whose start date lies in [since, until] (by the date shards)."""
        at = self.verified_head(at)
        root = self._tree_at(records.RUNS_DIR, at)
        if root is None:
            return []
        lo = records.date_digits(since) if since else "00000000"
        hi = records.date_digits(until) if until else "99999999"
        out: list[str] = []
        for year in sorted(e.name or "" for e in root):
            if year < lo[:4] or year > hi[:4]:
                continue
            ytree = self._tree_at(f"{records.RUNS_DIR}/{year}", at)
            for month in sorted(e.name or "" for e in ytree or []):
                if f"{year}{month}" < lo[:6] or f"{year}{month}" > hi[:6]:
                    continue
                mtree = self._tree_at(f"{records.RUNS_DIR}/{year}/{month}", at)
                for day in sorted(e.name or "" for e in mtree or []):
                    if not lo <= f"{year}{month}{day}" <= hi:
                        continue
                    dtree = self._tree_at(f"{records.RUNS_DIR}/{year}/{month}/{day}", at)
                    out.extend(sorted(e.name or "" for e in dtree or []))
        return out

    def runs_for_incident(self, incident: str, *, at: str | None = None) -> list[str]:
        """Run ids recorded for ``incident`` (from the tree's incident index)."""
        directory = f"{records.INCIDENTS_DIR}/{records.check_incident(incident)}"
        tree = self._tree_at(directory, at)
        if tree is None:
            return []
        return sorted(e.name or "" for e in tree)

    def unfinished_runs(self, *, at: str | None = None) -> list[str]:
        """Runs with a run.started record and no run.finished record."""
        at = self.verified_head(at)
        out = []
        for run_id in self.run_ids(at=at):
            tree = self._tree_at(self.run_dir(run_id), at)
            names = [e.name or "" for e in tree or []]
            if not any(n.endswith("-run.finished.json") for n in names):
                out.append(run_id)
        return out
