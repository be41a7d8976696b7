"""`deeplog-siem setup`: install the index templates, policies, pipelines, indices and Kibana saved objects.

Contract: config -> one line per step and a summary (with --json also the steps as one JSON line); exit 1
when a step failed, 0 otherwise; --dry-run writes nothing. After a real run the current model version's
workflows are (re)published, so a fresh cluster shows them without waiting for the next training.
"""

from __future__ import annotations

import argparse

from . import Subparsers, Wanted, add_parser
from .common import add_config_arg, connect, load
from .console import print_json


def cmd_setup(args: argparse.Namespace) -> int:
    from ..setup_assets import run_setup

    cfg = load(args)
    clients = connect(cfg)
    try:
        report = run_setup(clients, cfg, kibana_url=args.kibana_url, dry_run=args.dry_run)
        workflows = None
        if not args.dry_run and not report.failed:
            from ..runner import publish_current_workflows  # torch: only when there is a model to publish

            workflows = publish_current_workflows(clients, cfg)
    finally:
        clients.close()
    if args.dry_run:
        print("dry run: nothing is written; this is what setup would do", flush=True)
    for step in report.steps:
        print(step.line(), flush=True)
    if workflows:
        print(workflows, flush=True)
    print(report.summary(), flush=True)
    if args.json:
        steps = [vars(s) for s in report.steps]
        print_json({"dry_run": report.dry_run, "counts": report.counts(), "steps": steps})
    return 1 if report.failed else 0


def register(sub: Subparsers, wanted: Wanted) -> None:
    p = add_parser(sub, "setup")
    add_config_arg(p)
    p.add_argument(
        "--kibana-url",
        metavar="URL",
        help="Kibana / OpenSearch Dashboards URL (overrides kibana.url); the elasticsearch credentials go to it "
        "only when it is an elasticsearch host or with kibana.use_elasticsearch_credentials: true",
    )
    p.add_argument("--dry-run", action="store_true", help="print what would be done, write nothing")
    p.add_argument("--json", action="store_true", help="also print the steps as one JSON line")
    p.set_defaults(func=cmd_setup)
