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
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from deeplog_lab.bench import BENCHES

from . import __version__
from .config import Config, FeedbackConfig, example_config_text, load_config
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

    from deeplog_lab.evaluate import run_evaluation

    from .config import ModelConfig
    from .errors import ConfigError

    overrides = {k: v for k in ModelConfig.__dataclass_fields__ if (v := getattr(args, k, None)) is not None}
    cfg = dataclasses.replace(ModelConfig(), **overrides)
    cfg.validate("model")
    for name in ("normal", "abnormal"):
        if getattr(args, name) is None:
            raise ConfigError(
                f"--{name}: no file given and ../shared/data/hdfs_keys is not beside the checkout"
            )
    r = run_evaluation(
        args.train,  # with --model it is read only for the workflows (model.concurrency)
        args.normal,
        args.abnormal,
        cfg,
        model_path=args.model,
        save=args.save,
        limit=args.limit,
        progress=progress,
    )
    print(f"protocol: {r['protocol']}")
    if r.get("concurrent_pairs"):
        pairs = ", ".join(f"K{a} || K{b}" for a, b in r["concurrent_pairs"])
        print(f"concurrent steps from the training workflows (first occurrences accepted): {pairs}")
    print(
        f"window h={r['window']}, top g={r['top_g']}, min probability {r['min_probability']:g}, "
        f"model {r['model_args']}, device {r['device']}"
    )
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
    from deeplog_lab.shared_data import shared_data_dir

    def default(name: str) -> str | None:
        p = shared_data_dir() / "hdfs_keys" / name
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
        ("min_probability", float),
        ("layers", int),
        ("hidden", int),
        ("embedding", int),
        ("dropout", float),
        ("epochs", int),
        ("batch_size", int),
        ("learning_rate", float),
        ("label_smoothing", float),
        ("patience", int),
        ("validation_fraction", float),
        ("seed", int),
    ):
        p.add_argument("--" + name.replace("_", "-"), type=typ, dest=name, metavar="N", help=f"model.{name}")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="model.device (default auto)")
    p.add_argument(
        "--no-concurrency",
        dest="concurrency",
        action="store_const",
        const=False,
        help="model.concurrency off: judge the order of concurrent steps too (plain DeepLog top-g)",
    )
    p.add_argument(
        "--json", action="store_true", help="also print all figures as one JSON object (last line)"
    )
    p.set_defaults(func=cmd_evaluate)


# ------------------------------------------------------------------------- end evaluate (log-key model)


# ------------------------------------------------------------------ evaluate-params / generate (issue 5)


