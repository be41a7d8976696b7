"""privileges: every Elasticsearch/OpenSearch API the runtime calls, the privilege each needs, and per command
the privileges its role needs.

Read by the README's privileges section (`render_markdown()` is that section's table, verbatim), by
`deeplog-siem config privileges` (prints it), and by the tests that run each command through a recording
proxy and map every call to an `Endpoint` here.

Contract: `ENDPOINTS` is the table of APIs (method, path pattern, privilege, scope); `match(method, path)` ->
(`Endpoint`, placeholders) or None for a call the table does not know. `COMMANDS` maps each command to its
`Use`s (an endpoint and, for an index API, which index: source, anomalies, runs, workflows, state, incidents
or preview);
`required(command)` -> {"cluster": {...}, "source": {...}, ...} is the union of their privileges.

The privileges are Elasticsearch's built-in ones, each the least one granting the API as the API's
reference page states under "Prerequisites" (the security privileges page lists them all:
https://www.elastic.co/guide/en/elasticsearch/reference/current/security-privileges.html), e.g.
refresh: "you must have the maintenance or manage index privilege"
(https://www.elastic.co/guide/en/elasticsearch/reference/7.13/indices-refresh.html), root API: `monitor`
(https://www.elastic.co/guide/en/elasticsearch/reference/current/rest-api-root.html), field capabilities:
`view_index_metadata`, `read` or `manage`
(https://www.elastic.co/guide/en/elasticsearch/reference/current/search-field-caps.html), open point in
time: `read` (https://www.elastic.co/guide/en/elasticsearch/reference/8.17/point-in-time-api.html). Closing a
point in time states no privilege; it is listed under the `read` that opened it. OpenSearch calls that
differ from Elasticsearch's (point in time, ISM) carry the privilege of their Elasticsearch counterpart, and
`OPENSEARCH` names the OpenSearch security permission standing for each privilege.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Scope = Literal["cluster", "index"]
Flavour = Literal["elasticsearch", "opensearch"]
TARGETS = ("source", "anomalies", "runs", "workflows", "state", "incidents", "preview")
BOTH: tuple[Flavour, ...] = ("elasticsearch", "opensearch")


@dataclass(frozen=True)
class Endpoint:
    """One API the runtime calls: `privilege` is a cluster privilege, or an index privilege on the index the
    call targets (the `{index}` of the path, or the documents' indices for `_bulk` and point-in-time
    searches)."""

    name: str
    methods: tuple[str, ...]
    path: str
    privilege: str
    scope: Scope
    flavours: tuple[Flavour, ...] = BOTH

    @property
    def request(self) -> str:
        return f"{'|'.join(self.methods)} {self.path}"

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if method.upper() not in self.methods:
            return None
        m = _pattern(self.path).fullmatch(path.split("?", 1)[0])
        return m.groupdict() if m else None


def _pattern(path: str) -> re.Pattern[str]:
    # A placeholder is one path segment that is not an API name (those start with "_").
    out = "".join(
        f"(?P<{part[1:-1]}>[^/_][^/]*)" if part.startswith("{") else re.escape(part)
        for part in re.split(r"(\{[a-z]+\})", path)
    )
    return re.compile(out)


def _e(name: str, request: str, privilege: str, scope: Scope, *flavours: Flavour) -> Endpoint:
    methods, path = request.split(" ", 1)
    return Endpoint(name, tuple(methods.split("|")), path, privilege, scope, flavours or BOTH)


ENDPOINTS: tuple[Endpoint, ...] = (
    _e("info", "GET /", "monitor", "cluster"),
    _e("index template list", "GET /_index_template", "manage_index_templates", "cluster"),
    _e("index template get", "GET /_index_template/{name}", "manage_index_templates", "cluster"),
    _e("index template put", "PUT /_index_template/{name}", "manage_index_templates", "cluster"),
    _e("ILM status", "GET /_ilm/status", "manage_ilm", "cluster", "elasticsearch"),
    _e("ILM policy get", "GET /_ilm/policy/{name}", "manage_ilm", "cluster", "elasticsearch"),
    _e("ILM policy put", "PUT /_ilm/policy/{name}", "manage_ilm", "cluster", "elasticsearch"),
    _e("ISM policy list", "GET /_plugins/_ism/policies", "manage_ilm", "cluster", "opensearch"),
    _e("ISM policy get", "GET /_plugins/_ism/policies/{name}", "manage_ilm", "cluster", "opensearch"),
    _e("ISM policy put", "PUT /_plugins/_ism/policies/{name}", "manage_ilm", "cluster", "opensearch"),
    _e("ingest pipeline list", "GET /_ingest/pipeline", "manage_pipeline", "cluster"),
    _e("ingest pipeline get", "GET /_ingest/pipeline/{id}", "manage_pipeline", "cluster"),
    _e("ingest pipeline put", "PUT /_ingest/pipeline/{id}", "manage_pipeline", "cluster"),
    _e("index exists", "HEAD /{index}", "view_index_metadata", "index"),
    _e("index create", "PUT /{index}", "create_index", "index"),
    _e("mapping get", "GET /{index}/_mapping", "view_index_metadata", "index"),
    _e("mapping put", "PUT /{index}/_mapping", "manage", "index"),
    _e("field caps", "GET|POST /{index}/_field_caps", "view_index_metadata", "index"),
    _e("refresh", "POST|GET /{index}/_refresh", "maintenance", "index"),
    _e("search", "GET|POST /{index}/_search", "read", "index"),
    _e("point in time open", "POST /{index}/_pit", "read", "index", "elasticsearch"),
    _e("point in time open", "POST /{index}/_search/point_in_time", "read", "index", "opensearch"),
    _e("point in time search", "GET|POST /_search", "read", "index"),
    _e("point in time close", "DELETE /_pit", "read", "index", "elasticsearch"),
    _e("point in time close", "DELETE /_search/point_in_time", "read", "index", "opensearch"),
    _e("document get", "GET /{index}/_doc/{id}", "read", "index"),
    _e("document index", "PUT|POST /{index}/_doc/{id}", "write", "index"),
    _e("document update", "POST /{index}/_update/{id}", "write", "index"),
    _e("document create", "PUT|POST /{index}/_create/{id}", "write", "index"),
    _e("document delete", "DELETE /{index}/_doc/{id}", "write", "index"),
    # OpenSearch Alerting (setup installs the monitors); its permission stands in the privilege's place.
    _e(
        "alerting monitor search",
        "POST|GET /_plugins/_alerting/monitors/_search",
        "manage_alerting",
        "cluster",
        "opensearch",
    ),
    _e(
        "alerting monitor create",
        "POST /_plugins/_alerting/monitors",
        "manage_alerting",
        "cluster",
        "opensearch",
    ),
    _e(
        "alerting monitor update",
        "PUT /_plugins/_alerting/monitors/{id}",
        "manage_alerting",
        "cluster",
        "opensearch",
    ),
    # A bulk write to a missing index creates it: `create_index` goes with `write` wherever bulk writes.
    _e("bulk", "POST|PUT /_bulk", "write", "index"),
)

# The OpenSearch security permission (action group or action) standing for each privilege above.
OPENSEARCH = {
    "monitor": "cluster_monitor",
    "manage_index_templates": "cluster_manage_index_templates",
    "manage_pipeline": "cluster_manage_pipelines",
    "manage_ilm": "cluster:admin/opendistro/ism/*",
    "manage_alerting": "cluster:admin/opendistro/alerting/*",
    "read": "read",
    "view_index_metadata": "indices_monitor",
    "write": "write",
    "create_index": "create_index",
    "maintenance": "indices:admin/refresh*",
    "manage": "manage",
}


@dataclass(frozen=True)
class Use:
    """A command's call of one endpoint: on which index (None for cluster APIs), and when, if not always."""

    endpoint: str
    target: str | None = None
    when: str = ""


