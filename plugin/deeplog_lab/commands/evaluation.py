"""`deeplog-siem evaluate`, `evaluate-params`, `evaluate-workflows`, `evaluate-feedback` and `generate`.

Contract: each evaluation trains on real key files (`evaluate`) or on generated OpenStack-like workloads
(the others) and prints its figures, with --json also as one JSON object on the last stdout line; bad
inputs or settings are DeeplogErrors (exit 2). `generate` writes the generated logs and their labels.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from deeplog_siem.commands import Subparsers, add_parser
from deeplog_siem.commands.console import print_json, progress
from deeplog_siem.config import FeedbackConfig, ModelConfig
from deeplog_siem.errors import ConfigError

from ..shared_data import shared_data_dir

# ModelConfig fields that `evaluate` takes as --options (the rest keep the defaults of the runtime).
_MODEL_OPTIONS: tuple[tuple[str, type], ...] = (
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
)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Train (or load) the log-key model on DeepLog key files and report detection under the HDFS protocol."""
    from ..evaluate import run_evaluation

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


def cmd_evaluate_params(args: argparse.Namespace) -> int:
    """Generated OpenStack-like logs: recall per slowdown (parameter model), FP rate, path recall (key model)."""
    from ..evaluate_params import run

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
    from ..workload import generate_workload

    w = generate_workload(args.tasks, args.seed, args.anomaly_rate, tuple(args.slowdowns), args.path_rate)
    w.write(args.out, args.labels)
    if args.graphs:
        Path(args.graphs).write_text(json.dumps(w.graphs, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(
        f"{len(w.lines)} lines of {len(w.tasks)} tasks to {args.out}; {len(w.labels)} labels to {args.labels}"
    )
    return 0


def cmd_evaluate_workflows(args: argparse.Namespace) -> int:
    """Generated OpenStack-like tasks: mined workflows against the generator's true task graphs."""
    from deeplog_siem.workflow_mining import MiningParams

    from ..evaluate_workflows import main_figures

    seeds = args.seed or [0]
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


def cmd_evaluate_feedback(args: argparse.Namespace) -> int:
    """Drift on generated logs: false positives and recall before and after rounds of feedback."""
    from ..evaluate_feedback import run

    fcfg = dataclasses.replace(FeedbackConfig(), seed=args.seed, anchor_ratio=args.anchor_ratio)
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


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json", action="store_true", help="also print all figures as one JSON object (last line)"
    )


def _add_evaluate(sub: Subparsers) -> None:
    def default(name: str) -> str | None:
        p = shared_data_dir() / "hdfs_keys" / name
        return str(p) if p.is_file() else None

    p = add_parser(sub, "evaluate")
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
    for name, typ in _MODEL_OPTIONS:
        p.add_argument("--" + name.replace("_", "-"), type=typ, dest=name, metavar="N", help=f"model.{name}")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="model.device (default auto)")
    p.add_argument(
        "--no-concurrency",
        dest="concurrency",
        action="store_const",
        const=False,
        help="model.concurrency off: judge the order of concurrent steps too (plain DeepLog top-g)",
    )
    _add_json(p)
    p.set_defaults(func=cmd_evaluate)


def _add_evaluate_params(sub: Subparsers) -> None:
    p = add_parser(sub, "evaluate-params")
    p.add_argument("--seed", type=int, default=0, help="workload and model seed (test data uses seed + 1)")
    p.add_argument("--train-tasks", type=int, default=4000, help="normal training tasks (default 4000)")
    p.add_argument("--test-tasks", type=int, default=6000, help="test tasks (default 6000)")
    _add_json(p)
    p.set_defaults(func=cmd_evaluate_params)


def _add_generate(sub: Subparsers) -> None:
    p = add_parser(sub, "generate")
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


def _add_evaluate_workflows(sub: Subparsers) -> None:
    p = add_parser(sub, "evaluate-workflows")
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
    _add_json(p)
    p.set_defaults(func=cmd_evaluate_workflows)


def _add_evaluate_feedback(sub: Subparsers) -> None:
    p = add_parser(sub, "evaluate-feedback")
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
    _add_json(p)
    p.set_defaults(func=cmd_evaluate_feedback)


def register(sub: Subparsers) -> None:
    _add_evaluate(sub)
    _add_evaluate_params(sub)
    _add_generate(sub)
    _add_evaluate_workflows(sub)
    _add_evaluate_feedback(sub)
