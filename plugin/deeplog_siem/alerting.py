"""alerting: the shipped alert rules and monitors -> installed where the product has the feature.

Contract:
- `detection_rules(cfg) -> [rule]`: the Elastic Security detection rules of `assets/alerting/*.ndjson`, their
  `index` set to the configured incidents index (`NAME*`) and an asset marker (content hash) appended to each
  description. `install_detection_rules(cfg, url, dry_run) -> [Step]` imports them through the detection
  engine's rule import API (`POST {url}[/s/{space}]/api/detection_engine/rules/_import?overwrite=true`,
  multipart field `file` holding ndjson, the xsrf header, Kibana's credentials as `kibana.KibanaClient`
  chooses them) unless each is already there with the same marker (`GET .../api/detection_engine/rules
  ?rule_id=`); a refused request is a `failed` step naming the reason, never an exception.
- `monitors(cfg) -> {name: body}`: the OpenSearch Alerting monitors of `assets/alerting/opensearch-monitor-*.json`
  (indices set to the configured incidents and runs indices, the content hash in `ui_metadata`).
  `install_monitors(clients, cfg, dry_run) -> [Step]` creates or updates them (`_plugins/_alerting/monitors`)
  on OpenSearch with the Alerting plugin; elsewhere each is a `skipped` step saying why and what to use.
- The Kibana alerting rules and the elastalert2 rule under `assets/alerting/` are examples to install by hand
  (README "Alerting"): their connectors and alert channels are the user's.
"""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

import requests
from elasticsearch import ApiError

from .config import Config
from .errors import KibanaError
from .es import Clients
from .kibana import KibanaClient, parse_ndjson, to_ndjson
from .setup_steps import Action, Step, asset_files, asset_text, content_hash
from .urls import redact_text

log = logging.getLogger(__name__)

MARKER = "deeplog-siem asset"
MONITORS = ("opensearch-monitor-incidents.json", "opensearch-monitor-watchdog.json")
RULES_API = "api/detection_engine/rules"


def _marked(text: str, obj: dict[str, Any]) -> str:
    return f"{text} ({MARKER} {content_hash(obj)})"


def detection_rules(cfg: Config | None = None) -> list[dict[str, Any]]:
    """The packaged detection rules, adapted to `cfg` and marked with their content hash."""
    out = []
    for name, text in asset_files("alerting", ".ndjson"):
        for rule in parse_ndjson(text, name):
            rule = copy.deepcopy(rule)
            if cfg is not None:
                rule["index"] = [f"{cfg.output.incidents}*"]
            rule["description"] = _marked(rule["description"], rule)
            out.append(rule)
    return out


def _retarget(obj: Any, names: dict[str, str]) -> Any:
    """Replace the packaged index patterns by the configured ones, wherever the body names them."""
    if isinstance(obj, dict):
        return {k: _retarget(v, names) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_retarget(v, names) for v in obj]
    return names.get(obj, obj) if isinstance(obj, str) else obj


def monitors(cfg: Config | None = None) -> dict[str, dict[str, Any]]:
    """Monitor name -> body, adapted to `cfg` and carrying its content hash."""
    names = {}
    if cfg is not None:
        names = {
            "deeplog-incidents*": f"{cfg.output.incidents}*",
            "deeplog-runs*": f"{cfg.output.runs_index}*",
        }
    out = {}
    for file in MONITORS:
        body = _retarget(json.loads(asset_text("alerting", file)), names)
        body["ui_metadata"] = {"deeplog-siem": {"assets_hash": content_hash(body)}}
        out[body["name"]] = body
    return out


# ------------------------------------------------------------------------------------- OpenSearch Alerting


def _req(clients: Clients, method: str, path: str, body: Any = None) -> Any:
    headers = {"accept": "application/json", "content-type": "application/json"}
    return clients.es.perform_request(method, path, headers=headers, body=body).body


def _find_monitor(clients: Clients, name: str) -> dict[str, Any] | None:
    query = {"size": 10, "query": {"match_phrase": {"monitor.name": name}}}
    hits = _req(clients, "POST", "/_plugins/_alerting/monitors/_search", query)["hits"]["hits"]
    return next((h for h in hits if (h.get("_source") or {}).get("name") == name), None)


