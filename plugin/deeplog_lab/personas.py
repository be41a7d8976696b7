"""personas: strict Elasticsearch and OpenSearch stand-ins in front of the embedded server.

Contract: `start_persona(flavour, upstream) -> PersonaProxy` starts a local HTTP proxy (loopback, free port,
daemon threads) that forwards to `upstream` (the lenient embedded server) and answers the way the named
product does where the two products differ; `PersonaProxy.calls` records every call as a `Call`,
`recording()` yields a list that receives the calls made inside the block, and `stop()` ends the proxy.

Both personas:
- refuse the other product's endpoints the way the product refuses an unknown endpoint: 400 with
  `{"error": "no handler found for uri [URI] and method [METHOD]"}` (RestController.handleBadRequest in both
  code bases; e.g. https://github.com/Ellerhold/fs2es-indexer/issues/39 and opensearch-go's error tests show
  the shape on OpenSearch);
- answer `GET /` as their product;
- never pass on the embedded server's `X-Elastic-Product` header: the Elasticsearch persona sets it on every
  response, the OpenSearch persona never sends it (elasticsearch-py checks it on the first 2xx reply,
  elasticsearch/_sync/client/_base.py, `_verified_elasticsearch`, in 8.12 as in 9.x);
- strip their lifecycle settings (`index.lifecycle.*`, `index.plugins.index_state_management.*`) from a
  request body only after the embedded server has rejected them as unknown, then send it again.

`opensearch` (OpenSearch 2.x):
- `GET /` reports `version.distribution: "opensearch"` and a 2.x number.
- The official client's compatibility media types (`application/vnd.elasticsearch+json; compatible-with=N`
  and the `x-ndjson` variant) in Content-Type get 406 `{"error": "Content-Type header [..] is not supported",
  "status": 406}` (https://github.com/Ellerhold/fs2es-indexer/issues/39,
  https://github.com/elastic/elasticsearch-php/issues/1347); the same media type in Accept is refused alike,
  which is stricter than OpenSearch, so that a client which only rewrites Content-Type is caught too.
- Top-level `_` paths outside OpenSearch's API (the root segments of the paths in
  opensearch-project/opensearch-api-specification, spec/namespaces/*.yaml) are unknown endpoints: `/_pit`,
  `/_ilm`, `/_security` and the rest; so is `/{index}/_pit` (OpenSearch's point in time is
  `/{index}/_search/point_in_time`, spec/namespaces/_core.yaml).
- ISM, which the embedded server lacks, is emulated for the policy API only (spec/namespaces/ism.yaml,
  spec/schemas/ism._common.yaml): `GET /_plugins/_ism/policies`, `GET|PUT|DELETE
  /_plugins/_ism/policies/{id}` with `_seq_no`/`_primary_term` and `if_seq_no`/`if_primary_term`.

`elasticsearch` (Elasticsearch 9.x):
- `GET /` reports no distribution, a 9.x number and the tagline.
- The compatibility media types are accepted, as Elasticsearch does, and passed on as plain JSON/NDJSON
  (the embedded server refuses them in Content-Type).
- The point-in-time API is translated for the embedded server (elastic/elasticsearch-specification,
  specification/_global/open_point_in_time, specification/_global/close_point_in_time): `POST
  /{index}/_pit?keep_alive=..` -> `POST /{index}/_search/point_in_time?keep_alive=..`, answered as `{"id",
  "_shards"}`; `DELETE /_pit {"id"}` -> `DELETE /_search/point_in_time {"pit_id": [id]}`, answered as
  `{"succeeded", "num_freed"}`. A search naming an index in its path and a `pit` in its body is refused
  with Elasticsearch's `action_request_validation_exception` ("[indices] cannot be used with point in
  time").
- `/_plugins`, `/_opendistro` and any `_search/point_in_time` path are unknown endpoints.
- ILM, which the embedded server lacks, is emulated for the calls the product makes
  (specification/ilm/get_status, specification/ilm/get_lifecycle, specification/ilm/put_lifecycle):
  `GET /_ilm/status`, `GET /_ilm/policy[/{name}]`, `PUT|DELETE /_ilm/policy/{name}`. The emulation only
  stores policies: nothing ever rolls over or is deleted by age.

Other ILM or ISM calls get 501 (not emulated), so a test that needs more fails loudly.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from deeplog_siem.errors import ServerError

log = logging.getLogger(__name__)

Flavour = Literal["elasticsearch", "opensearch"]

COMPAT_MEDIA_TYPE = "application/vnd.elasticsearch+"
# Root path segments of OpenSearch's REST API (opensearch-api-specification, spec/namespaces/*.yaml), plus
# `_all`, which stands for an index name.
OPENSEARCH_ROOTS = frozenset(
    "_alias _aliases _all _analyze _bulk _cache _cat _cluster _component_template _count _dangling _data_stream "
    "_delete_by_query _field_caps _flush _forcemerge _index_template _ingest _insights _list _ltr _mapping "
    "_mget _msearch _mtermvectors _nodes _opendistro _plugins _rank_eval _recovery _refresh _reindex _remote "
    "_remotestore _render _resolve _script_context _script_language _scripts _search _search_shards _segments "
    "_settings _shard_stores _snapshot _stats _tasks _template _update_by_query _upgrade _validate _wlm".split()
)
ELASTICSEARCH_FOREIGN_ROOTS = frozenset({"_plugins", "_opendistro"})
LIFECYCLE_SETTINGS = {
    "elasticsearch": "index.lifecycle.",
    "opensearch": "index.plugins.index_state_management.",
}
# Headers that belong to one hop, or that the proxy sets itself.
HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "te", "trailer", "upgrade"}
)


@dataclass(frozen=True)
class Call:
    """One request as the persona answered it."""

    method: str
    path: str
    query: str
    status: int


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    @property
    def segments(self) -> list[str]:
        return [s for s in self.path.split("/") if s]

    @property
    def uri(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path

    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def _json_reply(status: int, body: Any) -> _Reply:
    return _Reply(status, json.dumps(body).encode(), [("Content-Type", "application/json; charset=UTF-8")])


def _no_handler(req: _Request) -> _Reply:
    return _json_reply(400, {"error": f"no handler found for uri [{req.uri}] and method [{req.method}]"})


def _error(status: int, kind: str, reason: str) -> _Reply:
    cause = {"type": kind, "reason": reason}
    return _json_reply(status, {"error": {"root_cause": [cause], **cause}, "status": status})


def _not_emulated(req: _Request) -> _Reply:
    return _error(501, "persona_not_emulated", f"{req.method} {req.path} is not emulated by the persona")


def _plain_media_types(req: _Request) -> _Request:
    """`req` with the compatibility media types, which Elasticsearch accepts, as the plain ones."""
    headers = dict(req.headers)
    for name in ("accept", "content-type"):
        value = headers.get(name, "")
        if COMPAT_MEDIA_TYPE in value:
            headers[name] = "application/x-ndjson" if "x-ndjson" in value else "application/json"
    return dataclasses.replace(req, headers=headers)


def _flat_settings(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat_settings(value, f"{name}."))
        else:
            out[name] = value
    return out


def _without_settings(body: Any, prefix: str) -> Any:
    """`body` with the index settings under `prefix` removed (from `settings` and `template.settings`)."""
    if not isinstance(body, dict):
        return body

    def strip(settings: Any) -> Any:
        if not isinstance(settings, dict):
            return settings
        flat = _flat_settings(settings)
        return {
            k: v
            for k, v in flat.items()
            if not (k if k.startswith("index.") else f"index.{k}").startswith(prefix)
        }

    out = dict(body)
    if "settings" in out:
        out["settings"] = strip(out["settings"])
    if isinstance(out.get("template"), dict) and "settings" in out["template"]:
        out["template"] = {**out["template"], "settings": strip(out["template"]["settings"])}
    return out


class _Upstream:
    """Forwards requests to the embedded server, one connection per proxy thread."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self._local = threading.local()

    def _connection(self, fresh: bool) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            conn = http.client.HTTPConnection(self.host, self.port, timeout=300)
            self._local.conn = conn
        return conn

    def send(
        self, req: _Request, *, path: str | None = None, query: str | None = None, body: Any = ...
    ) -> _Reply:
        path = req.path if path is None else path
        query = req.query if query is None else query
        data = req.body if body is ... else json.dumps(body).encode()
        headers = {k: v for k, v in req.headers.items() if k.lower() not in HOP_HEADERS | {"accept-encoding"}}
        if body is not ...:
            headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
            headers["Content-Type"] = "application/json"
        target = f"{path}?{query}" if query else path
        for attempt in (0, 1):
            conn = self._connection(fresh=attempt == 1)
            try:
                conn.request(req.method, target, body=data or None, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
                break
            except (ConnectionError, http.client.HTTPException):
                if attempt == 1:
                    raise
        kept = [
            (k, v)
            for k, v in resp.getheaders()
            if k.lower() not in HOP_HEADERS | {"x-elastic-product"}
            or (req.method == "HEAD" and k.lower() == "content-length")
        ]
        return _Reply(resp.status, payload, kept)


class _Persona:
    """What both personas share: routing, the upstream, retried lifecycle settings."""

    flavour: Flavour

    def __init__(self, upstream: str) -> None:
        self.upstream = _Upstream(upstream)
        self._lock = threading.Lock()

    def answer(self, req: _Request) -> _Reply:
        raise NotImplementedError

    def forward(self, req: _Request) -> _Reply:
        reply = self.upstream.send(req)
        prefix = LIFECYCLE_SETTINGS[self.flavour]
        if reply.status == 400 and f"unknown setting [{prefix}".encode() in reply.body:
            log.debug("embedded server rejected %s* settings on %s; sending without them", prefix, req.path)
            reply = self.upstream.send(req, body=_without_settings(req.json(), prefix))
        return reply

    def info(self, req: _Request, version: dict[str, Any], tagline: str) -> _Reply:
        reply = self.upstream.send(req)
        upstream = reply.json() if reply.status == 200 else None
        if not isinstance(upstream, dict):
            return reply
        body = {
            "name": upstream.get("name", "node-1"),
            "cluster_name": upstream.get("cluster_name", "cluster"),
            "cluster_uuid": upstream.get("cluster_uuid", "_na_"),
            "version": version,
            "tagline": tagline,
        }
        return _json_reply(200, body)


class ElasticsearchPersona(_Persona):
    flavour: Flavour = "elasticsearch"
    VERSION = {
        "number": "9.1.0",
        "build_flavor": "default",
        "build_type": "docker",
        "build_hash": "persona",
        "build_date": "2025-07-01T00:00:00.000Z",
        "build_snapshot": False,
        "lucene_version": "10.2.2",
        "minimum_wire_compatibility_version": "8.19.0",
        "minimum_index_compatibility_version": "8.0.0",
    }

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.policies: dict[str, dict[str, Any]] = {}

    def answer(self, req: _Request) -> _Reply:
        reply = self._route(req)
        reply.headers = [(k, v) for k, v in reply.headers if k.lower() != "x-elastic-product"]
        reply.headers.append(("X-Elastic-Product", "Elasticsearch"))
        return reply

    def _route(self, req: _Request) -> _Reply:
        req = _plain_media_types(req)
        seg = req.segments
        if not seg and req.method in ("GET", "HEAD"):
            return self.info(req, self.VERSION, "You Know, for Search")
        if seg and seg[0] in ELASTICSEARCH_FOREIGN_ROOTS:
            return _no_handler(req)
        if any(a == "_search" and b == "point_in_time" for a, b in zip(seg, seg[1:], strict=False)):
            return _no_handler(req)
        if seg and seg[0] == "_ilm":
            return self._ilm(req, seg[1:])
        if len(seg) == 2 and seg[1] == "_pit" and req.method == "POST":
            return self._open_pit(req, seg[0])
        if seg == ["_pit"] and req.method == "DELETE":
            return self._close_pit(req)
        if "_pit" in seg:
            return _no_handler(req)
        if len(seg) == 2 and seg[1] == "_search" and isinstance(req.json(), dict) and "pit" in req.json():
            return _error(
                400,
                "action_request_validation_exception",
                "Validation Failed: 1: [indices] cannot be used with point in time. "
                "Do not specify any index with point in time.;",
            )
        return self.forward(req)

    def _open_pit(self, req: _Request, index: str) -> _Reply:
        reply = self.upstream.send(req, path=f"/{index}/_search/point_in_time")
        body = reply.json()
        if reply.status != 200 or not isinstance(body, dict) or "pit_id" not in body:
            return reply
        return _json_reply(200, {"id": body["pit_id"], "_shards": body.get("_shards", {})})

    def _close_pit(self, req: _Request) -> _Reply:
        body = req.json()
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            return _error(400, "action_request_validation_exception", "Validation Failed: 1: id is required;")
        reply = self.upstream.send(req, path="/_search/point_in_time", body={"pit_id": [body["id"]]})
        freed = reply.json()
        if not isinstance(freed, dict) or not isinstance(freed.get("pits"), list):
            return reply
        num = sum(1 for p in freed["pits"] if isinstance(p, dict) and p.get("successful"))
        return _json_reply(200 if num else 404, {"succeeded": True, "num_freed": num})

    def _ilm(self, req: _Request, rest: list[str]) -> _Reply:
        if rest == ["status"] and req.method == "GET":
            return _json_reply(200, {"operation_mode": "RUNNING"})
        if not rest or rest[0] != "policy" or len(rest) > 2:
            return _not_emulated(req)
        with self._lock:
            if len(rest) == 1:
                return _json_reply(200, dict(self.policies)) if req.method == "GET" else _not_emulated(req)
            name = rest[1]
            if req.method == "GET":
                if name not in self.policies:
                    return _error(404, "resource_not_found_exception", f"Lifecycle policy not found: {name}")
                return _json_reply(200, {name: self.policies[name]})
            if req.method == "DELETE":
                if self.policies.pop(name, None) is None:
                    return _error(404, "resource_not_found_exception", f"Lifecycle policy not found: {name}")
                return _json_reply(200, {"acknowledged": True})
            if req.method == "PUT":
                body = req.json()
                if not isinstance(body, dict) or not isinstance(body.get("policy"), dict):
                    return _error(400, "parse_exception", "request body is required")
                version = self.policies.get(name, {}).get("version", 0) + 1
                self.policies[name] = {
                    "version": version,
                    "modified_date": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
                    "policy": body["policy"],
                    "in_use_by": {"indices": [], "data_streams": [], "composable_templates": []},
                }
                return _json_reply(200, {"acknowledged": True})
        return _not_emulated(req)


class OpenSearchPersona(_Persona):
    flavour: Flavour = "opensearch"
    VERSION = {
        "distribution": "opensearch",
        "number": "2.19.1",
        "build_type": "tar",
        "build_hash": "persona",
        "build_date": "2025-02-27T00:00:00.000000Z",
        "build_snapshot": False,
        "lucene_version": "9.12.1",
        "minimum_wire_compatibility_version": "7.10.0",
        "minimum_index_compatibility_version": "7.0.0",
    }

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.policies: dict[str, dict[str, Any]] = {}
        self._seq_no = 0

    def answer(self, req: _Request) -> _Reply:
        reply = self._route(req)
        reply.headers = [(k, v) for k, v in reply.headers if k.lower() != "x-elastic-product"]
        return reply

    def _route(self, req: _Request) -> _Reply:
        for name in ("Content-Type", "Accept"):
            value = req.headers.get(name.lower(), "")
            if COMPAT_MEDIA_TYPE in value:
                return _json_reply(406, {"error": f"{name} header [{value}] is not supported", "status": 406})
        seg = req.segments
        if not seg and req.method in ("GET", "HEAD"):
            return self.info(req, self.VERSION, "The OpenSearch Project: https://opensearch.org/")
        if seg and seg[0].startswith("_") and seg[0] not in OPENSEARCH_ROOTS:
            return _no_handler(req)
        if len(seg) >= 2 and seg[1] == "_pit":
            return _no_handler(req)
        if seg[:2] == ["_plugins", "_ism"]:
            return self._ism(req, seg[2:])
        return self.forward(req)

    def _ism(self, req: _Request, rest: list[str]) -> _Reply:
        if not rest or rest[0] != "policies" or len(rest) > 2:
            return _not_emulated(req)
        with self._lock:
            if len(rest) == 1:
                if req.method != "GET":
                    return _not_emulated(req)
                listed = [self._document(n) for n in sorted(self.policies)]
                return _json_reply(200, {"policies": listed, "total_policies": len(listed)})
            name = rest[1]
            if req.method == "GET":
                if name not in self.policies:
                    return _error(404, "status_exception", "Policy not found")
                return _json_reply(200, self._document(name))
            if req.method == "DELETE":
                if self.policies.pop(name, None) is None:
                    return _error(404, "status_exception", "Policy not found")
                return _json_reply(
                    200, {"_index": ".opendistro-ism-config", "_id": name, "result": "deleted"}
                )
            if req.method == "PUT":
                return self._put_policy(req, name)
        return _not_emulated(req)

    def _document(self, name: str) -> dict[str, Any]:
        stored = self.policies[name]
        return {
            "_id": name,
            "_version": stored["_version"],
            "_seq_no": stored["_seq_no"],
            "_primary_term": 1,
            "policy": {**stored["policy"], "policy_id": name},
        }

    def _put_policy(self, req: _Request, name: str) -> _Reply:
        body = req.json()
        if not isinstance(body, dict) or not isinstance(body.get("policy"), dict):
            return _error(400, "illegal_argument_exception", "Required body is missing or not a policy")
        params = parse_qs(req.query)
        current = self.policies.get(name)
        if current is not None:
            if params.get("if_seq_no") != [str(current["_seq_no"])] or params.get("if_primary_term") != ["1"]:
                return _error(
                    409,
                    "version_conflict_engine_exception",
                    f"[{name}]: version conflict, required seqNo [{params.get('if_seq_no', ['-'])[0]}], "
                    f"current document has seqNo [{current['_seq_no']}]",
                )
        self._seq_no += 1
        self.policies[name] = {
            "_version": (current or {}).get("_version", 0) + 1,
            "_seq_no": self._seq_no,
            "policy": body["policy"],
        }
        doc = self._document(name)
        doc["policy"] = {"policy": doc["policy"]}
        return _json_reply(200 if current else 201, doc)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        req = _Request(
            method=self.command,
            path=parts.path or "/",
            query=parts.query,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=self._body(),
        )
        try:
            reply = self.server.persona.answer(req)
        except Exception as e:  # noqa: BLE001 - the client sees a 502 rather than a dropped connection
            log.warning("persona could not answer %s %s: %s", req.method, req.path, e)
            reply = _error(502, "persona_upstream_error", str(e))
        self.server.proxy._record(Call(req.method, req.path, req.query, reply.status))
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        if req.method != "HEAD":
            self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if req.method != "HEAD":
            self.wfile.write(reply.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle

    def log_message(self, format: str, *args: Any) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("persona %s: %s", self.server.persona.flavour, format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    persona: _Persona
    proxy: PersonaProxy


class PersonaProxy:
    """A running persona: `url` to point a client at, and the calls it answered."""

    def __init__(self, flavour: Flavour, persona: _Persona, server: _Server) -> None:
        self.flavour = flavour
        self.calls: list[Call] = []
        self._persona = persona
        self._server = server
        self._recorders: list[list[Call]] = []
        self._lock = threading.Lock()
        host, port = server.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=server.serve_forever, name=f"persona-{flavour}", daemon=True)
        self._thread.start()

    def _record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)
            for sink in self._recorders:
                sink.append(call)

    @contextmanager
    def recording(self) -> Iterator[list[Call]]:
        """Yield a list that receives the calls answered while inside the block."""
        sink: list[Call] = []
        with self._lock:
            self._recorders.append(sink)
        try:
            yield sink
        finally:
            with self._lock:
                self._recorders.remove(sink)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def start_persona(flavour: Flavour, upstream: str) -> PersonaProxy:
    """Start the `flavour` persona on a free loopback port in front of the server at `upstream`."""
    personas: dict[str, type[_Persona]] = {
        "elasticsearch": ElasticsearchPersona,
        "opensearch": OpenSearchPersona,
    }
    if flavour not in personas:
        raise ServerError(f"persona flavour must be one of {sorted(personas)}, not {flavour!r}")
    persona = personas[flavour](upstream)
    server = _Server(("127.0.0.1", 0), _Handler)
    server.persona = persona
    proxy = PersonaProxy(flavour, persona, server)
    server.proxy = proxy
    return proxy
