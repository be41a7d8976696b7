"""Feedback on the real (embedded) server: a marked false positive fine-tunes the key model, exactly once.

Scenario (real HDFS sessions, rendered as raw HDFS lines): the model learns 300 normal sessions; the test
data holds a "drifted" normal session (one extra `11 9` round after the `26`s: legitimate here, unexpected
to the model), a labelled anomalous session from the sample (an event the model flags), and a few normal
ones. Responders mark the drifted event a false positive; after the feedback job, detection over the same
window no longer flags it, while the true anomaly still is.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import yaml

from deeplog_lab.replay import EPOCH, index_lines, load_sample, render
from deeplog_siem.anomaly import Details, DocContext, EventRef, KeyVerdict, SessionEvent, key_anomaly
from deeplog_siem.artifacts import ANCHOR, KEYMODEL, ModelStore
from deeplog_siem.cli import main
from deeplog_siem.config import FeedbackConfig, ModelConfig
from deeplog_siem.feedback import (
    APPLIED,
    INVALID,
    RECORDED,
    REJECTED,
    Judge,
    Pairs,
    applied_ids,
    apply_feedback,
    describe_versions,
    finetune,
    pair_of,
)
from deeplog_siem.model import load_checkpoint, train_key_model
from deeplog_siem.runner import run_once, train
from deeplog_siem.samples import NORMAL_SAMPLE, NormalSample, build_normal_sample
from deeplog_siem.setup_assets import create_indices

from . import _synthetic as syn
from .conftest import config_data

DRIFTED = [5, 5, 5, 22, 11, 9, 11, 9, 11, 9, 26, 26, 26, 11, 9, 23, 23, 23, 21, 21, 21]
# Labelled anomalous in the sample: key 28 where the model expects the session's writes to go on.
ANOMALOUS = [22, 5, 5, 5, 26, 26, 26, 11, 9, 11, 9, 11, 9, 23, 23, 23, 21, 21, 28, 26, 21]
ANOMALOUS_2 = [5, 5, 22, 5, 11, 9, 11, 9, 11, 9, 26, 26, 26, 4, 4, 3, 2, 23, 23, 23, 21, 21, 21, 20]
MODEL = {"epochs": 6, "patience": 2, "threads": 1, "device": "cpu"}
ALL_TIME = {"start": "2000-01-01T00:00:00Z", "end": "2100-01-01T00:00:00Z"}


@pytest.fixture(scope="module")
def sample():
    s = load_sample()
    normal = [t for t, lab in zip(s.test[:80], s.test_labels[:80], strict=True) if not lab][:5]
    return s.train[:300], normal


def _anomalies(clients, cfg, version: str | None = None) -> list[dict]:
    clients.es.indices.refresh(index=cfg.output.anomalies_index)
    q = {"term": {"deeplog.model_version": version}} if version else {"match_all": {}}
    return clients.es.search(index=cfg.output.anomalies_index, query=q, size=1000)["hits"]["hits"]


def _scenario(clients, cfg, prefix, sample):
    """Train, detect over the test data -> (model version, the drifted FP doc, the true anomaly doc, lines)."""
    create_indices(clients, cfg)  # strict mappings: every document and update must fit them
    train_sessions, normal = sample
    index_lines(clients, f"{prefix}-train", render(train_sessions, seed=11), run="train")
    version = train(cfg, clients, index=f"{prefix}-train").version
    lines = render([DRIFTED, ANOMALOUS, ANOMALOUS_2, *normal], seed=12, start=EPOCH + timedelta(days=1))
    index_lines(clients, cfg.source.index, lines, run="test")
    assert run_once(cfg, clients, close_sessions=True).status == "ok"
    block = {ln.session_index: ln.session for ln in lines}
    hits = _anomalies(clients, cfg)
    fp = [h for h in hits if h["_source"]["deeplog"]["session"]["id"] == block[0]]
    tp = [h for h in hits if h["_source"]["deeplog"]["session"]["id"] == block[1]]
    assert len(fp) == 1 and fp[0]["_source"]["deeplog"]["anomaly_type"] == "log_key", fp
    assert tp, "the labelled anomaly must be flagged before feedback"
    return version, fp[0], tp[0], hits


def _doc(clients, hit) -> dict:
    return clients.es.get(index=hit["_index"], id=hit["_id"])["_source"]["deeplog"]


def _config_file(tmp_path: Path, es_section, prefix, **sections) -> str:
    p = tmp_path / "deeplog.yml"
    p.write_text(yaml.safe_dump(config_data(es_section, prefix, tmp_path / "models", **sections)))
    return str(p)


def test_false_positive_is_learned_and_a_true_anomaly_stays_flagged(
    clients, make_config, es_section, prefix, sample, tmp_path, capsys
):
    cfg = make_config(model=MODEL)
    version, fp, tp, hits = _scenario(clients, cfg, prefix, sample)
    cfg_file = _config_file(tmp_path, es_section, prefix, model=MODEL)

    # The responders' three kinds of verdict: CLI, an invalid value set by hand, a true positive.
    assert main(["feedback", "mark", fp["_id"], "--false-positive", "--by", "analyst", "-c", cfg_file]) == 0
    assert main(["feedback", "mark", tp["_id"], "--true-positive", "-c", cfg_file]) == 0
    other = next(h for h in hits if h["_id"] not in (fp["_id"], tp["_id"]))
    clients.es.update(
        index=other["_index"], id=other["_id"], doc={"deeplog": {"feedback": "fp"}}, refresh=True
    )
    assert _doc(clients, fp)["feedback"] == "false_positive" and _doc(clients, fp)["feedback_by"] == "analyst"

    summary = apply_feedback(cfg, clients)
    assert summary.status == "ok", summary.error
    assert dict(summary.feedback) == {"found": 3, "applied": 1, "true_positive": 1, "invalid": 1}
    new = summary.model_version
    assert new != version and ModelStore(cfg.model.dir).current()[0] == new
    d = _doc(clients, fp)
    assert d["feedback_status"] == APPLIED and d["feedback_model_version"] == new and d["feedback_applied_at"]
    assert _doc(clients, tp)["feedback_status"] == RECORDED
    bad = _doc(clients, other)
    assert bad["feedback_status"] == INVALID and 'invalid feedback "fp"' in bad["feedback_error"]
    # Lineage: the new version names its parent and the feedback it holds.
    _, _, header = load_checkpoint(Path(cfg.model.dir) / new / KEYMODEL)
    assert header["meta"]["lineage"]["parent"] == version
    assert header["meta"]["lineage"]["feedback_ids"] == [fp["_id"]]
    # Everything the update did not change is carried over from the parent (workflows, templater, ...).
    parent_files = {p.name for p in (Path(cfg.model.dir) / version).iterdir()}
    assert parent_files <= {p.name for p in (Path(cfg.model.dir) / new).iterdir()}
    # Its anchor is the trained parent, byte for byte (the detector scores the new version against it).
    anchor = (Path(cfg.model.dir) / new / ANCHOR).read_bytes()
    assert anchor == (Path(cfg.model.dir) / version / KEYMODEL).read_bytes()
    rows = {r["version"]: r for r in describe_versions(ModelStore(cfg.model.dir))}
    assert rows[new]["parent"] == version and rows[new]["current"] and rows[version]["parent"] is None
    # The run is recorded (its document fits the strict runs mapping).
    clients.es.indices.refresh(index=cfg.output.runs_index)
    runs = clients.es.search(index=cfg.output.runs_index, query={"term": {"deeplog.run.job": "feedback"}})
    assert runs["hits"]["total"]["value"] == 1
    assert runs["hits"]["hits"][0]["_source"]["deeplog"]["run"]["feedback"]["applied"] == 1

    # Nothing is processed twice: the invalid value stays reported, not recounted.
    again = apply_feedback(cfg, clients)
    assert dict(again.feedback) == {"found": 0} and again.model_version == new

    # Detection over the same window with the new model: the false positive is gone, the true anomaly stays.
    assert run_once(cfg, clients, close_sessions=True, **ALL_TIME).status == "ok"
    after = {h["_source"]["deeplog"]["source"]["id"] for h in _anomalies(clients, cfg, new)}
    assert fp["_source"]["deeplog"]["source"]["id"] not in after
    assert tp["_source"]["deeplog"]["source"]["id"] in after

    # One command restores the previous version.
    assert main(["model", "restore", version, "-c", cfg_file]) == 0
    assert ModelStore(cfg.model.dir).current()[0] == version
    assert main(["model", "list", "-c", cfg_file]) == 0
    assert f"* {version}" in capsys.readouterr().out


class _Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing on the way handles it."""


