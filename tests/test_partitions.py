"""Partitions: the key function against Java's String.hashCode, the key ranges, and partitioned reads and runs on
the embedded server over real HDFS lines keyed by the shipped ingest pipeline (its Python interpreter)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from elasticsearch import helpers

from deeplog_lab.replay import documents, load_sample, render
from deeplog_siem.config import parse_config
from deeplog_siem.errors import ConfigError
from deeplog_siem.es import Clients
from deeplog_siem.partitions import (
    KEYS,
    Partition,
    all_partitions,
    document_key,
    java_string_hash,
    partition_key,
)
from deeplog_siem.runner import run_once, run_partition, train
from deeplog_siem.source import Source
from deeplog_siem.state import load_state, state_id

from .conftest import config_data, need_data
from .test_ingest_patterns import ingest, ingest_pipelines

FIELD = "deeplog.partition"
SMALL_MODEL = {"epochs": 1, "hidden": 8, "embedding": 8, "layers": 1, "threads": 1, "device": "cpu"}


def test_partition_key_is_javas_string_hash_floor_mod_1024():
    # Values of java.lang.String.hashCode().
    assert java_string_hash("hello") == 99162322
    assert java_string_hash("") == 0
    assert java_string_hash("Hello World") == -862545276  # int32 overflow: negative
    assert java_string_hash("polygenelubricants") == -(2**31)
    # A non-BMP character is two UTF-16 code units (a surrogate pair), as Java hashes it.
    assert java_string_hash("\U0001f600") == 0xD83D * 31 + 0xDE00
    assert partition_key("hello") == 99162322 % 1024 == 210
    assert partition_key("") == 0
    assert partition_key("Hello World") == 644  # Math.floorMod, not the remainder (-380)
    assert partition_key("polygenelubricants") == 0


@pytest.mark.parametrize("count", [1, 2, 3, 7, 1024])
def test_partitions_tile_the_key_space(count):
    parts = all_partitions(count, FIELD)
    owners = [[p.index for p in parts if p.covers(k)] for k in range(KEYS)]
    assert all(len(o) == 1 for o in owners)
    assert parts[0].lo == 0 and parts[-1].hi == KEYS
    assert {p.suffix for p in parts} == {f".p{i}of{count}" for i in range(count)}


def test_a_document_belongs_to_exactly_one_partition_whatever_its_key_field_holds():
    parts = all_partitions(3, FIELD)  # keys [0, 341), [341, 682), [682, 1024)
    cases = [
        (None, 0),
        ("", 0),
        ("abc", 0),
        (True, 0),
        (-1, 0),
        (1024, 0),
        (float("nan"), 0),
        (5, 0),
        (400, 1),
        ("400", 1),  # a numeric string, as the server coerces it
        (1023.5, 2),
        ([5, 900], 2),  # a list: the largest usable key decides
        ([400, 5000], 1),
        ([-3, 7], 0),
    ]
    for value, owner in cases:
        assert [p.index for p in parts if p.owns(value)] == [owner], value


def test_bad_workers_settings_name_the_key(make_config):
    with pytest.raises(ConfigError, match=r"workers\.partitions: must be 1 to 1024, got 0"):
        make_config(workers={"partitions": 0})
    with pytest.raises(ConfigError, match=r"workers\.worker_id: must be"):
        make_config(workers={"worker_id": "a b"})
    with pytest.raises(
        ConfigError, match=r"workers\.partitons: unknown key \(did you mean workers\.partitions\?\)"
    ):
        make_config(workers={"partitons": 2})
    assert make_config(workers={"partitions": 4}).workers.partitions == 4


# ------------------------------------------------------------------------------- on the embedded server


def keyed_hdfs_docs(index: str, limit: int | None = None) -> list[dict]:
    """Real HDFS lines through the shipped deeplog-hdfs pipeline (the interpreter), which sets
    deeplog.partition; every ninth as a shipper that does not set it would send it."""
    pipelines = ingest_pipelines()
    lines = need_data("hdfs_raw", "HDFS_2k.log").read_text(encoding="utf-8").splitlines()[:limit]
    docs = []
    for i, line in enumerate(lines):
        doc = ingest(pipelines, "deeplog-hdfs", line)
        if i % 9 == 4:
            del doc["deeplog"]
        docs.append({"_index": index, "_id": f"hdfs-{i}", **doc})
    return docs


def create_source(clients: Clients, index: str) -> None:
    clients.es.indices.create(
        index=index,
        mappings={
            "properties": {
                "@timestamp": {"type": "date"},
                "event": {"properties": {"ingested": {"type": "date"}}},
                "message": {"type": "text"},
                "deeplog": {"properties": {"partition": {"type": "integer"}}},
            }
        },
    )


def index_all(clients: Clients, docs: list[dict]) -> None:
    ok, errors = helpers.bulk(clients.es, docs, chunk_size=2000, raise_on_error=False)
    assert not errors and ok == len(docs), errors[:3]
    clients.es.indices.refresh(index=docs[0]["_index"])


def odd_keys(index: str, template: dict) -> list[dict]:
    """Documents whose key field a careless shipper filled: out of range, negative, a list."""
    out = []
    for n, value in enumerate([5000, -3, [5, 900], [400, 900], "400"]):
        doc = {k: v for k, v in template.items() if k not in ("_id", "deeplog")}
        out.append({**doc, "_id": f"odd-{n}", "deeplog": {"partition": value}})
    return out


def test_partition_reads_are_disjoint_and_cover_a_real_index(clients, make_config, prefix):
    cfg = make_config(source={"page_size": 300})
    create_source(clients, cfg.source.index)
    docs = keyed_hdfs_docs(cfg.source.index)
    docs += odd_keys(cfg.source.index, docs[0])
    index_all(clients, docs)
    keyed = [d for d in docs if "deeplog" in d and d["_id"].startswith("hdfs-")]
    assert 0 < len(docs) - len(keyed) < len(docs)
    assert all(d["deeplog"]["partition"] == partition_key(d["hdfs"]["block_id"]) for d in keyed)

    for count in (1, 3, 8):
        seen: Counter[str] = Counter()
        read = 0
        for part in all_partitions(count, FIELD):
            source = Source(clients, cfg.source, partition=part)
            for page in source.pages():
                read += len(page)
                # What the detection run processes of what the partition's range reads.
                seen.update(d.id for d in page if part.owns(d.get(FIELD)) or count == 1)
        assert set(seen) == {d["_id"] for d in docs}, count
        assert set(seen.values()) == {1}, count
        # The server filtered: only [400, 900] falls in two partitions' ranges.
        assert read == len(docs) + (count > 1), count


def test_a_text_key_field_is_refused_with_the_setting_named(clients, make_config):
    cfg = make_config()
    index_all(
        clients, [{"_index": cfg.source.index, "_id": "1", "message": "x", "deeplog": {"partition": "a"}}]
    )
    with pytest.raises(ConfigError, match=r"workers\.partition_field: deeplog\.partition is mapped as"):
        Source(clients, cfg.source, partition=Partition(1, 2, FIELD))


@pytest.fixture(scope="module")
def small_model(clients: Clients, es_section: dict, tmp_path_factory) -> Iterator[Path]:
    """A small real model for the module, trained on 150 normal HDFS sessions."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    d = tmp_path_factory.mktemp("model")
    cfg = parse_config(config_data(es_section, prefix, d, model=SMALL_MODEL, params={"enabled": False}))
    index_all(clients, list(documents(render(load_sample().train[:150], seed=3), f"{prefix}-train", run="t")))
    try:
        train(cfg, clients, index=f"{prefix}-train")
        yield d
    finally:
        clients.es.options(ignore_status=404).indices.delete(index=f"{prefix}*", expand_wildcards="all")