RETENTION = "retention is configured"
MODEL = "a model version exists"
PREVIEW = "detect --preview"
ALERTING = "OpenSearch with the Alerting plugin"
WORKERS = "workers.partitions > 1"


def _reads_source() -> tuple[Use, ...]:
    return (
        Use("field caps", "source"),
        Use("index exists", "source"),
        Use("point in time open", "source"),
        Use("point in time search", "source"),
        Use("point in time close", "source"),
        # The read's upper bound: the newest order value under the query delay, asked before it starts.
        Use("search", "source"),
    )


def _records_run() -> tuple[Use, ...]:
    return (Use("bulk", "runs"), Use("index create", "runs", "the index is missing (bulk auto-creates it)"))


_OUTPUTS = ("anomalies", "runs", "workflows", "state", "incidents")
_TRAIN = (
    Use("info"),
    *_reads_source(),
    *_records_run(),
    Use("bulk", "workflows"),
    Use("index create", "workflows", "the index is missing (bulk auto-creates it)"),
)
_DETECT = (
    Use("info"),
    Use("document get", "state"),
    Use("document index", "state"),
    # The job's lease on its state: taken (created when there is no state yet) and given back.
    Use("document create", "state", "the job has no state yet"),
    Use("document update", "state"),
    Use("index create", "state", "the index is missing (the state write auto-creates it)"),
    # Several workers: their heartbeats listed and deleted, a killed run's document looked up.
    Use("search", "state", WORKERS),
    Use("document delete", "state", WORKERS),
    Use("document get", "runs", WORKERS),
    *_reads_source(),
    Use("bulk", "anomalies"),
    Use("index create", "anomalies", "the index is missing (bulk auto-creates it)"),
    # Incidents: the touched sessions' anomalies read back, the incidents recomputed and written.
    Use("field caps", "anomalies", "a chunk has anomalies"),
    Use("refresh", "anomalies", "a chunk has anomalies"),
    Use("search", "anomalies", "a chunk has anomalies"),
    Use("bulk", "incidents", "a chunk has anomalies"),
    Use("index create", "incidents", "the index is missing (bulk auto-creates it)"),
    # `detect --preview`: a backfill into the preview index, which no template covers.
    Use("index exists", "preview", PREVIEW),
    Use("index create", "preview", PREVIEW),
    Use("bulk", "preview", PREVIEW),
    *_records_run(),
)
_FEEDBACK_APPLY = (
    Use("info"),
    # Verdicts on incidents, passed on to their anomalies first.
    Use("index exists", "incidents"),
    Use("refresh", "incidents"),
    Use("search", "incidents"),
    Use("document update", "incidents", "an incident has a verdict"),
    Use("index exists", "anomalies"),
    Use("refresh", "anomalies"),
    Use("search", "anomalies"),
    Use("bulk", "anomalies", "feedback is pending"),
    *_records_run(),
)

