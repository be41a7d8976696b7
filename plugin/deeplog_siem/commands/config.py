"""`deeplog-siem config example|check|privileges`: the commented example configuration, validation of a
file, and the cluster privileges each command needs.

Contract: `check FILE` loads and validates FILE without connecting to anything: one OK line, or a
ConfigError naming the dotted key (exit 2). It imports neither torch nor the lab, so it stays instant.
`privileges` prints the privileges table of the README (markdown), from `deeplog_siem.privileges`.
"""

from __future__ import annotations

import argparse
import sys

from ..config import example_config_text, load_config
from . import Subparsers, Wanted, add_parser


def cmd_config_example(args: argparse.Namespace) -> int:
    sys.stdout.write(example_config_text())
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    cfg = load_config(args.file)
    print(f"{args.file}: OK (source index {cfg.source.index!r}, {len(cfg.elasticsearch.hosts)} host(s))")
    return 0


def cmd_config_privileges(args: argparse.Namespace) -> int:
    from ..privileges import render_markdown

    sys.stdout.write(render_markdown())
    return 0


def register(sub: Subparsers, wanted: Wanted) -> None:
    p = add_parser(sub, "config")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    pe = csub.add_parser("example", help="print the commented example configuration to stdout")
    pe.set_defaults(func=cmd_config_example)
    pc = csub.add_parser("check", help="validate a configuration file without connecting to anything")
    pc.add_argument("file", metavar="FILE", help="YAML configuration file")
    pc.set_defaults(func=cmd_config_check)
    pp = csub.add_parser("privileges", help="print the cluster and index privileges each command needs")
    pp.set_defaults(func=cmd_config_privileges)