def cmd_evaluate_params(args: argparse.Namespace) -> int:
    """Generated OpenStack-like logs: recall per slowdown (parameter model), FP rate, path recall (key model)."""
    from deeplog_lab.evaluate_params import run

    r = run(args.seed, n_train=args.train_tasks, n_test=args.test_tasks, progress=progress)
    print(
        f"seed {r['seed']}: {r['n_train_tasks']} training tasks, {r['n_test_tasks']} test tasks, "
        f"{r['templates']} templates, confidence {r['confidence']}, top g={r['top_g']}"
    )
    for k in ("2x", "3x", "5x"):
        print(
            f"slowdown {k}: recall {r['recall_' + k]:.4f} of {r['slowed_tasks_' + k]} tasks "
            f"(flag on the slowed line: {r['localised_' + k]:.4f})"
        )
    print(
        f"false positives: {r['fp_tasks']} of {r['normal_tasks']} normal tasks (fp_rate {r['fp_rate']:.4%}); "
        f"counting unlabelled tasks of anomalous sessions too: {r['fp_rate_all_unlabelled']:.4%}"
    )
    print(f"path anomalies found by the key model: {r['path_recall']:.4f} {r['path_by_kind']}")
    inf = r["inference"]
    print(
        f"inference over {inf['events']} events, {inf['keys']} series: one forward per key group "
        f"{inf['per_key_group_seconds']:.2f}s, one multi-key model {inf['multi_key_seconds']:.2f}s ({inf['note']})"
    )
    if args.json:
        print_json(r)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Write generated OpenStack-like logs, the label file (JSON lines) and optionally the task graphs."""
    from pathlib import Path

    from deeplog_lab.workload import generate_workload

    w = generate_workload(args.tasks, args.seed, args.anomaly_rate, tuple(args.slowdowns), args.path_rate)
    w.write(args.out, args.labels)
    if args.graphs:
        Path(args.graphs).write_text(json.dumps(w.graphs, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(
        f"{len(w.lines)} lines of {len(w.tasks)} tasks to {args.out}; {len(w.labels)} labels to {args.labels}"
    )
    return 0


def _add_params_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate-params",
        help="parameter-value model on generated OpenStack-like logs: recall per slowdown, FP, path recall",
    )
    p.add_argument("--seed", type=int, default=0, help="workload and model seed (test data uses seed + 1)")
    p.add_argument("--train-tasks", type=int, default=4000, help="normal training tasks (default 4000)")
    p.add_argument("--test-tasks", type=int, default=6000, help="test tasks (default 6000)")
    p.add_argument(
        "--json", action="store_true", help="also print all figures as one JSON object (last line)"
    )
    p.set_defaults(func=cmd_evaluate_params)

    p = sub.add_parser("generate", help="write generated OpenStack-like logs of VM tasks and their labels")
    p.add_argument("--tasks", type=int, default=1000, help="number of tasks (default 1000)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="workload seed (default 0): the same seed writes the same logs and labels",
    )
    p.add_argument("--anomaly-rate", type=float, default=0.0, help="share of tasks with one slowed step")
    p.add_argument("--slowdowns", type=float, nargs="+", default=[2.0, 3.0, 5.0], help="slowdown factors")
    p.add_argument("--path-rate", type=float, default=0.0, help="share of tasks with a path anomaly")
    p.add_argument("--out", default="openstack-generated.log", help="log file to write")
    p.add_argument("--labels", default="openstack-generated.labels.jsonl", help="label file (JSON lines)")
    p.add_argument("--graphs", help="also write the true task graphs (JSON) here")
    p.set_defaults(func=cmd_generate)


# -------------------------------------------------------------- end evaluate-params / generate (issue 5)

# ---------------------------------------------------------------- workflows / evaluate-workflows (issue 8)


def cmd_evaluate_workflows(args: argparse.Namespace) -> int:
    """Generated OpenStack-like tasks: mined workflows against the generator's true task graphs."""
    from deeplog_lab.evaluate_workflows import main_figures

    seeds = args.seed or [0]
    from .workflow_mining import MiningParams

    params = MiningParams(split_gap_s=args.split_gap)
    r = main_figures(
        seeds, args.tasks, not args.no_key_model, progress, path_rate=args.path_rate, params=params
    )
    print(
        f"{len(seeds)} seeds, {args.tasks} tasks each: edge recall >= {r['edge_recall_min']:.4f}, "
        f"spurious edges <= {r['spurious_rate_max']:.4f} (targets >= 0.95, <= 0.05)"
    )
    if args.json:
        print_json(r)
    return 0


def _workflow_model(args: argparse.Namespace):
    """The workflow model named by --model-dir (a model directory or one version in it) or the config."""
    from pathlib import Path

    from .artifacts import ModelStore
    from .workflow import WORKFLOWS_FILE, WorkflowModel

    if args.model_dir:
        d = Path(args.model_dir)
        if (d / WORKFLOWS_FILE).is_file():
            return d.name, WorkflowModel.load(d)
    elif args.config:
        d = Path(_load(args).model.dir)
    else:
        raise DeeplogError("workflow: give --model-dir DIR or -c/--config FILE")
    store = ModelStore(d)
    version, path = (args.version, d / args.version) if args.version else store.current()
    return version, WorkflowModel.load(path)


def cmd_workflow_list(args: argparse.Namespace) -> int:
    version, wm = _workflow_model(args)
    print(f"model version {version}: {len(wm.workflows)} workflows from {wm.sessions} sessions")
    for w in wm.workflows:
        print(f"  {w.name}: {w.sessions} paths, {len(w.nodes)} states, {len(w.edges)} edges  {w.title}")
    return 0


