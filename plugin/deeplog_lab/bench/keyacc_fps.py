"""keyacc_fps: which normal HDFS dev sessions are false positives, under each of several saved key models.

Contract: `python -m deeplog_lab.bench.keyacc_fps M.pt[:FLOOR] ...` scores `hdfs_test_normal_dev` with
each checkpoint (saved by `deeplog-siem evaluate --save M.pt`) the way `deeplog-siem evaluate` does (top-9,
the probability floor given after the colon or the default one, concurrency from the workflows mined from
`hdfs_train` with that model), prints each model's FP count, then every flagged session with the number of
models that flag it and its keys, most often flagged first; the last line is the same as one JSON object.
Sessions every model flags are what no choice of seed or rule among those models removes (BENCHMARKS.md).

`--misses` scores `hdfs_test_abnormal_dev` instead and explains the false negatives: each missed session's
least probable event decides it (raise that event's rejection and the session is caught), so the misses
are grouped by that event's transition (the last three keys of its window -> its key), largest groups
first, with the group's median probability. Why FN swings between seeds: one transition with little
training evidence decides hundreds of sessions.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter, defaultdict
from typing import Any

import torch

from deeplog_siem.config import ModelConfig
from deeplog_siem.detector import KeyDetector
from deeplog_siem.model import load_checkpoint
from deeplog_siem.vocab import EOS, PAD
from deeplog_siem.windows import build_windows
from deeplog_siem.workflow import concurrency_mask, concurrent_partners
from deeplog_siem.workflow_mining import mine_workflows, model_predictor

from ..evaluate import default_file, flag_sessions
from ..keyseq import hdfs_vocabulary, id_to_hdfs_key, read_key_sessions, to_ids


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deeplog_lab.bench.keyacc_fps", description=__doc__)
    parser.add_argument("models", nargs="+", metavar="M.pt[:FLOOR]")
    parser.add_argument("--misses", action="store_true", help="group the missed abnormal sessions instead")
    args = parser.parse_args(argv)
    vocab = hdfs_vocabulary()
    test_file = "hdfs_test_abnormal_dev" if args.misses else "hdfs_test_normal_dev"
    paths = {n: default_file(n) for n in ("hdfs_train", test_file)}
    if None in paths.values():
        parser.error("needs ../shared/data/hdfs_keys beside the checkout")
    train, test = (to_ids(read_key_sessions(p), len(vocab))[0] for p in paths.values())
    cfg = ModelConfig(device="cpu")
    counts: Counter[int] = Counter()
    per_model = {}
    for spec in args.models:
        path, _, floor = spec.partition(":")
        model, _, _ = load_checkpoint(path)
        f = float(floor) if floor else cfg.floor(model.args.vocab_size)
        wm = mine_workflows(train, vocab.templates, predict=model_predictor(model), window=model.args.window)
        det = KeyDetector(model, cfg.top_g, device="cpu", cache_size=cfg.cache_size, min_probability=f)
        partners = concurrent_partners(wm)
        flags = flag_sessions(det, test, partners=partners)
        if args.misses:
            print(f"{spec}:")
            per_model[spec] = _misses(det, test, (~flags).nonzero().flatten().tolist(), partners)
            continue
        flagged = flags.nonzero().flatten().tolist()
        per_model[spec] = len(flagged)
        counts.update(flagged)
        print(f"{spec}: FP {len(flagged)}")
    if args.misses:
        print(json.dumps({"fn": per_model}))
        return
    rows = []
    for s, k in sorted(counts.items(), key=lambda x: (-x[1], x[0])):
        keys = [id_to_hdfs_key(i) for i in test[s]]
        rows.append({"session": s, "models": k, "events": len(keys), "keys": keys})
        print(
            f"{k}/{len(args.models)} models: session {s} ({len(keys)} events) {' '.join(map(str, keys[:40]))}"
        )
    print(json.dumps({"fp": per_model, "sessions": rows}))


def _name(key: int) -> str:
    return "EOS" if key == EOS else "-" if key == PAD else str(id_to_hdfs_key(key))


def _misses(
    det: KeyDetector, sessions: list[list[int]], missed: list[int], partners: dict[int, frozenset[int]]
) -> dict[str, Any]:
    """FN count and the missed sessions grouped by the transition of their least probable event (events
    accepted as concurrent steps left out: their probability did not decide)."""
    w = build_windows([sessions[s] for s in missed], det.h)
    prob = det.score(w).prob.masked_fill(concurrency_mask(w.keys, w.targets, partners), 1.0)  # [N]
    # Each session's least probable event: events ordered by session, then probability; the first of each.
    order = prob.argsort(stable=True)
    order = order[w.session[order].argsort(stable=True)]
    first = torch.ones(order.numel(), dtype=torch.bool)
    first[1:] = w.session[order][1:] != w.session[order][:-1]
    weakest = order[first]  # [len(missed)]
    groups: dict[str, list[float]] = defaultdict(list)
    for keys, target, p in zip(
        w.keys[weakest, -3:].tolist(), w.targets[weakest].tolist(), prob[weakest].tolist(), strict=True
    ):
        groups[f"{' '.join(map(_name, keys))} -> {_name(target)}"].append(p)
    top = sorted(groups.items(), key=lambda g: -len(g[1]))
    print(f"FN {len(missed)}, {len(groups)} deciding transitions; largest:")
    for t, ps in top[:5]:
        print(f"  {len(ps):5d} sessions  {t}  (median p {statistics.median(ps):.1e})")
    return {"fn": len(missed), "groups": [{"transition": t, "sessions": len(ps)} for t, ps in top]}


if __name__ == "__main__":
    main()
