"""setup_assets: the packaged SIEM assets -> installed on a cluster (and Kibana), idempotently.

Contract:
- `index_templates(cfg, lifecycle=None) -> {name: body}`: composable index templates for the anomalies, runs,
  workflows, state and incidents indices named in `cfg.output` (template name = index name, pattern `NAME*`). The
  bodies come from `assets/templates/*.json`; `_meta.deeplog_siem.assets_hash` identifies their content.
- `index_mappings(kind)`: the `mappings` of one packaged template (kind: anomalies | runs | workflows | state | incidents).
- `ingest_pipelines() -> {name: body}` and `lifecycle_policies(cfg, "ilm"|"ism") -> {name: body}`.
- `create_indices(clients, cfg, dry_run=False) -> [Step]`: creates every missing output index with the
  template's settings and mappings (so it works even where templates could not be installed) and updates the
  mapping of an existing index whose mapping hash differs (additive changes; a conflict is reported).
- `run_setup(clients, cfg, kibana_url=None, dry_run=False) -> SetupReport`: templates, lifecycle policies,
  ingest pipelines, indices, the Kibana saved objects, then the alerting (`alerting`: OpenSearch Alerting
  monitors, the Elastic Security detection rules). What the server does not support is a `skipped`
  step with the reason; nothing already up to date is written again (a second run reports no change).
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from elasticsearch import ApiError

from .alerting import install_detection_rules, install_monitors
from .config import Config
from .errors import ConfigError, DeeplogError
from .es import Clients
from .kibana import install_saved_objects
from .setup_steps import CHANGES, Action, Step, asset_text, content_hash

log = logging.getLogger(__name__)

KINDS = ("anomalies", "runs", "workflows", "state", "incidents")
Kind = Literal["anomalies", "runs", "workflows", "state", "incidents"]
Lifecycle = Literal["ilm", "ism"]
PIPELINES = ("deeplog-event-ingested", "deeplog-hdfs", "deeplog-openstack", "deeplog-syslog")
MANAGED_BY = "deeplog-siem"


def _would(action: Action) -> Action:
    return "would create" if action == "created" else "would update"


@dataclass
class SetupReport:
    steps: list[Step] = field(default_factory=list)
    dry_run: bool = False

    @property
    def changed(self) -> list[Step]:
        return [s for s in self.steps if s.action in CHANGES]

    @property
    def failed(self) -> list[Step]:
        return [s for s in self.steps if s.action == "failed"]

    @property
    def skipped(self) -> list[Step]:
        return [s for s in self.steps if s.action == "skipped"]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.steps:
            out[s.action] = out.get(s.action, 0) + 1
        return out

    def summary(self) -> str:
        counts = ", ".join(f"{n} {a}" for a, n in sorted(self.counts().items()))
        if self.failed:
            verdict = f"{len(self.failed)} step(s) FAILED"
        elif not self.changed:
            verdict = "nothing changed: everything was already installed"
        elif self.dry_run:
            verdict = "dry run: nothing was written"
        else:
            verdict = "done"
        return f"setup: {verdict} ({counts})"


# ------------------------------------------------------------------------------------------- the assets


def load_template(kind: Kind) -> dict[str, Any]:
    """The packaged template body of one index kind, as shipped (patterns for the default index names)."""
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {', '.join(KINDS)}")
    return json.loads(asset_text("templates", f"{kind}.json"))


def index_mappings(kind: Kind) -> dict[str, Any]:
    """The `mappings` of one packaged template (what the sink's documents must fit)."""
    return load_template(kind)["template"]["mappings"]


def index_names(cfg: Config) -> dict[str, str]:
    names = {
        "anomalies": cfg.output.anomalies_index,
        "runs": cfg.output.runs_index,
        "workflows": cfg.output.workflows_index,
        "state": cfg.output.state_index,
        "incidents": cfg.output.incidents,
    }
    seen: dict[str, str] = {}
    for kind, name in names.items():
        if name in seen:
            raise ConfigError(f"output.{kind}_index: same index name as output.{seen[name]}_index ({name!r})")
        seen[name] = kind
    return names


def retention_days(cfg: Config, kind: str) -> int | None:
    return {"anomalies": cfg.retention.anomalies_days, "runs": cfg.retention.runs_days}.get(kind)


def _mappings_meta(mappings: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in mappings.items() if k != "_meta"}
    return {"managed_by": MANAGED_BY, "mapping_hash": content_hash(body)}


def index_templates(cfg: Config, lifecycle: Lifecycle | None = None) -> dict[str, dict[str, Any]]:
    """Template name -> body for the output indices of `cfg` (lifecycle settings only when given)."""
    out: dict[str, dict[str, Any]] = {}
    for kind, name in index_names(cfg).items():
        body = copy.deepcopy(load_template(kind))
        body["index_patterns"] = [f"{name}*"]
        # Overlapping templates may not share a priority; the longer (more specific) name wins, so
        # anomalies_index "deeplog" and runs_index "deeplog-runs" still get their own mappings.
        body["priority"] = 200 + len(name)
        mappings = body["template"]["mappings"]
        mappings["_meta"] = _mappings_meta(mappings)
        settings = body["template"].setdefault("settings", {}).setdefault("index", {})
        if lifecycle is not None and retention_days(cfg, kind) is not None:
            if lifecycle == "ilm":
                settings["lifecycle"] = {"name": policy_name(name), "rollover_alias": name}
            else:
                settings["plugins.index_state_management.rollover_alias"] = name
        meta = {k: v for k, v in body.get("_meta", {}).items() if k != MANAGED_BY}
        body["_meta"] = {**meta, MANAGED_BY: {"assets_hash": content_hash(body)}}
        out[name] = body
    return out


def ingest_pipelines() -> dict[str, dict[str, Any]]:
    """Pipeline name -> body, in install order (the parsing pipelines call `deeplog-event-ingested`)."""
    return {name: json.loads(asset_text("ingest_pipelines", f"{name}.json")) for name in PIPELINES}


def policy_name(index: str) -> str:
    return f"{index}-retention"


def lifecycle_policies(cfg: Config, lifecycle: Lifecycle) -> dict[str, dict[str, Any]]:
    """Policy name -> body (ILM or ISM) for each output index with a retention period."""
    r = cfg.retention
    out: dict[str, dict[str, Any]] = {}
    for kind, name in index_names(cfg).items():
        days = retention_days(cfg, kind)
        if days is None:
            continue
        if lifecycle == "ilm":
            policy: dict[str, Any] = {
                "phases": {
                    "hot": {
                        "actions": {
                            "rollover": {
                                "max_age": r.rollover_max_age,
                                "max_primary_shard_size": r.rollover_max_primary_shard_size,
                            }
                        }
                    },
                    "delete": {"min_age": f"{days}d", "actions": {"delete": {}}},
                }
            }
            policy["_meta"] = {MANAGED_BY: {"assets_hash": content_hash(policy)}}
            out[policy_name(name)] = {"policy": policy}
        else:
            policy = {
                "default_state": "hot",
                "states": [
                    {
                        "name": "hot",
                        "actions": [
                            # ISM's min_size is the total primary size; the index has one primary shard.
                            {
                                "rollover": {
                                    "min_index_age": r.rollover_max_age,
                                    "min_size": r.rollover_max_primary_shard_size,
                                }
                            }
                        ],
                        "transitions": [
                            {"state_name": "delete", "conditions": {"min_index_age": f"{days}d"}}
                        ],
                    },
                    {"name": "delete", "actions": [{"delete": {}}], "transitions": []},
                ],
                "ism_template": [{"index_patterns": [f"{name}-*"], "priority": 100}],
            }
            # ISM policies have no _meta: the content hash rides in the description.
            policy["description"] = (
                f"deeplog-siem retention of {name}: roll over, delete after {days} days "
                f"[assets {content_hash(policy)}]"
            )
            out[policy_name(name)] = {"policy": policy}
    return out


# ------------------------------------------------------------------------------------------ talking to ES


def _req(es: Any, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None) -> Any:
    headers = {"accept": "application/json"}
    if body is not None:
        headers["content-type"] = "application/json"
    return es.perform_request(method, path, headers=headers, body=body, params=params).body


def _get_or_none(es: Any, path: str) -> Any:
    try:
        return _req(es, "GET", path)
    except ApiError as e:
        if e.meta.status == 404:
            return None
        raise


def _supported(es: Any, path: str) -> bool:
    """Whether GET `path` has a handler (404 on a named resource still means supported)."""
    try:
        _req(es, "GET", path)
        return True
    except ApiError as e:
        text = str(e.body) if e.body is not None else str(e)
        return e.meta.status == 404 and "no handler found" not in text
    except Exception:  # noqa: BLE001 - a transport refusal means "not here"
        return False


def _error_text(e: Exception) -> str:
    if isinstance(e, ApiError):
        err = e.body.get("error") if isinstance(e.body, dict) else e.body
        if isinstance(err, dict):
            reason = err.get("reason") or err.get("type")
            cause = err.get("caused_by", {}).get("reason") if isinstance(err.get("caused_by"), dict) else None
            return f"{e.meta.status} {reason}" + (f" ({cause})" if cause and cause != reason else "")
        return f"{e.meta.status} {err}"
    return str(e)


def detect_lifecycle(clients: Clients) -> Lifecycle | None:
    """ILM on Elasticsearch, ISM on OpenSearch, or None where the server has neither."""
    if clients.flavour == "elasticsearch":
        return "ilm" if _supported(clients.es, "/_ilm/status") else None
    return "ism" if _supported(clients.es, "/_plugins/_ism/policies") else None


def install_templates(
    clients: Clients, cfg: Config, lifecycle: Lifecycle | None, dry_run: bool
) -> list[Step]:
    steps = []
    if not _supported(clients.es, "/_index_template"):
        for name in index_names(cfg).values():
            steps.append(
                Step(
                    "index template",
                    name,
                    "skipped",
                    "the server has no composable index templates (/_index_template); "
                    "indices are still created with the full mapping",
                )
            )
        return steps
    for name, body in index_templates(cfg, lifecycle).items():
        want = body["_meta"][MANAGED_BY]["assets_hash"]
        try:
            current = _get_or_none(clients.es, f"/_index_template/{name}")
            have = None
            if current and current.get("index_templates"):
                meta = current["index_templates"][0]["index_template"].get("_meta") or {}
                have = (meta.get(MANAGED_BY) or {}).get("assets_hash")
            if have == want:
                steps.append(Step("index template", name, "unchanged"))
                continue
            action: Action = "updated" if current else "created"
            if dry_run:
                steps.append(Step("index template", name, _would(action), f"pattern {name}*"))
                continue
            _req(clients.es, "PUT", f"/_index_template/{name}", body)
            steps.append(Step("index template", name, action, f"pattern {name}*"))
        except ApiError as e:
            steps.append(Step("index template", name, "failed", _error_text(e)))
    return steps


def install_policies(clients: Clients, cfg: Config, lifecycle: Lifecycle | None, dry_run: bool) -> list[Step]:
    if not cfg.retention.enabled:
        return [
            Step(
                "lifecycle policy",
                "retention",
                "skipped",
                "retention is off (set retention.anomalies_days / retention.runs_days to enable it)",
            )
        ]
    if lifecycle is None:
        api = "ILM (/_ilm)" if clients.flavour == "elasticsearch" else "ISM (/_plugins/_ism)"
        return [
            Step(
                "lifecycle policy",
                policy_name(n),
                "skipped",
                f"the server does not support {api}; documents are kept until deleted by hand",
            )
            for k, n in index_names(cfg).items()
            if retention_days(cfg, k) is not None
        ]
    steps = []
    for name, body in lifecycle_policies(cfg, lifecycle).items():
        try:
            if lifecycle == "ilm":
                current = _get_or_none(clients.es, f"/_ilm/policy/{name}")
                have = ((current or {}).get(name, {}).get("policy", {}).get("_meta") or {}).get(MANAGED_BY)
                same = have == body["policy"]["_meta"][MANAGED_BY]
                path, params = f"/_ilm/policy/{name}", None
            else:
                current = _get_or_none(clients.es, f"/_plugins/_ism/policies/{name}")
                have = (current or {}).get("policy", {}).get("description")
                same = have == body["policy"]["description"]
                path = f"/_plugins/_ism/policies/{name}"
                params = (
                    {"if_seq_no": current["_seq_no"], "if_primary_term": current["_primary_term"]}
                    if current
                    else None
                )
            if same:
                steps.append(Step("lifecycle policy", name, "unchanged"))
                continue
            action: Action = "updated" if current else "created"
            if dry_run:
                steps.append(Step("lifecycle policy", name, _would(action), lifecycle.upper()))
                continue
            _req(clients.es, "PUT", path, body, params=params)
            steps.append(Step("lifecycle policy", name, action, lifecycle.upper()))
        except ApiError as e:
            steps.append(Step("lifecycle policy", name, "failed", _error_text(e)))
    return steps


def install_pipelines(clients: Clients, dry_run: bool) -> list[Step]:
    if not clients.has_ingest:
        reason = (
            "the server has no ingest pipelines (/_ingest/pipeline); stamp event.ingested in the shipper "
            "or set source.checkpoint_field to the timestamp field"
        )
        return [Step("ingest pipeline", ", ".join(PIPELINES), "skipped", reason)]
    steps = []
    for name, body in ingest_pipelines().items():
        try:
            current = _get_or_none(clients.es, f"/_ingest/pipeline/{name}")
            if current and current.get(name) == body:
                steps.append(Step("ingest pipeline", name, "unchanged"))
                continue
            action: Action = "updated" if current else "created"
            if dry_run:
                steps.append(Step("ingest pipeline", name, _would(action)))
                continue
            _req(clients.es, "PUT", f"/_ingest/pipeline/{name}", body)
            steps.append(Step("ingest pipeline", name, action))
        except ApiError as e:
            steps.append(Step("ingest pipeline", name, "failed", _error_text(e)))
    return steps


def create_indices(
    clients: Clients, cfg: Config, dry_run: bool = False, lifecycle: Lifecycle | None = None
) -> list[Step]:
    """Create the missing output indices (or rollover aliases) and bring existing mappings up to date."""
    steps = []
    for name, body in index_templates(cfg, lifecycle).items():
        kind = next(k for k, n in index_names(cfg).items() if n == name)
        template = body["template"]
        rollover = lifecycle is not None and retention_days(cfg, kind) is not None
        try:
            current = _get_or_none(clients.es, f"/{name}/_mapping")
            if current is None:
                target = f"{name}-000001" if rollover else name
                create: dict[str, Any] = {"settings": template["settings"], "mappings": template["mappings"]}
                if rollover:
                    create["aliases"] = {name: {"is_write_index": True}}
                detail = f"rollover alias {name} -> {target}" if rollover else ""
                if dry_run:
                    steps.append(Step("index", target, "would create", detail))
                    continue
                try:
                    _req(clients.es, "PUT", f"/{target}", create)
                    steps.append(Step("index", target, "created", detail))
                except ApiError as e:
                    if "resource_already_exists" not in str(e.body):
                        raise
                    steps.append(Step("index", target, "unchanged", "created concurrently"))
                continue
            if rollover and name in current:
                steps.append(
                    Step(
                        "index",
                        name,
                        "skipped",
                        f"retention needs {name} to be a rollover alias, but it is an index; reindex it into "
                        f"{name}-000001 and add the alias (see README, Retention) — retention is not applied to it",
                    )
                )
            want = template["mappings"]["_meta"]["mapping_hash"]
            for index, m in sorted(current.items()):
                have = ((m.get("mappings") or {}).get("_meta") or {}).get("mapping_hash")
                if have == want:
                    steps.append(Step("index", index, "unchanged"))
                    continue
                if dry_run:
                    steps.append(Step("index", index, "would update", "mapping differs from the template"))
                    continue
                update = {k: v for k, v in template["mappings"].items()}
                try:
                    _req(clients.es, "PUT", f"/{index}/_mapping", update)
                    steps.append(Step("index", index, "updated", "mapping brought up to the template"))
                except ApiError as e:
                    steps.append(
                        Step(
                            "index",
                            index,
                            "failed",
                            f"mapping cannot be updated in place ({_error_text(e)}); reindex into a new index",
                        )
                    )
        except ApiError as e:
            steps.append(Step("index", name, "failed", _error_text(e)))
    return steps


def ensure_index_like(clients: Clients, name: str, kind: Kind) -> bool:
    """Create index `name` with the settings and mappings of the packaged `kind` template unless it exists
    (a backfill preview's index, which no template pattern covers) -> whether it was created."""
    if clients.es.indices.exists(index=name):
        return False
    template = load_template(kind)["template"]
    mappings = copy.deepcopy(template["mappings"])
    mappings["_meta"] = _mappings_meta(mappings)
    try:
        _req(clients.es, "PUT", f"/{name}", {"settings": template.get("settings", {}), "mappings": mappings})
    except ApiError as e:
        if "resource_already_exists" not in str(e.body):
            raise
        return False
    return True


def run_setup(
    clients: Clients, cfg: Config, kibana_url: str | None = None, dry_run: bool = False
) -> SetupReport:
    """Install everything; each part reports its own steps so one failure does not hide the rest."""
    report = SetupReport(dry_run=dry_run)
    lifecycle = detect_lifecycle(clients) if cfg.retention.enabled else None
    report.steps += install_templates(clients, cfg, lifecycle, dry_run)
    report.steps += install_policies(clients, cfg, lifecycle, dry_run)
    report.steps += install_pipelines(clients, dry_run)
    report.steps += create_indices(clients, cfg, dry_run, lifecycle)
    url = kibana_url or cfg.kibana.url
    if url is None:
        report.steps.append(
            Step("saved object", "*", "skipped", "no Kibana URL (set kibana.url or pass --kibana-url)")
        )
    else:
        try:
            report.steps += install_saved_objects(cfg, url, dry_run)
        except DeeplogError as e:
            report.steps.append(Step("saved object", "*", "failed", str(e)))
    report.steps += install_monitors(clients, cfg, dry_run)
    if url is None:
        report.steps.append(
            Step("detection rule", "*", "skipped", "no Kibana URL (set kibana.url or pass --kibana-url)")
        )
    elif clients.flavour != "elasticsearch":
        why = "OpenSearch Dashboards has no detection engine: the OpenSearch Alerting monitors alert instead"
        report.steps.append(Step("detection rule", "*", "skipped", why))
    else:
        report.steps += install_detection_rules(cfg, url, dry_run)
    for s in report.steps:
        log.debug("setup step: %s", s.line())
    return report
