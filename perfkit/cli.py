"""perfkit's one command line: every subcommand, its flags and its checks, wired to the core.

    perfkit models | env | run | sweep | probe | summary | compare     the measuring core (no notebooks)
    perfkit publish sweep | report | compare | all | index              notebooks -> HTML (perfkit.report)

`--out` is always a results directory; HTML reports go to `--reports` (default reports/).
Bad input is one line on stderr naming what is wrong and what was expected, exit code 2, no traceback,
nothing written. Domain modules hold no argparse; what a command prints is rendered by perfkit.console.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import sys

from perfkit.errors import UsageError, one_line, printable, shown
from perfkit.paths import DEFAULT_REPORTS

MAX_N_BOOT = 100_000  # beyond this the intervals do not move, and memory grows with draws × repeats


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; we promise one line, of bounded length
        message = " ".join(message.split())
        raise UsageError(f"{self.prog}: {message if len(message) <= 300 else message[:297] + '...'}")


# ---- argument types --------------------------------------------------------------------------------

def _int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:  # also an integer of more digits than Python converts (4,300)
        raise argparse.ArgumentTypeError(f"expected an integer, got {shown(text, 40)}") from None
    if abs(value) >= 2**63:  # beyond every bound a flag has: refused here, so no message shows 1,000 digits
        raise argparse.ArgumentTypeError(f"expected an integer of at most 19 digits, got {shown(text, 40)}")
    return value


def _positive_minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of minutes, got {text[:40]!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a positive number of minutes, got {text[:40]!r}")
    return value


# ---- perfkit models / env ------------------------------------------------------------------------

def _cmd_models(args) -> int:
    from perfkit.console import print_json
    from perfkit.models import REGISTRY, describe

    rows = [describe(name) for name in REGISTRY]
    if args.json:
        print_json(rows)
        return 0
    print(f"{'name':<18}{'params':>10}{'layers':>8}{'hidden':>8}{'heads':>7}{'kv':>5}{'vocab':>9}{'context':>9}")
    for r in rows:
        print(f"{r['name']:<18}{r['params'] / 1e9:>9.2f}B{r['layers']:>8}{r['hidden']:>8}{r['heads']:>7}"
              f"{r['kv_heads']:>5}{r['vocab']:>9}{r['context']:>9}")
    return 0


def _cmd_env(args) -> int:
    from perfkit.console import print_json
    from perfkit.provenance import environment

    env = environment()
    if args.json:
        print_json(env)
    else:
        for k, v in env.items():
            print(f"{k:<22}{printable(v)}")
    return 0


# ---- perfkit run ---------------------------------------------------------------------------------

class _OutOfMemory(Exception):
    """A command ran out of memory (device or host): main prints one line and exits 1."""


@contextlib.contextmanager
def _out_of_memory_exits(where: str):
    """Out of memory (torch's, the host allocator's RuntimeError, Python's MemoryError) as one line, not a
    traceback: perfkit.measure.is_out_of_memory decides, as it does for a sweep's `oom` rows."""
    from perfkit.measure import is_out_of_memory

    try:
        yield
    except Exception as exc:  # anything else propagates unchanged
        if not is_out_of_memory(exc):
            raise
        text = " ".join(str(exc).split()) or type(exc).__name__
        if text.startswith("out of memory "):  # perfkit.measure named the phase: "out of memory in decode: ..."
            phase, _, text = text.partition(": ")
        else:
            phase = "out of memory"
        raise _OutOfMemory(f"{phase} ({where}): {text[:300]}") from None


def _cmd_run(args) -> int:
    if args.endpoint is not None:
        return _cmd_run_served(args)
    from perfkit.measure import default_device, default_dtype, measure_point, validate
    from perfkit.models import build_model, parse_dtype
    from perfkit.provenance import environment
    from perfkit.registry import checkpoint_fingerprint
    from perfkit.results import check_out_dir
    from perfkit.rows import to_row
    from perfkit.workload import Point, System, canonical_dtype

    device = args.device or default_device()
    system = System(args.system, args.backend, args.dtype or default_dtype(device), device, args.attn_implementation)
    point = Point(args.model, args.input_len, args.output_len, args.batch)
    validate(system, point)
    from perfkit.params import MAX_BATCH

    _check_run_counts(args, MAX_BATCH, "")
    from perfkit.params import MAX_NAME

    label = args.system
    if not label.strip() or len(label) > MAX_NAME or not label.isprintable():
        raise UsageError(f"--system {shown(label)}: expected a label of 1 to {MAX_NAME} printable characters")
    if args.out:
        check_out_dir(args.out)
    system = System(system.label, system.backend, canonical_dtype(system.dtype), system.device,
                    system.attn_implementation)
    checkpoint = checkpoint_fingerprint(args.model)  # what a checkpoint directory holds now, before it is loaded
    if args.out:
        _check_run_joins(args.out, system, args.warmup, args.repeats, args.seed, args.model, checkpoint)

    print(printable(f"building {args.model} ({system.dtype}) on {device}..."), file=sys.stderr, flush=True)
    with _out_of_memory_exits("building the model"):
        model = build_model(args.model, parse_dtype(system.dtype), device, system.attn_implementation,
                            seed=args.seed)
    print(f"measuring {args.warmup} warm-up + {args.repeats} repeats...", file=sys.stderr, flush=True)
    with _out_of_memory_exits(f"batch {args.batch}"):
        measurement = measure_point(model, system, point, warmup=args.warmup, repeats=args.repeats, seed=args.seed)

    return _store_run(args, system, point, checkpoint, to_row(measurement), environment(device))


def _store_run(args, system, point, checkpoint: str | None, row: dict, env: dict) -> int:
    """`perfkit run`'s row, completed with its provenance, appended to --out (run record first, removed again
    where the point cannot be written) and printed. A `run` always appends: its key is a sweep point's plus
    the run."""
    from perfkit.console import format_row, print_json
    from perfkit.provenance import new_run_id
    from perfkit.results import write_point, write_run
    from perfkit.rows import point_fields, with_provenance

    run_id = new_run_id()
    key_fields = {**point_fields(system, point.model, point.input_len, point.output_len, point.batch,
                                 args.warmup, args.repeats, args.seed, checkpoint=checkpoint), "run_id": run_id}
    row = with_provenance(row, run_id, env, key_fields)
    if args.out:
        record = write_run(args.out, run_id, {**env, "run_id": run_id, "command": sys.argv})
        try:
            write_point(args.out, row)
        except OSError:  # a full disk (errors.WriteError): no run record stays behind without its point
            with contextlib.suppress(OSError):
                os.unlink(record)
            raise
    if args.json:  # a served row's raw request records stay in the file, not on the terminal
        print_json({k: v for k, v in row.items() if k != "requests_json"})
    else:
        print(format_row(row))
        if args.out:
            print(printable(f"appended to {args.out}"))
    return 0


def _check_run_counts(args, max_batch: int, what: str) -> None:
    """`perfkit run`'s seed, warm-up, repeats and batch, each within its bound (UsageError)."""
    from perfkit.params import MAX_REPEATS, MAX_WARMUP
    from perfkit.workload import check_seed

    check_seed(args.seed)
    if not (0 <= args.warmup <= MAX_WARMUP and 1 <= args.repeats <= MAX_REPEATS):
        raise UsageError(f"need --warmup from 0 to {MAX_WARMUP} and --repeats from 1 to {MAX_REPEATS}, "
                         f"got {args.warmup} and {args.repeats}")
    if args.batch > max_batch:
        raise UsageError(f"--batch must be at most {max_batch:,}{what}, got {args.batch:,}")


def _check_run_joins(out: str, system, warmup: int, repeats: int, seed: int, model: str,
                     checkpoint: str | None) -> None:
    """Before measuring: a point appended to `out` must share its label's definition there (readers refuse
    a label with several; a checkpoint directory that now holds another model is another definition), so a
    run that would poison the directory is refused, not written."""
    import pandas as pd

    from perfkit.provenance import device_name
    from perfkit.results import check_definitions, load_results

    if not os.path.isdir(os.path.join(out, "points")):
        return
    stored = load_results(out)
    if stored.empty or system.label not in set(stored["system"]):
        return
    mine = {"system": system.label, "model": model, "checkpoint": checkpoint, "status": "ok",
            "dtype": system.dtype, "backend": system.backend,
            "attn_implementation": system.attn_implementation,
            "device_name": (system.endpoint.device_name or "unknown (served)") if system.served
            else device_name(system.device),
            "warmup": warmup, "repeats": repeats, "seed": seed}
    check_definitions(pd.concat([stored[stored["system"] == system.label], pd.DataFrame([mine])],
                                ignore_index=True), f"--out {out!r} with this run")


def _served_system_of(args):
    """The served system that `perfkit run --endpoint ...` names, checked as a params file's would be."""
    import json

    from perfkit.params import served_system

    spec = {"label": args.system, "endpoint": {"base_url": args.endpoint, "api": args.api}}
    if args.dtype:
        spec["dtype"] = args.dtype
    for flag, key in (("served_model", "served_model"), ("tokenizer", "tokenizer"), ("prompt", "prompt"),
                      ("api_key_env", "api_key_env"), ("server_device", "device_name")):
        if getattr(args, flag) is not None:
            spec["endpoint"][key] = getattr(args, flag)
    if args.extra_body is not None:
        try:
            spec["endpoint"]["extra_body"] = json.loads(args.extra_body)
        except (ValueError, RecursionError) as exc:
            raise UsageError(f"--extra-body is not JSON ({str(exc)[:80]}), expected an object such as "
                             "'{\"ignore_eos\": true}'") from None
    return served_system(spec, "--endpoint")


def _cmd_run_served(args) -> int:
    """`perfkit run --endpoint URL`: one point on a running server, timed from here."""
    from perfkit.measure import validate
    from perfkit.params import MAX_CONCURRENCY
    from perfkit.provenance import environment
    from perfkit.registry import checkpoint_fingerprint
    from perfkit.results import check_out_dir
    from perfkit.sweep.served import ServedEndpoint, preflight, served_environment
    from perfkit.workload import Point, System

    system = _served_system_of(args)
    point = Point(args.model, args.input_len, args.output_len, args.batch)
    validate(System(), point)  # the model, the lengths against its context (the server's are its own)
    _check_run_counts(args, MAX_CONCURRENCY, " concurrent requests")
    if args.out:
        check_out_dir(args.out)
    checkpoint = checkpoint_fingerprint(args.model)
    if args.out:
        _check_run_joins(args.out, system, args.warmup, args.repeats, args.seed, args.model, checkpoint)
    preflight(system, args.model)
    resource = ServedEndpoint(system, args.model, args.seed, None)
    print(f"checking the server, then {args.warmup} warm-up + {args.repeats} repeats of {args.batch} requests...",
          file=sys.stderr, flush=True)
    try:
        resource.acquire()
        measurement = resource.measure(system, point, args.warmup, args.repeats, args.seed)
    except Exception as exc:
        from perfkit.serving.point import ServedPointError
        from perfkit.serving.server import ServerError

        if isinstance(exc, (ServedPointError, ServerError)):
            raise UsageError(f"the point was not measured: {one_line(exc, 600)}") from None
        raise
    finally:
        resource.release()
    return _store_run(args, system, point, checkpoint, measurement.row(),
                      served_environment(system, environment("cpu")))


# ---- perfkit sweep -------------------------------------------------------------------------------

def _cmd_sweep(args) -> int:
    from perfkit.console import outcome_text, plan_text
    from perfkit.sweep import as_params, plan, require_ray, run_sweep, select

    if args.isolation_check:
        if args.ray is None:
            raise UsageError("--isolation-check measures how a Ray sweep's parallel workers disturb each other: "
                             "expected --ray [ADDRESS] with it")
        require_ray().parse_address(args.ray)
        from perfkit.sweep.isolation import isolation_check, isolation_text

        params = as_params(args.params, args.yes)
        select(params, args.systems)  # an unknown --system label: one line, before Ray starts
        print(isolation_text(isolation_check(params, args.systems, args.ray)))
        return 0
    if args.dry_run:
        params = as_params(args.params, args.yes)
        if args.interleave is not None:
            params = dataclasses.replace(params, interleave=args.interleave)
        if params.interleave:
            from perfkit.sweep.interleave import check_interleavable

            check_interleavable(select(params, args.systems), args.ray is not None, params.loads)
        print(plan_text(plan(params, args.systems, args.out, discard_stale=args.discard_stale, yes=args.yes)))
        return 0
    out = run_sweep(args.params, args.systems, args.out, args.max_minutes, progress=not args.no_progress,
                    discard_stale=args.discard_stale, yes=args.yes, ray=args.ray, interleave=args.interleave)
    multi_user_max = None
    if out.measured or out.skipped:
        from perfkit.results import load_results
        from perfkit.summary import summarize

        multi_user_max = summarize(load_results(out.out_dir))["multi_user_max"]
    text, errors = outcome_text(out, multi_user_max)
    print(text)
    if errors:
        print(errors, file=sys.stderr)
    if out.interrupted:
        return 130  # as a shell reports a process that SIGINT ended
    return 1 if out.failures or out.lost or out.write_error else 0


# ---- perfkit probe -------------------------------------------------------------------------------

def _cmd_probe(args) -> int:
    from perfkit.console import format_probe, print_json
    from perfkit.measure import check_device, default_device
    from perfkit.models import parse_dtype
    from perfkit.probe import probe, write_probe
    from perfkit.results import check_out_dir, check_out_file

    device = args.device or default_device()
    check_device(device)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if not dtypes:
        raise UsageError("--dtypes is empty: expected e.g. bfloat16,float32")
    for d in dtypes:
        parse_dtype(d)
    if not (0 < args.budget_s <= 60):
        raise UsageError(f"--budget-s must be in (0, 60] seconds, got {args.budget_s}")
    if args.out:
        if args.out.endswith(".json"):
            check_out_file(args.out, "--out", "a .json file for the probe record")
        else:
            check_out_dir(args.out, subdirs=("probes",))
    print(f"probing {device}...", file=sys.stderr, flush=True)
    record = probe(device, dtypes, budget_s=args.budget_s)
    if args.out:
        print(printable(f"wrote {write_probe(args.out, record)}"), file=sys.stderr)
    if args.json:
        print_json(record)
    else:
        print(format_probe(record))
    return 0


# ---- perfkit summary -----------------------------------------------------------------------------

def _csv_names(directory: str) -> tuple[str, ...]:
    """The *.csv entries a --csv directory already holds (check_out_dir refuses one that is a directory)."""
    try:
        return tuple(n for n in os.listdir(directory) if n.endswith(".csv"))
    except (OSError, ValueError, TypeError):  # not there yet, not a directory, a NUL byte: check_out_dir says
        return ()


def _write_tables_csv(tables: dict, directory: str) -> None:
    """Each table as DIRECTORY/<name>.csv, the whole set or none of it: written into a temporary folder beside
    DIRECTORY, then moved into place (the folder renamed where DIRECTORY is new, else each file renamed in,
    which takes no space). A write the file system refuses (errors.WriteError, naming the CSV file) leaves
    DIRECTORY as it was."""
    import shutil
    import tempfile

    from perfkit.console import csv_text
    from perfkit.errors import WriteError
    from perfkit.results import TMP_PREFIX, atomic_write, fsync_dir

    target = os.path.abspath(directory)
    parent, made = os.path.dirname(target), []  # the folders this call creates, deepest first
    folder = parent
    while not os.path.exists(folder):
        made.append(folder)
        folder = os.path.dirname(folder)
    gather = None
    try:
        try:
            os.makedirs(parent, exist_ok=True)
            gather = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=parent)
        except OSError as exc:
            raise WriteError(directory, exc) from None
        for name, table in tables.items():
            try:
                atomic_write(os.path.join(gather, f"{name}.csv"),
                             lambda f, t=table: f.write(csv_text(t).encode()))
            except WriteError as exc:  # named as the user will look for it
                raise WriteError(os.path.join(directory, f"{name}.csv"), exc) from None
        umask = os.umask(0)
        os.umask(umask)
        try:
            if not os.path.exists(target):
                os.chmod(gather, 0o777 & ~umask)  # mkdtemp's folder is 0700; a made folder is not
                os.rename(gather, target)
                gather = None
            else:
                for name in tables:
                    os.replace(os.path.join(gather, f"{name}.csv"), os.path.join(target, f"{name}.csv"))
            for d in (target, parent):
                fsync_dir(d)
        except OSError as exc:
            raise WriteError(directory, exc) from None
    except BaseException:
        if gather is not None:
            shutil.rmtree(gather, ignore_errors=True)
            gather = None
        with contextlib.suppress(OSError):  # each only while empty: nothing else was put there
            for folder in made:
                os.rmdir(folder)
        raise
    if gather is not None:  # emptied by the renames
        os.rmdir(gather)