def partitioned(es_section: dict, prefix: str, model_dir: Path, count: int, **sections: dict):
    return parse_config(
        config_data(
            es_section,
            prefix,
            model_dir,
            model={"device": "cpu"},
            params={"enabled": False},
            workers={"partitions": count, "worker_id": "w1"},
            schedule={"chunk_size": 400},
            **sections,
        )
    )


def run_docs(clients: Clients, index: str) -> list[dict]:
    clients.es.indices.refresh(index=index)
    hits = clients.es.search(index=index, query={"term": {"deeplog.run.job": "detect"}}, size=1000)
    return [h["_source"]["deeplog"]["run"] for h in hits["hits"]["hits"]]


def test_missing_keys_are_processed_once_by_partition_0_and_counted(
    clients, es_section, prefix, small_model, caplog
):
    cfg = partitioned(es_section, prefix, small_model, 3)
    create_source(clients, cfg.source.index)
    docs = keyed_hdfs_docs(cfg.source.index, limit=1200)
    docs += odd_keys(cfg.source.index, docs[0])
    index_all(clients, docs)
    parts = all_partitions(3, FIELD)
    unkeyed = sum(1 for d in docs if document_key((d.get("deeplog") or {}).get("partition")) is None)
    summaries = [run_partition(cfg, clients, partition=p, worker="w1") for p in parts]
    assert all(s is not None and s.status == "ok" for s in summaries)
    assert sum(s.docs_read for s in summaries) == len(docs)
    assert summaries[0].docs_unpartitioned == unkeyed > 0
    assert [s.docs_unpartitioned for s in summaries[1:]] == [0, 0]
    # [400, 900] is read by two ranges; the partition that does not own it counts it.
    assert [s.docs_other_partition for s in summaries] == [0, 1, 0]
    assert "documents had no usable deeplog.partition: partition 0 processed them" in caplog.text
    recorded = {r["partition"]["id"]: r for r in run_docs(clients, cfg.output.runs_index)}
    assert sorted(recorded) == [0, 1, 2]
    assert all(r["partition"]["of"] == 3 and r["worker"] == "w1" for r in recorded.values())
    assert recorded[0]["docs_unpartitioned"] == unkeyed
    assert all(r["checkpoint_from"] is None and r["checkpoint_to"] for r in recorded.values())
    # Each partition has its own state; nothing read again on a second pass.
    for p in parts:
        assert load_state(clients, cfg.output.state_index, state_id("default", partition=p)).checkpoint
    again = [run_partition(cfg, clients, partition=p, worker="w1") for p in parts]
    assert [s.docs_read for s in again if s is not None] == [0, 0, 0]


