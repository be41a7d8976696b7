"""bench anomalydocs: the embedded server's CPU per anomaly document, under the shipped mapping and under the
earlier one (`deeplog.expected` nested and indexed, `deeplog.window.key_ids` integer).

Contract: `add_arguments(parser)`, `run(args, progress) -> dict` (printed as one JSON object by the CLI).

Method: `--docs` log-key anomaly documents built by the job's own builder (`anomaly.key_anomaly`: a window of
10 keys, the top 9 expected keys, HDFS templates), each with its own id, written `--repeat` times with the
job's bulk writer (`sink.write`) into an index created with each mapping; CPU seconds of the server process
per document written. Why it exists: the anomaly writes compete with the reads for the server's CPU in
`bench pipeline`, and the mapping decides most of their cost.
"""

from __future__ import annotations

import argparse
import copy
import random
from collections.abc import Callable
from typing import Any

from ..anomaly import EventRef, key_anomaly
from ..es import connect
from ..keyseq import hdfs_vocabulary
from ..server import start_embedded
from ..setup_assets import index_templates
from ..sink import write
from .pipeline import _Cpu, bench_config

Progress = Callable[[str], None]

EARLIER_EXPECTED = {
    "type": "nested",
    "properties": {
        "key_id": {"type": "integer"},
        "template": {"type": "keyword", "ignore_above": 1024},
        "probability": {"type": "float"},
        "rank": {"type": "integer"},
    },
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--docs", type=int, default=300, help="anomaly documents per write")
    p.add_argument("--repeat", type=int, default=3, help="times each set is written (same ids: overwrites)")


def _docs(n: int, index: str) -> list[dict[str, Any]]:
    vocab = hdfs_vocabulary()
    rng = random.Random(0)
    keys = list(range(3, len(vocab)))
    out = []
    for i in range(n):
        expected = sorted(((k, rng.random()) for k in rng.sample(keys, 9)), key=lambda e: -e[1])
        actual = rng.choice(keys)
        out.append(
            key_anomaly(
                anomaly_type="log_key",
                event=EventRef(
                    "logs", f"doc-{i}", "2008-11-09T20:36:15.000Z", f"081109 line {i}", "10.0.0.1"
                ),
                session_id=f"blk_{i}",
                position=12,
                window=[rng.choice(keys) for _ in range(10)],
                actual=actual,
                probability=0.0001,
                rank=20,
                expected=expected,
                params=("blk_1", "10.0.0.1:50010"),
                vocab=vocab,
                model_version="v1",
                run_id="bench",
                query=f'message:"blk_{i}"',
                top_g=9,
                index=index,
            )
        )
    return out


def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    server = start_embedded()
    result: dict[str, Any] = {"docs": args.docs, "repeat": args.repeat}
    try:
        cfg = bench_config(server.url, "bench", "unused", 1000, 20000)
        clients = connect(cfg.elasticsearch)
        shipped = index_templates(cfg)[cfg.output.anomalies_index]["template"]["mappings"]
        earlier = copy.deepcopy(shipped)
        props = earlier["properties"]["deeplog"]["properties"]
        props["expected"] = EARLIER_EXPECTED
        props.pop("expected_keys", None)
        props["window"]["properties"]["key_ids"] = {"type": "integer"}
        for name, mappings in (("shipped", shipped), ("earlier", earlier)):
            index = f"bench-anomalies-{name}"
            clients.es.indices.create(index=index, mappings=mappings)
            docs = _docs(args.docs, index)
            if name == "earlier":
                for d in docs:
                    d["deeplog"].pop("expected_keys")
            written = 0
            with _Cpu(server.pid) as cpu:
                for _ in range(args.repeat):
                    r = write(clients, docs)
                    written += r.written
                    if r.failed:
                        raise RuntimeError(f"{name}: {dict(r.rejected)} rejected")
            result[f"server_ms_per_doc_{name}"] = round(1000 * cpu.server / written, 3)
            progress(f"  {name} mapping: {result[f'server_ms_per_doc_{name}']} ms server CPU per document")
        clients.close()
    finally:
        server.stop()
    return result
