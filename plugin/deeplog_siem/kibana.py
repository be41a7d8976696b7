"""kibana: packaged saved objects -> imported into Kibana or OpenSearch Dashboards.

Contract:
- `saved_objects(cfg) -> [object]`: the objects of `assets/kibana/*.ndjson`, with the data-view titles (and
  the index a Vega spec reads) set to the configured index names and an asset marker (content hash)
  appended to each description.
- `KibanaClient.import_objects(objects, overwrite=True) -> ImportResult` posts them as one ndjson file to
  `POST {url}[/s/{space}]/api/saved_objects/_import?overwrite=true` (multipart field `file`, xsrf headers of
  both products, API key or basic auth) and returns the per-object outcome; a refused request raises
  `KibanaError` naming the URL and what to fix.
- Credentials: the kibana section's own (api_key, username/password, or the URL's user information); else
  the elasticsearch section's api_key or username/password, but only to a URL with the same scheme, host
  and port as one of elasticsearch.hosts, or anywhere with `kibana.use_elasticsearch_credentials: true`;
  else none (a warning says so). Credentials for a plain http URL raise `KibanaError` unless
  `kibana.allow_insecure_http` is true. Messages and logs show the URL through `urls.redact`.
- `install_saved_objects(cfg, url, dry_run) -> [Step]`: skips the import when every object is already there
  with the same marker (`_bulk_get`), otherwise imports and reports each object's result or error.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import requests

from .config import Config, ElasticsearchConfig, KibanaConfig
from .errors import KibanaError
from .setup_steps import Step, asset_files, content_hash
from .urls import has_userinfo, origin, redact, redact_text

log = logging.getLogger(__name__)

# Data-view id -> the output index whose name (plus `*`) becomes its title.
DATA_VIEWS = {
    "deeplog-anomalies": "anomalies_index",
    "deeplog-runs": "runs_index",
    "deeplog-incidents": "incidents",
}
# Index a packaged Vega spec reads -> the output index whose name (plus `*`) replaces it.
VEGA_INDICES = {"deeplog-workflows*": "workflows_index", "deeplog-anomalies*": "anomalies_index"}
MARKER = "deeplog-siem asset"


def parse_ndjson(text: str, source: str = "ndjson") -> list[dict[str, Any]]:
    objects = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                objects.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise KibanaError(f"{source}:{n}: not valid JSON: {e}") from None
    return objects


def _marker(obj: dict[str, Any]) -> str:
    return f"({MARKER} {content_hash(obj)})"


def _vega_indices(vis_state: str, cfg: Config) -> str:
    """A Vega visualization names its index inside the spec (it has no data view): follow `cfg.output`."""
    vis = json.loads(vis_state)
    if vis.get("type") != "vega":
        return vis_state
    spec = json.loads(vis["params"]["spec"])
    for data in spec.get("data", []):
        url = data.get("url")
        if isinstance(url, dict) and url.get("index") in VEGA_INDICES:
            url["index"] = getattr(cfg.output, VEGA_INDICES[url["index"]]) + "*"
    vis["params"]["spec"] = json.dumps(spec, indent=1)
    return json.dumps(vis, separators=(",", ":"))


def saved_objects(cfg: Config | None = None) -> list[dict[str, Any]]:
    """The packaged saved objects, adapted to `cfg` (data-view titles) and marked with their content hash."""
    out = []
    for name, text in asset_files("kibana", ".ndjson"):
        for obj in parse_ndjson(text, name):
            obj = copy.deepcopy(obj)
            attrs = obj["attributes"]
            if obj["type"] == "index-pattern" and cfg is not None and obj["id"] in DATA_VIEWS:
                attrs["title"] = getattr(cfg.output, DATA_VIEWS[obj["id"]]) + "*"
            if obj["type"] == "visualization" and cfg is not None:
                attrs["visState"] = _vega_indices(attrs["visState"], cfg)
            if obj["type"] != "index-pattern":
                # Index patterns have no description; their title and time field are compared instead.
                attrs["description"] = f"{attrs.get('description', '')} {_marker(obj)}".strip()
            out.append(obj)
    return out


def to_ndjson(objects: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(o, separators=(",", ":")) + "\n" for o in objects).encode("utf-8")


def up_to_date(wanted: dict[str, Any], existing: dict[str, Any] | None) -> bool:
    """Whether the object Kibana holds is the one we would import (migrations may rewrite the rest)."""
    if not existing or "error" in existing:
        return False
    have, want = existing.get("attributes") or {}, wanted["attributes"]
    if wanted["type"] == "index-pattern":
        return have.get("title") == want["title"] and have.get("timeFieldName") == want.get("timeFieldName")
    return have.get("description") == want.get("description")


@dataclass(frozen=True)
class ObjectError:
    type: str
    id: str
    title: str
    error_type: str
    detail: str


@dataclass
class ImportResult:
    success: bool
    success_count: int
    results: list[dict[str, Any]] = field(default_factory=list)
    errors: list[ObjectError] = field(default_factory=list)


def _describe_error(err: dict[str, Any]) -> tuple[str, str]:
    """Kibana's per-object error -> (type, human detail)."""
    etype = str(err.get("type", "unknown"))
    if etype == "conflict":
        return etype, "an object with this id already exists (conflict; setup imports with overwrite=true)"
    if etype == "ambiguous_conflict":
        dests = ", ".join(str(d.get("id")) for d in err.get("destinations", []))
        return etype, f"several existing objects match it ({dests}); resolve in Saved Objects management"
    if etype == "missing_references":
        refs = ", ".join(f"{r.get('type')}/{r.get('id')}" for r in err.get("references", []))
        return etype, f"references objects that do not exist: {refs}"
    if etype == "unsupported_type":
        return etype, "this Kibana does not know the object type"
    message = err.get("message") or err.get("reason") or json.dumps(err)
    status = err.get("statusCode")
    return etype, f"{message}" + (f" (HTTP {status})" if status else "")


