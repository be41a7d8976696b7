"""`deeplog-siem check`: the watchdog, for cron or a systemd timer.

Contract: config -> one line on stdout and the exit code: 0 when a detection run was recorded within the
allowed age (`--max-age`, default three detection intervals and at least 10 minutes), 1 when none was (the
watchdog fires: the daemon is stopped, stuck or cannot write), 2 when the check itself cannot be made (a bad
configuration, an unreachable cluster). The clients are closed on every path.
"""

from __future__ import annotations

import argparse

from ..errors import DeeplogError
from . import Subparsers, Wanted, add_parser
from .common import add_config_arg, connect, load


def cmd_check(args: argparse.Namespace) -> int:
    from elasticsearch import ApiError, TransportError

    from ..watchdog import check

    cfg = load(args)
    if args.max_age is not None and args.max_age < 1:
        raise DeeplogError(f"--max-age must be >= 1 second, got {args.max_age}")
    clients = connect(cfg)
    try:
        verdict = check(clients, cfg, max_age_s=args.max_age)
    except (ApiError, TransportError) as e:
        raise DeeplogError(f"cannot read {cfg.output.runs_index}: {e}") from None
    finally:
        clients.close()
    print(verdict.line())
    return 1 if verdict.fires else 0


def register(sub: Subparsers, wanted: Wanted) -> None:
    p = add_parser(sub, "check")
    add_config_arg(p)
    p.add_argument(
        "--max-age",
        type=int,
        metavar="SECONDS",
        help="alert when the newest detection run is older than this (default: 3 detection intervals, >= 600)",
    )
    p.set_defaults(func=cmd_check)
