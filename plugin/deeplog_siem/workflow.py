"""workflow: workflow models (automata over log keys) -> stored JSON, index documents, renderings, diagnosis.

Contract:
- `WorkflowModel`: the workflows mined from normal training sessions (`workflow_mining.mine_workflows`):
  each `Workflow` is an automaton whose states are log keys (`K<id>`, plus `START` and `END`), its edges
  with counts, share of the source's transitions, kind (sequential, branch, concurrent, loop) and typical
  time gap (median, p90 seconds); `transitions` is the task-level order of workflows within sessions.
  `save(dir)`/`load(dir)` (`workflows.json` in a model version directory), `to_dict()`/`from_dict()`;
  `documents(index, model_version)`: one document per workflow for the `deeplog-workflows` index, keyed by
  model version and name (workflow names are numbered afresh at each training), with its picture's layout.
- `diagnose(model, history, key, gap_s=None) -> Diagnosis`: for an anomalous key after a session's
  `history` (its last keys, oldest first), the workflow it belongs to, the states visited, the state where
  it diverged, the expected next steps with their templates, and a one-line summary; `reason` says why no
  workflow applies (unseen key, no matching workflow). With `gap_s` (the time since the previous event) it
  says whether that step was slow against the edge's usual gap. `Diagnosis.fields()` is the anomaly
  document's `deeplog.workflow` object.
- `render_text` and `render_dot` (Graphviz): a workflow as text; the SVG picture is `workflow_picture`'s,
  drawn from the layout `workflow_layout` computes (stored in each document as `deeplog.workflow.layout`).
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .atomic import write_text
from .errors import ArtifactError
from .vocab import EOS, UNK

START, END = -1, -2  # pseudo states of every workflow
WORKFLOWS_FILE = "workflows.json"
FORMAT_VERSION = 1


def node_id(key: int) -> str:
    return {START: "START", END: "END"}.get(key, f"K{key}")


def parse_node(node: str) -> int:
    if node == "START":
        return START
    if node == "END":
        return END
    if not node.startswith("K") or not node[1:].isdigit():
        raise ArtifactError(f"workflow node {node!r}: expected START, END or K<key id>")
    return int(node[1:])


@dataclass
class Edge:
    source: int
    target: int
    count: int
    probability: float  # share of the source's transitions that take this edge
    kind: str = "sequential"  # sequential | branch | concurrent | loop
    median_gap_s: float | None = None
    p90_gap_s: float | None = None
    model_probability: float | None = None  # highest key-model probability seen for this step

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["source"], d["target"] = node_id(self.source), node_id(self.target)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Edge:
        return cls(**{**d, "source": parse_node(d["source"]), "target": parse_node(d["target"])})


@dataclass
class Workflow:
    name: str
    core: list[int]  # the keys that define the task (density-connected); other nodes are shared keys
    nodes: dict[int, int]  # key -> occurrences
    templates: dict[int, str]
    edges: list[Edge]
    sessions: int  # paths (task executions) the workflow was built from
    concurrent: list[list[int]] = field(default_factory=list)
    contexts: dict[str, str] = field(default_factory=dict)  # "k1,k2" -> certain next key (grown history)
    dropped_transitions: int = 0

    def __post_init__(self) -> None:
        self._out: dict[int, list[Edge]] = defaultdict(list)
        for e in self.edges:
            self._out[e.source].append(e)
        for es in self._out.values():
            es.sort(key=lambda e: -e.count)

    @property
    def title(self) -> str:
        """The first step's template, shortened: what the analyst recognises the task by."""
        first = self.successors(START)
        text = self.templates.get(first[0].target, "") if first else ""
        return text if len(text) <= 60 else text[:57] + "..."

    def successors(self, key: int) -> list[Edge]:
        return self._out.get(key, [])

    def edge(self, a: int, b: int) -> Edge | None:
        return next((e for e in self._out.get(a, []) if e.target == b), None)

    def template(self, key: int) -> str:
        return {START: "<start>", END: "<end>", EOS: "<end of session>"}.get(key) or self.templates.get(
            key, f"K{key}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "core": [node_id(k) for k in self.core],
            "sessions": self.sessions,
            "nodes": [
                {"id": node_id(k), "key_id": k, "template": self.templates.get(k, ""), "count": c}
                for k, c in sorted(self.nodes.items())
            ],
            "edges": [e.to_dict() for e in self.edges],
            "concurrent": [[node_id(k) for k in p] for p in self.concurrent],
            "contexts": self.contexts,
            "dropped_transitions": self.dropped_transitions,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Workflow:
        return cls(
            name=d["name"],
            core=[parse_node(n) for n in d["core"]],
            nodes={int(n["key_id"]): int(n["count"]) for n in d["nodes"]},
            templates={int(n["key_id"]): str(n["template"]) for n in d["nodes"]},
            edges=[Edge.from_dict(e) for e in d["edges"]],
            sessions=int(d["sessions"]),
            concurrent=[[parse_node(n) for n in p] for p in d.get("concurrent", [])],
            contexts={str(k): str(v) for k, v in d.get("contexts", {}).items()},
            dropped_transitions=int(d.get("dropped_transitions", 0)),
        )


@dataclass
class WorkflowModel:
    workflows: list[Workflow]
    transitions: dict[str, int]  # "w1>w2" -> sessions where task w2 followed w1 (START/END included)
    params: dict[str, Any]
    sessions: int
    key_model: bool  # whether the key model's predictions checked the edges

    def get(self, name: str) -> Workflow:
        for w in self.workflows:
            if w.name == name:
                return w
        raise ArtifactError(f"no workflow {name!r}; known: {', '.join(w.name for w in self.workflows)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "sessions": self.sessions,
            "key_model": self.key_model,
            "params": self.params,
            "transitions": self.transitions,
            "workflows": [w.to_dict() for w in self.workflows],
        }

    @classmethod
    def from_dict(cls, d: Any) -> WorkflowModel:
        try:
            if d.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format_version {d.get('format_version')!r}, expected {FORMAT_VERSION}")
            return cls(
                workflows=[Workflow.from_dict(w) for w in d["workflows"]],
                transitions={str(k): int(v) for k, v in d["transitions"].items()},
                params=dict(d.get("params", {})),
                sessions=int(d["sessions"]),
                key_model=bool(d.get("key_model", False)),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"workflow model: malformed ({type(e).__name__}: {e})") from None

    def save(self, directory: str | os.PathLike[str]) -> Path:
        path = Path(directory) / WORKFLOWS_FILE
        write_text(path, json.dumps(self.to_dict(), indent=1, sort_keys=True))
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> WorkflowModel:
        path = Path(directory) / WORKFLOWS_FILE
        if not path.is_file():
            raise ArtifactError(f"{path}: no workflow model in this model version (train again to build one)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ArtifactError(f"{path}: unreadable ({e})") from None
        return cls.from_dict(data)

    def documents(self, index: str, model_version: str, timestamp: str) -> list[dict[str, Any]]:
        """One document per workflow (id: model version + name, so re-running setup overwrites it)."""
        # Imported here: the layout module builds on this one's types.
        from .workflow_layout import layout

        docs = []
        for w in self.workflows:
            d = w.to_dict()
            # Layered layout for the Kibana Vega graph: depth = row, col = position in the row (0..1).
            depth = _depths(w)
            rows: dict[int, list[int]] = defaultdict(list)
            for k in sorted(depth, key=lambda k: (depth[k], k)):
                rows[depth[k]].append(k)
            col = {k: (i + 1) / (len(ks) + 1) for ks in rows.values() for i, k in enumerate(ks)}
            nodes = [
                {
                    "id": node_id(k),
                    "key_id": k,
                    "template": w.template(k) if k in (START, END) else w.templates.get(k, ""),
                    "count": w.nodes.get(k, w.sessions),
                    "depth": depth[k],
                    "col": round(col[k], 4),
                }
                for k in sorted(depth, key=lambda k: (depth[k], k))
            ]
            docs.append(
                {
                    "_index": index,
                    "_id": f"{model_version}:{w.name}",
                    "@timestamp": timestamp,
                    "event": {"kind": "state", "module": "deeplog", "dataset": "deeplog.workflow"},
                    "deeplog": {
                        "model_version": model_version,
                        "workflow": {
                            "name": w.name,
                            "title": d["title"],
                            "description": render_text(w),
                            "sessions": w.sessions,
                            "nodes": nodes,
                            "edges": [
                                {
                                    k: e[k]
                                    for k in (
                                        "source",
                                        "target",
                                        "count",
                                        "probability",
                                        "kind",
                                        "median_gap_s",
                                        "p90_gap_s",
                                    )
                                }
                                for e in d["edges"]
                            ],
                            "counts": {
                                "nodes": len(w.nodes),
                                "edges": len(w.edges),
                                "dropped_transitions": w.dropped_transitions,
                            },
                            "templates": [w.templates[k] for k in sorted(w.templates)],
                            "graph": d,
                            "layout": layout(w).to_dict(),
                        },
                    },
                }
            )
        return docs


# --------------------------------------------------------------------------------------------- diagnosis


@dataclass
class Diagnosis:
    workflow: str | None
    reason: str | None  # why no workflow applies; None when one does
    path: list[int] = field(default_factory=list)  # states visited (the history within the workflow)
    diverged_at: int | None = None
    expected: list[tuple[int, float]] = field(default_factory=list)  # (key, share) allowed next
    templates: dict[int, str] = field(default_factory=dict)
    allowed: bool = False  # the workflow has this step (the key model flagged it in its context)
    slow: dict[str, Any] | None = None
    summary: str = ""

    def fields(self) -> dict[str, Any]:
        """The anomaly document's `deeplog.workflow` object."""
        t = self.templates
        out: dict[str, Any] = {"summary": self.summary}
        if self.workflow is None:
            out["reason"] = self.reason
            return out
        out.update(
            name=self.workflow,
            path=[node_id(k) for k in self.path],
            path_templates=[t.get(k, node_id(k)) for k in self.path],
            diverged_at=node_id(self.diverged_at) if self.diverged_at is not None else None,
            diverged_at_template=t.get(self.diverged_at, "") if self.diverged_at is not None else None,
            expected_next=[node_id(k) for k, _ in self.expected],
            expected_templates=[t.get(k, node_id(k)) for k, _ in self.expected],
            step_allowed=self.allowed,
        )
        if self.slow is not None:
            out["slow_step"] = self.slow
        return out


def _short(text: str, n: int = 64) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def diagnose(
    model: WorkflowModel | None,
    history: list[int] | tuple[int, ...],
    key: int,
    gap_s: float | None = None,
    template_of: Callable[[int], str] | None = None,
    timing: bool = False,
) -> Diagnosis:
    """Where a session left its workflow: `history` = its last keys (oldest first), `key` = the anomalous
    key (EOS for an unexpected session end), `gap_s` = seconds since the previous event (slow-step check),
    `template_of` = template text of keys no workflow holds (the vocabulary's). `timing`: the anomaly is
    about the step's parameters, not the step itself (the key model accepted it), so the summary leads with
    the path and the step's time rather than a divergence."""
    if model is None or not model.workflows:
        return Diagnosis(None, "no workflow model", summary="no workflow model in this model version")
    if key == UNK:
        return Diagnosis(
            None, "unseen_key", summary="unseen log key: it belongs to no workflow learned from normal logs"
        )
    ending = key == EOS
    best: tuple[tuple[int, int, int], Workflow] | None = None
    for w in model.workflows:
        on = [k for k in history if k in w.nodes]
        # The workflow the session is in: it holds the key and the most recent history, most used first.
        tail = 0
        for k in reversed(history):
            if k not in w.nodes:
                break
            tail += 1
        score = (int(ending or key in w.nodes) + int(bool(on)), tail + len(on), w.sessions)
        if (ending or key in w.nodes or on) and (best is None or score > best[0]):
            best = (score, w)
    if best is None:
        return Diagnosis(
            None,
            "no_workflow",
            summary=f"K{key} and the keys before it are in no learned workflow",
        )
    w = best[1]
    path = [k for k in history if k in w.nodes]
    last = path[-1] if path else START
    exp_edges = _expected(w, path)
    expected = [(e.target, e.probability) for e in exp_edges]
    target = END if ending else key
    # Allowed: the step is in the workflow after this history (the grown one where it decides).
    allowed = any(e.target == target for e in exp_edges)
    templates = {k: w.template(k) for k in [*path, last, *[e.target for e in exp_edges]]}
    known = ending or any(key in wf.nodes for wf in model.workflows)
    if ending:
        templates[key] = "<end of session>"
    elif key in w.nodes or template_of is None:
        templates[key] = w.template(key)
    else:
        templates[key] = template_of(key)
    d = Diagnosis(w.name, None, path, last, expected, templates, allowed)
    exp_text = " or ".join(f'{node_id(k)} "{_short(templates[k], 64)}"' for k, _ in expected[:3]) or "nothing"
    where = f'{node_id(last)} "{_short(templates[last])}"' if last != START else "its start"
    what = "ended" if ending else f'went to {node_id(key)} "{_short(templates[key], 64)}"'
    if not known:
        what += " (a key of no workflow)"
    if timing and allowed:
        d.summary = (
            f"workflow {w.name} ({_short(w.title, 40)}): after {len(path)} steps, at {where} the session {what}"
            " as the workflow expects"
        )
    else:
        verdict = "took a step rare in this context" if allowed else "diverged"
        d.summary = (
            f"workflow {w.name} ({_short(w.title, 40)}): after {len(path)} steps the session {verdict} at "
            f"{where}: it {what}; expected {exp_text}"
        )
    if gap_s is not None and last != START and not ending:
        e = w.edge(last, key)
        if e is not None and e.median_gap_s is not None:
            slow = bool(e.p90_gap_s is not None and gap_s > e.p90_gap_s)
            ratio = gap_s / e.median_gap_s if e.median_gap_s > 0 else math.inf
            d.slow = {
                "source": node_id(last),
                "target": node_id(key),
                "gap_s": round(gap_s, 6),
                "median_s": e.median_gap_s,
                "p90_s": e.p90_gap_s,
                "ratio": round(ratio, 3) if math.isfinite(ratio) else None,
                "slow": slow,
            }
            d.summary += (
                f"; step {node_id(last)} -> {node_id(key)} took {gap_s:.3g} s, usually {e.median_gap_s:.3g} s"
                f" (p90 {e.p90_gap_s:.3g} s){': slow' if slow else ''}"
            )
    return d


def _expected(w: Workflow, path: list[int]) -> list[Edge]:
    """Next steps after `path`: the one a grown history makes certain, else every edge of the last state."""
    last = path[-1] if path else START
    full = [START, *path]
    longest = max((ctx.count(",") + 1 for ctx in w.contexts), default=0)
    for order in range(min(len(full), longest), 1, -1):  # the longest matching history decides
        nxt = w.contexts.get(",".join(map(str, full[-order:])))
        if nxt is not None:
            e = w.edge(last, int(nxt))
            if e is not None:
                return [e]
    return w.successors(last)


# --------------------------------------------------------------------------------------------- rendering


def _gap(e: Edge) -> str:
    return f", gap {e.median_gap_s:.3g}s (p90 {e.p90_gap_s:.3g}s)" if e.median_gap_s is not None else ""


def concurrent_partners(model: WorkflowModel | None) -> dict[int, frozenset[int]]:
    """key -> the keys some workflow runs concurrently with it (both directions)."""
    out: dict[int, set[int]] = defaultdict(set)
    for w in model.workflows if model is not None else ():
        for a, b in w.concurrent:
            out[a].add(b)
            out[b].add(a)
    return {k: frozenset(v) for k, v in out.items()}


def concurrency_mask(keys: Any, targets: Any, partners: dict[int, frozenset[int]]) -> Any:
    """BoolTensor [N]: events whose key a workflow runs concurrently with a key already in their window
    [N, h], and that have not occurred in that window yet: the first occurrence of a concurrent step, which
    may come before or after its partner (HDFS: `allocateBlock` logged after the first `Receiving block`
    lines of the same second). The log-key model judges order; this is what it could not learn from
    training sessions that happened to show one order more often. Vectorised over the window tensor."""
    import torch

    out = torch.zeros(targets.shape[0], dtype=torch.bool)
    for k, cs in partners.items():
        is_k = targets == k
        if not bool(is_k.any()):
            continue
        seen_c = torch.isin(keys, torch.tensor(sorted(cs), dtype=keys.dtype)).any(1)
        out |= is_k & seen_c & ~(keys == k).any(1)
    return out


def render_text(w: Workflow) -> str:
    lines = [
        f"workflow {w.name}: {w.title}  ({w.sessions} paths, {len(w.nodes)} states, {len(w.edges)} edges)"
    ]
    for k in [START, *sorted(w.nodes, key=lambda k: _depths(w).get(k, 0))]:
        label = "START" if k == START else f"{node_id(k)} {w.templates.get(k, '')}"
        lines.append(f"  {label}")
        for e in w.successors(k):
            lines.append(
                f"      -> {node_id(e.target)}  [{e.kind}, n={e.count}, p={e.probability:.2f}{_gap(e)}]"
            )
    if w.concurrent:
        lines.append("  concurrent: " + ", ".join(" || ".join(node_id(k) for k in p) for p in w.concurrent))
    if w.contexts:
        shown = [
            f"{' '.join(node_id(int(k)) for k in ctx.split(','))} -> {node_id(int(nxt))}"
            for ctx, nxt in sorted(w.contexts.items())[:6]
        ]
        more = f" (+{len(w.contexts) - 6} more)" if len(w.contexts) > 6 else ""
        lines.append(f"  history grown where one key is ambiguous: {'; '.join(shown)}{more}")
    return "\n".join(lines)


def _depths(w: Workflow) -> dict[int, int]:
    """Layer of each state: its breadth-first distance from START over forward edges (loops' back edges
    ignored); states reached only through a loop go below the rest, END at the bottom."""
    depth = {START: 0}
    frontier = [START]
    seen = {START}
    while frontier:
        nxt = []
        for a in frontier:
            for e in w.successors(a):
                if e.kind == "loop" or e.target in seen:
                    continue
                depth[e.target] = depth[a] + 1
                seen.add(e.target)
                nxt.append(e.target)
        frontier = nxt
    depth.pop(END, None)
    for k in w.nodes:
        depth.setdefault(k, max(depth.values()) + 1)
    depth[END] = max(depth.values()) + 1
    return depth


def render_dot(w: Workflow) -> str:
    out = [f'digraph "{w.name}" {{', "  rankdir=TB; node [shape=box, fontsize=10];"]
    out.append('  START [shape=circle, label="start"]; END [shape=doublecircle, label="end"];')
    for k in sorted(w.nodes):
        label = f"{node_id(k)}\\n{_short(w.templates.get(k, ''), 50)}".replace('"', '\\"')
        out.append(f'  {node_id(k)} [label="{label}"];')
    style = {"loop": "dashed", "concurrent": "bold", "branch": "solid", "sequential": "solid"}
    for e in w.edges:
        out.append(
            f'  {node_id(e.source)} -> {node_id(e.target)} [label="{e.count}", style={style[e.kind]}];'
        )
    out.append("}")
    return "\n".join(out) + "\n"
