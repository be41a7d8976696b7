"""workflow_picture: a workflow's stored layout (and optionally one anomaly) -> a self-contained SVG.

Contract: `render_svg(w, *, overlay=None, min_share=0.0) -> str` draws `workflow_layout.layout(w)`: boxes,
edges with arrowheads and their labels, the side states flagged; edges carrying less than `min_share` of
their source's transitions are hidden (a caption counts them) unless the overlay needs them. With an
`Overlay` (`Overlay.from_anomaly(source)`, from an anomaly document read back from the cluster, validated)
the session's path is highlighted, the diverged state marked, the expected next steps drawn green and the
step taken red (a key outside the workflow in the layout's `outside` slot). Every text drawn is escaped.
The Kibana Vega graph (`deeplog-vis-workflow-graph`) draws the same layout with the same marks.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import DataError
from .workflow import Workflow
from .workflow_layout import Box, EdgeShape, Layout, arrow_path, layout

KIND_COLOURS = {"sequential": "#54637a", "branch": "#3b7dd8", "concurrent": "#2e9d5b", "loop": "#d3872a"}
PATH_COLOUR, EXPECTED_COLOUR, TAKEN_COLOUR, SIDE_COLOUR = "#7b3fb5", "#1a9850", "#d73027", "#e08a00"
_NODE = re.compile(r"START|END|K\d{1,9}")


@dataclass(frozen=True)
class Overlay:
    """One anomaly on its workflow: the states it visited, where it diverged, what was expected and taken."""

    workflow: str
    model_version: str
    path: list[str] = field(default_factory=list)
    diverged_at: str | None = None
    expected: list[str] = field(default_factory=list)
    taken: str | None = None
    summary: str = ""

    @classmethod
    def from_anomaly(cls, source: Any) -> Overlay:
        """From an anomaly document's `_source` (untrusted): `deeplog.workflow` must name a workflow and
        its states as K<key id>, START or END; the step taken is the anomaly's key (END for a session end)."""
        dl = source.get("deeplog") if isinstance(source, Mapping) else None
        wf = dl.get("workflow") if isinstance(dl, Mapping) else None
        if not isinstance(wf, Mapping) or not wf.get("name"):
            reason = wf.get("reason") if isinstance(wf, Mapping) else None
            raise DataError(
                "anomaly: no workflow diagnosis to draw"
                + (f" (reason: {str(reason)[:80]})" if reason else " (deeplog.workflow.name missing)")
            )

        def state(v: Any, what: str) -> str:
            if not isinstance(v, str) or not _NODE.fullmatch(v):
                raise DataError(
                    f"anomaly: deeplog.workflow.{what} must be K<key id>, START or END, got {v!r:.80}"
                )
            return v

        def states(v: Any, what: str) -> list[str]:
            if v is None:
                return []
            if not isinstance(v, list) or len(v) > 1000:
                raise DataError(f"anomaly: deeplog.workflow.{what} must be a list of states")
            return [state(x, what) for x in v]

        name = wf["name"]
        if not isinstance(name, str) or len(name) > 200:
            raise DataError("anomaly: deeplog.workflow.name must be a short string")
        version = dl.get("model_version")
        if not isinstance(version, str) or not version:
            raise DataError("anomaly: deeplog.model_version missing")
        key = dl.get("key") if isinstance(dl.get("key"), Mapping) else {}
        if dl.get("anomaly_type") == "session_end":
            taken: str | None = "END"
        elif isinstance(key.get("id"), int) and not isinstance(key.get("id"), bool):
            taken = f"K{key['id']}"
        else:
            taken = None
        diverged = wf.get("diverged_at")
        summary = wf.get("summary")
        return cls(
            workflow=name,
            model_version=version,
            path=states(wf.get("path"), "path"),
            diverged_at=None if diverged is None else state(diverged, "diverged_at"),
            expected=states(wf.get("expected_next"), "expected_next"),
            taken=taken,
            summary=summary[:400] if isinstance(summary, str) else "",
        )

    def on_path(self, e: EdgeShape) -> bool:
        return any(a == e.source and b == e.target for a, b in zip(self.path, self.path[1:], strict=False))

    def expected_edge(self, e: EdgeShape) -> bool:
        return e.source == self.diverged_at and e.target in self.expected

    def taken_edge(self, e: EdgeShape) -> bool:
        return e.source == self.diverged_at and e.target == self.taken


