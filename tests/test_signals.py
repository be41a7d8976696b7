"""`deeplog-siem run` and signals: SIGTERM stops a long job at a safe point, a second signal exits at once."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from deeplog_lab.replay import index_lines, render
from deeplog_siem.artifacts import ModelStore
from deeplog_siem.config import parse_config
from deeplog_siem.runner import train

from .conftest import REPO, config_data

# Bounds a hang only: retraining starts at the next full minute (cron), then trains.
HANG_S = 240

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


class Daemon:
    """`deeplog-siem run` in a subprocess, its stderr read line by line as it comes."""

    def __init__(self, config: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO / "plugin")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deeplog_siem.cli", "run", "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def wait_for(self, text: str) -> str:
        deadline = time.monotonic() + HANG_S
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                assert self.proc.poll() is None, "".join(self.seen[-30:])
                continue
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no log line with {text!r} within {HANG_S} s:\n" + "".join(self.seen[-30:]))

    def exit_code(self) -> int:
        try:
            code = self.proc.wait(timeout=HANG_S)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return code

    def output(self) -> str:
        return "".join(self.seen)


@pytest.fixture
def retraining(clients, es_section, prefix, tmp_path):
    """A published model, and a daemon configuration whose retraining (every minute) would train for hours."""
    now = datetime.now(UTC)
    lines = render([[5, 22, 5, 5, 11, 9, 11, 9, 26, 26]] * 300, seed=7, start=now - timedelta(hours=2))
    index_lines(clients, f"{prefix}-logs", lines)
    small = {"hidden": 8, "embedding": 8, "layers": 1, "threads": 1, "validation_fraction": 0.0}
    first = config_data(
        es_section,
        prefix,
        tmp_path / "models",
        model={**small, "epochs": 1},
        params={"enabled": False},
        feedback={"replay_windows": 100, "heldout_windows": 100},
    )
    train(parse_config(first), clients)
    store = ModelStore(tmp_path / "models")
    long = {
        **first,
        # Many small batches per epoch, and epochs without end: the job is training whenever a signal comes.
        "model": {**first["model"], "epochs": 100000, "patience": 100000, "batch_size": 1},
        "schedule": {
            "retrain_cron": "* * * * *",
            "detect_interval_seconds": 3600,
            "feedback_interval_seconds": 3600,
        },
    }
    path = tmp_path / "deeplog.yml"
    path.write_text(yaml.safe_dump(long), encoding="utf-8")
    return path, store


def _runs(clients, prefix: str, job: str) -> list[dict]:
    index = f"{prefix}-runs"
    clients.es.indices.refresh(index=index)
    hits = clients.es.search(index=index, query={"term": {"deeplog.run.job": job}}, size=100)["hits"]["hits"]
    return [h["_source"]["deeplog"]["run"] for h in hits]


def test_sigterm_stops_retraining_between_epochs_without_publishing(clients, prefix, retraining):
    config, store = retraining
    current = (store.dir / "CURRENT").read_text()
    versions = store.versions()
    daemon = Daemon(config)
    daemon.wait_for("retraining: epoch 1/")
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.exit_code() == 0, daemon.output()
    out = daemon.output()
    assert "training stopped: the process was asked to stop; the current model version is kept" in out
    assert "Traceback" not in out
    assert (store.dir / "CURRENT").read_text() == current
    assert store.versions() == versions
    assert [r["status"] for r in _runs(clients, prefix, "train")] == ["ok"]
    assert [r["status"] for r in _runs(clients, prefix, "retrain")] == ["stopped"]


def test_a_second_signal_exits_at_once(clients, prefix, retraining):
    config, store = retraining
    current = (store.dir / "CURRENT").read_text()
    daemon = Daemon(config)
    daemon.wait_for("retraining: epoch 1/")
    daemon.proc.send_signal(signal.SIGTERM)
    daemon.wait_for("received SIGTERM: stopping once the running job reaches a safe point")
    daemon.proc.send_signal(signal.SIGINT)
    assert daemon.exit_code() == 128 + signal.SIGINT, daemon.output()
    assert "received SIGINT again: exiting at once, without waiting for the running job" in daemon.output()
    assert (store.dir / "CURRENT").read_text() == current
