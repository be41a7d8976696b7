"""`deeplog-siem preview --config FILE [--size N] [--json]`: a read-only look at the source before training.

Contract: reads the first N documents of `source.index` (oldest first, as training reads them) and prints
what `preview.preview` finds: the format chosen and the share of lines its header matched, the templates
with their counts, the sessions and their lengths, the share of documents with no session, and suggested
settings. Nothing is written: no model, no checkpoint, no run document.
"""

from __future__ import annotations

import argparse

from . import Subparsers, Wanted, add_parser
from .common import add_config_arg, connect, load
from .console import print_json, progress

DEFAULT_SIZE = 2000
SHOWN_TEMPLATES = 20


def cmd_preview(args: argparse.Namespace) -> int:
    from ..errors import DeeplogError
    from ..preview import preview
    from ..source import Source

    if args.size < 1:
        raise DeeplogError(f"preview: --size must be >= 1, got {args.size}")
    cfg = load(args)
    clients = connect(cfg)
    try:
        progress(f"reading up to {args.size} documents of {cfg.source.index} ...")
        docs = [d for page in Source(clients, cfg.source).pages(limit=args.size) for d in page]
    finally:
        clients.close()
    p = preview(cfg, docs)
    if args.json:
        print_json(p.to_dict())
        return 0
    print(f"documents read: {p.docs} from {cfg.source.index}")
    auto = " (auto)" if p.configured_format == "auto" else ""
    print(f"format: {p.choice.format}{auto}, header matched {100 * p.choice.share:.1f}% of the messages")
    print(f"templates: {len(p.templates)}")
    for key, count, template in p.templates[:SHOWN_TEMPLATES]:
        print(f"  {count:>7}  {key:>5}  {template}")
    if len(p.templates) > SHOWN_TEMPLATES:
        print(f"  ... {len(p.templates) - SHOWN_TEMPLATES} more (--json lists them all)")
    lengths = ", ".join(f"{k} {v}" for k, v in p.session_lengths.items()) or "none"
    print(f"sessions: {p.sessions} (events per session: {lengths})")
    print(f"documents with no session: {100 * p.no_session_share:.1f}%")
    if p.skipped:
        print(f"skipped: {p.skipped}")
    print("suggested settings:" if p.suggestions else "suggested settings: none, the configuration fits")
    for setting, why in p.suggestions:
        print(f"  {setting}  # {why}")
    return 0


def register(sub: Subparsers, wanted: Wanted) -> None:
    p = add_parser(sub, "preview")
    add_config_arg(p)
    p.add_argument(
        "--size", type=int, default=DEFAULT_SIZE, help=f"documents to read (default {DEFAULT_SIZE})"
    )
    p.add_argument("--json", action="store_true", help="print the result as one JSON object (last line)")
    p.set_defaults(func=cmd_preview)
