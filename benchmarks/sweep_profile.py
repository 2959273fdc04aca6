"""Where a sweep's wall time goes: timed regions, warm-up, model building, and everything else.

    .venv/bin/python benchmarks/sweep_profile.py [PARAMS.yaml]     (default: params/smoke.yaml)

Runs the sweep into a fresh temporary directory and prints, from the stored rows and the sweep's own
build timings: the fraction of wall time spent inside timed regions (the sum of every repeat's e2e, the
only time that becomes a measurement), in warm-up runs, in backend set-up, in building models, and the
rest (planning, provenance, writing points, freeing memory). A figure, not a pass/fail test.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from perfkit.paths import PROJECT_ROOT


def main(argv: list[str]) -> int:
    t_import = time.perf_counter()
    from perfkit.results import load_results
    from perfkit.sweep import run_sweep

    import_s = time.perf_counter() - t_import
    params = argv[0] if argv else os.path.join(PROJECT_ROOT, "params", "smoke.yaml")
    with tempfile.TemporaryDirectory(prefix="sweep-profile-") as out_dir:
        outcome = run_sweep(params, out_dir=out_dir, progress=False)
        df = load_results(out_dir)
    measured = df[(df["status"] == "ok") & df["derived_from_output_len"].isna()]
    timed_s = sum(sum(samples) for samples in measured["e2e_ms_samples"]) / 1e3
    warmup_s = measured["warmup_ms"].sum() / 1e3
    setup_s = measured["setup_ms"].sum() / 1e3
    build_s = sum(b["seconds"] for b in outcome.build_s)
    wall_s = outcome.wall_s
    other_s = wall_s - timed_s - warmup_s - setup_s - build_s

    print(f"sweep {params}: {len(df)} points ({len(measured)} measured runs), {len(outcome.build_s)} model builds")
    print(f"  import perfkit.sweep   {import_s:8.2f} s   (before the sweep; not in its wall time)")
    print(f"  sweep wall time        {wall_s:8.2f} s   100.0%")
    for label, seconds in (("inside timed regions", timed_s), ("warm-up runs", warmup_s),
                           ("backend set-up", setup_s), ("model building", build_s), ("everything else", other_s)):
        print(f"  {label:<22} {seconds:8.2f} s   {100 * seconds / wall_s:5.1f}%")
    for b in outcome.build_s:
        print(f"    build {b['system']} {b['model']}: {b['seconds']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
