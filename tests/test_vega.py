"""The shipped Kibana workflow graph rendered with the real Vega engine (npm `vega`, the 5.x line Kibana
uses, pinned in tests/vega/package.json and installed by `make install` where node is): its data sources are
replaced by the search responses the embedded server gives to the queries the spec makes, over workflow and
anomaly documents the product wrote. No error or warning; the anomaly's diverged state, expected steps and
step taken are marked; no two state labels overlap."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from deeplog_siem.kibana import saved_objects

VEGA_DIR = Path(__file__).parent / "vega"
GRAPH_ID = "deeplog-vis-workflow-graph"


def _vega_ready() -> str | None:
    """Why the engine cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed (the Vega engine runs on node)"
    if not (VEGA_DIR / "node_modules" / "vega" / "package.json").is_file():
        return "npm package vega is not installed: run `make install` (or `npm ci` in tests/vega)"
    return None


def graph_spec(cfg) -> dict[str, Any]:
    """The workflow graph's Vega spec as `setup` imports it for `cfg` (index names adapted)."""
    (graph,) = [o for o in saved_objects(cfg) if o["id"] == GRAPH_ID]
    return json.loads(json.loads(graph["attributes"]["visState"])["params"]["spec"])


def _resolve(body: Any) -> Any:
    """A Kibana query body with an empty dashboard context: the context clauses match everything and the
    time filter spans all time, as on a dashboard without filters."""
    if isinstance(body, list):
        out = []
        for item in body:
            if item in ("%dashboard_context-must_clause%", "%dashboard_context-filter_clause%"):
                out.append({"match_all": {}})
            elif item == "%dashboard_context-must_not_clause%":
                continue
            elif (
                isinstance(item, dict)
                and "range" in item
                and any(isinstance(v, dict) and v.get("%timefilter%") for v in item["range"].values())
            ):
                out.append({"match_all": {}})
            else:
                out.append(_resolve(item))
        return out
    if isinstance(body, dict):
        return {k: _resolve(v) for k, v in body.items()}
    return body


def kibana_responses(clients, spec: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Data source name -> the hits the cluster returns to its query (Kibana's `format.property`)."""
    out = {}
    for d in spec["data"]:
        url = d.get("url")
        if not isinstance(url, dict):
            continue
        assert "%context%" not in url or d["name"] == "anomaly", d["name"]
        body = _resolve(copy.deepcopy(url["body"]))
        resp = clients.es.search(index=url["index"], body=body)
        assert d["format"]["property"] == "hits.hits"
        out[d["name"]] = resp["hits"]["hits"]
    return out


def render(spec: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        ["node", str(VEGA_DIR / "render.mjs")],
        input=json.dumps({"spec": spec, "values": values}),
        capture_output=True,
        text=True,
        cwd=VEGA_DIR,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def engine() -> None:
    reason = _vega_ready()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def hdfs_job(clients, es_section, tmp_path_factory):
    from tests.test_workflow import run_hdfs_job

    prefix = f"t{uuid.uuid4().hex[:10]}"
    yield run_hdfs_job(clients, es_section, tmp_path_factory.mktemp("vega-job"), prefix)
    clients.es.options(ignore_status=404).indices.delete(index=f"{prefix}*", expand_wildcards="all")


def _overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return a["x1"] < b["x2"] and b["x1"] < a["x2"] and a["y1"] < b["y2"] and b["y1"] < a["y2"]


@pytest.mark.parametrize("pick", ["newest", "selected"])
def test_shipped_graph_renders_the_anomaly_on_its_workflow(engine, clients, hdfs_job, pick):
    spec = graph_spec(hdfs_job.config)
    if pick == "selected":
        # An analyst's filter on one anomaly (here the oldest with a diagnosis) stands in for the dashboard's.
        hit = hdfs_job.anomalies[-1]
        text = json.dumps(spec).replace(
            '"%dashboard_context-must_clause%"', json.dumps({"ids": {"values": [hit["_id"]]}})
        )
        spec = json.loads(text)
    else:
        hit = hdfs_job.anomalies[0]
    values = kibana_responses(clients, spec)
    assert [h["_id"] for h in values["anomaly"]] == [hit["_id"]]
    out = render(spec, values)
    assert out["errors"] == [] and out["warnings"] == []
    src = hit["_source"]["deeplog"]
    wf = src["workflow"]
    assert out["signals"]["heading"].startswith(
        f"anomaly {hit['_id']} on workflow {wf['name']} of model {src['model_version']}"
    )
    marks = out["marks"]
    nodes = {it["datum"]["id"]: it for it in marks["node-boxes"]}
    assert len(nodes) >= 3
    # The diverged state: marked, captioned.
    (caption,) = [it for it in marks["diverged-caption"] if it["text"] == "diverged here"]
    assert caption["datum"]["id"] == wf["diverged_at"] and nodes[wf["diverged_at"]]["strokeWidth"] >= 3
    # The expected steps: the edges from the diverged state to them and their states, in green; the step
    # taken in red: a line of its own, or the workflow's edge when it is one (a step rare in its context).
    taken = "END" if src["anomaly_type"] == "session_end" else f"K{src['key']['id']}"
    expected = {(wf["diverged_at"], k) for k in wf["expected_next"] if k != taken}
    roles = {}
    for it in marks["edge-lines"]:
        roles.setdefault(it["datum"]["role"], {})[
            (it["datum"]["edge"]["source"], it["datum"]["edge"]["target"])
        ] = it
    assert expected and set(roles.get("expected", {})) == expected
    assert all(it["stroke"] == "#1a9850" for it in roles["expected"].values())
    for _, k in expected:
        assert nodes[k]["stroke"] == "#1a9850", k
    taken_marks = marks["taken-line"] + list(roles.get("taken", {}).values())
    assert len(taken_marks) == 1 and taken_marks[0]["stroke"] == "#d73027"
    assert set(roles.get("taken", {})) <= {(wf["diverged_at"], taken)}
    # The path's states are highlighted.
    assert all(nodes[k]["datum"]["onpath"] for k in wf["path"] if k in nodes)
    # No two state labels overlap.
    labels = marks["node-labels"]
    assert len(labels) == len(nodes)
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            assert not _overlap(a, b), (a["text"], b["text"])