def _given_slos(args):
    """The --slo bounds, checked before any work (a results directory read, a bootstrap drawn), so that a bad
    one is refused before anything prints; None where none is given."""
    from perfkit.slo import parse_slos

    return parse_slos(args.slo) if args.slo else None


def _cmd_summary(args) -> int:
    from perfkit.console import results_header, table_text
    from perfkit.results import check_out_dir, open_results
    from perfkit.summary import IDENTITY, POINT_COLUMNS, TABLE_TITLES, latest_per_point, speed_of_light_table, summarize

    given = _given_slos(args)
    if args.csv:
        check_out_dir(args.csv, "--csv", "a directory for the tables' CSV files", subdirs=(),
                      files=_csv_names(args.csv))
    from perfkit.loads import loads_only

    if loads_only(args.results, args.system):  # levels but no batch point (an imported serving benchmark)
        return _summary_of_loads(args, given)
    df = open_results(args.results, system=args.system, where=args.results)
    from perfkit.console import bounded_max_text, slos_text
    from perfkit.results import load_runs
    from perfkit.slo import bounded_max, frontier, slos_for

    slos = given or slos_for(None, load_runs(args.results))
    tables = summarize(df)
    tables["speed_of_light"] = speed_of_light_table(df, probe=args.results)
    print(results_header(args.results, df))
    _print_imported(df)
    if "client_bound" in df and (df["status"].eq("ok") & df["client_bound"].eq(True)).any():
        n = int((df["status"].eq("ok") & df["client_bound"].eq(True)).sum())
        print(f"warning: {n} served points are client-bound (the client's event loop fell behind by more than 5 ms "
              "at p99 while they ran): their figures may be the client's limit, not the server's; compare leaves "
              "them out")
    if args.points:
        cols = [c for c in POINT_COLUMNS if c in df]
        print(f"\n--- every point\n{table_text(latest_per_point(df)[cols].sort_values(IDENTITY))}")
    for name, table in tables.items():
        print(f"\n--- {name}: {TABLE_TITLES[name]}\n{table_text(table)}")
    bounded = bounded_max(df, slos)
    print(f"\n--- slo: the best output throughput whose median ttft and tpot meet each bound: {slos_text(slos)}"
          f"\n{bounded_max_text(bounded)}")
    from perfkit.loads import loads_of

    loads = loads_of(args.results, args.system)
    if len(loads):
        from perfkit.loads import best_within, load_table

        print(f"\n--- loads: served systems under steady load (closed-loop users, Poisson rates); latency over "
              f"requests\n{table_text(load_table(loads))}")
        _print_imported(loads)
        print(f"\n--- loads within slo: the level of largest output throughput whose p99 ttft and p99 tpot over "
              f"requests meet each bound: {slos_text(slos)}\n{table_text(best_within(loads, slos))}")
        tables["loads"] = load_table(loads)
    if args.csv:
        tables["pareto"] = frontier(df)  # the measured points no other point beats on tok/s per user and in all
        tables["slo"] = bounded
        _write_tables_csv(tables, args.csv)
        print(f"\nwrote {len(tables)} tables as CSV to {printable(args.csv)}")
    return 0


