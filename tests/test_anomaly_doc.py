"""The typed anomaly document: what the job writes, what the feedback job reads back, what the template maps.

- The builders write the same JSON, field for field and in order, as the documents recorded in
  fixtures/anomaly/documents.json (the Kibana objects and the index template depend on that form).
- `AnomalyDoc.from_source` reads back what `to_source` wrote, and turns every wrong type into
  `InvalidAnomaly` with the field's path, never another exception.
- The index template maps every field the dataclasses can write, with a compatible type.
- On the real server: the feedback job marks a malformed anomaly document unsupported, with the reason.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

import pytest

from deeplog_siem.anomaly import (
    AnomalyDoc,
    DocContext,
    EventRef,
    Feedback,
    InvalidAnomaly,
    KeyVerdict,
    ParamVerdict,
    SessionEvent,
    field_types,
    json_name,
    key_anomaly,
    parameter_anomaly,
)
from deeplog_siem.artifacts import KEYMODEL, ModelStore
from deeplog_siem.config import ModelConfig
from deeplog_siem.feedback import UNSUPPORTED, apply_feedback
from deeplog_siem.model import save_checkpoint, train_key_model
from deeplog_siem.setup_assets import create_indices
from deeplog_siem.vocab import EOS, Vocabulary

from . import _synthetic as syn
from .conftest import REPO
from .test_alerting import mapped

GOLDEN = Path(__file__).parent / "fixtures" / "anomaly" / "documents.json"
TEMPLATE = REPO / "plugin" / "deeplog_siem" / "assets" / "templates" / "anomalies.json"


def _built() -> list[dict[str, Any]]:
    """One document of every kind and branch, built as the job builds them (the inputs of the recording)."""
    vocab = Vocabulary()
    a, b = vocab.add("Receiving block <BLK> src: <IP> dest: <IP>"), vocab.add("allocateBlock: <*>")
    ev = EventRef("logs-hdfs", "doc-1", "2008-11-09T20:36:15.000Z", "081109 203615 ...", "10.0.0.1")
    ev2 = EventRef("logs-hdfs", "doc-2", "2008-11-09T20:36:16.000Z", "?", None)
    wf = {"name": "wf1", "reason": "diverged", "step_allowed": False}
    ctx = DocContext(
        vocab=vocab,
        model_version="v1",
        run_id="r1",
        index="anoms",
        message_field="message",
        top_g=2,
        min_probability=0.0,
    )
    floor = dataclasses.replace(ctx, min_probability=0.001)
    # A fixed seal key: the recording pins the seal's form, which documents already written must keep.
    sealed = dataclasses.replace(ctx, seal_key=bytes(range(32)))
    exp = [(a, 0.7123456789), (EOS, 0.2)]
    w = [0, 0, b, a]
    return [
        key_anomaly(
            floor,
            SessionEvent(ev, "blk_1", 2, w, ("x", 3)),
            KeyVerdict("log_key", b, 0.0123456789, 5, exp),
            wf,
        ),
        key_anomaly(floor, SessionEvent(ev, "blk_1", 2, w), KeyVerdict("log_key", b, 0.0001, 1, exp)),
        key_anomaly(ctx, SessionEvent(ev2, "blk_1", 3, w), KeyVerdict("unseen_key", 1, 0.0, 20, exp)),
        key_anomaly(ctx, SessionEvent(ev, "blk_1", 4, w), KeyVerdict("session_end", EOS, 0.001, 9, exp)),
        key_anomaly(
            ctx, SessionEvent(ev2, "blk_1", 5, w), KeyVerdict("log_key", b, 0.0005, 1, exp, 0.0004), wf
        ),
        parameter_anomaly(
            sealed,
            SessionEvent(ev, "blk_1", 6, [0, b, a], ("12", "x")),
            ParamVerdict(
                key=a,
                dims=[0, 2],
                observed=[4.8, 1.0, 7.25],
                predicted=[0.9, 1.0, 2.0],
                low=[0.7, 0.5, 1.0],
                high=[1.2, 1.5, 3.0],
                error=5.123456,
                threshold=3.29,
            ),
            wf,
        ),
    ]


def _source(action: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in action.items() if not k.startswith("_")}


def test_the_builders_write_the_recorded_json_field_for_field():
    built = _built()
    for d in built:
        created = d["event"].pop("created")
        assert created.endswith("Z") and len(created) == len("2008-11-09T20:36:15.000Z")
    # The same text: same fields, values and order.
    assert json.dumps(built, indent=1) == GOLDEN.read_text().rstrip("\n")


def test_a_document_reads_back_as_it_was_written():
    for action in _built():
        doc = AnomalyDoc.from_source(_source(action))
        assert doc.to_source() == _source(action)
        assert json.dumps(doc.to_source()) == json.dumps(_source(action))
        assert doc.doc_id == action["_id"]
    # Fields other tools add (ECS `tags`, `event.ingested`) are not the job's: ignored, not refused.
    src = _source(_built()[0])
    src["tags"] = ["x"]
    src["event"]["ingested"] = "2020-01-01T00:00:00Z"
    assert AnomalyDoc.from_source(src).deeplog.session.id == "blk_1"


WRONG = [None, "text", 7, 1.5, True, [1], {"a": 1}, float("nan")]


def _leaves(node: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _leaves(v, (*path, k))] + ([path] if path else [])
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _leaves(v, (*path, i))] + [path]
    return [path]


def test_every_wrong_type_is_an_invalid_document_with_its_path_never_a_crash():
    refused = 0
    for action in _built():
        src = _source(action)
        for path in _leaves(src):
            for bad in WRONG:
                doc = copy.deepcopy(src)
                node = doc
                for k in path[:-1]:
                    node = node[k]
                node[path[-1]] = bad
                try:
                    AnomalyDoc.from_source(doc)
                except InvalidAnomaly as e:
                    refused += 1
                    assert str(e).startswith(str(path[0])), (path, bad, e)
        for missing in ("deeplog", "message", "@timestamp"):
            with pytest.raises(InvalidAnomaly, match=f"{missing}: missing"):
                AnomalyDoc.from_source({k: v for k, v in src.items() if k != missing})
    assert refused > 100
    with pytest.raises(InvalidAnomaly, match="deeplog.window.key_ids\\[1\\]: expected an integer"):
        src = _source(_built()[0])
        src["deeplog"]["window"]["key_ids"][1] = "4"
        AnomalyDoc.from_source(src)
    for bad in (None, [], "x", 3):
        with pytest.raises(InvalidAnomaly, match="the document: expected an object"):
            AnomalyDoc.from_source(bad)


def test_feedback_fields_are_read_leniently():
    assert Feedback.from_source({"deeplog": {"feedback": "false_positive", "feedback_by": "a"}}) == Feedback(
        feedback="false_positive", feedback_by="a"
    )
    # Kept as read, so the job reports it as the responder wrote it.
    assert Feedback.from_source({"deeplog": {"feedback": ["fp"]}}).feedback == ["fp"]
    assert Feedback.from_source({"deeplog": {"feedback": 1, "feedback_by": True}}) == Feedback(1, True)
    assert Feedback.from_source({"deeplog": "x"}) == Feedback() == Feedback.from_source([])


# ----------------------------------------------------------------------------------- the index template

# Mapping types a value of each Python type may be written to.
COMPATIBLE = {
    str: {"keyword", "text", "date", "ip"},
    int: {"integer", "long", "short", "keyword"},
    float: {"float", "double", "half_float", "scaled_float"},
    bool: {"boolean"},
}


def _mapped(cls: type, props: dict[str, Any], path: str) -> list[str]:
    """Every field of `cls` the mapping `props` lacks or maps with an incompatible type."""
    problems = []
    hints = field_types(cls)
    for f in dataclasses.fields(cls):
        name = json_name(f)
        where = f"{path}{name}"
        tp = hints[f.name]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if typing.get_origin(tp) is tuple:
            tp = typing.get_args(tp)[0]  # a list maps as its items
        m = props.get(name)
        if m is None:
            problems.append(f"{where}: not mapped")
        elif dataclasses.is_dataclass(tp) or typing.get_origin(tp) is dict:
            if m.get("type", "object") != "object":
                problems.append(f"{where}: mapped as {m.get('type')}, not an object")
            elif dataclasses.is_dataclass(tp) and m.get("enabled", True):
                problems += _mapped(tp, m.get("properties", {}), f"{where}.")
        elif m.get("type") not in COMPATIBLE[tp]:
            problems.append(f"{where}: a {tp.__name__} mapped as {m.get('type')}")
    return problems


def test_the_index_template_maps_every_field_the_document_can_write():
    props = json.loads(TEMPLATE.read_text())["template"]["mappings"]["properties"]
    assert _mapped(AnomalyDoc, props, "") == []
    assert _mapped(Feedback, props["deeplog"]["properties"], "deeplog.") == []
    # The check fails for a field the template does not map.

    @dataclasses.dataclass(frozen=True)
    class Wider:
        deeplog: int
        added: str

    assert _mapped(Wider, props, "") == ["deeplog: a int mapped as object", "added: not mapped"]


# ------------------------------------------------------------------------------------ on the real server


def test_the_feedback_job_marks_a_malformed_document_unsupported_with_the_reason(clients, make_config):
    cfg = make_config(model={"threads": 1, "device": "cpu"})
    create_indices(clients, cfg)
    mcfg = ModelConfig(window=4, top_g=2, epochs=1, hidden=8, embedding=4, batch_size=128, threads=1)
    vocab = syn.vocabulary()
    model, _ = train_key_model(syn.sessions(40), len(vocab), mcfg, progress=lambda m: None)
    store = ModelStore(cfg.model.dir)
    version, path = store.create()
    save_checkpoint(path / KEYMODEL, model, vocab, {})
    store.publish(version)
    good = _source(_built()[0])
    # What the mapping accepts but the document's form does not: a list of windows, a key id as text.
    listed = copy.deepcopy(good)
    listed["deeplog"]["window"] = [listed["deeplog"]["window"]]
    texted = copy.deepcopy(good)
    texted["deeplog"]["key"]["id"] = "4"
    for i, src in enumerate((listed, texted)):
        src["deeplog"]["feedback"] = "false_positive"
        clients.es.index(index=cfg.output.anomalies_index, id=f"bad-{i}", document=src, refresh=True)
    summary = apply_feedback(cfg, clients)
    assert summary.status == "ok", summary.error
    assert dict(summary.feedback) == {"found": 2, UNSUPPORTED: 2}
    assert store.current()[0] == version
    errors = {}
    for i in range(2):
        d = clients.es.get(index=cfg.output.anomalies_index, id=f"bad-{i}")["_source"]["deeplog"]
        assert d["feedback_status"] == UNSUPPORTED
        errors[i] = d["feedback_error"]
    assert "malformed" in errors[0] and "deeplog.window: expected an object, got list" in errors[0]
    assert "deeplog.key.id: expected an integer" in errors[1]


def _typed(cls: type, parts: list[str]) -> bool:
    """`parts` name a field the typed document writes (a text field's `keyword` sub-field included; anything
    under a free-form object such as `workflow`)."""
    if not parts:
        return True
    hints = field_types(cls)
    f = next((f for f in dataclasses.fields(cls) if json_name(f) == parts[0]), None)
    if f is None:
        return False
    tp = hints[f.name]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is tuple:
        tp = typing.get_args(tp)[0]
    if dataclasses.is_dataclass(tp):
        return _typed(tp, parts[1:])
    return typing.get_origin(tp) is dict or parts[1:] in ([], ["keyword"])


def test_the_kibana_objects_use_only_fields_the_document_writes():
    ndjson = REPO / "plugin" / "deeplog_siem" / "assets" / "kibana" / "deeplog-siem.ndjson"
    fields = set(re.findall(r"deeplog\.[a-z_.]*[a-z_]", ndjson.read_text()))
    # The runs index's and the incidents index's documents have their own fields.
    anomaly_fields = {f for f in fields if not f.startswith(("deeplog.run.", "deeplog.incident."))}
    incident_types = mapped("incidents")
    for f in sorted(fields - anomaly_fields):
        if f.startswith("deeplog.incident."):
            assert f.removesuffix(".keyword") in incident_types, f
    assert "deeplog.key.template.keyword" in anomaly_fields and "deeplog.feedback_status" in anomaly_fields
    unknown = [
        f
        for f in sorted(anomaly_fields)
        if not _typed(AnomalyDoc, f.split(".")) and not _typed(Feedback, f.split(".")[1:])
    ]
    assert unknown == []
    assert not _typed(AnomalyDoc, ["deeplog", "key", "nonexistent"])


def test_a_number_out_of_float_range_is_an_invalid_document():
    # JSON has no bound on integers: json.loads gives a Python int that no float can hold.
    for path in (("deeplog", "score"), ("deeplog", "parameter", "error")):
        src = copy.deepcopy(_source(_built()[-1]))
        node = src
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = json.loads("1" + "0" * 400)
        with pytest.raises(InvalidAnomaly, match=re.escape(".".join(path)) + ": number out of range"):
            AnomalyDoc.from_source(src)


def test_the_detector_settings_a_summary_cites_are_required():
    base = {"vocab": Vocabulary(), "model_version": "v1", "run_id": "r1", "index": "a", "message_field": "m"}
    for missing in ("top_g", "min_probability"):
        given = {"top_g": 2, "min_probability": 0.001}
        del given[missing]
        with pytest.raises(TypeError, match=missing):
            DocContext(**base, **given)


@pytest.mark.parametrize("field", ["session", "message"])
def test_the_session_query_finds_only_that_sessions_logs_whatever_its_id(clients, prefix, field):
    """The session id comes from the logs: quotes, backslashes and query syntax in it stay one phrase."""
    from deeplog_siem.anomaly import session_query

    hostile = 'blk_1\\" OR *:* OR "x'
    index = f"{prefix}-logs"
    mappings = {"properties": {"session": {"type": "keyword"}, "message": {"type": "text"}}}
    clients.es.indices.create(index=index, mappings=mappings)
    for i, sid in enumerate([hostile, "blk_1", "blk_2", "x"]):
        clients.es.index(index=index, id=str(i), document={"session": sid, "message": f"open {sid}"})
    clients.es.indices.refresh(index=index)
    q = session_query("session" if field == "session" else None, hostile, "message")
    hits = clients.es.search(index=index, query={"query_string": {"query": q}})["hits"]["hits"]
    assert [h["_id"] for h in hits] == ["0"], q


@pytest.mark.parametrize("stream", ["web-01|4242", "web-01|-", "-|4242"])
def test_the_session_query_of_an_entity_stream_finds_that_streams_logs(clients, prefix, stream):
    """An entity stream's id joins its fields' values ("-" where a document lacks one): the query asks for
    each field, so Discover shows the stream's logs and no other host's or process's."""
    from deeplog_siem.anomaly import session_query
    from deeplog_siem.config import SourceConfig
    from deeplog_siem.sessions import MISSING_ENTITY, SessionKeyer

    index = f"{prefix}-logs"
    mappings = {
        "properties": {"host": {"properties": {"name": {"type": "keyword"}}}, "pid": {"type": "keyword"}}
    }
    clients.es.indices.create(index=index, mappings=mappings)
    docs = [
        {"host": {"name": "web-01"}, "pid": "4242"},
        {"host": {"name": "web-01"}, "pid": "7"},
        {"host": {"name": "web-02"}, "pid": "4242"},
        {"host": {"name": "web-01"}},
        {"pid": "4242"},
    ]
    keyer = SessionKeyer(SourceConfig(index=index, entity_fields=("host.name", "pid")))
    for i, doc in enumerate(docs):
        clients.es.index(index=index, id=str(i), document={**doc, "message": f"line {i}"})
    clients.es.indices.refresh(index=index)
    q = session_query("host.name,pid", stream, "message", missing=MISSING_ENTITY)
    hits = clients.es.search(index=index, query={"query_string": {"query": q}})["hits"]["hits"]
    expected = [str(i) for i, d in enumerate(docs) if keyer.session_of("", d) == stream]
    assert expected and sorted(h["_id"] for h in hits) == expected, q
