"""The job's writers on the real (embedded) server and with several writers at once: verdicts survive any
reprocessing, one detector per state, counts add up, and a killed training leaves no half-written version."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from deeplog_lab.replay import EPOCH, index_lines, load_sample, render
from deeplog_siem import artifacts, sink
from deeplog_siem.anomaly import DocContext, EventRef, KeyVerdict, SessionEvent, key_anomaly
from deeplog_siem.artifacts import KEYMODEL, ModelStore
from deeplog_siem.config import parse_config
from deeplog_siem.errors import StateConflict
from deeplog_siem.feedback import mark
from deeplog_siem.runner import run_once, train
from deeplog_siem.samples import NORMAL_SAMPLE
from deeplog_siem.setup_assets import create_indices
from deeplog_siem.state import load_state
from deeplog_siem.vocab import Vocabulary

from .conftest import config_data

MODEL = {"epochs": 3, "threads": 1, "device": "cpu"}


@pytest.fixture(scope="module")
def trained(clients, es_section, tmp_path_factory):
    """One small model of real HDFS sessions for the module -> (its model dir, the test sessions)."""
    s = load_sample()
    model_dir = tmp_path_factory.mktemp("writers") / "models"
    cfg = parse_config(config_data(es_section, "twritersmodel", model_dir, model=MODEL))
    index_lines(clients, "twritersmodel-train", render(s.train[:200], seed=3), run="train")
    try:
        train(cfg, clients, index="twritersmodel-train")
    finally:
        clients.es.options(ignore_status=404).indices.delete(index="twritersmodel*", expand_wildcards="all")
    return model_dir, s.test[:60]


def _hits(clients, index: str) -> list[dict]:
    clients.es.indices.refresh(index=index)
    return clients.es.search(index=index, size=1000, query={"match_all": {}})["hits"]["hits"]


def _runs(clients, cfg) -> list[dict]:
    return [h["_source"]["deeplog"]["run"] for h in _hits(clients, cfg.output.runs_index)]


def test_verdicts_survive_concurrent_detectors_and_a_backfill(clients, es_section, prefix, trained):
    model_dir, sessions = trained
    cfg = parse_config(
        config_data(
            es_section,
            prefix,
            model_dir,
            model=MODEL,
            source={"page_size": 50},
            schedule={"chunk_size": 100},
        )
    )
    create_indices(clients, cfg)
    lines = render(sessions, seed=4, start=EPOCH + timedelta(days=1))
    index_lines(clients, cfg.source.index, lines[: len(lines) // 2], run="first")

    first = run_once(cfg, clients, close_sessions=True)
    assert first.status == "ok" and first.docs_read == len(lines) // 2
    anomalies = _hits(clients, cfg.output.anomalies_index)
    assert anomalies, "the test data must raise anomalies"
    fp = anomalies[0]
    assert mark(clients, cfg, fp["_id"], "false_positive", by="analyst") == "marked"

    # Two detectors on the same state at once: the first holds it while it commits chunk after chunk; the
    # second starts in the middle of that run.
    index_lines(clients, cfg.source.index, lines[len(lines) // 2 :], run="second")
    in_run, second_done = threading.Event(), threading.Event()
    checkpoints: list = []
    out: dict = {}

    def progress(_: str) -> None:
        checkpoints.append(load_state(clients, cfg.output.state_index, "detect").checkpoint.sort)
        in_run.set()
        second_done.wait(timeout=120)

    def detector_a() -> None:
        out["a"] = run_once(cfg, clients, close_sessions=True, progress=progress)

    a = threading.Thread(target=detector_a)
    a.start()
    try:
        assert in_run.wait(timeout=300), "the first detector never committed a chunk"
        with pytest.raises(StateConflict, match="held by") as err:
            run_once(cfg, clients, close_sessions=True)
    finally:
        second_done.set()
        a.join()
    assert out["a"].status == "ok"
    checkpoints.append(load_state(clients, cfg.output.state_index, "detect").checkpoint.sort)
    assert checkpoints == sorted(checkpoints)  # never backwards
    runs = _runs(clients, cfg)
    conflicts = [r for r in runs if r["status"] == "conflict"]
    assert len(conflicts) == 1 and conflicts[0]["docs_read"] == 0
    assert "another process runs this job" in str(err.value)
    # Every source document counted once over the committed runs.
    assert sum(r["docs_read"] for r in runs if r["status"] == "ok") == len(lines)

    # A backfill over everything already processed: the marked anomaly keeps its verdict.
    before = len(_hits(clients, cfg.output.anomalies_index))
    back = run_once(
        cfg, clients, start="2000-01-01T00:00:00Z", end="2100-01-01T00:00:00Z", close_sessions=True
    )
    assert back.status == "ok" and back.docs_read == len(lines)
    assert back.already_written > 0 and back.rejected == {}
    doc = clients.es.get(index=fp["_index"], id=fp["_id"])["_source"]["deeplog"]
    assert (doc["feedback"], doc["feedback_by"]) == ("false_positive", "analyst")
    # Deleting the live state (the advice for an unreadable one) reprocesses everything: verdict kept again.
    clients.es.delete(index=cfg.output.state_index, id="detect", refresh=True)
    again = run_once(cfg, clients, close_sessions=True)
    assert again.status == "ok" and again.docs_read == len(lines) and again.already_written > 0
    assert (
        clients.es.get(index=fp["_index"], id=fp["_id"])["_source"]["deeplog"]["feedback"] == "false_positive"
    )
    assert len(_hits(clients, cfg.output.anomalies_index)) == before


def test_a_detection_with_refused_documents_ends_degraded(clients, es_section, prefix, trained):
    model_dir, sessions = trained
    cfg = parse_config(config_data(es_section, prefix, model_dir, model=MODEL))
    # An index whose mapping refuses every anomaly's session id (a mapping error, for good).
    clients.es.indices.create(
        index=cfg.output.anomalies_index,
        mappings={
            "properties": {"deeplog": {"properties": {"session": {"properties": {"id": {"type": "long"}}}}}}
        },
    )
    index_lines(clients, cfg.source.index, render(sessions[:30], seed=4, start=EPOCH + timedelta(days=1)))
    summary = run_once(cfg, clients, close_sessions=True)
    assert summary.anomalies_total > 0
    assert summary.status == "degraded"
    assert dict(summary.rejected) == {"mapper_parsing_exception": summary.anomalies_total}
    run = next(r for r in _runs(clients, cfg) if r["id"] == summary.run_id)
    assert (run["status"], run["bulk_failures"]) == ("degraded", summary.anomalies_total)


def test_an_anomaly_with_a_huge_host_name_is_written_and_found(clients, make_config):
    cfg = make_config()
    create_indices(clients, cfg)
    vocab = Vocabulary()
    key = vocab.add("Receiving block <*>")
    ctx = DocContext(
        vocab=vocab,
        model_version="v1",
        run_id="r1",
        index=cfg.output.anomalies_index,
        message_field="message",
        top_g=2,
        min_probability=0.0,
    )
    host = "h" * 40_000
    event = EventRef("logs", "doc-1", "2008-11-09T20:36:15.000Z", "081109 203615 ...", host)
    doc = key_anomaly(
        ctx, SessionEvent(event, "blk_" + "9" * 40_000, 2, [0, key]), KeyVerdict("log_key", key, 0.01, 5, [])
    )
    result = sink.write(clients, [doc], op="create", attempts=1)
    assert (result.written, result.failed) == (1, 0)
    got = clients.es.get(index=cfg.output.anomalies_index, id=doc["_id"])["_source"]
    assert got["host"]["name"] == host


_KILLED_TRAINING = """
import os, signal, sys
from deeplog_siem.artifacts import ModelStore
version, path = ModelStore(sys.argv[1]).create()
(path / "templater").mkdir()
(path / "keymodel.pt").write_bytes(b"half a checkpoint")
print(version, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_training_killed_midway_leaves_no_version(tmp_path):
    store = ModelStore(tmp_path / "models")
    done, path = store.create()
    (path / KEYMODEL).write_bytes(b"a finished checkpoint")
    store.publish(done)
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_TRAINING, str(store.dir)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(Path(artifacts.__file__).parents[1])},  # the code under test
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL
    killed = proc.stdout.strip()
    assert killed and store.versions() == [done] and store.current()[0] == done
    with pytest.raises(Exception, match="no model version"):
        store.path(killed)
    # Staging in progress in this process is kept; what the killed one left is removed by the next create.
    mine, _ = store.create()
    leftovers = sorted(p.name for p in store.dir.iterdir() if p.name.startswith("."))
    assert leftovers == [".lock", f".staging-{mine}"] or leftovers == [f".staging-{mine}"]
    assert store.clean_staging() == []


