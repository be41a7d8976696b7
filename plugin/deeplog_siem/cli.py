"""cli: the `deeplog-siem` command line.

Contract: argv -> exit code. Every `DeeplogError` becomes one line on stderr (`error: ...`) and exit code 2;
no traceback reaches the user unless `--debug` is given. Only this module configures logging.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__
from .bench import BENCHES
from .config import Config, example_config_text, load_config
from .errors import DeeplogError

log = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace], int]


def _setup_logging(level: str, file: str | None = None, as_json: bool = False) -> None:
    fmt = (
        '{"time":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","message":"%(message)s"}'
        if as_json
        else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if file:
        handlers.append(logging.FileHandler(file))
    logging.basicConfig(level=getattr(logging, level), format=fmt, handlers=handlers, force=True)
    # The transport logs every request at INFO; that drowns the one summary line per run.
    logging.getLogger("elastic_transport").setLevel(logging.WARNING)


def _load(args: argparse.Namespace) -> Config:
    cfg = load_config(args.config)
    _setup_logging("DEBUG" if args.debug else cfg.logging.level, cfg.logging.file, cfg.logging.json)
    return cfg


def progress(message: str) -> None:
    """Progress for long steps goes to stderr so `--json` stdout stays machine-readable."""
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- evaluate (log-key model)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Train (or load) the log-key model on DeepLog key files and report detection under the HDFS protocol."""
    import dataclasses

    from .config import ModelConfig
    from .errors import ConfigError
    from .evaluate import run_evaluation

    overrides = {k: v for k in ModelConfig.__dataclass_fields__ if (v := getattr(args, k, None)) is not None}
    cfg = dataclasses.replace(ModelConfig(), **overrides)
    cfg.validate("model")
    for name in ("normal", "abnormal"):
        if getattr(args, name) is None:
            raise ConfigError(
                f"--{name}: no file given and ../shared/data/hdfs_keys is not beside the checkout"
            )
    r = run_evaluation(
        None if args.model else args.train,
        args.normal,
        args.abnormal,
        cfg,
        model_path=args.model,
        save=args.save,
        limit=args.limit,
        progress=progress,
    )
    print(f"protocol: {r['protocol']}")
    print(f"window h={r['window']}, top g={r['top_g']}, model {r['model_args']}, device {r['device']}")
    if r.get("train_seconds") is not None:
        print(f"training: {r['train_seconds']:.1f}s, best epoch {r['train']['best_epoch']}")
    print(
        f"normal sessions {r['normal_sessions']}: FP {r['fp']} (FP rate {r['fp_rate']:.4%}); "
        f"abnormal sessions {r['abnormal_sessions']}: FN {r['fn']} (recall {r['recall']:.4%})"
    )
    print(
        f"paper scale: FP {r['fp_paper']:.0f}, TP {r['tp_paper']:.0f}, precision {r['precision_paper']:.4f}, "
        f"recall {r['recall_paper']:.4f}, F1 {r['f1_paper']:.4f} (paper: FP 833, FN 619, F1 0.96)"
    )
    if args.json:
        print_json(r)
    return 0


def _add_evaluate_parser(sub: Any) -> None:
    from .keyseq import HDFS_DIR

    def default(name: str) -> str | None:
        p = HDFS_DIR / name
        return str(p) if p.is_file() else None

    p = sub.add_parser(
        "evaluate", help="train/load the log-key model on DeepLog key files and report FP/FN/F1"
    )
    p.add_argument("--train", metavar="FILE", default=default("hdfs_train"), help="normal training sessions")
    p.add_argument(
        "--normal", metavar="FILE", default=default("hdfs_test_normal_dev"), help="normal test sessions"
    )
    p.add_argument(
        "--abnormal", metavar="FILE", default=default("hdfs_test_abnormal_dev"), help="abnormal test sessions"
    )
    p.add_argument("--model", metavar="PATH", help="load this checkpoint instead of training")
    p.add_argument("--save", metavar="PATH", help="save the trained model to this checkpoint")
    p.add_argument("--limit", type=int, metavar="N", help="use only the first N sessions of each file")
    for name, typ in (
        ("window", int),
        ("top_g", int),
        ("layers", int),
        ("hidden", int),
        ("embedding", int),
        ("dropout", float),
        ("epochs", int),
        ("batch_size", int),
        ("learning_rate", float),
        ("patience", int),
        ("validation_fraction", float),
        ("seed", int),
    ):
        p.add_argument("--" + name.replace("_", "-"), type=typ, dest=name, metavar="N", help=f"model.{name}")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="model.device (default auto)")
    p.add_argument(
        "--json", action="store_true", help="also print all figures as one JSON object (last line)"
    )
    p.set_defaults(func=cmd_evaluate)


# ------------------------------------------------------------------------- end evaluate (log-key model)


# ------------------------------------------------------------------------------------------- commands


def cmd_config_example(args: argparse.Namespace) -> int:
    sys.stdout.write(example_config_text())
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    cfg = load_config(args.file)
    print(f"{args.file}: OK (source index {cfg.source.index!r}, {len(cfg.elasticsearch.hosts)} host(s))")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Run one benchmark module (deeplog_siem.bench.NAME); with --json its result is the last stdout line."""
    result = args.bench_module.run(args, progress)
    if args.json:
        print_json(result)
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0


# ---------------------------------------------------------------------------------------------- parser


def _add_config_arg(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "-c",
        "--config",
        required=required,
        metavar="FILE",
        help="YAML configuration file (see `deeplog-siem config example`)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deeplog-siem",
        description="DeepLog-style anomaly detection and explanation for logs in Elasticsearch/OpenSearch.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="debug logging and full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_evaluate_parser(sub)

    p = sub.add_parser("config", help="print the example configuration or validate a configuration file")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    pe = csub.add_parser("example", help="print the commented example configuration to stdout")
    pe.set_defaults(func=cmd_config_example)
    pc = csub.add_parser("check", help="validate a configuration file without connecting to anything")
    pc.add_argument("file", metavar="FILE", help="YAML configuration file")
    pc.set_defaults(func=cmd_config_check)

    p = sub.add_parser("bench", help="run a benchmark and print its figures (--json: one JSON line)")
    bsub = p.add_subparsers(dest="bench_name", metavar="NAME", required=True)
    for name in BENCHES:
        try:
            mod = importlib.import_module(f"deeplog_siem.bench.{name}")
        except ImportError:  # a benchmark whose module is not there (yet) is not offered
            continue
        pb = bsub.add_parser(name, help=(mod.__doc__ or name).strip().splitlines()[0])
        pb.add_argument("--json", action="store_true", help="print the result as one JSON object (last line)")
        mod.add_arguments(pb)
        pb.set_defaults(func=cmd_bench, bench_module=mod)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        _setup_logging("DEBUG" if args.debug else "INFO")
    try:
        return int(args.func(args) or 0)
    except DeeplogError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def print_json(obj: Any) -> None:
    """One JSON object on one line: the machine-readable last line of `--json` output."""
    print(json.dumps(obj, sort_keys=True, default=str))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