def test_crash_between_publish_and_marking_neither_loses_nor_double_applies(
    clients, make_config, prefix, sample
):
    cfg = make_config(model=MODEL)
    version, fp, _, _ = _scenario(clients, cfg, prefix, sample)
    clients.es.update(index=fp["_index"], id=fp["_id"], doc={"deeplog": {"feedback": "false_positive"}})
    store = ModelStore(cfg.model.dir)
    published = []

    def die(v: str) -> None:
        published.append(v)
        raise _Crash

    with pytest.raises(_Crash):
        apply_feedback(cfg, clients, after_publish=die)
    # The new version is current and holds the feedback; the document does not say so yet.
    assert store.current()[0] == published[0] != version
    assert fp["_id"] in applied_ids(store, published[0])
    assert "feedback_status" not in _doc(clients, fp)
    versions = store.versions()

    rerun = apply_feedback(cfg, clients)
    assert dict(rerun.feedback) == {"found": 1, "reconciled": 1}  # marked, not trained again
    assert store.versions() == versions and store.current()[0] == published[0]
    d = _doc(clients, fp)
    assert d["feedback_status"] == APPLIED and d["feedback_model_version"] == published[0]
    assert dict(apply_feedback(cfg, clients).feedback) == {"found": 0}


def test_an_update_that_raises_false_alarms_is_rejected(clients, make_config, prefix, sample):
    # A learning rate 500x the default with the marked pair outweighing the distillation of the normal windows
    # a million to one wrecks the model: the held-out check must catch it.
    cfg = make_config(
        model=MODEL,
        feedback={"learning_rate": 0.5, "weight": 1e6, "max_steps": 30, "tolerance": 0.0},
    )
    version, fp, _, _ = _scenario(clients, cfg, prefix, sample)
    clients.es.update(index=fp["_index"], id=fp["_id"], doc={"deeplog": {"feedback": "false_positive"}})
    summary = apply_feedback(cfg, clients)
    assert summary.status == REJECTED and summary.feedback[REJECTED] == 1
    det = summary.feedback_detail
    assert det["heldout_false_alarm_after"] > det["heldout_false_alarm_before"]
    assert ModelStore(cfg.model.dir).current()[0] == version
    d = _doc(clients, fp)
    assert d["feedback_status"] == REJECTED and "tolerance" in d["feedback_error"]


