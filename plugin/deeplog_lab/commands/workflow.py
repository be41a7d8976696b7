"""`deeplog-siem workflow hdfs`: workflows of the HDFS key files and real abnormal sessions diagnosed.

Contract: HDFS key files (the shared data by default) -> the mined workflows as text, the task-level
transitions and the diagnosis of --anomalies abnormal sessions (with --json also one JSON object);
--out DIR also saves the workflow model there. With --pictures DIR it draws real HDFS anomalies instead: on
the embedded server, replayed HDFS sessions are trained on and detected, and two anomalies are drawn on their
workflows by `workflow show --anomaly` and by the Kibana graph's Vega spec (`workflow_pictures`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deeplog_siem.commands import Subparsers, add_parser
from deeplog_siem.commands.console import print_json, progress


def cmd_workflow_hdfs(args: argparse.Namespace) -> int:
    """HDFS key files: the workflow model, its picture, and real abnormal sessions diagnosed end to end."""
    from ..evaluate_workflows import hdfs_names, hdfs_report
    from ..keyseq import HDFS_DIR

    if args.pictures:
        from ..workflow_pictures import draw_hdfs_anomalies

        for d in draw_hdfs_anomalies(args.pictures, progress=progress):
            print(f"anomaly {d['id']}: {d['summary']}")
            print("  " + "\n  ".join(d["files"]))
        return 0

    r = hdfs_report(
        args.train or str(HDFS_DIR / "hdfs_train"),
        args.test or str(HDFS_DIR / "hdfs_test_abnormal_dev"),
        args.templates or str(HDFS_DIR / "HDFS_templates.csv"),
        n_anomalies=args.anomalies,
        key_model=not args.no_key_model,
        progress=progress,
    )
    wm = r.pop("model")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        wm.save(out)
        print(
            f"workflow model saved to {out} (show it with: deeplog-siem workflow show w1 --model-dir {out})"
        )
    print(f"{len(r['workflows'])} workflows from {r['sessions']} HDFS training sessions")
    for text in r["text"]:
        print(text)
    print(f"task-level transitions: {r['transitions']}")
    for a in r["anomalies"]:
        summary = hdfs_names(a["diagnosis"]["summary"])
        print(f"abnormal session {a['session']} (event {a['position']}, {a['key']}): {summary}")
    if args.json:
        print_json({k: v for k, v in r.items() if k != "text"})
    return 0


def register_hdfs(wsub: Subparsers) -> None:
    q = add_parser(wsub, "workflow hdfs")
    q.add_argument("--train", help="training key sessions (default: shared data hdfs_train)")
    q.add_argument("--test", help="abnormal key sessions to diagnose (default: hdfs_test_abnormal_dev)")
    q.add_argument("--templates", help="EventId,EventTemplate CSV (default: shared data HDFS_templates.csv)")
    q.add_argument("--anomalies", type=int, default=5, help="abnormal sessions to diagnose (default 5)")
    q.add_argument("--no-key-model", action="store_true", help="counts only; no small key model")
    q.add_argument("--out", metavar="DIR", help="also save the workflow model (workflows.json) in DIR")
    q.add_argument(
        "--json", action="store_true", help="also print the figures as one JSON object (last line)"
    )
    q.add_argument(
        "--pictures",
        metavar="DIR",
        help="instead: draw two real HDFS anomalies (command-line SVG and Kibana Vega graph) into DIR",
    )
    q.set_defaults(func=cmd_workflow_hdfs)
