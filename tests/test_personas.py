"""The personas behave as the products do, and the product connects, writes and reads through both."""

from __future__ import annotations

import pytest
import requests
from elasticsearch import ApiError

from deeplog_lab.replay import index_lines, load_sample, render
from deeplog_siem.config import ElasticsearchConfig, SourceConfig
from deeplog_siem.es import connect
from deeplog_siem.source import Source

COMPAT_JSON = "application/vnd.elasticsearch+json; compatible-with=9"
COMPAT_NDJSON = "application/vnd.elasticsearch+x-ndjson; compatible-with=9"


def _connect(url: str, **kw):
    return connect(ElasticsearchConfig(hosts=(url,), request_timeout=30, max_retries=0, **kw))


def test_connect_writes_searches_and_reads_a_point_in_time(persona, prefix):
    lines = render(load_sample().train[:20], seed=3)
    clients = _connect(persona.url)
    try:
        assert clients.flavour == persona.flavour
        index = f"{prefix}-logs"
        with persona.recording() as calls:
            # The replay tool bulk-writes with helpers.streaming_bulk, as the sink does.
            assert index_lines(clients, index, lines) == len(lines)
            clients.es.indices.refresh(index=index)
            found = clients.es.search(index=index, query={"match": {"message": "Receiving"}}, size=0)
            assert found["hits"]["total"]["value"] > 0
            cfg = SourceConfig(index=index, session_regex=r"(blk_-?\d+)", query_delay_seconds=0, slices=1)
            read = [d for page in Source(clients, cfg).pages(None) for d in page]
        assert len(read) == len(lines)
        pit = "/_pit" if persona.flavour == "elasticsearch" else "/_search/point_in_time"
        opened = [c for c in calls if c.method == "POST" and c.path == f"/{index}{pit}"]
        closed = [c for c in calls if c.method == "DELETE" and c.path == pit]
        assert [c.status for c in opened] == [200] and [c.status for c in closed] == [200]
        assert all(c.status < 400 for c in calls), [c for c in calls if c.status >= 400]
    finally:
        clients.close()


def test_opensearch_persona_refuses_the_compatibility_media_types(personas):
    url = personas["opensearch"].url
    for headers in (
        {"Content-Type": COMPAT_JSON, "Accept": "application/json"},
        {"Content-Type": COMPAT_NDJSON},
        {"Accept": COMPAT_JSON},
    ):
        r = requests.post(f"{url}/_search", data=b"{}", headers=headers, timeout=30)
        assert r.status_code == 406
        assert r.json()["status"] == 406 and "is not supported" in r.json()["error"]
        assert "x-elastic-product" not in r.headers
    ok = requests.post(f"{url}/_search", json={}, timeout=30)
    assert ok.status_code == 200 and "x-elastic-product" not in ok.headers


def test_root_endpoint_and_product_header(personas):
    es = requests.get(personas["elasticsearch"].url, timeout=30)
    assert es.headers["X-Elastic-Product"] == "Elasticsearch"
    assert "distribution" not in es.json()["version"]
    assert es.json()["version"]["number"].split(".")[0] in ("8", "9")
    assert es.json()["tagline"] == "You Know, for Search"
    os_ = requests.get(personas["opensearch"].url, timeout=30)
    assert "X-Elastic-Product" not in os_.headers
    assert os_.json()["version"]["distribution"] == "opensearch"
    assert os_.json()["version"]["number"].startswith("2.")
    # Errors too: the Elasticsearch persona stamps every response, the OpenSearch persona none.
    assert requests.get(f"{personas['elasticsearch'].url}/nosuch/_doc/1", timeout=30).headers[
        "X-Elastic-Product"
    ] == ("Elasticsearch")
    assert (
        "X-Elastic-Product"
        not in requests.get(f"{personas['opensearch'].url}/nosuch/_doc/1", timeout=30).headers
    )


def test_the_client_refuses_opensearch_without_the_product_header(personas):
    """What the product faces on a real OpenSearch cluster: the official client alone refuses it."""
    from elasticsearch import Elasticsearch, UnsupportedProductError

    from deeplog_siem.es import PlainJsonNode

    es = Elasticsearch(personas["opensearch"].url, node_class=PlainJsonNode)
    try:
        with pytest.raises(UnsupportedProductError):
            es.info()
    finally:
        es.close()


@pytest.mark.parametrize(
    "flavour, method, path",
    [
        ("opensearch", "POST", "/{index}/_pit"),
        ("opensearch", "DELETE", "/_pit"),
        ("opensearch", "GET", "/_ilm/status"),
        ("opensearch", "GET", "/_security/_authenticate"),
        ("elasticsearch", "GET", "/_plugins/_ism/policies"),
        ("elasticsearch", "GET", "/_opendistro/_security/api/account"),
        ("elasticsearch", "POST", "/{index}/_search/point_in_time"),
        ("elasticsearch", "DELETE", "/_search/point_in_time"),
    ],
)
def test_foreign_endpoints_are_unknown(personas, clients, prefix, flavour, method, path):
    clients.es.indices.create(index=f"{prefix}-x")
    path = path.format(index=f"{prefix}-x")
    r = requests.request(method, f"{personas[flavour].url}{path}?keep_alive=1m", json={}, timeout=30)
    assert r.status_code == 400
    assert r.json() == {"error": f"no handler found for uri [{path}?keep_alive=1m] and method [{method}]"}