# ------------------------------------------------------------------------------------- without a server


def test_finetune_accepts_the_pair_and_keeps_normal_windows():
    cfg = ModelConfig(
        window=4, top_g=2, epochs=30, hidden=16, embedding=8, learning_rate=0.01, batch_size=128, threads=1
    )
    train_sessions = syn.sessions(300)
    model, _ = train_key_model(train_sessions, 10, cfg, progress=lambda m: None)
    smp = build_normal_sample(train_sessions, cfg, 1000, 1000)
    # A new legitimate step: G right after B (never seen there in training).
    keys = torch.tensor([[0, 0, syn.A, syn.B]])
    targets = torch.tensor([syn.G])
    tuned, rep = finetune(model, Pairs(keys, targets), smp.replay, cfg, FeedbackConfig())
    assert rep.accepted_before == 0 and rep.accepted_after == 1 and rep.steps <= FeedbackConfig().max_steps
    from deeplog_siem.feedback import false_alarm_rate

    floor = cfg.floor(10)
    # C still follows A B in normal sessions: G joins the candidates instead of replacing C.
    assert (
        false_alarm_rate(model, smp.heldout, Judge(2, floor))
        == false_alarm_rate(tuned, smp.heldout, Judge(2, floor))
        == 0.0
    )


def test_a_pattern_that_cannot_be_learned_is_set_aside_and_the_rest_applied():
    """One marked pair no update can learn (UNK is never predicted) must not hold back the others: the update
    is made again without it, and it is reported as set aside."""
    from deeplog_siem.feedback import finetune_learnable, verdict
    from deeplog_siem.vocab import UNK

    cfg = ModelConfig(
        window=4, top_g=2, epochs=30, hidden=16, embedding=8, learning_rate=0.01, batch_size=128, threads=1
    )
    train_sessions = syn.sessions(300)
    model, _ = train_key_model(train_sessions, 10, cfg, progress=lambda m: None)
    smp = build_normal_sample(train_sessions, cfg, 1000, 1000)
    keys = torch.tensor([[0, 0, syn.A, syn.B], [0, syn.A, syn.B, syn.C]])
    targets = torch.tensor([syn.G, UNK])
    fb = FeedbackConfig()
    _, first = finetune(model, Pairs(keys, targets), smp.replay, cfg, fb)
    assert first.unlearned == (1,) and verdict(first, 0.0, 0.0, fb.tolerance) is not None
    tuned, rep, held = finetune_learnable(model, Pairs(keys, targets), smp.replay, cfg, fb)
    assert held.tolist() == [True, False]
    assert rep.pairs == 1 and rep.unlearned == () and verdict(rep, 0.0, 0.0, fb.tolerance) is None
    _, again = finetune(tuned, Pairs(keys[:1], targets[:1]), smp.replay, cfg, fb)
    assert again.accepted_before == 1  # the update holds the learnable pair


