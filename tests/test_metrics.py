"""The daemon's Prometheus metrics against the run documents it wrote: real HDFS sessions replayed into the
embedded server, a small real model, the daemon in a thread with its endpoint on a free port."""

from __future__ import annotations

import logging
import shutil
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import Elasticsearch, helpers
from prometheus_client.parser import text_string_to_metric_families

from deeplog_lab.replay import EPOCH, documents, load_sample, render
from deeplog_siem import runs
from deeplog_siem.artifacts import ModelStore
from deeplog_siem.config import Config, parse_config
from deeplog_siem.es import Clients
from deeplog_siem.health import Health
from deeplog_siem.metrics import Metrics
from deeplog_siem.runner import train
from deeplog_siem.runs import RunSummary, record_run
from deeplog_siem.scheduler import DetectJob, run_daemon

from .conftest import closed_port, config_data, wait_for


def index_docs(clients: Clients, docs: list[dict]) -> None:
    ok, errors = helpers.bulk(clients.es, docs, chunk_size=2000, raise_on_error=False)
    assert not errors and ok == len(docs), errors[:3]
    clients.es.indices.refresh(index=docs[0]["_index"])


def get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


class _Bound(logging.Handler):
    """The address the daemon's endpoint logs when it has bound its port."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.url: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("health and metrics on "):
            self.url = str(record.args[0])  # type: ignore[index]


@contextmanager
def daemon(cfg: Config, clients: Clients) -> Iterator[str]:
    """The daemon in a thread -> its endpoint's URL; stopped, and checked stopped, on exit."""
    bound = _Bound()
    logger = logging.getLogger("deeplog_siem.health")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(bound)
    stop = threading.Event()
    thread = threading.Thread(target=run_daemon, args=(cfg, clients, stop), daemon=True)
    thread.start()
    try:
        yield wait_for("the endpoint", lambda: bound.url, 30)
    finally:
        stop.set()
        thread.join(timeout=60)
        logger.removeHandler(bound)
        logger.setLevel(level)
    assert not thread.is_alive()


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text -> (sample name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics of the endpoint at `url`, parsed."""
    status, ctype, text = get(url + "/metrics")
    assert status == 200 and ctype.startswith("text/plain"), (status, ctype)
    return parse(text)


def counters(scraped: dict, prefix: str = "deeplog_") -> dict:
    """The `_total` samples of the counters (what must equal the sums over run documents)."""
    return {k: v for k, v in scraped.items() if k[0].startswith(prefix) and k[0].endswith("_total") and v}


def sums_over_run_documents(clients: Clients, cfg: Config) -> dict:
    """The same counters, summed over the run documents in the runs index."""
    if not clients.es.indices.exists(index=cfg.output.runs_index):
        return {}
    clients.es.indices.refresh(index=cfg.output.runs_index)
    hits = clients.es.search(index=cfg.output.runs_index, size=10000)["hits"]["hits"]
    out: Counter = Counter()
    for h in hits:
        run = h["_source"]["deeplog"]["run"]
        job = (("job", run["job"]),)
        out[("deeplog_documents_read_total", job)] += run["docs_read"]
        out[("deeplog_documents_processed_total", job)] += run["docs_processed"]
        for reason, n in run["skipped"].items():
            out[("deeplog_documents_skipped_total", tuple(sorted([*job, ("reason", reason)])))] += n
        for kind, n in run["anomalies"].items():
            out[("deeplog_anomalies_total", (("type", kind),))] += n
        out[("deeplog_runs_total", tuple(sorted([*job, ("status", run["status"])])))] += 1
    return {k: float(v) for k, v in out.items() if v}


@contextmanager
def small_model(clients: Clients, es_section: dict, model_dir: Path) -> Iterator[Path]:
    """One small real model: 200 normal HDFS sessions of the packaged sample, a few epochs."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    cfg = parse_config(
        config_data(es_section, prefix, model_dir, model={"epochs": 3, "patience": 1, "device": "cpu"})
    )
    sessions = load_sample().train[:200]
    index_docs(clients, list(documents(render(sessions, seed=21), f"{prefix}-train", run="train")))
    try:
        train(cfg, clients, index=f"{prefix}-train")
        yield model_dir
    finally:
        clients.es.options(ignore_status=404).indices.delete(index=f"{prefix}*", expand_wildcards="all")


@pytest.fixture(scope="module")
def sample():
    return load_sample()


@pytest.fixture(scope="module")
def trained(clients: Clients, es_section: dict, tmp_path_factory) -> Iterator[Path]:
    with small_model(clients, es_section, tmp_path_factory.mktemp("model")) as d:
        yield d


def daemon_config(es_section: dict, prefix: str, trained: Path, tmp_path: Path, **sections: dict) -> Config:
    models = tmp_path / "models"
    shutil.copytree(trained, models)
    sections["schedule"] = {
        "detect_interval_seconds": 1,
        "misfire_grace_seconds": 1,
        "chunk_size": 200,
        **sections.get("schedule", {}),
    }
    sections["source"] = {"page_size": 200, **sections.get("source", {})}
    sections["model"] = {"device": "cpu", **sections.get("model", {})}
    return parse_config(config_data(es_section, prefix, models, **sections))