def cmd_workflow_show(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .workflow import render_dot, render_png, render_svg, render_text

    if args.format == "png" and not args.output:
        raise DeeplogError("--format png writes an image: give --output FILE.png")
    _, wm = _workflow_model(args)
    w = wm.get(args.name)
    if args.format == "png":
        Path(args.output).write_bytes(render_png(w))
        print(f"wrote png of workflow {w.name} to {args.output}")
        return 0
    text = {"text": render_text, "dot": render_dot, "svg": render_svg}[args.format](w)
    if args.output:
        Path(args.output).write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        print(f"wrote {args.format} of workflow {w.name} to {args.output}")
    else:
        print(text.rstrip("\n"))
    return 0


def cmd_workflow_hdfs(args: argparse.Namespace) -> int:
    """HDFS key files: the workflow model, its picture, and real abnormal sessions diagnosed end to end."""
    from deeplog_lab.evaluate_workflows import hdfs_names, hdfs_report
    from deeplog_lab.keyseq import HDFS_DIR

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
        from pathlib import Path

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
        print(
            f"abnormal session {a['session']} (event {a['position']}, {a['key']}): {hdfs_names(a['diagnosis']['summary'])}"
        )
    if args.json:
        print_json({k: v for k, v in r.items() if k != "text"})
    return 0


def _add_workflow_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate-workflows",
        help="mine workflows from generated OpenStack-like tasks and compare them with the true task graphs",
    )
    p.add_argument(
        "--seed", type=int, action="append", help="workload seed; repeat for several seeds (default 0)"
    )
    p.add_argument("--tasks", type=int, default=1500, help="generated normal tasks per seed (default 1500)")
    p.add_argument(
        "--no-key-model",
        action="store_true",
        help="build from counts alone, without checking edges with a small trained key model",
    )
    p.add_argument(
        "--path-rate",
        type=float,
        default=0.0,
        help="share of training tasks with an injected path anomaly (noise the mining must filter; default 0)",
    )
    p.add_argument(
        "--split-gap",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="idle gap that ends a task inside a session (default 30; 0: never split, an ablation)",
    )
    p.add_argument(
        "--json", action="store_true", help="also print all figures as one JSON object (last line)"
    )
    p.set_defaults(func=cmd_evaluate_workflows)

    p = sub.add_parser("workflow", help="show the workflow models of a trained model version")
    wsub = p.add_subparsers(dest="workflow_command", metavar="ACTION", required=True)

    def source_args(q: argparse.ArgumentParser) -> None:
        _add_config_arg(q, required=False)
        q.add_argument("--model-dir", help="a model directory (its CURRENT version) or one version directory")
        q.add_argument("--version", help="model version to read (default: the current one)")

    q = wsub.add_parser("list", help="list the workflows of a model version")
    source_args(q)
    q.set_defaults(func=cmd_workflow_list)
    q = wsub.add_parser("show", help="render one workflow as text, Graphviz DOT, SVG or PNG")
    q.add_argument("name", help="workflow name, e.g. w1 (see `workflow list`)")
    source_args(q)
    q.add_argument(
        "--format",
        choices=("text", "dot", "svg", "png"),
        default="text",
        help="rendering (default text; png needs --output)",
    )
    q.add_argument("--output", metavar="FILE", help="write the rendering to FILE instead of stdout")
    q.set_defaults(func=cmd_workflow_show)
    q = wsub.add_parser(
        "hdfs", help="build workflows from HDFS key files and diagnose real abnormal sessions end to end"
    )
    q.add_argument("--train", help="training key sessions (default: shared data hdfs_train)")
    q.add_argument("--test", help="abnormal key sessions to diagnose (default: hdfs_test_abnormal_dev)")
    q.add_argument("--templates", help="EventId,EventTemplate CSV (default: shared data HDFS_templates.csv)")
    q.add_argument("--anomalies", type=int, default=5, help="abnormal sessions to diagnose (default 5)")
    q.add_argument("--no-key-model", action="store_true", help="counts only; no small key model")
    q.add_argument("--out", metavar="DIR", help="also save the workflow model (workflows.json) in DIR")
    q.add_argument(
        "--json", action="store_true", help="also print the figures as one JSON object (last line)"
    )
    q.set_defaults(func=cmd_workflow_hdfs)


# ------------------------------------------------------------ end workflows / evaluate-workflows (issue 8)