def _print_imported(df) -> None:
    """One line per system of `df` (points or load levels) imported from another tool (perfkit.imports)."""
    imported = df[df["source_tool"].notna()] if "source_tool" in df else df.iloc[0:0]
    for (system, tool, version), g in imported.groupby(["system", "source_tool", "source_version"], sort=True):
        print(printable(f"{system}: imported from {tool} {version} ({', '.join(sorted(set(g['source_file'])))}; "
                        "its source_note says which figures are the tool's own: docs/import.md)"))


def _summary_of_loads(args, given) -> int:
    """`perfkit summary` of a directory (or label) with load levels and no batch point."""
    from perfkit.console import slos_text, table_text
    from perfkit.loads import best_within, load_table, loads_of
    from perfkit.results import load_runs
    from perfkit.slo import slos_for

    loads = loads_of(args.results, args.system)
    slos = given or slos_for(None, load_runs(args.results))
    systems = ", ".join(sorted(loads["system"].dropna().unique()))
    print(printable(f"{args.results}: {len(loads)} load levels of {systems} (no batch point: the study's tables "
                    "need points)"))
    _print_imported(loads)
    tables = {"loads": load_table(loads)}
    print(f"\n--- loads: served systems under steady load (closed-loop users, Poisson rates); latency over "
          f"requests\n{table_text(tables['loads'])}")
    print(f"\n--- loads within slo: the level of largest output throughput whose p99 ttft and p99 tpot over "
          f"requests meet each bound: {slos_text(slos)}\n{table_text(best_within(loads, slos))}")
    if args.csv:
        _write_tables_csv(tables, args.csv)
        print(f"\nwrote {len(tables)} tables as CSV to {printable(args.csv)}")
    return 0


