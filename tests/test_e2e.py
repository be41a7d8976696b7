"""The product end to end on the real server: replay real HDFS sessions, train, detect, read anomalies back."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from deeplog_lab.demo import session_scores
from deeplog_lab.replay import EPOCH, index_lines, load_sample, render
from deeplog_siem.runner import run_once, train
from deeplog_siem.setup_assets import create_indices
from deeplog_siem.state import load_state


@pytest.fixture(scope="module")
def sample():
    s = load_sample()
    # A small but real slice: the first 600 normal training sessions, and a test mix holding every kind of
    # session the sample has (its first 250 sessions: normal and anomalous, shuffled when it was built).
    return s.train[:600], s.test[:250], s.test_labels[:250]


def test_replay_train_detect_end_to_end(clients, make_config, prefix, sample):
    train_sessions, test_sessions, labels = sample
    cfg = make_config(model={"epochs": 12, "patience": 2})
    create_indices(clients, cfg)  # strict mappings: every document the job writes must fit them

    train_lines = render(train_sessions, seed=11)
    index_lines(clients, f"{prefix}-train", train_lines, run="train")
    t = train(cfg, clients, index=f"{prefix}-train")
    assert t.sessions == len(train_sessions)
    assert t.docs == len(train_lines)
    assert 5 <= t.templates <= 30

    test_lines = render(test_sessions, seed=12, start=EPOCH + timedelta(days=1))
    index_lines(clients, cfg.source.index, test_lines, run="test")
    summary = run_once(cfg, clients, close_sessions=True)
    assert summary.status == "ok"
    assert summary.docs_read == len(test_lines)
    assert summary.sessions == len(test_sessions)
    assert sum(summary.rejected.values()) == 0
    assert summary.anomalies_total > 0
    assert summary.lag_seconds == 0.0 and summary.sessions_evicted == 0  # caught up, nothing dropped
    clients.es.indices.refresh(index=cfg.output.runs_index)
    run = clients.es.get(index=cfg.output.runs_index, id=summary.run_id)["_source"]["deeplog"]["run"]
    assert (run["lag_seconds"], run["sessions_evicted"], run["docs_read"]) == (0.0, 0, len(test_lines))

    # Every anomaly is in the index, explains itself, and points back at its raw log document.
    clients.es.indices.refresh(index=cfg.output.anomalies_index)
    hits = clients.es.search(index=cfg.output.anomalies_index, size=1000)["hits"]["hits"]
    assert len(hits) == summary.anomalies_total
    by_block = {ln.session: labels[ln.session_index] for ln in test_lines}
    for h in hits:
        d = h["_source"]["deeplog"]
        assert d["anomaly_type"] in ("log_key", "unseen_key", "session_end", "parameter")
        assert d["session"]["id"] in by_block
        assert d["summary"]
        if d["anomaly_type"] == "log_key":
            # Outside the top g, or inside it with less than the probability floor.
            assert d["key"]["rank"] > cfg.model.top_g or d["key"]["probability"] <= cfg.model.floor(
                t.templates + 3
            )
            assert len(d["expected"]) == cfg.model.top_g
            assert d["expected_keys"] == [
                f"K{e['key_id']}" if e["key_id"] > 2 else e["template"] for e in d["expected"]
            ]
            assert d["key"]["template"] and d["window"]["key_ids"]
        if d["anomaly_type"] != "session_end":
            src = clients.es.get(index=d["source"]["index"], id=d["source"]["id"])["_source"]
            assert src["message"] == h["_source"]["message"]

    # Flagged sessions are mostly the labelled anomalous ones: the model learned normal HDFS behaviour.
    # The labels are about execution paths, and the replay's timings are synthetic: precision is judged on
    # the key model's anomalies; the parameter model may flag only a few normal sessions.
    flagged = session_scores(clients, cfg.output.anomalies_index)
    by_type: dict[str, set[str]] = {}
    for h in hits:
        d = h["_source"]["deeplog"]
        by_type.setdefault(d["anomaly_type"], set()).add(d["session"]["id"])
    key_flagged = {s for t, ids in by_type.items() if t != "parameter" for s in ids}
    tp = sum(1 for s in key_flagged if by_block[s])
    assert tp / len(key_flagged) >= 0.8, (tp, len(key_flagged))
    assert tp >= 0.5 * sum(labels)
    normal_param = {s for s in by_type.get("parameter", ()) if not by_block[s]}
    assert len(normal_param) <= 0.05 * (len(labels) - sum(labels)), len(normal_param)
    assert set(flagged) == key_flagged | by_type.get("parameter", set())

    # The run is recorded, and the checkpoint means a second pass reads nothing and writes nothing.
    clients.es.indices.refresh(index=cfg.output.runs_index)
    runs = clients.es.search(index=cfg.output.runs_index, query={"term": {"deeplog.run.job": "detect"}})
    assert runs["hits"]["total"]["value"] == 1
    again = run_once(cfg, clients)
    assert again.docs_read == 0 and again.anomalies_total == 0
    assert load_state(clients, cfg.output.state_index, "detect").model_version == t.version


def test_reprocessing_is_idempotent(clients, make_config, prefix, sample):
    """A backfill over data already processed rewrites the same anomaly ids instead of duplicating them."""
    train_sessions, test_sessions, _ = sample
    cfg = make_config(model={"epochs": 3})
    index_lines(clients, f"{prefix}-train", render(train_sessions[:200], seed=3), run="train")
    train(cfg, clients, index=f"{prefix}-train")
    index_lines(
        clients, cfg.source.index, render(test_sessions[:80], seed=4, start=EPOCH + timedelta(days=1))
    )
    first = run_once(cfg, clients, close_sessions=True)
    clients.es.indices.refresh(index=cfg.output.anomalies_index)
    ids_first = {
        h["_id"] for h in clients.es.search(index=cfg.output.anomalies_index, size=1000)["hits"]["hits"]
    }
    second = run_once(
        cfg, clients, start="2000-01-01T00:00:00Z", end="2100-01-01T00:00:00Z", close_sessions=True
    )
    clients.es.indices.refresh(index=cfg.output.anomalies_index)
    ids_second = {
        h["_id"] for h in clients.es.search(index=cfg.output.anomalies_index, size=1000)["hits"]["hits"]
    }
    assert first.anomalies_total == second.anomalies_total > 0
    assert ids_first == ids_second
    assert clients.es.count(index=cfg.output.anomalies_index)["count"] == first.anomalies_total


def test_a_run_stopped_after_a_chunk_reports_its_lag(clients, make_config, prefix, sample):
    """lag_seconds: how far the checkpoint is behind the newest readable document (0 once caught up)."""
    train_sessions, test_sessions, _ = sample
    cfg = make_config(model={"epochs": 2}, source={"page_size": 50}, schedule={"chunk_size": 100})
    index_lines(clients, f"{prefix}-train", render(train_sessions[:100], seed=3), run="train")
    train(cfg, clients, index=f"{prefix}-train")
    early = render(test_sessions[:10], seed=4, start=EPOCH + timedelta(days=1))
    index_lines(clients, cfg.source.index, early, run="early")
    time.sleep(1.0)  # the later documents are ingested at least a second after the first
    late = render(test_sessions[10:20], seed=5, start=EPOCH + timedelta(days=1))
    index_lines(clients, cfg.source.index, late, run="late")
    stop = threading.Event()
    stop.set()  # stop after the first committed chunk
    first = run_once(cfg, clients, stop=stop)
    assert first.status == "stopped" and 0 < first.docs_read < len(early)
    assert first.lag_seconds is not None and first.lag_seconds >= 1.0
    rest = run_once(cfg, clients)
    assert first.docs_read + rest.docs_read == len(early) + len(late)
    assert rest.lag_seconds == 0.0
