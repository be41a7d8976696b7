"""evaluate: DeepLog key-sequence files -> detection figures under the HDFS evaluation protocol.

Contract: `evaluate(detector, normal, abnormal, h)` takes sessions of vocabulary ids, flags a session when any
of its events or its end (EOS) fails detection, and returns FP, FN, FP rate, recall and the paper-scale
figures of ../shared/data/README.md (FP rate and recall projected onto the DeepLog paper's 553,366 normal
and 16,838 abnormal test sessions), and `severity`: per band, the flagged normal (`fp`) and abnormal (`tp`)
sessions whose highest severity (the risk of their rarest anomalous event, `deeplog_siem.risk`) it is, with
`severity_high_or_critical` (those of the two upper bands at paper scale: precision and share of the
anomalies found), and `risk_reliability` (`rarity_reliability`: how many of the normal file's events the
calibration rates rarer than 1 in 100, ... 1 in 1,000,000, beside the count a calibrated rarity gives).
The risk calibration is the one `deeplog-siem train` makes (validation sessions). No session is
de-duplicated. `run_evaluation(...)` is the whole train-or-load / score / report pipeline behind
`deeplog-siem evaluate`.

The figures on the dev files, by seed, and what was tried to lower the FP rate are in BENCHMARKS.md
("Log-key model: detection accuracy on HDFS", "Tried and dropped").
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

from deeplog_siem.calibration import META_KEY as CALIBRATION_META
from deeplog_siem.calibration import KeyCalibration, calibrate_version
from deeplog_siem.config import ModelConfig
from deeplog_siem.detector import KeyDetector
from deeplog_siem.errors import ArtifactError
from deeplog_siem.model import fingerprint, load_checkpoint, resolve_device, save_checkpoint, train_key_model
from deeplog_siem.risk import SEVERITIES, risk_score, severity
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
    return session_rarity(detector, sessions, chunk, partners) < 2.0


def session_rarity(
    detector: KeyDetector,
    sessions: Sequence[Sequence[int]],
    chunk: int = 20_000,
    partners: dict[int, frozenset[int]] | None = None,
) -> torch.Tensor:
    """DoubleTensor [S]: the smallest rarity (`KeyScores.rarity`, the highest risk) among each session's
    anomalous events, 2.0 for a session without any (rarities are at most 1)."""
    rarest = torch.full((len(sessions),), 2.0, dtype=torch.float64)
    for i in range(0, len(sessions), chunk):
        w = build_windows(sessions[i : i + chunk], detector.h)
        s = detector.score(w)
        flagged = s.anomalous & ~concurrency_mask(w.keys, w.targets, partners or {})
        rarest.scatter_reduce_(0, i + w.session[flagged], s.rarity[flagged], reduce="amin")
    return rarest


RELIABILITY_LEVELS = (1e-2, 1e-3, 1e-4, 1e-6)


def rarity_reliability(
    detector: KeyDetector, sessions: Sequence[Sequence[int]], chunk: int = 20_000
) -> dict[str, Any]:
    """Every event and end of `sessions` (normal ones the version never saw), flagged or not: per level,
    how many the calibration rates rarer than it (`below`) and how many a calibrated rarity would
    (`expected`, level x events): a band means what it says only where the two agree."""
    below = dict.fromkeys(RELIABILITY_LEVELS, 0)
    events = 0
    for i in range(0, len(sessions), chunk):
        q = detector.score(build_windows(sessions[i : i + chunk], detector.h)).rarity
        events += q.numel()
        for level in RELIABILITY_LEVELS:
            below[level] += int((q < level).sum())
    return {
        "events": events,
        "below": {f"{level:g}": n for level, n in below.items()},
        "expected": {f"{level:g}": level * events for level in RELIABILITY_LEVELS},
    }


def severity_counts(normal: torch.Tensor, abnormal: torch.Tensor) -> dict[str, dict[str, int]]:
    """Per band, the flagged normal (`fp`) and abnormal (`tp`) sessions whose highest severity it is, from
    `session_rarity` of each file."""
    out = {band: {"fp": 0, "tp": 0} for band in SEVERITIES}
    for part, rarest in (("fp", normal), ("tp", abnormal)):
        for q in rarest[rarest < 2.0].tolist():
            out[severity(risk_score(q))][part] += 1
    return out


def high_or_critical(counts: dict[str, dict[str, int]], normal: int, abnormal: int) -> dict[str, float]:
    """The sessions whose highest severity is high or critical, at paper scale: their precision and their
    share of the true anomalies found."""
    fp = sum(counts[b]["fp"] for b in ("high", "critical"))
    tp = sum(counts[b]["tp"] for b in ("high", "critical"))
    found = sum(c["tp"] for c in counts.values())
    scaled = paper_scale(fp / normal if normal else 0.0, tp / abnormal if abnormal else 0.0)
    return {
        "fp": fp,
        "tp": tp,
        "fp_paper": scaled["fp_paper"],
        "tp_paper": scaled["tp_paper"],
        "precision_paper": scaled["precision_paper"],
        "share_of_found": tp / found if found else 0.0,
    }


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
    normal_rarest = session_rarity(detector, normal, partners=partners)
    abnormal_rarest = session_rarity(detector, abnormal, partners=partners)
    fp = int((normal_rarest < 2.0).sum())
    tp = int((abnormal_rarest < 2.0).sum())
    fp_rate = fp / len(normal) if normal else 0.0
    recall = tp / len(abnormal) if abnormal else 0.0
    severity_bands = severity_counts(normal_rarest, abnormal_rarest)
    return {
        "severity": severity_bands,
        "severity_high_or_critical": high_or_critical(severity_bands, len(normal), len(abnormal)),
        "risk_reliability": rarity_reliability(detector, normal),
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
        calibration = KeyCalibration.from_meta(header["meta"])
        if calibration is None:
            say(f"{model_path} has no risk calibration: risk scores use the model's probabilities alone")
    else:
        if "train" not in sets:
            raise ArtifactError("give --train FILE to train a model, or --model PATH to load one")
        model, report = train_key_model(sets["train"], len(vocab), cfg, progress=say)
        result.update(train_seconds=report.seconds, train=report.to_dict())
        # As `deeplog-siem train` does: on the validation sessions, which never gave a gradient.
        calibration = calibrate_version(model, sets["train"], cfg)
        if save:
            meta = {
                "fingerprint": fingerprint(sets["train"]),
                "train_file": os.path.basename(train or ""),
                "metrics": report.to_dict(),
                "templater": "hdfs_keys:" + os.path.basename(str(Path(train or ""))),
                CALIBRATION_META: calibration.to_dict(),
            }
            save_checkpoint(save, model, vocab, meta)
            say(f"model saved to {save}")
    device = resolve_device(cfg.device)
    detector = KeyDetector(
        model,
        cfg.top_g,
        device=device,
        cache_size=cfg.cache_size,
        min_probability=cfg.floor(model.args.vocab_size),
        calibration=calibration,
    )
    result["risk_calibration"] = "none (probabilities alone)" if calibration is None else calibration.source
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