# ---- perfkit compare -----------------------------------------------------------------------------

def _check_bootstrap(args) -> None:
    from perfkit.workload import check_seed

    check_seed(args.seed)
    if not 0 < args.confidence < 1:
        raise UsageError(f"--confidence must be between 0 and 1 (e.g. 0.95), got {args.confidence}")
    if not 100 <= args.n_boot <= MAX_N_BOOT:
        raise UsageError(f"--n-boot must be from 100 to {MAX_N_BOOT:,} bootstrap draws, got {args.n_boot}")


def _cmd_compare(args) -> int:
    from perfkit.compare import resolve_side
    from perfkit.console import (
        frontier_ratio_text,
        ratio_table_text,
        side_text,
        slo_ratio_text,
        slos_text,
        table_text,
        verdicts_text,
    )
    from perfkit.results import check_out_dir

    t_dir, t_sys = resolve_side(args.target, args.target_system, "target")
    b_dir, b_sys = resolve_side(args.baseline, args.baseline_system, "baseline")
    _check_bootstrap(args)
    given = _given_slos(args)
    if args.csv:
        check_out_dir(args.csv, "--csv", "a directory for study.csv and points.csv", subdirs=(),
                      files=_csv_names(args.csv))
    from perfkit.loads import compare_systems

    # compare(), or the load levels alone where a side has no batch point (an imported serving benchmark)
    c = compare_systems(t_dir, b_dir, t_sys, b_sys, n_boot=args.n_boot, confidence=args.confidence, seed=args.seed)
    if c.loads_only:
        return _print_loads_comparison(c, args)
    from perfkit.results import load_runs
    from perfkit.slo import compare_slo, frontier_ratios, slos_for

    slos = given or slos_for(None, load_runs(b_dir) + load_runs(t_dir))
    at_slo = compare_slo(t_dir, b_dir, slos, t_sys, b_sys, n_boot=args.n_boot, confidence=args.confidence,
                         seed=args.seed)
    at_interactivity = frontier_ratios(t_dir, b_dir, t_sys, b_sys)
    from perfkit.loads import loads_of

    load_ratios = None
    t_loads, b_loads = loads_of(t_dir, c.target), loads_of(b_dir, c.baseline)
    if len(t_loads) and len(b_loads):
        from perfkit.loads import compare_loads

        load_ratios = compare_loads(t_loads, b_loads, seed=args.seed, n_boot=args.n_boot,
                                    alpha=1 - args.confidence)
    print(f"target   {printable(c.target)}: " + side_text(c, "target"))
    print(f"baseline {printable(c.baseline)}: " + side_text(c, "baseline"))
    print(verdicts_text(c))
    print("\nstudy ratios (Ratio_Latency = target/baseline, Ratio_Throughput = baseline/target; < 1: target better)")
    print(ratio_table_text(c.study, c.confidence))
    print(f"\nat a service level: baseline's / target's best output throughput within {slos_text(slos)} "
          "(< 1: target better)")
    print(slo_ratio_text(at_slo, c.confidence))
    print("\nat equal interactivity: at each point of the baseline's frontier, the target's best throughput "
          "at that many tokens/s per user or more (ratio baseline / target)")
    print(frontier_ratio_text(at_interactivity))
    if args.points:
        print("\npoint ratios")
        print(ratio_table_text(c.points, c.confidence))
    for name, table in (("measured on the target only", c.only_target),
                        ("measured on the baseline only", c.only_baseline),
                        ("on both sides, but without timings on one", c.not_ok)):
        if len(table):
            print(f"\n{len(table)} workload(s) {name}:")
            print(table_text(table))
    if load_ratios is not None:
        from perfkit.loads import client_bound_levels

        print("\nunder steady load, at each level both ran (medians over requests; bootstrap over requests)")
        print(table_text(load_ratios) if len(load_ratios) else "(no level in common)")
        left_out = client_bound_levels(t_loads, b_loads)
        if left_out:
            print(printable(f"left out, client-bound on a side (the client fell behind): {', '.join(left_out)}"))
    if args.csv:
        _write_tables_csv({"study": c.study, "points": c.points, "slo": at_slo, "frontier": at_interactivity},
                          args.csv)
        print(f"\nwrote {printable(os.path.join(args.csv, 'study.csv'))}, points.csv, slo.csv and frontier.csv")
    return 0