# ------------------------------------------------------------ feedback / model versions (issue 9)


def cmd_feedback_mark(args: argparse.Namespace) -> int:
    from .feedback import FALSE_POSITIVE, TRUE_POSITIVE, mark

    cfg = _load(args)
    verdict = FALSE_POSITIVE if args.false_positive else TRUE_POSITIVE
    clients = _connect(cfg)
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
    from .feedback import apply_feedback

    cfg = _load(args)
    clients = _connect(cfg)
    try:
        summary = apply_feedback(cfg, clients)
    finally:
        clients.close()
    return _report_run(summary, cfg, args.json)


def cmd_model_list(args: argparse.Namespace) -> int:
    from .artifacts import ModelStore
    from .feedback import describe_versions

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
        if r["parent"] and r.get("feedback_kind") == "parameter":
            origin = (
                f"parameter feedback on {r['parent']} ({r['feedback_applied']} false positives, thresholds "
                f"widened for {len(r.get('series_widened') or {})} series)"
            )
        elif r["parent"]:
            fa = (
                f", held-out false alarms {r['heldout_false_alarm_before']:.4%} -> "
                f"{r['heldout_false_alarm_after']:.4%}"
            )
            origin = f"feedback on {r['parent']} ({r['feedback_applied']} false positives{fa})"
        else:
            origin = "trained"
        print(f"{mark} {r['version']}  created {r['created']}  {origin}")
    return 0


def cmd_model_restore(args: argparse.Namespace) -> int:
    from .artifacts import ModelStore

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


def cmd_evaluate_feedback(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from deeplog_lab.evaluate_feedback import run

    fcfg = replace(FeedbackConfig(), seed=args.seed, anchor_ratio=args.anchor_ratio)
    fcfg.validate("feedback")
    r = run(
        args.seed,
        n_train=args.train_tasks,
        n_test=args.test_tasks,
        mark_share=args.mark,
        max_rounds=args.rounds,
        feedback_cfg=fcfg,
        progress=progress,
    )
    print(
        f"seed {r['seed']}: drift = {r['drift']}; {r['normal_tasks']} normal test tasks, "
        f"{r['anomalous_tasks']} with injected path anomalies"
    )
    for x in r["rounds"]:
        print(
            f"round {x['round']}: {x['marked']} of {x['fp_events']} false-positive anomalies marked, "
            f"{x.get('steps', 0)} fine-tuning steps, update {'accepted' if x.get('accepted') else 'REJECTED'}"
        )
    print(
        f"marked in all: {r['marked']} = {r['marked_share_of_initial_fps']:.1%} of the "
        f"{r['fp_events_before']} false-positive anomalies before feedback"
    )
    for part in ("test", "fresh"):
        b, a = r[part]["before"], r[part]["after"]
        print(
            f"{part:>5} data: FP rate {b['fp_rate']:.4%} -> {a['fp_rate']:.4%} (ratio {r[part]['fp_ratio']:.3f}); "
            f"recall {b['recall']:.4f} -> {a['recall']:.4f}"
        )
    if args.json:
        print_json(r)
    return 0


def _add_feedback_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "feedback", help="responders' verdicts on anomalies: mark one, or apply them to the model"
    )
    fsub = p.add_subparsers(dest="feedback_command", metavar="ACTION", required=True)
    pm = fsub.add_parser("mark", help="set deeplog.feedback on one anomaly document")
    _add_config_arg(pm)
    pm.add_argument("id", metavar="ID", help="_id of the anomaly document")
    g = pm.add_mutually_exclusive_group(required=True)
    g.add_argument("--false-positive", action="store_true", help="the event was normal: learn it")
    g.add_argument("--true-positive", action="store_true", help="a real anomaly (kept for metrics)")
    pm.add_argument("--by", metavar="NAME", help="who gives the verdict (deeplog.feedback_by)")
    pm.add_argument("--comment", metavar="TEXT", help="why (deeplog.feedback_comment)")
    pm.set_defaults(func=cmd_feedback_mark)
    pa = fsub.add_parser("apply", help="run the feedback job once: fine-tune on new false positives")
    _add_config_arg(pa)
    pa.add_argument("--json", action="store_true", help="print the run summary as one JSON object")
    pa.set_defaults(func=cmd_feedback_apply)

    p = sub.add_parser("model", help="list model versions with their lineage, or restore an earlier one")
    msub = p.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    pl = msub.add_parser("list", help="model versions, oldest first (* = current), with feedback lineage")
    _add_config_arg(pl)
    pl.add_argument("--json", action="store_true", help="print the versions as one JSON array")
    pl.set_defaults(func=cmd_model_list)
    pr = msub.add_parser("restore", help="make an earlier model version current again (rollback)")
    _add_config_arg(pr)
    pr.add_argument("version", metavar="VERSION", help="version directory name (see `model list`)")
    pr.set_defaults(func=cmd_model_restore)

    p = sub.add_parser(
        "evaluate-feedback",
        help="drift scenario on generated logs: FP rate and recall before/after feedback on 10%% of the FPs",
    )
    p.add_argument("--seed", type=int, default=0, help="workload and model seed (default 0)")
    p.add_argument("--train-tasks", type=int, default=3000, help="normal training tasks (default 3000)")
    p.add_argument("--test-tasks", type=int, default=3000, help="test tasks per test set (default 3000)")
    p.add_argument(
        "--mark", type=float, default=0.1, help="share of the false-positive anomalies marked per round (0.1)"
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="feedback rounds: detect, mark, apply; each round marks the share of the FPs then raised (3)",
    )
    p.add_argument(
        "--anchor-ratio",
        type=float,
        default=FeedbackConfig.anchor_ratio,
        help="feedback.anchor_ratio: a key the trained model rejects is accepted by an update only where its "
        "probability rose this many times (0: off; default %(default)s)",
    )
    p.add_argument(
        "--json", action="store_true", help="also print all figures as one JSON object (last line)"
    )
    p.set_defaults(func=cmd_evaluate_feedback)


