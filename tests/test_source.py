"""Incremental reads against the real server: pages, resume from a checkpoint, ties, filters, slices."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

import pytest

from deeplog_lab.replay import index_lines, render
from deeplog_siem.source import Checkpoint, Source, advance, get_field
from deeplog_siem.state import JobState, load_state, save_state

from .conftest import real_cluster


def _index(clients, prefix, n_sessions=40, seed=3):
    lines = render([[5, 22, 5, 5, 11, 9, 11, 9, 26, 26]] * n_sessions, seed=seed)
    index_lines(clients, f"{prefix}-logs", lines, chunk_size=150)
    return lines


def test_reads_every_document_once_in_order(clients, prefix, make_config):
    lines = _index(clients, prefix)
    cfg = make_config(source={"page_size": 37})
    src = Source(clients, cfg.source)
    assert src.order_field == "event.ingested"
    docs = [d for page in src.pages() for d in page]
    assert len(docs) == len(lines)
    assert len({d.id for d in docs}) == len(lines)
    assert [d.sort for d in docs] == sorted(d.sort for d in docs)
    # Within one ingest chunk the log order is kept, so each session's events stay in order.
    assert [d.get("message") for d in docs] == [ln.message for ln in lines]


def test_resume_from_checkpoint_has_no_gap_or_repeat(clients, prefix, make_config):
    lines = _index(clients, prefix)
    cfg = make_config(source={"page_size": 50})
    src = Source(clients, cfg.source)
    seen: list[str] = []
    cp = None
    # Stop after arbitrary amounts, including in the middle of documents sharing their sort values
    # (a whole ingest chunk carries one event.ingested value and many share a second).
    for limit in (7, 1, 149, 150, 3, 10_000):
        for page in src.pages(cp, limit=limit):
            for d in page:
                seen.append(d.id)
                cp = Checkpoint(d.sort, (d.id,)) if cp is None else cp.advance(d)
    assert len(seen) == len(lines)
    assert len(set(seen)) == len(lines)


def test_falls_back_to_timestamp_order_without_checkpoint_field(clients, prefix, make_config):
    clients.es.index(
        index=f"{prefix}-logs", id="a", document={"@timestamp": "2024-01-01T00:00:02Z", "message": "b"}
    )
    clients.es.index(
        index=f"{prefix}-logs", id="b", document={"@timestamp": "2024-01-01T00:00:01Z", "message": "a"}
    )
    clients.es.indices.refresh(index=f"{prefix}-logs")
    src = Source(clients, make_config().source)
    assert src.order_field == "@timestamp"
    assert [d.get("message") for p in src.pages() for d in p] == ["a", "b"]
    assert [d.get("message") for p in src.pages(start="2024-01-01T00:00:02Z") for d in p] == ["b"]


def test_query_filter_and_missing_index(clients, prefix, make_config):
    cfg = make_config(source={"query": {"term": {"host.name": "nope"}}})
    assert list(Source(clients, cfg.source).pages()) == []
    _index(clients, prefix, n_sessions=3)
    assert list(Source(clients, cfg.source).pages()) == []


def test_get_field_handles_nested_and_dotted():
    assert get_field({"host": {"name": "h"}}, "host.name") == "h"
    assert get_field({"host.name": "h"}, "host.name") == "h"
    assert get_field({"event": {"ingested": 1}}, "event.ingested") == 1
    assert get_field({"host": "plain"}, "host.name") is None


def test_state_round_trip(clients, prefix):
    index = f"{prefix}-state"
    assert load_state(clients, index, "detect").checkpoint is None
    st = JobState("detect", Checkpoint((1, 2), ("x", "y")), {"s1": {"keys": [3, 4]}}, "v1")
    save_state(clients, index, st)
    back = load_state(clients, index, "detect")
    assert back.checkpoint == st.checkpoint
    assert back.sessions == st.sessions
    assert back.model_version == "v1"


def test_identical_sort_values_across_page_boundaries(clients, prefix, make_config):
    """Regression: search_after must not skip documents that tie with the last hit of a page."""
    index = f"{prefix}-logs"
    same = {"@timestamp": "2024-01-01T00:00:00.000Z", "event": {"ingested": "2024-01-01T00:00:01.000Z"}}
    for i in range(30):
        clients.es.index(index=index, id=f"d{i:02d}", document={**same, "message": f"m{i}"})
    clients.es.indices.refresh(index=index)
    src = Source(clients, make_config(source={"page_size": 7}).source)
    docs = [d for p in src.pages() for d in p]
    assert sorted(d.id for d in docs) == [f"d{i:02d}" for i in range(30)]
    # Resuming in the middle of the tie continues with exactly the documents not yet processed.
    cp = None
    for d in docs[:11]:
        cp = Checkpoint(d.sort, (d.id,)) if cp is None else cp.advance(d)
    rest = [d.id for p in src.pages(cp) for d in p]
    assert sorted(rest) == sorted(d.id for d in docs[11:])


def test_newest_document_gives_the_lag_behind_the_checkpoint(clients, prefix, make_config):
    from deeplog_siem.runner import _lag

    src = Source(clients, make_config().source)
    assert src.newest() is None  # no index yet
    for i, ingested in enumerate(("2024-01-01T00:00:00Z", "2024-01-01T00:01:00Z", "2024-01-01T00:01:30Z")):
        doc = {"@timestamp": ingested, "event": {"ingested": ingested}, "message": f"m{i}"}
        clients.es.index(index=f"{prefix}-logs", id=str(i), document=doc)
    clients.es.indices.refresh(index=f"{prefix}-logs")
    first = [d for p in src.pages(limit=1) for d in p]
    cp = Checkpoint(first[0].sort, (first[0].id,))
    assert _lag(src, cp) == 90.0
    assert _lag(src, cp.advance_many(d for p in src.pages(cp) for d in p)) == 0.0
    assert _lag(src, None) is None  # nothing processed yet: no checkpoint to measure from


def _plain_search_after(src: Source) -> list[str]:
    """Reference order: one point in time, plain search_after, the same query throughout (no slices, no
    narrowing of the range), page after page."""
    pit = src._open_pit()
    body = {
        "size": 13,
        "query": src._query(None, None, None),
        "sort": [*src._sort(), {"_shard_doc": "asc"}],
        "pit": {"id": pit, "keep_alive": "1m"},
        "_source": False,
    }
    ids: list[str] = []
    try:
        while hits := src.clients.es.search(**body)["hits"]["hits"]:
            ids += [h["_id"] for h in hits]
            body["search_after"] = hits[-1]["sort"]
    finally:
        src._close_pit(pit)
    return ids


def test_sliced_and_narrowed_reads_give_the_plain_search_after_order(clients, prefix, make_config):
    """Slices merged back, and the range started at each page's last value, read exactly what one plain
    search_after stream reads, in its order: ties in event.ingested (one value per 150 lines) cross pages."""
    lines = _index(clients, prefix)
    ref = _plain_search_after(Source(clients, make_config().source))
    assert len(ref) == len(set(ref)) == len(lines)
    for slices in (1, 2, 3):
        src = Source(clients, make_config(source={"page_size": 37, "slices": slices}).source)
        pages = list(src.pages())
        assert [d.id for p in pages for d in p] == ref, slices
        assert all(len(p) == 37 for p in pages[:-1])
        assert src.slices == slices  # the embedded server (and any current cluster) reads slices of a PIT


def test_sliced_read_stops_at_its_limit_and_resumes_without_gap(clients, prefix, make_config):
    _index(clients, prefix)
    src = Source(clients, make_config(source={"page_size": 37, "slices": 3}).source)
    ref = [d.id for p in src.pages() for d in p]
    first = [d for p in src.pages(limit=100) for d in p]
    assert [d.id for d in first] == ref[:100]
    cp = None
    for d in first:
        cp = Checkpoint(d.sort, (d.id,)) if cp is None else cp.advance(d)
    assert [d.id for p in src.pages(cp) for d in p] == ref[100:]


def test_a_server_refusing_slices_is_read_in_one_stream(clients, prefix, make_config, caplog):
    lines = _index(clients, prefix, n_sessions=5)
    clients.es.indices.put_settings(index=f"{prefix}-logs", settings={"index.max_slices_per_scroll": 1})
    src = Source(clients, make_config(source={"page_size": 7, "slices": 2}).source)
    with caplog.at_level(logging.WARNING, logger="deeplog_siem.source"):
        docs = [d for p in src.pages() for d in p]
    if src.slices == 2 and real_cluster():
        pytest.skip("this cluster does not apply index.max_slices_per_scroll to slices of a point in time")
    assert src.slices == 1
    assert "refused a sliced read" in caplog.text and "source.slices: 1" in caplog.text
    assert [d.get("message") for d in docs] == [ln.message for ln in lines]
    # The next run (a new Source, the daemon's same Clients) reads one stream at once: no second warning
    # every scheduled run.
    caplog.clear()
    again = Source(clients, make_config(source={"page_size": 7, "slices": 2}).source)
    assert again.slices == 1
    with caplog.at_level(logging.WARNING, logger="deeplog_siem.source"):
        assert [d.get("message") for p in again.pages() for d in p] == [ln.message for ln in lines]
    assert "refused a sliced read" not in caplog.text


def test_a_job_clock_ahead_of_the_cluster_skips_no_late_searchable_document(
    clients, prefix, make_config, monkeypatch
):
    """The read's upper bound is the cluster's now minus the query delay, whatever the job's clock says."""
    index = f"{prefix}-logs"
    cfg = make_config(source={"query_delay_seconds": 2})

    def doc(name: str, ingested: datetime) -> dict:
        stamp = ingested.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return {"@timestamp": stamp, "message": f"blk_1 {name}", "event": {"ingested": stamp}}

    now = datetime.now(UTC)
    clients.es.index(index=index, id="old", document=doc("old", now - timedelta(seconds=60)))
    clients.es.index(index=index, id="fresh", document=doc("fresh", now))
    clients.es.indices.refresh(index=index)
    # The job's clock runs an hour ahead of the cluster's.
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600)
    src = Source(clients, cfg.source)
    read: list[str] = []
    cp = None
    for page in src.pages(cp):
        read += [d.id for d in page]
        cp = advance(cp, page)
    # Stamped by the ingest node just before `fresh`, searchable only after the first read.
    clients.es.index(index=index, id="late", document=doc("late", now - timedelta(milliseconds=500)))
    clients.es.indices.refresh(index=index)
    time.sleep(2.5)  # the query delay passes (on the real clock: the cluster's)
    for page in src.pages(cp):
        read += [d.id for d in page]
        cp = advance(cp, page)
    assert sorted(read) == ["fresh", "late", "old"], read