def _credentials(
    url: str, cfg: KibanaConfig, es_cfg: ElasticsearchConfig | None
) -> tuple[KibanaConfig | ElasticsearchConfig | None, str | None]:
    """(the section whose credentials go on the session, what is sent, named for a message)."""
    if cfg.api_key or cfg.username is not None:
        return cfg, "kibana.api_key" if cfg.api_key else "kibana.username/password"
    if has_userinfo(url):
        return None, "the Kibana URL's user name and password"
    if es_cfg is None or not (es_cfg.api_key or es_cfg.username is not None):
        return None, None
    # The elasticsearch credentials go to the servers they were given for, and elsewhere only when asked.
    same_server = any(origin(h) == origin(url) for h in es_cfg.hosts)
    if same_server or cfg.use_elasticsearch_credentials:
        return es_cfg, "elasticsearch.api_key" if es_cfg.api_key else "elasticsearch.username/password"
    log.warning(
        "kibana: the elasticsearch credentials are not sent to %s, which is not an elasticsearch host; set "
        "kibana.api_key or username/password, or kibana.use_elasticsearch_credentials: true",
        redact(url),
    )
    return None, None


class KibanaClient:
    """The two saved-objects calls setup needs, with requests."""

    def __init__(
        self, url: str, cfg: KibanaConfig | None = None, es_cfg: ElasticsearchConfig | None = None
    ) -> None:
        cfg = cfg or KibanaConfig()
        self.url = url.rstrip("/")
        # What messages and logs show: the URL without user information or query values.
        self.where = redact(self.url)
        self.space = cfg.space
        self.timeout = cfg.request_timeout
        auth_src, credentials = _credentials(self.url, cfg, es_cfg)
        if credentials is not None and self.url.lower().startswith("http://") and not cfg.allow_insecure_http:
            raise KibanaError(
                f"{credentials} would be sent unencrypted to Kibana at {self.where}; use an https:// URL, or "
                "set kibana.allow_insecure_http: true where the network to it is trusted"
            )
        self.session = requests.Session()
        # Kibana checks kbn-xsrf, OpenSearch Dashboards osd-xsrf; each ignores the other's header.
        self.session.headers.update({"kbn-xsrf": "true", "osd-xsrf": "true", "accept": "application/json"})
        self.session.verify = cfg.ca_certs or cfg.verify_certs
        # requests reads user information in the URL itself; the configured credentials go on the session.
        if auth_src is not None and auth_src.api_key:
            self.session.headers["authorization"] = f"ApiKey {auth_src.api_key}"
        elif auth_src is not None and auth_src.username is not None:
            self.session.auth = (auth_src.username, auth_src.password or "")

    def close(self) -> None:
        self.session.close()

    def _api(self, path: str) -> str:
        space = f"/s/{self.space}" if self.space else ""
        return f"{self.url}{space}/api/saved_objects/{path}"

    def _post(self, path: str, **kw: Any) -> requests.Response:
        target = self._api(path)
        try:
            return self.session.post(target, timeout=self.timeout, **kw)
        except requests.exceptions.SSLError as e:
            raise KibanaError(
                f"TLS handshake with {self.where} failed ({redact_text(str(e))[:200]}); set kibana.ca_certs "
                "or kibana.verify_certs: false for testing"
            ) from None
        except requests.RequestException as e:
            raise KibanaError(
                f"cannot connect to Kibana at {self.where}; check kibana.url / --kibana-url "
                f"({redact_text(str(e))[:200]})"
            ) from None

    def _refusal(self, resp: requests.Response, what: str) -> KibanaError:
        try:
            body = resp.json()
            message = body.get("message") or body.get("error") or resp.text
        except ValueError:
            message = resp.text
        message = redact_text(str(message))[:300]
        hint = {
            401: "check kibana.api_key or username/password (the elasticsearch credentials are sent only to "
            "an elasticsearch host, or with kibana.use_elasticsearch_credentials: true)",
            403: "the user needs the Saved Objects Management privilege (all) in this space",
            404: f"is {self.where} Kibana/OpenSearch Dashboards, and does the space {self.space!r} exist?",
        }.get(resp.status_code, "")
        return KibanaError(
            f"Kibana at {self.where} refused the {what} (HTTP {resp.status_code}: {message})"
            + (f"; {hint}" if hint else "")
        )

    def bulk_get(self, objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]] | None:
        """What Kibana holds for these (type, id)s; None when the API is unavailable (then just import)."""
        resp = self._post("_bulk_get", json=[{"type": o["type"], "id": o["id"]} for o in objects])
        if resp.status_code in (401, 403):
            raise self._refusal(resp, "saved-objects lookup")
        if resp.status_code != 200:
            log.info("saved-objects _bulk_get unavailable at %s (HTTP %s)", self.where, resp.status_code)
            return None
        found = resp.json().get("saved_objects", [])
        return {(o.get("type"), o.get("id")): o for o in found}

    def import_objects(self, objects: list[dict[str, Any]], overwrite: bool = True) -> ImportResult:
        files = {"file": ("deeplog-siem.ndjson", to_ndjson(objects), "application/ndjson")}
        resp = self._post("_import", params={"overwrite": "true" if overwrite else "false"}, files=files)
        if resp.status_code != 200:
            raise self._refusal(resp, "saved-objects import")
        try:
            body = resp.json()
        except ValueError:
            raise KibanaError(
                f"Kibana at {self.where} answered the import with non-JSON: {redact_text(resp.text[:200])}"
            ) from None
        titles = {(o["type"], o["id"]): o["attributes"].get("title", "") for o in objects}
        errors = []
        for err in body.get("errors") or []:
            etype, detail = _describe_error(err.get("error") or {})
            key = (str(err.get("type")), str(err.get("id")))
            title = err.get("title") or (err.get("meta") or {}).get("title") or titles.get(key, "")
            errors.append(ObjectError(key[0], key[1], title, etype, detail))
        return ImportResult(
            success=bool(body.get("success")),
            success_count=int(body.get("successCount", 0)),
            results=list(body.get("successResults") or []),
            errors=errors,
        )


