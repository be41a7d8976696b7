"""The feedback job on anomaly documents other tools changed (real server): whatever a document holds, the job
gives each one a verdict and never crashes the run.

- A number too large for a float (JSON allows any integer) is a malformed document, not a crash.
- A key id outside the current vocabulary (a document the job sealed under another vocabulary) is resolved by
  its template text or reported as not in the model, even with the text `vocab.template` gives such an id
  (`<UNK>`), never handed to the model.
- The job reads the `deeplog` object alone: a document whose other fields another tool changed is learned.
- A verdict that is not one of the two words is reported as JSON, as the responder wrote it.
- A document's model version names a version in the model store: a path out of the store is invalid, and not
  read, even under a valid seal.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from deeplog_siem import paramfeedback, seal
from deeplog_siem.anomaly import (
    AnomalyDoc,
    Details,
    DocContext,
    EventRef,
    KeyVerdict,
    ParamVerdict,
    SessionEvent,
    key_anomaly,
    parameter_anomaly,
)
from deeplog_siem.artifacts import KEYMODEL, PARAMMODEL, ModelStore
from deeplog_siem.config import Config, ModelConfig
from deeplog_siem.es import Clients
from deeplog_siem.feedback import APPLIED, INVALID, UNSUPPORTED, _pending, apply_feedback, pair_of
from deeplog_siem.model import save_checkpoint, train_key_model
from deeplog_siem.samples import NORMAL_SAMPLE, build_normal_sample
from deeplog_siem.setup_assets import create_indices

from . import _synthetic as syn

MODEL = {"window": 4, "top_g": 2, "threads": 1, "device": "cpu"}
HUGE = 10**400  # valid JSON, out of a float's range


def _published(clients: Clients, cfg: Config) -> str:
    """A small key model of the synthetic workflow, with its normal sample, published -> its version."""
    create_indices(clients, cfg)
    mcfg = ModelConfig(
        window=4, top_g=2, epochs=30, hidden=16, embedding=8, batch_size=32, threads=1, learning_rate=0.01
    )
    vocab = syn.vocabulary()
    sessions = syn.sessions(100)
    model, _ = train_key_model(sessions, len(vocab), mcfg, progress=lambda m: None)
    store = ModelStore(cfg.model.dir)
    version, path = store.create()
    save_checkpoint(path / KEYMODEL, model, vocab, {})
    build_normal_sample(sessions, mcfg, 1000, 1000).save(path / NORMAL_SAMPLE)
    store.publish(version)
    return version


def _context(cfg: Config, version: str) -> DocContext:
    """What the detection job's documents of `version` share, for the synthetic model."""
    return DocContext(
        seal_key=seal.key(cfg.model.dir),
        vocab=syn.vocabulary(),
        model_version=version,
        run_id="r1",
        index="anomalies",
        message_field="message",
        top_g=2,
        min_probability=0.0,
    )


def _key_source(cfg: Config, version: str, window: list[int], actual: int) -> dict[str, Any]:
    """A key anomaly document of `version` as the detection job writes it, marked a false positive."""
    ctx = _context(cfg, version)
    event = EventRef("logs", f"doc-{actual}", "2008-11-09T20:36:15.000Z", "line", "h1")
    built = key_anomaly(
        ctx,
        SessionEvent(event, "s1", len(window), window),
        KeyVerdict("log_key", actual, 0.001, 5, [(syn.C, 0.9)]),
    )
    src = {k: v for k, v in built.items() if not k.startswith("_")}
    AnomalyDoc.from_source(src)  # the form the job reads
    src["deeplog"]["feedback"] = "false_positive"
    return src


def _resealed(cfg: Config, src: dict[str, Any]) -> dict[str, Any]:
    """`src` with the seal the job gives its values: what the job itself would have written."""
    src["deeplog"]["seal"] = Details.from_source(src).sealed(seal.key(cfg.model.dir)).seal
    return src


def _post(clients: Clients, cfg: Config, docs: dict[str, dict[str, Any]]) -> None:
    for doc_id, src in docs.items():
        clients.es.index(index=cfg.output.anomalies_index, id=doc_id, document=src)
    clients.es.indices.refresh(index=cfg.output.anomalies_index)


def _deeplog(clients: Clients, cfg: Config, doc_id: str) -> dict[str, Any]:
    return clients.es.get(index=cfg.output.anomalies_index, id=doc_id)["_source"]["deeplog"]


def test_a_number_out_of_float_range_is_a_malformed_document_not_a_crash(clients, make_config):
    cfg = make_config(model=MODEL)
    version = _published(clients, cfg)
    good = _key_source(cfg, version, [syn.A, syn.B], syn.G)
    huge = copy.deepcopy(good)
    # `expected` is stored, not indexed: the cluster keeps any number there as it was written.
    huge["deeplog"]["expected"][0]["probability"] = HUGE
    _post(clients, cfg, {"huge": huge})
    summary = apply_feedback(cfg, clients)
    assert summary.status == "ok", summary.error
    assert dict(summary.feedback) == {"found": 1, UNSUPPORTED: 1}
    d = _deeplog(clients, cfg, "huge")
    assert d["feedback_status"] == UNSUPPORTED
    assert "deeplog.expected[0].probability: number out of range" in d["feedback_error"]


