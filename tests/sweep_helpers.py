"""Small params files for sweep tests: tiny models, tiny grids, CPU."""

from __future__ import annotations

import yaml

CPU = {"label": "cpu", "backend": "hf-loop", "dtype": "float32", "device": "cpu", "attn_implementation": "sdpa"}


def params_dict(**overrides) -> dict:
    d = {
        "name": "t",
        "models": ["tiny-llama2-13b"],
        "systems": [dict(CPU)],
        "grid": {"input_lens": [16], "output_lens": [4], "batch_sizes": [1, 2, 4]},
        "warmup": 1,
        "repeats": 2,
        "seed": 0,
        "search": {"min_gain": None},  # never stop on a plateau: the points measured are deterministic
        "derive_output_lens": False,
    }
    d.update(overrides)
    return d


def write_params(path, **overrides) -> str:
    path = str(path)
    with open(path, "w") as f:
        yaml.safe_dump(params_dict(**overrides), f, sort_keys=False)
    return path