def _print_loads_comparison(c, args) -> int:
    """A comparison of load levels alone (a side with no batch point, such as an imported serving benchmark)."""
    from perfkit.console import side_text, table_text, verdicts_text

    print(f"target   {printable(c.target)}: " + side_text(c, "target"))
    print(f"baseline {printable(c.baseline)}: " + side_text(c, "baseline"))
    print(verdicts_text(c))
    print("\nunder steady load, at each level both ran (medians over requests; bootstrap over requests; "
          "< 1: target better)")
    print(table_text(c.loads))
    print("\n(no batch point on a side: the study's figures, the service-level and interactivity comparisons "
          "need points)")
    if args.csv:
        _write_tables_csv({"loads": c.loads}, args.csv)
        print(f"\nwrote {printable(os.path.join(args.csv, 'loads.csv'))}")
    return 0


# ---- perfkit import ------------------------------------------------------------------------------

def _cmd_import(args) -> int:
    from perfkit.imports import import_files

    done = import_files(args.format, args.paths, system=args.system, out_dir=args.out, model=args.model)
    for line in done.left_out:
        print(printable(f"perfkit: note: {line}"), file=sys.stderr)
    what = " and ".join(f"{n} {name}" for n, name in ((len(done.points), "points"), (len(done.loads), "load levels"))
                        if n)
    print(printable(f"imported {what} from {args.format} as {', '.join(repr(s) for s in done.systems)} into "
                    f"{args.out} (run {done.run_id})"))
    return 0