def test_metrics_equal_the_sums_over_the_run_documents(
    clients, es_section, prefix, trained, sample, tmp_path
):
    cfg = daemon_config(es_section, prefix, trained, tmp_path)
    batch1 = render(sample.test[:60], seed=71, start=EPOCH + timedelta(days=1))
    batch2 = render(sample.test[60:120], seed=72, start=EPOCH + timedelta(days=2))
    index_docs(clients, list(documents(batch1, cfg.source.index, run="one")))

    def read_by_detection() -> int:
        return int(
            sums_over_run_documents(clients, cfg).get(
                ("deeplog_documents_read_total", (("job", "detect"),)), 0
            )
        )

    with daemon(cfg, clients) as url:
        wait_for("the first batch", lambda: read_by_detection() == len(batch1))
        index_docs(clients, list(documents(batch2, cfg.source.index, run="two")))
        wait_for("the second batch", lambda: read_by_detection() == len(batch1) + len(batch2))
        # Runs go on every second: compare a scrape with the runs index only when no run was counted
        # between a scrape before and one after reading the index.
        for _ in range(50):
            before = scrape(url)
            want = sums_over_run_documents(clients, cfg)
            after = scrape(url)
            if counters(before) == counters(after) == want:
                break
        assert counters(after) == want
        assert want[("deeplog_documents_read_total", (("job", "detect"),))] == len(batch1) + len(batch2)
        assert sum(v for k, v in want.items() if k[0] == "deeplog_anomalies_total") > 0
        detect_runs = sum(
            v for k, v in want.items() if k[0] == "deeplog_runs_total" and ("job", "detect") in k[1]
        )
        assert after[("deeplog_run_duration_seconds_count", (("job", "detect"),))] == detect_runs
        assert after[("deeplog_up", ())] == 1
        assert after[("deeplog_partition_leases_held", ())] in (0, 1)
        version, _ = ModelStore(cfg.model.dir).current()
        assert after[("deeplog_model_info", (("version", version),))] == 1
        assert after[("deeplog_last_success_timestamp_seconds", (("job", "detect"),))] > time.time() - 60
        assert after[("deeplog_run_documents_pending", ())] == 0
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/metrics", timeout=5)


def test_a_run_whose_document_could_not_be_written_is_counted_and_its_document_follows(clients, make_config):
    cfg = make_config()
    metrics = Metrics(cfg)
    runs.add_observer(metrics.observe)
    # The cluster gone while the run records itself: nothing listens where its client sends.
    away = Clients(
        es=Elasticsearch(f"http://127.0.0.1:{closed_port()}", max_retries=0),
        flavour=clients.flavour,
        version=clients.version,
    )
    try:
        lost = RunSummary(run_id=uuid.uuid4().hex, job="detect", docs_read=7, processed=6)
        lost.skipped["empty_message"] = 1
        lost.anomalies["sequence"] = 2
        record_run(away, cfg, lost)
        scraped = parse(metrics.generate().decode())
        assert scraped[("deeplog_documents_read_total", (("job", "detect"),))] == 7
        assert scraped[("deeplog_run_documents_pending", ())] >= 1
        assert not clients.es.indices.exists(index=cfg.output.runs_index)

        record_run(clients, cfg, RunSummary(run_id=uuid.uuid4().hex, job="detect", docs_read=3, processed=3))
        scraped = parse(metrics.generate().decode())
        assert counters(scraped) == sums_over_run_documents(clients, cfg)
        assert scraped[("deeplog_documents_read_total", (("job", "detect"),))] == 10
        assert scraped[("deeplog_run_documents_pending", ())] == 0
    finally:
        runs.remove_observer(metrics.observe)
        away.close()


def test_a_detection_run_catching_up_on_a_backlog_keeps_healthz_ok_while_it_commits_chunks(
    clients, es_section, prefix, trained, sample, tmp_path
):
    cfg = daemon_config(es_section, prefix, trained, tmp_path, health={"max_age_seconds": 60})
    backlog = render(sample.test[:60], seed=73, start=EPOCH + timedelta(days=3))
    index_docs(clients, list(documents(backlog, cfg.source.index, run="backlog")))
    job = DetectJob(cfg, clients, threading.Event())
    health = Health(cfg, alive=lambda: True, progress=job.last_commit)
    # The daemon started long ago and no detection run has finished since: only the run in progress can
    # keep it healthy.
    health.started = time.time() - 10_000
    assert job.last_commit() is None
    assert not health.verdict().ok
    seen: list[tuple[float | None, Any, Any]] = []

    def at_the_end_of_the_run(config: Config, summary: RunSummary, *, written: bool, pending: int) -> None:
        committed = job.last_commit()
        if summary.job == "detect" and committed is not None:
            stale = health.verdict(now=committed + 61)
            seen.append((committed, health.verdict(now=committed + 30), stale))

    t0 = time.time()
    runs.add_observer(at_the_end_of_the_run)
    try:
        job()
    finally:
        runs.remove_observer(at_the_end_of_the_run)
    ((committed, fresh, stale),) = seen
    # The run committed several chunks (chunk_size 200): the last commit is later than its start.
    assert committed is not None and committed > t0
    assert fresh.ok and fresh.reason.startswith(
        "catching up: the detection run in progress committed a chunk"
    )
    assert not stale.ok and "since the daemon started" in stale.reason
    # Once the run is over, only finished runs count again.
    assert job.last_commit() is None
    assert not health.verdict().ok
