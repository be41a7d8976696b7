"""Shared fixtures: one real server for the whole run.

By default the embedded osmem-server is started through the product's own code path
(`deeplog_lab.server.start_embedded`). Setting DEEPLOG_TEST_ES_URL (plus optionally DEEPLOG_TEST_ES_USERNAME,
DEEPLOG_TEST_ES_PASSWORD, DEEPLOG_TEST_ES_API_KEY, DEEPLOG_TEST_ES_CA_CERTS, DEEPLOG_TEST_ES_VERIFY=false) runs
the same suite against a real Elasticsearch or OpenSearch cluster; every test works in indices named with a
per-test prefix and deletes them afterwards.

The `persona` fixtures put a strict Elasticsearch or OpenSearch stand-in (`deeplog_lab.personas`) in front of
the embedded server, so the product's Elasticsearch and OpenSearch paths both run without either product.
With DEEPLOG_TEST_ES_URL set they skip: the real cluster is tested directly.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deeplog_lab.personas import PersonaProxy, start_persona
from deeplog_lab.shared_data import shared_data_dir
from deeplog_siem.config import Config, ElasticsearchConfig, parse_config
from deeplog_siem.es import Clients, connect

REPO = Path(__file__).resolve().parents[1]
PERSONAS = ("elasticsearch", "opensearch")
DATA = shared_data_dir()


def real_cluster() -> bool:
    return bool(os.environ.get("DEEPLOG_TEST_ES_URL"))


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need_data(*parts: str) -> Path:
    """A file under ../shared/data; skipped with the reason when this checkout has none beside it."""
    p = DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not found at {p} (tests expect ../shared/data beside the checkout)")
    return p


@pytest.fixture(scope="session")
def es_url() -> Iterator[str]:
    url = os.environ.get("DEEPLOG_TEST_ES_URL")
    if url:
        yield url
        return
    from deeplog_lab.server import start_embedded

    server = start_embedded()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def es_section(es_url: str) -> dict:
    section: dict = {"hosts": [es_url], "request_timeout": 30, "max_retries": 2}
    env = os.environ
    if env.get("DEEPLOG_TEST_ES_API_KEY"):
        section["api_key"] = env["DEEPLOG_TEST_ES_API_KEY"]
    if env.get("DEEPLOG_TEST_ES_USERNAME"):
        section["username"] = env["DEEPLOG_TEST_ES_USERNAME"]
        section["password"] = env.get("DEEPLOG_TEST_ES_PASSWORD", "")
    if env.get("DEEPLOG_TEST_ES_CA_CERTS"):
        section["ca_certs"] = env["DEEPLOG_TEST_ES_CA_CERTS"]
    if env.get("DEEPLOG_TEST_ES_VERIFY", "true").lower() == "false":
        section["verify_certs"] = False
    if es_url.startswith("http://") and ("api_key" in section or "username" in section):
        # A test cluster on plain http with credentials: the tester chose it, as a deployment would say so.
        section["allow_insecure_http"] = True
    return section


@pytest.fixture(scope="session")
def clients(es_section: dict) -> Iterator[Clients]:
    c = connect(ElasticsearchConfig(**{**es_section, "hosts": tuple(es_section["hosts"])}))
    yield c
    c.close()


@pytest.fixture
def prefix(clients: Clients) -> Iterator[str]:
    """A unique lowercase index-name prefix for one test; its indices are deleted afterwards."""
    p = f"t{uuid.uuid4().hex[:10]}"
    yield p
    clients.es.options(ignore_status=404).indices.delete(index=f"{p}*", expand_wildcards="all")


def config_data(es_section: dict, prefix: str, model_dir: Path, **sections: dict) -> dict:
    """Configuration data for one test: indices carry the test prefix; `sections` are merged per section."""
    data: dict = {
        "elasticsearch": es_section,
        # Replayed test data is refreshed before any run: no query delay needed (test_reliability covers it).
        "source": {"index": f"{prefix}-logs", "session_regex": r"(blk_-?\d+)", "query_delay_seconds": 0},
        "model": {"dir": str(model_dir)},
        "output": {
            "anomalies_index": f"{prefix}-anomalies",
            "runs_index": f"{prefix}-runs",
            "workflows_index": f"{prefix}-workflows",
            "state_index": f"{prefix}-state",
        },
        # Test daemons run side by side: each takes a free port, never the default one.
        "health": {"listen": "127.0.0.1:0"},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return data


def wait_for(what: str, cond: Callable[[], Any], timeout: float = 60.0, *, every: float = 0.2) -> Any:
    """`cond()`'s first truthy value, polled every `every` seconds; AssertionError naming `what` after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def for_subprocess(data: dict) -> dict:
    """`data` as a job subprocess's configuration file: the test cluster's secrets as `${ENV}` references
    (the subprocess inherits the environment), so none is written to disk."""
    es = dict(data["elasticsearch"])
    for key, var in (("api_key", "DEEPLOG_TEST_ES_API_KEY"), ("password", "DEEPLOG_TEST_ES_PASSWORD")):
        if key in es and os.environ.get(var) is not None:
            es[key] = "${" + var + "}"
    return {**data, "elasticsearch": es}


@pytest.fixture
def make_config(es_section: dict, prefix: str, tmp_path: Path):
    """Build a validated Config for this test: its indices carry the test prefix, models go to tmp_path."""

    def build(**sections: dict) -> Config:
        return parse_config(config_data(es_section, prefix, tmp_path / "models", **sections))

    return build


@pytest.fixture(scope="session")
def personas(es_url: str) -> Iterator[dict[str, PersonaProxy]]:
    """Both personas in front of the embedded server, started once per run."""
    if real_cluster():
        pytest.skip(
            "personas stand in for Elasticsearch and OpenSearch in front of the embedded server; "
            "with DEEPLOG_TEST_ES_URL the real cluster is tested directly"
        )
    started = {flavour: start_persona(flavour, es_url) for flavour in PERSONAS}
    try:
        yield started
    finally:
        for proxy in started.values():
            proxy.stop()


@pytest.fixture(scope="session", params=PERSONAS, ids=PERSONAS)
def persona(request: pytest.FixtureRequest, personas: dict[str, PersonaProxy]) -> PersonaProxy:
    """Each persona in turn."""
    return personas[request.param]


@pytest.fixture(scope="session")
def persona_section(es_section: dict, persona: PersonaProxy) -> dict:
    return {**es_section, "hosts": [persona.url]}


@pytest.fixture(scope="session")
def persona_clients(persona_section: dict) -> Iterator[Clients]:
    c = connect(ElasticsearchConfig(**{**persona_section, "hosts": tuple(persona_section["hosts"])}))
    yield c
    c.close()


@pytest.fixture
def make_persona_config(persona_section: dict, prefix: str, tmp_path: Path):
    """`make_config` for the persona: `elasticsearch.hosts` is the persona's URL."""

    def build(**sections: dict) -> Config:
        return parse_config(config_data(persona_section, prefix, tmp_path / "models", **sections))

    return build