def test_training_publishes_only_under_the_model_stores_lock(clients, es_section, prefix, tmp_path):
    # The feedback job holds the store's lock from reading CURRENT to publishing its child version: a training
    # that published without it could be overwritten by that child, built on the version it replaced.
    s = load_sample()
    model_dir = tmp_path / "models"
    cfg = parse_config(
        config_data(es_section, prefix, model_dir, model={**MODEL, "epochs": 1}, params={"enabled": False})
    )
    index_lines(clients, cfg.source.index, render(s.train[:100], seed=5), run="train")
    store = ModelStore(model_dir)
    done: list[str] = []
    trainer = threading.Thread(target=lambda: done.append(train(cfg, clients).version), daemon=True)
    with store.lock():
        trainer.start()
        # Without a parameter model the normal-window sample is the version's last file: then only the
        # publishing is left.
        deadline = time.monotonic() + 300  # bounds a hang only
        while not list(model_dir.glob(f"{artifacts.STAGING}*/{NORMAL_SAMPLE}")) and not done:
            assert time.monotonic() < deadline and trainer.is_alive(), "training never finished its files"
            time.sleep(0.1)
        trainer.join(timeout=5)
        assert not done and trainer.is_alive(), "training published while another writer held the lock"
        assert not (model_dir / "CURRENT").exists()
    trainer.join(timeout=300)
    assert done and store.current()[0] == done[0]
