"""evaluate_workflows: generated OpenStack-like tasks -> mined workflows compared with the true task graphs.

Contract: `run(seed, n_tasks, key_model) -> dict` (the figures behind `deeplog-siem evaluate-workflows`):
1. `workload.generate_workload(n_tasks, seed)`: normal tasks of concurrent VM sessions, their lines
   interleaved in time; `Workload.tasks` says which lines each task emitted, `Workload.graphs` the true
   chain of steps per task type and the order of task types within a session.
2. The real stages: `Templater` (format `openstack`), sessions by instance id with the event times, and
   `workflow_mining.mine_workflows` (with a small key model trained on the same sessions when `key_model`).
3. The truth in keys: a task type's chain of lines becomes a chain of log keys (through the key of each line
   of one of its tasks). Each true task is matched with the mined workflow holding most of its core keys.
   `edge_recall`: true edges (over all task types) present in the matched workflow; `spurious_rate`:
   mined edges between states (START/END excluded) that are no true edge of any task matched to their
   workflow. `task_order` compares the mined task-level transitions with the true session graph.
"""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

from deeplog_siem.config import ModelConfig, TemplaterConfig
from deeplog_siem.model import train_key_model
from deeplog_siem.templater import Templater
from deeplog_siem.workflow import END, START, WorkflowModel
from deeplog_siem.workflow_mining import MiningParams, mine_workflows, model_predictor

from .evaluate_params import SIMILARITY
from .workload import generate_workload, templated_events

log = logging.getLogger(__name__)


def _quiet(_: str) -> None:
    pass


