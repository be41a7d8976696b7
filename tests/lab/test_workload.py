"""The workload generator: reproducible, and every label names what was really injected."""

from __future__ import annotations

import re
from datetime import datetime

from deeplog_lab.workload import TASKS, generate, generate_workload
from deeplog_siem.config import TemplaterConfig
from deeplog_siem.formats import OPENSTACK_SESSION_REGEX
from deeplog_siem.templater import Templater

REQ = re.compile(r"\[(req-[0-9a-f-]{36}) ")


def _stamp(line: str) -> datetime:
    return datetime.fromisoformat(" ".join(line.split()[1:3]))


def test_same_seed_same_output_other_seed_differs() -> None:
    a = generate(300, seed=7, anomaly_rate=0.1, path_rate=0.1)
    b = generate(300, seed=7, anomaly_rate=0.1, path_rate=0.1)
    c = generate(300, seed=8, anomaly_rate=0.1, path_rate=0.1)
    assert a == b
    assert a[0] != c[0]


def test_lines_parse_as_openstack_and_carry_their_session_and_task() -> None:
    w = generate_workload(200, seed=1)
    tpl = Templater(TemplaterConfig(format="openstack"))
    assert all(ev is not None for ev in tpl.parse_many(w.lines, learn=True))
    rx = re.compile(OPENSTACK_SESSION_REGEX)
    stamps = [_stamp(line) for line in w.lines]
    assert stamps == sorted(stamps)
    assert len(w.tasks) == 200
    for t in w.tasks:
        for i in t["lines"]:
            assert rx.search(w.lines[i]).group(1) == t["session"]
            assert REQ.search(w.lines[i]).group(1) == t["task_id"]
    # Tasks of different sessions interleave.
    first = [REQ.search(line).group(1) for line in w.lines[:200]]
    assert any(x != y for x, y in zip(first, first[1:], strict=False))
    assert set(w.graphs) >= set(TASKS)


def test_labels_match_the_injected_anomalies() -> None:
    w = generate_workload(2000, seed=3, anomaly_rate=0.1, slowdowns=(3,), path_rate=0.1)
    clean = generate_workload(2000, seed=3)
    kinds = {lab["kind"] for lab in w.labels}
    assert kinds == {"slowdown", "missing", "repeated", "foreign"}
    tasks = {t["task_id"]: t for t in w.tasks}
    for lab in w.labels:
        t = tasks[lab["task_id"]]
        assert lab["session"] == t["session"] and lab["task_type"] == t["task_type"]
        n_normal = sum(len(s.lines) for s in TASKS[t["task_type"]])
        if lab["kind"] == "slowdown":
            assert lab["factor"] == 3.0 and len(t["lines"]) == n_normal
            step = next(s for s in TASKS[t["task_type"]] if s.name == lab["step"])
            assert step.timed
            # The slowed step's first line comes at least ~3x its median after the line before it.
            first = lab["lines"][0]
            prev = max(i for i in t["lines"] if i < first) if first != t["lines"][0] else None
            if prev is not None:
                gap = (_stamp(w.lines[first]) - _stamp(w.lines[prev])).total_seconds()
                assert gap > step.median_s * 3 * 0.3
        elif lab["kind"] == "missing":
            step = next(s for s in TASKS[t["task_type"]] if s.name == lab["step"])
            assert len(t["lines"]) == n_normal - len(step.lines)
            # The labelled line is the one after the gap: the next step's first line, if the task has one.
            names = [s.name for s in TASKS[t["task_type"]]]
            nxt = names.index(lab["step"]) + 1
            if nxt < len(names):
                fmt = TASKS[t["task_type"]][nxt].lines[0][1]
                assert fmt.split("{")[0] in w.lines[lab["lines"][0]]
            elif lab["lines"]:  # the task's last step: the session's next line, after this task's lines
                assert lab["lines"][0] > max(t["lines"])
        else:
            assert len(t["lines"]) > n_normal
            assert lab["lines"] and set(lab["lines"]) <= set(t["lines"])
    # No label, no anomaly: a run without injection has none and the same number of tasks.
    assert clean.labels == [] and len(clean.tasks) == len(w.tasks)
