"""`deeplog-siem ingest FILE --index NAME [--format auto]`: index a raw log file to try the product on it.

Contract: reads FILE line by line (logfile.LogFile), chooses its format (`auto`, or the one named), and
writes one document per line to the index NAME with streaming bulk requests (sink.write, `create` with
deterministic ids: a second run over the same file writes nothing new and says so). The connection comes
from the configuration file; the message and timestamp field names from its `source` section. Prints the
format chosen, the documents written and already present, and the lines whose time came from the ingest.
Exit 1 when a document was rejected.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import DeeplogError
from ..format_detect import AUTO
from ..formats import PRESETS
from . import Subparsers, Wanted, add_parser
from .common import add_config_arg, connect, load
from .console import print_json, progress


def cmd_ingest(args: argparse.Namespace) -> int:
    from .. import sink
    from ..logfile import LogFile, describe

    cfg = load(args)
    path = Path(args.file)
    if not path.is_file():
        raise DeeplogError(f"ingest: {path} is not a readable file")
    lf = LogFile(path, args.format)
    progress(f"{path}: {describe(lf.choice)}")
    clients = connect(cfg)
    try:
        result = sink.write(
            clients,
            lf.documents(
                index=args.index,
                message_field=cfg.source.message_field,
                timestamp_field=cfg.source.timestamp_field,
            ),
            op="create",
            refresh=True,
        )
    finally:
        clients.close()
    out = {
        "file": str(path),
        "index": args.index,
        "format": lf.format,
        "header_share": round(lf.choice.share, 4),
        "lines": lf.stats["lines"],
        "written": result.written,
        "existing": result.existing,
        "rejected": dict(result.rejected),
        "blank": lf.stats["blank"],
        "time_from_ingest": lf.stats["time_from_ingest"],
        "invalid_utf8": lf.stats["invalid_utf8"],
    }
    if args.json:
        print_json(out)
    else:
        print(
            f"{out['lines']} lines of {path} -> {args.index} (format {lf.format}): {result.written} written, "
            f"{result.existing} already there, rejected {out['rejected'] or 0}; "
            f"time from the ingest for {out['time_from_ingest']} line(s)"
        )
    return 1 if result.rejected else 0


def register(sub: Subparsers, wanted: Wanted) -> None:
    p = add_parser(sub, "ingest")
    add_config_arg(p)
    p.add_argument("file", metavar="FILE", help="raw log file, one event per line (UTF-8)")
    p.add_argument("--index", required=True, help="index to write the lines to")
    p.add_argument(
        "--format",
        default=AUTO,
        choices=(AUTO, *PRESETS),
        help="header format of the lines (default auto: chosen from the first lines)",
    )
    p.add_argument("--json", action="store_true", help="print the result as one JSON object (last line)")
    p.set_defaults(func=cmd_ingest)