# ---- perfkit publish -----------------------------------------------------------------------------

def _cmd_publish(args) -> int:
    from perfkit.report import publish
    from perfkit.results import check_out_dir

    check_out_dir(args.reports, "--reports", "a directory for the reports", subdirs=())
    try:
        if args.what == "sweep":
            made = [publish.publish_sweep(args.params, args.systems, args.out, args.reports, args.name,
                                          ray=args.ray)]
        elif args.what == "report":
            made = [publish.publish_report(args.results, args.system, args.reports, args.name)]
        elif args.what == "compare":
            from perfkit.compare import resolve_side

            t_dir, t_sys = resolve_side(args.target, args.target_system, "target")
            b_dir, b_sys = resolve_side(args.baseline, args.baseline_system, "baseline")
            made = [publish.publish_comparison(t_dir, b_dir, t_sys, b_sys, args.reports, args.name)]
        elif args.what == "all":
            made = publish.publish_all(args.results_root, args.reports, args.exclude)
        else:
            made = [publish.build_index(args.reports)]
    except Exception as exc:
        if type(exc).__name__ != "PapermillExecutionError":
            raise
        # The executed notebook keeps the traceback; the terminal gets the cause in one line.
        if exc.ename == "UsageError":  # a refusal inside the notebook (a locked or mixed results directory)
            print(f"perfkit publish: error: {printable(exc.evalue)}", file=sys.stderr)
            return 2
        print(printable(f"perfkit publish: notebook failed: {exc.ename}: {exc.evalue}"), file=sys.stderr)
        return 1
    for path in made:
        print(printable(path))
    return 0


def _add_publish(sub) -> None:
    p = sub.add_parser("publish", help="run the notebooks with papermill and publish them as HTML reports")
    what = p.add_subparsers(dest="what", required=True, parser_class=_Parser)
    s = what.add_parser("sweep", help="run a sweep through notebooks/sweep.ipynb")
    s.add_argument("params", help="params YAML file")
    s.add_argument("--system", action="append", dest="systems", metavar="LABEL", help="only this system (repeatable)")
    s.add_argument("--out", default=None, help="results directory (default results/<params name>)")
    _add_ray_arg(s)
    r = what.add_parser("report", help="one results directory (one system of it) as a report")
    r.add_argument("results", help="results directory")
    r.add_argument("--system", default=None, help="system label (needed where the directory holds several)")
    c = what.add_parser("compare", help="target vs baseline as a report")
    c.add_argument("target", help="results directory of the target, or DIR:LABEL")
    c.add_argument("baseline", help="results directory of the baseline, or DIR:LABEL")
    c.add_argument("--target-system", default=None, help="system label within the target directory")
    c.add_argument("--baseline-system", default=None, help="system label within the baseline directory")
    a = what.add_parser("all", help="every results directory below a root, one report per system, and the "
                                    "comparisons listed in ROOT/comparisons.yaml")
    a.add_argument("results_root", help="folder holding results directories")
    a.add_argument("--exclude", action="append", default=[], metavar="DIR", help="results directory to leave out")
    i = what.add_parser("index", help="rebuild the reports' index.html")
    for q in (s, r, c, a, i):
        q.add_argument("--reports", default=DEFAULT_REPORTS,
                       help=f"where executed notebooks and HTML go (default {DEFAULT_REPORTS}/)")
    for q in (s, r, c):
        q.add_argument("--name", default=None, help="file name of the report, without extension")
    p.set_defaults(func=_cmd_publish)