def _unsupported(clients: Clients) -> str | None:
    """Why monitors cannot be installed here, or None."""
    if clients.flavour != "opensearch":
        return (
            "Elasticsearch has no OpenSearch Alerting: the detection rule (with --kibana-url) and the Kibana "
            "rules in the package's assets/alerting are its alerting (README, Alerting)"
        )
    try:
        _req(clients, "POST", "/_plugins/_alerting/monitors/_search", {"size": 0, "query": {"match_all": {}}})
    except ApiError as e:
        if e.meta.status in (400, 404, 405):
            return (
                f"the server has no Alerting plugin (_plugins/_alerting answered {e.meta.status}); install the "
                "monitors in the package's assets/alerting/opensearch-monitor-*.json by hand where it has (README, Alerting)"
            )
        raise
    except Exception as e:  # noqa: BLE001 - a transport refusal means "not here"
        return f"the server refused the Alerting API ({e}); install the package's assets/alerting/opensearch-monitor-*.json by hand"
    return None


def install_monitors(clients: Clients, cfg: Config, dry_run: bool = False) -> list[Step]:
    wanted = monitors(cfg)
    why = _unsupported(clients)
    if why is not None:
        return [Step("alerting monitor", name, "skipped", why) for name in wanted]
    steps = []
    for name, body in wanted.items():
        try:
            current = _find_monitor(clients, name)
            held = ((current or {}).get("_source") or {}).get("ui_metadata") or {}
            if held == body["ui_metadata"]:
                steps.append(Step("alerting monitor", name, "unchanged"))
                continue
            action: Action = "updated" if current else "created"
            if dry_run:
                steps.append(Step("alerting monitor", name, "would update" if current else "would create"))
                continue
            if current:
                _req(clients, "PUT", f"/_plugins/_alerting/monitors/{current['_id']}", body)
            else:
                _req(clients, "POST", "/_plugins/_alerting/monitors", body)
            steps.append(Step("alerting monitor", name, action))
        except ApiError as e:
            steps.append(Step("alerting monitor", name, "failed", f"{e.meta.status} {e.body}"[:300]))
    return steps


# --------------------------------------------------------------------------------- Elastic Security rules


def _rules_url(client: KibanaClient, path: str) -> str:
    space = f"/s/{client.space}" if client.space else ""
    return f"{client.url}{space}/{RULES_API}{path}"


def _existing_description(client: KibanaClient, rule_id: str) -> str | None:
    resp = client.session.get(_rules_url(client, ""), params={"rule_id": rule_id}, timeout=client.timeout)
    if resp.status_code == 404:
        return None
    if resp.status_code != 200:
        raise KibanaError(f"Kibana at {client.where} refused the rule lookup (HTTP {resp.status_code})")
    return resp.json().get("description")


def install_detection_rules(cfg: Config, url: str, dry_run: bool = False) -> list[Step]:
    """Import the detection rules unless each is up to date; one Step per rule."""
    rules = detection_rules(cfg)
    try:
        client = KibanaClient(url, cfg.kibana, cfg.elasticsearch)
    except KibanaError as e:
        return [Step("detection rule", r["rule_id"], "failed", str(e)) for r in rules]
    try:
        stale = [r for r in rules if _existing_description(client, r["rule_id"]) != r["description"]]
        if not stale:
            return [Step("detection rule", r["rule_id"], "unchanged") for r in rules]
        if dry_run:
            return [
                Step("detection rule", r["rule_id"], "would update" if r in stale else "unchanged")
                for r in rules
            ]
        files = {"file": ("deeplog-siem-rules.ndjson", to_ndjson(stale), "application/ndjson")}
        resp = client.session.post(
            _rules_url(client, "/_import"), params={"overwrite": "true"}, files=files, timeout=client.timeout
        )
    except (requests.RequestException, KibanaError, ValueError) as e:
        reason = redact_text(str(e))[:300]
        return [Step("detection rule", r["rule_id"], "failed", reason) for r in rules]
    finally:
        client.close()
    if resp.status_code == 404:
        # Kibana without the Security app (or OpenSearch Dashboards) has no detection engine.
        why = f"{client.where} has no detection engine ({RULES_API}/_import: HTTP 404); see README, Alerting"
        return [Step("detection rule", r["rule_id"], "skipped", why) for r in rules]
    if resp.status_code != 200:
        detail = f"HTTP {resp.status_code}: {redact_text(resp.text)[:200]}"
        return [Step("detection rule", r["rule_id"], "failed", detail) for r in stale]
    body = resp.json()
    failed = {}
    for err in body.get("errors") or []:
        e = err.get("error") or {}
        failed[str(err.get("rule_id"))] = f"{e.get('status_code', '')} {e.get('message', '')}".strip()
    steps = []
    for r in rules:
        if r["rule_id"] in failed:
            steps.append(Step("detection rule", r["rule_id"], "failed", failed[r["rule_id"]]))
        elif r in stale:
            steps.append(Step("detection rule", r["rule_id"], "imported", f"into {client.where}"))
        else:
            steps.append(Step("detection rule", r["rule_id"], "unchanged"))
    return steps
