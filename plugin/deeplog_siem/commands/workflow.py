"""`deeplog-siem workflow list|show`: the workflow models of a trained model version.

Contract: the model comes from --model-dir (a model directory, meaning its current version, or one version
directory) or from -c/--config (model.dir); neither is a DeeplogError (exit 2), as is an unknown workflow
name. `show` renders text, Graphviz DOT or SVG to stdout or --output. The group also holds the lab's
`workflow hdfs` (WORKFLOW_COMMANDS), registered lazily like every lab command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..artifacts import ModelStore
from ..errors import DeeplogError
from ..workflow import WORKFLOWS_FILE, WorkflowModel, render_dot, render_svg, render_text
from . import WORKFLOW_COMMANDS, Subparsers, Wanted, add_commands, add_parser
from .common import add_config_arg, load


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


def cmd_workflow_show(args: argparse.Namespace) -> int:
    _, wm = _workflow_model(args)
    w = wm.get(args.name)
    text = {"text": render_text, "dot": render_dot, "svg": render_svg}[args.format](w)
    if args.output:
        Path(args.output).write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        print(f"wrote {args.format} of workflow {w.name} to {args.output}")
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
    q = wsub.add_parser("show", help="render one workflow as text, Graphviz DOT or SVG")
    q.add_argument("name", help="workflow name, e.g. w1 (see `workflow list`)")
    _add_source_args(q)
    q.add_argument(
        "--format", choices=("text", "dot", "svg"), default="text", help="rendering (default text)"
    )
    q.add_argument("--output", metavar="FILE", help="write the rendering to FILE instead of stdout")
    q.set_defaults(func=cmd_workflow_show)
    add_commands(wsub, WORKFLOW_COMMANDS, wanted.below("workflow"))
