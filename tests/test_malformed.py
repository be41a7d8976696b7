"""Bad input never stops a run and is never lost: malformed source documents (property-based, on the real
server) are counted by reason, and anomaly writes the anomaly index refuses are counted, not fatal."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from elasticsearch import helpers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deeplog_lab.replay import EPOCH, documents, load_sample, render
from deeplog_siem.config import parse_config
from deeplog_siem.es import Clients
from deeplog_siem.runner import Detection, run_once, train
from deeplog_siem.state import load_state

# The source index as a shipper without parsing would leave it: only the order fields are mapped, a date
# that does not parse is kept in _source (ignore_malformed), anything else is stored unindexed.
SOURCE_MAPPING = {
    "dynamic": False,
    "properties": {
        "@timestamp": {"type": "date", "ignore_malformed": True},
        "event": {"properties": {"ingested": {"type": "date"}}},
    },
}


def config(es_section: dict, prefix: str, model_dir: Path):
    return parse_config(
        {
            "elasticsearch": es_section,
            "source": {"index": f"{prefix}-logs", "session_regex": r"(blk_-?\d+)", "query_delay_seconds": 0},
            "model": {"dir": str(model_dir), "device": "cpu", "epochs": 2, "patience": 1},
            "output": {
                "anomalies_index": f"{prefix}-anomalies",
                "runs_index": f"{prefix}-runs",
                "workflows_index": f"{prefix}-workflows",
                "state_index": f"{prefix}-state",
            },
        }
    )


@pytest.fixture(scope="module")
def lines():
    return render(load_sample().test[:40], seed=71, start=EPOCH + timedelta(days=1))


@pytest.fixture(scope="module")
def model_dir(clients: Clients, es_section: dict, tmp_path_factory) -> Iterator[Path]:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    d = tmp_path_factory.mktemp("model")
    cfg = config(es_section, prefix, d)
    docs = list(documents(render(load_sample().train[:100], seed=72), f"{prefix}-train", run="train"))
    helpers.bulk(clients.es, docs)
    clients.es.indices.refresh(index=f"{prefix}-train")
    try:
        train(cfg, clients, index=f"{prefix}-train")
        yield d
    finally:
        clients.es.options(ignore_status=404).indices.delete(index=f"{prefix}*", expand_wildcards="all")


def iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Categories whose outcome is known: processed (good), skipped (bad), either (binary noise may name a block).
GOOD, BAD, EITHER = "good", "bad", "either"
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
bad_timestamps = st.one_of(
    st.sampled_from(["", "yesterday", "2008-13-45T25:61:00Z", "10000-01-01T00:00:00Z", "-0001-01-01"]),
    text.map(lambda s: "x" + s),
    st.integers(min_value=253402300800000, max_value=2**63 - 1),  # epoch ms after the year 9999
    st.integers(min_value=-(2**63), max_value=-62135596800001),  # before the year 1
    st.floats(min_value=1e16, max_value=1e300),
    st.booleans(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.sampled_from("ab"), st.integers(), max_size=2),
)
wrong_messages = st.one_of(
    st.none(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.lists(text, max_size=3),
    st.dictionaries(st.sampled_from("ab"), text, max_size=2),
    st.just(""),
)
binary = st.text(st.characters(max_codepoint=0x1F), min_size=1, max_size=200)


@st.composite
def source_doc(draw, lines):
    line = draw(st.sampled_from(lines))
    ts = iso(line.time)
    kind = draw(st.sampled_from(["good", "huge", "no_message", "wrong_message", "binary", "no_ts", "bad_ts"]))
    if kind == "good":
        return GOOD, {"@timestamp": ts, "message": line.message, "host": {"name": line.host}}
    if kind == "huge":
        pad = draw(st.integers(min_value=20_000, max_value=60_000))
        return GOOD, {"@timestamp": ts, "message": line.message + " " + "x" * pad}
    if kind == "no_message":
        return BAD, {"@timestamp": ts}
    if kind == "wrong_message":
        return BAD, {"@timestamp": ts, "message": draw(wrong_messages)}
    if kind == "binary":
        return EITHER, {"@timestamp": ts, "message": draw(binary)}
    if kind == "no_ts":
        return BAD, {"message": line.message}
    return BAD, {"@timestamp": draw(bad_timestamps), "message": line.message}


def test_malformed_documents_are_counted_and_never_fatal(clients, es_section, prefix, model_dir, lines):
    cfg = config(es_section, prefix, model_dir)
    clients.es.indices.create(index=cfg.source.index, mappings=SOURCE_MAPPING)
    det = Detection.load(cfg)
    base = datetime.now(UTC) - timedelta(hours=1)
    totals: Counter[str] = Counter()
    batch_no = [0]

    @settings(
        max_examples=20,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(batch=st.lists(source_doc(lines), min_size=1, max_size=25))
    def check(batch):
        n = batch_no[0] = batch_no[0] + 1
        ingested = iso(base + timedelta(seconds=n))  # every batch is newer than the last checkpoint
        docs = []
        for i, (_kind, src) in enumerate(batch):
            docs.append(
                {"_index": cfg.source.index, "_id": f"b{n}-{i}", **src, "event": {"ingested": ingested}}
            )
        accepted = Counter()
        for (kind, _), (ok, _item) in zip(
            batch, helpers.streaming_bulk(clients.es, docs, raise_on_error=False), strict=True
        ):
            if ok:  # what the server refuses never reaches the source; the job answers for the rest
                accepted[kind] += 1
        clients.es.indices.refresh(index=cfg.source.index)

        summary = run_once(cfg, clients, detection=det)
        assert summary.status == "ok", summary.error
        assert summary.docs_read == sum(accepted.values())
        assert summary.processed + sum(summary.skipped.values()) == summary.docs_read, summary.skipped
        assert accepted[GOOD] <= summary.processed <= accepted[GOOD] + accepted[EITHER]
        assert sum(summary.skipped.values()) >= accepted[BAD]
        totals.update(accepted)
        totals["docs_read"] += summary.docs_read
        totals.update({f"skipped.{k}": v for k, v in summary.skipped.items()})

    check()
    assert totals["docs_read"] == totals[GOOD] + totals[BAD] + totals[EITHER] > 0
    assert totals["skipped.bad_timestamp"] > 0 and totals["skipped.not_string"] > 0, totals
    # Every run left its document, and together they account for every document the source holds.
    clients.es.indices.refresh(index=cfg.output.runs_index)
    runs = clients.es.search(index=cfg.output.runs_index, size=1000)["hits"]["hits"]
    assert sum(h["_source"]["deeplog"]["run"]["docs_read"] for h in runs) == totals["docs_read"]
    assert clients.es.count(index=cfg.source.index)["count"] == totals["docs_read"]


def test_mapping_conflict_in_the_anomaly_index_is_counted_not_fatal(
    clients, es_section, prefix, model_dir, lines
):
    cfg = config(es_section, prefix, model_dir)
    # Someone mapped host.name as an IP address: anomalies of events from named hosts cannot be stored.
    clients.es.indices.create(
        index=cfg.output.anomalies_index,
        mappings={"properties": {"host": {"properties": {"name": {"type": "ip"}}}}},
    )
    docs = list(documents(lines, cfg.source.index, run="ok"))
    # Unseen messages (no learned template matches): each one is an anomaly; half come from named hosts.
    novel = [
        {
            "_index": cfg.source.index,
            "_id": f"novel-{i}",
            "@timestamp": iso(EPOCH + timedelta(days=1, seconds=i)),
            "message": f"081110 000000 42 INFO dfs.Quux: blk_{9000 + i} flux capacitor overheated at {i}",
            "host": {"name": f"datanode-{i}" if i % 2 else f"10.250.0.{i + 1}"},
        }
        for i in range(20)
    ]
    helpers.bulk(clients.es, docs + novel)
    clients.es.indices.refresh(index=cfg.source.index)

    summary = run_once(cfg, clients)
    assert summary.status == "degraded"  # finished, but some anomalies were refused for good
    assert summary.docs_read == len(docs) + len(novel)
    assert summary.anomalies["unseen_key"] >= len(novel)
    assert sum(summary.rejected.values()) == len(novel) // 2
    assert set(summary.rejected) == {"mapper_parsing_exception"}
    clients.es.indices.refresh(index=cfg.output.anomalies_index)
    stored = clients.es.count(index=cfg.output.anomalies_index)["count"]
    assert stored == summary.anomalies_total - len(novel) // 2
    # Counted, then passed: the checkpoint moved on, a second run has nothing to read.
    assert load_state(clients, cfg.output.state_index, "detect").checkpoint is not None
    assert run_once(cfg, clients).docs_read == 0