def _planned(obj: dict[str, Any], existing: dict[tuple[str, str], Any], stale: bool, where: str) -> Step:
    name = f"{obj['type']}/{obj['id']}"
    if not stale:
        return Step("saved object", name, "unchanged")
    held = (existing.get((obj["type"], obj["id"])) or {}).get("attributes")
    return Step("saved object", name, "would update" if held else "would create", f"into {where}")


def install_saved_objects(cfg: Config, url: str, dry_run: bool = False) -> list[Step]:
    """Import the saved objects unless they are all up to date; one Step per object."""
    objects = saved_objects(cfg)
    client = KibanaClient(url, cfg.kibana, cfg.elasticsearch)
    where = f"{client.where}" + (f" space {client.space}" if client.space else "")
    try:
        existing = client.bulk_get(objects)
        stale = (
            objects
            if existing is None
            else [o for o in objects if not up_to_date(o, existing.get((o["type"], o["id"])))]
        )
        if not stale:
            return [Step("saved object", f"{o['type']}/{o['id']}", "unchanged") for o in objects]
        if dry_run:
            return [_planned(o, existing or {}, o in stale, where) for o in objects]
        # Import all of them, not only the stale ones: one self-contained file whose references resolve
        # within it; the up-to-date ones are rewritten with identical content.
        result = client.import_objects(objects, overwrite=True)
    finally:
        client.close()
    steps = []
    failed = {(e.type, e.id) for e in result.errors}
    by_key = {(r.get("type"), r.get("id")): r for r in result.results}
    for o in objects:
        key = (o["type"], o["id"])
        if key in failed:
            continue
        r = by_key.get(key, {})
        detail = f"into {where}"
        if r.get("destinationId") and r["destinationId"] != o["id"]:
            detail += f" as id {r['destinationId']}"
        steps.append(Step("saved object", f"{key[0]}/{key[1]}", "imported", detail))
    for e in result.errors:
        steps.append(Step("saved object", f"{e.type}/{e.id}", "failed", f"{e.error_type}: {e.detail}"))
    if not result.success and not result.errors:
        steps.append(Step("saved object", "*", "failed", "Kibana reported success: false without errors"))
    return steps
