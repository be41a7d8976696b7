"""keyacc_sweep: decision rules of the log-key model swept offline on the HDFS dev files (BENCHMARKS.md).

Contract: `python -m deeplog_lab.bench.keyacc_sweep TAG '{"seed": 42, "label_smoothing": 0.01}'` trains one
model with those ModelConfig overrides (dev protocol of ../shared/data/README.md, CPU) and prints, as JSON
lines, FP/FN/F1_paper for DeepLog's top-g with a probability floor (`min_probability`), the nucleus-style
candidate set (smallest set covering 1-delta of the mass, capped at g) and a whitelist of (last k keys ->
key) transitions seen in training. The floor rows are what `deeplog-siem evaluate --min-probability F` gives
for the same model; the other rules are analysis only (not in the detector). `--ensemble TAG...` averages
the distributions of models saved earlier with `--keep`.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from deeplog_siem.config import ModelConfig
from deeplog_siem.detector import KeyDetector
from deeplog_siem.model import train_key_model
from deeplog_siem.vocab import UNK
from deeplog_siem.windows import build_windows

from ..evaluate import paper_scale
from ..keyseq import HDFS_DIR, hdfs_vocabulary, read_key_sessions, to_ids

FLOORS = (0.0, 3e-5, 1e-4, 2e-4, 3e-4, 6e-4, 1e-3)


def _ranks(probs: torch.Tensor) -> torch.Tensor:
    _, order = probs.sort(dim=1, descending=True, stable=True)
    return torch.empty_like(order).scatter_(1, order, torch.arange(probs.shape[1]).expand_as(order))


def _figures(flag_n: torch.Tensor, flag_a: torch.Tensor) -> dict[str, float]:
    fp, tp = int(flag_n.sum()), int(flag_a.sum())
    f = paper_scale(fp / len(flag_n), tp / len(flag_a))
    return {"fp": fp, "fn": len(flag_a) - tp, "f1_paper": round(f["f1_paper"], 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tag")
    ap.add_argument("overrides", nargs="?", default="{}")
    ap.add_argument("--keep", metavar="DIR", help="save the dev distributions to DIR/TAG.pt")
    ap.add_argument("--ensemble", nargs="+", metavar="PT", help="average saved distributions instead")
    a = ap.parse_args()
    vocab_size = len(hdfs_vocabulary())

    def load(name: str) -> list[list[int]]:
        return to_ids(read_key_sessions(HDFS_DIR / name), vocab_size)[0]

    train, normal, abnormal = load("hdfs_train"), load("hdfs_test_normal_dev"), load("hdfs_test_abnormal_dev")
    cfg = replace(ModelConfig(device="cpu"), **json.loads(a.overrides))
    h, g = cfg.window, cfg.top_g
    wins = {"normal": build_windows(normal, h), "abnormal": build_windows(abnormal, h)}
    if a.ensemble:
        saved = [torch.load(p, weights_only=True) for p in a.ensemble]
        probs = {k: sum(s[k] for s in saved) / len(saved) for k in wins}
    else:
        t0 = time.perf_counter()
        model, report = train_key_model(train, vocab_size, cfg, progress=lambda m: None)
        print(json.dumps({"tag": a.tag, "train": report.to_dict(), "seconds": time.perf_counter() - t0}))
        det = KeyDetector(model, g, device="cpu", cache_size=0)
        probs = {}
        for k, w in wins.items():
            uniq, inverse, ids = det._unique(w.keys)
            probs[k] = det._forward(uniq)[inverse]  # [N, V]
        if a.keep:
            Path(a.keep).mkdir(parents=True, exist_ok=True)
            torch.save(probs, Path(a.keep) / f"{a.tag}.pt")
    # Transitions seen in training, keyed by (last k keys of the window, next key) as one integer.
    tw = build_windows(train, h)

    def code(keys: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
        rows = torch.cat([keys[:, h - k :], targets[:, None]], 1)
        return (rows * vocab_size ** torch.arange(k + 1)).sum(1)

    def flags(rule) -> dict[str, torch.Tensor]:
        out = {}
        for k, w in wins.items():
            p = probs[k]
            bad = rule(p, w) | (w.targets == UNK)
            f = torch.zeros(len(normal if k == "normal" else abnormal), dtype=torch.bool)
            f[w.session[bad]] = True
            out[k] = f
        return out

    def emit(rule_name: str, rule) -> None:
        f = flags(rule)
        print(json.dumps({"tag": a.tag, "rule": rule_name, **_figures(f["normal"], f["abnormal"])}))

    def actual(p: torch.Tensor, w) -> torch.Tensor:
        return p.gather(1, w.targets[:, None])[:, 0]

    def rank(p: torch.Tensor, w) -> torch.Tensor:
        return _ranks(p).gather(1, w.targets[:, None])[:, 0]

    for fl in FLOORS:
        emit(f"top{g} min_probability={fl:g}", lambda p, w, fl=fl: (rank(p, w) >= g) | (actual(p, w) < fl))
    for delta in (1e-3, 1e-4, 1e-5):

        def nucleus(p: torch.Tensor, w, delta: float = delta) -> torch.Tensor:
            sp, order = p.sort(dim=1, descending=True, stable=True)
            inset = (sp.cumsum(1) - sp) < 1 - delta
            inset[:, g:] = False
            return ~torch.zeros_like(inset).scatter_(1, order, inset).gather(1, w.targets[:, None])[:, 0]

        emit(f"nucleus delta={delta:g} cap {g}", nucleus)
    for k in (1, 2, 3, 4, 6, 10):
        seen = torch.unique(code(tw.keys, tw.targets, k))
        for fl in (0.0, 1e-4, 6e-4):

            def whitelist(p: torch.Tensor, w, k: int = k, fl: float = fl, seen: torch.Tensor = seen):
                base = (rank(p, w) >= g) | (actual(p, w) < fl)
                return base & ~torch.isin(code(w.keys, w.targets, k), seen)

            emit(f"top{g} min_probability={fl:g} + seen-in-training whitelist k={k}", whitelist)


if __name__ == "__main__":
    main()