def taken_step(src: Box, dst: Box) -> tuple[str, str, float, float]:
    """(path, arrowhead, label x, label y) of a step the workflow lacks: a straight dashed line between the
    two boxes' centres, or a loop on the box's left side when the step repeats the state (the right side
    holds the workflow's own self-loop). The Vega graph draws the same shapes."""
    if src.id == dst.id:
        p0, p1 = (src.x, src.y + src.h * 0.3), (src.x, src.y + src.h * 0.75)
        c1, c2 = (src.x - 34, src.y - 12), (src.x - 34, src.y + src.h + 12)
        path = f"M{p0[0]:.1f},{p0[1]:.1f} C{c1[0]:.1f},{c1[1]:.1f} {c2[0]:.1f},{c2[1]:.1f} {p1[0]:.1f},{p1[1]:.1f}"
        return path, arrow_path(p1, c2), src.x - 90, src.y - 4
    x1, y1 = src.x + src.w / 2, src.y + src.h / 2
    x2, y2 = dst.x + dst.w / 2, dst.y + dst.h / 2
    return (
        f"M{x1:.1f},{y1:.1f} L{x2:.1f},{y2:.1f}",
        arrow_path((x2, y2), (x1, y1)),
        (x1 + x2) / 2 + 4,
        (y1 + y2) / 2 - 4,
    )


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _box_svg(b: Box, *, fill: str, stroke: str, width: float = 1.0, dash: str = "") -> list[str]:
    d = f' stroke-dasharray="{dash}"' if dash else ""
    return [
        f'<g class="node" data-id="{_esc(b.id)}"><title>{_esc(b.label)}</title>'
        f'<rect x="{b.x:.1f}" y="{b.y:.1f}" width="{b.w:.1f}" height="{b.h:.1f}" rx="6" fill="{fill}" '
        f'stroke="{stroke}" stroke-width="{width}"{d}/>'
        f'<text x="{b.x + 7:.1f}" y="{b.y + b.h / 2 + 3.5:.1f}">{_esc(b.label)}</text></g>'
    ]


def render_svg(
    w: Workflow, *, overlay: Overlay | None = None, min_share: float = 0.0, title: str | None = None
) -> str:
    """The workflow picture (see the module's contract); `title` replaces the workflow's name and title."""
    return render_layout_svg(
        layout(w), title=title or f"workflow {w.name}: {w.title}", overlay=overlay, min_share=min_share
    )


