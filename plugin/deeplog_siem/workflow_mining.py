"""workflow_mining: normal training key sessions -> workflow models (DeepLog section 4.3).

Contract: `mine_workflows(sequences, templates, times=None, predict=None, params) -> WorkflowModel`.

1. Task separation. Each session is cut where two consecutive events are more than `split_gap_s` apart (an
   idle instance between two requests), then keys are clustered by density: `p(a -> b)` is the share of a's
   occurrences with b within `distance` events in the same segment; a and b are density-connected when
   `min(p(a->b), p(b->a)) >= cooccur`, and a task is a connected component of that relation (its core
   keys). A key shared by several tasks (e.g. "VM Started" in create, start and migrate) is a member of
   every task whose core key nearly always has it nearby (`p(core -> key) >= cooccur`); a component made
   only of such shared keys is not a task of its own, and a component whose every key nearly always has a
   key of a bigger component nearby is one of that task's branches. Each segment is then projected onto
   the tasks whose core keys it holds (a shared key goes to the task whose core key is nearest): two
   tasks interleaved in one segment become two paths.
2. Automaton per task from the paths: states are keys, edges the observed transitions with counts and time
   gaps (median, p90). Edges carrying less than `min_edge_share` of their source's transitions, or seen
   fewer than `min_count` times, are noise and dropped (counted). With a key model (`predict`: histories ->
   next-key distributions), the model's prediction is asked for every step a -> b that is adjacent in its
   session: an edge is also dropped when the model never gives b `likely` probability after the
   histories that end in a (the model, trained on the same normal data, says it is not a normal step).
   A state with one outgoing edge has a sequential edge.
3. Divergence points (a state with several successors), as in the paper: a successor already on the path
   when the edge is first taken is a loop (back edge); two successors b, c with both b -> c and c -> b are
   a concurrent pair; the rest are branches. A branch point is ambiguous with a history of one key; the
   history is grown (up to `max_order` keys) and the contexts that make the next key `certain` are kept
   (`contexts`), so diagnosis can name the one expected step. The order of the tasks' paths within each
   session is the task-level workflow (`WorkflowModel.transitions`): a step into another task's keys is
   a new task starting.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from .errors import DataError
from .vocab import PAD
from .workflow import END, START, Edge, Workflow, WorkflowModel

log = logging.getLogger(__name__)

# histories (each up to h keys, oldest first) -> next-key distributions [N, V]
Predictor = Callable[[Sequence[Sequence[int]]], torch.Tensor]


@dataclass(frozen=True)
class MiningParams:
    distance: int = 8  # d: co-occurrence window, in events
    cooccur: float = 0.9  # density threshold on p(a -> b)
    split_gap_s: float = 30.0  # a longer idle gap inside a session ends a task (<= 0: never split)
    min_count: int = 2  # keys and edges seen fewer times are noise
    min_edge_share: float = 0.02  # an edge must carry this share of its source's transitions
    likely: float = 0.02  # key-model probability below which a step is not a normal one
    certain: float = 0.9  # share of a grown history's next steps that makes the step certain
    max_order: int = 3  # longest history grown to resolve an ambiguous branch
    max_predictions: int = 200_000  # distinct histories sent to the key model (bounded cost)


@dataclass
class _Path:
    keys: list[int]
    times: list[float] | None
    origin: list[int]  # index of each key in its session (for the model's history)
    session: int


def _segments(
    sequences: Sequence[Sequence[int]], times: Sequence[Sequence[float]] | None, gap: float
) -> list[_Path]:
    out = []
    for s, seq in enumerate(sequences):
        ts = list(times[s]) if times is not None else None
        if ts is not None and len(ts) != len(seq):
            raise DataError(f"workflow mining: session {s} has {len(seq)} keys but {len(ts)} timestamps")
        start = 0
        for i in range(1, len(seq) + 1):
            if i == len(seq) or (ts is not None and gap > 0 and ts[i] - ts[i - 1] > gap):
                if i > start:
                    out.append(
                        _Path(
                            list(seq[start:i]),
                            ts[start:i] if ts is not None else None,
                            list(range(start, i)),
                            s,
                        )
                    )
                start = i
    return out


def cooccurrence(segments: Sequence[Sequence[int]], distance: int) -> tuple[Counter, dict[int, Counter]]:
    """(occurrences per key, near[a][b] = occurrences of a with b within `distance` events)."""
    count: Counter[int] = Counter()
    near: dict[int, Counter] = defaultdict(Counter)
    for seg in segments:
        n = len(seg)
        for i, a in enumerate(seg):
            count[a] += 1
            around = set(seg[max(0, i - distance) : i]) | set(seg[i + 1 : min(n, i + distance + 1)])
            around.discard(a)
            near[a].update(around)
    return count, near


def cluster_keys(segments: Sequence[Sequence[int]], params: MiningParams) -> list[tuple[set[int], set[int]]]:
    """Tasks as (core keys, members), largest first: density-connected components plus shared keys."""
    count, near = cooccurrence(segments, params.distance)
    keys = sorted(k for k, c in count.items() if c >= params.min_count)
    parent = {k: k for k in keys}

    def find(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    def p(a: int, b: int) -> float:
        return near[a][b] / count[a]

    for a in keys:
        for b in near[a]:
            if b > a and b in parent and min(p(a, b), p(b, a)) >= params.cooccur:
                parent[find(a)] = find(b)
    comps: dict[int, set[int]] = defaultdict(set)
    for k in keys:
        comps[find(k)].add(k)
    cores = list(comps.values())
    members = [
        set(c) | {k for c0 in c for k in near[c0] if k in parent and p(c0, k) >= params.cooccur}
        for c in cores
    ]
    # A component whose every key nearly always has a key of a larger component nearby is one of that
    # task's branches (an alternative path), not a task of its own: its keys become members there.
    merged: set[int] = set()
    by_size = sorted(range(len(cores)), key=lambda i: (len(cores[i]), min(cores[i])))
    for i in by_size:
        for j in reversed(by_size):
            if j == i or j in merged or len(cores[j]) < len(cores[i]):
                continue
            if all(max(p(k, c) for c in cores[j]) >= params.cooccur for k in cores[i]):
                members[j] |= members[i]
                merged.add(i)
                break
    cores = [c for i, c in enumerate(cores) if i not in merged]
    members = [m for i, m in enumerate(members) if i not in merged]
    keep = []
    for i, core in enumerate(cores):
        elsewhere = set().union(*(members[j] for j in range(len(cores)) if j != i and cores[j] - members[i]))
        # A component whose keys all belong to other tasks is a shared fragment, not a task.
        if not core <= elsewhere:
            keep.append((core, members[i]))
    keep.sort(key=lambda cm: (-sum(count[k] for k in cm[0]), min(cm[0])))
    return keep


def _quantile(values: Sequence[float], q: float) -> float:
    v = sorted(values)
    if not v:
        return float("nan")
    pos = q * (len(v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def _owners(keys: Sequence[int], tasks: Sequence[tuple[set[int], set[int]]]) -> list[set[int]]:
    """For each event of a segment, the tasks (indices into `tasks`) it is a step of: a core key belongs to
    its task; a shared key to the member task whose core key occurs nearest to it (ties: all of them), so a
    "VM Started" between a create and a start of one instance goes to the create it follows closely."""
    n = len(keys)
    core_pos: list[list[int]] = [[i for i, k in enumerate(keys) if k in core] for core, _ in tasks]
    out: list[set[int]] = []
    for i, k in enumerate(keys):
        own = {t for t, (core, _) in enumerate(tasks) if k in core}
        if not own:
            dist = {
                t: min((abs(i - j) for j in core_pos[t]), default=n + 1)
                for t, (_, members) in enumerate(tasks)
                if k in members
            }
            if dist:
                best = min(dist.values())
                own = {t for t, d in dist.items() if d == best}
        out.append(own)
    return out


def mine_workflows(
    sequences: Sequence[Sequence[int]],
    templates: Mapping[int, str] | Sequence[str],
    *,
    times: Sequence[Sequence[float]] | None = None,
    predict: Predictor | None = None,
    window: int = 10,
    params: MiningParams | None = None,
) -> WorkflowModel:
    """Workflows of the normal sessions `sequences` (key ids; `times` in seconds aligned with them)."""
    params = params or MiningParams()
    tmpl = (
        (lambda k: templates.get(k, f"K{k}"))
        if isinstance(templates, Mapping)
        else (lambda k: templates[k] if 0 <= k < len(templates) else f"K{k}")
    )
    segments = _segments(sequences, times, params.split_gap_s)
    tasks = cluster_keys([s.keys for s in segments], params)
    log.info("workflow mining: %s segments, %s tasks", len(segments), len(tasks))

    # Project every segment onto the tasks whose core keys it holds; a shared key goes to the nearest one.
    paths: list[list[_Path]] = [[] for _ in tasks]
    order: dict[int, list[tuple[int, int]]] = defaultdict(list)  # session -> (first origin, task)
    for seg in segments:
        present = set(seg.keys)
        here = [t for t, (core, _) in enumerate(tasks) if core & present]
        owner = _owners(seg.keys, [tasks[t] for t in here])
        for j, t in enumerate(here):
            idx = [i for i, o in enumerate(owner) if j in o]
            if idx:
                paths[t].append(
                    _Path(
                        [seg.keys[i] for i in idx],
                        [seg.times[i] for i in idx] if seg.times is not None else None,
                        [seg.origin[i] for i in idx],
                        seg.session,
                    )
                )
                order[seg.session].append((seg.origin[idx[0]], t))

    # The key model's view of each observed step: p(next | the session's last `window` keys).
    support: dict[tuple[int, int], float] = {}
    if predict is not None:
        support = _model_support(sequences, paths, predict, window, params)

    workflows = [
        _automaton(f"w{t + 1}", core, paths[t], tmpl, support, params) for t, (core, _) in enumerate(tasks)
    ]
    transitions: Counter[tuple[str, str]] = Counter()
    for _s, seq in order.items():
        names = [workflows[t].name for _, t in sorted(seq)]
        for a, b in zip(["START", *names], [*names, "END"], strict=True):
            transitions[(a, b)] += 1
    return WorkflowModel(
        workflows=workflows,
        transitions={f"{a}>{b}": c for (a, b), c in sorted(transitions.items())},
        params=params.__dict__.copy(),
        sessions=len(sequences),
        key_model=predict is not None,
    )


def _model_support(
    sequences: Sequence[Sequence[int]],
    paths: list[list[_Path]],
    predict: Predictor,
    window: int,
    params: MiningParams,
) -> dict[tuple[int, int], float]:
    """Max probability the model gave b after a over the steps a -> b adjacent in a session."""
    steps: dict[tuple[int, ...], set[int]] = defaultdict(set)
    for per_task in paths:
        for p in per_task:
            for j in range(len(p.keys) - 1):
                i = p.origin[j]
                if p.origin[j + 1] != i + 1:
                    continue  # interleaved with another task: the model saw other keys in between
                hist = tuple(sequences[p.session][max(0, i + 1 - window) : i + 1])
                steps[hist].add(p.keys[j + 1])
    hists = list(steps)[: params.max_predictions]
    support: dict[tuple[int, int], float] = {}
    for lo in range(0, len(hists), 4096):
        batch = hists[lo : lo + 4096]
        probs = predict(batch)  # [B, V]
        for h, row in zip(batch, probs, strict=True):
            a = h[-1]
            for nxt in steps[h]:
                pr = float(row[nxt]) if nxt < row.shape[0] else 0.0
                support[(a, nxt)] = max(support.get((a, nxt), 0.0), pr)
    return support


def _automaton(
    name: str,
    core: set[int],
    paths: list[_Path],
    tmpl: Callable[[int], str],
    support: dict[tuple[int, int], float],
    params: MiningParams,
) -> Workflow:
    nodes: Counter[int] = Counter()
    trans: Counter[tuple[int, int]] = Counter()
    gaps: dict[tuple[int, int], list[float]] = defaultdict(list)
    # Per path, the first time a -> b is taken: was b already on the path? (a back edge: a loop)
    revisit: Counter[tuple[int, int]] = Counter()
    on_paths: Counter[tuple[int, int]] = Counter()
    contexts: dict[tuple[int, ...], Counter] = defaultdict(Counter)
    for p in paths:
        seen: set[int] = set()
        taken: set[tuple[int, int]] = set()
        ks = [START, *p.keys, END]
        for j in range(1, len(ks)):
            a, b = ks[j - 1], ks[j]
            if b != END:
                nodes[b] += 1
            trans[(a, b)] += 1
            if (a, b) not in taken:
                taken.add((a, b))
                on_paths[(a, b)] += 1
                revisit[(a, b)] += b in seen
            if b != END:
                seen.add(b)
            if p.times is not None and a != START and b != END:
                gaps[(a, b)].append(max(0.0, p.times[j - 1] - p.times[j - 2]))
            for order in range(2, params.max_order + 1):
                if j - order >= 0:
                    contexts[tuple(ks[j - order : j])][b] += 1
    out_total: Counter[int] = Counter()
    for (a, _b), c in trans.items():
        out_total[a] += c
    edges: dict[tuple[int, int], Edge] = {}
    dropped = 0
    for (a, b), c in trans.items():
        share = c / out_total[a]
        modelled = (a, b) in support
        if (
            c < params.min_count
            or share < params.min_edge_share
            or (modelled and support[(a, b)] < params.likely)
        ):
            dropped += c
            continue
        g = gaps.get((a, b), [])
        edges[(a, b)] = Edge(
            source=a,
            target=b,
            count=c,
            probability=round(share, 6),
            kind="sequential",
            median_gap_s=round(_quantile(g, 0.5), 6) if g else None,
            p90_gap_s=round(_quantile(g, 0.9), 6) if g else None,
            model_probability=round(support[(a, b)], 6) if modelled else None,
        )
    # Divergence points: loops, concurrent pairs, branches.
    succ: dict[int, list[int]] = defaultdict(list)
    for a, b in edges:
        if b != END:
            succ[a].append(b)
    concurrent: set[tuple[int, int]] = set()
    for a, bs in succ.items():
        if len(bs) < 2:
            continue
        fwd = [b for b in bs if revisit[(a, b)] * 2 < on_paths[(a, b)]]
        for i, b in enumerate(fwd):
            for c in fwd[i + 1 :]:
                if (b, c) in edges and (c, b) in edges:
                    concurrent.add((min(b, c), max(b, c)))
    forks = {(a, b) for a, bs in succ.items() for pair in concurrent if set(pair) <= set(bs) for b in pair}
    for (a, b), e in edges.items():
        degree = len(succ.get(a, [])) + ((a, END) in edges)
        if b != END and revisit[(a, b)] * 2 >= on_paths[(a, b)]:
            e.kind = "loop"
        elif (min(a, b), max(a, b)) in concurrent or (a, b) in forks:
            e.kind = "concurrent"
        elif degree >= 2:
            e.kind = "branch"
    # Ambiguous branch points resolved by a longer history: contexts whose next step is certain.
    resolved: dict[str, str] = {}
    for ctx, nxt in contexts.items():
        a = ctx[-1]
        if a == START or len(succ.get(a, [])) + ((a, END) in edges) < 2:
            continue
        total = sum(nxt.values())
        b, c = nxt.most_common(1)[0]
        if total >= params.min_count and c / total >= params.certain and (a, b) in edges:
            resolved[",".join(map(str, ctx))] = str(b)
    keys = sorted(k for k in nodes if any(k in (e.source, e.target) for e in edges.values()))
    return Workflow(
        name=name,
        core=sorted(core),
        nodes={k: nodes[k] for k in keys},
        templates={k: tmpl(k) for k in keys},
        edges=sorted(edges.values(), key=lambda e: (e.source, e.target)),
        sessions=len(paths),
        concurrent=sorted([list(p) for p in concurrent]),
        contexts=resolved,
        dropped_transitions=dropped,
    )


def model_predictor(model, device: str | torch.device = "cpu") -> Predictor:
    """A `Predictor` from a trained `KeyLSTM`: histories left-padded with PAD to its window."""
    h = model.args.window
    dev = torch.device(device)
    model = model.to(dev).eval()

    @torch.no_grad()
    def predict(histories: Sequence[Sequence[int]]) -> torch.Tensor:
        x = torch.full((len(histories), h), PAD, dtype=torch.long)  # [B, h]
        for i, hist in enumerate(histories):
            hist = list(hist)[-h:]
            if hist:
                x[i, h - len(hist) :] = torch.tensor(hist, dtype=torch.long)
        logits, _ = model(x.to(dev))  # [B, V]
        return torch.softmax(logits.float(), dim=1).cpu()

    return predict
