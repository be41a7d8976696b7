"""The shipped alerting: every rule and monitor parses and passes a schema written from its product's documented
API, names only fields the incidents and runs mappings hold, and the detection rule import goes through a local
endpoint that enforces the documented request; setup installs what the server supports and says why not
elsewhere.

Schemas (the required fields, types and enumerations the pages state):
- Elastic Security detection rules, create-rule request body (query rules) and import:
  https://www.elastic.co/docs/api/doc/kibana/operation/operation-createrule,
  https://www.elastic.co/guide/en/security/8.15/rules-api-import.html (POST
  /api/detection_engine/rules/_import, `Content-Type: multipart/form-data`, the ndjson file in the form field
  `file`, `kbn-xsrf` header, `overwrite` query parameter; response `success`, `success_count`,
  `rules_count`, `errors`), https://www.elastic.co/guide/en/security/8.15/rules-api-create.html
  (`severity_mapping`: `field`, `operator: equals`, `value`, `severity`; `risk_score_mapping`: `field`,
  `operator: equals`, `value: ""`).
- Kibana alerting rules: https://www.elastic.co/guide/en/kibana/8.14/create-rule-api.html (`name`,
  `rule_type_id`, `consumer`, `schedule.interval`, `params` required) and the Elasticsearch query rule type's
  parameters https://www.elastic.co/guide/en/kibana/8.14/rule-type-es-query.html.
- OpenSearch Alerting query-level monitors: https://docs.opensearch.org/2.9/observing-your-data/alerting/api
  (`type: monitor`, `monitor_type`, `name`, `enabled`, `schedule.period.interval/unit`, `inputs[].search.
  indices/query`, `triggers[].name/severity "1".."5"/condition.script.source/lang`).
- elastalert2 rules: the project's own JSON schema, elastalert/schema.yaml of jertel/elastalert2 (required
  `type`, `index`, `alert`; the `any` rule type; `timeframe` objects; `alert_text_type` values).
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from deeplog_siem import alerting
from deeplog_siem.setup_assets import index_mappings, run_setup
from deeplog_siem.setup_steps import asset_files, asset_text

from .conftest import REPO

# ------------------------------------------------------------------------------------ a small validator


def check(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """JSON-schema-like validation (type, enum, const, required, properties, additionalProperties, items,
    minimum, maximum, minLength, minItems, pattern) -> the problems found, each with its path."""
    problems: list[str] = []
    kinds = {
        "object": dict,
        "array": list,
        "string": str,
        "integer": int,
        "number": (int, float),
        "boolean": bool,
    }
    t = schema.get("type")
    if t is not None:
        allowed = t if isinstance(t, list) else [t]
        ok = any(
            isinstance(value, kinds[k]) and not (k in ("integer", "number") and isinstance(value, bool))
            for k in allowed
        )
        if not ok:
            return [f"{path}: expected {t}, got {type(value).__name__}"]
    if "const" in schema and value != schema["const"]:
        problems.append(f"{path}: must be {schema['const']!r}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            problems.append(f"{path}: shorter than {schema['minLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append(f"{path}: does not match {schema['pattern']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{path}: below {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{path}: above {schema['maximum']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                problems.append(f"{path}: missing required {key!r}")
        props = schema.get("properties", {})
        for key, v in value.items():
            if key in props:
                problems += check(v, props[key], f"{path}.{key}")
            elif schema.get("additionalProperties") is False:
                problems.append(f"{path}: unknown property {key!r}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            problems.append(f"{path}: fewer than {schema['minItems']} items")
        if "items" in schema:
            for i, v in enumerate(value):
                problems += check(v, schema["items"], f"{path}[{i}]")
    return problems


SEVERITY = {"type": "string", "enum": ["low", "medium", "high", "critical"]}
STRINGS = {"type": "array", "items": {"type": "string"}}
DETECTION_RULE = {
    "type": "object",
    # The import needs `rule_id` (rules are matched on it); a query rule needs `query`.
    "required": ["rule_id", "name", "description", "risk_score", "severity", "type", "query"],
    "properties": {
        "rule_id": {"type": "string", "minLength": 1},
        "name": {"type": "string", "minLength": 1},
        "description": {"type": "string", "minLength": 1},
        "risk_score": {"type": "integer", "minimum": 0, "maximum": 100},
        "severity": SEVERITY,
        "type": {"const": "query"},
        "language": {"type": "string", "enum": ["kuery", "lucene"]},
        "query": {"type": "string"},
        "index": {**STRINGS, "minItems": 1},
        "interval": {"type": "string", "pattern": r"^\d+[smhd]$"},
        "from": {"type": "string", "pattern": r"^now-\d+[smhd]$"},
        "enabled": {"type": "boolean"},
        "version": {"type": "integer", "minimum": 1},
        "max_signals": {"type": "integer", "minimum": 1},
        "timestamp_override": {"type": "string"},
        "tags": STRINGS,
        "author": STRINGS,
        "false_positives": STRINGS,
        "references": STRINGS,
        "threat": {"type": "array"},
        "license": {"type": "string"},
        "note": {"type": "string"},
        "severity_mapping": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "operator", "value", "severity"],
                "additionalProperties": False,
                "properties": {
                    "field": {"type": "string", "minLength": 1},
                    "operator": {"const": "equals"},
                    "value": {"type": "string"},
                    "severity": SEVERITY,
                },
            },
        },
        "risk_score_mapping": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "operator", "value"],
                "additionalProperties": False,
                "properties": {
                    "field": {"type": "string", "minLength": 1},
                    "operator": {"const": "equals"},
                    "value": {"const": ""},
                    "risk_score": {"type": "integer", "minimum": 0, "maximum": 100},
                },
            },
        },
    },
}
KIBANA_RULE = {
    "type": "object",
    "required": ["name", "rule_type_id", "consumer", "schedule", "params"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "rule_type_id": {"const": ".es-query"},
        "consumer": {"type": "string", "enum": ["alerts", "stackAlerts"]},
        "schedule": {
            "type": "object",
            "required": ["interval"],
            "additionalProperties": False,
            "properties": {"interval": {"type": "string", "pattern": r"^\d+[smhd]$"}},
        },
        "tags": STRINGS,
        "enabled": {"type": "boolean"},
        "actions": {"type": "array"},
        "params": {
            "type": "object",
            "required": [
                "index",
                "timeField",
                "esQuery",
                "threshold",
                "thresholdComparator",
                "timeWindowSize",
                "timeWindowUnit",
            ],
            "properties": {
                "searchType": {"const": "esQuery"},
                "index": {**STRINGS, "minItems": 1},
                "timeField": {"type": "string", "minLength": 1},
                "esQuery": {"type": "string"},
                "size": {"type": "integer", "minimum": 0, "maximum": 10000},
                "threshold": {"type": "array", "minItems": 1, "items": {"type": "number"}},
                "thresholdComparator": {"enum": [">", ">=", "<", "<=", "between", "notBetween"]},
                "timeWindowSize": {"type": "integer", "minimum": 1},
                "timeWindowUnit": {"enum": ["s", "m", "h", "d"]},
            },
        },
    },
}
MONITOR = {
    "type": "object",
    "required": ["type", "monitor_type", "name", "enabled", "schedule", "inputs", "triggers"],
    "properties": {
        "type": {"const": "monitor"},
        "monitor_type": {"const": "query_level_monitor"},
        "name": {"type": "string", "minLength": 1},
        "enabled": {"type": "boolean"},
        "schedule": {
            "type": "object",
            "required": ["period"],
            "properties": {
                "period": {
                    "type": "object",
                    "required": ["interval", "unit"],
                    "properties": {
                        "interval": {"type": "integer", "minimum": 1},
                        "unit": {"enum": ["MINUTES", "HOURS", "DAYS"]},
                    },
                }
            },
        },
        "inputs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["search"],
                "properties": {
                    "search": {
                        "type": "object",
                        "required": ["indices", "query"],
                        "properties": {"indices": {**STRINGS, "minItems": 1}, "query": {"type": "object"}},
                    }
                },
            },
        },
        "triggers": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "severity", "condition", "actions"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "severity": {"enum": ["1", "2", "3", "4", "5"]},
                    "condition": {
                        "type": "object",
                        "required": ["script"],
                        "properties": {
                            "script": {
                                "type": "object",
                                "required": ["source", "lang"],
                                "properties": {"source": {"type": "string"}, "lang": {"const": "painless"}},
                            }
                        },
                    },
                    "actions": {"type": "array"},
                },
            },
        },
    },
}
TIMEFRAME = {
    "type": "object",
    "additionalProperties": False,
    "properties": {k: {"type": "number"} for k in ("days", "weeks", "hours", "minutes", "seconds")},
}
ELASTALERT_ANY = {
    "type": "object",
    "required": ["type", "index", "alert"],
    "properties": {
        "name": {"type": "string"},
        "type": {"const": "any"},
        "index": {"type": "string"},
        "timestamp_field": {"type": "string"},
        "filter": {"type": "array"},
        "query_key": {"type": ["string", "array"]},
        "realert": TIMEFRAME,
        "include": STRINGS,
        "alert_text": {"type": "string"},
        "alert_text_args": STRINGS,
        "alert_text_type": {
            "enum": ["alert_text_only", "alert_text_jinja", "exclude_fields", "aggregation_summary_only"]
        },
        "alert": {"type": ["string", "array"]},
    },
}


def mapped(kind: str) -> dict[str, str]:
    """Dotted field -> type of one packaged template."""
    out: dict[str, str] = {}

    def walk(props: dict[str, Any], prefix: str) -> None:
        for name, spec in props.items():
            if "properties" in spec:
                walk(spec["properties"], f"{prefix}{name}.")
            else:
                out[f"{prefix}{name}"] = spec.get("type", "object")

    walk(index_mappings(kind)["properties"], "")
    return out


# --------------------------------------------------------------------------------------- every asset


def test_the_alerting_folder_ships_every_rule_and_monitor():
    folder = REPO / "plugin" / "deeplog_siem" / "assets" / "alerting"
    shipped = sorted(p.name for p in folder.iterdir())
    assert shipped == [
        "elastalert2-incidents.yaml",
        "elastic-security-rules.ndjson",
        "kibana-rule-incidents.json",
        "kibana-rule-watchdog.json",
        "opensearch-monitor-incidents.json",
        "opensearch-monitor-watchdog.json",
    ]


def test_the_detection_rule_passes_its_schema_and_takes_severity_and_risk_from_the_incident():
    incidents = mapped("incidents")
    rules = alerting.detection_rules()
    assert rules
    for rule in rules:
        assert check(rule, DETECTION_RULE) == []
        assert {m["value"] for m in rule["severity_mapping"]} == {"low", "medium", "high", "critical"}
        assert all(m["value"] == m["severity"] for m in rule["severity_mapping"])
        for m in rule["severity_mapping"]:
            assert incidents[m["field"]] == "keyword"
        for m in rule["risk_score_mapping"]:
            assert incidents[m["field"]] in ("float", "long", "integer")
        assert incidents[rule["timestamp_override"]] == "date"
        assert rule["index"] == ["deeplog-incidents*"]
    # A schema violation is caught: the check is not vacuous.
    broken = {**rules[0], "severity": "urgent", "risk_score_mapping": [{"field": "x", "operator": "is"}]}
    assert len(check(broken, DETECTION_RULE)) == 3


def test_the_kibana_rules_pass_their_schema_and_query_mapped_fields():
    fields = {"deeplog-incidents*": mapped("incidents"), "deeplog-runs*": mapped("runs")}
    for name in ("kibana-rule-incidents.json", "kibana-rule-watchdog.json"):
        rule = json.loads(asset_text("alerting", name))
        assert check(rule, KIBANA_RULE) == [], name
        p = rule["params"]
        query = json.loads(p["esQuery"])["query"]
        have = fields[p["index"][0]]
        assert have[p["timeField"]] == "date"
        for clause in query.values():
            for field in clause:
                assert field in have, (name, field)


def test_the_monitors_pass_their_schema_and_query_mapped_fields(make_config, prefix):
    fields = {"deeplog-incidents*": mapped("incidents"), "deeplog-runs*": mapped("runs")}
    shipped = alerting.monitors()
    assert len(shipped) == 2
    for name, body in shipped.items():
        assert check(body, MONITOR) == [], name
        search = body["inputs"][0]["search"]
        have = fields[search["indices"][0]]
        for clause in search["query"]["query"]["bool"]["filter"]:
            for field in next(iter(clause.values())):
                assert field in have, (name, field)
    adapted = alerting.monitors(make_config())
    indices = sorted(b["inputs"][0]["search"]["indices"][0] for b in adapted.values())
    assert indices == [f"{prefix}-incidents*", f"{prefix}-runs*"]


def test_the_elastalert_rule_passes_its_schema_and_names_mapped_fields():
    rule = yaml.safe_load(asset_text("alerting", "elastalert2-incidents.yaml"))
    assert check(rule, ELASTALERT_ANY) == []
    have = mapped("incidents")
    for field in [rule["timestamp_field"], rule["query_key"], *rule["include"], *rule["alert_text_args"]]:
        assert field in have, field
    for clause in rule["filter"]:
        for field in next(iter(clause.values())):
            assert field in have, field
    assert rule["alert_text"].count("{") == len(rule["alert_text_args"])


# ------------------------------------------------------------------------------- the rule import API


class FakeSecurity:
    """Kibana's detection engine rules API as documented: lookup by rule_id, and an import that refuses a
    request missing what the documentation requires."""

    def __init__(self) -> None:
        self.rules: dict[str, dict[str, Any]] = {}
        self.imports: list[dict[str, Any]] = []
        self.enabled = True  # False: a Kibana without the Security app (404)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if not fake.enabled or url.path != "/api/detection_engine/rules":
                    return self._send(404, {"statusCode": 404, "error": "Not Found", "message": "Not Found"})
                rule_id = parse_qs(url.query).get("rule_id", [""])[0]
                if rule_id not in fake.rules:
                    msg = f'rule_id: "{rule_id}" not found'
                    return self._send(404, {"status_code": 404, "message": msg})
                return self._send(200, fake.rules[rule_id])

            def do_POST(self) -> None:
                url = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if not fake.enabled or url.path != "/api/detection_engine/rules/_import":
                    return self._send(404, {"statusCode": 404, "error": "Not Found", "message": "Not Found"})
                if self.headers.get("kbn-xsrf") is None:
                    return self._send(
                        400, {"statusCode": 400, "message": "Request must contain a kbn-xsrf header."}
                    )
                ctype = self.headers.get("content-type", "")
                if not ctype.startswith("multipart/form-data"):
                    return self._send(415, {"statusCode": 415, "message": f"Unsupported Media Type {ctype}"})
                msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                    f"content-type: {ctype}\r\n\r\n".encode() + body
                )
                parts = {p.get_param("name", header="content-disposition"): p for p in msg.iter_parts()}
                part = parts.get("file")
                if part is None or not (part.get_filename() or "").endswith(".ndjson"):
                    return self._send(400, {"statusCode": 400, "message": "Invalid file extension"})
                overwrite = parse_qs(url.query).get("overwrite", ["false"])[0] == "true"
                fake.imports.append({"overwrite": overwrite, "query": url.query})
                errors, ok = [], 0
                lines = [ln for ln in part.get_content().splitlines() if ln.strip()]
                for line in lines:
                    rule = json.loads(line)
                    problems = check(rule, DETECTION_RULE)
                    rid = rule.get("rule_id")
                    if problems:
                        errors.append(
                            {"rule_id": rid, "error": {"status_code": 400, "message": "; ".join(problems)}}
                        )
                    elif rid in fake.rules and not overwrite:
                        message = f'rule_id: "{rid}" already exists'
                        errors.append({"rule_id": rid, "error": {"status_code": 409, "message": message}})
                    else:
                        fake.rules[rid] = rule
                        ok += 1
                return self._send(
                    200,
                    {"success": not errors, "success_count": ok, "rules_count": len(lines), "errors": errors},
                )

        return Handler

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def security() -> Iterator[FakeSecurity]:
    fake = FakeSecurity()
    yield fake
    fake.stop()


def test_the_detection_rule_is_imported_as_the_api_requires_and_only_once(security, make_config, prefix):
    cfg = make_config()
    steps = alerting.install_detection_rules(cfg, security.url)
    assert [(s.action, s.name) for s in steps] == [("imported", "deeplog-siem-session-incident")]
    assert security.imports == [{"overwrite": True, "query": "overwrite=true"}]
    held = security.rules["deeplog-siem-session-incident"]
    assert held["index"] == [f"{prefix}-incidents*"]
    # Up to date: nothing is imported again; a dry run only reports.
    assert [s.action for s in alerting.install_detection_rules(cfg, security.url)] == ["unchanged"]
    assert [s.action for s in alerting.install_detection_rules(cfg, security.url, dry_run=True)] == [
        "unchanged"
    ]
    held["description"] = "changed by hand"
    assert [s.action for s in alerting.install_detection_rules(cfg, security.url, dry_run=True)] == [
        "would update"
    ]
    assert len(security.imports) == 1
    assert [s.action for s in alerting.install_detection_rules(cfg, security.url)] == ["imported"]
    assert len(security.imports) == 2


def test_a_kibana_without_the_detection_engine_is_skipped_with_the_reason(security, make_config):
    security.enabled = False
    steps = alerting.install_detection_rules(make_config(), security.url)
    assert [s.action for s in steps] == ["skipped"] and "no detection engine" in steps[0].detail


def test_setup_installs_monitors_only_where_alerting_exists(
    clients, make_config, persona_clients, make_persona_config
):
    # The embedded server has no Alerting plugin; the Elasticsearch persona is not OpenSearch at all.
    for c, cfg in ((clients, make_config()), (persona_clients, make_persona_config())):
        steps = [s for s in run_setup(c, cfg).steps if s.component in ("alerting monitor", "detection rule")]
        monitors = [s for s in steps if s.component == "alerting monitor"]
        assert len(monitors) == 2 and all(s.action == "skipped" and s.detail for s in monitors)
        assert [s.action for s in steps if s.component == "detection rule"] == ["skipped"]


def test_every_asset_file_is_listed_by_the_package():
    names = [n for n, _ in asset_files("alerting", "")]
    assert sorted(names) == sorted(
        p.name for p in (REPO / "plugin" / "deeplog_siem" / "assets" / "alerting").iterdir()
    )
