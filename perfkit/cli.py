"""perfkit's command line: `perfkit models | run | env | ...`.

Bad input is one line on stderr naming what is wrong, exit code 2, no traceback, nothing written.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from perfkit.errors import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; we promise one line
        raise UsageError(f"{self.prog}: {message}")


def _json_default(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def _clean(value):
    """NaN is not JSON: emit null."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def print_json(obj) -> None:
    print(json.dumps(_clean(obj), default=_json_default))


# ---- perfkit models -------------------------------------------------------------------------------

def _cmd_models(args) -> int:
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


# ---- perfkit env ----------------------------------------------------------------------------------

def _cmd_env(args) -> int:
    from perfkit.provenance import environment

    env = environment()
    if args.json:
        print_json(env)
    else:
        for k, v in env.items():
            print(f"{k:<22}{v}")
    return 0


# ---- perfkit run ----------------------------------------------------------------------------------

def format_row(row: dict) -> str:
    """A short human summary of one results row."""
    head = (f"{row['system']} {row['model']} {row['dtype']} {row['backend']} "
            f"I={row['input_len']} O={row['output_len']} B={row['batch']}")
    if row["status"] != "ok":
        return f"{head}: {row['status']}: {row.get('error')}"
    mem = row.get("peak_mem_bytes")
    lines = [
        head,
        f"  ttft {row['ttft_ms']:.2f} ms (IQR {row['ttft_iqr_ms']:.2f})   prefill {row['prefill_tok_s']:.1f} tok/s",
        f"  tpot {row['tpot_ms']:.2f} ms   decode {row['decode_tok_s']:.1f} tok/s",
        f"  e2e  {row['e2e_ms']:.2f} ms   output {row['output_tok_s']:.1f} tok/s   total {row['total_tok_s']:.1f} tok/s",
        f"  peak memory {mem / 2**20:.1f} MiB ({row.get('peak_mem_scope', '')})   repeats {row['repeats']}"
        if mem is not None else f"  repeats {row['repeats']}",
    ]
    if row.get("noisy"):
        lines.append("  warning: IQR/median above 10%: this machine was noisy; consider more repeats")
    return "\n".join(lines)


def _add_system_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: bfloat16 on cuda, float32 on cpu)")
    p.add_argument("--backend", default="hf-loop", help="hf-loop (default) | hf-generate | static")
    p.add_argument("--attn", default="sdpa", dest="attn_implementation", help="attention implementation: sdpa | eager")
    p.add_argument("--device", default=None, help="cpu | cuda[:N] (default: cuda if available)")
    p.add_argument("--system", default="default", help="label of the system being measured (for comparisons)")


def _cmd_run(args) -> int:
    from perfkit.measure import Point, System, default_device, default_dtype, measure_point, to_row, validate, \
        with_provenance
    from perfkit.models import build_model, dtype_name, parse_dtype
    from perfkit.provenance import environment, new_run_id
    from perfkit.results import check_out_dir, write_point, write_run

    device = args.device or default_device()
    system = System(args.system, args.backend, args.dtype or default_dtype(device), device, args.attn_implementation)
    point = Point(args.model, args.input_len, args.output_len, args.batch)
    validate(system, point)
    if args.warmup < 0 or args.repeats < 1:
        raise UsageError(f"need --warmup >= 0 and --repeats >= 1, got {args.warmup} and {args.repeats}")
    if not 0 <= args.seed < 2**63:
        raise UsageError(f"--seed must be an integer from 0 to 2**63 - 1, got {args.seed}")
    if args.out:
        check_out_dir(args.out)
    system = System(system.label, system.backend, dtype_name(parse_dtype(system.dtype)), system.device,
                    system.attn_implementation)

    print(f"building {args.model} ({system.dtype}) on {device}...", file=sys.stderr, flush=True)
    model = build_model(args.model, parse_dtype(system.dtype), device, system.attn_implementation, seed=args.seed)
    print(f"measuring {args.warmup} warm-up + {args.repeats} repeats...", file=sys.stderr, flush=True)
    measurement = measure_point(model, system, point, warmup=args.warmup, repeats=args.repeats, seed=args.seed)

    env = environment(device)
    run_id = new_run_id()
    key_fields = {**vars(system), **vars(point), "warmup": args.warmup, "repeats": args.repeats,
                  "seed": args.seed, "run_id": run_id}  # a `run` always appends: its key includes the run
    row = with_provenance(to_row(measurement), run_id, env, key_fields)
    if args.out:
        write_run(args.out, run_id, {**env, "run_id": run_id, "command": sys.argv})
        write_point(args.out, row)
    if args.json:
        print_json(row)
    else:
        print(format_row(row))
        if args.out:
            print(f"appended to {args.out}")
    return 0


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


# ---- entry point -----------------------------------------------------------------------------------

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
    p.set_defaults(func=_cmd_run)

    from perfkit import sweep

    sweep.add_subcommand(sub)

    from perfkit import probe

    probe.add_parser(sub)

    from perfkit import compare, study_tables

    compare.add_subcommand(sub)
    study_tables.add_subcommand(sub)
    return parser


def restore_interrupt() -> None:
    """Let SIGINT raise KeyboardInterrupt even where the parent started us with it ignored (a shell's
    background job inherits SIGINT ignored): `timeout --signal=INT` then stops a sweep between points,
    with its summary, instead of waiting for the SIGKILL that follows."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> int:
    restore_interrupt()
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UsageError as exc:
        msg = str(exc)
        print(msg if msg.startswith("perfkit") else f"perfkit: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("perfkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        sys.stderr.close()
        return 1


if __name__ == "__main__":
    sys.exit(main())
