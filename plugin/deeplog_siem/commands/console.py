"""console: what the command line writes for people and for scripts, and how it logs.

Contract: `setup_logging(level, file, as_json)` configures the root logger (only the command line calls it);
with `as_json`, `JsonFormatter` writes each record as one JSON object on one line (ECS field names);
`progress(message)` writes a progress line to stderr; `print_json(obj)` writes one JSON object on one line
to stdout, the machine-readable last line of `--json` output. They live apart from `cli` so the command
modules can use them without importing the entry point (which `python -m deeplog_siem.cli` runs as
`__main__`).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line, with ECS field names (`@timestamp`, `log.level`,
    `log.logger`, `message`, and `error.type`, `error.message`, `error.stack_trace` for an exception)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC)
        doc: dict[str, Any] = {
            "@timestamp": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "log.level": record.levelname.lower(),
            "log.logger": record.name,
            "message": _text(record.getMessage()),
        }
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, exc = record.exc_info[0], record.exc_info[1]
            doc["error.type"] = f"{exc_type.__module__}.{exc_type.__qualname__}".removeprefix("builtins.")
            doc["error.message"] = _text(str(exc))
            doc["error.stack_trace"] = _text(self.formatException(record.exc_info))
        if record.stack_info:
            doc["log.origin.stack_trace"] = _text(self.formatStack(record.stack_info))
        # ASCII only: whatever encoding the stream or file has, the line is written whole and stays one line
        # (newlines, U+2028 and control characters come out as escapes).
        return json.dumps(doc, ensure_ascii=True, default=str)


def _text(s: str) -> str:
    """`s` as text any JSON reader accepts: a lone surrogate (undecodable bytes that reached a message)
    becomes U+FFFD, a surrogate pair the character it encodes."""
    return s.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def setup_logging(level: str, file: str | None = None, as_json: bool = False) -> None:
    formatter = (
        JsonFormatter() if as_json else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if file:
        handlers.append(logging.FileHandler(file, encoding="utf-8", errors="backslashreplace"))
    for h in handlers:
        h.setFormatter(formatter)
    logging.basicConfig(level=getattr(logging, level), handlers=handlers, force=True)
    # The transport logs every request at INFO; that drowns the one summary line per run.
    logging.getLogger("elastic_transport").setLevel(logging.WARNING)


def progress(message: str) -> None:
    """Progress for long steps goes to stderr so `--json` stdout stays machine-readable."""
    print(message, file=sys.stderr, flush=True)


def print_json(obj: Any) -> None:
    """One JSON object on one line: the machine-readable last line of `--json` output."""
    print(json.dumps(obj, sort_keys=True, default=str))
