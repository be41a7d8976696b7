"""Shipped assets: every file parses, saved objects hang together and only use mapped fields, and the
documents the job writes fit the template mappings (indexed into strict-mapped indices on the real server).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import BadRequestError

from deeplog_siem.config import parse_config
from deeplog_siem.errors import ConfigError
from deeplog_siem.kibana import saved_objects
from deeplog_siem.setup_assets import (
    KINDS,
    content_hash,
    create_indices,
    index_mappings,
    index_templates,
    ingest_pipelines,
    lifecycle_policies,
    load_template,
)

from .conftest import REPO

PACKAGE_ASSETS = REPO / "plugin" / "deeplog_siem" / "assets"
AGGREGATABLE = {"keyword", "integer", "long", "float", "double", "date", "boolean", "ip"}
# Saved-object attributes Kibana 7.10 and OpenSearch Dashboards know for each type (their .kibana mappings
# are strict: an unknown attribute makes the import fail).
KNOWN_ATTRIBUTES = {
    "index-pattern": {"title", "timeFieldName"},
    "search": {"title", "description", "hits", "columns", "sort", "version", "kibanaSavedObjectMeta"},
    "visualization": {"title", "description", "visState", "uiStateJSON", "version", "kibanaSavedObjectMeta"},
    "dashboard": {
        "title",
        "description",
        "hits",
        "panelsJSON",
        "optionsJSON",
        "version",
        "timeRestore",
        "timeFrom",
        "timeTo",
        "refreshInterval",
        "kibanaSavedObjectMeta",
    },
}
MIGRATION_VERSIONS = {
    "index-pattern": "7.6.0",
    "search": "7.9.3",
    "visualization": "7.10.0",
    "dashboard": "7.9.3",
}


def field_types(mappings: dict[str, Any]) -> dict[str, str]:
    """Dotted field path -> mapping type, multi-fields included (`message.keyword`)."""
    out: dict[str, str] = {}

    def walk(props: dict[str, Any], prefix: str) -> None:
        for name, spec in props.items():
            path = prefix + name
            out[path] = spec.get("type", "object")
            for sub, sspec in spec.get("fields", {}).items():
                out[f"{path}.{sub}"] = sspec["type"]
            if "properties" in spec:
                walk(spec["properties"], path + ".")

    walk(mappings["properties"], "")
    return out


def stored_only(mappings: dict[str, Any]) -> set[str]:
    """Dotted paths of fields kept in _source but not indexed (`index: false`): shown, never searched."""
    out: set[str] = set()

    def walk(props: dict[str, Any], prefix: str) -> None:
        for name, spec in props.items():
            if spec.get("index") is False:
                out.add(prefix + name)
            if "properties" in spec:
                walk(spec["properties"], prefix + name + ".")

    walk(mappings["properties"], "")
    return out


def repo_ndjson() -> list[dict[str, Any]]:
    objects = []
    for p in sorted((REPO / "kibana").glob("*.ndjson")):
        objects += [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    return objects


# --------------------------------------------------------------------------------------- files parse


def test_every_shipped_file_parses_and_the_package_reads_the_one_top_level_copy():
    top = {
        "ingest_pipelines": sorted((REPO / "ingest_pipelines").glob("*.json")),
        "kibana": sorted((REPO / "kibana").glob("*.ndjson")),
    }
    assert len(top["ingest_pipelines"]) == 4 and len(top["kibana"]) == 1
    for folder, files in top.items():
        # The top-level folders are what users read and curl, and the only copy: the package's asset folder
        # links to them (a build copies the files into the wheel), so what setup installs cannot drift.
        link = PACKAGE_ASSETS / folder
        assert link.is_symlink() and not os.path.isabs(os.readlink(link)), link
        assert link.resolve() == (REPO / folder).resolve(), link
        packaged = resources.files("deeplog_siem").joinpath("assets", folder)
        # Folders inside (kibana/img: the README's pictures of the graph) are not shipped: assets/*/* only.
        assert sorted(p.name for p in packaged.iterdir() if p.is_file()) == [p.name for p in files], folder
        for src in files:
            if src.suffix == ".json":
                assert isinstance(json.loads(src.read_text(encoding="utf-8")), dict)
            else:
                for n, line in enumerate(src.read_text(encoding="utf-8").splitlines(), 1):
                    assert isinstance(json.loads(line), dict), f"{src}:{n}"
    for kind in KINDS:
        body = json.loads((PACKAGE_ASSETS / "templates" / f"{kind}.json").read_text(encoding="utf-8"))
        assert body["index_patterns"] == [f"deeplog-{kind}*"]
        assert {"settings", "mappings"} <= set(body["template"])
    assert set(ingest_pipelines()) == {p.stem for p in top["ingest_pipelines"]}


# ---------------------------------------------------------------------------------- saved objects


def test_saved_object_ids_unique_and_every_reference_resolves():
    objects = repo_ndjson()
    keys = [(o["type"], o["id"]) for o in objects]
    assert len(keys) == len(set(keys))
    assert len({o["id"] for o in objects}) == len(objects)  # ids unique across types too
    for o in objects:
        assert set(o) <= {"id", "type", "attributes", "references", "migrationVersion"}, o["id"]
        assert o["migrationVersion"] == {o["type"]: MIGRATION_VERSIONS[o["type"]]}, o["id"]
        assert set(o["attributes"]) <= KNOWN_ATTRIBUTES[o["type"]], o["id"]
        names = [r["name"] for r in o["references"]]
        assert len(names) == len(set(names)), o["id"]
        for r in o["references"]:
            assert (r["type"], r["id"]) in keys, f"{o['id']} references missing {r['type']}/{r['id']}"
        meta = o["attributes"].get("kibanaSavedObjectMeta", {}).get("searchSourceJSON")
        if meta:
            source = json.loads(meta)
            if "indexRefName" in source:
                assert source["indexRefName"] in names, o["id"]
        if o["type"] == "dashboard":
            panels = json.loads(o["attributes"]["panelsJSON"])
            assert sorted(p["panelRefName"] for p in panels) == sorted(names)
            assert len({p["panelIndex"] for p in panels}) == len(panels)
            for p in panels:
                g = p["gridData"]
                assert 0 <= g["x"] and g["x"] + g["w"] <= 48, p


def _fields_used(o: dict[str, Any]) -> list[tuple[str, bool]]:
    """(field, must be aggregatable) for a visualization or saved search."""
    used: list[tuple[str, bool]] = []
    attrs = o["attributes"]
    if o["type"] == "visualization":
        vis = json.loads(attrs["visState"])
        used += [(a["params"]["field"], True) for a in vis["aggs"] if "field" in a.get("params", {})]
    if o["type"] == "search":
        used += [(c, False) for c in attrs["columns"]] + [(s[0], True) for s in attrs["sort"]]
    query = json.loads(attrs["kibanaSavedObjectMeta"]["searchSourceJSON"])["query"]["query"]
    used += [(f, False) for f in re.findall(r"([\w.@]+)\s*:", query)]
    return used


def test_every_field_a_visualization_or_search_uses_is_mapped():
    objects = repo_ndjson()
    by_pattern = {"deeplog-anomalies": "anomalies", "deeplog-runs": "runs", "deeplog-incidents": "incidents"}
    checked = 0
    for o in objects:
        if o["type"] not in ("visualization", "search") or vega_spec(o) is not None:
            continue  # a Vega spec names its own index: test_vega_workflow_graph_reads_mapped_fields
        (ref,) = [r for r in o["references"] if r["type"] == "index-pattern"]
        mappings = index_mappings(by_pattern[ref["id"]])
        types, shown_only = field_types(mappings), stored_only(mappings)
        for field, agg in _fields_used(o):
            assert field in types, f"{o['id']} uses {field}, not in the {ref['id']} mapping"
            if agg:
                assert types[field] in AGGREGATABLE, f"{o['id']} aggregates/sorts on {field} ({types[field]})"
                assert field not in shown_only, f"{o['id']} aggregates/sorts on {field}, which is not indexed"
            checked += 1
        query = json.loads(o["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])["query"]["query"]
        for field in re.findall(r"([\w.@]+)\s*:", query):
            assert field not in shown_only, f"{o['id']} searches {field}, which is stored but not indexed"
    assert checked > 30


def vega_spec(o: dict[str, Any]) -> dict[str, Any] | None:
    if o["type"] != "visualization":
        return None
    vis = json.loads(o["attributes"]["visState"])
    return json.loads(vis["params"]["spec"]) if vis["type"] == "vega" else None


def test_display_only_anomaly_fields_are_stored_not_indexed():
    # Indexing them cost the embedded server about a quarter of its CPU per anomaly document (BENCHMARKS.md);
    # each has a searchable twin (key ids, `deeplog.summary` text) or is only ever read (a query string).
    shown = stored_only(index_mappings("anomalies"))
    assert {
        "rule.description",
        "deeplog.session.query",
        "deeplog.window.templates",
        "deeplog.expected_summary",
        "deeplog.workflow.path_templates",
        "deeplog.workflow.diverged_at_template",
        "deeplog.workflow.expected_templates",
        "deeplog.parameter.description",
    } <= shown
    types = field_types(index_mappings("anomalies"))
    # ... and what analysts filter on stays searchable
    for twin in (
        "deeplog.window.key_ids",
        "deeplog.expected_keys",
        "deeplog.workflow.path",
        "deeplog.summary",
    ):
        assert twin in types and twin not in shown, twin


def test_vega_workflow_graph_reads_mapped_fields(make_config, prefix):
    """The workflow graph reads the newest anomaly under the dashboard's filters and, by an explicit query
    without the dashboard's context (the workflows index has none of its fields), the workflows; both
    indices named by config, only mapped fields, and of the stored layout only what the product writes."""
    from dataclasses import fields

    from deeplog_siem.workflow_layout import Box, EdgeShape

    (graph,) = [o for o in repo_ndjson() if vega_spec(o) is not None]
    spec = vega_spec(graph)
    assert spec["$schema"].endswith("vega/v5.json")
    urls = {d["name"]: d["url"] for d in spec["data"] if "url" in d}
    assert {u["index"]: n for n, u in urls.items()} == {
        "deeplog-anomalies*": "anomaly",
        "deeplog-workflows*": "workflows",
    }
    wf, an = urls["workflows"], urls["anomaly"]
    assert "%context%" not in wf and "%context%" not in an and "query" in wf["body"]
    assert "%dashboard_context-must_clause%" in json.dumps(an["body"]["query"])
    for url, kind in ((wf, "workflows"), (an, "anomalies")):
        types = field_types(index_mappings(kind))
        for f in url["body"]["_source"]:
            assert f in types, f
    text = json.dumps(spec)
    used = set(re.findall(r"datum\.(node|edge)\.(\w+)", text)) | set(
        re.findall(r'"(node|edge)\.(\w+)"', text)
    )
    assert used
    written = {"node": {f.name for f in fields(Box)}, "edge": {f.name for f in fields(EdgeShape)}}
    for kind, name in used:
        assert name in written[kind], (kind, name)
    adapted = {o["id"]: o for o in saved_objects(make_config())}[graph["id"]]
    spec2 = json.loads(json.loads(adapted["attributes"]["visState"])["params"]["spec"])
    assert sorted(d["url"]["index"] for d in spec2["data"] if "url" in d) == [
        f"{prefix}-anomalies*",
        f"{prefix}-workflows*",
    ]


def test_dashboard_has_the_investigation_panels():
    objects = {o["id"]: o for o in repo_ndjson()}
    (dash,) = [o for o in objects.values() if o["type"] == "dashboard"]
    assert dash["attributes"]["title"] == "DeepLog anomaly investigation"
    panels = [objects[r["id"]] for r in dash["references"]]
    assert "deeplog-vis-workflow-graph" in {p["id"] for p in panels}
    fields = {f for p in panels for f, _ in _fields_used(p)}
    fields |= set(objects["deeplog-anomalies-search"]["attributes"]["columns"])
    # over time by type, templates, hosts, sessions, expected vs actual, and job health from the runs index
    for f in (
        "deeplog.anomaly_type",
        "deeplog.key.template.keyword",
        "host.name",
        "deeplog.session.id",
        "deeplog.expected_summary",
        "deeplog.key.probability",
        "deeplog.run.lag_seconds",
        "deeplog.run.docs_per_s",
        "deeplog.run.status",
        "deeplog.run.bulk_failures",
        "deeplog.workflow.name",  # from an anomaly to its workflow: filter on it, the graph follows
        "deeplog.workflow.summary",
    ):
        assert f in fields, f
    assert {p["type"] for p in panels} == {"visualization", "search"}


def test_saved_objects_follow_the_configured_index_names_and_carry_markers(make_config, prefix):
    cfg = make_config()
    objects = saved_objects(cfg)
    titles = {o["id"]: o["attributes"]["title"] for o in objects if o["type"] == "index-pattern"}
    assert titles == {
        "deeplog-anomalies": f"{prefix}-anomalies*",
        "deeplog-runs": f"{prefix}-runs*",
        "deeplog-incidents": f"{prefix}-incidents*",
    }
    for o in objects:
        if o["type"] != "index-pattern":
            assert re.search(r"\(deeplog-siem asset [0-9a-f]{16}\)$", o["attributes"]["description"])
    assert [o["id"] for o in objects] == [o["id"] for o in repo_ndjson()]


# ---------------------------------------------------------------------------------- templates


def test_templates_follow_config_names_with_distinct_priorities(make_config, prefix):
    cfg = make_config()
    templates = index_templates(cfg)
    assert set(templates) == {f"{prefix}-{k}" for k in KINDS}
    for name, body in templates.items():
        assert body["index_patterns"] == [f"{name}*"]
        assert body["template"]["mappings"]["_meta"]["managed_by"] == "deeplog-siem"
    # the packaged file is not modified by adapting it
    assert load_template("anomalies")["index_patterns"] == ["deeplog-anomalies*"]
    hashes = {b["_meta"]["deeplog-siem"]["assets_hash"] for b in templates.values()}
    assert len(hashes) == len(KINDS) and hashes == {
        b["_meta"]["deeplog-siem"]["assets_hash"] for b in index_templates(cfg).values()
    }
    with pytest.raises(ConfigError, match=r"output\.runs_index: same index name as output\.anomalies_index"):
        index_templates(make_config(output={"runs_index": f"{prefix}-anomalies"}))
    nested = make_config(output={"anomalies_index": "deeplog", "runs_index": "deeplog-runs"})
    prio = {n: b["priority"] for n, b in index_templates(nested).items()}
    assert prio["deeplog-runs"] > prio["deeplog"]  # the more specific pattern wins


def test_lifecycle_settings_and_policies_when_retention_is_on(make_config, prefix):
    cfg = make_config(retention={"anomalies_days": 90, "runs_days": 14})
    ilm = index_templates(cfg, "ilm")[f"{prefix}-anomalies"]["template"]["settings"]["index"]["lifecycle"]
    assert ilm == {"name": f"{prefix}-anomalies-retention", "rollover_alias": f"{prefix}-anomalies"}
    ism = index_templates(cfg, "ism")[f"{prefix}-runs"]["template"]["settings"]["index"]
    assert ism["plugins.index_state_management.rollover_alias"] == f"{prefix}-runs"
    assert "lifecycle" not in index_templates(cfg, "ilm")[f"{prefix}-state"]["template"]["settings"]["index"]
    p = lifecycle_policies(cfg, "ilm")[f"{prefix}-anomalies-retention"]["policy"]
    assert p["phases"]["delete"] == {"min_age": "90d", "actions": {"delete": {}}}
    assert p["phases"]["hot"]["actions"]["rollover"] == {"max_age": "7d", "max_primary_shard_size": "50gb"}
    q = lifecycle_policies(cfg, "ism")[f"{prefix}-runs-retention"]["policy"]
    assert q["states"][0]["transitions"] == [{"state_name": "delete", "conditions": {"min_index_age": "14d"}}]
    assert q["ism_template"] == [{"index_patterns": [f"{prefix}-runs-*"], "priority": 100}]
    assert lifecycle_policies(make_config(), "ilm") == {}


def test_retention_and_kibana_config_validation(es_section):
    base = {"elasticsearch": es_section, "source": {"index": "x", "session_field": "s"}}
    for section, values, message in [
        ("retention", {"anomalies_days": 0}, r"retention\.anomalies_days: must be >= 1"),
        ("retention", {"rollover_max_age": "week"}, r"retention\.rollover_max_age: must be a time value"),
        (
            "retention",
            {"rollover_max_primary_shard_size": "50"},
            r"rollover_max_primary_shard_size: must be a byte",
        ),
        ("kibana", {"url": "localhost:5601"}, r"kibana\.url: must be an http\(s\) URL"),
        ("kibana", {"username": "u"}, r"kibana\.password: username and password must be given together"),
        ("kibana", {"space": "My Space"}, r"kibana\.space: must be a Kibana space id"),
        ("kibana", {"api_key": "k", "username": "u", "password": "p"}, r"kibana\.api_key: give either"),
        ("kibana", {"spaec": "x"}, r"kibana\.spaec: unknown key \(did you mean kibana\.space\?\)"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_config({**base, section: values})
    cfg = parse_config({**base, "kibana": {"url": "https://kb:5601", "space": "soc"}})
    assert cfg.kibana.space == "soc" and not cfg.retention.enabled


# ------------------------------------------------------------------ documents fit the mappings


def sample_anomaly_document() -> dict[str, Any]:
    """An anomaly document using every field of the contract (the job fills a subset: see the next test)."""
    return {
        "@timestamp": "2008-11-09T20:36:15.000Z",
        "event": {
            "kind": "alert",
            "module": "deeplog",
            "dataset": "deeplog.anomaly",
            "created": "2024-05-01T12:00:03.123Z",
            "ingested": "2024-05-01T12:00:03.200Z",
        },
        "message": "081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block "
        "blk_38865049064139660 terminating",
        "host": {"name": "10.251.73.220"},
        "rule": {
            "name": "DeepLog log-key model",
            "id": "deeplog-log_key",
            "description": "The next log key was not among the top-g predictions of the last h keys.",
        },
        "deeplog": {
            "anomaly_type": "log_key",
            "score": 0.9987,
            "summary": "E10 'PacketResponder <*> for block <*> terminating' after E5; expected E5 (0.71), E22 (0.20)",
            "model_version": "20240501T000000Z-ab12cd",
            "run_id": "run-20240501T120000Z-0001",
            "source": {"index": "logs-hdfs-2024.05.01", "id": "Qm9vazEyMw"},
            "session": {
                "id": "blk_38865049064139660",
                "position": 3,
                "query": 'message:"blk_38865049064139660"',
            },
            "key": {
                "id": 10,
                "template": "PacketResponder <*> for block <*> terminating",
                "probability": 0.0013,
                "rank": 14,
                "params": ["1", "blk_38865049064139660"],
            },
            "window": {
                "key_ids": [5, 22, 5],
                "templates": [
                    "Receiving block <*> src: <*> dest: <*>",
                    "BLOCK* NameSystem.allocateBlock: <*>",
                    "Receiving block <*> src: <*> dest: <*>",
                ],
            },
            "expected": [
                {
                    "key_id": 5,
                    "template": "Receiving block <*> src: <*> dest: <*>",
                    "probability": 0.71,
                    "rank": 1,
                },
                {
                    "key_id": 22,
                    "template": "BLOCK* NameSystem.allocateBlock: <*>",
                    "probability": 0.2,
                    "rank": 2,
                },
            ],
            "expected_keys": ["K5", "K22"],
            "expected_summary": "E5 (0.71), E22 (0.20)",
            "workflow": {
                "name": "block write",
                "path": ["E22", "E5", "E5"],
                "diverged_at": "E10",
                "expected_next": ["E5", "E11"],
                "summary": "block write: diverged after E5",
            },
            "feedback": "false_positive",
            "feedback_by": "analyst@example.org",
            "feedback_comment": "planned DataNode restart",
            "feedback_applied_at": "2024-05-02T08:00:00Z",
            "feedback_model_version": "20240502T000000Z-ef34ab",
        },
    }


def sample_parameter_anomaly() -> dict[str, Any]:
    doc = sample_anomaly_document()
    doc["rule"] = {"name": "DeepLog parameter model", "id": "deeplog-parameter", "description": "x"}
    for k in (
        "expected",
        "expected_keys",
        "expected_summary",
        "workflow",
        "feedback",
        "feedback_by",
        "feedback_comment",
    ):
        doc["deeplog"].pop(k)
    doc["deeplog"].pop("feedback_applied_at")
    doc["deeplog"].pop("feedback_model_version")
    doc["deeplog"]["anomaly_type"] = "parameter"
    doc["deeplog"]["parameter"] = {
        "dimension": ["elapsed_s", "size"],
        "observed": [812.0, 67108864.0],
        "predicted": [2.5, 67108864.0],
        "error": 41.7,
        "threshold": 3.9,
        "description": "elapsed_s 812 where about 2.5 was expected",
    }
    return doc


def sample_run_document() -> dict[str, Any]:
    return {
        "@timestamp": "2024-05-01T12:00:05Z",
        "event": {"kind": "event", "module": "deeplog", "dataset": "deeplog.run", "outcome": "success"},
        "host": {"name": "siem-worker-1"},
        "deeplog": {
            "run": {
                "id": "run-20240501T120000Z-0001",
                "job": "detect",
                "status": "ok",
                "window_start": "2024-05-01T11:59:00Z",
                "window_end": "2024-05-01T12:00:00Z",
                "docs_read": 15000,
                "docs_per_s": 3120.5,
                "skipped": {"too_long": 2, "no_session": 7, "a_reason_added_later": 1},
                "sessions": 812,
                "anomalies": {"log_key": 3, "session_end": 1, "parameter": 0},
                "anomalies_total": 4,
                "bulk_failures": 0,
                "duration_ms": {"read": 1800, "template": 900, "detect": 1500, "write": 80, "total": 4300},
                "lag_seconds": 4.8,
                "model_version": "20240501T000000Z-ab12cd",
            }
        },
        "error": {"message": "none", "stack_trace": "none", "type": "none"},
    }


def _index(clients, index: str, doc: dict[str, Any]) -> None:
    clients.es.index(index=index, document=doc, refresh=True)


def test_documents_validate_against_the_strict_mappings(clients, make_config, prefix):
    cfg = make_config()
    steps = create_indices(clients, cfg)
    assert [s.action for s in steps] == ["created"] * len(KINDS)
    anomalies, runs = f"{prefix}-anomalies", f"{prefix}-runs"
    _index(clients, anomalies, sample_anomaly_document())
    _index(clients, anomalies, sample_parameter_anomaly())
    _index(clients, runs, sample_run_document())
    _index(clients, f"{prefix}-state", {"@timestamp": "2024-05-01T12:00:05Z", "deeplog": {"state": {
        "job": "detect", "updated_at": "2024-05-01T12:00:05Z", "model_version": "v1",
        "checkpoint": {"sort": [1714564805000, "abc"], "anything": {"goes": True}},
        "tails": "eJzLSM3JyQcABiwCFQ=="}}})  # fmt: skip
    _index(clients, f"{prefix}-workflows", {"@timestamp": "2024-05-01T12:00:05Z", "deeplog": {
        "model_version": "v1", "workflow": {"name": "block write", "sessions": 4855,
        "nodes": [{"id": "E5", "key_id": 5, "template": "Receiving block <*>", "count": 14000}],
        "edges": [{"source": "E22", "target": "E5", "count": 4855, "probability": 1.0}],
        "templates": ["Receiving block <*>"], "graph": {"free": ["form"]}}}})  # fmt: skip

    # the expected keys are searchable through expected_keys; the candidates themselves are stored, not indexed
    def search(query: dict[str, Any]) -> list[dict[str, Any]]:
        return clients.es.search(index=anomalies, query=query)["hits"]["hits"]

    hits = search({"term": {"deeplog.expected_keys": "K22"}})
    assert len(hits) == 1
    assert hits[0]["_source"]["deeplog"]["expected"] == sample_anomaly_document()["deeplog"]["expected"]
    assert not search({"term": {"deeplog.expected.key_id": 22}})
    assert len(search({"term": {"deeplog.window.key_ids": 22}})) == 2
    mapping = clients.es.indices.get_mapping(index=runs)[runs]["mappings"]
    skipped = mapping["properties"]["deeplog"]["properties"]["run"]["properties"]["skipped"]["properties"]
    assert skipped["a_reason_added_later"]["type"] == "long"  # open-ended reasons become counts


@pytest.mark.parametrize(
    "path,value,error",
    [
        (("deeplog", "typo_field"), 1, "strict_dynamic_mapping_exception"),
        (("deeplog", "key", "unknown"), 1, "strict_dynamic_mapping_exception"),
        (("deeplog", "score"), "high", "failed to parse field"),
        (("deeplog", "key", "rank"), "first", "failed to parse field"),
        (("@timestamp",), "yesterday", "failed to parse field"),
    ],
)
def test_strict_mapping_rejects_what_the_contract_does_not_allow(
    clients, make_config, prefix, path, value, error
):
    create_indices(clients, make_config())
    doc = sample_anomaly_document()
    cur = doc
    for part in path[:-1]:
        cur = cur[part]
    cur[path[-1]] = value
    with pytest.raises(BadRequestError, match=error):
        _index(clients, f"{prefix}-anomalies", doc)


def test_workflow_and_unknown_top_level_fields_stay_open(clients, make_config, prefix):
    create_indices(clients, make_config())
    doc = sample_anomaly_document()
    doc["deeplog"]["workflow"]["branch_count"] = 3  # a later version may add workflow fields
    doc["labels"] = {"team": "storage"}  # other tools' fields: kept in _source, not indexed
    _index(clients, f"{prefix}-anomalies", doc)
    got = clients.es.search(index=f"{prefix}-anomalies", query={"match_all": {}})["hits"]["hits"][0][
        "_source"
    ]
    assert got["labels"] == {"team": "storage"}
    props = clients.es.indices.get_mapping(index=f"{prefix}-anomalies")[f"{prefix}-anomalies"]["mappings"]
    assert "labels" not in props["properties"]


def test_content_hash_ignores_key_order():
    assert content_hash({"a": 1, "b": [1, 2]}) == content_hash({"b": [1, 2], "a": 1})
    assert content_hash({"a": 1}) != content_hash({"a": 2})


def test_asset_paths_are_package_data():
    # setup.cfg ships assets/* and assets/*/*: every asset must sit at most one folder deep.
    found = 0
    for folder, _dirs, names in os.walk(PACKAGE_ASSETS, followlinks=True):  # through the links, as a build
        rel = Path(folder).relative_to(PACKAGE_ASSETS)
        if rel == Path("kibana", "img"):
            continue  # the README's pictures of the workflow graph: beside the saved objects, never shipped
        for name in names:
            assert len(rel.parts) <= 1, rel / name
            found += 1
    alerting = len(list((PACKAGE_ASSETS / "alerting").iterdir()))
    assert found == len(KINDS) + 4 + 1 + alerting  # templates, ingest pipelines, saved objects, alerting


def test_the_jobs_own_documents_fit_the_strict_mappings(clients, make_config, prefix):
    """What the runner and the anomaly builder really write (not a hand-written sample) fits the templates."""
    from collections import Counter

    from deeplog_siem.anomaly import DocContext, EventRef, KeyVerdict, SessionEvent, key_anomaly
    from deeplog_siem.runs import RunSummary
    from deeplog_siem.vocab import EOS, Vocabulary

    cfg = make_config()
    create_indices(clients, cfg)
    vocab = Vocabulary()
    k_recv, k_alloc = vocab.add("Receiving block <BLK> src: <IP> dest: <IP>"), vocab.add("allocateBlock: <*>")
    ctx = DocContext(
        vocab=vocab,
        model_version="v1",
        run_id="r1",
        index=cfg.output.anomalies_index,
        message_field="message",
        top_g=2,
        min_probability=0.0,
    )
    event = EventRef("logs-hdfs", "doc-1", "2008-11-09T20:36:15.000Z", "081109 203615 ...", "10.0.0.1")
    window = [0, 0, k_alloc, k_recv]
    expected = [(k_recv, 0.7), (EOS, 0.2)]
    docs = [
        key_anomaly(
            ctx,
            SessionEvent(event, "blk_1", 2, window, ("x",)),
            KeyVerdict("log_key", k_alloc, 0.01, 5, expected),
        ),
        # One event is either a log_key or an unseen_key anomaly (both come from the key detector).
        key_anomaly(
            ctx,
            SessionEvent(
                EventRef("logs-hdfs", "doc-2", "2008-11-09T20:36:16Z", "?", None), "blk_1", 3, window
            ),
            KeyVerdict("unseen_key", 1, 0.0, 20, expected),
        ),
        key_anomaly(
            ctx, SessionEvent(event, "blk_1", 4, window), KeyVerdict("session_end", EOS, 0.001, 9, expected)
        ),
        # Under a feedback version, inside the top g but rejected by the trained model (the anchor).
        key_anomaly(
            ctx,
            SessionEvent(
                EventRef("logs-hdfs", "doc-3", "2008-11-09T20:36:17Z", "?", None), "blk_1", 5, window
            ),
            KeyVerdict("log_key", k_alloc, 0.0005, 1, expected, anchor_probability=0.0004),
        ),
    ]
    assert (
        "rejected by the trained model at p=0.0004, not taught by feedback" in docs[-1]["deeplog"]["summary"]
    )
    run = RunSummary(
        run_id="r1", job="detect", docs_read=10, skipped=Counter(empty=1), anomalies=Counter(log_key=1)
    )
    run.durations_ms.update(read=5, total=9)
    docs.append(run.document(cfg.output.runs_index))
    for d in docs:
        body = {k: v for k, v in d.items() if not k.startswith("_")}
        clients.es.index(index=d["_index"], id=d["_id"], document=body, refresh=True)
    assert clients.es.count(index=cfg.output.anomalies_index)["count"] == 4
    assert clients.es.count(index=cfg.output.runs_index)["count"] == 1


def _keywords(mapping: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every keyword mapping under `mapping`: properties, multi-fields and dynamic templates."""
    if mapping.get("type") == "keyword":
        yield path, mapping
    for name, sub in (mapping.get("properties") or {}).items():
        yield from _keywords(sub, f"{path}.{name}" if path else name)
    for name, sub in (mapping.get("fields") or {}).items():
        yield from _keywords(sub, f"{path}.{name}")
    for entry in mapping.get("dynamic_templates") or []:
        for name, spec in entry.items():
            yield from _keywords(spec.get("mapping") or {}, f"dynamic_templates.{name}")


def test_every_keyword_of_every_template_is_bounded(make_config):
    # Elasticsearch refuses a document whose keyword value exceeds 32766 bytes: a long host name or session id
    # would drop its own anomaly. ignore_above counts characters (up to 4 bytes each in UTF-8).
    for cfg in (make_config(), make_config(retention={"anomalies_days": 30, "runs_days": 7})):
        for lifecycle in (None, "ilm", "ism"):
            for name, body in index_templates(cfg, lifecycle).items():
                found = list(_keywords(body["template"]["mappings"]))
                assert found, name
                unbounded = [p for p, m in found if not 0 < m.get("ignore_above", 0) <= 32766 // 4]
                assert not unbounded, f"{name}: keyword fields without a bound: {unbounded}"
