"""keymodel: log-key model training time and scoring throughput (windows/s) on the HDFS dev files.

(a) every window of hdfs_test_normal_dev + hdfs_test_abnormal_dev (EOS included), scored in chunks the way
the scheduled job does, with the window cache on and starting empty; (b) the distinct windows only, cache
off (pure model throughput), and again with an anchor model beside it as under a feedback version
(`anchored_unique_windows_per_s`); (c) the naive reference loop, one window per forward pass (batch 1), on a
sample. Training time is `train_key_model` on hdfs_train with the default model configuration. Targets
(2-core CPU): (a) >= 1M windows/s, (b) >= 50k windows/s, (b)/(c) >= 20x, training < 120 s.

(a), (b) and (c) take a fraction of a second each, so one measurement on a shared machine is mostly noise:
each is run `--repeat` times (a fresh detector, so a cold cache, every time) and the headline figure is the
median, with every run's figure beside it (`*_runs`).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--chunk", type=int, default=20_000, help="windows per score() call in (a)")
    parser.add_argument("--naive-sample", type=int, default=2_000, help="windows in the naive loop (c)")
    parser.add_argument("--model", metavar="PATH", help="score with this checkpoint instead of training one")
    parser.add_argument(
        "--vocab-size",
        type=int,
        metavar="N",
        help="score with an untrained model over N keys instead (N >= 33): the detector's speed at a production "
        "vocabulary size (more than 79 keys: window ids no longer fit one int64); no training, no accuracy",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="runs of (a), (b) and (c) each; the median is reported (default 5)",
    )
    parser.add_argument(
        "--chunk-rows",
        type=int,
        default=None,
        help="rows per LSTM forward pass in (a) and (b) (default: the detector's, 256)",
    )


def run(args: argparse.Namespace, progress: Callable[[str], None]) -> dict[str, Any]:
    import torch

    from deeplog_siem.config import ModelConfig
    from deeplog_siem.detector import KeyDetector, Windows
    from deeplog_siem.errors import DataError
    from deeplog_siem.model import KeyLSTM, KeyModelArgs, load_checkpoint, resolve_device, train_key_model
    from deeplog_siem.windows import build_windows

    from ..evaluate import default_file
    from ..keyseq import hdfs_vocabulary, read_key_sessions, to_ids

    files = {n: default_file(n) for n in ("hdfs_train", "hdfs_test_normal_dev", "hdfs_test_abnormal_dev")}
    if None in files.values():
        raise DataError("bench keymodel needs ../shared/data/hdfs_keys beside the checkout")
    vocab = hdfs_vocabulary()
    train, normal, abnormal = (to_ids(read_key_sessions(f), len(vocab))[0] for f in files.values())
    cfg = ModelConfig(device=args.device)
    device = resolve_device(cfg.device)
    result: dict[str, Any] = {"device": str(device), "torch_threads": torch.get_num_threads()}
    if args.vocab_size is not None and args.vocab_size < len(vocab):
        raise DataError(
            f"--vocab-size must be at least {len(vocab)}, the HDFS key vocabulary, got {args.vocab_size}"
        )
    if args.vocab_size:
        # Speed only: an untrained model over that many keys, as in production, scoring the HDFS windows.
        torch.manual_seed(0)
        model = KeyLSTM(KeyModelArgs.from_config(args.vocab_size, cfg)).eval()
        result.update(train_seconds=None, vocab_size=args.vocab_size)
    elif args.model:
        model, _, _ = load_checkpoint(args.model)
        result["train_seconds"] = None
    else:
        progress("training on hdfs_train with the default model configuration")
        model, report = train_key_model(train, len(vocab), cfg, progress=progress)
        result.update(train_seconds=round(report.seconds, 2), train_epochs=report.epochs_run)
    h, g = model.args.window, cfg.top_g

    t0 = time.perf_counter()
    w = build_windows(normal + abnormal, h)
    result["build_windows_per_s"] = round(len(w) / (time.perf_counter() - t0))
    n = len(w)
    result["windows"] = n

    repeat = max(1, args.repeat)
    result["repeat"] = repeat

    # (a) every window, chunked, cache on and cold at the start of each run.
    rows = {} if args.chunk_rows is None else {"chunk_rows": args.chunk_rows}
    floor = cfg.floor(model.args.vocab_size)

    def cached() -> float:
        det = KeyDetector(model, g, device=device, cache_size=cfg.cache_size, min_probability=floor, **rows)
        t0 = time.perf_counter()
        for i in range(0, n, args.chunk):
            part = slice(i, i + args.chunk)
            det.score(Windows(w.keys[part], w.targets[part], w.session[part], w.position[part]))
        dt = time.perf_counter() - t0
        result.update(chunk_rows=det.chunk_rows, cache_hits=det.hits, cache_misses=det.misses)
        progress(f"(a) {n} windows in {dt:.3f}s with the cache ({det.hits} hits, {det.misses} misses)")
        return n / dt

    _median_of(result, "cached_windows_per_s", [cached() for _ in range(repeat)])

    # (b) the distinct windows only, no cache: what the model itself sustains. The first call of each
    # detector is a warm-up (first-call allocations).
    uniq = torch.unique(w.keys, dim=0)
    u = Windows(uniq, torch.full((uniq.shape[0],), 3), torch.zeros(uniq.shape[0]), torch.zeros(uniq.shape[0]))
    result["unique_windows"] = uniq.shape[0]

    def distinct(anchor: Any = None) -> float:
        det = KeyDetector(model, g, device=device, cache_size=0, anchor=anchor, **rows)
        det.score(u)
        t0 = time.perf_counter()
        det.score(u)
        dt = time.perf_counter() - t0
        with_anchor = ", with an anchor" if anchor is not None else ""
        progress(f"(b) {uniq.shape[0]} distinct windows in {dt:.3f}s without cache{with_anchor}")
        return uniq.shape[0] / dt

    _median_of(result, "unique_windows_per_s", [distinct() for _ in range(repeat)])
    # (b') the same under a feedback version: the trained model runs beside it as the anchor (a copy of the
    # model stands in for it here; the work is the same second forward pass).
    anchor = copy.deepcopy(model)
    _median_of(result, "anchored_unique_windows_per_s", [distinct(anchor) for _ in range(repeat)])

    # (c) the naive reference: one window per forward pass, as public DeepLog implementations do.
    m = min(args.naive_sample, n)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:m]
    keys, targets = w.keys[idx].to(device), w.targets[idx]
    model = model.to(device).eval()

    def naive() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            for i in range(m):
                logits, _ = model(keys[i : i + 1])
                bool(targets[i] in torch.topk(logits[0], g).indices.cpu())
        dt = time.perf_counter() - t0
        progress(f"(c) {m} windows one at a time in {dt:.3f}s")
        return m / dt

    result["naive_windows"] = m
    _median_of(result, "naive_windows_per_s", [naive() for _ in range(repeat)])
    result["speedup_unique_vs_naive"] = round(
        result["unique_windows_per_s"] / result["naive_windows_per_s"], 1
    )
    result["speedup_cached_vs_naive"] = round(
        result["cached_windows_per_s"] / result["naive_windows_per_s"], 1
    )
    return result


def _median_of(result: dict[str, Any], key: str, runs: list[float]) -> None:
    result[key] = round(statistics.median(runs))
    result[key + "_runs"] = [round(r) for r in runs]
