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