def test_normal_sample_round_trip_and_damage(tmp_path):
    cfg = ModelConfig(window=4)
    smp = build_normal_sample(syn.sessions(50), cfg, 5, 1000)
    assert len(smp.replay) == 5 and smp.heldout_source == "validation"
    back = NormalSample.load(smp.save(tmp_path / NORMAL_SAMPLE))
    assert torch.equal(back.replay.keys, smp.replay.keys) and torch.equal(
        back.heldout.counts, smp.heldout.counts
    )
    (tmp_path / NORMAL_SAMPLE).write_bytes(b"garbage")
    from deeplog_siem.errors import ArtifactError

    with pytest.raises(ArtifactError, match="unreadable"):
        NormalSample.load(tmp_path / NORMAL_SAMPLE)


def _key_doc(vocab, window: list[int], actual: int, kind: str = "log_key") -> Details:
    """A key anomaly document as the detection job writes it, read back as the feedback job reads it."""
    ctx = DocContext(
        vocab=vocab,
        model_version="v1",
        run_id="r1",
        index="anomalies",
        message_field="message",
        top_g=9,
        min_probability=0.0,
    )
    event = EventRef("logs", "doc-1", "2008-11-09T20:36:15.000Z", "line", None)
    built = key_anomaly(
        ctx, SessionEvent(event, "s1", len(window), window), KeyVerdict(kind, actual, 0.001, 9, [])
    )
    return Details.from_source({k: v for k, v in built.items() if not k.startswith("_")})


def _with_key(doc: Details, key_id: int, template: str) -> Details:
    return replace(doc, key=replace(doc.key, id=key_id, template=template))


def test_pair_of_maps_templates_and_explains_what_it_cannot_learn():
    vocab = syn.vocabulary()
    doc = _key_doc(vocab, [syn.A, syn.B], syn.G)
    assert doc.window.templates == ("event A <*>", "event B <*>")
    assert pair_of(doc, vocab, 4) == ([0, 0, syn.A, syn.B], syn.G)
    # Ids from another vocabulary: the template text decides.
    moved = _with_key(doc, 99, "event C <*>")
    assert pair_of(moved, vocab, 4) == ([0, 0, syn.A, syn.B], syn.C)
    assert "not in the current model" in pair_of(_with_key(doc, 99, "x"), vocab, 4)
    assert "cannot be learned" in pair_of(_key_doc(vocab, [syn.A, syn.B], 1, "unseen_key"), vocab, 4)


def test_the_daemon_schedules_the_feedback_job(clients, make_config):
    import threading

    from deeplog_siem.scheduler import build_scheduler

    cfg = make_config(schedule={"feedback_interval_seconds": 123})
    job = build_scheduler(cfg, clients, threading.Event()).get_job("feedback")
    assert job is not None and job.trigger.interval.total_seconds() == 123


def test_a_run_with_no_feedback_and_no_model_is_a_quiet_success(clients, make_config):
    # The daemon may start before the first training: the feedback job must not fail every interval.
    summary = apply_feedback(make_config(), clients)
    assert summary.status == "ok" and dict(summary.feedback) == {"found": 0}


def test_an_anchor_of_another_lineage_is_refused(tmp_path):
    """A version whose anchor.pt does not fit its key model (another vocabulary size) fails with the file
    named, instead of scoring keys against the wrong model."""
    from deeplog_siem.detector import load_anchor
    from deeplog_siem.errors import ArtifactError
    from deeplog_siem.model import KeyLSTM, KeyModelArgs, save_checkpoint
    from deeplog_siem.vocab import Vocabulary

    model = KeyLSTM(KeyModelArgs(vocab_size=8, window=4, embedding=4, layers=1, hidden=8))
    assert load_anchor(tmp_path, model) is None  # a trained version has none
    vocab = Vocabulary()
    for i in range(6):
        vocab.add(f"template {i}")
    other = KeyLSTM(KeyModelArgs(vocab_size=len(vocab), window=4, embedding=4, layers=1, hidden=8))
    save_checkpoint(tmp_path / ANCHOR, other, vocab, {})
    with pytest.raises(ArtifactError, match="anchor.pt: the anchor model does not match"):
        load_anchor(tmp_path, model)