def run(
    seed: int = 0,
    n_tasks: int = 1500,
    key_model: bool = True,
    params: MiningParams | None = None,
    progress: Callable[[str], None] = _quiet,
    path_rate: float = 0.0,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    # path_rate > 0: training data contaminated with path anomalies (missing, repeated, foreign steps).
    w = generate_workload(n_tasks, seed, path_rate=path_rate)
    tpl = Templater(TemplaterConfig(format="openstack", similarity_threshold=SIMILARITY))
    line_key: dict[int, int] = {}
    per_session: dict[str, tuple[list[int], list[float]]] = {}
    for i, sid, ev, ts in templated_events(tpl, w.lines, learn=True):
        keys, times = per_session.setdefault(sid, ([], []))
        keys.append(ev.key)
        times.append(ts)
        line_key[i] = ev.key
    sequences = [k for k, _ in per_session.values()]
    times = [t for _, t in per_session.values()]
    progress(f"{len(w.lines)} lines, {len(sequences)} sessions, {tpl.num_templates} templates")
    predict = None
    # Enough epochs for a small training set (early stopping ends it sooner on a big one): an underfit key
    # model would veto real steps.
    mcfg = ModelConfig(window=10, top_g=3, epochs=20, hidden=32, seed=seed, device="cpu")
    if key_model:
        model, _ = train_key_model(sequences, len(tpl.vocab), mcfg)
        predict = model_predictor(model)
    wm = mine_workflows(
        sequences, tpl.vocab.templates, times=times, predict=predict, window=mcfg.window, params=params
    )
    bad = {lab["task_id"] for lab in w.labels}
    tasks = [{**t, "anomalous": t["task_id"] in bad} for t in w.tasks]
    out = compare(wm, w.graphs, tasks, line_key)
    out.update(
        seed=seed,
        n_tasks=n_tasks,
        lines=len(w.lines),
        sessions=len(sequences),
        templates=tpl.num_templates,
        key_model=key_model,
        path_rate=path_rate,
        seconds=round(time.perf_counter() - t0, 1),
    )
    return out


def true_key_graphs(
    graphs: dict[str, Any], tasks: list[dict[str, Any]], line_key: dict[int, int]
) -> dict[str, list[int]]:
    """Task type -> its chain of keys (from the first task of the type, not labelled anomalous, with every
    line templated)."""
    chains: dict[str, list[int]] = {}
    for t in tasks:
        ttype = t["task_type"]
        if ttype in chains or ttype not in graphs or t.get("anomalous"):
            continue
        if len(t["lines"]) == len(graphs[ttype]["nodes"]) and all(i in line_key for i in t["lines"]):
            chains[ttype] = [line_key[i] for i in t["lines"]]
    return chains


def compare(
    wm: WorkflowModel, graphs: dict[str, Any], tasks: list[dict[str, Any]], line_key: dict[int, int]
) -> dict[str, Any]:
    chains = true_key_graphs(graphs, tasks, line_key)
    # Keys that occur in one task type only define it; shared keys (lifecycle events) do not.
    owners: dict[int, set[str]] = defaultdict(set)
    for ttype, chain in chains.items():
        for k in chain:
            owners[k].add(ttype)
    match: dict[str, str | None] = {}
    per_task = {}
    recovered = total = 0
    true_by_wf: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for ttype, chain in chains.items():
        own = {k for k in chain if owners[k] == {ttype}} or set(chain)
        best = max(wm.workflows, key=lambda wf: len(own & set(wf.core)), default=None)
        name = best.name if best is not None and own & set(best.core) else None
        match[ttype] = name
        edges = set(zip(chain, chain[1:], strict=False))
        got = set()
        if name is not None:
            wf = wm.get(name)
            got = {(e.source, e.target) for e in wf.edges} & edges
            true_by_wf[name] |= edges
        recovered += len(got)
        total += len(edges)
        per_task[ttype] = {"workflow": name, "true_edges": len(edges), "recovered": len(got)}
    mined = spurious = 0
    spurious_edges = []
    for wf in wm.workflows:
        for e in wf.edges:
            if e.source in (START, END) or e.target in (START, END):
                continue
            mined += 1
            if (e.source, e.target) not in true_by_wf.get(wf.name, set()):
                spurious += 1
                spurious_edges.append(f"{wf.name}:K{e.source}->K{e.target} (n={e.count})")
    # Task level: the generator's session graph in mined workflow names.
    true_order = {(match.get(a), match.get(b)) for a, b in graphs["session"]["edges"]}
    mined_order = set()
    for t, c in wm.transitions.items():
        a, b = t.split(">")
        if a != "START" and b != "END" and c >= 2:
            mined_order.add((a, b))
    return {
        "edge_recall": round(recovered / total, 4) if total else 0.0,
        "spurious_rate": round(spurious / mined, 4) if mined else 0.0,
        "true_edges": total,
        "recovered_edges": recovered,
        "mined_edges": mined,
        "spurious_edges": spurious_edges[:20],
        "workflows": len(wm.workflows),
        "tasks": per_task,
        "task_order_recall": round(len(true_order & mined_order) / len(true_order), 4) if true_order else 0.0,
        "task_order_spurious": sorted(f"{a}>{b}" for a, b in mined_order - true_order),
    }


def main_figures(
    seeds: list[int],
    n_tasks: int,
    key_model: bool,
    say: Callable[[str], None],
    path_rate: float = 0.0,
    params: MiningParams | None = None,
) -> dict:
    """Run several seeds; the aggregate the CLI prints as its last line."""
    torch.set_num_threads(1)
    runs = []
    for s in seeds:
        r = run(s, n_tasks, key_model, params=params, progress=say, path_rate=path_rate)
        say(
            f"seed {s}: edge recall {r['edge_recall']:.3f} ({r['recovered_edges']}/{r['true_edges']}), "
            f"spurious {r['spurious_rate']:.3f} of {r['mined_edges']}, {r['workflows']} workflows, "
            f"task order recall {r['task_order_recall']:.2f}, {r['seconds']} s"
        )
        runs.append(r)
    return {
        "seeds": seeds,
        "n_tasks": n_tasks,
        "key_model": key_model,
        "path_rate": path_rate,
        "params": (params or MiningParams()).__dict__,
        "edge_recall_min": min(r["edge_recall"] for r in runs),
        "spurious_rate_max": max(r["spurious_rate"] for r in runs),
        "runs": runs,
    }


def hdfs_report(
    train_path: str,
    test_path: str,
    templates_path: str,
    n_anomalies: int = 5,
    key_model: bool = True,
    seed: int = 0,
    progress: Callable[[str], None] = _quiet,
) -> dict[str, Any]:
    """The workflow model of HDFS training key sessions, and the first `n_anomalies` abnormal test sessions
    diagnosed end to end: the key model (a small one, trained on the same sessions) flags the session's
    first unexpected event, or its end, and `workflow.diagnose` says where it left its workflow."""
    from deeplog_siem.detector import KeyDetector, build_windows
    from deeplog_siem.vocab import EOS
    from deeplog_siem.workflow import diagnose, render_text

    from .keyseq import hdfs_vocabulary, read_key_sessions, to_ids

    vocab = hdfs_vocabulary(templates_path)
    train, _ = to_ids(read_key_sessions(train_path), len(vocab))
    test, _ = to_ids(read_key_sessions(test_path), len(vocab))
    mcfg = ModelConfig(window=10, top_g=9, epochs=8, hidden=64, seed=seed, device="cpu")
    predict = det = None
    if key_model:
        progress(f"training a small key model on {len(train)} sessions ...")
        model, _ = train_key_model(train, len(vocab), mcfg)
        predict = model_predictor(model)
        det = KeyDetector(model, top_g=mcfg.top_g)
    wm = mine_workflows(train, vocab.templates, predict=predict, window=mcfg.window)
    diagnosed = []
    for n, s in enumerate(test):
        if len(diagnosed) >= n_anomalies:
            break
        if det is not None:
            windows = build_windows([s], mcfg.window, add_eos=True)
            flags = det.score(windows).anomalous.nonzero().flatten().tolist()
            if not flags:
                continue
            pos = flags[0]
        else:
            pos = next((i for i, d in enumerate(_first_off_workflow(wm, s)) if d), None)
            if pos is None:
                continue
        key = s[pos] if pos < len(s) else EOS
        d = diagnose(wm, s[max(0, pos - mcfg.window) : pos], key, template_of=vocab.template)
        diagnosed.append(
            {
                "session": n,
                "keys": " ".join(f"E{k - 2}" for k in s),
                "position": pos,
                "key": f"E{key - 2}" if key != EOS else "<end>",
                "diagnosis": d.fields(),
            }
        )
    return {
        "sessions": len(train),
        "key_model": key_model,
        "workflows": [
            {
                "name": w.name,
                "title": w.title,
                "paths": w.sessions,
                "states": len(w.nodes),
                "edges": len(w.edges),
            }
            for w in wm.workflows
        ],
        "transitions": wm.transitions,
        "text": [hdfs_names(render_text(w)) for w in wm.workflows],
        "anomalies": diagnosed,
        "model": wm,
    }


def hdfs_names(text: str) -> str:
    """Workflow text with HDFS keys as loghub event ids (vocabulary id K<n> is event E<n-2>)."""
    return re.sub(r"\bK(\d+)\b", lambda m: f"E{int(m.group(1)) - 2}", text)


def _first_off_workflow(wm: WorkflowModel, s: list[int]) -> list[bool]:
    """Per event: no workflow has the step from the previous key (the count-only fallback detector)."""
    out = []
    for i, k in enumerate(s):
        prev = s[i - 1] if i else START
        out.append(not any(w.edge(prev, k) is not None for w in wm.workflows if k in w.nodes))
    return out
