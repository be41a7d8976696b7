"""The shipped Kibana workflow graph rendered with the real Vega engine (npm `vega`, the 5.x line Kibana
uses, pinned in tests/vega/package.json and installed by `make install` where node is): its data sources are
replaced by the search responses the embedded server gives to the queries the spec makes, over workflow and
anomaly documents the product wrote. No error or warning; the anomaly's diverged state, expected steps and
step taken are marked; no two state labels overlap."""

from __future__ import annotations

import uuid

import pytest

from deeplog_lab.vega_render import engine_missing, graph_spec, kibana_responses, render_vega


@pytest.fixture(scope="module")
def engine() -> None:
    reason = engine_missing()
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
        must = {"ids": {"values": [hit["_id"]]}}
    else:
        hit, must = hdfs_job.anomalies[0], None
    values = kibana_responses(clients, spec, must)
    assert {
        u["index"] for d in spec["data"] if isinstance(u := d.get("url"), dict) and "%context%" not in u
    } == {
        f"{hdfs_job.config.output.anomalies_index}*",
        f"{hdfs_job.config.output.workflows_index}*",
    }
    assert [h["_id"] for h in values["anomaly"]] == [hit["_id"]]
    out = render_vega(spec, values)
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


def test_shipped_graph_without_an_anomaly_and_with_rare_edges_hidden(engine, clients, hdfs_job):
    """No anomaly under the filters: the newest model version's first workflow, unmarked. The slider hides
    edges under its share and the notes count them."""
    spec = graph_spec(hdfs_job.config)
    values = kibana_responses(clients, spec, {"bool": {"must_not": [{"match_all": {}}]}})
    assert values["anomaly"] == [] and values["workflows"]
    plain = render_vega(spec, values)
    assert plain["errors"] == [] and plain["warnings"] == []
    assert "no anomaly with a workflow diagnosis under the filters" in plain["signals"]["heading"]
    assert plain["signals"]["heading"].startswith("workflow w1 of model ")
    marks = plain["marks"]
    assert marks["node-boxes"] and not [it for it in marks["diverged-caption"] if it["text"]]
    assert not marks["taken-line"] and {it["datum"]["role"] for it in marks["edge-lines"]} == {"plain"}
    shares = [it["datum"]["edge"]["probability"] for it in marks["edge-lines"]]
    cut = sorted(set(shares))[1]  # the slider just above the rarest edges
    rare = sum(p < cut for p in shares)
    assert rare > 0
    hidden = render_vega(spec, values, {"minShare": cut})
    assert hidden["errors"] == [] and hidden["warnings"] == []
    assert len(hidden["marks"]["edge-lines"]) == len(shares) - rare
    assert hidden["marks"]["notes"][0]["text"].startswith(f"{rare} rare edges hidden")
