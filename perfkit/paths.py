"""Where perfkit reads and writes by default: the project's root, the reports folder and the results
directories. Relative defaults are relative to where a command runs (a notebook works from the project's
root, project_root()).
"""

from __future__ import annotations

import os

# The checkout the perfkit package was installed from, where it was (its notebooks, its git commit): not
# necessarily the project a command or notebook works in (perfkit installed from a wheel or another checkout).
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_REPORTS = "reports"
DEFAULT_RESULTS = "results"


def project_root(start: str | None = None) -> str | None:
    """The project a notebook works in: the nearest folder at or above `start` (default: the working
    directory) that holds both params/ and notebooks/; None where no folder above it does."""
    here = os.path.abspath(start or os.getcwd())
    while True:
        if all(os.path.isdir(os.path.join(here, sub)) for sub in ("params", "notebooks")):
            return here
        up = os.path.dirname(here)
        if up == here:
            return None
        here = up


def default_out_dir(name: str) -> str:
    """The results directory of a sweep named `name` (its params file's name:) when no --out is given."""
    return os.path.join(DEFAULT_RESULTS, name)
