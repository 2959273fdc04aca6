"""Sweeps: a params file's grid measured point by point into a results directory, resumable, with a
max-throughput batch search, serially or on Ray. This is the face the command line and the notebooks use;
docs/sweeps.md says what a sweep does and in what order, docs/scaling.md how it runs on Ray.

Inside: planning (params to searches, what is stored), units (a unit's resource and its jobs), writer (the
one writer of a results directory), driver (run_sweep), ray_runner and isolation (Ray), search (the batch
search) and budget (time estimates).
"""

from perfkit.sweep.driver import SweepOutcome, require_ray, run_sweep
from perfkit.sweep.planning import Plan, as_params, plan, select

__all__ = ["Plan", "SweepOutcome", "as_params", "plan", "require_ray", "run_sweep", "select"]
