"""`deeplog-siem workflow list|show`: the workflow models of a trained model version.

Contract: the model comes from --model-dir (a model directory, meaning its current version, or one version
directory) or from -c/--config (model.dir); neither is a DeeplogError (exit 2), as is an unknown workflow
name. `show NAME` renders text, Graphviz DOT or SVG to stdout or --output, hiding edges rarer than
--min-share in the SVG; `show --anomaly ID -c FILE` draws the SVG of one anomaly document on the workflow
of its model version (`anomaly_picture`). The group also holds the lab's
`workflow hdfs` (WORKFLOW_COMMANDS), registered lazily like every lab command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..artifacts import ModelStore
from ..errors import DeeplogError
from ..workflow import WORKFLOWS_FILE, WorkflowModel, render_dot, render_text
from ..workflow_picture import render_svg
from . import WORKFLOW_COMMANDS, Subparsers, Wanted, add_commands, add_parser
from .common import add_config_arg, connect, load


def _workflow_model(args: argparse.Namespace) -> tuple[str, WorkflowModel]:
    """The workflow model named by --model-dir (a model directory or one version in it) or the config."""
    if args.model_dir:
        d = Path(args.model_dir)
        if (d / WORKFLOWS_FILE).is_file():
            return d.name, WorkflowModel.load(d)
    elif args.config:
        d = Path(load(args).model.dir)
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


def _show_anomaly(args: argparse.Namespace) -> tuple[str, str]:
    from ..anomaly_picture import anomaly_picture

    if args.name:
        raise DeeplogError("workflow show: give a workflow NAME or --anomaly ID, not both")
    if not args.config:
        raise DeeplogError("workflow show --anomaly: give -c/--config FILE (the cluster holds the anomaly)")
    if args.format not in (None, "svg"):
        raise DeeplogError(f"workflow show --anomaly draws SVG only, not {args.format}")
    cfg = load(args)
    clients = connect(cfg)
    try:
        return anomaly_picture(clients, cfg, args.anomaly, min_share=args.min_share)
    finally:
        clients.close()


def cmd_workflow_show(args: argparse.Namespace) -> int:
    if not 0.0 <= args.min_share <= 1.0:
        raise DeeplogError(f"--min-share must be a share between 0 and 1, got {args.min_share}")
    if args.anomaly:
        what, text = _show_anomaly(args)
        fmt = "svg"
    else:
        if not args.name:
            raise DeeplogError("workflow show: give a workflow NAME (see `workflow list`) or --anomaly ID")
        _, wm = _workflow_model(args)
        w = wm.get(args.name)
        fmt = args.format or "text"
        what = f"workflow {w.name}"
        text = (
            render_svg(w, min_share=args.min_share)
            if fmt == "svg"
            else {"text": render_text, "dot": render_dot}[fmt](w)
        )
    if args.output:
        Path(args.output).write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        print(f"wrote {fmt} of {what} to {args.output}")
    else:
        print(text.rstrip("\n"))
    return 0


def _add_source_args(q: argparse.ArgumentParser) -> None:
    add_config_arg(q, required=False)
    q.add_argument("--model-dir", help="a model directory (its CURRENT version) or one version directory")
    q.add_argument("--version", help="model version to read (default: the current one)")


def register(sub: Subparsers, wanted: Wanted) -> None:
    p = add_parser(sub, "workflow")
    wsub = p.add_subparsers(dest="workflow_command", metavar="ACTION", required=True)
    q = wsub.add_parser("list", help="list the workflows of a model version")
    _add_source_args(q)
    q.set_defaults(func=cmd_workflow_list)
    q = wsub.add_parser("show", help="render one workflow (or one anomaly on its workflow)")
    q.add_argument("name", nargs="?", help="workflow name, e.g. w1 (see `workflow list`)")
    _add_source_args(q)
    q.add_argument(
        "--format",
        choices=("text", "dot", "svg"),
        default=None,
        help="rendering (default text; svg with --anomaly)",
    )
    q.add_argument(
        "--anomaly",
        metavar="ID",
        help="draw this anomaly document (its _id) on the workflow of its model version, as SVG (needs -c)",
    )
    q.add_argument(
        "--min-share",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="SVG: hide edges carrying less than this share of their source's steps (default 0: all)",
    )
    q.add_argument("--output", metavar="FILE", help="write the rendering to FILE instead of stdout")
    q.set_defaults(func=cmd_workflow_show)
    add_commands(wsub, WORKFLOW_COMMANDS, wanted.below("workflow"))