def test_elasticsearch_persona_translates_the_point_in_time_api(personas, prefix):
    clients = _connect(personas["elasticsearch"].url)
    try:
        assert clients.flavour == "elasticsearch"
        index = f"{prefix}-pit"
        clients.es.index(index=index, id="1", document={"a": 1}, refresh=True)
        pit = clients.es.open_point_in_time(index=index, keep_alive="1m")
        assert set(pit.body) == {"id", "_shards"}
        hits = clients.es.search(pit={"id": pit["id"], "keep_alive": "1m"}, size=10)["hits"]["hits"]
        assert [h["_id"] for h in hits] == ["1"]
        with pytest.raises(ApiError) as refused:
            clients.es.search(index=index, pit={"id": pit["id"], "keep_alive": "1m"})
        assert refused.value.meta.status == 400
        assert refused.value.body["error"]["type"] == "action_request_validation_exception"
        assert "[indices] cannot be used with point in time" in refused.value.body["error"]["reason"]
        closed = clients.es.close_point_in_time(id=pit["id"])
        assert closed.body == {"succeeded": True, "num_freed": 1}
    finally:
        clients.close()


def test_lifecycle_apis_are_emulated(personas):
    es_url, os_url = personas["elasticsearch"].url, personas["opensearch"].url
    assert requests.get(f"{es_url}/_ilm/status", timeout=30).json() == {"operation_mode": "RUNNING"}
    policy = {"phases": {"delete": {"min_age": "3d", "actions": {"delete": {}}}}}
    assert requests.get(f"{es_url}/_ilm/policy/p-ilm-test", timeout=30).status_code == 404
    assert requests.put(f"{es_url}/_ilm/policy/p-ilm-test", json={"policy": policy}, timeout=30).ok
    got = requests.get(f"{es_url}/_ilm/policy/p-ilm-test", timeout=30).json()
    assert got["p-ilm-test"]["policy"] == policy and got["p-ilm-test"]["version"] == 1

    ism = {"description": "d", "default_state": "hot", "states": [{"name": "hot", "actions": []}]}
    assert requests.get(f"{os_url}/_plugins/_ism/policies", timeout=30).ok
    assert requests.get(f"{os_url}/_plugins/_ism/policies/p-ism-test", timeout=30).status_code == 404
    created = requests.put(f"{os_url}/_plugins/_ism/policies/p-ism-test", json={"policy": ism}, timeout=30)
    assert created.status_code == 201
    again = requests.put(f"{os_url}/_plugins/_ism/policies/p-ism-test", json={"policy": ism}, timeout=30)
    assert again.status_code == 409  # an update must name the sequence number it replaces
    doc = requests.get(f"{os_url}/_plugins/_ism/policies/p-ism-test", timeout=30).json()
    params = {"if_seq_no": doc["_seq_no"], "if_primary_term": doc["_primary_term"]}
    updated = requests.put(
        f"{os_url}/_plugins/_ism/policies/p-ism-test", params=params, json={"policy": ism}, timeout=30
    )
    assert updated.status_code == 200 and updated.json()["_seq_no"] > doc["_seq_no"]


def test_lifecycle_settings_are_dropped_only_when_the_server_rejects_them(personas, clients, prefix):
    index = f"{prefix}-lc"
    settings = {"index": {"number_of_shards": 1, "lifecycle": {"name": "p", "rollover_alias": index}}}
    r = requests.put(f"{personas['elasticsearch'].url}/{index}", json={"settings": settings}, timeout=30)
    assert r.status_code == 200, r.text
    assert clients.es.indices.exists(index=index)
    # A setting the server rejects for another reason is still refused.
    bad = requests.put(
        f"{personas['elasticsearch'].url}/{index}-2", json={"settings": {"index.nosuch": 1}}, timeout=30
    )
    assert bad.status_code == 400


def test_recording_receives_the_calls_made_inside(personas):
    proxy = personas["elasticsearch"]
    before = len(proxy.calls)
    with proxy.recording() as calls:
        requests.get(f"{proxy.url}/_cluster/health?level=cluster", timeout=30)
    requests.get(f"{proxy.url}/_cluster/health", timeout=30)
    assert [(c.method, c.path, c.query, c.status) for c in calls] == [
        ("GET", "/_cluster/health", "level=cluster", 200)
    ]
    assert len(proxy.calls) == before + 2
