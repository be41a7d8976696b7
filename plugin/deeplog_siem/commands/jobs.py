"""`deeplog-siem train|detect|run`: the jobs against the cluster.

Contract: config -> `train` publishes a new model version; `detect` runs detection once (--once: new
documents since the checkpoint; --start/--end: a backfill with its own checkpoint; with --preview, a backfill
into `output.preview` that alerts nobody: no incident, the live checkpoint, tails and recent-traffic sample
untouched) and exits 1 unless the run is ok; with `workers.partitions` > 1, --once runs every partition whose
lease it can take, one after the other (those another worker holds are listed as skipped), and exits 1 unless
every run it made is ok; `run` is the scheduled job until SIGTERM or Ctrl-C (`--listen` overrides
`health.listen`). The clients are closed on every path.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

from ..config import Config, parse_listen
from ..errors import DeeplogError
from . import Subparsers, Wanted, add_parser
from .common import add_config_arg, connect, load, report_run
from .console import print_json, progress

log = logging.getLogger(__name__)


def cmd_train(args: argparse.Namespace) -> int:
    from ..runner import train

    cfg = load(args)
    clients = connect(cfg)
    try:
        t = train(cfg, clients, start=args.start, end=args.end, index=args.index, progress=progress)
    finally:
        clients.close()
    print(
        f"model version {t.version} published in {cfg.model.dir}: {t.sessions} sessions, {t.docs} documents, "
        f"{t.templates} templates (format {t.format}), skipped {t.skipped or 0}"
    )
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from ..runner import run_once

    cfg = load(args)
    if args.preview and (args.once or not (args.start or args.end)):
        raise DeeplogError("--preview is a backfill: give --start and/or --end, not --once")
    if not args.once and not (args.start or args.end):
        raise DeeplogError(
            "detect needs --once (new documents since the checkpoint) or --start/--end (backfill)"
        )
    if args.once and cfg.workers.partitions > 1:
        return _detect_partitions(cfg, args)
    clients = connect(cfg)
    try:
        summary = run_once(
            cfg,
            clients,
            start=args.start,
            end=args.end,
            close_sessions=args.close_sessions,
            progress=progress,
            preview=args.preview,
        )
    finally:
        clients.close()
    return report_run(summary, cfg, args.json)


def _detect_partitions(cfg: Config, args: argparse.Namespace) -> int:
    from ..membership import worker_id
    from ..partitions import all_partitions
    from ..runner import run_partition

    clients = connect(cfg)
    runs, skipped = [], []
    try:
        for part in all_partitions(cfg.workers.partitions, cfg.workers.partition_field):
            summary = run_partition(
                cfg,
                clients,
                partition=part,
                worker=worker_id(cfg),
                close_sessions=args.close_sessions,
                progress=progress,
            )
            if summary is None:
                skipped.append(part.index)
            else:
                runs.append(summary)
    finally:
        clients.close()
    if args.json:
        docs = [s.document(cfg.output.runs_index)["deeplog"]["run"] for s in runs]
        print_json({"runs": docs, "skipped_partitions": skipped})
    else:
        for s in runs:
            print(s.line())
        if skipped:
            print(f"partitions held by another worker, skipped: {skipped}")
    return 0 if all(s.status == "ok" for s in runs) else 1


def cmd_run(args: argparse.Namespace) -> int:
    from .. import stopping
    from ..scheduler import run_daemon

    cfg = load(args)
    if args.listen is not None:
        parse_listen(args.listen, "--listen")
        cfg = cfg.replace(health=dataclasses.replace(cfg.health, listen=args.listen))
    stop = stopping.install()
    clients = connect(cfg)
    try:
        run_daemon(cfg, clients, stop)
    finally:
        clients.close()
    return 0


def register(sub: Subparsers, wanted: Wanted) -> None:
    p = add_parser(sub, "train")
    add_config_arg(p)
    p.add_argument("--start", metavar="ISO8601", help="only logs with timestamp >= this")
    p.add_argument("--end", metavar="ISO8601", help="only logs with timestamp < this")
    p.add_argument("--index", help="read training logs from this index pattern instead of source.index")
    p.set_defaults(func=cmd_train)

    p = add_parser(sub, "detect")
    add_config_arg(p)
    p.add_argument(
        "--once", action="store_true", help="process everything new since the checkpoint, then exit"
    )
    p.add_argument(
        "--start", metavar="ISO8601", help="backfill: logs with timestamp >= this (own checkpoint)"
    )
    p.add_argument("--end", metavar="ISO8601", help="backfill: logs with timestamp < this")
    p.add_argument(
        "--close-sessions",
        action="store_true",
        help="treat every open session as finished at the end (scores end-of-session; for backfills)",
    )
    p.add_argument(
        "--preview",
        action="store_true",
        help="backfill into output.preview_index: no incidents, no alerts, the live checkpoint untouched",
    )
    p.add_argument("--json", action="store_true", help="print the run summary as one JSON object")
    p.set_defaults(func=cmd_detect)

    p = add_parser(sub, "run")
    add_config_arg(p)
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="serve /healthz and /metrics here instead of health.listen (port 0: a free port; '' : off)",
    )
    p.set_defaults(func=cmd_run)
