"""evaluate: DeepLog key-sequence files -> detection figures under the HDFS evaluation protocol.

Contract: `evaluate(detector, normal, abnormal, h)` takes sessions of vocabulary ids, flags a session when any
of its events or its end (EOS) fails detection, and returns FP, FN, FP rate, recall and the paper-scale
figures of ../shared/data/README.md (FP rate and recall projected onto the DeepLog paper's 553,366 normal
and 16,838 abnormal test sessions). No session is de-duplicated. `run_evaluation(...)` is the whole
train-or-load / score / report pipeline behind `deeplog-siem evaluate`.

Dev-file results (h=10, g=9, 2x64, embedding 32; `deeplog-siem evaluate --json [--seed N]`; all figures
and commands in BENCHMARKS.md). Plain DeepLog rule, no smoothing (`--label-smoothing 0
--min-probability 0`): seed 42 FP 9 / FN 18 (F1_paper 0.958); seed 1 FP 14 / FN 237; seed 2 FP 12 / FN 3374;
seed 3 FP 10 / FN 3334. The spread comes from the end of the short truncated abnormal sessions (`22 5`,
`5 22`, `22 5 5`, `5 5 22`, `5 22 5`: 3,070 of 8,419 sessions): the next key is near-certain there and the
top-9 is padded with keys of probability ~1e-6 whose order is noise, so whether EOS lands in the top 9
flips with the seed. Normal sessions end with p(EOS) >= 2e-3 on every seed; those truncated ends get
4e-6..1.3e-4. Earlier (3 seeds each): batch 32-128 and lr 0.002-0.01, dropout 0.2, AdamW weight decay,
unbiased pair weights, every-window training, patience 8, 2-3 seed ensembles, unigram back-off: none got
FP <= 5 with FN <= 303 on more than a lucky seed.
Then, seeds 42/1/2/3 each (FP/FN): a probability floor alone (min_probability 1e-4) 14/6, 18/5, 19/297,
16/914 (the EOS of seeds 2-3 sits above 1e-4); refitting on all sessions for the best epoch count: no
change in FP; 40 epochs at lr 0.001 (best epoch ~39): top-9 FP 7/5/9/10 but FN 34/526/3588/3496, with floor
1e-4 13-18 FP; nucleus sets (1-delta of the mass, capped at 9) are never better than the floor; a whitelist
of transitions seen in training (last k keys -> key) cuts FP to 2-6 only at k <= 2, where FN exceeds 2,000 (with the defaults below, k=6 gives FP 11/12/10/10,
FN 18/9/12/103: the one robust FP gain, not yet in the detector as it needs the set in the checkpoint);
averaging 4 seeds' distributions: label smoothing 0.01 + floor 3e-4 FP 7 / FN 167 (4x the training).
Label smoothing makes the floor robust: the keys the model has no evidence for sit at the smoothing share
(about label_smoothing / V), so a floor of about twice that separates "never seen here" from "rare": label
smoothing 0.003 + floor 2e-4 (the defaults) FP 15/15/15/14, FN 15/6/7/99 (F1_paper 0.933/0.934/0.934/0.932);
0.01 + 6e-4: FP 17/18/19/16, FN 12/5/8/13. Recall is now >= 98.8% on every seed; FP stays at 14-19
(0.4-0.5%) against the 0.15% target, which is not met: the remaining false positives are rare-but-normal
orders (E22 after the 11/9/26 phase, 5 such sessions in hdfs_train), one session with E20 (never in
training) and two sessions of 222 and 269 events.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from deeplog_siem.config import ModelConfig
from deeplog_siem.detector import KeyDetector
from deeplog_siem.errors import ArtifactError
from deeplog_siem.model import fingerprint, load_checkpoint, resolve_device, save_checkpoint, train_key_model
from deeplog_siem.windows import build_windows
from deeplog_siem.workflow import concurrency_mask, concurrent_partners
from deeplog_siem.workflow_mining import mine_workflows, model_predictor

from .keyseq import HDFS_DIR, hdfs_vocabulary, read_key_sessions, to_ids

log = logging.getLogger(__name__)

PAPER_NORMAL, PAPER_ABNORMAL = 553_366, 16_838
PROTOCOL = (
    "trained on every session of the training file (duplicates kept; a seeded share of sessions held out "
    "for early stopping); no test session de-duplicated; a session is anomalous when any event fails "
    "detection (actual key not in the top-g of the model's prediction from the previous h keys, or its "
    "probability below model.min_probability when that is set; the first occurrence of a step the training "
    "workflows run concurrently with one in its window is accepted when model.concurrency is on; windows "
    "left-padded so the first events are scored) or its end-of-session key does; paper scale: "
    f"FP_paper = FP rate x {PAPER_NORMAL:,}, TP_paper = recall x {PAPER_ABNORMAL:,}"
)


def default_file(name: str) -> str | None:
    p = HDFS_DIR / name
    return str(p) if p.is_file() else None


def flag_sessions(
    detector: KeyDetector,
    sessions: Sequence[Sequence[int]],
    chunk: int = 20_000,
    partners: dict[int, frozenset[int]] | None = None,
) -> torch.Tensor:
    """BoolTensor [S]: the sessions with at least one anomalous event (or end), scored `chunk` sessions at once;
    `partners` (workflow.concurrent_partners): concurrent steps' first occurrences are accepted, as in the job."""
    flags = torch.zeros(len(sessions), dtype=torch.bool)
    for i in range(0, len(sessions), chunk):
        w = build_windows(sessions[i : i + chunk], detector.h)
        s = detector.score(w)
        flagged = s.anomalous & ~concurrency_mask(w.keys, w.targets, partners or {})
        flags[i + w.session[flagged]] = True
    return flags


