"""What every notebook does first: work from the project's root.

A notebook's kernel starts where the notebook is (notebooks/) under JupyterLab, and where the command ran
under `perfkit publish`. Changing to the project's root in the first cell, the folder above that holds
params/ and notebooks/ (perfkit.paths.project_root, wherever the perfkit package is installed from), makes
a relative path such as "results/demo" mean the same folder everywhere; `perfkit publish` hands notebooks
paths relative to that root, or absolute ones.
"""

from __future__ import annotations

import os

from perfkit.paths import project_root


def work_from_project_root() -> None:
    """chdir to the project's root: the nearest folder at or above the working directory that holds params/
    and notebooks/ (none: stay). Returns nothing, so the cell shows nothing (a report must not print the
    machine's paths)."""
    root = project_root()
    if root:
        os.chdir(root)
