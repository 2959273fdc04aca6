"""The max-throughput batch search of one (system, model, input length): its state and its rule.

For each (system, model, I, O) the batch sizes of the grid are tried in ascending order; the search stops
at the first batch that runs out of memory (`oom`), or whose multi-user throughput B·O/e2e gains less than
`min_gain` over the previous batch for `patience` batches in a row (`plateau`), or at the grid's end
(`grid_end`). A plateau is believed only when both batches were measured quietly (e2e IQR/median within
perfkit.metrics.NOISY_IQR_FRACTION): a gain read through noise as a loss takes the search one batch further
rather than ending it too soon, and a search that then reaches the grid's end says `grid_end_noisy`.

The sweep (perfkit.sweep) runs the searches; this module only judges the rows a batch produced.
"""

from __future__ import annotations

import dataclasses

from perfkit.metrics import NOISY_IQR_FRACTION
from perfkit.registry import checkpoint_fingerprint
from perfkit.workload import System


@dataclasses.dataclass(frozen=True)
class SearchSpec:
    """One batch search: (system, model, I) run at `run_output_len`, yielding rows for `output_lens`."""

    system: System
    model: str
    input_len: int
    run_output_len: int
    output_lens: tuple[int, ...]
    checkpoint: str | None = None  # a checkpoint directory's fingerprint (perfkit.registry.checkpoint_fingerprint)


@dataclasses.dataclass(frozen=True)
class BatchRun:
    """One measured run: a spec at one batch size, yielding the rows of the output lengths still searched."""

    spec: SearchSpec
    batch: int
    output_lens: tuple[int, ...]


def _quiet(row: dict) -> bool:
    """Whether a row's e2e samples spread (IQR) within metrics.NOISY_IQR_FRACTION of their median."""
    iqr, median = row.get("e2e_iqr_ms"), row.get("e2e_ms")
    if iqr is None or not median or iqr != iqr:  # a single repeat, or spread unknown: nothing to doubt it by
        return True
    return iqr / median <= NOISY_IQR_FRACTION


class BatchSearch:
    """The state of one spec's batch search; `judge` annotates a job's rows and advances it."""

    def __init__(self, spec: SearchSpec, batches: tuple[int, ...], min_gain: float | None, patience: int = 1):
        self.spec, self.batches, self.min_gain, self.patience = spec, batches, min_gain, patience
        self.stalls: dict[int, int] = {o: 0 for o in spec.output_lens}  # believed non-gains in a row
        self.next_index = 0  # index of the next batch to run
        # per output length: the last measured throughput (tok/s) and whether its e2e was quiet
        self.prev_tok_s: dict[int, tuple[float, bool] | None] = {o: None for o in spec.output_lens}
        self.stop: dict[int, str] = {}
        self.doubted: set[int] = set()  # output lengths where a plateau was not believed for noise
        self.history: list[tuple[int, int]] = []  # (batch, output_len) judged so far

    def live(self) -> tuple[int, ...]:
        return tuple(o for o in self.spec.output_lens if o not in self.stop)

    def finished(self) -> bool:
        return self.next_index >= len(self.batches) or not self.live()

    def next_job(self) -> BatchRun:
        return BatchRun(self.spec, self.batches[self.next_index], self.live())

    def remaining(self) -> int:
        return 0 if self.finished() else len(self.batches) - self.next_index

    def judge(self, rows: dict[int, dict]) -> None:
        last = self.next_index == len(self.batches) - 1
        for o, row in rows.items():
            gain, stop = float("nan"), ""
            if row["status"] == "oom":
                stop = "oom"
            elif row["status"] == "ok":
                tok_s, (prev, prev_quiet) = row["output_tok_s"], self.prev_tok_s[o] or (None, True)
                if prev:
                    gain = tok_s / prev - 1
                    # A plateau is only believed when both throughputs were measured quietly: with an e2e
                    # spread of 10 % a real gain of several % can read as a loss, and stopping on it would
                    # report too small a max. A noisy step takes the next batch instead (its row's `noisy`
                    # and `search_gain` show why); on a GPU the spread is ~1 % and this never triggers.
                    if self.min_gain is not None and gain < self.min_gain:
                        if prev_quiet and _quiet(row):
                            self.stalls[o] += 1
                            if self.stalls[o] >= self.patience:
                                stop = "plateau"
                        else:  # doubted: neither a plateau nor part of a row of them
                            self.doubted.add(o)
                            self.stalls[o] = 0
                    else:
                        # a gain: throughput still rises with the batch, and a clear one settles any doubt
                        # about an earlier noisy step (the search did not stop too soon there)
                        self.stalls[o] = 0
                        if _quiet(row):
                            self.doubted.discard(o)
                self.prev_tok_s[o] = (tok_s, _quiet(row))
            # an `error` row neither stops the search nor moves its reference: the next batch is compared
            # with the last batch that measured
            if not stop and last:
                # the grid ran out; if a plateau was passed over for noise on the way, say so: the search
                # may have been done before the grid was
                stop = "grid_end_noisy" if o in self.doubted else "grid_end"
            row["search_gain"], row["search_stop"] = gain, stop
            if stop:
                self.stop[o] = stop
            self.history.append((self.batches[self.next_index], o))
        self.next_index += 1


def search_specs(params, systems: list[System]) -> list[SearchSpec]:
    """Every batch search of a params file's grid for these systems, in the grid's order."""
    return list(iter_search_specs(params, systems))


def iter_search_specs(params, systems: list[System]):
    """search_specs one at a time: a dry run of a huge grid lists its first few without making them all.
    Each checkpoint directory's fingerprint is read once, when the first spec is asked for."""
    checkpoints = {model: checkpoint_fingerprint(model) for model in params.models}
    for system in systems:
        for model in params.models:
            ckpt = checkpoints[model]
            for input_len in params.input_lens:
                outs = params.output_lens_for(model, input_len)  # beyond-context points are skipped here
                if not outs:
                    continue
                if params.derive_output_lens:
                    yield SearchSpec(system, model, input_len, max(outs), outs, ckpt)
                else:
                    yield from (SearchSpec(system, model, input_len, o, (o,), ckpt) for o in outs)
