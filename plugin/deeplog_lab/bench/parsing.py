"""bench parsing: grouping accuracy of the templater on the loghub 2k samples, beside plain Drain3.

Contract: `add_arguments(parser)`, `run(args, progress) -> dict` (printed as one JSON object by the CLI);
`grouping_accuracy(truth, predicted) -> float`; `systems(data_dir) -> list[Sample]`.

Data: every `loghub_2k/{System}_2k.log` with its `_structured.csv` (the true event of each line and the
`Content` column, the message after the header), and `hdfs_raw/HDFS_2k.log` when present. Per system:
- raw: the raw lines, `templater.format: auto` (the format chosen from the lines themselves);
- content: the Content column, `templater.format: none` (what a shipper that split the header indexes);
- drain3: plain Drain3 (`TemplateMiner`, default settings, no masks) on the content column and on the raw
  lines, the same lines in the same run.
Every line is learned (learn=True) in file order; a line's group is the key it gets. GA (Zhu et al.,
ICSE-SEIP 2019): a line counts when its group holds exactly the lines of its true event.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drain3.template_miner import TemplateMiner
from drain3.template_miner_config import TemplateMinerConfig

from deeplog_siem.config import TemplaterConfig
from deeplog_siem.format_detect import detect_format
from deeplog_siem.templater import Templater

from ..shared_data import shared_data_dir


@dataclass(frozen=True)
class Sample:
    system: str
    raw: list[str]
    content: list[str]
    truth: list[str]


def grouping_accuracy(truth: Sequence[Hashable], predicted: Sequence[Hashable]) -> float:
    """Share of lines whose predicted group holds exactly the lines of their true event."""
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} true events for {len(predicted)} predictions")
    if not truth:
        return 1.0
    true_size = Counter(truth)
    groups: dict[Hashable, Counter[Hashable]] = {}
    for t, p in zip(truth, predicted, strict=True):
        groups.setdefault(p, Counter())[t] += 1
    correct = 0
    for members in groups.values():
        if len(members) == 1:
            (t, n), *_ = members.items()
            if true_size[t] == n:
                correct += n
    return correct / len(truth)


def _read(log_path: Path, csv_path: Path, system: str) -> Sample:
    raw = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    with open(csv_path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != len(raw):
        raise ValueError(f"{log_path}: {len(raw)} lines but {len(rows)} labelled rows in {csv_path}")
    return Sample(system, raw, [r["Content"] for r in rows], [r["EventId"] for r in rows])


def systems(data_dir: Path) -> list[Sample]:
    """The labelled samples found under `data_dir` (loghub_2k, and HDFS_2k from hdfs_raw)."""
    out = []
    for log_path in sorted((data_dir / "loghub_2k").glob("*_2k.log")):
        out.append(_read(log_path, Path(f"{log_path}_structured.csv"), log_path.name[: -len("_2k.log")]))
    hdfs = data_dir / "hdfs_raw" / "HDFS_2k.log"
    if hdfs.is_file():
        out.append(_read(hdfs, Path(f"{hdfs}_structured.csv"), "HDFS"))
    return out


def _ours(lines: Sequence[str], fmt: str) -> list[int]:
    tpl = Templater(TemplaterConfig(format=fmt))  # type: ignore[arg-type]
    keys = [ev.key if ev is not None else -1 for ev in tpl.parse_many(lines, learn=True)]
    # Training reads its keys through the aliases of the templates merged while it learned; so does this.
    return [tpl.canonical(k) for k in keys]


def _drain3(lines: Sequence[str]) -> list[int]:
    miner = TemplateMiner(persistence_handler=None, config=TemplateMinerConfig())
    return [miner.add_log_message(line)["cluster_id"] for line in lines]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="shared data folder (default ../shared/data)"
    )
    parser.add_argument("--systems", default="", help="comma-separated systems to run (default: all found)")


def run(args: argparse.Namespace, progress: Callable[[str], None]) -> dict[str, Any]:
    data = Path(args.data_dir) if args.data_dir else shared_data_dir()
    samples = systems(data)
    wanted = {s for s in args.systems.split(",") if s}
    if wanted:
        samples = [s for s in samples if s.system in wanted]
    if not samples:
        raise SystemExit(f"bench parsing: no labelled samples under {data}")
    per: dict[str, dict[str, Any]] = {}
    ours_s = 0.0
    ours_lines = 0
    for s in samples:
        t0 = time.perf_counter()
        choice = detect_format(s.raw)
        raw_keys = _ours(s.raw, choice.format)
        content_keys = _ours(s.content, "none")
        ours_s += time.perf_counter() - t0
        ours_lines += len(s.raw) + len(s.content)
        per[s.system] = {
            "format": choice.format,
            "header_share": round(choice.share, 4),
            "ga_raw": round(grouping_accuracy(s.truth, raw_keys), 4),
            "ga_content": round(grouping_accuracy(s.truth, content_keys), 4),
            "drain3_ga": round(grouping_accuracy(s.truth, _drain3(s.content)), 4),
            "drain3_ga_raw": round(grouping_accuracy(s.truth, _drain3(s.raw)), 4),
            "events": len(set(s.truth)),
            "templates_raw": len(set(raw_keys)),
            "templates_content": len(set(content_keys)),
        }
        progress(f"{s.system}: {per[s.system]}")

    def col(name: str) -> list[float]:
        return [v[name] for v in per.values()]

    return {
        "bench": "parsing",
        "mean_ga_raw": round(statistics.fmean(col("ga_raw")), 4),
        "mean_ga_content": round(statistics.fmean(col("ga_content")), 4),
        "min_ga_raw": min(col("ga_raw")),
        "min_ga_content": min(col("ga_content")),
        "drain3_mean_ga": round(statistics.fmean(col("drain3_ga")), 4),
        "drain3_mean_ga_raw": round(statistics.fmean(col("drain3_ga_raw")), 4),
        "systems": per,
        "lines_per_s": round(ours_lines / ours_s) if ours_s else 0,
        "cpu_count": os.cpu_count(),
    }
