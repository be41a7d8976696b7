"""Scheduled retraining on the embedded server with real HDFS sessions: it must not learn the attack it
should report, must keep what feedback taught, and publishes only a candidate that passes the checks a
feedback update passes.

Scenario: the model learns 300 normal sessions; the live logs of the lookback window hold the same normal
traffic and a "drifted" normal session (an extra `11 9` round after the `26`s, flagged, marked a false
positive and learned by the feedback job), then an attack: a labelled anomalous session from the sample,
repeated on many blocks. Detection flags the attack; the retraining must leave those sessions out.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from deeplog_lab.replay import index_lines, load_sample, render
from deeplog_siem.artifacts import KEYMODEL, ModelStore
from deeplog_siem.errors import DeeplogError
from deeplog_siem.feedback import FALSE_POSITIVE, apply_feedback, lineage_of, mark
from deeplog_siem.model import load_checkpoint
from deeplog_siem.runner import run_once, train
from deeplog_siem.scheduler import retrain_job
from deeplog_siem.setup_assets import create_indices
from deeplog_siem.timefmt import iso

from .test_feedback import ALL_TIME, ANOMALOUS, DRIFTED, MODEL

ATTACKS = 40  # blocks the attack runs on: enough for a model trained on them to learn it
# The attack is a sequence of log keys: the key model must keep flagging it (the parameter model may too).
KEY_TYPES = ("log_key", "unseen_key", "session_end")


@pytest.fixture(scope="module")
def normal():
    return load_sample().train[:300]


def _anomalies(clients, cfg, version: str | None = None) -> list[dict]:
    clients.es.indices.refresh(index=cfg.output.anomalies_index)
    q = {"term": {"deeplog.model_version": version}} if version else {"match_all": {}}
    return clients.es.search(index=cfg.output.anomalies_index, query=q, size=5000)["hits"]["hits"]


def _session(hit: dict) -> str:
    return hit["_source"]["deeplog"]["session"]["id"]


def _retrain_runs(clients, cfg) -> list[dict]:
    clients.es.indices.refresh(index=cfg.output.runs_index)
    res = clients.es.search(index=cfg.output.runs_index, query={"term": {"deeplog.run.job": "retrain"}})
    return [h["_source"]["deeplog"]["run"] for h in res["hits"]["hits"]]


def _train(clients, cfg, prefix, normal) -> str:
    create_indices(clients, cfg)  # strict mappings: the run documents must fit them
    index_lines(clients, f"{prefix}-train", render(normal, seed=11), run="train")
    return train(cfg, clients, index=f"{prefix}-train").version


def _live(clients, cfg, sessions, *, seed: int, days_ago: float) -> list[str]:
    """Index live logs of `sessions` starting `days_ago`, detect -> the sessions' ids, in order."""
    lines = render(sessions, seed=seed, start=datetime.now(UTC) - timedelta(days=days_ago))
    index_lines(clients, cfg.source.index, lines, run="live")
    assert run_once(cfg, clients, close_sessions=True).status == "ok"
    block = {ln.session_index: ln.session for ln in lines}
    return [block[i] for i in range(len(sessions))]


