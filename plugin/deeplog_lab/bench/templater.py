"""bench templater: throughput of the templater vs plain Drain3 on rendered HDFS lines, same run.

Contract: `add_arguments(parser)`, `run(args, progress) -> dict` (printed as one JSON object by the CLI).

Data: DeepLog HDFS key sessions (`hdfs_keys/`) rendered into raw HDFS lines with values drawn from
`hdfs_raw/HDFS_2k.log` (IPs, sizes, allocate paths, thread ids per component), sessions interleaved in time.
The training sessions are learned (learn=True), then the test sessions are parsed match-only
(learn=False, the detection path) in pages of 1000 with the caches cleared first, so cache warm-up counts.
The baseline is plain Drain3 (`TemplateMiner` with the same masks as MaskingInstructions, the same header
regex applied first, `add_log_message` then `match`); it extracts no parameters, we do, so the speedup is
conservative. Also reported: the share of sessions whose recovered key sequence maps one-to-one onto the
original keys, and the memory of an open session (tracemalloc over real tails).
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import re
import time
import tracemalloc
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from drain3.masking import MaskingInstruction
from drain3.template_miner import TemplateMiner
from drain3.template_miner_config import TemplateMinerConfig

from deeplog_siem.config import SourceConfig, TemplaterConfig
from deeplog_siem.formats import HDFS_SESSION_REGEX, resolve
from deeplog_siem.sessions import SessionKeyer, SessionTracker
from deeplog_siem.templater import Templater

from ..replay import LogLine, render
from ..shared_data import shared_data_dir


def one_to_one_rate(pairs_by_session: Iterable[Sequence[tuple[int, int]]]) -> tuple[float, int, int]:
    """Share of sessions whose (original key, recovered key) pairs all belong to the global bijection
    (each original key's majority recovered key, whose own majority original key is that key)."""
    sessions = [list(p) for p in pairs_by_session]
    counts = Counter(p for s in sessions for p in s)
    best_rec: dict[int, tuple[int, int]] = {}
    best_orig: dict[int, tuple[int, int]] = {}
    for (o, r), c in counts.items():
        if c > best_rec.get(o, (0, -1))[0]:
            best_rec[o] = (c, r)
        if c > best_orig.get(r, (0, -1))[0]:
            best_orig[r] = (c, o)
    good = {(o, r) for o, (_, r) in best_rec.items() if best_orig[r][1] == o}
    ok = sum(1 for s in sessions if all(p in good for p in s))
    return (ok / len(sessions) if sessions else 1.0), ok, len(sessions)


def recovery_rate(cfg: TemplaterConfig, lines: Sequence[LogLine], page_size: int = 1000) -> tuple[float, int]:
    """Learn every line, then the share of sessions whose recovered keys map one-to-one onto the originals."""
    tpl = Templater(cfg)
    by_session: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for page in _pages(lines, page_size):
        for r, ev in zip(page, tpl.parse_many([r.message for r in page], learn=True), strict=True):
            by_session[r.session].append((r.key, ev.key if ev is not None else -1))
    rate, _, total = one_to_one_rate(by_session.values())
    return rate, total


def plain_drain3(cfg: TemplaterConfig) -> tuple[TemplateMiner, Callable[[str], str]]:
    """Drain3 configured like our templater (same masks as MaskingInstructions, same Drain settings) and
    a function that strips the header with the same regex."""
    s = resolve(cfg)
    mc = TemplateMinerConfig()
    mc.drain_sim_th = s.similarity_threshold
    mc.drain_depth = s.depth
    mc.drain_max_children = s.max_children
    mc.drain_extra_delimiters = list(s.extra_delimiters)
    mc.masking_instructions = [MaskingInstruction(rx, name) for name, rx in s.masks]
    miner = TemplateMiner(persistence_handler=None, config=mc)
    header = re.compile(s.header_regex, re.DOTALL) if s.header_regex else None

    def content(line: str) -> str:
        m = header.match(line) if header is not None else None
        return m.group("content") if m is not None else line

    return miner, content


def _pages(seq: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lines", type=int, default=200000, help="detection lines to parse (>= 200000 for the target)"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="shared data folder (default ../shared/data)"
    )
    parser.add_argument("--page-size", type=int, default=1000, help="messages per parse_many call")
    parser.add_argument("--seed", type=int, default=0, help="seed of the rendering")
    parser.add_argument(
        "--sessions", type=int, default=10000, help="open sessions for the memory measurement"
    )


def run(args: argparse.Namespace, progress: Callable[[str], None]) -> dict[str, Any]:
    from ..keyseq import read_key_sessions  # torch: imported only when the bench runs

    data = Path(args.data_dir) if args.data_dir else shared_data_dir()
    train = read_key_sessions(data / "hdfs_keys" / "hdfs_train")
    test = read_key_sessions(data / "hdfs_keys" / "hdfs_test_normal_dev") + read_key_sessions(
        data / "hdfs_keys" / "hdfs_test_abnormal_dev"
    )
    progress(f"rendering {len(train)} training and {len(test)} test sessions from {data}")
    train_lines = render(train, seed=args.seed)
    test_rendered = render(test, seed=args.seed + 1)
    detect = [test_rendered[i % len(test_rendered)] for i in range(args.lines)]
    cfg = TemplaterConfig(format="hdfs")
    train_msgs = [r.message for r in train_lines]
    detect_msgs = [r.message for r in detect]

    gc.collect()
    progress(f"ours: learning {len(train_msgs)} lines, then matching {len(detect_msgs)} lines")
    tpl = Templater(cfg)
    t0 = time.perf_counter()
    for page in _pages(train_msgs, args.page_size):
        tpl.parse_many(page, learn=True)
    learn_s = time.perf_counter() - t0
    tpl.clear_caches()
    tpl.stats.clear()
    # Like the job, each page's events are dropped after use: keeping 200k events alive would time the
    # garbage collector walking them, not the templater.
    t0 = time.perf_counter()
    for page in _pages(detect_msgs, args.page_size):
        tpl.parse_many(page, learn=False)
    detect_s = time.perf_counter() - t0
    detect_stats = Counter(tpl.stats)
    events = [ev for page in _pages(detect_msgs, args.page_size) for ev in tpl.parse_many(page, learn=False)]

    gc.collect()
    progress("plain Drain3: the same lines")
    miner, content = plain_drain3(cfg)
    t0 = time.perf_counter()
    for line in train_msgs:
        miner.add_log_message(content(line))
    d_learn_s = time.perf_counter() - t0
    d_unmatched = 0
    t0 = time.perf_counter()
    for line in detect_msgs:
        if miner.match(content(line)) is None:
            d_unmatched += 1
    d_detect_s = time.perf_counter() - t0

    # Keys recovered per session vs the original keys: a templater that learns every session (test keys
    # unseen in training would otherwise all be UNK, which says nothing about the templating).
    progress("one-to-one key recovery over all rendered sessions")
    rate, total = recovery_rate(cfg, train_lines + test_rendered, args.page_size)

    progress(f"memory of {args.sessions} open sessions")
    bytes_per_session = _session_bytes(detect, events, args.sessions)

    return {
        "bench": "templater",
        "lines": len(detect_msgs),
        "lines_per_s": round(len(detect_msgs) / detect_s),
        "drain3_lines_per_s": round(len(detect_msgs) / d_detect_s),
        "speedup": round(d_detect_s / detect_s, 2),
        "learn_lines": len(train_msgs),
        "learn_lines_per_s": round(len(train_msgs) / learn_s),
        "drain3_learn_lines_per_s": round(len(train_msgs) / d_learn_s),
        "learn_speedup": round(d_learn_s / learn_s, 2),
        "templates": tpl.num_templates,
        "drain3_templates": len(miner.drain.clusters),
        "unk": detect_stats["unk"],
        "drain3_unmatched": d_unmatched,
        "l1_hit_rate": round(detect_stats["l1_hits"] / max(1, detect_stats["messages"]), 4),
        "sessions_one_to_one": round(rate, 5),
        "sessions_checked": total,
        "bytes_per_session": round(bytes_per_session),
        "window": 10,
        "page_size": args.page_size,
        "cpu_count": os.cpu_count(),
    }


def _session_bytes(lines: Sequence[LogLine], events: Sequence[Any], n_sessions: int) -> float:
    """tracemalloc'd memory of a SessionTracker holding `n_sessions` sessions fed with real events."""
    keyer = SessionKeyer(SourceConfig(index="x", session_regex=HDFS_SESSION_REGEX))
    feed = []
    seen: set[str] = set()
    for r, ev in zip(lines, events, strict=True):
        if ev is None:
            continue
        sid = keyer.session_of(r.message, None)
        if sid is None:
            continue
        if sid not in seen:
            if len(seen) >= n_sessions:
                continue
            seen.add(sid)
        feed.append((sid, ev.key, ev.numbers, r.time.timestamp()))
    tr = SessionTracker(window=10, idle_timeout_s=3600.0, max_sessions=max(1, n_sessions), ttl_s=86400.0)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i, (sid, key, numbers, ts) in enumerate(feed):
            # The job stores the last event's source document ("index/_id", ids of 20 characters).
            tr.observe(sid, key, numbers, ts, wall=0.0, ref=f"logs-hdfs-2008.11.09/{i:020d}")
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # The Observed results are dropped as they come; what stays is the tracker's tails and index.
    return (after - before) / max(1, len(tr))


def read_ground_truth(path: Path) -> list[str]:
    """EventId per line of a loghub *_structured.csv."""
    with open(path, encoding="utf-8", newline="") as f:
        return [row["EventId"] for row in csv.DictReader(f)]