# ---- the parser ----------------------------------------------------------------------------------

def _add_system_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default=None,
                   help="float32 | bfloat16 | float16 (default: bfloat16 on cuda, float32 on cpu)")
    p.add_argument("--backend", default="hf-loop", help="hf-loop (default) | hf-generate | static")
    p.add_argument("--attn", default="sdpa", dest="attn_implementation", help="attention implementation: sdpa | eager")
    p.add_argument("--device", default=None, help="cpu | cuda[:N] (default: cuda if available)")
    p.add_argument("--system", default="default", help="label of the system being measured (for comparisons)")


def _add_slo_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--slo", action="append", default=None, metavar="NAME:TTFT_MS:TPOT_MS",
                   help="a latency bound (repeatable; replaces the params file's and the defaults, MLPerf's "
                        "server 2000:100 and interactive 500:30)")


def _add_ray_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run the sweep's units in parallel on Ray, one GPU (or CPU) each: no ADDRESS starts a local "
                        "Ray instance over this machine's GPUs (CPUs where there are none); auto, ray://HOST:PORT "
                        "or HOST:PORT joins a running cluster (needs pip install 'perfkit[ray]')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="perfkit", description="Measure LLM inference: prompt and token phases, compared honestly.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("models", help="list the model registry")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("env", help="show this machine's provenance")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_env)

    p = sub.add_parser("run", help="measure one workload point")
    p.add_argument("--model", required=True, help="registry name or local checkpoint directory")
    p.add_argument("--input-len", type=_int, required=True)
    p.add_argument("--output-len", type=_int, required=True)
    p.add_argument("--batch", type=_int, default=1)
    _add_system_args(p)
    p.add_argument("--warmup", type=_int, default=1)
    p.add_argument("--repeats", type=_int, default=5)
    p.add_argument("--seed", type=_int, default=0)
    p.add_argument("--out", default=None, help="results directory to append the point to")
    p.add_argument("--json", action="store_true", help="print one JSON object with every results column")
    g = p.add_argument_group("served system (an OpenAI-compatible server instead of the in-process loop)")
    g.add_argument("--endpoint", default=None, metavar="URL", help="the server's base URL, e.g. http://HOST:8000/v1")
    g.add_argument("--api", default="completions", help="completions (default) | chat")
    g.add_argument("--served-model", default=None, help="the model name requests carry (default: --model)")
    g.add_argument("--tokenizer", default=None, metavar="DIR", help="local tokenizer folder, for text prompts")
    g.add_argument("--prompt", default=None, help="auto (default) | token_ids | text")
    g.add_argument("--extra-body", default=None, metavar="JSON",
                   help="engine-specific request fields, e.g. '{\"ignore_eos\": true}' for vLLM")
    g.add_argument("--api-key-env", default=None, metavar="NAME",
                   help="environment variable that holds the API key (the key is never written)")
    g.add_argument("--server-device", default=None, metavar="NAME", help="the server's device, for MFU/MBU")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("sweep", help="measure a params/*.yaml grid: resumable, with the max-throughput search")
    p.add_argument("params", help="params YAML file (see params/smoke.yaml)")
    p.add_argument("--system", action="append", dest="systems", metavar="LABEL",
                   help="measure only this system of the params file (repeatable)")
    p.add_argument("--out", default=None, help="results directory (default: results/<params name>)")
    p.add_argument("--dry-run", action="store_true", help="list the points it would measure and how many are done")
    p.add_argument("--max-minutes", type=_positive_minutes, default=None,
                   help="time budget: jobs that would end past it wait; the same command continues later")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--yes", action="store_true",
                   help="allow a grid of more points than the params file's max_points (default 5,000)")
    p.add_argument("--discard-stale", action="store_true",
                   help="move the stored points of its systems that this params file does not define (another "
                        "version of it) to RESULTS_DIR/stale/<timestamp>/ instead of refusing")
    order = p.add_mutually_exclusive_group()
    order.add_argument("--interleave", action="store_true", default=None,
                       help="alternate the systems' repeats of each point (A B B A ...), each system holding its "
                            "model in its own process (default: the params file's interleave)")
    order.add_argument("--no-interleave", action="store_false", dest="interleave",
                       help="one system's whole grid after another's, whatever the params file says")
    _add_ray_arg(p)
    p.add_argument("--isolation-check", action="store_true",
                   help="with --ray: measure the first point alone on one GPU (CPU worker) of a node, then with "
                        "every GPU of that node busy with it, and print the ratio; measures nothing else, writes "
                        "nothing")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("probe", help="measure this device's achievable copy bandwidth and matmul throughput")
    p.add_argument("--device", default=None, help="cpu | cuda[:N] (default: cuda if available)")
    p.add_argument("--dtypes", default="bfloat16,float16,float32",
                   help="comma-separated matmul dtypes (default: bfloat16,float16,float32)")
    p.add_argument("--budget-s", type=float, default=5.0, help="time budget per figure, seconds (default 5)")
    p.add_argument("--out", default=None, help="results directory (writes probes/<run_id>.json) or a .json file")
    p.add_argument("--json", action="store_true", help="print the record as JSON")
    p.set_defaults(func=_cmd_probe)

    p = sub.add_parser("summary", help="the study's tables and speed of light of a results directory, as text")
    p.add_argument("results", help="results directory (points/*.parquet; probes/*.json give the probed fractions)")
    p.add_argument("--system", default=None, help="only this system label")
    p.add_argument("--points", action="store_true", help="also list every point with its status")
    p.add_argument("--csv", default=None, metavar="DIR", help="also write each table to DIR/<table>.csv "
                   "(pareto.csv: the frontier's points; slo.csv: the best throughput within each bound)")
    _add_slo_arg(p)
    p.set_defaults(func=_cmd_summary)

    p = sub.add_parser("compare", help="target vs baseline: study and point ratios with bootstrap intervals")
    p.add_argument("target", help="results directory of the target, or DIR:LABEL")
    p.add_argument("baseline", help="results directory of the baseline, or DIR:LABEL")
    p.add_argument("--target-system", default=None, help="system label within the target directory")
    p.add_argument("--baseline-system", default=None, help="system label within the baseline directory")
    p.add_argument("--points", action="store_true", help="also print the ratio of every matched workload point")
    p.add_argument("--csv", default=None, metavar="DIR", help="also write DIR/study.csv and DIR/points.csv")
    p.add_argument("--n-boot", type=_int, default=2000, help="bootstrap draws per ratio (default 2000)")
    p.add_argument("--confidence", type=float, default=0.95, help="interval's confidence (default 0.95)")
    p.add_argument("--seed", type=_int, default=0, help="seed of the bootstrap (default 0)")
    _add_slo_arg(p)
    p.set_defaults(func=_cmd_compare)

    from perfkit.imports import FORMATS

    p = sub.add_parser("import", help="turn another benchmarking tool's result files into perfkit rows "
                                      "(docs/import.md)")
    p.add_argument("format", metavar="FORMAT", help=f"the tool's format: {' | '.join(FORMATS)}")
    p.add_argument("paths", nargs="+", metavar="PATH", help="its result files")
    p.add_argument("--system", required=True, metavar="LABEL", help="the system label the rows get")
    p.add_argument("--out", required=True, metavar="RESULTS_DIR", help="the results directory to import into")
    p.add_argument("--model", default=None, metavar="NAME",
                   help="the model name of every row (default: as the tool names it), so that the rows meet "
                        "another system's workloads")
    p.set_defaults(func=_cmd_import)

    _add_publish(sub)
    return parser