def test_an_unpartitioned_state_is_split_and_the_layout_then_kept(clients, es_section, prefix, small_model):
    single = partitioned(es_section, prefix, small_model, 1)
    create_source(clients, single.source.index)
    docs = keyed_hdfs_docs(single.source.index, limit=1200)
    index_all(clients, docs[:600])
    first = run_once(single, clients)
    assert first.status == "ok" and first.docs_read == 600
    base = load_state(clients, single.output.state_index, state_id("default"))
    open_sessions = set(base.sessions["sessions"])

    index_all(clients, docs[600:])
    cfg = partitioned(es_section, prefix, small_model, 2)
    parts = all_partitions(2, FIELD)
    summaries = [run_partition(cfg, clients, partition=p, worker="w1") for p in parts]
    # Each partition started from the unpartitioned checkpoint: the rest, once.
    assert sum(s.docs_read for s in summaries if s is not None) == len(docs) - 600
    for s in summaries:
        assert s is not None and s.checkpoint_from == list(base.checkpoint.sort)
    assert open_sessions
    assert load_state(clients, single.output.state_index, state_id("default")).split == 2

    with pytest.raises(ConfigError, match=r"split into 2 partitions.*set workers\.partitions: 2"):
        run_once(single, clients)
    with pytest.raises(ConfigError, match=r"split into 2 partitions, not 3; set workers\.partitions: 2"):
        run_partition(
            partitioned(es_section, prefix, small_model, 3),
            clients,
            partition=Partition(0, 3, FIELD),
            worker="w1",
        )


def test_the_tails_of_an_unpartitioned_state_go_to_their_sessions_partitions(
    clients, es_section, prefix, small_model
):
    single = partitioned(es_section, prefix, small_model, 1)
    create_source(clients, single.source.index)
    index_all(clients, keyed_hdfs_docs(single.source.index, limit=500))
    assert run_once(single, clients).status == "ok"
    before = set(load_state(clients, single.output.state_index, state_id("default")).sessions["sessions"])
    cfg = partitioned(es_section, prefix, small_model, 2)
    parts = all_partitions(2, FIELD)
    for p in parts:
        assert run_partition(cfg, clients, partition=p, worker="w1") is not None
    after = [
        set(
            load_state(clients, cfg.output.state_index, state_id("default", partition=p)).sessions["sessions"]
        )
        for p in parts
    ]
    assert after[0] | after[1] == before and not after[0] & after[1]
    assert all(p.owner_of_session(s) for p, own in zip(parts, after, strict=True) for s in own)
