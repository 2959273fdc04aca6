"""The single writer of a results directory during a sweep: it takes the units' events (from this process,
or a Ray worker's by way of the driver), stores each job's rows atomically under their keys, writes the
run record, counts what happened and moves the progress bar. See docs/results.md.
"""

from __future__ import annotations

import sys

from perfkit import results as store
from perfkit.errors import printable
from perfkit.params import SweepParams
from perfkit.sweep.search import BatchSearch
from perfkit.sweep.units import Acquired, Judged, LoadMeasured, Status, Waits


class SweepWriter:
    def __init__(self, params: SweepParams, out_dir: str, envs: dict[str, dict], run_id: str, bar, builds: list):
        self.params, self.out_dir, self.envs, self.run_id, self.bar = params, out_dir, envs, run_id, bar
        self.builds = builds  # the sweep's every build, shared with its budget
        self.run_written = False
        self.run_extra: dict = {}  # more for the run record (a Ray sweep: the cluster and its workers)
        self.stopped = False  # some job was left out because it would not have fit the time budget
        self.measured, self.failures, self.ooms, self.loads = 0, [], [], 0
        self.lost: list[str] = []  # units a Ray sweep gave up on (their worker died more often than retried)

    def handle(self, event, searches: list[BatchSearch], remote: bool = False) -> None:
        """Act on one event of a unit whose searches are `searches`. `remote`: the event comes from another
        process (a Ray worker), whose judging these copies of the searches repeat, and whose builds count
        here."""
        if isinstance(event, Status):
            self.bar.set_postfix_str(printable(event.text), refresh=event.text.startswith("building"))
        elif isinstance(event, Acquired):
            if remote:
                self.builds.append(event.record)
        elif isinstance(event, Waits):
            self.stopped = True
        elif isinstance(event, LoadMeasured):
            self.write_load(event.row)
        elif isinstance(event, Judged):
            search = searches[event.search]
            if remote:
                search.judge(event.rows)  # the worker's rule on the same rows: the same annotations, the same state
            if event.fresh:
                self.write(event.rows)
            self._advance_bar(search)

    def write(self, rows: dict[int, dict]) -> None:
        """Store one job's rows, each atomically under its key (perfkit.results.write_point)."""
        if not self.run_written:
            self.write_run()
        for row in rows.values():
            store.write_point(self.out_dir, row)
            self.measured += 1
            if row["status"] == "error":
                self.failures.append(row)
            elif row["status"] == "oom":
                self.ooms.append(row)

    def write_load(self, row: dict) -> None:
        """Store one load level's row (perfkit.loads), atomically under its key."""
        from perfkit.loads import write_load

        if not self.run_written:
            self.write_run()
        write_load(self.out_dir, row)
        self.loads += 1
        if row["status"] != "ok":
            self.failures.append(row)

    def write_run(self) -> None:
        """The run record (written before the first point, again where run_extra grew)."""
        env = next(iter(self.envs.values()))
        prov = {**env, "run_id": self.run_id, "command": sys.argv, "sweep": self.params.as_dict(),
                "environments": self.envs, **self.run_extra}
        store.write_run(self.out_dir, self.run_id, prov)
        self.run_written = True

    def _advance_bar(self, search: BatchSearch) -> None:
        self.bar.update(1)
        if search.finished() and search.next_index < len(search.batches):  # stopped early: fewer runs left
            self.bar.total -= len(search.batches) - search.next_index
            self.bar.refresh()
