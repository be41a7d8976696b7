"""workflow_pictures: real HDFS anomalies drawn on their workflows, by the command line and by Kibana's graph.

Contract: `draw_hdfs_anomalies(out, *, count=2, train_sessions=600, seed=21, progress)` starts the embedded
server, replays real HDFS training sessions (the shared sample) as raw lines, trains (the job's `train`,
which also writes the workflow documents), replays abnormal test sessions and runs detection; then, for
`count` anomalies with a workflow diagnosis that diverged at different states, writes to `out`
`anomaly-<n>-cli.svg` (what `deeplog-siem workflow show --anomaly ID` draws) and `anomaly-<n>-vega.svg`
(the shipped `deeplog-vis-workflow-graph` rendered by the real Vega engine on the cluster's answers with
that anomaly filtered), and a PNG of each where `rsvg-convert` is installed. Returns what it drew.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from deeplog_siem.anomaly_picture import anomaly_picture
from deeplog_siem.atomic import write_text
from deeplog_siem.config import ElasticsearchConfig, parse_config
from deeplog_siem.errors import DeeplogError
from deeplog_siem.es import connect

from .replay import EPOCH, index_lines, load_sample, render
from .server import start_embedded
from .vega_render import graph_spec, kibana_responses, render_vega


def _quiet(_: str) -> None:
    pass


def draw_hdfs_anomalies(
    out: str | Path,
    *,
    count: int = 2,
    train_sessions: int = 600,
    seed: int = 21,
    progress: Callable[[str], None] = _quiet,
) -> list[dict[str, Any]]:
    from deeplog_siem.runner import run_once, train
    from deeplog_siem.setup_assets import create_indices

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    server = start_embedded()
    work = Path(tempfile.mkdtemp(prefix="deeplog-pictures-"))
    try:
        es = {"hosts": [server.url], "request_timeout": 60}
        cfg = parse_config(
            {
                "elasticsearch": es,
                "source": {"index": "hdfs-logs", "session_regex": r"(blk_-?\d+)", "query_delay_seconds": 0},
                "model": {"dir": str(work / "models"), "epochs": 6, "hidden": 32, "threads": 1},
                "output": {
                    "anomalies_index": "deeplog-anomalies",
                    "runs_index": "deeplog-runs",
                    "workflows_index": "deeplog-workflows",
                    "state_index": "deeplog-state",
                },
            }
        )
        clients = connect(ElasticsearchConfig(**{**es, "hosts": tuple(es["hosts"])}))
        try:
            sample = load_sample()
            create_indices(clients, cfg)
            progress(f"replaying {train_sessions} real HDFS training sessions and training ...")
            index_lines(clients, "hdfs-train", render(sample.train[:train_sessions], seed=seed), run="train")
            train(cfg, clients, index="hdfs-train")
            progress("replaying abnormal sessions and detecting ...")
            index_lines(
                clients,
                cfg.source.index,
                render(sample.test[:200], seed=seed + 1, start=EPOCH + timedelta(days=1)),
            )
            run_once(cfg, clients, close_sessions=True)
            for index in (cfg.output.anomalies_index, cfg.output.workflows_index):
                clients.es.indices.refresh(index=index)
            hits = clients.es.search(
                index=cfg.output.anomalies_index,
                query={"exists": {"field": "deeplog.workflow.diverged_at"}},
                sort=[{"@timestamp": "asc"}],
                size=1000,
            )["hits"]["hits"]
            chosen: list[dict[str, Any]] = []
            # Divergences first (the key model flagged the step), then slow steps the workflow allows; each
            # at a different state.
            hits.sort(key=lambda h: h["_source"]["deeplog"]["anomaly_type"] == "parameter")
            for h in hits:
                wf = h["_source"]["deeplog"]["workflow"]
                if wf.get("expected_next") and all(
                    c["_source"]["deeplog"]["workflow"]["diverged_at"] != wf["diverged_at"] for c in chosen
                ):
                    chosen.append(h)
                if len(chosen) == count:
                    break
            if len(chosen) < count:
                raise DeeplogError(f"only {len(chosen)} anomalies with a workflow diagnosis to draw")
            spec = graph_spec(cfg)
            drawn = []
            for n, h in enumerate(chosen, 1):
                _, svg = anomaly_picture(clients, cfg, h["_id"])
                cli = out / f"anomaly-{n}-cli.svg"
                write_text(cli, svg)
                result = render_vega(spec, kibana_responses(clients, spec, {"ids": {"values": [h["_id"]]}}))
                if result["errors"] or result["warnings"]:
                    raise DeeplogError(f"Vega: {result['errors'] + result['warnings']}")
                vega = out / f"anomaly-{n}-vega.svg"
                write_text(vega, result["svg"])
                files = [cli, vega]
                if shutil.which("rsvg-convert"):
                    for f in (cli, vega):
                        png = f.with_suffix(".png")
                        subprocess.run(["rsvg-convert", "-b", "white", str(f), "-o", str(png)], check=True)
                        files.append(png)
                drawn.append(
                    {
                        "id": h["_id"],
                        "summary": h["_source"]["deeplog"]["workflow"]["summary"],
                        "files": [str(f) for f in files],
                    }
                )
            return drawn
        finally:
            clients.close()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