def render_layout_svg(
    lay: Layout, *, title: str, overlay: Overlay | None = None, min_share: float = 0.0
) -> str:
    """A stored or computed layout drawn as SVG."""
    o = overlay
    extra = 56 if o else 36
    el = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{lay.width:.0f}" height="{lay.height + extra:.0f}" '
        f'font-family="sans-serif" font-size="10">',
        f"<title>{_esc(title)}</title>",
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="8" y="14" font-size="12" font-weight="bold">{_esc(title)}</text>',
    ]
    shown, hidden = [], 0
    for e in lay.edges:
        special = o is not None and (o.on_path(e) or o.expected_edge(e) or o.taken_edge(e))
        if e.probability < min_share and not special:
            hidden += 1
            continue
        shown.append(e)
    boxes = {b.id: b for b in lay.nodes}
    for e in shown:
        colour, width, dash, opacity = KIND_COLOURS[e.kind], e.width, "", 0.85
        cls = "edge"
        if o is not None:
            opacity = 0.35
            if o.on_path(e):
                colour, width, opacity, cls = PATH_COLOUR, e.width + 2, 0.95, "edge path"
            if o.expected_edge(e):
                colour, width, dash, opacity, cls = EXPECTED_COLOUR, 3.5, "7,3", 1.0, "edge expected"
            if o.taken_edge(e):
                colour, width, opacity, cls = TAKEN_COLOUR, 3.5, 1.0, "edge taken"
        if e.kind == "loop" and not dash:
            dash = "5,3"
        d = f' stroke-dasharray="{dash}"' if dash else ""
        el.append(
            f'<g class="{cls}" data-source="{_esc(e.source)}" data-target="{_esc(e.target)}" opacity="{opacity}">'
            f"<title>{_esc(e.source)} -&gt; {_esc(e.target)}: {e.count:,} ({e.probability:.1%}), {_esc(e.kind)}</title>"
            f'<path d="{_esc(e.path)}" fill="none" stroke="{colour}" stroke-width="{width:.2f}"{d}/>'
            f'<path d="{_esc(e.arrow)}" fill="{colour}" stroke="none"/>'
            f'<text x="{e.lx:.1f}" y="{e.ly:.1f}" fill="#333">{_esc(e.label)}</text></g>'
        )
    taken_box = None
    if o is not None and o.taken is not None and o.diverged_at in boxes:
        taken_box = boxes.get(o.taken)
        if taken_box is None:
            ob = lay.outside
            taken_box = Box(ob.id, ob.x, ob.y, ob.w, ob.h, f"{o.taken} (a key of no workflow)")
        src = boxes[o.diverged_at]
        if not any(o.taken_edge(e) for e in shown):
            path, arrow, lx, ly = taken_step(src, taken_box)
            el.append(
                f'<g class="taken"><path d="{path}" fill="none" stroke="{TAKEN_COLOUR}" stroke-width="3" '
                f'stroke-dasharray="8,4"/><path d="{arrow}" fill="{TAKEN_COLOUR}"/>'
                f'<text x="{lx:.1f}" y="{ly:.1f}" fill="{TAKEN_COLOUR}" font-weight="bold">step taken</text></g>'
            )
    if lay.side_caption:
        x, y = lay.side_caption
        el.append(
            f'<text x="{x:.1f}" y="{y:.1f}" fill="{SIDE_COLOUR}">not reached from start (side states)</text>'
        )
    for b in lay.nodes:
        fill, stroke, width, dash = "#eef", "#336", 1.0, ""
        if b.side:
            fill, stroke, dash = "#fff4e0", SIDE_COLOUR, "4,2"
        if o is not None:
            if b.id in o.path:
                fill = "#e6dcf5"
            if b.id in o.expected:
                stroke, width = EXPECTED_COLOUR, 2.5
            if b.id == o.taken:
                stroke, width, dash = TAKEN_COLOUR, 2.5, "6,3"
            if b.id == o.diverged_at:
                stroke, width = TAKEN_COLOUR, 3.5
        el += _box_svg(b, fill=fill, stroke=stroke, width=width, dash=dash)
        if o is not None and b.id == o.diverged_at:
            el.append(
                f'<text class="diverged" x="{b.x:.1f}" y="{b.y - 4:.1f}" fill="{TAKEN_COLOUR}" '
                f'font-weight="bold">diverged here</text>'
            )
    if taken_box is not None and taken_box.id == "?":
        el += _box_svg(taken_box, fill="#fde0dd", stroke=TAKEN_COLOUR, width=2.5, dash="6,3")
    y = lay.height + 14
    notes = []
    if hidden:
        notes.append(f"{hidden} rare edges hidden (share < {min_share:.0%})")
    notes.append("labels: count or share of the source's steps, then the median time gap; dashed: loop")
    el.append(f'<text x="8" y="{y:.0f}" fill="#555">{_esc("; ".join(notes))}</text>')
    if o is not None:
        legend = [
            (PATH_COLOUR, "session path"),
            (TAKEN_COLOUR, "diverged / step taken"),
            (EXPECTED_COLOUR, "expected next"),
        ]
        x = 8.0
        for colour, text in legend:
            el.append(f'<rect x="{x:.0f}" y="{y + 8:.0f}" width="14" height="6" fill="{colour}"/>')
            el.append(f'<text x="{x + 18:.0f}" y="{y + 15:.0f}">{_esc(text)}</text>')
            x += 30 + len(text) * 6
        el.append(f'<text x="{x + 10:.0f}" y="{y + 15:.0f}" fill="#333">{_esc(o.summary[:160])}</text>')
    el.append("</svg>")
    return "\n".join(el) + "\n"