def test_key_ids_outside_the_vocabulary_are_not_handed_to_the_model(clients, make_config):
    cfg = make_config(model=MODEL)
    version = _published(clients, cfg)
    docs = {}
    for name, where in (("target", "key"), ("window", "window")):
        for bad in (10**6, -5):
            src = _key_source(cfg, version, [syn.A, syn.B], syn.G)
            d = src["deeplog"]
            if where == "key":
                d["key"].update(id=bad, template="<UNK>")
            else:
                d["window"] = {"key_ids": [syn.A, bad], "templates": ["event A <*>", "<UNK>"]}
            docs[f"{name}-{bad}"] = _resealed(cfg, src)
            # The feedback job's reading of the same document, without the cluster.
            doc = Details.from_source(src)
            assert "not in the current model" in pair_of(doc, syn.vocabulary(), 4)
    _post(clients, cfg, docs)
    summary = apply_feedback(cfg, clients)
    assert summary.status == "ok", summary.error
    assert dict(summary.feedback) == {"found": 4, UNSUPPORTED: 4}
    assert ModelStore(cfg.model.dir).current()[0] == version
    for doc_id in docs:
        d = _deeplog(clients, cfg, doc_id)
        assert d["feedback_status"] == UNSUPPORTED
        assert "not in the current model's vocabulary" in d["feedback_error"], doc_id


def test_a_document_changed_outside_its_deeplog_object_is_still_learned(clients, make_config):
    cfg = make_config(model=MODEL)
    version = _published(clients, cfg)
    # The cleanup step the workflow sometimes takes: a pattern normal data does not contradict.
    src = _key_source(cfg, version, [syn.A, syn.B, syn.C, syn.D, syn.E], syn.G)
    # Wrong types for the document's form, accepted by the mapping (a field left out, an object's fields).
    src["message"] = ["forwarded", "twice"]
    src["host"] = {"name": ["h1", "h2"]}
    src["rule"] = {"name": "renamed by another tool"}
    del src["@timestamp"]
    _post(clients, cfg, {"changed": src})
    # What the job fetches of a pending document: its `deeplog` object, not the raw event.
    assert [set(h["_source"]) for h in _pending(clients, cfg)] == [{"deeplog"}]
    summary = apply_feedback(cfg, clients)
    assert summary.status == "ok", summary.error
    d = _deeplog(clients, cfg, "changed")
    assert d["feedback_status"] == APPLIED, d.get("feedback_error")
    assert dict(summary.feedback) == {"found": 1, APPLIED: 1}
    assert ModelStore(cfg.model.dir).current()[0] == d["feedback_model_version"] != version


def test_an_invalid_verdict_is_reported_as_it_was_written(clients, make_config):
    cfg = make_config(model=MODEL)
    version = _published(clients, cfg)
    verdicts = {"one": (1, "1"), "yes": (True, "true"), "text": ("fp", '"fp"'), "list": (["fp"], '["fp"]')}
    docs = {}
    for doc_id, (value, _) in verdicts.items():
        docs[doc_id] = _key_source(cfg, version, [syn.A, syn.B], syn.G)
        docs[doc_id]["deeplog"]["feedback"] = value
    _post(clients, cfg, docs)
    summary = apply_feedback(cfg, clients)
    assert summary.status == "ok", summary.error
    assert dict(summary.feedback) == {"found": 4, INVALID: 4}
    for doc_id, (_, said) in verdicts.items():
        d = _deeplog(clients, cfg, doc_id)
        assert d["feedback_status"] == INVALID
        assert d["feedback_error"] == f"invalid feedback {said}: use false_positive or true_positive"


def test_a_model_version_outside_the_store_is_invalid_and_not_read(clients, make_config, tmp_path):
    cfg = make_config(model=MODEL)
    version = _published(clients, cfg)
    store = ModelStore(cfg.model.dir)
    # The job checks only that the current version has a parameter model before widening a threshold.
    (store.dir / version / PARAMMODEL).write_bytes(b"")
    # Scales a document must not be able to point the job at: outside the store.
    outside = tmp_path / "outside"
    outside.mkdir()
    paramfeedback.save(outside, {(syn.A, syn.B): 1000.0})
    ctx = _context(cfg, version)
    verdict = ParamVerdict(
        key=syn.B, dims=[0], observed=[5.0], predicted=[1.0], low=[0.5], high=[1.5], error=5.0, threshold=3.29
    )
    docs = {}
    relative = Path("..") / Path(*[".."] * (len(store.dir.parts) - 1)) / outside.relative_to("/")
    for name, pointed in (("absolute", str(outside)), ("relative", str(relative)), ("long", "v" * 300)):
        event = EventRef("logs", f"doc-{name}", "2008-11-09T20:36:15.000Z", "line", "h1")
        built = parameter_anomaly(ctx, SessionEvent(event, "s1", 1, [syn.A]), verdict)
        src = {k: v for k, v in built.items() if not k.startswith("_")}
        src["deeplog"].update(model_version=pointed, feedback="false_positive")
        docs[name] = src
        # The same name under a valid seal, as if the job had written it: still not a version of the store.
        docs[f"{name}-sealed"] = _resealed(cfg, copy.deepcopy(src))
    _post(clients, cfg, docs)
    summary = apply_feedback(cfg, clients)
    assert summary.status == "ok", summary.error
    assert dict(summary.feedback) == {"found": 6, INVALID: 6}
    assert store.current()[0] == version
    for doc_id in docs:
        d = _deeplog(clients, cfg, doc_id)
        assert d["feedback_status"] == INVALID
        assert d["feedback_error"].startswith("deeplog.model_version: "), d["feedback_error"]
    # Invalid for what they hold, not for the verdict: not read again by the next run.
    assert dict(apply_feedback(cfg, clients).feedback) == {"found": 0}
