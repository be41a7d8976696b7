"""/healthz and the endpoint's settings: healthy while detection runs finish, failing once they keep failing
(the model directory taken away under the running daemon), 404 elsewhere, bad `health.listen` refused."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from deeplog_siem import runs
from deeplog_siem.cli import main
from deeplog_siem.config import parse_config
from deeplog_siem.errors import ConfigError
from deeplog_siem.health import Health
from deeplog_siem.runs import RunSummary, record_run
from deeplog_siem.scheduler import run_daemon

from .conftest import config_data, for_subprocess, wait_for
from .test_metrics import daemon, daemon_config, get, small_model

CLI = Path(sys.executable).with_name("deeplog-siem")


@pytest.fixture(scope="module")
def trained(clients, es_section, tmp_path_factory) -> Iterator[Path]:
    with small_model(clients, es_section, tmp_path_factory.mktemp("model")) as d:
        yield d


def healthz(url: str) -> tuple[int, dict]:
    status, ctype, body = get(url + "/healthz")
    assert ctype == "application/json", ctype
    return status, json.loads(body)


def test_healthz_is_ok_while_detection_runs_finish_and_fails_once_they_keep_failing(
    clients, es_section, prefix, trained, tmp_path
):
    cfg = daemon_config(es_section, prefix, trained, tmp_path, health={"max_failed_runs": 2})
    with daemon(cfg, clients) as url:
        status, body = wait_for(
            "an ok detection run", lambda: (r := healthz(url))[1]["last_status"] == "ok" and r
        )
        assert status == 200 and body["status"] == "ok" and body["failed_in_a_row"] == 0
        assert get(url + "/nothing-here")[0] == 404
        assert get(url + "/healthz/")[0] == 404

        # The models taken away under the running daemon: every detection run now fails, yet finishes.
        Path(cfg.model.dir).rename(tmp_path / "models-away")
        status, body = wait_for("/healthz failing", lambda: (r := healthz(url))[0] == 503 and r, 60)
        assert body["status"] == "failing" and body["failed_in_a_row"] >= 2
        assert body["last_status"] == "failed"
        assert "detection runs failed" in body["reason"] and "no trained model" in body["reason"]

        # The models back: the next run is ok and the endpoint healthy again.
        (tmp_path / "models-away").rename(cfg.model.dir)
        status, body = wait_for("/healthz healthy again", lambda: (r := healthz(url))[0] == 200 and r, 60)
        assert body["failed_in_a_row"] == 0


def test_healthz_fails_when_no_detection_run_finished_for_too_long(clients, make_config):
    cfg = make_config(health={"max_age_seconds": 30})
    alive = threading.Event()
    alive.set()
    health = Health(cfg, alive=alive.is_set)
    ok = health.verdict()
    assert ok.ok and ok.reason.startswith("starting")
    late = health.verdict(now=health.started + 31)
    assert not late.ok and "since the daemon started" in late.reason

    runs.add_observer(health.observe)
    try:
        record_run(
            clients, cfg, RunSummary(run_id=uuid.uuid4().hex, job="detect", status="failed", error="x")
        )
        record_run(clients, cfg, RunSummary(run_id=uuid.uuid4().hex, job="detect"))
        # Another job's runs, and another configuration's, say nothing about this detection.
        record_run(clients, cfg, RunSummary(run_id=uuid.uuid4().hex, job="feedback", status="failed"))
        other = make_config(output={"runs_index": f"{cfg.output.runs_index}-other"})
        record_run(clients, other, RunSummary(run_id=uuid.uuid4().hex, job="detect", status="failed"))
    finally:
        runs.remove_observer(health.observe)
    finished = health.last_finished
    assert finished is not None
    v = health.verdict(now=finished + 29)
    assert v.ok and v.body["last_status"] == "ok" and v.body["failed_in_a_row"] == 0
    v = health.verdict(now=finished + 31)
    assert not v.ok and "finished 31 s ago (allowed 30 s)" in v.reason
    alive.clear()
    v = health.verdict(now=finished + 1)
    assert not v.ok and v.reason == "the scheduler is not running"


@pytest.mark.parametrize(
    "listen",
    [
        "9464",
        "localhost",
        ":9464",
        "127.0.0.1:",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        "127.0.0.1:http",
        "a b:80",
    ],
)
def test_bad_listen_values_are_refused_with_the_dotted_key(es_section, prefix, tmp_path, listen):
    with pytest.raises(ConfigError, match=r"^health\.listen: "):
        parse_config(config_data(es_section, prefix, tmp_path, health={"listen": listen}))


@pytest.mark.parametrize(
    ("setting", "key"),
    [({"max_failed_runs": 0}, "health.max_failed_runs"), ({"max_age_seconds": 0}, "health.max_age_seconds")],
)
def test_bad_health_settings_are_refused_with_the_dotted_key(es_section, prefix, tmp_path, setting, key):
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        parse_config(config_data(es_section, prefix, tmp_path, health=setting))


def test_good_listen_values_are_taken(es_section, prefix, tmp_path):
    for listen in ("", "0.0.0.0:0", "[::1]:9464", "metrics.example:65535"):
        cfg = parse_config(config_data(es_section, prefix, tmp_path, health={"listen": listen}))
        assert cfg.health.listen == listen


def test_a_port_in_use_stops_the_daemon_before_it_starts(clients, make_config):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = make_config(health={"listen": f"127.0.0.1:{port}"})
        with pytest.raises(ConfigError, match=rf"^health\.listen: cannot listen on 127\.0\.0\.1:{port}"):
            run_daemon(cfg, clients, threading.Event())
    # Nothing ran: the scheduler never started.
    assert not clients.es.indices.exists(index=cfg.output.runs_index)


def test_run_listen_flag_is_checked(tmp_path, es_section, prefix, capsys):
    cfg_file = tmp_path / "job.yml"
    cfg_file.write_text(yaml.safe_dump(config_data(es_section, prefix, tmp_path / "models")))
    assert main(["run", "--config", str(cfg_file), "--listen", "127.0.0.1:99999"]) == 2
    assert "--listen: port must be in 0..65535" in capsys.readouterr().err


def test_the_cli_daemon_binds_a_free_port_logs_it_and_stops_on_sigterm(es_section, prefix, trained, tmp_path):
    shutil.copytree(trained, tmp_path / "models")
    data = config_data(
        es_section,
        prefix,
        tmp_path / "models",
        model={"device": "cpu"},
        schedule={"detect_interval_seconds": 1, "misfire_grace_seconds": 1},
        health={"listen": "127.0.0.1:9"},  # what --listen overrides
    )
    cfg_file = tmp_path / "job.yml"
    cfg_file.write_text(yaml.safe_dump(for_subprocess(data)))
    log_file = tmp_path / "daemon.log"
    cmd = [str(CLI), "run", "--config", str(cfg_file), "--listen", "127.0.0.1:0"]
    with log_file.open("w") as err:
        proc = subprocess.Popen(
            cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL, stderr=err
        )
    try:

        def bound() -> str | None:
            assert proc.poll() is None, "the daemon exited: " + log_file.read_text()[-3000:]
            m = re.search(r"health and metrics on (http://\S+) ", log_file.read_text())
            return m.group(1) if m else None

        url = wait_for("the address the daemon bound", bound, 120)
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url) and not url.endswith(":0"), url
        status, body = wait_for(
            "an ok detection run", lambda: (r := healthz(url))[1]["last_status"] == "ok" and r
        )
        assert status == 200
        assert get(url + "/metrics")[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log_file.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
