"""What every notebook does first: work from the project's root.

A notebook's kernel starts where the notebook is (notebooks/) under JupyterLab, and where papermill was
told under `perfkit publish`. Changing to the project's root in the first cell makes a relative path such
as "results/demo" mean the same folder everywhere; `perfkit publish` hands notebooks absolute paths.
"""

from __future__ import annotations

import os

from perfkit.paths import PROJECT_ROOT


def work_from_project_root() -> None:
    """chdir to the folder that holds params/ and notebooks/ (perfkit's checkout). Returns nothing, so the
    cell shows nothing (a report must not print the machine's paths)."""
    if os.path.isdir(os.path.join(PROJECT_ROOT, "notebooks")):
        os.chdir(PROJECT_ROOT)
