"""The daemon: failed runs are recorded and the schedule goes on; a stop request ends it cleanly."""

from __future__ import annotations

import threading
import time

from deeplog_siem.scheduler import run_daemon


def test_failing_runs_are_recorded_and_the_daemon_keeps_going(clients, make_config, prefix):
    # No model has been trained: every detection run fails with an actionable error.
    cfg = make_config(schedule={"detect_interval_seconds": 1, "misfire_grace_seconds": 1})
    stop = threading.Event()
    daemon = threading.Thread(target=run_daemon, args=(cfg, clients, stop), daemon=True)
    daemon.start()
    deadline = time.monotonic() + 30
    failed = []
    while time.monotonic() < deadline and len(failed) < 2:
        time.sleep(0.5)
        if clients.es.indices.exists(index=cfg.output.runs_index):
            clients.es.indices.refresh(index=cfg.output.runs_index)
            failed = clients.es.search(
                index=cfg.output.runs_index, query={"term": {"deeplog.run.status": "failed"}}
            )["hits"]["hits"]
    assert daemon.is_alive()
    assert len(failed) >= 2, "the daemon must go on after a failed run"
    assert all("no trained model" in h["_source"]["error"]["message"] for h in failed)
    assert all("Traceback" in h["_source"]["error"]["stack_trace"] for h in failed)
    stop.set()
    daemon.join(timeout=15)
    assert not daemon.is_alive()
