"""Backfills that alert nobody (`detect --preview`) on the embedded server with replayed real HDFS sessions: the
model's anomalies over a past range land in the preview index, and the live job's checkpoint, tails,
anomalies, incidents and sample of recent traffic stay as they were."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import yaml

from deeplog_lab.replay import EPOCH, documents, render
from deeplog_siem.cli import main
from deeplog_siem.config import parse_config
from deeplog_siem.recent import RECENT_FILE
from deeplog_siem.runner import PREVIEW_JOB, run_once
from deeplog_siem.setup_assets import create_indices

from . import test_reliability as reliability
from .test_reliability import config_data, index_docs

model_dir = reliability.model_dir
sample = reliability.sample


def _count(clients, index: str) -> int:
    if not clients.es.indices.exists(index=index):
        return 0
    clients.es.indices.refresh(index=index)
    return clients.es.count(index=index)["count"]


def test_a_preview_backfill_touches_nothing_live(clients, es_section, prefix, model_dir, sample, tmp_path):
    data = config_data(es_section, prefix, model_dir)
    cfg = parse_config(data)
    create_indices(clients, cfg)
    live = render(sample.test[:60], seed=71, start=EPOCH + timedelta(days=5))
    index_docs(clients, list(documents(live, cfg.source.index, run="live")))
    first = run_once(cfg, clients, close_sessions=True)
    assert first.status == "ok" and first.anomalies_total > 0
    state = clients.es.get(index=cfg.output.state_index, id="detect")["_source"]
    anomalies, incidents = _count(clients, cfg.output.anomalies_index), _count(clients, cfg.output.incidents)
    recent = Path(model_dir, RECENT_FILE)
    recent_before = recent.read_bytes() if recent.exists() else None

    # History the model has not seen, before the live range: previewed from the command line.
    history = render(sample.test[60:120], seed=72, start=EPOCH + timedelta(days=1))
    index_docs(clients, list(documents(history, cfg.source.index, run="history")))
    cfg_file = tmp_path / "job.yml"
    cfg_file.write_text(yaml.safe_dump(data), encoding="utf-8")
    span = ["--start", "2008-11-10T00:00:00Z", "--end", "2008-11-13T00:00:00Z"]
    rc = main(["detect", "-c", str(cfg_file), *span, "--preview", "--close-sessions", "--json"])
    assert rc == 0

    previewed = _count(clients, cfg.output.preview)
    assert previewed > 0
    assert _count(clients, cfg.output.anomalies_index) == anomalies
    assert _count(clients, cfg.output.incidents) == incidents
    assert clients.es.get(index=cfg.output.state_index, id="detect")["_source"] == state
    assert (recent.read_bytes() if recent.exists() else None) == recent_before
    # The preview is recorded as what it is, so neither the watchdog nor a dashboard takes it for detection.
    clients.es.indices.refresh(index=cfg.output.runs_index)
    jobs = [
        h["_source"]["deeplog"]["run"]["job"]
        for h in clients.es.search(index=cfg.output.runs_index, size=100)["hits"]["hits"]
    ]
    assert sorted(jobs) == sorted(["detect", PREVIEW_JOB])
    # Every previewed anomaly belongs to the history range (the live range is outside the span).
    clients.es.indices.refresh(index=cfg.output.preview)
    times = [
        h["_source"]["@timestamp"]
        for h in clients.es.search(index=cfg.output.preview, size=5000)["hits"]["hits"]
    ]
    assert times and max(times) < "2008-11-13"

    # Run again: the same preview documents, nothing more.
    assert main(["detect", "-c", str(cfg_file), *span, "--preview", "--close-sessions"]) == 0
    assert _count(clients, cfg.output.preview) == previewed


def test_preview_needs_a_range(es_section, prefix, tmp_path, capsys):
    cfg_file = tmp_path / "job.yml"
    cfg_file.write_text(yaml.safe_dump(config_data(es_section, prefix, tmp_path / "m")), encoding="utf-8")
    assert main(["detect", "-c", str(cfg_file), "--once", "--preview"]) == 2
    assert "--preview is a backfill" in capsys.readouterr().err
