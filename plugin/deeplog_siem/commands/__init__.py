"""commands: the table of `deeplog-siem` commands and the lazy building of their parsers.

Contract: `add_commands(sub, commands, wanted)` adds one subparser per `Command` to `sub`. The commands that
`wanted` names (argv's command words; every command for the full parser) come from the module the table names:
it is imported then and its `register(sub, wanted)` adds their parsers. Every other command gets a placeholder
that carries only its help line, so `deeplog-siem --help` lists everything while importing no command module.
Lab commands (module `deeplog_lab.commands`) are named here as strings and never imported by the runtime at
import time; where the lab package is missing they become commands that fail with a clear `DeeplogError`.

Why: the runtime must run (and be installable) without the lab, and a cheap command such as `config check`
must not pay for torch or the benchmarks it never uses.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import DeeplogError

Subparsers = argparse._SubParsersAction
LAB = "deeplog_lab.commands"


@dataclass(frozen=True)
class Command:
    """One command: its name, its one-line help, the module that registers it and that module's function."""

    name: str
    help: str
    module: str
    register: str = "register"


def _runtime(name: str) -> str:
    return f"{__name__}.{name}"


# The order is the order of `deeplog-siem --help`.
COMMANDS: tuple[Command, ...] = (
    Command("evaluate", "train/load the log-key model on DeepLog key files and report FP/FN/F1", LAB),
    Command(
        "evaluate-params",
        "parameter-value model on generated OpenStack-like logs: recall per slowdown, FP, path recall",
        LAB,
    ),
    Command("generate", "write generated OpenStack-like logs of VM tasks and their labels", LAB),
    Command(
        "evaluate-workflows",
        "mine workflows from generated OpenStack-like tasks and compare them with the true task graphs",
        LAB,
    ),
    Command("workflow", "show the workflow models of a trained model version", _runtime("workflow")),
    Command(
        "feedback",
        "responders' verdicts on anomalies: mark one, or apply them to the model",
        _runtime("feedback"),
    ),
    Command(
        "model", "list model versions with their lineage, or restore an earlier one", _runtime("feedback")
    ),
    Command(
        "evaluate-feedback",
        "drift scenario on generated logs: FP rate and recall before/after feedback on 10%% of the FPs",
        LAB,
    ),
    Command(
        "config",
        "print the example configuration or the privileges table, or validate a configuration file",
        _runtime("config"),
    ),
    Command("server", "run the embedded in-memory server (demo/tests) until Ctrl-C or SIGTERM", LAB),
    Command("replay", "render HDFS key sequences as realistic raw HDFS logs and index them", LAB),
    Command(
        "ingest", "index a raw log file, one document per line, to try the product on it", _runtime("ingest")
    ),
    Command(
        "preview",
        "read-only look at the source: format chosen, templates, sessions and suggested settings",
        _runtime("preview"),
    ),
    Command("train", "learn templates and the log-key model from the source index", _runtime("jobs")),
    Command("detect", "run detection once over new logs, or backfill a time range", _runtime("jobs")),
    Command("run", "run the scheduled job (detection, retraining) until SIGTERM/Ctrl-C", _runtime("jobs")),
    Command(
        "check",
        "watchdog: exit 1 when no detection run was recorded lately (for cron or systemd)",
        _runtime("check"),
    ),
    Command(
        "demo", "end-to-end demo on real HDFS sessions with the embedded server; prints what it found", LAB
    ),
    Command(
        "setup",
        "install index templates, retention policies, ingest pipelines, indices and Kibana saved objects",
        _runtime("setup"),
    ),
    Command("bench", "run a benchmark and print its figures (--json: one JSON line)", LAB),
)

# Lab actions of the runtime `workflow` group.
WORKFLOW_COMMANDS: tuple[Command, ...] = (
    Command(
        "hdfs",
        "build workflows from HDFS key files and diagnose real abnormal sessions end to end",
        LAB,
        register="register_workflow",
    ),
)

_HELP = {c.name: c.help for c in COMMANDS} | {f"workflow {c.name}": c.help for c in WORKFLOW_COMMANDS}


@dataclass(frozen=True)
class Wanted:
    """The commands a parser must hold in full: argv's command words, or every command when `words` is None."""

    words: tuple[str, ...] | None = None

    @classmethod
    def from_argv(cls, argv: Sequence[str]) -> Wanted:
        # No option of the top-level parser or of a command group takes a value, so the words that do not
        # start with "-" are the command and then its action, in argparse's own reading.
        return cls(tuple(a for a in argv if not a.startswith("-")))

    def wants(self, name: str) -> bool:
        return self.words is None or self.words[:1] == (name,)

    def below(self, name: str) -> Wanted:
        """What is wanted inside command `name` (its actions)."""
        return self if self.words is None else Wanted(self.words[1:] if self.wants(name) else ())


def add_parser(sub: Subparsers, path: str, **kwargs: Any) -> argparse.ArgumentParser:
    """The parser of command `path` ("config", "workflow hdfs") with its help line from the table."""
    return sub.add_parser(path.split()[-1], help=_HELP[path], **kwargs)


def add_commands(sub: Subparsers, commands: Sequence[Command], wanted: Wanted) -> None:
    """The wanted commands in full (their modules imported now), the others as placeholders."""
    for c in commands:
        if wanted.wants(c.name) and c.name not in sub.choices:
            register = _registrar(c)
            if register is None:
                _add_missing(sub, [x for x in commands if x.module == c.module])
            else:
                register(sub, wanted)
            if c.name not in sub.choices:
                # A table entry its module does not register would only ever parse as a placeholder.
                raise RuntimeError(f"{c.module}.{c.register} did not register the command {c.name!r}")
    for c in commands:
        if c.name not in sub.choices:  # listed by --help; never parsed, as argv did not name it
            sub.add_parser(c.name, help=c.help).set_defaults(placeholder=True)
    _in_table_order(sub, [c.name for c in commands])


def _in_table_order(sub: Subparsers, names: Sequence[str]) -> None:
    """--help and "invalid choice" list the commands in the table's order, whichever were built first."""
    rank = {name: i for i, name in enumerate(names)}
    sub._choices_actions.sort(key=lambda a: rank.get(a.dest, len(rank)))
    # argparse keeps one dict for both its parser map and `choices`: reorder it in place.
    ordered = sorted(sub.choices.items(), key=lambda item: rank.get(item[0], len(rank)))
    sub.choices.clear()
    sub.choices.update(ordered)


def _registrar(c: Command) -> Callable[[Subparsers, Wanted], None] | None:
    try:
        module = importlib.import_module(c.module)
    except ModuleNotFoundError as e:
        if c.module == LAB and e.name in ("deeplog_lab", LAB):
            return None
        raise
    return getattr(module, c.register)


def _add_missing(sub: Subparsers, commands: Sequence[Command]) -> None:
    """Commands whose package is not installed: any arguments, and an error that says so."""

    def missing(args: argparse.Namespace) -> int:
        raise DeeplogError(
            f"`{args.missing_command}` is a lab command and the deeplog_lab package is not installed"
        )

    for c in commands:
        if c.name not in sub.choices:
            p = sub.add_parser(c.name, help=c.help, add_help=False)
            p.set_defaults(func=missing, missing_command=p.prog, any_arguments=True)
