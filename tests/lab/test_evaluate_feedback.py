"""Feedback on the real (embedded) server: a marked false positive fine-tunes the key model, exactly once.

Scenario (real HDFS sessions, rendered as raw HDFS lines): the model learns 300 normal sessions; the test
data holds a "drifted" normal session (one extra `11 9` round after the `26`s: legitimate here, unexpected
to the model), a labelled anomalous session from the sample (an event the model flags), and a few normal
ones. Responders mark the drifted event a false positive; after the feedback job, detection over the same
window no longer flags it, while the true anomaly still is.
"""

from __future__ import annotations

from deeplog_siem.config import ModelConfig

DRIFTED = [5, 5, 5, 22, 11, 9, 11, 9, 11, 9, 26, 26, 26, 11, 9, 23, 23, 23, 21, 21, 21]
# Labelled anomalous in the sample: key 28 where the model expects the session's writes to go on.
ANOMALOUS = [22, 5, 5, 5, 26, 26, 26, 11, 9, 11, 9, 11, 9, 23, 23, 23, 21, 21, 28, 26, 21]
ANOMALOUS_2 = [5, 5, 22, 5, 11, 9, 11, 9, 11, 9, 26, 26, 26, 4, 4, 3, 2, 23, 23, 23, 21, 21, 21, 20]
MODEL = {"epochs": 6, "patience": 2, "threads": 1, "device": "cpu"}
ALL_TIME = {"start": "2000-01-01T00:00:00Z", "end": "2100-01-01T00:00:00Z"}


def test_workload_drift_adds_a_known_line_and_leaves_other_seeds_alone():
    from deeplog_lab.workload import DRIFT_STEP, generate_workload

    plain = generate_workload(300, seed=5)
    assert generate_workload(300, seed=5, drift_rate=0.0).lines == plain.lines
    drifted = generate_workload(300, seed=5, drift_rate=1.0, path_rate=0.05)
    tasks = [t for t in drifted.tasks if t.get("drifted")]
    assert tasks and all(t["task_type"] == "delete" for t in tasks)
    assert {lab["task_id"] for lab in drifted.labels if lab["kind"] != "slowdown"}.isdisjoint(
        t["task_id"] for t in tasks
    )
    line = DRIFT_STEP.lines[0][1]
    assert all(any(drifted.lines[i].endswith(line) for i in t["lines"]) for t in tasks)
    assert any(ln.endswith(line) for ln in plain.lines)  # a known line (the stop task's), not a new one


def test_evaluate_feedback_runs_the_scenario_end_to_end():
    from deeplog_lab.evaluate_feedback import run

    cfg = ModelConfig(top_g=3, hidden=16, epochs=8, seed=0, device="cpu", threads=1)
    r = run(0, n_train=600, n_test=600, max_rounds=2, model_cfg=cfg)
    assert r["fp_events_before"] > 0 and r["rounds"] and r["marked"] >= 1
    for part in ("test", "fresh"):
        assert r[part]["before"]["fp_rate"] > 0
        assert r[part]["before"]["normal_tasks"] > 0 and r[part]["before"]["anomalous_tasks"] > 0
    if r["updates_accepted"]:
        assert r["fp_rate_after"] < r["fp_rate_before"]
