"""perfkit: measure LLM inference (prompt and token phases) and compare two systems honestly.

The measuring core imports only torch, transformers, numpy, pandas, pyarrow, PyYAML and tqdm; notebook
and plotting machinery live elsewhere and are never imported from here.
"""

__version__ = "0.1.0"


def load_results(path):
    """Every measured point under `path` as a pandas DataFrame (see perfkit.results). Files that fail their
    checks are left out and listed, with why, in `df.attrs["skipped_files"]`."""
    from perfkit.results import load_results as _load

    return _load(path)


def summarize(df):
    """The study's headline tables (ttft, prefill_max, single_user, multi_user_max, oom) of a results
    DataFrame or path, as a dict of pandas DataFrames (see perfkit.summary)."""
    from perfkit.summary import summarize as _summarize

    return _summarize(df)
