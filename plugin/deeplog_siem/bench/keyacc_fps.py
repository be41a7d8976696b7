"""keyacc_fps: which normal HDFS dev sessions are false positives, under each of several saved key models.

Contract: `python -m deeplog_siem.bench.keyacc_fps M.pt[:FLOOR] ...` scores `hdfs_test_normal_dev` with
each checkpoint (saved by `deeplog-siem evaluate --save M.pt`) the way `deeplog-siem evaluate` does (top-9,
the probability floor given after the colon or the default one, concurrency from the workflows mined from
`hdfs_train` with that model), prints each model's FP count, then every flagged session with the number of
models that flag it and its keys, most often flagged first; the last line is the same as one JSON object.
Sessions every model flags are what no choice of seed or rule among those models removes (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

from ..config import ModelConfig
from ..detector import KeyDetector
from ..evaluate import default_file, flag_sessions
from ..keyseq import hdfs_vocabulary, id_to_hdfs_key, read_key_sessions, to_ids
from ..model import load_checkpoint
from ..workflow import concurrent_partners
from ..workflow_mining import mine_workflows, model_predictor


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deeplog_siem.bench.keyacc_fps", description=__doc__)
    parser.add_argument("models", nargs="+", metavar="M.pt[:FLOOR]")
    args = parser.parse_args(argv)
    vocab = hdfs_vocabulary()
    paths = {n: default_file(n) for n in ("hdfs_train", "hdfs_test_normal_dev")}
    if None in paths.values():
        parser.error("needs ../shared/data/hdfs_keys beside the checkout")
    train, normal = (to_ids(read_key_sessions(p), len(vocab))[0] for p in paths.values())
    cfg = ModelConfig(device="cpu")
    counts: Counter[int] = Counter()
    per_model = {}
    for spec in args.models:
        path, _, floor = spec.partition(":")
        model, _, _ = load_checkpoint(path)
        f = float(floor) if floor else cfg.floor(model.args.vocab_size)
        wm = mine_workflows(train, vocab.templates, predict=model_predictor(model), window=model.args.window)
        det = KeyDetector(model, cfg.top_g, "cpu", cfg.cache_size, min_probability=f)
        flagged = flag_sessions(det, normal, partners=concurrent_partners(wm)).nonzero().flatten().tolist()
        per_model[spec] = len(flagged)
        counts.update(flagged)
        print(f"{spec}: FP {len(flagged)}")
    rows = []
    for s, k in sorted(counts.items(), key=lambda x: (-x[1], x[0])):
        keys = [id_to_hdfs_key(i) for i in normal[s]]
        rows.append({"session": s, "models": k, "events": len(keys), "keys": keys})
        print(
            f"{k}/{len(args.models)} models: session {s} ({len(keys)} events) {' '.join(map(str, keys[:40]))}"
        )
    print(json.dumps({"fp": per_model, "sessions": rows}))


if __name__ == "__main__":
    main()