# ------------------------------------------------------------ end feedback / model versions

# ------------------------------------------------------------------------------------------- commands


def cmd_config_example(args: argparse.Namespace) -> int:
    sys.stdout.write(example_config_text())
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    cfg = load_config(args.file)
    print(f"{args.file}: OK (source index {cfg.source.index!r}, {len(cfg.elasticsearch.hosts)} host(s))")
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    from deeplog_lab.server import serve_forever, start_embedded, stop_signals

    with stop_signals() as done:  # a Ctrl-C right after the URL is printed still stops the server cleanly
        server = start_embedded(port=args.port)
        print(
            f"embedded server (in-memory, OpenSearch-compatible {server.version}) at {server.url}", flush=True
        )
        print(
            "set elasticsearch.hosts to this URL; Ctrl-C stops it (data is kept in memory only)", flush=True
        )
        serve_forever(server, done)
    return 0


def _report_run(summary: Any, cfg: Config, as_json: bool) -> int:
    """A finished run on stdout (its run document with --json, else its summary line); exit 1 unless ok."""
    if as_json:
        print_json(summary.document(cfg.output.runs_index)["deeplog"]["run"])
    else:
        print(summary.line())
    return 0 if summary.status == "ok" else 1


def _connect(cfg: Config):
    from .es import connect

    return connect(cfg.elasticsearch)


def cmd_replay(args: argparse.Namespace) -> int:
    from datetime import datetime

    from deeplog_lab.keyseq import read_key_sessions
    from deeplog_lab.replay import EPOCH, index_lines, load_sample, render

    cfg = _load(args)
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
    clients = _connect(cfg)
    try:
        n = index_lines(clients, index, lines, run=args.run or f"replay-{args.seed}", progress=progress)
    finally:
        clients.close()
    print(f"indexed {n} log documents into {index}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .runner import train

    cfg = _load(args)
    clients = _connect(cfg)
    try:
        t = train(cfg, clients, start=args.start, end=args.end, index=args.index, progress=progress)
    finally:
        clients.close()
    print(
        f"model version {t.version} published in {cfg.model.dir}: {t.sessions} sessions, {t.docs} documents, "
        f"{t.templates} templates, skipped {t.skipped or 0}"
    )
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from .runner import run_once

    cfg = _load(args)
    if not args.once and not (args.start or args.end):
        raise DeeplogError(
            "detect needs --once (new documents since the checkpoint) or --start/--end (backfill)"
        )
    clients = _connect(cfg)
    try:
        summary = run_once(
            cfg,
            clients,
            start=args.start,
            end=args.end,
            close_sessions=args.close_sessions,
            progress=progress,
        )
    finally:
        clients.close()
    return _report_run(summary, cfg, args.json)


def cmd_run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from .scheduler import run_daemon

    cfg = _load(args)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("received signal %s", signum)
        stop.set()

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, on_signal)
    clients = _connect(cfg)
    try:
        run_daemon(cfg, clients, stop)
    finally:
        clients.close()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from deeplog_lab.demo import run_demo, write_summary

    def keep(server, result) -> None:
        if args.keep_running:
            _print_demo(result)
            from deeplog_lab.server import serve_forever

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
    write_summary(Path(args.output) / "summary.json", result)
    if args.json:
        print_json(json.loads((Path(args.output) / "summary.json").read_text()))
    return 0


