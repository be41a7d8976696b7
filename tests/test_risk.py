"""Risk scores and severity bands: calibrated against held-out normal sessions, stored with the model
version, written on every anomaly document with the ECS alert fields.

- The band is fixed in decades of rarity among normal events, whatever the model or the log type.
- The calibration ranks events by how far beyond normal their surprise is, per key; a key no normal event
  had is at least as rare as one in all the normal events seen; it survives its JSON form, and a damaged
  one is an error that names the field.
- A parameter anomaly at its threshold is as rare as the configured false-alarm rate; larger errors rarer.
- On the real server: `train` stores the calibration in the checkpoint, every anomaly document carries the
  risk, the band, the ECS alert fields and a Discover link; a version trained before calibration existed
  still detects, with the documented bound; a version made by feedback carries its parent's calibration.
"""

from __future__ import annotations

import json
import math
from datetime import timedelta
from urllib.parse import unquote

import pytest
import torch

from deeplog_lab.evaluate import rarity_reliability
from deeplog_lab.replay import EPOCH, index_lines, load_sample, render
from deeplog_siem.artifacts import KEYMODEL, ModelStore
from deeplog_siem.calibration import META_KEY, KeyCalibration, calibrate_keys, calibrate_version
from deeplog_siem.config import ModelConfig
from deeplog_siem.detector import KeyDetector, build_windows
from deeplog_siem.errors import ArtifactError
from deeplog_siem.feedback import apply_feedback
from deeplog_siem.model import load_checkpoint, save_checkpoint, train_key_model
from deeplog_siem.risk import ECS_SEVERITY, SEVERITIES, param_rarity, risk_score, severity
from deeplog_siem.runner import run_once, train
from deeplog_siem.setup_assets import create_indices
from deeplog_siem.vocab import UNK

from . import _synthetic as syn

# ------------------------------------------------------------------------------------------------- bands


def test_a_band_is_a_fixed_number_of_decades_of_rarity():
    assert [severity(risk_score(q)) for q in (0.5, 1e-2, 1e-4, 1e-6, 1e-12)] == [
        "low",
        "medium",
        "high",
        "critical",
        "critical",
    ]
    assert risk_score(1.0) == 0.0 and risk_score(1e-4) == 50.0 and risk_score(0.0) == 100.0
    assert risk_score(float("nan")) == 0.0  # not a number: no evidence of anything
    assert [ECS_SEVERITY[b] for b in SEVERITIES] == [21, 47, 73, 99]


def test_a_parameter_anomaly_is_as_rare_as_its_distance_beyond_the_threshold():
    confidence, threshold = 0.9998, 3.72
    at = param_rarity(threshold, threshold, confidence)
    assert at == pytest.approx(1 - confidence)
    assert param_rarity(5.0, threshold, confidence) < at < param_rarity(3.0, threshold, confidence)
    # A threshold widened by feedback makes the same error less rare.
    assert param_rarity(5.0, 2 * threshold, confidence) > param_rarity(5.0, threshold, confidence)
    assert param_rarity(5.0, 0.0, confidence) == 1.0  # not modelled
    assert param_rarity(float("inf"), threshold, confidence) < 1e-200


def test_beyond_its_threshold_a_parameter_error_gets_rarer_by_e_per_standard_deviation():
    confidence, threshold = 0.9998, 3.72
    at = param_rarity(threshold, threshold, confidence)
    # Just outside the held-out errors is not yet beyond 1 in 10,000: the Gaussian's own tail would say so.
    assert severity(risk_score(param_rarity(1.05 * threshold, threshold, confidence))) == "medium"
    assert param_rarity(threshold + 1.0, threshold, confidence) == pytest.approx(at / math.e)
    assert param_rarity(threshold + 3.0, threshold, confidence) == pytest.approx(at / math.e**3)
    assert severity(risk_score(param_rarity(threshold + 1.0, threshold, confidence))) == "high"
    # Many standard deviations out (a step five times its usual length) stays critical.
    assert severity(risk_score(param_rarity(20.0, threshold, confidence))) == "critical"
    # Without a confidence (a document written before rarities were stored): the Gaussian tail, as before.
    assert param_rarity(5.0, threshold, None) == pytest.approx(math.erfc(5.0 / math.sqrt(2.0)))


