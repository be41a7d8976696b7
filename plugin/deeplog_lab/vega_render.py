"""vega_render: the shipped Kibana workflow graph rendered headless with the real Vega engine.

Contract: `graph_spec(cfg)` is the `deeplog-vis-workflow-graph` spec as `setup` imports it for `cfg`;
`kibana_responses(clients, spec, must=None)` runs each of its data sources' queries on the cluster as Kibana
would on a dashboard without filters (or with the one query `must` standing for the analyst's filter) and
returns data source name -> hits; `render_vega(spec, values, signals=None)` runs `tests/vega/render.mjs` with node (npm
`vega` installed there by `make install`) and returns its JSON: errors, warnings, the marks' items
(bounds, colours, data) and the SVG. `engine_missing()` says why the engine cannot run, or None.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from deeplog_siem.config import Config
from deeplog_siem.errors import DeeplogError
from deeplog_siem.es import Clients
from deeplog_siem.kibana import saved_objects

ENGINE_DIR = Path(__file__).resolve().parents[2] / "tests" / "vega"
GRAPH_ID = "deeplog-vis-workflow-graph"
_MUST, _FILTER, _MUST_NOT = (f"%dashboard_context-{c}_clause%" for c in ("must", "filter", "must_not"))


def engine_missing() -> str | None:
    """Why the Vega engine cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed (the Vega engine runs on node)"
    if not (ENGINE_DIR / "node_modules" / "vega" / "package.json").is_file():
        return f"npm package vega is not installed in {ENGINE_DIR}: run `make install` (or `npm ci` there)"
    return None


def graph_spec(cfg: Config) -> dict[str, Any]:
    (graph,) = [o for o in saved_objects(cfg) if o["id"] == GRAPH_ID]
    return json.loads(json.loads(graph["attributes"]["visState"])["params"]["spec"])


def _resolve(body: Any, must: dict[str, Any]) -> Any:
    """Kibana's substitution of the dashboard context: its query for the must clause, everything for the
    filter clause, nothing for the must-not clause, and all time for a `%timefilter%` range."""
    if isinstance(body, list):
        out = []
        for item in body:
            if item == _MUST:
                out.append(must)
            elif item == _FILTER:
                out.append({"match_all": {}})
            elif item == _MUST_NOT:
                continue
            elif (
                isinstance(item, dict)
                and "range" in item
                and any(isinstance(v, dict) and v.get("%timefilter%") for v in item["range"].values())
            ):
                out.append({"match_all": {}})
            else:
                out.append(_resolve(item, must))
        return out
    if isinstance(body, dict):
        return {k: _resolve(v, must) for k, v in body.items()}
    return body


def kibana_responses(
    clients: Clients, spec: dict[str, Any], must: dict[str, Any] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Data source name -> the hits the cluster returns to its query (`format.property: hits.hits`)."""
    out = {}
    for d in spec["data"]:
        url = d.get("url")
        if not isinstance(url, dict):
            continue
        body = _resolve(copy.deepcopy(url["body"]), must or {"match_all": {}})
        out[d["name"]] = clients.es.search(index=url["index"], body=body)["hits"]["hits"]
    return out


def render_vega(
    spec: dict[str, Any], values: dict[str, Any], signals: dict[str, Any] | None = None
) -> dict[str, Any]:
    """`signals`: values set before the view runs (a control the analyst moved)."""
    why = engine_missing()
    if why:
        raise DeeplogError(f"Vega engine: {why}")
    proc = subprocess.run(
        ["node", str(ENGINE_DIR / "render.mjs")],
        input=json.dumps({"spec": spec, "values": values, "signals": signals or {}}),
        capture_output=True,
        text=True,
        cwd=ENGINE_DIR,
        check=False,
    )
    if proc.returncode != 0:
        raise DeeplogError(f"Vega engine failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout)
