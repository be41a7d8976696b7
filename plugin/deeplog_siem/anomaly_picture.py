"""anomaly_picture: one anomaly document id -> the SVG of its workflow with the anomaly drawn on it.

Contract: `anomaly_picture(clients, config, anomaly_id, *, min_share=0.0) -> (title, svg)` reads the
anomaly from `output.anomalies_index`, then the workflow its diagnosis names in the anomaly's own model
version: from that version's directory under `model.dir` when it is there, else from the workflow document
(`<model version>:<name>`) in `output.workflows_index`. Both the anomaly and the workflow document are
untrusted (`workflow_picture.Overlay.from_anomaly`, `Workflow.from_dict` under `ArtifactError`). A missing
anomaly, an anomaly without a workflow diagnosis, or a workflow found nowhere is a `DeeplogError` that says
which.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Config
from .errors import ArtifactError, DeeplogError
from .workflow import WORKFLOWS_FILE, Workflow, WorkflowModel
from .workflow_picture import Overlay, render_svg

if TYPE_CHECKING:
    from .es import Clients

log = logging.getLogger(__name__)


def _from_model_dir(config: Config, version: str, name: str) -> Workflow | None:
    d = Path(config.model.dir) / version
    if version.startswith(".") or "/" in version or not (d / WORKFLOWS_FILE).is_file():
        return None
    return WorkflowModel.load(d).get(name)


def _from_index(clients: Clients, config: Config, version: str, name: str) -> Workflow | None:
    index = config.output.workflows_index
    hits = clients.es.search(
        index=f"{index}*", query={"ids": {"values": [f"{version}:{name}"]}}, size=1, ignore_unavailable=True
    )["hits"]["hits"]
    if not hits:
        return None
    graph: Any = ((hits[0].get("_source") or {}).get("deeplog") or {}).get("workflow", {}).get("graph")
    try:
        return Workflow.from_dict(graph)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise ArtifactError(
            f"workflow document {version}:{name} in {index}: malformed graph ({type(e).__name__}: {e})"
        ) from None


def anomaly_picture(
    clients: Clients, config: Config, anomaly_id: str, *, min_share: float = 0.0
) -> tuple[str, str]:
    """(a one-line description, the SVG) of anomaly `anomaly_id` on its workflow."""
    index = config.output.anomalies_index
    hits = clients.es.search(index=index, query={"ids": {"values": [anomaly_id]}}, size=1)["hits"]["hits"]
    if not hits:
        raise DeeplogError(f"no anomaly document with id {anomaly_id!r} in {index}")
    overlay = Overlay.from_anomaly(hits[0].get("_source"))
    version, name = overlay.model_version, overlay.workflow
    w = _from_model_dir(config, version, name)
    if w is None:
        log.debug(
            "workflow %s of model version %s: not in %s, reading the workflows index",
            name,
            version,
            config.model.dir,
        )
        w = _from_index(clients, config, version, name)
    if w is None:
        raise DeeplogError(
            f"anomaly {anomaly_id}: workflow {name!r} of model version {version} is neither in "
            f"{config.model.dir} nor in {config.output.workflows_index} (run `deeplog-siem setup` where the "
            "model version is to publish its workflows)"
        )
    title = f"anomaly {anomaly_id} on workflow {name} of model version {version}"
    return title, render_svg(w, overlay=overlay, min_share=min_share, title=f"{title}: {w.title}")