# ------------------------------------------------------------------------------------------ calibration


@pytest.fixture(scope="module")
def trained():
    cfg = ModelConfig(window=4, hidden=16, embedding=8, layers=1, epochs=6, seed=3, device="cpu")
    sessions = syn.sessions(400, seed=5)
    model, _ = train_key_model(sessions, len(syn.vocabulary()), cfg)
    return model, sessions, cfg


def test_the_calibration_ranks_by_surprise_per_key_and_bounds_a_key_never_seen(trained):
    model, sessions, cfg = trained
    cal = calibrate_version(model, sessions, cfg)
    assert cal.source == "validation" and cal.normal_events == sum(len(s) + 1 for s in sessions)
    assert syn.G in cal.seen and syn.C in cal.keys  # A has fewer held-out windows: pooled
    prob = torch.logspace(0, -12, 40)
    for key in (syn.A, syn.C, syn.D):
        q = cal.rarity(torch.full((40,), key), prob)
        assert bool((q[1:] <= q[:-1]).all()), key  # less probable, never less rare
        assert float(q[0]) == 1.0 and float(q[-1]) < 1e-6
    # A key id no normal event had: at most 1 in all the normal events.
    unseen = syn.G + 1
    q = cal.rarity(torch.tensor([unseen, syn.A]), torch.tensor([0.9, 0.9]))
    assert float(q[0]) <= 1 / (cal.normal_events + 1) < float(q[1])
    # An unseen template has probability 0 by construction: exactly that rare, not infinitely rare.
    q = cal.rarity(torch.tensor([UNK, UNK]), torch.tensor([0.0, 0.5]))
    assert q.tolist() == [1 / (cal.normal_events + 1)] * 2
    assert risk_score(float(q[0])) == round(12.5 * math.log10(cal.normal_events + 1), 1)


def test_the_calibration_survives_its_json_form_and_a_damaged_one_names_the_field(trained):
    model, sessions, cfg = trained
    cal = calibrate_keys(model, sessions[:60], window=cfg.window, normal_events=999, seen_keys={syn.A})
    back = KeyCalibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    keys, prob = torch.tensor([syn.A, syn.B, syn.E, syn.G] * 3), torch.logspace(0, -9, 12)
    assert torch.allclose(back.rarity(keys, prob), cal.rarity(keys, prob), rtol=1e-5)
    assert KeyCalibration.from_meta({}) is None  # a version trained before calibration existed
    # Exactly, also at a table's own points: many normal events share a surprise that is one of them, and a
    # version is scored from its stored form, the evaluation from the calibration it has just made.
    full = calibrate_version(model, sessions, cfg)
    points = [(k, x) for k, t in full.keys.items() for x in t.surprise]
    keys = torch.tensor([k for k, _ in points])
    prob = torch.exp(-torch.tensor([x for _, x in points], dtype=torch.float64))
    stored = KeyCalibration.from_dict(json.loads(json.dumps(full.to_dict())))
    assert torch.equal(stored.rarity(keys, prob), full.rarity(keys, prob))
    d = cal.to_dict()
    first = next(iter(d["keys"]))
    for damage, field in (
        (lambda x: x.update(normal_events=-1), "risk.normal_events"),
        (lambda x: x["pooled"].update(scale=0), "risk.pooled.scale"),
        (lambda x: x["keys"][first].update(surprise=[3.0, 1.0]), f"risk.keys.{first}"),
        (lambda x: x["keys"][first].update(levels=["a"]), f"risk.keys.{first}.levels"),
        (lambda x: x["keys"].update({"x": {}}), "risk.keys"),
        (lambda x: x.update(format="other"), "risk"),
    ):
        broken = json.loads(json.dumps(d))
        damage(broken)
        with pytest.raises(ArtifactError, match=field.replace(".", r"\.")):
            KeyCalibration.from_dict(broken)


