"""keyacc_session: the key model's alternative measured, one LSTM pass per session instead of windows.

Contract: `python -m deeplog_lab.bench.keyacc_session [--seed S] [--label-smoothing E]` trains an LSTM of
the key model's sizes (embedding 32, 2 layers of 64) that reads a whole session from its start (PAD is the
start symbol) and predicts every next key and the end (EOS) in one pass, on `hdfs_train` with the key
model's optimiser, learning rate, validation split and early stopping (distinct sessions weighted by their
counts, in batches of similar length). It then scores every distinct session of the two dev files in one
pass each and prints, as one JSON object on the last line, FP / FN / F1_paper for top-9 with each probability
floor (concurrency from the workflows mined with this model, as `evaluate` does) and the training and scoring
seconds; `deeplog-siem evaluate` gives the same figures for the windowed model. Analysis only: the job's
model stays the windowed one (BENCHMARKS.md has both).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F

from deeplog_siem.config import ModelConfig
from deeplog_siem.model import KeyLSTM, KeyModelArgs, validation_split
from deeplog_siem.vocab import EOS, PAD, UNK
from deeplog_siem.windows import build_windows
from deeplog_siem.workflow import concurrency_mask, concurrent_partners
from deeplog_siem.workflow_mining import mine_workflows

from ..evaluate import default_file, paper_scale
from ..keyseq import hdfs_vocabulary, read_key_sessions, to_ids

FLOORS = (0.0, 1e-4, 2e-4, 3e-4)


def _batches(
    sessions: list[tuple[int, ...]], size: int
) -> list[tuple[torch.Tensor, torch.Tensor, list[int]]]:
    """Distinct sessions, shortest first, `size` at a time -> (inputs [B, T+1] = PAD + keys, targets [B, T+1]
    = keys + EOS with -100 past each end, indices of the sessions)."""
    order = sorted(range(len(sessions)), key=lambda i: len(sessions[i]))
    out = []
    for i in range(0, len(order), size):
        idx = order[i : i + size]
        t = max(len(sessions[j]) for j in idx) + 1
        x = torch.full((len(idx), t), PAD, dtype=torch.long)
        y = torch.full((len(idx), t), -100, dtype=torch.long)
        for r, j in enumerate(idx):
            s = torch.tensor(sessions[j], dtype=torch.long)
            x[r, 1 : len(s) + 1] = s
            y[r, : len(s)] = s
            y[r, len(s)] = EOS
        y[y == UNK] = -100  # an unknown key is never a normal next event
        out.append((x, y, idx))
    return out


def _logits(model: KeyLSTM, x: torch.Tensor) -> torch.Tensor:
    out, _ = model.lstm(model.embed(x))  # [B, T, H]
    return model.head(out)  # [B, T, V]


def _loss(model: KeyLSTM, batches, weights: torch.Tensor, ls: float) -> torch.Tensor | float:
    total, mass = 0.0, 0.0
    for x, y, idx in batches:
        ce = F.cross_entropy(_logits(model, x).transpose(1, 2), y, reduction="none", label_smoothing=ls)
        w = weights[idx][:, None] * (y != -100)
        total = total + (ce * w).sum()
        mass += float(w.sum())
    return total / mass


def train(
    sessions: Sequence[Sequence[int]], vocab_size: int, cfg: ModelConfig, batch: int = 8
) -> tuple[KeyLSTM, dict]:
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    tr_idx, va_idx = validation_split(len(sessions), cfg)
    sets = []
    for idx in (tr_idx, va_idx):
        c = Counter(tuple(sessions[i]) for i in idx)
        distinct = list(c)
        sets.append((_batches(distinct, batch), torch.tensor([float(c[s]) for s in distinct])))
    (tb, tw), (vb, vw) = sets
    model = KeyLSTM(KeyModelArgs.from_config(vocab_size, cfg))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    gen = torch.Generator().manual_seed(cfg.seed)
    best, best_state, best_epoch, stale, epoch = math.inf, None, 0, 0, 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        for b in torch.randperm(len(tb), generator=gen).tolist():
            loss = _loss(model, [tb[b]], tw, cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            v = float(_loss(model, vb, vw, cfg.label_smoothing))
        if v < best - 1e-4:
            best, best_epoch, stale = v, epoch, 0
            best_state = {k: t.clone() for k, t in model.state_dict().items()}
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return model, {
        "epochs_run": epoch,
        "best_epoch": best_epoch,
        "train_seconds": time.perf_counter() - t0,
        "distinct_train_sessions": len(tw),
        "steps_per_epoch": len(tb),
    }


@torch.no_grad()
def session_probs(model: KeyLSTM, sessions: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Per session, the next-key distribution before each key and before the end: [len + 1, V]."""
    distinct = list(dict.fromkeys(tuple(s) for s in sessions))
    at = {s: i for i, s in enumerate(distinct)}
    probs: list[torch.Tensor] = [torch.empty(0)] * len(distinct)
    for x, _, idx in _batches(distinct, 256):
        logits = _logits(model, x)
        logits[..., [PAD, UNK]] = float("-inf")
        p = torch.softmax(logits, dim=2)
        for r, j in enumerate(idx):
            probs[j] = p[r, : len(distinct[j]) + 1]
    return [probs[at[tuple(s)]] for s in sessions]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deeplog_lab.bench.keyacc_session", description=__doc__)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--label-smoothing", type=float, default=ModelConfig.label_smoothing)
    parser.add_argument("--epochs", type=int, default=ModelConfig.epochs)
    parser.add_argument("--batch", type=int, default=8, help="distinct sessions per step (default 8)")
    args = parser.parse_args(argv)
    vocab = hdfs_vocabulary()
    paths = [default_file(n) for n in ("hdfs_train", "hdfs_test_normal_dev", "hdfs_test_abnormal_dev")]
    if None in paths:
        parser.error("needs ../shared/data/hdfs_keys beside the checkout")
    train_s, normal, abnormal = (to_ids(read_key_sessions(p), len(vocab))[0] for p in paths)
    cfg = replace(
        ModelConfig(device="cpu"), seed=args.seed, label_smoothing=args.label_smoothing, epochs=args.epochs
    )
    model, result = train(train_s, len(vocab), cfg, args.batch)

    def predict(histories: Sequence[Sequence[int]]) -> torch.Tensor:
        return torch.stack([p[-1] for p in session_probs(model, histories)])  # [B, V]

    partners = concurrent_partners(
        mine_workflows(train_s, vocab.templates, predict=predict, window=cfg.window)
    )
    t0 = time.perf_counter()
    verdicts = {}
    for name, sessions in (("normal", normal), ("abnormal", abnormal)):
        probs = session_probs(model, sessions)
        w = build_windows(sessions, cfg.window)  # the same events in the same order, for the concurrency rule
        p = torch.cat(probs)  # [events + ends, V]
        assert p.shape[0] == len(w), "sessions with UNK keys are not supported here"
        actual = p[torch.arange(len(w)), w.targets]
        rank = (p > actual[:, None]).sum(1)
        verdicts[name] = (w, actual, rank, concurrency_mask(w.keys, w.targets, partners))
    result["score_seconds"] = time.perf_counter() - t0
    for f in FLOORS:
        flagged = {}
        for name, (w, actual, rank, conc) in verdicts.items():
            bad = ((rank >= cfg.top_g) | (actual < f)) & ~conc
            flags = torch.zeros(int(w.session.max()) + 1, dtype=torch.bool)
            flags[w.session[bad]] = True
            flagged[name] = int(flags.sum())
        fp, fn = flagged["normal"], len(abnormal) - flagged["abnormal"]
        f1 = paper_scale(fp / len(normal), flagged["abnormal"] / len(abnormal))["f1_paper"]
        result[f"floor_{f}"] = {"fp": fp, "fn": fn, "f1_paper": round(f1, 4)}
        print(f"top-{cfg.top_g}, floor {f}: FP {fp}, FN {fn}, F1_paper {f1:.4f}")
    result.update(
        seed=args.seed,
        label_smoothing=args.label_smoothing,
        concurrent_pairs=sorted({tuple(sorted((a, b))) for a, bs in partners.items() for b in bs}),
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
