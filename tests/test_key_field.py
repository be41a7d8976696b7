"""`source.key_field`: the log key read from a field that already names the event, on the real (embedded)
server, with real Windows CBS/CSI events (loghub Windows_2k, each line's ground-truth event id indexed as
`event.code`, as Windows event logs carry it), sessions by component, and the line's byte offset
(`log.offset`) as the numeric parameter of `source.param_fields`. No templating: every distinct code is one
key; a document without the key field is counted (`no_key`), never dropped silently.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from deeplog_siem.artifacts import TEMPLATER, ModelStore
from deeplog_siem.config import parse_config
from deeplog_siem.errors import ArtifactError, ConfigError
from deeplog_siem.fieldkeys import STATE_FILE, FieldKeys
from deeplog_siem.runner import Detection, run_once, train
from deeplog_siem.setup_assets import create_indices

from ._loghub import index_docs, iso, rows, windows_time
from .conftest import config_data

MODEL = {"epochs": 4, "patience": 2, "threads": 1, "device": "cpu"}
SOURCE = {"session_regex": None, "session_field": "process.name", "key_field": "event.code"}


def _doc(r: dict[str, str]) -> dict:
    return {
        "@timestamp": iso(windows_time(r)),
        "message": r["Content"],
        "host": {"name": "win-srv-01"},
        "process": {"name": r["Component"]},
        "event": {"code": r["EventId"]},
        "log": {"offset": int(r["offset"])},
    }


def _without_code(doc: dict) -> dict:
    return {**doc, "event": {}}


def test_key_field_settings_are_validated(es_section):
    base = {"elasticsearch": es_section, "source": {"index": "logs", "session_field": "x"}}
    cfg = parse_config({**base, "source": {**base["source"], "key_field": "event.code"}})
    assert cfg.source.key_field == "event.code" and cfg.source.param_fields == ()
    with pytest.raises(ConfigError, match=r"^source\.param_fields: needs source\.key_field"):
        parse_config({**base, "source": {**base["source"], "param_fields": ["log.offset"]}})
    with pytest.raises(ConfigError, match=r"^source\.key_field: must name a field"):
        parse_config({**base, "source": {**base["source"], "key_field": " "}})
    with pytest.raises(ConfigError, match=r"^source\.param_fields: lists a field twice"):
        parse_config({**base, "source": {**base["source"], "key_field": "k", "param_fields": ["a", "a"]}})


def test_windows_event_codes_as_keys_end_to_end(clients, es_section, prefix, tmp_path):
    data = rows("Windows")
    cfg = parse_config(
        config_data(
            es_section,
            prefix,
            tmp_path / "models",
            source={**SOURCE, "index": f"{prefix}-win", "param_fields": ["log.offset"]},
            model=MODEL,
        )
    )
    create_indices(clients, cfg)  # strict mappings: every anomaly and run document must fit them

    # Training: the first 1,500 lines; five lost their code, one holds a list of codes.
    train_docs = [_doc(r) for r in data[:1500]]
    for i in range(100, 105):
        train_docs[i] = _without_code(train_docs[i])
    train_docs[200] = {**train_docs[200], "event": {"code": ["E1", "E2"]}}
    index_docs(clients, f"{prefix}-win-train", train_docs, run="train")
    t = train(cfg, clients, index=f"{prefix}-win-train")
    assert t.docs == 1500
    assert t.skipped == {"no_key": 5, "bad_key": 1}
    codes = list(
        dict.fromkeys(d["event"]["code"] for d in train_docs if isinstance(d["event"].get("code"), str))
    )
    assert t.templates == len(codes) and t.sessions == len({r["Component"] for r in data[:1500]})
    # The keys are the codes, in order of appearance, saved with the version instead of a templater.
    version, path = ModelStore(cfg.model.dir).current()
    assert (path / TEMPLATER / STATE_FILE).is_file()
    keys = FieldKeys.load(path / TEMPLATER, cfg.source)
    assert keys.vocab.templates[3:] == [f"event.code={c}" for c in codes]
    # The parameter model's vectors are (time gap, log.offset).
    modelled = t.report["params"]["modelled"]
    assert modelled and all(m["dim"] == 2 for m in modelled.values())

    # Detection: the last 500 lines, three without a code, one with a code training never saw.
    test_docs = [_doc(r) for r in data[1500:]]
    for i in (10, 11, 300):
        test_docs[i] = _without_code(test_docs[i])
    test_docs.insert(250, {**test_docs[250], "event": {"code": "E999"}})
    index_docs(clients, cfg.source.index, test_docs, run="test")
    s = run_once(cfg, clients, close_sessions=True)
    assert s.status == "ok", s.error
    assert s.docs_read == 501 and s.skipped == {"no_key": 3} and s.processed == 498
    clients.es.indices.refresh(index=cfg.output.anomalies_index)
    hits = clients.es.search(
        index=cfg.output.anomalies_index, query={"term": {"deeplog.source.id": "test-250"}}, size=10
    )["hits"]["hits"]
    assert [h["_source"]["deeplog"]["anomaly_type"] for h in hits] == ["unseen_key"]
    assert hits[0]["_source"]["deeplog"]["session"]["id"] == test_docs[250]["process"]["name"]
    clients.es.indices.refresh(index=cfg.output.runs_index)
    run = clients.es.get(index=cfg.output.runs_index, id=s.run_id)["_source"]["deeplog"]["run"]
    assert run["skipped"] == {"no_key": 3}

    # A configuration that templates the message cannot load this version, and says why.
    templating = cfg.replace(
        source=cfg.source.__class__(**{**vars(cfg.source), "key_field": None, "param_fields": ()})
    )
    with pytest.raises(ArtifactError, match=r"takes its log keys from a field \(source\.key_field\)"):
        Detection.load(templating)
    other = cfg.replace(source=cfg.source.__class__(**{**vars(cfg.source), "key_field": "event.action"}))
    with pytest.raises(ArtifactError, match=r"trained with source\.key_field 'event\.code'"):
        Detection.load(other)
    assert Path(cfg.model.dir, version).is_dir()


def test_field_values_are_read_as_untrusted(tmp_path):
    cfg = parse_config(
        {
            "elasticsearch": {"hosts": ["http://127.0.0.1:9200"]},
            "source": {
                "index": "x",
                "session_field": "host.name",
                "key_field": "event.code",
                "param_fields": ["size", "process.pid"],
            },
        }
    ).source
    keys = FieldKeys(cfg)
    docs = [
        {"event": {"code": 4624}, "size": "12", "process": {"pid": 7}},
        {"event.code": "4624", "size": 3.5, "process.pid": "8"},  # dotted names, as some shippers write
        {"event": {"code": True}, "size": "NaN", "process": {"pid": 1}},
        {"event": {"code": "4625"}, "size": float("inf"), "process": {"pid": 1}},
        {"event": {"code": "4625"}, "process": {"pid": 1}},
        {"event": {"code": ["4624", "4625"]}},
        {"event": {"code": "x" * 600}},
        {"event": {"code": ""}},
        {"event": {}},
    ]
    got = keys.parse_docs(docs, learn=True)
    assert [None if e is None else e.template for e in got] == [
        "event.code=4624",
        "event.code=4624",
        "event.code=true",
        "event.code=4625",
        "event.code=4625",
        None,
        None,
        None,
        None,
    ]
    assert got[0].numbers == (12.0, 7.0) and got[1].numbers == (3.5, 8.0) and got[1].params == ("3.5", "8")
    assert [e.numbers for e in got[2:5]] == [(), (), ()]
    assert keys.skipped == {"bad_key": 2, "no_key": 2} and keys.stats == {"param_missing": 3}
    # Detection: a value training never saw is UNK, with the value as its text.
    (unseen,) = keys.parse_docs([{"event": {"code": 4740}, "size": 1, "process": {"pid": 2}}], learn=False)
    assert (unseen.key, unseen.template) == (1, "4740") and keys.num_templates == 3

    keys.save(tmp_path)
    back = FieldKeys.load(tmp_path, cfg)
    assert back.vocab.templates == keys.vocab.templates
    text = (tmp_path / STATE_FILE).read_text().replace("4625", "4626")
    (tmp_path / STATE_FILE).write_text(text)
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        FieldKeys.load(tmp_path, cfg)
