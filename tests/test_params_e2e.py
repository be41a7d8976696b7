"""Parameter model in the job, on the real server: generated OpenStack-like tasks, one step slowed ten times ->
a `parameter` anomaly document for that step's line, naming the key, the template and the time gap."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from deeplog_lab.workload import generate_workload
from deeplog_siem.artifacts import PARAMMODEL, ModelStore
from deeplog_siem.formats import OPENSTACK_SESSION_REGEX
from deeplog_siem.parammodel import ParameterModel
from deeplog_siem.runner import run_once, train
from deeplog_siem.setup_assets import create_indices
from deeplog_siem.state import load_state


def _index(clients, index: str, lines: list[str], run: str) -> None:
    ops = []
    for seq, line in enumerate(lines):
        date, time_ = line.split(" ")[1:3]
        ts = datetime.fromisoformat(f"{date}T{time_}").replace(tzinfo=UTC)
        ops.append({"index": {"_index": index, "_id": f"{run}-{seq}"}})
        ops.append(
            {
                "@timestamp": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "message": line,
                "event": {"sequence": seq},
            }
        )
    resp = clients.es.bulk(operations=ops, refresh=True)
    assert not resp["errors"]


def _trained(clients, make_config, prefix):
    """Output indices with their strict mappings, 600 generated normal tasks indexed, a model trained on them."""
    cfg = make_config(
        # Time order (the lines carry their own times), ties by line number: gaps are computed in order.
        source={
            "session_regex": OPENSTACK_SESSION_REGEX,
            "checkpoint_field": "@timestamp",
            "tiebreaker_field": "event.sequence",
            "overlap_seconds": 0,
        },
        templater={"format": "openstack", "similarity_threshold": 0.9},
        model={"epochs": 8, "threads": 1},
        params={"epochs": 3, "min_observations": 30},
    )
    create_indices(clients, cfg)
    _index(clients, f"{prefix}-train", generate_workload(600, seed=3).lines, "train")
    return cfg, train(cfg, clients, index=f"{prefix}-train")


def test_slowed_step_becomes_a_parameter_anomaly(clients, make_config, prefix):
    cfg, t = _trained(clients, make_config, prefix)
    assert t.report["params"]["modelled"]
    _, path = ModelStore(cfg.model.dir).current()
    assert ParameterModel.load(path / PARAMMODEL).models  # saved with the model version

    test = generate_workload(150, seed=4, anomaly_rate=0.04, slowdowns=(10.0,))
    slowed = [lab for lab in test.labels if lab["task_type"] in ("create", "delete")]
    assert slowed  # the seed injects some: a fixed input, not a lucky draw
    _index(clients, cfg.source.index, test.lines, "test")
    summary = run_once(cfg, clients, close_sessions=True)
    assert summary.status == "ok" and sum(summary.rejected.values()) == 0  # strict mapping accepts them
    assert summary.anomalies["parameter"] >= len(slowed)

    clients.es.indices.refresh(index=cfg.output.anomalies_index)
    hits = clients.es.search(
        index=cfg.output.anomalies_index, query={"term": {"deeplog.anomaly_type": "parameter"}}, size=500
    )["hits"]["hits"]
    by_source = {h["_source"]["deeplog"]["source"]["id"]: h["_source"] for h in hits}
    for lab in slowed:
        doc = by_source.get(f"test-{lab['lines'][0]}")  # the slowed step's first line
        assert doc is not None, lab
        d = doc["deeplog"]
        assert d["key"]["template"] and d["session"]["id"] == lab["session"]
        assert "time gap" in d["parameter"]["dimension"]
        p = d["parameter"]
        assert p["observed"][0] > p["high"][0] > p["predicted"][0] > p["low"][0]
        assert p["error"] > p["threshold"] > 0
        assert "time gap" in p["description"] and "expected" in d["summary"]
        # The workflow diagnosis says which step was slow against its usual gap (or why no workflow applies).
        wf = d["workflow"]
        assert wf["summary"]
        if "reason" not in wf:
            step = wf["slow_step"]
            assert step["gap_s"] == pytest.approx(p["observed"][0], rel=1e-3) and step["slow"] is True
            assert "took" in wf["summary"] and "slow" in wf["summary"]
    # The series' last vectors are carried to the next run with the session tails.
    state = load_state(clients, cfg.output.state_index, "detect")
    assert state.sessions["params"] and all(
        len(v) <= cfg.params.window for _, _, v in state.sessions["params"]
    )


def test_parameter_false_positive_widens_only_its_series(clients, make_config, prefix):
    from deeplog_siem.feedback import FALSE_POSITIVE, apply_feedback, describe_versions, mark
    from deeplog_siem.paramfeedback import load as load_scales

    cfg, t = _trained(clients, make_config, prefix)
    version = t.version
    _index(
        clients,
        cfg.source.index,
        generate_workload(150, seed=4, anomaly_rate=0.04, slowdowns=(10.0,)).lines,
        "t",
    )
    assert run_once(cfg, clients, close_sessions=True).status == "ok"

    def parameter_docs(model_version):
        clients.es.indices.refresh(index=cfg.output.anomalies_index)
        q = {
            "bool": {
                "filter": [
                    {"term": {"deeplog.anomaly_type": "parameter"}},
                    {"term": {"deeplog.model_version": model_version}},
                ]
            }
        }
        return clients.es.search(index=cfg.output.anomalies_index, query=q, size=500)["hits"]["hits"]

    def series(h):
        d = h["_source"]["deeplog"]
        ids = d["window"]["key_ids"]
        return (ids[-1] if ids else 0, d["key"]["id"])

    before = parameter_docs(version)
    fp = before[0]
    others = [h for h in before if series(h) != series(fp)]
    assert others  # a fixed seed: slowed steps of several series
    assert mark(clients, cfg, fp["_id"], FALSE_POSITIVE) != "unchanged"
    s = apply_feedback(cfg, clients)
    assert s.status == "ok" and s.feedback["applied"] == 1, (s.error, dict(s.feedback))
    new, path = ModelStore(cfg.model.dir).current()
    assert new != version and (path / PARAMMODEL).is_file()  # the rest of the version is carried over
    p = fp["_source"]["deeplog"]["parameter"]
    assert load_scales(path)[series(fp)] >= p["error"] / p["threshold"]
    row = next(r for r in describe_versions(ModelStore(cfg.model.dir)) if r["version"] == new)
    assert row["parent"] == version and row["feedback_kind"] == "parameter"
    clients.es.indices.refresh(index=cfg.output.anomalies_index)
    marked = clients.es.get(index=fp["_index"], id=fp["_id"])["_source"]["deeplog"]
    assert marked["feedback_status"] == "applied" and marked["feedback_model_version"] == new

    # The same window again with the new version: that value is normal now; other series still alert.
    assert (
        run_once(
            cfg, clients, close_sessions=True, start="2000-01-01T00:00:00Z", end="2100-01-01T00:00:00Z"
        ).status
        == "ok"
    )
    after = {h["_source"]["deeplog"]["source"]["id"] for h in parameter_docs(new)}
    assert fp["_source"]["deeplog"]["source"]["id"] not in after
    assert any(h["_source"]["deeplog"]["source"]["id"] in after for h in others)


@pytest.mark.parametrize(
    "body",
    ['{"format_version": 2, "series": {}}', '{"format_version": 1, "series": {"[3, 4]": 0.5}}', "not json"],
)
def test_malformed_parameter_feedback_is_an_artifact_error(tmp_path, body):
    from deeplog_siem.artifacts import PARAM_FEEDBACK
    from deeplog_siem.errors import ArtifactError
    from deeplog_siem.paramfeedback import load as load_scales

    (tmp_path / PARAM_FEEDBACK).write_text(body)
    with pytest.raises(ArtifactError, match="param_feedback.json"):
        load_scales(tmp_path)


def test_training_fits_the_vectors_detection_computes(clients, make_config, prefix):
    """Training and detection read the same documents the same way: the same events (a document whose time
    does not parse is skipped by both, as `bad_timestamp`), the same key sequences, the same parameter
    vectors per (previous key, key) series."""
    from deeplog_siem.runner import Span, read_training
    from deeplog_siem.runs import RunSummary
    from deeplog_siem.sessions import SessionTail
    from deeplog_siem.source import Source
    from deeplog_siem.templater import Templater
    from deeplog_siem.vocab import PAD

    cfg = make_config(
        # Line order (a document whose time does not parse has no place in a time order).
        source={
            "session_regex": OPENSTACK_SESSION_REGEX,
            "checkpoint_field": "event.sequence",
            "overlap_seconds": 0,
        },
        templater={"format": "openstack", "similarity_threshold": 0.9},
        # A window longer than any task: the detection job's session tails then hold every event.
        model={"epochs": 1, "threads": 1, "window": 40, "hidden": 16, "embedding": 8},
        params={"epochs": 1, "min_observations": 5},
        # No session closes during the run: its tails are what detection computed.
        sessions={"idle_timeout_seconds": 10**8, "ttl_seconds": 10**8},
    )
    create_indices(clients, cfg)
    clients.es.indices.create(
        index=cfg.source.index,
        mappings={
            "properties": {
                "@timestamp": {"type": "date", "ignore_malformed": True},
                "event": {"properties": {"sequence": {"type": "long"}}},
            }
        },
    )
    lines = generate_workload(40, seed=5).lines
    _index(clients, cfg.source.index, lines, "w")
    # One line of a task again, with a time that does not parse, in the middle of the task's lines.
    at = len(lines) // 2
    clients.es.index(
        index=cfg.source.index,
        id="bad-ts",
        document={"@timestamp": "2017-05-14 nonsense", "message": lines[at], "event": {"sequence": at}},
        refresh=True,
    )
    t = train(cfg, clients)
    assert t.skipped == {"bad_timestamp": 1}
    read = RunSummary(run_id="check", job="train")
    data = read_training(
        cfg, Source(clients, cfg.source), Templater(cfg.templater), span=Span(), summary=read
    )
    assert read.docs_read == len(lines) + 1 and read.skipped == {"bad_timestamp": 1}

    summary = run_once(cfg, clients)
    assert summary.status == "ok" and summary.skipped == {"bad_timestamp": 1}
    assert summary.processed == len(lines)
    tails = {
        sid: SessionTail.from_list(raw)
        for sid, raw in load_state(clients, cfg.output.state_index, "detect").sessions["sessions"].items()
    }
    assert tails and all(t.count == len(t.keys) for t in tails.values())  # every event of every session
    # Keys: training's sequences are the ones detection scored (ids of the same templater version).
    assert {sid: list(t.keys) for sid, t in tails.items()} == dict(data.sessions)
    detected: dict[tuple[int, int], list[tuple[float, ...]]] = {}
    for t in tails.values():
        for i, (k, v) in enumerate(zip(t.keys, t.vectors(), strict=True)):
            detected.setdefault((t.keys[i - 1] if i else PAD, k), []).append(v)
    fitted = {s: sorted(vs) for s, vs in data.series.items()}
    assert fitted == {s: sorted(vs) for s, vs in detected.items()}
    assert sum(len(vs) for vs in fitted.values()) == len(lines)
