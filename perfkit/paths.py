"""Where perfkit reads and writes by default: the project's checkout, the reports folder and the results
directories. Relative defaults are relative to where a command runs (a notebook works from PROJECT_ROOT).
"""

from __future__ import annotations

import os

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # holds params/ and notebooks/
DEFAULT_REPORTS = "reports"
DEFAULT_RESULTS = "results"


def default_out_dir(name: str) -> str:
    """The results directory of a sweep named `name` (its params file's name:) when no --out is given."""
    return os.path.join(DEFAULT_RESULTS, name)
