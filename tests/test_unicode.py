"""Lone surrogates and broken UTF-16 sequences in log messages survive training and detection.

The templater is where messages enter the pipeline: a lone surrogate (what a JSON `\\ud83d` escape without
its pair, or a shipper that cut a pair in half, leaves in a decoded string) is replaced by U+FFFD there and
counted in `stats["invalid_unicode"]`, so templates, parameters and every saved artifact are valid text.
End to end, the documents go through the cluster: the embedded server answers a filtered `_source` with
each broken sequence already replaced by U+FFFD, a cluster that returns it as stored hands the templater
the surrogates themselves; either way the lines must be read, templated and scored.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from elasticsearch import helpers

from deeplog_siem.artifacts import TEMPLATER
from deeplog_siem.config import TemplaterConfig
from deeplog_siem.runner import run_once, train
from deeplog_siem.templater import Templater

from .conftest import need_data

# Broken UTF-16 in a string: a high surrogate alone, a low one alone, a pair in the wrong order, and a
# high surrogate that ends the message.
BROKEN = ("\ud83d", "\udc80", "\udc00\ud800", "\udbff")


def _real_lines() -> list[str]:
    """Real HDFS lines that name a block (the session id)."""
    text = need_data("hdfs_raw", "HDFS_2k.log").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if "blk_" in line]


def _hostile(line: str, i: int) -> str:
    """A real line with broken UTF-16 inside the first word of its content and at its end."""
    words = line.split(" ")
    words[5] = words[5][:2] + BROKEN[i % len(BROKEN)] + words[5][2:]
    return " ".join(words) + BROKEN[(i + 1) % len(BROKEN)]


def _time(line: str) -> str:
    """081109 203615 ... -> 2008-11-09T20:36:15Z"""
    d, t = line.split(" ", 2)[:2]
    return f"20{d[:2]}-{d[2:4]}-{d[4:6]}T{t[:2]}:{t[2:4]}:{t[4:6]}Z"


def test_templater_replaces_lone_surrogates_and_counts_them(tmp_path):
    lines = _real_lines()[:200]
    hostile = [_hostile(line, i) for i, line in enumerate(lines[:8])]
    t = Templater(TemplaterConfig(format="hdfs"))
    out = t.parse_many(lines + hostile, learn=True) + [t.parse(hostile[0], learn=True)]
    t.save(tmp_path)  # the state file holds the templates: it must be valid UTF-8
    loaded = Templater.load(tmp_path, TemplaterConfig(format="hdfs"))
    assert loaded.num_templates == t.num_templates
    assert all(ev is not None for ev in out)
    assert t.stats["invalid_unicode"] == len(hostile) + 1
    for ev in out[len(lines) :]:
        assert "\ufffd" in ev.template
        ev.template.encode("utf-8")  # no surrogate left
        " ".join(ev.params).encode("utf-8")
    # A line read again after learning takes the cached path and gives the same event.
    again = loaded.parse_many(hostile, learn=False)
    assert [ev.key for ev in again] == [ev.key for ev in out[len(lines) : -1]]


def test_train_and_detect_process_lines_with_broken_unicode(clients, make_config, prefix):
    lines = _real_lines()
    hostile = [_hostile(line, i) for i, line in enumerate(lines[100:140])]
    cfg = make_config(
        templater={"format": "hdfs"},
        model={"device": "cpu", "epochs": 2, "patience": 1},
        params={"epochs": 2},
    )
    ingested = (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="seconds").replace("+00:00", "Z")

    def doc(index: str, i: int, message: str) -> dict:
        return {
            "_index": index,
            "_id": str(i),
            "@timestamp": _time(message),
            "message": message,
            "event": {"ingested": ingested},
        }

    train_index, detect_index = f"{prefix}-train", cfg.source.index
    # The client sends a lone surrogate as its UTF-8 form (surrogatepass); a shipper that writes
    # ASCII-only JSON sends the escape `\ud83d` instead: both reach the index.
    docs = [doc(train_index, i, m) for i, m in enumerate(lines + hostile[:20])]
    helpers.bulk(clients.es, docs)
    for i, m in enumerate(hostile[20:], start=len(docs)):
        body = json.dumps({k: v for k, v in doc(train_index, i, m).items() if not k.startswith("_")})
        assert "\\ud" in body or "\\udc" in body  # json.dumps escapes a lone surrogate (ensure_ascii)
        clients.es.perform_request(
            "PUT",
            f"/{train_index}/_doc/{i}",
            body=body.encode("ascii"),
            headers={"content-type": "application/json", "accept": "application/json"},
        )
    clients.es.indices.refresh(index=train_index)
    summary = train(cfg, clients, index=train_index)
    assert summary.docs == len(lines) + len(hostile)
    assert sum(summary.skipped.values()) == 0, summary.skipped
    templates = Templater.load(
        Path(cfg.model.dir) / summary.version / TEMPLATER, cfg.templater
    ).vocab.templates
    assert any("\ufffd" in t for t in templates), templates

    helpers.bulk(clients.es, [doc(detect_index, i, m) for i, m in enumerate(lines[:300] + hostile)])
    clients.es.indices.refresh(index=detect_index)
    run = run_once(cfg, clients, close_sessions=True)
    assert run.status == "ok", run.error
    assert run.docs_read == 300 + len(hostile)
    assert run.processed == run.docs_read, run.skipped
