"""Session incidents on the real server with replayed real HDFS sessions: one incident per session, the same
documents however often the anomalies are processed (reprocessing, a backfill over the same range, a job
killed with SIGKILL mid-run and run again), a responder's verdict kept across recomputations, and the risk,
severity, job and entity-bucket grouping read from the anomaly documents."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import timedelta
from typing import Any

import pytest
from elasticsearch import helpers

from deeplog_lab.replay import EPOCH, documents, render
from deeplog_siem import incident_verdicts, incidents
from deeplog_siem.artifacts import ModelStore
from deeplog_siem.config import Config, parse_config
from deeplog_siem.es import Clients
from deeplog_siem.feedback import apply_feedback
from deeplog_siem.kibana import saved_objects
from deeplog_siem.risk import ECS_SEVERITY, severity
from deeplog_siem.runner import run_once
from deeplog_siem.setup_assets import create_indices

from . import test_reliability as reliability
from .test_alerting import mapped
from .test_reliability import CLI, config_data, index_docs, write_config

# The reliability tests' small real model and HDFS sample, shared by these tests.
model_dir = reliability.model_dir
sample = reliability.sample


def incident_docs(clients: Clients, cfg: Config) -> dict[str, dict[str, Any]]:
    index = cfg.output.incidents
    if not clients.es.indices.exists(index=index):
        return {}
    clients.es.indices.refresh(index=index)
    hits = clients.es.search(index=index, size=5000)["hits"]["hits"]
    return {h["_id"]: h["_source"] for h in hits}


def anomaly_sources(clients: Clients, cfg: Config) -> dict[str, dict[str, Any]]:
    clients.es.indices.refresh(index=cfg.output.anomalies_index)
    hits = clients.es.search(index=cfg.output.anomalies_index, size=5000)["hits"]["hits"]
    return {h["_id"]: h["_source"] for h in hits}


def test_one_incident_per_session_idempotent_under_reprocessing(
    clients, es_section, prefix, model_dir, sample
):
    cfg = parse_config(config_data(es_section, prefix, model_dir, schedule={"chunk_size": 300}))
    create_indices(clients, cfg)
    lines = render(sample.test[:120], seed=61, start=EPOCH + timedelta(days=1))
    index_docs(clients, list(documents(lines, cfg.source.index, run="a")))
    first = run_once(cfg, clients, close_sessions=True)
    assert first.status == "ok" and first.anomalies_total > 0

    anomalies = anomaly_sources(clients, cfg)
    got = incident_docs(clients, cfg)
    by_session: dict[str, list[str]] = {}
    for aid, a in anomalies.items():
        by_session.setdefault(a["deeplog"]["session"]["id"], []).append(aid)
    assert sorted(i["deeplog"]["session"]["id"] for i in got.values()) == sorted(by_session)
    for inc in got.values():
        d = inc["deeplog"]["incident"]
        ids = by_session[inc["deeplog"]["session"]["id"]]
        assert sorted(d["anomaly_ids"]) == sorted(ids) and d["anomaly_count"] == len(ids)
        assert sum(d["counts"].values()) == len(ids)
        times = sorted(anomalies[i]["@timestamp"] for i in ids)
        assert (d["first"], d["last"]) == (times[0], times[-1])
        assert (
            d["leading_anomaly_id"] in ids
            and d["summary"] == anomalies[d["leading_anomaly_id"]]["deeplog"]["summary"]
        )
        # The incident is as risky as its riskiest anomaly.
        top = max(anomalies[i]["deeplog"]["risk_score"] for i in ids)
        assert d["risk_score"] == top and d["severity"] == severity(top)
        assert inc["event"]["severity"] == ECS_SEVERITY[severity(top)]
    diverged = [a for a in anomalies.values() if (a["deeplog"].get("workflow") or {}).get("diverged_at")]
    if diverged:
        assert any(i["deeplog"]["incident"]["workflow"]["diverged_at"] for i in got.values())

    # A responder's verdict on one incident, then the whole range processed again twice: from a deleted
    # state (the same chunks read anew) and as a backfill over it.
    marked = next(iter(got))
    clients.es.update(index=cfg.output.incidents, id=marked, doc={"deeplog": {"feedback": "false_positive"}})
    clients.es.delete(index=cfg.output.state_index, id="detect", refresh=True)
    again = run_once(cfg, clients, close_sessions=True)
    assert again.status == "ok" and again.already_written == first.anomalies_total
    backfill = run_once(
        cfg, clients, start="2000-01-01T00:00:00Z", end="2100-01-01T00:00:00Z", close_sessions=True
    )
    assert backfill.status == "ok"
    after = incident_docs(clients, cfg)
    assert after.pop(marked)["deeplog"]["feedback"] == "false_positive"
    got.pop(marked)
    assert after == got


def test_sigkill_mid_run_then_rerun_gives_the_incidents_of_an_uninterrupted_run(
    clients, es_section, prefix, model_dir, sample, tmp_path
):
    sched = {"chunk_size": 100}
    killed = config_data(es_section, prefix, model_dir, schedule=sched, source={"page_size": 100})
    ref = config_data(es_section, f"{prefix}-ref", model_dir, schedule=sched, source={"page_size": 100})
    ref["source"]["index"] = killed["source"]["index"]
    cfg, ref_cfg = parse_config(killed), parse_config(ref)
    create_indices(clients, cfg)
    create_indices(clients, ref_cfg)
    lines = render(sample.test[:150], seed=52, start=EPOCH + timedelta(days=1))
    index_docs(clients, list(documents(lines, cfg.source.index, run="backlog")))
    cfg_file = write_config(tmp_path / "job.yml", killed)
    cmd = [str(CLI), "detect", "--once", "--close-sessions", "--config", str(cfg_file)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        # Killed once the first incidents are written: the run is between chunks or inside one.
        while time.monotonic() < deadline and proc.poll() is None:
            if clients.es.indices.exists(index=cfg.output.incidents):
                if clients.es.count(index=cfg.output.incidents)["count"] > 0:
                    break
            time.sleep(0.02)
        assert proc.poll() is None, (
            "the job finished before it could be killed: " + proc.stderr.read().decode()
        )
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    partial = incident_docs(clients, cfg)

    done = subprocess.run(cmd, env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    reference = run_once(ref_cfg, clients, close_sessions=True)
    assert reference.status == "ok" and reference.anomalies_total > 0
    want = incident_docs(clients, ref_cfg)
    got = incident_docs(clients, cfg)
    assert partial and len(partial) < len(want)
    assert got == want


def _mapped_for_scoring(clients: Clients, cfg: Config) -> None:
    """The anomalies index with the risk, severity and job fields the scoring and job-naming stages write."""
    create_indices(clients, cfg)
    clients.es.indices.put_mapping(
        index=cfg.output.anomalies_index,
        properties={
            "deeplog": {
                "type": "object",
                "properties": {
                    "risk_score": {"type": "float"},
                    "severity": {"type": "keyword"},
                    "job": {"type": "keyword"},
                },
            }
        },
    )


def _anomaly(cfg: Config, n: int, session: str, ts: str, **deeplog: Any) -> dict[str, Any]:
    return {
        "_index": cfg.output.anomalies_index,
        "_id": f"a{n}",
        "@timestamp": ts,
        "deeplog": {
            "anomaly_type": deeplog.pop("anomaly_type", "log_key"),
            "summary": f"anomaly {n}",
            "model_version": "v1",
            "run_id": "r",
            "source": {"index": "logs", "id": f"d{n}"},
            "session": {"id": session, "position": n},
            **deeplog,
        },
    }


def _write(clients: Clients, docs: list[dict[str, Any]]) -> None:
    ok, errors = helpers.bulk(clients.es, docs, refresh=True, raise_on_error=False)
    assert not errors, errors[:2]


def test_risk_severity_job_and_untrusted_values(clients, make_config):
    cfg = make_config()
    _mapped_for_scoring(clients, cfg)
    docs = [
        _anomaly(cfg, 1, "s1", "2026-01-01T00:00:00.000Z", risk_score=40.0, severity="medium"),
        _anomaly(
            cfg,
            2,
            "s1",
            "2026-01-01T00:00:05.000Z",
            risk_score=91.5,
            severity="critical",
            anomaly_type="parameter",
        ),
        _anomaly(cfg, 3, "s1", "2026-01-01T00:00:09.000Z"),  # no risk: 0 / low
        _anomaly(cfg, 4, "s2", "2026-01-01T00:01:00.000Z", risk_score=12.0, severity="low", job="web"),
        _anomaly(cfg, 5, "s2", "2026-01-01T00:02:00.000Z", risk_score=55.0, severity="high", job="db"),
    ]
    _write(clients, docs)
    keys = {incidents.incident_key(d, 0) for d in docs}
    incidents.refresh_incidents(clients, cfg, keys)
    got = {
        (i["deeplog"].get("job"), i["deeplog"]["session"]["id"]): i
        for i in incident_docs(clients, cfg).values()
    }
    assert set(got) == {(None, "s1"), ("web", "s2"), ("db", "s2")}
    s1 = got[(None, "s1")]
    d = s1["deeplog"]["incident"]
    assert (d["risk_score"], d["severity"], d["summary"], d["leading_anomaly_id"]) == (
        91.5,
        "critical",
        "anomaly 2",
        "a2",
    )
    assert d["counts"] == {"log_key": 2, "unseen_key": 0, "session_end": 0, "parameter": 1}
    assert (s1["event"]["risk_score"], s1["event"]["severity"], s1["event"]["kind"]) == (91.5, 99, "alert")
    assert got[("db", "s2")]["deeplog"]["incident"]["severity"] == "high"
    assert got[("web", "s2")]["deeplog"]["incident"]["anomaly_ids"] == ["a4"]

    # Values another tool wrote into an anomaly: out of range, not a number, an unknown band.
    for source in (
        {"deeplog": {"risk_score": 1e9, "severity": "catastrophic"}},
        {"deeplog": {"risk_score": "high"}},
    ):
        assert incidents.severity_of(source) in incidents.SEVERITIES
        assert 0.0 <= incidents.risk_of(source) <= 100.0


def test_entity_streams_get_one_incident_per_entity_and_hour(clients, make_config):
    cfg = make_config(source={"session_regex": None, "session_field": "host.name"})
    assert incidents.bucket_seconds(cfg) == 3600
    _mapped_for_scoring(clients, cfg)
    docs = [
        _anomaly(cfg, 1, "host-a", "2026-01-01T10:05:00.000Z"),
        _anomaly(cfg, 2, "host-a", "2026-01-01T10:55:00.000Z"),
        _anomaly(cfg, 3, "host-a", "2026-01-01T11:01:00.000Z"),
    ]
    _write(clients, docs)
    incidents.refresh_incidents(clients, cfg, {incidents.incident_key(d, 3600) for d in docs})
    got = sorted(
        (i["deeplog"]["incident"]["bucket_start"], i["deeplog"]["incident"]["anomaly_ids"])
        for i in incident_docs(clients, cfg).values()
    )
    assert got == [("2026-01-01T10:00:00.000Z", ["a1", "a2"]), ("2026-01-01T11:00:00.000Z", ["a3"])]


def test_incident_index_names_follow_the_anomalies_index(make_config):
    cfg = make_config()
    assert cfg.output.incidents == cfg.output.anomalies_index.replace("anomalies", "incidents")
    assert make_config(output={"anomalies_index": "soc"}).output.incidents == "incidents-soc"
    with pytest.raises(Exception, match="output.incidents_index: must not start with"):
        make_config(output={"anomalies_index": "a", "incidents_index": "a-incidents"})


# ------------------------------------------------------------------------------------ verdicts on incidents


def _incident_hit(clients: Clients, cfg: Config, doc_id: str) -> dict[str, Any]:
    clients.es.indices.refresh(index=cfg.output.incidents)
    return clients.es.get(index=cfg.output.incidents, id=doc_id)["_source"]["deeplog"]


def test_a_verdict_on_an_incident_reaches_its_anomalies_and_no_others(clients, make_config):
    cfg = make_config()
    _mapped_for_scoring(clients, cfg)
    _write(
        clients,
        [
            _anomaly(cfg, 1, "s1", "2026-01-01T00:00:00.000Z"),
            _anomaly(cfg, 2, "s1", "2026-01-01T00:00:05.000Z"),
            _anomaly(cfg, 3, "s1", "2026-01-01T00:00:07.000Z", feedback="true_positive"),
            _anomaly(cfg, 4, "s2", "2026-01-01T00:01:00.000Z"),
            _anomaly(cfg, 5, "s1", "2026-01-01T00:02:00.000Z", job="db"),
            _anomaly(cfg, 6, "s3", "2026-01-01T00:03:00.000Z"),
        ],
    )
    s1, s2 = incidents.IncidentKey(None, "s1"), incidents.IncidentKey(None, "s2")
    incidents.refresh_incidents(clients, cfg, {s1, s2, incidents.IncidentKey("db", "s1")})
    inc = cfg.output.incidents
    verdict = {"feedback": "false_positive", "feedback_by": "alice"}
    clients.es.update(index=inc, id=incidents.incident_id(s1), doc={"deeplog": verdict})
    # Forged: a genuine incident whose links name anomalies of another session and another job (the links
    # are never read); an incident of job "db" filed under another id; one whose bucket is not a bucket of
    # this configuration; a verdict that is neither of the two.
    clients.es.update(
        index=inc,
        id=incidents.incident_id(s2),
        doc={"deeplog": {**verdict, "incident": {"anomaly_ids": ["a5", "a6"]}}},
    )
    forged = {"session": {"id": "s1"}, "job": "db", **verdict}
    clients.es.index(index=inc, id="forged", document={"deeplog": forged})
    bucketed = {**forged, "incident": {"bucket_start": "2026-01-01T00:00:00.000Z"}}
    clients.es.index(
        index=inc, id=incidents.incident_id(incidents.IncidentKey("db", "s1")), document={"deeplog": bucketed}
    )
    clients.es.index(
        index=inc, id="bogus", document={"deeplog": {"session": {"id": "s3"}, "feedback": "yes"}}
    )

    # Each job passes on its own incidents' verdicts: the default job leaves job "db"'s pending.
    counts = incident_verdicts.apply_incident_verdicts(clients, cfg)
    assert counts == {"applied": 2, "invalid": 1}
    db_cfg = make_config(job={"name": "db"})
    assert incident_verdicts.apply_incident_verdicts(clients, db_cfg) == {"invalid": 2}
    anomalies = anomaly_sources(clients, cfg)
    fb = {
        aid: (a["deeplog"].get("feedback"), a["deeplog"].get("feedback_by")) for aid, a in anomalies.items()
    }
    assert fb == {
        "a1": ("false_positive", "alice"),
        "a2": ("false_positive", "alice"),
        "a3": ("true_positive", None),  # the responder's own verdict on the anomaly stays
        "a4": ("false_positive", "alice"),
        "a5": (None, None),
        "a6": (None, None),
    }
    got = _incident_hit(clients, cfg, incidents.incident_id(s1))
    assert (got["feedback_status"], got["feedback_anomalies"]) == ("applied", 2)
    assert "do not match its id" in _incident_hit(clients, cfg, "forged")["feedback_error"]
    db = _incident_hit(clients, cfg, incidents.incident_id(incidents.IncidentKey("db", "s1")))
    assert "bucket_start" in db["feedback_error"]
    assert "must be one of" in _incident_hit(clients, cfg, "bogus")["feedback_error"]
    # Processed once: a second pass finds nothing pending.
    assert incident_verdicts.apply_incident_verdicts(clients, cfg) == {}
    assert incident_verdicts.apply_incident_verdicts(clients, db_cfg) == {}

    # The marked anomalies are ordinary pending verdicts for the feedback job, which checks each as any other:
    # these are not documents the detection job wrote (no key, window or seal), so they teach nothing.
    from .test_feedback_untrusted import _published

    version = _published(clients, cfg)
    summary = apply_feedback(cfg, clients)
    marked = anomaly_sources(clients, cfg)
    for aid in ("a1", "a2", "a4"):
        d = marked[aid]["deeplog"]
        assert d["feedback_status"] in ("invalid", "unsupported") and d["feedback_error"], d
    assert ModelStore(cfg.model.dir).current()[0] == version
    assert summary.feedback["applied"] == 0 and summary.feedback["found"] >= 3


# ------------------------------------------------------------------------------------------- dashboard


def test_the_dashboard_opens_on_incidents_by_risk_with_a_job_control():
    objects = {o["id"]: o for o in saved_objects()}
    (dash,) = [o for o in objects.values() if o["type"] == "dashboard"]
    refs = {r["name"]: r["id"] for r in dash["references"]}
    panels = sorted(
        json.loads(dash["attributes"]["panelsJSON"]), key=lambda p: (p["gridData"]["y"], p["gridData"]["x"])
    )
    first, second = (objects[refs[p["panelRefName"]]] for p in panels[:2])
    types = mapped("incidents")

    vis = json.loads(first["attributes"]["visState"])
    assert vis["type"] == "input_control_vis"
    (control,) = vis["params"]["controls"]
    assert (control["fieldName"], control["type"]) == ("deeplog.job", "list")
    (ref,) = [r for r in first["references"] if r["name"] == control["indexPatternRefName"]]
    assert ref["id"] == "deeplog-incidents" and types["deeplog.job"] == "keyword"

    assert second["type"] == "search" and second["references"][0]["id"] == "deeplog-incidents"
    assert second["attributes"]["sort"][0] == ["deeplog.incident.risk_score", "desc"]
    for column in second["attributes"]["columns"]:
        assert column in types, column
    view = objects["deeplog-incidents"]["attributes"]
    assert view["title"] == "deeplog-incidents*" and types[view["timeFieldName"]] == "date"


def test_an_anomalies_index_without_the_shipped_mapping_skips_incidents_not_detection(
    clients, es_section, prefix, model_dir, sample, caplog
):
    # No setup: the first bulk write creates the anomalies index with dynamic (text) fields.
    cfg = parse_config(config_data(es_section, prefix, model_dir))
    lines = render(sample.test[:40], seed=63, start=EPOCH + timedelta(days=1))
    index_docs(clients, list(documents(lines, cfg.source.index, run="a")))
    with caplog.at_level("WARNING", logger="deeplog_siem.runner"):
        summary = run_once(cfg, clients, close_sessions=True)
    assert summary.status == "ok" and summary.anomalies_total > 0
    assert not clients.es.indices.exists(index=cfg.output.incidents)
    assert any(
        "incidents are not written" in r.getMessage() and "deeplog.session.id" in r.getMessage()
        for r in caplog.records
    )
