"""sink: writes acknowledged or accounted for, in the foreground and from the background writer."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from deeplog_siem import sink
from deeplog_siem.config import ElasticsearchConfig
from deeplog_siem.errors import SinkError
from deeplog_siem.es import Clients, _client


@pytest.fixture
def unreachable_clients() -> Iterator[Clients]:
    """Clients for a port nothing listens on (connect() would refuse it at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = ElasticsearchConfig(hosts=(f"http://127.0.0.1:{port}",), request_timeout=1, max_retries=0)
    c = Clients(_client(cfg, plain_json=True), "opensearch", "0")
    yield c
    c.close()


def _docs(index: str, n: int, start: int = 0) -> list[dict]:
    return [{"_index": index, "_id": f"d{i}", "n": i} for i in range(start, start + n)]


def test_background_writer_acknowledges_every_batch(clients, prefix):
    index = f"{prefix}-bg"
    w = sink.BackgroundWriter(clients)
    try:
        for b in range(5):
            w.submit(_docs(index, 40, b * 40))
        w.submit([])  # nothing to write is not a batch
        result = w.flush()
    finally:
        w.close()
    assert result.written == 200 and result.failed == 0
    clients.es.indices.refresh(index=index)
    assert clients.es.count(index=index)["count"] == 200


def test_background_writer_counts_rejections_per_flush(clients, prefix):
    index = f"{prefix}-bgrej"
    clients.es.indices.create(
        index=index, mappings={"dynamic": "strict", "properties": {"n": {"type": "long"}}}
    )
    w = sink.BackgroundWriter(clients)
    try:
        w.submit(_docs(index, 3))
        w.submit([{"_index": index, "_id": "bad", "n": 1, "unknown": "x"}])
        first = w.flush()
        w.submit(_docs(index, 2, 10))
        second = w.flush()
    finally:
        w.close()
    assert (first.written, first.failed) == (3, 1)
    assert set(first.rejected) == {"strict_dynamic_mapping_exception"}
    assert (second.written, second.failed) == (2, 0)  # a flush reports only what came after the last one


def test_background_writer_raises_at_flush_when_the_server_is_gone(unreachable_clients):
    w = sink.BackgroundWriter(unreachable_clients, attempts=2, backoff_s=0.01)
    try:
        w.submit(_docs("nowhere", 2))
        with pytest.raises(SinkError, match="could not be written after 2 attempts"):
            w.flush()
        # The failure was handed over once: the writer is usable (and empty) again.
        assert w.flush().written == 0
    finally:
        w.close()


def _alias(clients, name: str, mappings: dict | None = None) -> None:
    """`name` as a rollover alias (what `setup` makes with retention on): writes go to NAME-000001."""
    clients.es.indices.create(
        index=f"{name}-000001", aliases={name: {"is_write_index": True}}, mappings=mappings or {}
    )


def test_writes_through_a_rollover_alias_are_acknowledged(clients, prefix):
    # The acknowledgements name the concrete index (NAME-000001), not the alias the documents were sent to.
    alias = f"{prefix}-anomalies"
    _alias(clients, alias, {"dynamic": "strict", "properties": {"n": {"type": "long"}}})
    docs = [*_docs(alias, 3), {"_index": alias, "_id": "bad", "n": "not a number"}]
    result = sink.write(clients, docs, attempts=2, backoff_s=0.01, refresh=True)
    assert (result.written, result.existing, dict(result.rejected)) == (3, 0, {"mapper_parsing_exception": 1})
    assert clients.es.count(index=alias)["count"] == 3


def test_create_leaves_an_existing_document_as_it_is(clients, prefix):
    alias = f"{prefix}-anomalies"
    _alias(clients, alias)
    first = sink.write(clients, _docs(alias, 2), op="create")
    assert (first.written, first.existing) == (2, 0)
    concrete = f"{alias}-000001"
    clients.es.update(index=concrete, id="d0", doc={"verdict": "false_positive"}, refresh=True)
    # Written again (a backfill, a re-read after a failed commit): d0 keeps its verdict, d2 is new.
    again = sink.write(clients, [{**d, "n": -1} for d in _docs(alias, 3)], op="create", attempts=1)
    assert (again.written, again.existing, again.failed) == (1, 2, 0)
    kept = clients.es.get(index=concrete, id="d0")["_source"]
    assert kept == {"n": 0, "verdict": "false_positive"}
    # A document's own operation wins over `op`.
    forced = sink.write(clients, [{**_docs(alias, 1)[0], "_op_type": "index", "n": 5}], op="create")
    assert (forced.written, forced.existing) == (1, 0)
    assert clients.es.get(index=concrete, id="d0")["_source"] == {"n": 5}