def paper_scale(fp_rate: float, recall: float) -> dict[str, float]:
    fp, tp = fp_rate * PAPER_NORMAL, recall * PAPER_ABNORMAL
    precision = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "fp_paper": fp,
        "tp_paper": tp,
        "precision_paper": precision,
        "recall_paper": recall,
        "f1_paper": f1,
    }


def evaluate(
    detector: KeyDetector,
    normal: Sequence[Sequence[int]],
    abnormal: Sequence[Sequence[int]],
    partners: dict[int, frozenset[int]] | None = None,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    fp = int(flag_sessions(detector, normal, partners=partners).sum())
    tp = int(flag_sessions(detector, abnormal, partners=partners).sum())
    fp_rate = fp / len(normal) if normal else 0.0
    recall = tp / len(abnormal) if abnormal else 0.0
    return {
        "fp": fp,
        "fn": len(abnormal) - tp,
        "fp_rate": fp_rate,
        "recall": recall,
        "normal_sessions": len(normal),
        "abnormal_sessions": len(abnormal),
        **paper_scale(fp_rate, recall),
        "score_seconds": time.perf_counter() - t0,
    }


def run_evaluation(
    train: str | None,
    normal: str,
    abnormal: str,
    cfg: ModelConfig,
    *,
    model_path: str | None = None,
    save: str | None = None,
    limit: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train on `train` (or load `model_path`), score the normal and abnormal files, return the figures."""
    say = progress or (lambda m: log.info("%s", m))
    vocab = hdfs_vocabulary()
    sets = {}
    for name, path in (("train", train), ("normal", normal), ("abnormal", abnormal)):
        if path is None:
            continue
        sessions, unknown = to_ids(read_key_sessions(path)[:limit], len(vocab))
        if unknown:
            say(f"{path}: {unknown} keys have no template and are scored as UNK")
        sets[name] = sessions
    result: dict[str, Any] = {
        "protocol": PROTOCOL,
        "window": cfg.window,
        "top_g": cfg.top_g,
        "min_probability": cfg.floor(len(vocab)),
    }
    if model_path:
        model, ck_vocab, header = load_checkpoint(model_path)
        if ck_vocab.templates != vocab.templates:
            raise ArtifactError(f"{model_path}: the model's vocabulary is not the HDFS key vocabulary")
        if model.args.window != cfg.window:
            say(f"model was trained with window {model.args.window}; using it instead of {cfg.window}")
            cfg = replace(cfg, window=model.args.window)
            result["window"] = cfg.window
        result.update(
            model=str(model_path), train_seconds=None, train_fingerprint=header["meta"].get("fingerprint")
        )
    else:
        if "train" not in sets:
            raise ArtifactError("give --train FILE to train a model, or --model PATH to load one")
        model, report = train_key_model(sets["train"], len(vocab), cfg, progress=say)
        result.update(train_seconds=report.seconds, train=report.to_dict())
        if save:
            meta = {
                "fingerprint": fingerprint(sets["train"]),
                "train_file": os.path.basename(train or ""),
                "metrics": report.to_dict(),
                "templater": "hdfs_keys:" + os.path.basename(str(Path(train or ""))),
            }
            save_checkpoint(save, model, vocab, meta)
            say(f"model saved to {save}")
    device = resolve_device(cfg.device)
    detector = KeyDetector(
        model, cfg.top_g, device, cfg.cache_size, min_probability=cfg.floor(model.args.vocab_size)
    )
    partners: dict[int, frozenset[int]] = {}
    if cfg.concurrency and "train" in sets:
        # The workflows `train` would build from the same sessions: which steps run concurrently.
        say("mining workflows from the training sessions (model.concurrency) ...")
        wm = mine_workflows(sets["train"], vocab.templates, predict=model_predictor(model), window=cfg.window)
        partners = concurrent_partners(wm)
    elif cfg.concurrency:
        say(
            "model.concurrency needs --train (the workflows come from the training sessions); off for this run"
        )
    result["concurrent_pairs"] = sorted({tuple(sorted((a, b))) for a, bs in partners.items() for b in bs})
    result.update(evaluate(detector, sets["normal"], sets["abnormal"], partners))
    result["device"] = str(device)
    result["model_args"] = asdict(model.args)
    return result
