"""The percentile bootstrap's draws, in one place: every interval of perfkit resamples raw repeats this way.

A generator is seeded per (seed, key), so an interval depends on its own key only, never on what else was
computed first or in which order: a report rebuilt from the same results shows the same intervals.
"""

from __future__ import annotations

import zlib

import numpy as np


def rng_for(seed: int, *key) -> np.random.Generator:
    """The generator of one quantity: `key` names it (metric, side, workload...); crc32, not hash(), so the
    stream is the same in every process."""
    return np.random.default_rng([seed, zlib.crc32(repr(key).encode())])


def boot_indices(n: int, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """(n_boot, n) indices into n repeats, drawn with replacement: one row per bootstrap draw. Kept as
    indices where several metrics of a repeat must be resampled together (perfkit.slo)."""
    return rng.integers(0, n, size=(n_boot, n))


def boot_medians(x: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """The median of each of n_boot resamples of the repeats `x`."""
    return np.median(x[boot_indices(x.size, rng, n_boot)], axis=1)
