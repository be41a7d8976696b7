"""Helpers shared by the command modules: the -c/--config argument, loading it, connecting, a run's report.

Contract: `load(args)` reads and validates `args.config` (ConfigError on a bad file) and sets up logging from
it; `connect(cfg)` returns the clients (the caller closes them); `report_run` prints a finished run and maps
its status to the exit code.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ..config import Config, load_config
from .console import print_json, setup_logging

if TYPE_CHECKING:
    from ..es import Clients


def add_config_arg(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "-c",
        "--config",
        required=required,
        metavar="FILE",
        help="YAML configuration file (see `deeplog-siem config example`)",
    )


def load(args: argparse.Namespace) -> Config:
    cfg = load_config(args.config)
    setup_logging("DEBUG" if args.debug else cfg.logging.level, cfg.logging.file, cfg.logging.json)
    return cfg


def connect(cfg: Config) -> Clients:
    # The Elasticsearch client is imported only by the commands that talk to the cluster.
    from ..es import connect as es_connect

    return es_connect(cfg.elasticsearch)


def report_run(summary: Any, cfg: Config, as_json: bool) -> int:
    """A finished run on stdout (its run document with --json, else its summary line); exit 1 unless ok."""
    if as_json:
        print_json(summary.document(cfg.output.runs_index)["deeplog"]["run"])
    else:
        print(summary.line())
    return 0 if summary.status == "ok" else 1