def _print_demo(r) -> None:
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


# --- setup (issue 7): templates, policies, pipelines, indices, Kibana saved objects ------------------------


def cmd_setup(args: argparse.Namespace) -> int:
    from .es import connect
    from .setup_assets import run_setup

    cfg = _load(args)
    clients = connect(cfg.elasticsearch)
    try:
        report = run_setup(clients, cfg, kibana_url=args.kibana_url, dry_run=args.dry_run)
        workflows = None
        if not args.dry_run and not report.failed:
            from .runner import publish_current_workflows

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
        print_json(
            {
                "dry_run": report.dry_run,
                "counts": report.counts(),
                "steps": [vars(s) for s in report.steps],
            }
        )
    return 1 if report.failed else 0


# --- end setup -------------------------------------------------------------------------------------------


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
    _add_params_parsers(sub)
    _add_workflow_parsers(sub)
    _add_feedback_parsers(sub)

    p = sub.add_parser("config", help="print the example configuration or validate a configuration file")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    pe = csub.add_parser("example", help="print the commented example configuration to stdout")
    pe.set_defaults(func=cmd_config_example)
    pc = csub.add_parser("check", help="validate a configuration file without connecting to anything")
    pc.add_argument("file", metavar="FILE", help="YAML configuration file")
    pc.set_defaults(func=cmd_config_check)

    p = sub.add_parser(
        "server", help="run the embedded in-memory server (demo/tests) until Ctrl-C or SIGTERM"
    )
    p.add_argument("--port", type=int, default=0, help="loopback port to listen on (default: a free port)")
    p.set_defaults(func=cmd_server)

    p = sub.add_parser("replay", help="render HDFS key sequences as realistic raw HDFS logs and index them")
    _add_config_arg(p)
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

    p = sub.add_parser("train", help="learn templates and the log-key model from the source index")
    _add_config_arg(p)
    p.add_argument("--start", metavar="ISO8601", help="only logs with timestamp >= this")
    p.add_argument("--end", metavar="ISO8601", help="only logs with timestamp < this")
    p.add_argument("--index", help="read training logs from this index pattern instead of source.index")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("detect", help="run detection once over new logs, or backfill a time range")
    _add_config_arg(p)
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
    p.add_argument("--json", action="store_true", help="print the run summary as one JSON object")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("run", help="run the scheduled job (detection, retraining) until SIGTERM/Ctrl-C")
    _add_config_arg(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "demo", help="end-to-end demo on real HDFS sessions with the embedded server; prints what it found"
    )
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

    # --- setup (issue 7)
    p = sub.add_parser(
        "setup",
        help="install index templates, retention policies, ingest pipelines, indices and Kibana saved objects",
    )
    _add_config_arg(p)
    p.add_argument(
        "--kibana-url", metavar="URL", help="Kibana / OpenSearch Dashboards URL (overrides kibana.url)"
    )
    p.add_argument("--dry-run", action="store_true", help="print what would be done, write nothing")
    p.add_argument("--json", action="store_true", help="also print the steps as one JSON line")
    p.set_defaults(func=cmd_setup)
    # --- end setup

    p = sub.add_parser("bench", help="run a benchmark and print its figures (--json: one JSON line)")
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

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # torch warns at import when numpy is absent; nothing here needs numpy.
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
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
