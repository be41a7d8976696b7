"""The watchdog on the embedded server: `deeplog-siem check` and the shipped watchdog monitor and Kibana rule
fire when the daemon has stopped writing run documents, and stay quiet while it runs."""

from __future__ import annotations

import json
import threading
import time

import yaml

from deeplog_siem import alerting
from deeplog_siem.cli import main
from deeplog_siem.config import Config, parse_config
from deeplog_siem.es import Clients
from deeplog_siem.scheduler import run_daemon
from deeplog_siem.setup_steps import asset_text
from deeplog_siem.watchdog import check, default_max_age

from .conftest import config_data, wait_for


def _runs(clients: Clients, cfg: Config) -> int:
    if not clients.es.indices.exists(index=cfg.output.runs_index):
        return 0
    clients.es.indices.refresh(index=cfg.output.runs_index)
    return clients.es.count(index=cfg.output.runs_index)["count"]


def _monitor_fires(clients: Clients, cfg: Config, period_end_ms: int) -> bool:
    """The shipped watchdog monitor run as OpenSearch Alerting runs it at `period_end`: its query (the
    mustache variable rendered) against the runs index, then its trigger condition."""
    monitor = alerting.monitors(cfg)["DeepLog watchdog: no detection run"]
    search = monitor["inputs"][0]["search"]
    rendered = json.loads(json.dumps(search["query"]).replace("{{period_end}}", str(period_end_ms)))
    total = clients.es.search(index=search["indices"], track_total_hits=True, **rendered)["hits"]["total"][
        "value"
    ]
    assert monitor["triggers"][0]["condition"]["script"]["source"] == "ctx.results[0].hits.total.value < 1"
    return total < 1


def _kibana_rule_fires(clients: Clients, cfg: Config, now_ms: int) -> bool:
    """The shipped Kibana watchdog rule as the Elasticsearch query rule type evaluates it: its query within the
    time window before `now` on its time field, the count compared with the threshold."""
    rule = json.loads(asset_text("alerting", "kibana-rule-watchdog.json"))
    p = rule["params"]
    assert (p["thresholdComparator"], p["threshold"], p["timeWindowUnit"]) == ("<", [1], "m")
    window = {"range": {p["timeField"]: {"gte": now_ms - p["timeWindowSize"] * 60_000, "lte": now_ms}}}
    query = {"bool": {"filter": [json.loads(p["esQuery"])["query"], window]}}
    count = clients.es.count(index=cfg.output.runs_index, query=query)["count"]
    return count < p["threshold"][0]


def test_watchdog_fires_on_a_stopped_daemon_and_not_on_a_running_one(
    clients, es_section, prefix, tmp_path, capsys
):
    data = config_data(
        es_section,
        prefix,
        tmp_path / "models",
        schedule={"detect_interval_seconds": 1, "feedback_interval_seconds": 3600},
    )
    cfg_file = tmp_path / "job.yml"
    cfg_file.write_text(yaml.safe_dump(data), encoding="utf-8")
    cfg = parse_config(data)
    argv = ["check", "-c", str(cfg_file)]

    # Never ran: the watchdog fires.
    assert main(argv) == 1
    assert "no detection run" in capsys.readouterr().out

    stop = threading.Event()
    daemon = threading.Thread(target=run_daemon, args=(cfg, clients, stop), daemon=True)
    daemon.start()
    try:
        # No model is trained: every run fails, and is recorded, which is what shows the daemon alive.
        wait_for("a run document", lambda: _runs(clients, cfg) >= 2)
        assert main(argv) == 0
        assert capsys.readouterr().out.startswith("OK: last detection run")
        now_ms = int(time.time() * 1000)
        assert not _monitor_fires(clients, cfg, now_ms)
        assert not _kibana_rule_fires(clients, cfg, now_ms)
    finally:
        stop.set()
        daemon.join(timeout=60)
    assert not daemon.is_alive()
    stopped = _runs(clients, cfg)

    # Stopped: nothing more is recorded, and once the newest run is older than the allowed age, it fires.
    wait_for("the watchdog to fire", lambda: main([*argv, "--max-age", "1"]) == 1)
    assert capsys.readouterr().out.splitlines()[-1].startswith("ALERT: last detection run")
    assert _runs(clients, cfg) == stopped
    # The monitor and the rule, run 16 minutes on (past their 15-minute window), fire as well.
    later_ms = int(time.time() * 1000) + 16 * 60_000
    assert _monitor_fires(clients, cfg, later_ms)
    assert _kibana_rule_fires(clients, cfg, later_ms)


def test_check_reports_what_it_cannot_check(tmp_path, capsys, es_section, prefix):
    cfg = parse_config(
        config_data(es_section, prefix, tmp_path / "m", schedule={"detect_interval_seconds": 60})
    )
    assert default_max_age(cfg) == 600
    bad = tmp_path / "bad.yml"
    bad.write_text("output: [1]\n", encoding="utf-8")
    assert main(["check", "-c", str(bad)]) == 2
    good = tmp_path / "good.yml"
    good.write_text(yaml.safe_dump(config_data(es_section, prefix, tmp_path / "m")), encoding="utf-8")
    assert main(["check", "-c", str(good), "--max-age", "0"]) == 2
    assert "--max-age" in capsys.readouterr().err


def test_check_verdict_on_an_empty_runs_index(clients, make_config):
    cfg = make_config()
    verdict = check(clients, cfg, max_age_s=60)
    assert verdict.fires and verdict.last_run is None