def restore_interrupt() -> None:
    """Let SIGINT raise KeyboardInterrupt even where the parent started us with it ignored (a shell's
    background job inherits SIGINT ignored): `timeout --signal=INT` then stops a sweep between points,
    with its summary, instead of waiting for the SIGKILL that follows. Also ignore SIGXFSZ: a write past
    `ulimit -f` then fails with EFBIG, which a command reports in one line, instead of killing the process
    mid-sweep."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if hasattr(signal, "SIGXFSZ"):
        with contextlib.suppress(ValueError):  # not the main thread: signals are the main thread's to set
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> int:
    restore_interrupt()
    if "perfkit.results" in sys.modules:  # each command names each damaged file once (results.warn_skipped)
        sys.modules["perfkit.results"].WARNED.clear()
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UsageError as exc:
        # one line whatever a message holds, nothing a terminal would act on; bounded as a last resort
        msg = printable(" ".join(str(exc).splitlines()))
        msg = msg if len(msg) <= 2000 else msg[:1997] + "..."
        print(msg if msg.startswith("perfkit") else f"perfkit: error: {msg}", file=sys.stderr)
        return 2
    except _OutOfMemory as exc:
        print(f"perfkit: {printable(exc)}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        sys.stderr.close()
        return 1
    except OSError as exc:  # a write the file system refused: a full disk, the file size limit
        from perfkit.errors import NO_ROOM, WriteError

        if not isinstance(exc, WriteError) and exc.errno not in NO_ROOM:
            raise
        if not isinstance(exc, WriteError):  # written past perfkit's own writes (a notebook's by papermill)
            exc = WriteError(exc.filename or "a file", exc)
        print(f"perfkit: error: {printable(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("perfkit: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # out of memory outside a measurement (a sweep records one inside as an `oom` row)
        if not _is_out_of_memory(exc):
            raise
        print(f"perfkit: out of memory ({printable(one_line(exc, 300, with_type=True))}): expected enough free "
              "memory for this command; free some, or ask for less (fewer points, smaller files)", file=sys.stderr)
        return 1


def _is_out_of_memory(exc: BaseException) -> bool:
    """Python's MemoryError (importing a module, reading a huge file), or, once torch is loaded, whatever
    perfkit.measure.is_out_of_memory calls out of memory (torch's own error, the host allocator's)."""
    if isinstance(exc, MemoryError):
        return True
    if "torch" not in sys.modules:  # nothing has allocated through torch: no other kind of out of memory
        return False
    from perfkit.measure import is_out_of_memory

    return is_out_of_memory(exc)


if __name__ == "__main__":
    sys.exit(main())
