"""bench anomalydocs: the embedded server's CPU per anomaly document, under the shipped mapping, under the
previous one (the display-only fields indexed as well: `deeplog.window.templates`, `deeplog.expected_summary`,
the session query, `rule.description`, ...) and under the earlier one (also `deeplog.expected` nested and
indexed, `deeplog.window.key_ids` integer).

Contract: `add_arguments(parser)`, `run(args, progress) -> dict` (printed as one JSON object by the CLI).

Method: `--docs` log-key anomaly documents built by the job's own builder (`anomaly.key_anomaly`: a window of
10 keys, the top 9 expected keys, HDFS templates), each with its own id, written `--repeat` times with the
job's bulk writer (`sink.write`) in bulks of `--bulk` documents (about what one scoring pass of the job
writes) into an index created with each mapping; CPU seconds of the server process per document written. The
bulks matter: the embedded server stalls on every tenth bulk request to an index, for longer the more it
indexed since (a fifth of a second after ten bulks of 35 documents here), so fewer, larger writes would hide
part of the cost. Why it exists: the anomaly writes compete with the reads for the server's CPU in
`bench pipeline`, and the mapping decides most of their cost.
"""

from __future__ import annotations

import argparse
import copy
import random
from collections.abc import Callable
from typing import Any

from deeplog_siem.anomaly import DocContext, EventRef, KeyVerdict, SessionEvent, key_anomaly
from deeplog_siem.es import connect
from deeplog_siem.setup_assets import index_templates
from deeplog_siem.sink import write

from ..keyseq import hdfs_vocabulary
from ..server import start_embedded
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
    p.add_argument("--bulk", type=int, default=30, help="documents per bulk request")


def _docs(n: int, index: str) -> list[dict[str, Any]]:
    vocab = hdfs_vocabulary()
    rng = random.Random(0)
    keys = list(range(3, len(vocab)))
    ctx = DocContext(
        vocab=vocab,
        model_version="v1",
        run_id="bench",
        index=index,
        message_field="message",
        top_g=9,
        min_probability=0.0,
    )
    out = []
    for i in range(n):
        expected = sorted(((k, rng.random()) for k in rng.sample(keys, 9)), key=lambda e: -e[1])
        actual = rng.choice(keys)
        window = [rng.choice(keys) for _ in range(10)]
        event = EventRef("logs", f"doc-{i}", "2008-11-09T20:36:15.000Z", f"081109 line {i}", "10.0.0.1")
        out.append(
            key_anomaly(
                ctx,
                SessionEvent(event, f"blk_{i}", 12, window, ("blk_1", "10.0.0.1:50010")),
                KeyVerdict("log_key", actual, 0.0001, 20, expected),
            )
        )
    return out


def _indexed_everywhere(mappings: dict[str, Any]) -> dict[str, Any]:
    """The mapping with every stored-only field (`index: false`) indexed again, as before the trim: keywords
    with their `ignore_above`, `deeplog.summary` with its `keyword` sub-field."""
    out = copy.deepcopy(mappings)

    def walk(props: dict[str, Any]) -> None:
        for name, spec in props.items():
            if spec.get("index") is False:
                spec.pop("index")
                spec.pop("doc_values", None)
                if spec.get("type") == "keyword":
                    spec["ignore_above"] = 8191 if name == "query" else 1024
            if "properties" in spec:
                walk(spec["properties"])

    walk(out["properties"])
    out["properties"]["deeplog"]["properties"]["summary"] = {
        "type": "text",
        "fields": {"keyword": {"type": "keyword", "ignore_above": 1024}},
    }
    return out


def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    server = start_embedded()
    result: dict[str, Any] = {"docs": args.docs, "repeat": args.repeat, "bulk": args.bulk}
    try:
        cfg = bench_config(server.url, "bench", "unused", 1000, 20000)
        clients = connect(cfg.elasticsearch)
        shipped = index_templates(cfg)[cfg.output.anomalies_index]["template"]["mappings"]
        previous = _indexed_everywhere(shipped)
        earlier = copy.deepcopy(previous)
        props = earlier["properties"]["deeplog"]["properties"]
        props["expected"] = EARLIER_EXPECTED
        props.pop("expected_keys", None)
        props["window"]["properties"]["key_ids"] = {"type": "integer"}
        for name, mappings in (("shipped", shipped), ("previous", previous), ("earlier", earlier)):
            index = f"bench-anomalies-{name}"
            clients.es.indices.create(index=index, mappings=mappings)
            docs = _docs(args.docs, index)
            if name == "earlier":
                for d in docs:
                    d["deeplog"].pop("expected_keys")
            written = 0
            with _Cpu(server.pid) as cpu:
                for _ in range(args.repeat):
                    for k in range(0, len(docs), max(1, args.bulk)):
                        r = write(clients, docs[k : k + max(1, args.bulk)])
                        written += r.written
                        if r.failed:
                            raise RuntimeError(f"{name}: {dict(r.rejected)} rejected")
            result[f"server_ms_per_doc_{name}"] = round(1000 * cpu.server / written, 3)
            progress(f"  {name} mapping: {result[f'server_ms_per_doc_{name}']} ms server CPU per document")
        clients.close()
    finally:
        server.stop()
    return result
