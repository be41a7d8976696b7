"""`deeplog-siem feedback mark|apply` and `deeplog-siem model list|restore`: verdicts and model versions.

Contract: `feedback mark` sets one responder's verdict on one anomaly document; `feedback apply` runs the
feedback job once (exit 1 unless the run is ok); `model list` prints the versions with their lineage (or one
JSON array); `model restore VERSION` makes an earlier version current again under the store's lock, so a
concurrent publication cannot interleave. Unknown documents or versions are DeeplogErrors (exit 2).
"""

from __future__ import annotations

import argparse
from typing import Any

from ..config import load_config
from ..errors import DeeplogError
from . import Subparsers, Wanted, add_parser
from .common import add_config_arg, connect, load, report_run
from .console import print_json


def cmd_feedback_mark(args: argparse.Namespace) -> int:
    from ..feedback import FALSE_POSITIVE, TRUE_POSITIVE, mark

    cfg = load(args)
    verdict = FALSE_POSITIVE if args.false_positive else TRUE_POSITIVE
    clients = connect(cfg)
    try:
        outcome = mark(clients, cfg, args.id, verdict, by=args.by, comment=args.comment)
    finally:
        clients.close()
    if outcome == "unchanged":
        print(f"{args.id}: already {verdict} and processed by the feedback job; nothing changed")
    else:
        print(
            f"{args.id}: marked {verdict}; the next feedback run (or `deeplog-siem feedback apply`) uses it"
        )
    return 0


def cmd_feedback_apply(args: argparse.Namespace) -> int:
    from ..feedback import apply_feedback

    cfg = load(args)
    clients = connect(cfg)
    try:
        summary = apply_feedback(cfg, clients)
    finally:
        clients.close()
    return report_run(summary, cfg, args.json)


def _origin(r: dict[str, Any]) -> str:
    """Where a model version comes from: trained, retrained in place of its parent, or feedback (key or
    parameter) on its parent."""
    if r["parent"] and r.get("feedback_kind") == "retrain":
        return f"retrained in place of {r['parent']} (its feedback carried over)"
    if r["parent"] and r.get("feedback_kind") == "parameter":
        return (
            f"parameter feedback on {r['parent']} ({r['feedback_applied']} false positives, thresholds "
            f"widened for {len(r.get('series_widened') or {})} series)"
        )
    if r["parent"]:
        fa = (
            f", held-out false alarms {r['heldout_false_alarm_before']:.4%} -> "
            f"{r['heldout_false_alarm_after']:.4%}"
        )
        return f"feedback on {r['parent']} ({r['feedback_applied']} false positives{fa})"
    return "trained"


def cmd_model_list(args: argparse.Namespace) -> int:
    from ..artifacts import ModelStore
    from ..feedback import describe_versions

    cfg = load_config(args.config)
    rows = describe_versions(ModelStore(cfg.model.dir))
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print(f"no model versions in {cfg.model.dir}")
    for r in rows:
        if "error" in r:
            print(f"  {r['version']}  unreadable: {r['error']}")
            continue
        mark = "*" if r["current"] else " "
        print(f"{mark} {r['version']}  created {r['created']}  {_origin(r)}")
    return 0


def cmd_model_restore(args: argparse.Namespace) -> int:
    from ..artifacts import ModelStore

    cfg = load_config(args.config)
    store = ModelStore(cfg.model.dir)
    with store.lock():
        try:
            before = store.current()[0]
        except DeeplogError:
            before = None
        store.restore(args.version)
    print(f"model version {args.version} is current again (was {before}); the detection job picks it up")
    return 0


def register(sub: Subparsers, wanted: Wanted) -> None:
    p = add_parser(sub, "feedback")
    fsub = p.add_subparsers(dest="feedback_command", metavar="ACTION", required=True)
    pm = fsub.add_parser("mark", help="set deeplog.feedback on one anomaly document")
    add_config_arg(pm)
    pm.add_argument("id", metavar="ID", help="_id of the anomaly document")
    g = pm.add_mutually_exclusive_group(required=True)
    g.add_argument("--false-positive", action="store_true", help="the event was normal: learn it")
    g.add_argument("--true-positive", action="store_true", help="a real anomaly (kept for metrics)")
    pm.add_argument("--by", metavar="NAME", help="who gives the verdict (deeplog.feedback_by)")
    pm.add_argument("--comment", metavar="TEXT", help="why (deeplog.feedback_comment)")
    pm.set_defaults(func=cmd_feedback_mark)
    pa = fsub.add_parser("apply", help="run the feedback job once: fine-tune on new false positives")
    add_config_arg(pa)
    pa.add_argument("--json", action="store_true", help="print the run summary as one JSON object")
    pa.set_defaults(func=cmd_feedback_apply)

    p = add_parser(sub, "model")
    msub = p.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    pl = msub.add_parser("list", help="model versions, oldest first (* = current), with feedback lineage")
    add_config_arg(pl)
    pl.add_argument("--json", action="store_true", help="print the versions as one JSON array")
    pl.set_defaults(func=cmd_model_list)
    pr = msub.add_parser("restore", help="make an earlier model version current again (rollback)")
    add_config_arg(pr)
    pr.add_argument("version", metavar="VERSION", help="version directory name (see `model list`)")
    pr.set_defaults(func=cmd_model_restore)
