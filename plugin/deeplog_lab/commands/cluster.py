"""`deeplog-siem server`, `replay` and `demo`: the embedded server, HDFS logs into an index, the demo.

Contract: `server` serves the embedded in-memory server until Ctrl-C or SIGTERM; `replay` renders DeepLog
HDFS key sessions (a key file or the packaged sample) as raw HDFS lines and indexes them into the configured
cluster; `demo` runs the end-to-end demo on the embedded server and writes summary.json (with --json also
printed). Cluster and data errors are DeeplogErrors (exit 2).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from deeplog_siem.commands import Subparsers, add_parser
from deeplog_siem.commands.common import add_config_arg, connect, load
from deeplog_siem.commands.console import print_json, progress

if TYPE_CHECKING:
    from ..demo import DemoResult


def cmd_server(args: argparse.Namespace) -> int:
    from ..server import serve_forever, start_embedded, stop_signals

    with stop_signals() as done:  # a Ctrl-C right after the URL is printed still stops the server cleanly
        server = start_embedded(port=args.port)
        url, persona = server.url, None
        if args.persona:
            from ..personas import start_persona

            persona = start_persona(args.persona, server.url)
            url = persona.url
        what = f" behind a strict {args.persona} persona" if args.persona else ""
        print(
            f"embedded server (in-memory, OpenSearch-compatible {server.version}){what} at {url}", flush=True
        )
        print(
            "set elasticsearch.hosts to this URL; Ctrl-C stops it (data is kept in memory only)", flush=True
        )
        try:
            serve_forever(server, done)
        finally:
            if persona is not None:
                persona.stop()
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from datetime import datetime

    from ..keyseq import read_key_sessions
    from ..replay import EPOCH, index_lines, load_sample, render

    cfg = load(args)
    if args.keys:
        sessions = read_key_sessions(args.keys)
    else:
        sample = load_sample()
        sessions = {"train": sample.train, "test": sample.test, "all": sample.train + sample.test}[
            args.sample
        ]
    sessions = sessions[: args.limit] if args.limit else sessions
    start = datetime.fromisoformat(args.start) if args.start else EPOCH
    lines = render(sessions, seed=args.seed, start=start)
    index = args.index or cfg.source.index
    progress(f"replaying {len(sessions)} sessions ({len(lines)} lines) into {index} ...")
    clients = connect(cfg)
    try:
        n = index_lines(clients, index, lines, run=args.run or f"replay-{args.seed}", progress=progress)
    finally:
        clients.close()
    print(f"indexed {n} log documents into {index}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo, write_summary

    def keep(server, result) -> None:
        from ..server import serve_forever

        _print_demo(result)
        print(f"\nthe embedded server stays up at {server.url} until Ctrl-C", flush=True)
        serve_forever(server)

    result = run_demo(
        model_dir=args.model_dir,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
        progress=progress,
        keep=keep if args.keep_running else None,
    )
    if not args.keep_running:
        _print_demo(result)
    summary = Path(args.output) / "summary.json"
    write_summary(summary, result)
    if args.json:
        print_json(json.loads(summary.read_text()))
    return 0


def _print_demo(r: DemoResult) -> None:
    d = r.detect
    out = r.config.output
    print()
    print("=" * 100)
    print("deeplog-siem demo: DeepLog on real HDFS block sessions (loghub / DeepLog data), embedded server")
    print("=" * 100)
    print(f"training logs        {r.train_docs} lines replayed and learned")
    print(
        f"test mix             {r.test_docs} lines, {r.test_sessions} sessions, {r.anomalous_sessions} labelled anomalous"
    )
    print(
        f"detection            {d.docs_read} documents read, {d.sessions} sessions, {d.anomalies_total} anomaly documents"
    )
    print(f"                     by type: {dict(d.anomalies)}; skipped: {dict(d.skipped) or 0}")
    print(
        f"session-level        flagged {r.flagged_sessions}, true positives {r.true_positives}: "
        f"precision {r.precision:.3f}, recall {r.recall:.3f}"
    )
    print(
        f"indices              anomalies: {out.anomalies_index}  runs: {out.runs_index}  state: {out.state_index}"
    )
    print(f"model                {r.config.model.dir}/{d.model_version}")
    print(f"severity             anomaly documents per band: {r.severity}")
    print(f"incidents            {r.incidents} sessions in {out.incidents}; the riskiest:")
    for inc in r.top_incidents:
        dl = inc["deeplog"]
        i = dl["incident"]
        print(
            f"  {i['severity']:<8} risk {i['risk_score']:5.1f}  {dl['session']['id']:<28} "
            f"{i['anomaly_count']} anomalies { ({t: n for t, n in i['counts'].items() if n}) }"
        )
    for i, ex in enumerate(r.examples, 1):
        dl = ex["deeplog"]
        print(f"\nexample {i}: {dl['summary']}")
        print(f"  message : {ex['message']}")
        print(f"  actual  : K{dl['key']['id']} {dl['key']['template']!r} p={dl['key']['probability']:.4f}")
        for e in dl["expected"][:3]:
            print(f"  expected: K{e['key_id']} {e['template']!r} p={e['probability']:.3f}")
        wf = dl.get("workflow") or {}
        if wf.get("summary"):
            print(f"  workflow: {wf['summary']}")
    print(
        "\nWhere to look: the anomaly documents are in the index above (Kibana: import kibana/*.ndjson and open the "
        "'DeepLog anomaly investigation' dashboard). The embedded server keeps data in memory only; rerun with "
        "`deeplog-siem demo --keep-running` to explore it with curl or Dev Tools."
    )


def register(sub: Subparsers) -> None:
    p = add_parser(sub, "server")
    p.add_argument("--port", type=int, default=0, help="loopback port to listen on (default: a free port)")
    p.add_argument(
        "--persona",
        choices=("elasticsearch", "opensearch"),
        help="serve through a strict Elasticsearch or OpenSearch persona (a proxy on its own free port) "
        "that behaves as the real product where the embedded server is lenient",
    )
    p.set_defaults(func=cmd_server)

    p = add_parser(sub, "replay")
    add_config_arg(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--keys", metavar="FILE", help="DeepLog key-sequence file (one session per line)")
    g.add_argument(
        "--sample",
        choices=("train", "test", "all"),
        default="train",
        help="the packaged labelled sample: normal training sessions, the test mix, or both (default: train)",
    )
    p.add_argument("--limit", type=int, help="replay at most this many sessions")
    p.add_argument(
        "--seed", type=int, default=0, help="seed for block ids, IPs, sizes and timing (default 0)"
    )
    p.add_argument("--start", metavar="ISO8601", help="time of the first line (default 2008-11-09T20:35:15Z)")
    p.add_argument("--index", help="target index (default: source.index of the config)")
    p.add_argument("--run", help="name used in document ids; the same name overwrites instead of duplicating")
    p.set_defaults(func=cmd_replay)

    p = add_parser(sub, "demo")
    p.add_argument(
        "--model-dir", default="models/demo", help="where the demo's model is written (default models/demo)"
    )
    p.add_argument(
        "--limit-train", type=int, help="train on at most this many sample sessions (default: all 4855)"
    )
    p.add_argument(
        "--limit-test", type=int, help="test on at most this many sample sessions (default: all 1100)"
    )
    p.add_argument("--output", default="demo-output", help="folder for summary.json (default demo-output)")
    p.add_argument(
        "--keep-running", action="store_true", help="keep the embedded server up afterwards until Ctrl-C"
    )
    p.add_argument("--json", action="store_true", help="also print the summary as one JSON object")
    p.set_defaults(func=cmd_demo)