def test_the_detector_gives_every_window_its_rarity_the_same_in_any_batch(trained):
    model, sessions, cfg = trained
    cal = calibrate_version(model, sessions, cfg)
    odd = [[syn.A, syn.B, syn.E, syn.C, syn.F], [syn.A, syn.B, syn.C], *syn.sessions(30, seed=9)]
    det = KeyDetector(model, 2, calibration=cal, cache_size=0)
    w = build_windows(odd, cfg.window)
    s = det.score(w)
    assert s.rarity.shape == s.prob.shape and bool(((s.rarity > 0) & (s.rarity <= 1)).all())
    assert torch.equal(s.rarity, cal.rarity(w.targets, s.prob))
    part = det.score(build_windows(odd[:2], cfg.window))
    assert torch.equal(part.rarity, s.rarity[: len(part)])
    # Without a calibration: vocabulary size x p, at most 1.
    bare = KeyDetector(model, 2, cache_size=0).score(w)
    assert torch.allclose(bare.rarity, (s.prob.double() * model.args.vocab_size).clamp(max=1.0))


def test_the_evaluation_reports_how_many_normal_events_the_calibration_rates_beyond_each_level(trained):
    model, sessions, cfg = trained
    cal = calibrate_version(model, sessions, cfg)
    unseen = syn.sessions(200, seed=11)  # normal sessions the version never saw
    det = KeyDetector(model, 2, calibration=cal)
    r = rarity_reliability(det, unseen, chunk=70)
    q = det.score(build_windows(unseen, cfg.window)).rarity
    assert r["events"] == q.numel() == sum(len(s) + 1 for s in unseen)
    assert r["below"] == {f"{x:g}": int((q < x).sum()) for x in (1e-2, 1e-3, 1e-4, 1e-6)}
    assert r["expected"]["0.0001"] == pytest.approx(1e-4 * r["events"])
    below = list(r["below"].values())
    assert below == sorted(below, reverse=True)


# ---------------------------------------------------------------------------------- on the real server


@pytest.fixture(scope="module")
def sample():
    s = load_sample()
    return s.train[:400], s.test[:150], s.test_labels[:150]


def _anomalies(clients, index):
    clients.es.indices.refresh(index=index)
    return [h["_source"] for h in clients.es.search(index=index, size=2000)["hits"]["hits"]]


def test_every_anomaly_carries_its_risk_band_and_ecs_alert_fields(clients, make_config, prefix, sample):
    train_sessions, test_sessions, _ = sample
    kibana = "https://kibana.example:5601"
    cfg = make_config(model={"epochs": 10, "patience": 2}, kibana={"url": kibana, "space": "soc"})
    create_indices(clients, cfg)  # strict mappings: every field written must be mapped
    index_lines(clients, f"{prefix}-train", render(train_sessions, seed=11), run="train")
    t = train(cfg, clients, index=f"{prefix}-train")
    store = ModelStore(cfg.model.dir)
    _, _, header = load_checkpoint(store.path(t.version) / KEYMODEL)
    cal = KeyCalibration.from_meta(header["meta"])
    assert cal is not None and cal.source == "validation" and cal.keys

    test_lines = render(test_sessions, seed=12, start=EPOCH + timedelta(days=1))
    index_lines(clients, cfg.source.index, test_lines, run="test")
    summary = run_once(cfg, clients, close_sessions=True)
    assert summary.status == "ok" and sum(summary.rejected.values()) == 0
    docs = _anomalies(clients, cfg.output.anomalies_index)
    assert docs and len(docs) == summary.anomalies_total
    hosts = {ln.host for ln in test_lines}
    for d in docs:
        dl, ev = d["deeplog"], d["event"]
        assert 0.0 <= dl["risk_score"] <= 100.0 and dl["severity"] == severity(dl["risk_score"])
        assert ev["kind"] == "alert" and ev["risk_score"] == dl["risk_score"]
        assert ev["severity"] == ECS_SEVERITY[dl["severity"]]
        assert ev["category"] == ["intrusion_detection"] and ev["type"] == ["info"]
        assert d["ecs"]["version"] and d["observer"]["product"] == "deeplog-siem"
        assert d["observer"]["name"] == f"deeplog-siem {cfg.job.name}"
        if d.get("host", {}).get("name"):
            assert d["related"]["hosts"] == [d["host"]["name"]]
            assert d["host"]["name"] in hosts
        url = dl["session"]["url"]
        assert url.startswith(f"{kibana}/s/soc/app/discover#/?")
        assert dl["session"]["id"] in unquote(url)
    # HDFS messages name the data nodes' addresses: they are related IPs.
    assert any(d["related"]["ip"] for d in docs if d["deeplog"]["anomaly_type"] != "session_end")
    # Unlike `deeplog.score` (1 - p: 0.999 and more for nearly every anomaly), the risk spreads the
    # anomalies over the scale, so a queue sorted by it is ordered.
    risks = sorted({d["deeplog"]["risk_score"] for d in docs})
    assert len(risks) >= 3 and risks[-1] - risks[0] >= 25.0, risks