COMMANDS: dict[str, tuple[Use, ...]] = {
    "setup": (
        Use("info"),
        Use("index template list"),
        Use("index template get"),
        Use("index template put", when="a template is missing or out of date"),
        Use("ILM status", when=RETENTION),
        Use("ILM policy get", when=RETENTION),
        Use("ILM policy put", when=RETENTION),
        Use("ISM policy list", when=RETENTION),
        Use("ISM policy get", when=RETENTION),
        Use("ISM policy put", when=RETENTION),
        Use("alerting monitor search", when=ALERTING),
        Use("alerting monitor create", when=ALERTING),
        Use("alerting monitor update", when=ALERTING),
        Use("ingest pipeline list"),
        Use("ingest pipeline get", when="the server has ingest pipelines"),
        Use("ingest pipeline put", when="the server has ingest pipelines"),
        *(Use("mapping get", t) for t in _OUTPUTS),
        *(Use("index create", t, "the index is missing") for t in _OUTPUTS),
        *(Use("mapping put", t, "the mapping is out of date") for t in _OUTPUTS),
        Use("bulk", "workflows", MODEL),
    ),
    "train": _TRAIN,
    "detect": _DETECT,
    "feedback mark": (
        Use("info"),
        Use("search", "anomalies"),
        Use("document update", "anomalies"),
    ),
    "feedback apply": _FEEDBACK_APPLY,
    # The daemon runs detection, the feedback job and (with schedule.retrain_cron) retraining, which reads
    # the anomalies index as the feedback job does, for the flagged sessions it leaves out.
    "run": tuple(dict.fromkeys(_DETECT + _FEEDBACK_APPLY + _TRAIN)),
    # The watchdog: the newest detection run document.
    "check": (
        Use("info"),
        Use("index exists", "runs"),
        Use("refresh", "runs"),
        Use("search", "runs"),
    ),
    # These read and write the model directory only.
    "model list": (),
    "model restore": (),
    "workflow list": (),
    "workflow show": (),
    # One anomaly drawn on its workflow: the anomaly document, and the workflow from the index when the model
    # directory no longer has that version.
    "workflow show --anomaly": (
        Use("info"),
        Use("search", "anomalies"),
        Use("search", "workflows", "the model directory lacks the anomaly's model version"),
    ),
}

_BY_NAME: dict[str, list[Endpoint]] = {}
for _ep in ENDPOINTS:
    _BY_NAME.setdefault(_ep.name, []).append(_ep)


def endpoints(name: str) -> list[Endpoint]:
    """The endpoints of one name (Elasticsearch's and OpenSearch's where their paths differ)."""
    return _BY_NAME[name]


def match(method: str, path: str) -> tuple[Endpoint, dict[str, str]] | None:
    """The table's entry for one recorded call (a path with or without its query string), or None."""
    for ep in ENDPOINTS:
        found = ep.match(method, path)
        if found is not None:
            return ep, found
    return None


def privilege_of(use: Use) -> str:
    return endpoints(use.endpoint)[0].privilege


def required(command: str) -> dict[str, set[str]]:
    """Scope ("cluster" or an index target) -> the privileges `command` needs there."""
    out: dict[str, set[str]] = {}
    for use in COMMANDS[command]:
        out.setdefault(use.target or "cluster", set()).add(privilege_of(use))
    return out


# Broad before narrow, as a role lists them.
_ORDER = (
    "monitor",
    "manage_index_templates",
    "manage_pipeline",
    "manage_ilm",
    "manage_alerting",
    "read",
    "view_index_metadata",
    "create_index",
    "write",
    "maintenance",
    "manage",
)


def _cell(command: str, scope: str, privileges: set[str]) -> str:
    def one(p: str) -> str:
        whens = {
            u.when for u in COMMANDS[command] if (u.target or "cluster") == scope and privilege_of(u) == p
        }
        # Retention is the one optional feature that needs a privilege of its own.
        return f"`{p}` (if {RETENTION})" if whens == {RETENTION} else f"`{p}`"

    return ", ".join(one(p) for p in sorted(privileges, key=_ORDER.index)) or "-"


def render_markdown() -> str:
    """The README's privileges table: one row per command, one column per privilege scope."""
    head = ["command", "cluster", *(f"{t} index" for t in TARGETS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for command in COMMANDS:
        need = required(command)
        cells = [f"`{command}`", *(_cell(command, s, need.get(s, set())) for s in ("cluster", *TARGETS))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
