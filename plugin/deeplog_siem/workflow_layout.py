"""workflow_layout: a workflow automaton -> the geometry of its picture, shared by every rendering.

Contract: `layout(w) -> Layout`, computed once in Python and stored in the workflow document
(`deeplog.workflow.layout`), so the command line's SVG and the Kibana Vega graph draw the same picture.
- States reachable from START sit in rows by their breadth-first distance (self-loops ignored), each row
  ordered by its predecessors' positions to keep crossings few; END is the last row. States START never
  reaches sit apart in a side column (`side: true`), under a caption that says so.
- Every edge is an SVG path with an arrowhead (a closed triangle path) at its target: forward edges run
  from a box's bottom to a lower box's top, edges to a row above (or the same row) bow out to the left, a
  self-loop is a loop on the box's right side; A -> B and B -> A never share a line.
- Each edge has a label at a point of its curve that no state box covers: the count, or its share of the
  source's transitions when the workflow has more than `CROWDED_EDGES` edges, plus the median time gap
  when there is one.
- `Layout.outside`: the slot for a key outside the workflow (an anomaly's step to a key the workflow lacks).
- `Layout.to_dict()`: the stored form. Nothing reads it back in Python: the command line computes the layout
  afresh from the workflow (a document read from the cluster is not trusted to carry drawing commands).
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from dataclasses import asdict, dataclass
from typing import Any

from .workflow import END, START, Edge, Workflow, node_id

CROWDED_EDGES = 12  # more edges than this: labels show shares (short) instead of raw counts
BOX_H = 28.0
ROW_GAP = 64.0  # vertical room between rows for edges and their labels
COL_GAP = 84.0  # horizontal room between boxes: a self-loop and its label fit in it
MARGIN = 90.0  # left margin: edges to a row above bow out into it
CHAR_W = 6.0  # estimated width of one character at the label font size (10 px sans-serif)
LABEL_H = 11.0
MAX_LABEL = 38  # characters of a state's template shown in its box
ARROW = 8.0


@dataclass(frozen=True)
class Box:
    id: str
    x: float  # top-left corner
    y: float
    w: float
    h: float
    label: str
    side: bool = False  # not reachable from START

    def overlaps(self, o: Box | tuple[float, float, float, float], pad: float = 0.0) -> bool:
        x, y, w, h = (o.x, o.y, o.w, o.h) if isinstance(o, Box) else o
        return not (
            self.x + self.w + pad <= x
            or x + w + pad <= self.x
            or self.y + self.h + pad <= y
            or y + h + pad <= self.y
        )


@dataclass(frozen=True)
class EdgeShape:
    source: str
    target: str
    kind: str
    count: int
    probability: float
    median_gap_s: float | None
    path: str  # SVG path data
    arrow: str  # closed triangle at the target
    label: str
    lx: float  # label anchor (left, baseline)
    ly: float
    width: float  # stroke width, by count


@dataclass(frozen=True)
class Layout:
    width: float
    height: float
    nodes: list[Box]
    edges: list[EdgeShape]
    outside: Box  # where a key outside the workflow is drawn
    side_caption: tuple[float, float] | None  # where the side column's caption goes

    def to_dict(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "nodes": [asdict(b) for b in self.nodes],
            "edges": [asdict(e) for e in self.edges],
            "outside": asdict(self.outside),
            "side_caption": list(self.side_caption) if self.side_caption else None,
        }


# ------------------------------------------------------------------------------------------ placement


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _label(w: Workflow, k: int) -> str:
    if k in (START, END):
        return {START: "start", END: "end"}[k]
    return f"{node_id(k)} {_short(w.templates.get(k, ''), MAX_LABEL)}".strip()


def _box_width(label: str) -> float:
    return max(48.0, len(label) * CHAR_W + 14)


def _rows(w: Workflow) -> tuple[list[list[int]], list[list[int]]]:
    """(main rows from START, END last; side rows of the states START never reaches)."""
    succ: dict[int, list[int]] = defaultdict(list)
    for e in w.edges:
        if e.source != e.target and e.target != END:
            succ[e.source].append(e.target)
    depth = {START: 0}
    queue = deque([START])
    while queue:
        a = queue.popleft()
        for b in succ[a]:
            if b not in depth:
                depth[b] = depth[a] + 1
                queue.append(b)
    rows: dict[int, list[int]] = defaultdict(list)
    for k, d in depth.items():
        rows[d].append(k)
    main = [rows[d] for d in sorted(rows)] + [[END]]
    rest = sorted(k for k in w.nodes if k not in depth)
    # Side states one per row, in breadth-first order from those no other side state leads to, so that a
    # side chain reads top to bottom.
    restset = set(rest)
    into = {b for a in rest for b in succ[a] if b in restset}
    order: list[int] = []
    for root in [k for k in rest if k not in into] + rest:
        if root in order:
            continue
        order.append(root)
        queue = deque([root])
        while queue:
            a = queue.popleft()
            for b in sorted(succ[a]):
                if b in restset and b not in order:
                    order.append(b)
                    queue.append(b)
    return main, [[k] for k in order]


def _order(rows: list[list[int]], w: Workflow) -> list[list[int]]:
    """Each row sorted by the mean position of its predecessors in the rows above (barycentre)."""
    preds: dict[int, list[int]] = defaultdict(list)
    for e in w.edges:
        if e.source != e.target:
            preds[e.target].append(e.source)
    pos: dict[int, float] = {}
    out = []
    for row in rows:

        def bary(k: int) -> tuple[float, int]:
            ps = [pos[p] for p in preds[k] if p in pos]
            return (sum(ps) / len(ps) if ps else 0.5, k)

        row = sorted(row, key=bary)
        for i, k in enumerate(row):
            pos[k] = (i + 1) / (len(row) + 1)
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------- edges


def _cubic(
    p0: tuple[float, float],
    c1: tuple[float, float],
    c2: tuple[float, float],
    p1: tuple[float, float],
    t: float,
) -> tuple[float, float]:
    u = 1 - t
    return (
        u**3 * p0[0] + 3 * u * u * t * c1[0] + 3 * u * t * t * c2[0] + t**3 * p1[0],
        u**3 * p0[1] + 3 * u * u * t * c1[1] + 3 * u * t * t * c2[1] + t**3 * p1[1],
    )


def arrow_path(tip: tuple[float, float], frm: tuple[float, float]) -> str:
    """A closed triangle pointing at `tip`, coming from the direction of `frm`."""
    dx, dy = tip[0] - frm[0], tip[1] - frm[1]
    n = math.hypot(dx, dy) or 1.0
    ux, uy = dx / n, dy / n
    bx, by = tip[0] - ux * ARROW, tip[1] - uy * ARROW
    px, py = -uy * ARROW / 2, ux * ARROW / 2
    return f"M{tip[0]:.1f},{tip[1]:.1f} L{bx + px:.1f},{by + py:.1f} L{bx - px:.1f},{by - py:.1f} Z"


def _edge_label(e: Edge, crowded: bool) -> str:
    text = f"{e.probability:.0%}" if crowded else f"{e.count:,}"
    if e.median_gap_s is not None:
        text += f" {e.median_gap_s:.2g}s"
    return text


def layout(w: Workflow) -> Layout:
    """The picture's geometry for workflow `w` (see the module's contract)."""
    main, side = _rows(w)
    main = _order(main, w)
    side = _order(side, w)
    boxes: dict[int, Box] = {}
    width_of = {k: _box_width(_label(w, k)) for row in main + side for k in row}

    def row_width(row: list[int]) -> float:
        return sum(width_of[k] for k in row) + COL_GAP * (len(row) - 1)

    main_w = max(row_width(r) for r in main)
    y0 = 24.0
    for i, row in enumerate(main):
        x = MARGIN + (main_w - row_width(row)) / 2
        for k in row:
            boxes[k] = Box(
                node_id(k), round(x, 1), y0 + i * (BOX_H + ROW_GAP), width_of[k], BOX_H, _label(w, k)
            )
            x += width_of[k] + COL_GAP
    right = MARGIN + main_w + COL_GAP
    end = boxes[END]
    outside = Box("?", end.x + end.w + 2 * COL_GAP, end.y, 200.0, BOX_H, "a key of no workflow")
    right = max(right, outside.x + outside.w + COL_GAP)
    caption = None
    if side:
        # Apart from the reachable chain, one row lower so a caption fits above it.
        caption = (right + MARGIN, y0 + 14)
        side_w = max(row_width(r) for r in side)
        for i, row in enumerate(side):
            x = right + MARGIN + (side_w - row_width(row)) / 2
            for k in row:
                boxes[k] = Box(
                    node_id(k),
                    round(x, 1),
                    y0 + (i + 1) * (BOX_H + ROW_GAP),
                    width_of[k],
                    BOX_H,
                    _label(w, k),
                    side=True,
                )
                x += width_of[k] + COL_GAP
        right += MARGIN + side_w + COL_GAP
    rows_n = max(len(main), len(side) + 1)
    height = y0 + rows_n * (BOX_H + ROW_GAP)
    width = right

    crowded = len(w.edges) > CROWDED_EDGES
    top = max((e.count for e in w.edges), default=1)
    # Ports: a box's outgoing forward edges leave its bottom, and incoming ones enter its top, spread by the
    # other end's position so lines do not meet in one point.
    out_ports: dict[int, list[Edge]] = defaultdict(list)
    in_ports: dict[int, list[Edge]] = defaultdict(list)
    back_ports: dict[int, list[Edge]] = defaultdict(list)
    shapes_geo: dict[tuple[int, int], tuple[tuple[float, float], ...]] = {}
    for e in w.edges:
        if e.source not in boxes or e.target not in boxes or e.source == e.target:
            continue
        s, t = boxes[e.source], boxes[e.target]
        if t.y > s.y:
            out_ports[e.source].append(e)
            in_ports[e.target].append(e)
        else:
            back_ports[e.source].append(e)
            back_ports[e.target].append(e)

    def spread(b: Box, i: int, n: int) -> float:
        return b.x + b.w * (i + 1) / (n + 1)

    for es in out_ports.values():
        es.sort(key=lambda e: boxes[e.target].x)
    for es in in_ports.values():
        es.sort(key=lambda e: boxes[e.source].x)
    for e in w.edges:
        if e.source not in boxes or e.target not in boxes:
            continue
        s, t = boxes[e.source], boxes[e.target]
        if e.source == e.target:
            p0, p1 = (s.x + s.w, s.y + s.h * 0.3), (s.x + s.w, s.y + s.h * 0.75)
            c1, c2 = (s.x + s.w + 34, s.y - 12), (s.x + s.w + 34, s.y + s.h + 12)
        elif t.y > s.y:
            outs, ins = out_ports[e.source], in_ports[e.target]
            p0 = (spread(s, outs.index(e), len(outs)), s.y + s.h)
            p1 = (spread(t, ins.index(e), len(ins)), t.y)
            dy = (p1[1] - p0[1]) / 2
            c1, c2 = (p0[0], p0[1] + dy), (p1[0], p1[1] - dy)
        else:
            # To a row above or the same one: from the source's left side to the target's, bowing out to the
            # left further the more rows it climbs, so it never runs along the forward edge back.
            bs, bt = back_ports[e.source], back_ports[e.target]
            p0 = (s.x, s.y + s.h * (bs.index(e) + 1) / (len(bs) + 1))
            p1 = (t.x, t.y + t.h * (bt.index(e) + 1) / (len(bt) + 1))
            rows_up = round((s.y - t.y) / (BOX_H + ROW_GAP))
            bow = 30 + 16 * rows_up
            c1, c2 = (p0[0] - bow, p0[1]), (p1[0] - bow, p1[1])
            if rows_up == 0:  # same row: rightwards over the boxes' tops, leftwards under their bottoms
                if t.x > s.x:
                    p0, p1 = (s.x + s.w * 0.6, s.y), (t.x + t.w * 0.4, t.y)
                    c1, c2 = (p0[0], p0[1] - 40), (p1[0], p1[1] - 40)
                else:
                    p0, p1 = (s.x + s.w * 0.4, s.y + s.h), (t.x + t.w * 0.6, t.y + t.h)
                    c1, c2 = (p0[0], p0[1] + 40), (p1[0], p1[1] + 40)
            if s.side and not t.side:  # from the side column: into the target's top, from above
                p1 = (t.x + t.w * 0.85, t.y)
                c1, c2 = (p0[0] - 60, p0[1]), (p1[0], p1[1] - 50)
        shapes_geo[(e.source, e.target)] = (p0, c1, c2, p1)

    placed: list[tuple[float, float, float, float]] = []
    shapes = []
    for e in w.edges:
        geo = shapes_geo.get((e.source, e.target))
        if geo is None:
            continue
        p0, c1, c2, p1 = geo
        text = _edge_label(e, crowded)
        tw = len(text) * CHAR_W
        best = None
        for t in (0.5, 0.4, 0.6, 0.3, 0.7, 0.2, 0.8):
            x, y = _cubic(p0, c1, c2, p1, t)
            if e.source == e.target:
                x, y = x + 3, y + 4
            else:
                x, y = x + 4, y + 4
            rect = (x, y - LABEL_H + 2, tw, LABEL_H)
            hit = any(b.overlaps(rect, 1) for b in boxes.values()) or any(_hit(rect, r) for r in placed)
            if best is None:
                best = (x, y, rect)
            if not hit:
                best = (x, y, rect)
                break
        assert best is not None
        placed.append(best[2])
        path = f"M{p0[0]:.1f},{p0[1]:.1f} C{c1[0]:.1f},{c1[1]:.1f} {c2[0]:.1f},{c2[1]:.1f} {p1[0]:.1f},{p1[1]:.1f}"
        shapes.append(
            EdgeShape(
                source=node_id(e.source),
                target=node_id(e.target),
                kind=e.kind,
                count=e.count,
                probability=e.probability,
                median_gap_s=e.median_gap_s,
                path=path,
                arrow=arrow_path(p1, _cubic(p0, c1, c2, p1, 0.9)),
                label=text,
                lx=round(best[0], 1),
                ly=round(best[1], 1),
                width=round(1 + 3 * math.log1p(e.count) / math.log1p(top), 2),
            )
        )
    return Layout(
        width=round(width, 1),
        height=round(height, 1),
        nodes=[boxes[k] for row in main + side for k in row],
        edges=shapes,
        outside=outside,
        side_caption=caption,
    )


def _hit(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return not (a[0] + a[2] <= b[0] or b[0] + b[2] <= a[0] or a[1] + a[3] <= b[1] or b[1] + b[3] <= a[1])
