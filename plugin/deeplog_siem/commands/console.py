"""console: what the command line writes for people and for scripts, and how it logs.

Contract: `setup_logging(level, file, as_json)` configures the root logger (only the command line calls it);
`progress(message)` writes a progress line to stderr; `print_json(obj)` writes one JSON object on one line
to stdout, the machine-readable last line of `--json` output. They live apart from `cli` so the command
modules can use them without importing the entry point (which `python -m deeplog_siem.cli` runs as
`__main__`).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any


def setup_logging(level: str, file: str | None = None, as_json: bool = False) -> None:
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


def progress(message: str) -> None:
    """Progress for long steps goes to stderr so `--json` stdout stays machine-readable."""
    print(message, file=sys.stderr, flush=True)


def print_json(obj: Any) -> None:
    """One JSON object on one line: the machine-readable last line of `--json` output."""
    print(json.dumps(obj, sort_keys=True, default=str))
