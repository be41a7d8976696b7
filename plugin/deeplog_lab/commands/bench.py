"""`deeplog-siem bench NAME|all`: run the benchmarks of `deeplog_lab.bench` and print their figures.

Contract: `bench NAME` runs one benchmark module (its options come from its `add_arguments`) and prints its
result as `key: value` lines, or as one JSON object with --json; `bench all` runs every benchmark with its
defaults, one JSON line each (what `make bench` runs). Registering `bench` imports every benchmark module.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from deeplog_siem.commands import Subparsers, add_parser
from deeplog_siem.commands.console import print_json, progress

from ..bench import BENCHES


def cmd_bench(args: argparse.Namespace) -> int:
    """Run one benchmark module (deeplog_lab.bench.NAME); with --json its result is the last stdout line."""
    result = args.bench_module.run(args, progress)
    if args.json:
        print_json(result)
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0


def cmd_bench_all(args: argparse.Namespace) -> int:
    """Every benchmark with its default options, one after the other (what `make bench` runs)."""
    results: dict[str, Any] = {}
    for name in BENCHES:
        mod = importlib.import_module(f"deeplog_lab.bench.{name}")
        sub = argparse.ArgumentParser(prog=f"bench {name}")
        mod.add_arguments(sub)
        progress(f"== bench {name}")
        results[name] = mod.run(sub.parse_args([]), progress)
        print_json({"bench": name, **results[name]})
    if args.json:
        print_json(results)
    return 0


def register(sub: Subparsers) -> None:
    p = add_parser(sub, "bench")
    bsub = p.add_subparsers(dest="bench_name", metavar="NAME", required=True)
    for name in BENCHES:
        try:
            mod = importlib.import_module(f"deeplog_lab.bench.{name}")
        except ImportError:  # a benchmark whose module is not there (yet) is not offered
            continue
        pb = bsub.add_parser(name, help=(mod.__doc__ or name).strip().splitlines()[0])
        pb.add_argument("--json", action="store_true", help="print the result as one JSON object (last line)")
        mod.add_arguments(pb)
        pb.set_defaults(func=cmd_bench, bench_module=mod)
    pa = bsub.add_parser("all", help="run every benchmark with its defaults (make bench)")
    pa.add_argument(
        "--json", action="store_true", help="also print all results as one JSON object (last line)"
    )
    pa.set_defaults(func=cmd_bench_all)
