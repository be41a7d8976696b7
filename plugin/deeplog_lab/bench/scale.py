"""bench scale: one detection job shared by 1, 2 and 4 `deeplog-siem run` worker processes over one backlog,
one worker SIGKILLed mid-run in each pool of several.

Contract: `add_arguments(parser)`, `run(args, progress) -> dict` (printed as one JSON object by the CLI):
`runs`, one entry per pool size: {workers, docs_per_s, lease_requests, docs_missing, docs_repeated,
anomalies, anomalies_as_one_worker}.

Method: the embedded server holds `--docs` real HDFS lines (the packaged DeepLog sample replayed), each with
its block's partition key (`deeplog.partition`, as the shipped ingest pipeline stamps it) and
`event.ingested`. A small model is trained first. For each pool size, the workers start together on fresh
output indices with `workers.partitions: --partitions`; in a pool of several, the first worker is SIGKILLed
as soon as it is seen holding a partition's lease (in a run). `docs_per_s` is the backlog over the wall time
from the workers' start until the run documents account for every document (process start and model
loading included, and the takeover after the kill). `lease_requests`: partition runs started plus leases
refused (the workers' log lines). `docs_missing`/`docs_repeated`: per source document, how many committed run documents of
its partition (`interrupted` ones included: the kill's) have it in the checkpoint range they moved over (0:
missing, more than 1: repeated), plus any run whose `docs_read` differs from the documents of its range.
`read_docs_per_s` / `partitioned_read_docs_per_s`: the job's read path over the backlog, whole and one
partition after another (what the pool's reads together cost the cluster); `one_process_docs_per_s`: one
unpartitioned in-process run (the model loaded).
`anomalies`: the pool's anomaly documents; `anomalies_as_one_worker`: those of one unpartitioned
in-process run over the same documents. Everything shares the machine with the embedded server.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from bisect import bisect_right
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from elasticsearch import helpers

from deeplog_siem.config import parse_config
from deeplog_siem.es import Clients, connect
from deeplog_siem.partitions import Partition, all_partitions, partition_key
from deeplog_siem.runner import run_once, train
from deeplog_siem.setup_assets import run_setup
from deeplog_siem.source import Source
from deeplog_siem.state import load_state, state_id

from ..replay import documents, index_lines, load_sample, render
from ..server import start_embedded
from .pipeline import _lines

Progress = Callable[[str], None]
FIELD = "deeplog.partition"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--docs", type=int, default=20000, help="documents in the backlog")
    p.add_argument("--workers", default="1,2,4", help="pool sizes, comma-separated")
    p.add_argument("--partitions", type=int, default=8, help="workers.partitions")
    p.add_argument("--chunk-size", type=int, default=2000, help="schedule.chunk_size")
    p.add_argument("--lease-seconds", type=int, default=10, help="schedule.lease_seconds")
    p.add_argument("--train-sessions", type=int, default=500, help="normal sessions the small model learns")
    p.add_argument(
        "--timeout", type=float, default=600, help="seconds a pool may take before the bench gives up"
    )


def _config(url: str, prefix: str, model_dir: str, args: argparse.Namespace, partitions: int) -> dict:
    return {
        "elasticsearch": {"hosts": [url], "request_timeout": 120},
        "source": {"index": "scale-logs", "session_regex": r"(blk_-?\d+)", "query_delay_seconds": 0},
        "templater": {"format": "hdfs"},
        "model": {"dir": model_dir, "device": "cpu", "epochs": 2, "patience": 1, "threads": 1},
        "params": {"enabled": False},
        "schedule": {
            "chunk_size": args.chunk_size,
            "lease_seconds": args.lease_seconds,
            "detect_interval_seconds": 1,
            "feedback_interval_seconds": 86400,
        },
        "workers": {"partitions": partitions},
        # Each worker its own free port: several daemons on one host cannot share the default one.
        "health": {"listen": "127.0.0.1:0"},
        "output": {
            "anomalies_index": f"{prefix}-anomalies",
            "runs_index": f"{prefix}-runs",
            "workflows_index": "scale-workflows",
            "state_index": f"{prefix}-state",
        },
    }


STAMP = datetime(2026, 1, 1, tzinfo=UTC)


def _index_backlog(clients: Clients, n: int) -> list[int | None]:
    """The backlog with partition keys: document i is ingested at STAMP + i ms (so its order value is unique)
    and has the i-th key of the list returned (None: no session, no key)."""
    keys: list[int | None] = []

    def docs():
        for i, d in enumerate(documents(_lines(n), "scale-logs", run="scale")):
            block = re.search(r"blk_-?\d+", d["message"])
            key = None if block is None else partition_key(block.group(0))
            if key is not None:
                d["deeplog"] = {"partition": key}
            keys.append(key)
            d["event"]["ingested"] = (STAMP + timedelta(milliseconds=i)).isoformat().replace("+00:00", "Z")
            yield d

    for ok, item in helpers.streaming_bulk(clients.es, docs(), chunk_size=2000, raise_on_error=False):
        if not ok:
            raise RuntimeError(f"indexing the backlog failed: {item}")
    clients.es.indices.refresh(index="scale-logs")
    return keys


def _order_values(keys: list[int | None], parts: list[Partition]) -> dict[int, list[int]]:
    """Per partition, the order values (epoch ms of `event.ingested`) of the documents it owns, ascending."""
    base = int(STAMP.timestamp() * 1000)
    out: dict[int, list[int]] = {p.index: [] for p in parts}
    for i, key in enumerate(keys):
        owner = next((p.index for p in parts if key is not None and p.covers(key)), 0)
        out[owner].append(base + i)
    return out


def _tally(runs: list[dict[str, Any]], owned: dict[int, list[int]]) -> tuple[int, int]:
    """(missing, repeated): per source document, how many committed runs of its partition processed it, from
    the checkpoint range each run moved over (after `checkpoint_from`, up to `checkpoint_to`); a run whose
    `docs_read` differs from the documents of its range counts the difference as repeated (more) or
    missing (fewer)."""
    missing = repeated = 0
    for index, values in owned.items():
        cover = [0] * (len(values) + 1)
        for r in runs:
            if (r.get("partition") or {}).get("id") != index or not r.get("checkpoint_to"):
                continue
            lo = bisect_right(values, r["checkpoint_from"][0]) if r.get("checkpoint_from") else 0
            hi = bisect_right(values, r["checkpoint_to"][0])
            cover[lo] += 1
            cover[hi] -= 1
            diff = r["docs_read"] - (hi - lo)
            repeated += max(0, diff)
            missing += max(0, -diff)
        depth = 0
        for i in range(len(values)):
            depth += cover[i]
            missing += depth == 0
            repeated += max(0, depth - 1)
    return missing, repeated


def _read_rate(clients: Clients, cfg: Any, parts: list[Partition] | None) -> float:
    """Documents per second of the job's read path over the whole backlog: one read, or one read per
    partition one after another (what a pool's reads cost the cluster together)."""
    t0 = time.perf_counter()
    n = 0
    for part in parts or [None]:
        for page in Source(clients, cfg.source, partition=part).pages():
            n += len(page)
    return n / (time.perf_counter() - t0)


class _Worker:
    """A `deeplog-siem run` process; its stderr kept (read by a thread, so it never blocks the worker)."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deeplog_siem.cli", "run", "--config", str(config)],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=120)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def _runs(clients: Clients, index: str) -> list[dict[str, Any]]:
    if not clients.es.indices.exists(index=index):
        return []
    clients.es.indices.refresh(index=index)
    hits = clients.es.search(index=index, query={"term": {"deeplog.run.job": "detect"}}, size=10000)
    return [h["_source"]["deeplog"]["run"] for h in hits["hits"]["hits"]]


def _count(clients: Clients, index: str) -> int:
    if not clients.es.indices.exists(index=index):
        return 0
    clients.es.indices.refresh(index=index)
    return int(clients.es.count(index=index)["count"])


def _pool(
    clients: Clients, cfg_path: Path, prefix: str, workers: int, total: int, args: argparse.Namespace
) -> tuple[float, list[_Worker], bool]:
    """Run a pool of `workers` until the run documents account for `total` documents: its wall time, its
    workers and whether one was killed."""
    cfg = parse_config(yaml.safe_load(cfg_path.read_text(encoding="utf-8")))
    run_setup(clients, cfg)
    parts = all_partitions(args.partitions, FIELD)
    t0 = time.monotonic()
    pool = [_Worker(cfg_path) for _ in range(workers)]
    killed = False
    try:
        while time.monotonic() - t0 < args.timeout:
            if workers > 1 and not killed:
                victim = pool[0].proc.pid
                for p in parts:
                    s = load_state(clients, cfg.output.state_index, state_id("default", partition=p))
                    owner = s.lease.owner if s.lease else ""
                    if f":{victim}:" in owner:
                        pool[0].proc.send_signal(signal.SIGKILL)
                        pool[0].proc.wait()
                        killed = True
                        break
            if sum(r["docs_read"] for r in _runs(clients, f"{prefix}-runs")) >= total:
                return time.monotonic() - t0, pool, killed
            ended = [w for w in pool[1 if killed else 0 :] if w.proc.poll() is not None]
            if ended:
                raise RuntimeError(
                    f"a worker of the pool of {workers} exited with {ended[0].proc.returncode}: "
                    + "".join(ended[0].lines[-20:])
                )
            time.sleep(0.25 if killed or workers == 1 else 0.02)
        raise RuntimeError(f"a pool of {workers} workers did not finish in {args.timeout:g} s")
    finally:
        for w in pool:
            w.stop()


def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    sizes = [int(x) for x in str(args.workers).split(",") if x.strip()]
    server = start_embedded()
    result: dict[str, Any] = {"docs": args.docs, "partitions": args.partitions, "chunk_size": args.chunk_size}
    try:
        with tempfile.TemporaryDirectory(prefix="deeplog-bench-") as tmp:
            model_dir = str(Path(tmp) / "models")
            one = parse_config(_config(server.url, "scale-one", model_dir, args, 1))
            clients = connect(one.elasticsearch)
            progress(f"training a small model on {args.train_sessions} normal sessions ...")
            index_lines(clients, "scale-train", render(load_sample().train[: args.train_sessions], seed=5))
            train(one, clients, index="scale-train")
            run_setup(clients, one)
            progress(f"indexing a backlog of {args.docs} documents with partition keys ...")
            keys = _index_backlog(clients, args.docs)
            total = _count(clients, "scale-logs")
            parts = all_partitions(args.partitions, FIELD)
            owned = _order_values(keys, parts)
            # What the cluster's reads allow: the job's read path over the backlog, whole and partition by
            # partition (each read twice, the second timed: a fresh index reads slowest the first time).
            for _ in range(2):
                whole, split = _read_rate(clients, one, None), _read_rate(clients, one, parts)
            result.update(read_docs_per_s=round(whole, 1), partitioned_read_docs_per_s=round(split, 1))
            progress(
                f"reads: whole {whole:.0f} docs/s, {args.partitions} partitions one after another {split:.0f}"
            )
            t0 = time.perf_counter()
            ref = run_once(one, clients)
            result["one_process_docs_per_s"] = round(ref.docs_read / (time.perf_counter() - t0), 1)
            one_worker = _count(clients, "scale-one-anomalies")
            progress(f"one unpartitioned in-process run: {ref.docs_read} docs, {one_worker} anomalies")
            runs = []
            for n in sizes:
                prefix = f"scale-w{n}"
                cfg_path = Path(tmp) / f"{prefix}.yml"
                cfg_path.write_text(
                    yaml.safe_dump(_config(server.url, prefix, model_dir, args, args.partitions)),
                    encoding="utf-8",
                )
                wall, pool, killed = _pool(clients, cfg_path, prefix, n, total, args)
                docs = _runs(clients, f"{prefix}-runs")
                missing, repeated = _tally(docs, owned)
                log = "".join(line for w in pool for line in w.lines)
                entry = {
                    "workers": n,
                    "docs_per_s": round(total / wall, 1),
                    "lease_requests": sum(1 for r in docs if r["status"] != "interrupted")
                    + len(re.findall(r"partition \d+ of \d+ skipped", log)),
                    "docs_missing": missing,
                    "docs_repeated": repeated,
                    "anomalies": _count(clients, f"{prefix}-anomalies"),
                    "anomalies_as_one_worker": one_worker,
                    "killed_one": killed,
                }
                progress(f"  {entry}")
                runs.append(entry)
            result["runs"] = runs
            clients.close()
    finally:
        server.stop()
    return result
