"""The job end to end through a strict Elasticsearch and a strict OpenSearch persona: setup, train, detect,
the daemon through a fault, feedback, and retention through rollover aliases."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from deeplog_lab.replay import EPOCH, index_lines, load_sample, render
from deeplog_siem.cli import main
from deeplog_siem.config import Config, parse_config
from deeplog_siem.es import Clients
from deeplog_siem.feedback import apply_feedback
from deeplog_siem.runner import run_once, train
from deeplog_siem.scheduler import run_daemon
from deeplog_siem.setup_assets import run_setup

from .conftest import config_data

MODEL = {"epochs": 3, "patience": 1, "threads": 1, "device": "cpu"}


@pytest.fixture(scope="module")
def sample():
    return load_sample()


@pytest.fixture(scope="module")
def trained(persona_clients: Clients, persona_section: dict, sample, tmp_path_factory) -> Iterator[Path]:
    """One small real model per persona, trained through it: 200 normal HDFS sessions, a few epochs."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    d = tmp_path_factory.mktemp("model")
    cfg = parse_config(config_data(persona_section, prefix, d, model=MODEL))
    index_lines(persona_clients, f"{prefix}-train", render(sample.train[:200], seed=21), run="train")
    try:
        t = train(cfg, persona_clients, index=f"{prefix}-train")
        assert t.sessions == 200
        yield d
    finally:
        persona_clients.es.options(ignore_status=404).indices.delete(
            index=f"{prefix}*", expand_wildcards="all"
        )


def _config(persona_section: dict, prefix: str, trained: Path, tmp_path: Path, **sections: dict) -> Config:
    models = tmp_path / "models"
    shutil.copytree(trained, models)
    return parse_config(config_data(persona_section, prefix, models, model=MODEL, **sections))


def _test_lines(sample, n: int = 60, day: int = 1):
    return render(sample.test[:n], seed=12 + day, start=EPOCH + timedelta(days=day))


def _hits(clients: Clients, index: str, query: dict | None = None) -> list[dict]:
    clients.es.indices.refresh(index=index)
    return clients.es.search(index=index, query=query or {"match_all": {}}, size=1000)["hits"]["hits"]


def test_setup_then_detect(persona, persona_clients, persona_section, prefix, trained, sample, tmp_path):
    cfg = _config(persona_section, prefix, trained, tmp_path)
    first = run_setup(persona_clients, cfg)
    assert not first.failed, first.failed
    assert not run_setup(persona_clients, cfg).changed  # idempotent through the persona too
    lines = _test_lines(sample)
    index_lines(persona_clients, cfg.source.index, lines, run="test")
    with persona.recording() as calls:
        summary = run_once(cfg, persona_clients, close_sessions=True)
    assert summary.status == "ok", summary.error
    assert summary.docs_read == len(lines) and sum(summary.rejected.values()) == 0
    assert summary.anomalies_total > 0
    assert len(_hits(persona_clients, cfg.output.anomalies_index)) == summary.anomalies_total
    # The only refusal is the first read of the job's state document, which does not exist yet.
    refused = [c for c in calls if c.status >= 400]
    assert all(c.status == 404 and c.path.endswith("/_doc/detect") for c in refused), refused


def test_the_daemon_records_a_failed_run_and_catches_up(
    persona, persona_clients, persona_section, prefix, trained, sample, tmp_path
):
    schedule = {"detect_interval_seconds": 1, "misfire_grace_seconds": 1}
    section = {**persona_section, "max_retries": 0}
    models = tmp_path / "models"
    shutil.copytree(trained, models)
    cfg = parse_config(config_data(section, prefix, models, model=MODEL, schedule=schedule))
    lines = _test_lines(sample, 40)
    index_lines(persona_clients, cfg.source.index, lines, run="test")

    def runs(status: str) -> list[dict]:
        if not persona_clients.es.indices.exists(index=cfg.output.runs_index):
            return []
        q = {
            "bool": {
                "filter": [{"term": {"deeplog.run.job": "detect"}}, {"term": {"deeplog.run.status": status}}]
            }
        }
        return [h["_source"] for h in _hits(persona_clients, cfg.output.runs_index, q)]

    def wait_for(what: str, cond, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.5)

    stop = threading.Event()
    daemon = threading.Thread(target=run_daemon, args=(cfg, persona_clients, stop), daemon=True)
    try:
        # The point in time cannot be opened: every run fails until the fault is gone.
        with persona.refusing(f"/{cfg.source.index}/_"):
            daemon.start()
            wait_for("a failed run", lambda: runs("failed"), 60)
        assert daemon.is_alive()
        wait_for(
            "the catch-up",
            lambda: sum(r["deeplog"]["run"]["docs_read"] for r in runs("ok")) >= len(lines),
            90,
        )
    finally:
        stop.set()
        daemon.join(timeout=60)
    assert not daemon.is_alive()
    failed = runs("failed")
    assert all(r["error"]["message"] for r in failed)
    assert sum(r["deeplog"]["run"]["docs_read"] for r in runs("ok")) == len(lines)  # nothing read twice


def test_a_false_positive_is_applied(persona_clients, persona_section, prefix, trained, sample, tmp_path):
    cfg = _config(persona_section, prefix, trained, tmp_path)
    index_lines(persona_clients, cfg.source.index, _test_lines(sample), run="test")
    assert run_once(cfg, persona_clients, close_sessions=True).status == "ok"
    hits = _hits(persona_clients, cfg.output.anomalies_index)
    assert hits, "the test sessions hold labelled anomalies"
    cfg_file = tmp_path / "deeplog.yml"
    cfg_file.write_text(
        yaml.safe_dump(config_data(persona_section, prefix, Path(cfg.model.dir), model=MODEL))
    )
    assert main(["feedback", "mark", hits[0]["_id"], "--false-positive", "-c", str(cfg_file)]) == 0
    summary = apply_feedback(cfg, persona_clients)
    assert summary.status == "ok", summary.error
    assert summary.feedback["found"] == 1
    doc = persona_clients.es.get(index=hits[0]["_index"], id=hits[0]["_id"])["_source"]["deeplog"]
    assert doc["feedback"] == "false_positive" and doc["feedback_status"]


def test_retention_writes_through_rollover_aliases(
    persona, persona_clients, persona_section, prefix, trained, sample, tmp_path
):
    cfg = _config(
        persona_section, prefix, trained, tmp_path, retention={"anomalies_days": 30, "runs_days": 7}
    )
    report = run_setup(persona_clients, cfg)
    assert not report.failed, report.failed
    policies = [s for s in report.steps if s.component == "lifecycle policy"]
    assert [s.action for s in policies] == ["created", "created"], policies
    for name in (cfg.output.anomalies_index, cfg.output.runs_index):
        aliases = persona_clients.es.indices.get_alias(name=name)
        assert list(aliases) == [f"{name}-000001"]
    assert not run_setup(persona_clients, cfg).changed
    index_lines(persona_clients, cfg.source.index, _test_lines(sample), run="test")
    summary = run_once(cfg, persona_clients, close_sessions=True)
    assert summary.status == "ok", summary.error
    assert summary.anomalies_total > 0
    hits = _hits(persona_clients, cfg.output.anomalies_index)
    assert len(hits) == summary.anomalies_total
    assert {h["_index"] for h in hits} == {f"{cfg.output.anomalies_index}-000001"}