def test_retraining_leaves_the_attack_out_and_keeps_the_feedback(clients, make_config, prefix, normal):
    cfg = make_config(model=MODEL)
    trained = _train(clients, cfg, prefix, normal)
    # Three days ago: the normal traffic and the drifted session; responders mark the latter.
    drifted = _live(clients, cfg, [*normal, DRIFTED], seed=13, days_ago=3)[-1]
    fps = [h for h in _anomalies(clients, cfg) if _session(h) == drifted]
    assert fps, "the drifted session must be flagged before feedback"
    for h in fps:
        assert mark(clients, cfg, h["_id"], FALSE_POSITIVE) == "marked"
    fed = apply_feedback(cfg, clients)
    assert fed.status == "ok", fed.error
    store = ModelStore(cfg.model.dir)
    assert store.current()[0] == fed.model_version != trained
    # A day ago: the attack, on many blocks; detection flags every one.
    attack = set(_live(clients, cfg, [ANOMALOUS] * ATTACKS, seed=14, days_ago=1))
    keyed = {
        _session(h) for h in _anomalies(clients, cfg) if h["_source"]["deeplog"]["anomaly_type"] in KEY_TYPES
    }
    assert attack <= keyed, "detection must flag every block of the attack"

    retrain_job(cfg, clients)

    new = store.current()[0]
    assert new not in (trained, fed.model_version)
    # The new version, over the same logs: the attack is still reported, the false positive is not.
    assert run_once(cfg, clients, close_sessions=True, **ALL_TIME).status == "ok"
    after = [h for h in _anomalies(clients, cfg, new) if h["_source"]["deeplog"]["anomaly_type"] in KEY_TYPES]
    flagged = {_session(h) for h in after}
    assert attack <= flagged, (
        f"the retrained model learned the attack: {len(attack - flagged)} blocks not flagged"
    )
    assert drifted not in flagged

    # What the run recorded: what it left out and what it carried over from the feedback version.
    [run] = _retrain_runs(clients, cfg)
    assert run["status"] == "ok" and run["model_version"] == new
    r = run["retrain"]
    # Every attack block is left out (with any normal session the model flagged); the drifted one stays in.
    assert r["sessions_left_out"] >= ATTACKS and r["sessions_false_positive"] == 1
    assert run["skipped"]["left_out"] > 0 and r["anomalies_malformed"] == 0
    assert r["parent_version"] == fed.model_version and r["pairs_carried"] >= 1
    _, _, header = load_checkpoint(Path(cfg.model.dir) / new / KEYMODEL)
    lineage = lineage_of(header["meta"])
    assert lineage["parent"] == fed.model_version and lineage["kind"] == "retrain" and lineage["pairs"]


def test_a_candidate_that_fails_the_checks_is_not_published(clients, make_config, prefix, normal):
    cfg = make_config(model=MODEL)
    trained = _train(clients, cfg, prefix, normal)
    _live(clients, cfg, normal, seed=13, days_ago=2)
    # One epoch at a learning rate a thousand times too small: a candidate that flags most normal windows.
    weak = make_config(model={**MODEL, "epochs": 1, "learning_rate": 2e-6}, feedback={"tolerance": 0.0})
    store = ModelStore(cfg.model.dir)

    retrain_job(weak, clients)

    assert store.current()[0] == trained
    [run] = _retrain_runs(clients, cfg)
    assert run["status"] == "rejected" and run["model_version"] == trained
    r = run["retrain"]
    candidate = r["candidate_version"]
    assert candidate != trained and candidate in store.versions()
    assert "held-out false-alarm rate" in r["reason"] and f"model {trained} kept" in r["reason"]
    assert r["heldout_false_alarm_after"] > r["heldout_false_alarm_before"]


def test_flagged_sessions_read_the_anomalies_index_as_untrusted(clients, make_config):
    cfg = make_config()
    create_indices(clients, cfg)
    now = datetime.now(UTC)
    recent, old = iso(now - timedelta(days=1)), iso(now - timedelta(days=30))
    docs = [
        (recent, "s-attack", None),
        (recent, "s-fp", FALSE_POSITIVE),
        (recent, "s-mixed", FALSE_POSITIVE),
        (recent, "s-mixed", None),
        (recent, "s-confirmed", "true_positive"),
        (old, "s-old", None),  # before the lookback window
        (recent, 12345, None),  # a session id that is not text
        (recent, ["s-a", "s-b"], None),
        (recent, "s-odd-verdict", [FALSE_POSITIVE, "x"]),  # not a responder's verdict
        *[(recent, "s-many", None)] * 1500,  # more than a page of one session
    ]
    actions = [
        {
            "_index": cfg.output.anomalies_index,
            "_id": f"a{i}",
            "@timestamp": ts,
            "deeplog": {"session": {"id": sid}, **({"feedback": fb} if fb is not None else {})},
        }
        for i, (ts, sid, fb) in enumerate(docs)
    ]
    from deeplog_siem import sink
    from deeplog_siem.flagged import flagged_sessions  # here: the scenarios above run on any version

    assert not sum(sink.write(clients, actions).rejected.values())
    since = iso(now - timedelta(days=7))

    got = flagged_sessions(clients, cfg, since=since)

    assert got.sessions == {"s-attack", "s-mixed", "s-confirmed", "s-odd-verdict", "s-many"}
    assert got.kept == 1 and got.malformed == 3
    assert got.read <= len(docs) - 1
    with pytest.raises(DeeplogError, match="retraining refused"):
        flagged_sessions(clients, cfg, since=since, max_sessions=2)
