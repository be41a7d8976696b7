"""demo: the product end to end on real HDFS sessions, against the embedded server.

Contract: `run_demo(options) -> DemoResult`: starts the embedded server, replays the packaged labelled
sample (normal training sessions first, then a test mix with known anomalous sessions), trains, runs one
detection pass, and measures session-level precision and recall of the anomaly index against the labels;
it also reads back the anomalies per severity band and the riskiest session incidents.
The server is stopped before returning unless the caller keeps it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from deeplog_siem.config import Config, parse_config
from deeplog_siem.es import Clients, connect
from deeplog_siem.runner import run_once, train
from deeplog_siem.runs import RunSummary

from .replay import EPOCH, index_lines, load_sample, render
from .server import EmbeddedServer, start_embedded

log = logging.getLogger(__name__)

DEMO_INDEX = "logs-hdfs-demo"
TRAIN_INDEX = "logs-hdfs-demo-train"  # normal history the model learns from; detection reads DEMO_INDEX


@dataclass
class DemoResult:
    url: str
    config: Config
    train_docs: int
    test_docs: int
    test_sessions: int
    anomalous_sessions: int
    detect: RunSummary
    flagged_sessions: int
    true_positives: int
    precision: float
    recall: float
    examples: list[dict[str, Any]] = field(default_factory=list)
    severity: dict[str, int] = field(default_factory=dict)  # anomaly documents per severity band
    incidents: int = 0
    top_incidents: list[dict[str, Any]] = field(default_factory=list)  # the riskiest, riskiest first


def demo_config(url: str, model_dir: str) -> Config:
    return parse_config(
        {
            "elasticsearch": {"hosts": [url]},
            # The replay is refreshed before detection starts: nothing can still be in flight.
            "source": {"index": DEMO_INDEX, "session_regex": r"(blk_-?\d+)", "query_delay_seconds": 0},
            "templater": {"format": "hdfs"},
            "model": {"dir": model_dir},
        }
    )


def session_scores(clients: Clients, index: str) -> dict[str, int]:
    """Anomaly documents per session id, read back from the anomaly index."""
    clients.es.indices.refresh(index=index)
    resp = clients.es.search(
        index=index,
        size=0,
        aggs={"s": {"terms": {"field": "deeplog.session.id", "size": 65000}}},
    )
    return {b["key"]: b["doc_count"] for b in resp["aggregations"]["s"]["buckets"]}


def severity_counts(clients: Clients, index: str) -> dict[str, int]:
    """Anomaly documents per severity band (`deeplog.severity`), low to critical."""
    resp = clients.es.search(index=index, size=0, aggs={"s": {"terms": {"field": "deeplog.severity"}}})
    got = {b["key"]: b["doc_count"] for b in resp["aggregations"]["s"]["buckets"]}
    return {band: got.get(band, 0) for band in ("low", "medium", "high", "critical")}


def _count(clients: Clients, index: str) -> int:
    clients.es.indices.refresh(index=index)
    return int(clients.es.count(index=index)["count"])


def top_incidents(clients: Clients, index: str, n: int = 5) -> list[dict[str, Any]]:
    """The `n` riskiest session incidents (`deeplog-siem`'s incidents index), riskiest first."""
    resp = clients.es.search(
        index=index,
        size=n,
        sort=[{"deeplog.incident.risk_score": {"order": "desc"}}, {"deeplog.incident.anomaly_count": "desc"}],
    )
    return [h["_source"] for h in resp["hits"]["hits"]]


def run_demo(
    *,
    model_dir: str = "models/demo",
    limit_train: int | None = None,
    limit_test: int | None = None,
    seed: int = 1,
    progress: Callable[[str], None],
    keep: Callable[[EmbeddedServer, DemoResult], None] | None = None,
) -> DemoResult:
    sample = load_sample(limit_train, limit_test)
    progress("[1/5] starting the embedded server ...")
    server = start_embedded()
    try:
        cfg = demo_config(server.url, model_dir)
        clients = connect(cfg.elasticsearch)
        try:
            _setup(clients, cfg, progress)
            progress(f"[2/5] replaying {len(sample.train)} normal HDFS sessions into {TRAIN_INDEX} ...")
            train_lines = render(sample.train, seed=seed)
            index_lines(clients, TRAIN_INDEX, train_lines, run="train", progress=progress)
            progress(f"[3/5] training on {len(train_lines)} log lines ...")
            t = train(cfg, clients, index=TRAIN_INDEX, progress=progress)
            progress(f"      model version {t.version}: {t.sessions} sessions, {t.templates} templates")
            n_bad = sum(sample.test_labels)
            progress(
                f"[4/5] replaying the test mix: {len(sample.test)} sessions, {n_bad} of them anomalous ..."
            )
            start = EPOCH + timedelta(days=1)
            test_lines = render(sample.test, seed=seed + 1, start=start)
            index_lines(clients, DEMO_INDEX, test_lines, run="test", progress=progress)
            progress("[5/5] detecting ...")
            summary = run_once(cfg, clients, close_sessions=True, progress=progress)
            labels = {ln.session: sample.test_labels[ln.session_index] for ln in test_lines}
            flagged = session_scores(clients, cfg.output.anomalies_index)
            tp = sum(1 for s in flagged if labels.get(s))
            result = DemoResult(
                url=server.url,
                config=cfg,
                train_docs=len(train_lines),
                test_docs=len(test_lines),
                test_sessions=len(sample.test),
                anomalous_sessions=n_bad,
                detect=summary,
                flagged_sessions=len(flagged),
                true_positives=tp,
                precision=tp / len(flagged) if flagged else 0.0,
                recall=tp / n_bad if n_bad else 0.0,
                examples=_examples(clients, cfg.output.anomalies_index),
                severity=severity_counts(clients, cfg.output.anomalies_index),
                incidents=_count(clients, cfg.output.incidents),
                top_incidents=top_incidents(clients, cfg.output.incidents),
            )
            if keep is not None:
                keep(server, result)
            return result
        finally:
            clients.close()
    finally:
        server.stop()


def _setup(clients: Clients, cfg: Config, progress: Callable[[str], None]) -> None:
    try:
        from deeplog_siem.setup_assets import create_indices
    except ImportError:  # assets not shipped in this build: indices are created on first write
        return
    progress("      installing index templates and creating the output indices ...")
    create_indices(clients, cfg)


def _examples(clients: Clients, index: str, n: int = 3) -> list[dict[str, Any]]:
    resp = clients.es.search(
        index=index,
        size=n,
        query={"term": {"deeplog.anomaly_type": "log_key"}},
        sort=[{"deeplog.score": {"order": "desc"}}],
    )
    return [h["_source"] for h in resp["hits"]["hits"]]


def write_summary(path: Path, result: DemoResult) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "train_docs": result.train_docs,
                "test_docs": result.test_docs,
                "test_sessions": result.test_sessions,
                "anomalous_sessions": result.anomalous_sessions,
                "flagged_sessions": result.flagged_sessions,
                "true_positives": result.true_positives,
                "precision": result.precision,
                "recall": result.recall,
                "anomalies": dict(result.detect.anomalies),
                "docs_read": result.detect.docs_read,
                "severity": result.severity,
                "incidents": result.incidents,
            },
            indent=2,
        )
    )
