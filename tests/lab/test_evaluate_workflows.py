"""Workflow models: loops, concurrency and interleaved tasks recognised; the generator's task graphs
recovered; diagnosis; storage and renderings; anomalies and workflow documents fit the strict mappings."""

from __future__ import annotations

import json

from deeplog_lab.evaluate_workflows import run as evaluate
from deeplog_siem import cli
from deeplog_siem.workflow import WorkflowModel

A, B, C, D, E = 3, 4, 5, 6, 7
X, Y, Z = 10, 11, 12
NAMES = {k: f"event {k} <*>" for k in range(3, 20)}


def test_generated_openstack_tasks_match_the_true_graphs():
    """The generator's true task graphs: at least 95% of true edges found, at most 5% spurious."""
    r = evaluate(seed=0, n_tasks=600, key_model=True)
    assert r["true_edges"] >= 25
    assert r["edge_recall"] >= 0.95, r
    assert r["spurious_rate"] <= 0.05, r
    assert set(r["tasks"]) == {"create", "stop", "start", "migrate", "delete"}
    assert len({t["workflow"] for t in r["tasks"].values()}) == 5  # one workflow per task type
    assert r["task_order_recall"] >= 0.8


def test_split_gap_matters_for_sequential_tasks():
    """Without the idle-gap split, tasks of one instance run together: the measurement can fail."""
    from deeplog_siem.workflow_mining import MiningParams

    r = evaluate(seed=0, n_tasks=600, key_model=False, params=MiningParams(split_gap_s=0))
    assert r["spurious_rate"] > 0.05


def test_cli_workflow_hdfs_on_real_sessions(tmp_path, capsys):
    """Real HDFS key sessions: the block workflow is found and abnormal sessions are diagnosed."""
    from ..conftest import need_data

    need_data("hdfs_keys", "hdfs_train")
    args = ["workflow", "hdfs", "--no-key-model", "--anomalies", "3", "--out", str(tmp_path), "--json"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    last = json.loads(out.strip().splitlines()[-1])
    assert last["sessions"] == 4855 and last["workflows"]
    assert "allocateBlock" in out and "Receiving block" in out  # the block-write workflow, E5 and E22
    assert len(last["anomalies"]) == 3
    for a in last["anomalies"]:
        d = a["diagnosis"]
        assert d["summary"] and ("name" in d or d["reason"])
    assert WorkflowModel.load(tmp_path).sessions == 4855