def test_a_version_trained_before_calibration_still_detects_with_the_bound(
    clients, make_config, prefix, sample, caplog
):
    train_sessions, test_sessions, _ = sample
    cfg = make_config(model={"epochs": 4, "patience": 2})
    create_indices(clients, cfg)
    index_lines(clients, f"{prefix}-train", render(train_sessions[:200], seed=11), run="train")
    t = train(cfg, clients, index=f"{prefix}-train")
    # The version as an earlier release wrote it: no calibration in its checkpoint.
    path = ModelStore(cfg.model.dir).path(t.version) / KEYMODEL
    model, vocab, header = load_checkpoint(path)
    meta = {k: v for k, v in header["meta"].items() if k != META_KEY}
    save_checkpoint(path, model, vocab, meta)

    index_lines(clients, cfg.source.index, render(test_sessions[:60], seed=12, start=EPOCH), run="test")
    with caplog.at_level("WARNING", logger="deeplog_siem.runner"):
        summary = run_once(cfg, clients, close_sessions=True)
    assert summary.status == "ok" and summary.anomalies_total > 0
    assert "no risk calibration" in caplog.text
    n = model.args.vocab_size
    for d in _anomalies(clients, cfg.output.anomalies_index):
        dl = d["deeplog"]
        if dl["anomaly_type"] in ("log_key", "session_end"):
            p = dl["key"]["probability"]
            # The documented bound, from the probability as the document rounds it.
            assert dl["risk_score"] == pytest.approx(risk_score(min(1.0, n * p)), abs=0.2 if p else 0)
            assert not math.isnan(dl["risk_score"])


def test_a_version_made_by_feedback_carries_the_calibration_of_its_trained_parent(
    clients, make_config, prefix
):
    from .test_feedback import ALL_TIME, MODEL, _scenario

    s = load_sample()
    normal = [t for t, lab in zip(s.test[:80], s.test_labels[:80], strict=True) if not lab][:5]
    cfg = make_config(model=MODEL)
    version, fp, _, _ = _scenario(clients, cfg, prefix, (s.train[:300], normal))
    clients.es.update(
        index=fp["_index"], id=fp["_id"], doc={"deeplog": {"feedback": "false_positive"}}, refresh=True
    )
    summary = apply_feedback(cfg, clients)
    assert summary.status == "ok" and summary.feedback["applied"] == 1, summary.feedback
    store = ModelStore(cfg.model.dir)
    metas = [load_checkpoint(store.path(v) / KEYMODEL)[2]["meta"] for v in (version, summary.model_version)]
    assert META_KEY in metas[0] and metas[1][META_KEY] == metas[0][META_KEY]
    # Its anomalies are scored with it: still on the scale, with their bands.
    assert run_once(cfg, clients, close_sessions=True, **ALL_TIME).status == "ok"
    docs = _anomalies(clients, cfg.output.anomalies_index)
    new = [d["deeplog"] for d in docs if d["deeplog"]["model_version"] == summary.model_version]
    assert new and all(d["severity"] == severity(d["risk_score"]) for d in new)
