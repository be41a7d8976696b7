"""cli: the `deeplog-siem` command line.

Contract: argv -> exit code. Every `DeeplogError` becomes one line on stderr (`error: ...`) and exit code 2;
no traceback reaches the user unless `--debug` is given; Ctrl-C is exit code 130. Only the command
line configures logging (`commands.console.setup_logging`, called here and, once a command has read its
configuration, by `commands.common.load`). The commands themselves live in `deeplog_siem.commands` (runtime) and
`deeplog_lab.commands` (lab); the parser imports only the module of the command being run.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence

from . import __version__
from .commands import COMMANDS, Wanted, add_commands
from .commands.console import setup_logging
from .errors import DeeplogError


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser, complete for the command `argv` names; every command in full when argv is None."""
    parser = argparse.ArgumentParser(
        prog="deeplog-siem",
        description="DeepLog-style anomaly detection and explanation for logs in Elasticsearch/OpenSearch.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="debug logging and full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_commands(sub, COMMANDS, Wanted() if argv is None else Wanted.from_argv(argv))
    return parser


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "placeholder", False):  # argv named its command in a way the lazy parser missed
        return build_parser().parse_args(argv)
    if extra and not getattr(args, "any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    # torch warns at import when numpy is absent; nothing here needs numpy.
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    args = _parse(sys.argv[1:] if argv is None else list(argv))
    if not logging.getLogger().handlers:
        setup_logging("DEBUG" if args.debug else "INFO")
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
