"""es: Elasticsearch/OpenSearch client factory.

Contract: `ElasticsearchConfig -> Clients` (one `elasticsearch.Elasticsearch` client plus the detected
flavour and version), or `ConnectionFailed` with a message that names the host and what to fix (unreachable,
bad credentials, TLS, a server that is neither product). No message or log line shows a URL's user
information or query values (`urls.redact`). Against OpenSearch the client uses `OpenSearchNode`:
OpenSearch refuses the official client's `application/vnd.elasticsearch+json; compatible-with=N` media types
and sends no `X-Elastic-Product` header, whose absence makes the client refuse every 2xx reply.

The official client is adapted at the node rather than replaced by opensearch-py: every stage uses its
APIs, `helpers.streaming_bulk` and `ApiError`, and the two products differ only in media types, the product
header and a few endpoints, which a node and the flavour checks cover in one place.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
from dataclasses import dataclass, field
from typing import Any, Literal

import elastic_transport
from elastic_transport import HttpHeaders, Urllib3HttpNode
from elasticsearch import Elasticsearch, UnsupportedProductError

from .config import ElasticsearchConfig
from .errors import ConnectionFailed
from .urls import redact_text

log = logging.getLogger(__name__)

Flavour = Literal["elasticsearch", "opensearch"]
PRODUCT_HEADER = "x-elastic-product"


class PlainJsonNode(Urllib3HttpNode):
    """Sends `application/json` / `application/x-ndjson` instead of the compatibility media types."""

    def perform_request(
        self, method: str, target: str, body: bytes | None = None, headers: Any = None, **kw: Any
    ):
        if headers:
            headers = headers.copy()
            for name in ("accept", "content-type"):
                value = headers.get(name)
                if value and "vnd.elasticsearch+" in value:
                    headers[name] = "application/x-ndjson" if "x-ndjson" in value else "application/json"
        return super().perform_request(method, target, body=body, headers=headers, **kw)


class OpenSearchNode(PlainJsonNode):
    """`PlainJsonNode` whose replies carry the product header the official client checks for.

    Only used once the root endpoint has reported OpenSearch (or `elasticsearch.flavour: opensearch` says
    so): the client's check would otherwise refuse the first 2xx reply of every client and `.options()`
    copy, since OpenSearch never sends `X-Elastic-Product`.
    """

    def perform_request(
        self, method: str, target: str, body: bytes | None = None, headers: Any = None, **kw: Any
    ):
        response = super().perform_request(method, target, body=body, headers=headers, **kw)
        if PRODUCT_HEADER in response.meta.headers:
            return response
        stamped = HttpHeaders(response.meta.headers)
        stamped[PRODUCT_HEADER] = "Elasticsearch"
        return response._replace(meta=dataclasses.replace(response.meta, headers=stamped))


@dataclass(frozen=True)
class Clients:
    """What the pipeline stages receive: the client and what it talks to."""

    es: Elasticsearch
    flavour: Flavour
    version: str
    # Indices whose server refused a sliced read: the later runs of this process (the daemon keeps one
    # Clients) read them in one stream without asking, and warning, again.
    unsliced: set[str] = field(default_factory=set, compare=False)

    @property
    def has_ingest(self) -> bool:
        return _supports(self.es, "GET", "/_ingest/pipeline")

    def close(self) -> None:
        self.es.close()


def _supports(es: Elasticsearch, method: str, path: str) -> bool:
    try:
        es.perform_request(method, path, headers={"accept": "application/json"})
        return True
    except Exception:  # noqa: BLE001 - any refusal means "not supported here"
        return False


def _client(
    cfg: ElasticsearchConfig, plain_json: bool, *, node_class: type[Urllib3HttpNode] | None = None
) -> Elasticsearch:
    """A client for `cfg`; `plain_json` selects the OpenSearch node, `node_class` any other."""
    kwargs: dict[str, Any] = {
        "request_timeout": cfg.request_timeout,
        "max_retries": cfg.max_retries,
        "retry_on_timeout": True,
        "verify_certs": cfg.verify_certs,
    }
    if not cfg.verify_certs:
        kwargs["ssl_show_warn"] = False
    if cfg.ca_certs:
        kwargs["ca_certs"] = cfg.ca_certs
    if cfg.api_key:
        kwargs["api_key"] = cfg.api_key
    elif cfg.username is not None:
        kwargs["basic_auth"] = (cfg.username, cfg.password)
    node_class = node_class or (OpenSearchNode if plain_json else None)
    if node_class is not None:
        kwargs["node_class"] = node_class
    return Elasticsearch(list(cfg.hosts), **kwargs)


def _explain(e: Exception, hosts: str, cfg: ElasticsearchConfig) -> str:
    # The message quotes the hosts and the client's own text, and either may hold a URL's credentials.
    return redact_text(_describe(e, hosts, cfg))


def _describe(e: Exception, hosts: str, cfg: ElasticsearchConfig) -> str:
    text = str(e)
    if isinstance(e, elastic_transport.TlsError) or isinstance(getattr(e, "errors", None), ssl.SSLError):
        return (
            f"TLS handshake with {hosts} failed ({text.splitlines()[0][:200]}); "
            "set elasticsearch.ca_certs to the cluster's CA file, or verify_certs: false for testing"
        )
    if isinstance(e, elastic_transport.ConnectionTimeout):
        return (
            f"{hosts} did not answer within {cfg.request_timeout:g} s; "
            "check elasticsearch.hosts and that the cluster is up"
        )
    if isinstance(e, elastic_transport.ConnectionError):
        return (
            f"cannot connect to {hosts}; check elasticsearch.hosts and that the cluster is up ({text[:200]})"
        )
    status = getattr(getattr(e, "meta", None), "status", None)
    if status == 401:
        return f"{hosts} rejected the credentials (401); check elasticsearch.api_key or username/password"
    if status == 403:
        return f"{hosts} refused access (403); the user needs the 'monitor' cluster privilege (see README)"
    return f"{hosts} answered with an error: {text[:300]}"


def connect(cfg: ElasticsearchConfig) -> Clients:
    """Connect, detect the flavour from the root endpoint, and fail early with an actionable message."""
    hosts = ", ".join(cfg.hosts)
    # The root endpoint answers with plain JSON on both flavours; probe with the plain node, then build
    # the client the flavour needs. The client refuses a 2xx reply without the product header (OpenSearch)
    # but keeps its body: the flavour is read from that body.
    probe = _client(cfg, plain_json=True, node_class=PlainJsonNode).options(max_retries=0)
    try:
        reply = probe.info()
        info, product = reply.body, reply.meta.headers.get(PRODUCT_HEADER)
    except UnsupportedProductError as e:
        info, product = e.body, None
    except Exception as e:  # noqa: BLE001 - translated to an actionable message
        raise ConnectionFailed(_explain(e, hosts, cfg)) from None
    finally:
        probe.close()
    version = info.get("version") if isinstance(info, dict) else None
    version = version if isinstance(version, dict) else {}
    detected: Flavour = "opensearch" if version.get("distribution") == "opensearch" else "elasticsearch"
    if cfg.flavour == "auto" and detected == "elasticsearch" and product != "Elasticsearch":
        raise ConnectionFailed(
            f"{redact_text(hosts)} is neither Elasticsearch (no X-Elastic-Product header) nor OpenSearch "
            "(no version.distribution 'opensearch' at /); if it is OpenSearch, set elasticsearch.flavour: opensearch"
        )
    flavour: Flavour = detected if cfg.flavour == "auto" else cfg.flavour
    if flavour != detected:
        log.warning(
            "elasticsearch.flavour is %s but %s reports %s", cfg.flavour, redact_text(hosts), detected
        )
    es = _client(cfg, plain_json=flavour == "opensearch")
    log.info("connected to %s %s at %s", flavour, version.get("number", "?"), redact_text(hosts))
    return Clients(es=es, flavour=flavour, version=str(version.get("number", "")))
