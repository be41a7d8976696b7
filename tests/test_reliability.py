"""Reliability of the scheduled job on the real server with replayed real HDFS sessions: late arrivals and the
query delay, a SIGKILL in the middle of a backlog, a server that stops answering during a run."""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from elasticsearch import helpers

from deeplog_lab.replay import EPOCH, documents, load_sample, render
from deeplog_siem.config import Config, ElasticsearchConfig, parse_config
from deeplog_siem.es import Clients, connect
from deeplog_siem.runner import Detection, run_once, train
from deeplog_siem.scheduler import run_daemon
from deeplog_siem.state import load_state

from .conftest import config_data as shared_config_data
from .conftest import for_subprocess, real_cluster, wait_for

CLI = Path(sys.executable).with_name("deeplog-siem")


def config_data(es_section: dict, prefix: str, model_dir: Path, **sections: dict) -> dict:
    sections["model"] = {"device": "cpu", **sections.get("model", {})}
    return shared_config_data(es_section, prefix, model_dir, **sections)


def ms_iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def epoch_ms(t: datetime) -> int:
    """What the server returns as the sort value of a date indexed with millisecond precision."""
    return round(t.replace(microsecond=t.microsecond // 1000 * 1000).timestamp() * 1000)


def index_docs(clients: Clients, docs: list[dict]) -> None:
    ok, errors = helpers.bulk(clients.es, docs, chunk_size=2000, raise_on_error=False)
    assert not errors and ok == len(docs), errors[:3]
    clients.es.indices.refresh(index=docs[0]["_index"])


def stamped(lines, index: str, run: str, ingested: datetime | None) -> list[dict]:
    """Replayed documents with event.ingested set as an ingest pipeline would have (None: no such field)."""
    out = []
    for d in documents(lines, index, run=run):
        if ingested is None:
            d["event"].pop("ingested", None)
        else:
            d["event"]["ingested"] = ms_iso(ingested)
        out.append(d)
    return out


def runs(clients: Clients, cfg: Config) -> list[dict]:
    if not clients.es.indices.exists(index=cfg.output.runs_index):
        return []
    clients.es.indices.refresh(index=cfg.output.runs_index)
    hits = clients.es.search(
        index=cfg.output.runs_index, query={"term": {"deeplog.run.job": "detect"}}, size=1000
    )["hits"]["hits"]
    return [h["_source"] for h in hits]


def anomaly_ids(clients: Clients, index: str) -> list[str]:
    clients.es.indices.refresh(index=index)
    hits = clients.es.search(index=index, size=5000, source=False)["hits"]["hits"]
    return [h["_id"] for h in hits]


@pytest.fixture(scope="module")
def sample():
    return load_sample()


@pytest.fixture(scope="module")
def model_dir(clients: Clients, es_section: dict, sample, tmp_path_factory) -> Iterator[Path]:
    """One small real model for the module: 200 normal HDFS sessions, a few epochs."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    d = tmp_path_factory.mktemp("model")
    cfg = parse_config(config_data(es_section, prefix, d, model={"epochs": 3, "patience": 1}))
    index_docs(clients, list(documents(render(sample.train[:200], seed=21), f"{prefix}-train", run="train")))
    try:
        train(cfg, clients, index=f"{prefix}-train")
        yield d
    finally:
        clients.es.options(ignore_status=404).indices.delete(index=f"{prefix}*", expand_wildcards="all")


# ------------------------------------------------------------------------------ late arrivals and delay


def test_late_arrivals_by_event_ingested_and_the_query_delay(clients, es_section, prefix, model_dir, sample):
    cfg = parse_config(config_data(es_section, prefix, model_dir, source={"query_delay_seconds": 2}))
    det = Detection.load(cfg)
    now = datetime.now(UTC)
    index = cfg.source.index
    first = render(sample.test[:20], seed=31, start=EPOCH + timedelta(days=1))
    index_docs(clients, stamped(first, index, "a", now - timedelta(seconds=120)))
    s1 = run_once(cfg, clients, detection=det)
    assert s1.docs_read == len(first)

    # Late arrivals: events a day older than everything processed, indexed (ingested) only now; and a batch
    # ingested this very moment, which the 2 s query delay must hold back for the next run.
    late = render(sample.test[20:40], seed=32, start=EPOCH)
    fresh = render(sample.test[40:50], seed=33, start=EPOCH + timedelta(days=2))
    index_docs(clients, stamped(late, index, "late", now - timedelta(seconds=60)))
    index_docs(clients, stamped(fresh, index, "fresh", datetime.now(UTC)))
    assert max(d.time for d in late) < min(d.time for d in first)
    s2 = run_once(cfg, clients, detection=det)
    assert s2.docs_read == len(late)
    assert s2.processed == len(late) and not s2.skipped
    time.sleep(2.2)
    s3 = run_once(cfg, clients, detection=det)
    assert s3.docs_read == len(fresh)
    s4 = run_once(cfg, clients, detection=det)
    assert s4.docs_read == 0
    assert sum(r["deeplog"]["run"]["docs_read"] for r in runs(clients, cfg)) == len(first) + len(late) + len(
        fresh
    )


def test_timestamp_order_overlap_reads_late_events_once(clients, es_section, prefix, model_dir, sample):
    """Without event.ingested the job reads in timestamp order; late events inside the overlap window are
    processed exactly once, nothing already processed is read again."""
    cfg = parse_config(
        config_data(es_section, prefix, model_dir, source={"query_delay_seconds": 1, "overlap_seconds": 30})
    )
    det = Detection.load(cfg)
    index = cfg.source.index
    start = datetime.now(UTC) - timedelta(minutes=5)
    first = render(sample.test[:20], seed=41, start=start)
    index_docs(clients, stamped(first, index, "a", None))
    s1 = run_once(cfg, clients, detection=det)
    assert s1.docs_read == len(first)
    newest = max(d.time for d in first)

    # Events logged up to 20 s before the newest processed one, indexed only now (a slow shipper).
    late = render(sample.test[20:30], seed=42, start=newest - timedelta(seconds=20))
    late = [ln for ln in late if ln.time < newest]
    assert late
    index_docs(clients, stamped(late, index, "late", None))
    s2 = run_once(cfg, clients, detection=det)
    assert s2.docs_read == len(late)
    s3 = run_once(cfg, clients, detection=det)
    assert s3.docs_read == 0
    cp = load_state(clients, cfg.output.state_index, "detect").checkpoint
    assert cp is not None and cp.sort[0] == epoch_ms(newest)
    assert {f"late-{i}" for i in range(len(late))} <= set(cp.recent)


# ------------------------------------------------------------------------------------- SIGKILL mid-run


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(for_subprocess(data)), encoding="utf-8")
    return path


def test_sigkill_mid_backlog_then_restart_equals_an_uninterrupted_run(
    clients, es_section, prefix, model_dir, sample, tmp_path
):
    sched = {"chunk_size": 100}
    killed = config_data(es_section, prefix, model_dir, schedule=sched, source={"page_size": 100})
    ref = config_data(es_section, f"{prefix}-ref", model_dir, schedule=sched, source={"page_size": 100})
    ref["source"]["index"] = killed["source"]["index"]  # same source documents, fresh state and output
    cfg, ref_cfg = parse_config(killed), parse_config(ref)
    lines = render(sample.test[:150], seed=51, start=EPOCH + timedelta(days=1))
    index_docs(clients, list(documents(lines, cfg.source.index, run="backlog")))
    cfg_file = write_config(tmp_path / "job.yml", killed)
    cmd = [str(CLI), "detect", "--once", "--close-sessions", "--config", str(cfg_file)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            got = clients.es.options(ignore_status=404).get(index=cfg.output.state_index, id="detect")
            if got.get("found") and got["_source"]["deeplog"]["state"].get("checkpoint"):  # a chunk committed
                break
            time.sleep(0.02)
        assert proc.poll() is None, (
            "the job finished before it could be killed: " + proc.stderr.read().decode()
        )
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    cp = load_state(clients, cfg.output.state_index, "detect").checkpoint
    assert cp is not None and cp.sort < (epoch_ms(lines[-1].time),), "killed after the end"

    done = subprocess.run(cmd, env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    reference = run_once(ref_cfg, clients, close_sessions=True)
    assert reference.status == "ok" and reference.anomalies_total > 0

    got = anomaly_ids(clients, cfg.output.anomalies_index)
    want = anomaly_ids(clients, ref_cfg.output.anomalies_index)
    assert len(got) == len(set(got)) == clients.es.count(index=cfg.output.anomalies_index)["count"]
    assert sorted(got) == sorted(want)
    # The restart read only what the killed run had not committed, and together they read everything.
    restarted = runs(clients, cfg)
    assert len(restarted) == 1  # the killed run never got to record itself
    assert 0 < restarted[0]["deeplog"]["run"]["docs_read"] < len(lines)


# ------------------------------------------------------------------------------- the server goes away


class _Failures(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "detection run failed" in record.getMessage():
            self.count += 1


def test_frozen_server_fails_the_run_daemon_goes_on_and_catches_up(es_section, model_dir, sample):
    if real_cluster():
        pytest.skip("freezes a dedicated embedded server")
    from deeplog_lab.server import start_embedded

    server = start_embedded()
    timeout = 2.0
    section = {"hosts": [server.url], "request_timeout": timeout, "max_retries": 0}
    cfg = parse_config(
        config_data(
            section,
            "frozen",
            model_dir,
            schedule={"detect_interval_seconds": 1, "misfire_grace_seconds": 1, "chunk_size": 200},
            source={"page_size": 200},
        )
    )
    c = connect(ElasticsearchConfig(hosts=(server.url,), request_timeout=30))
    job_clients = connect(cfg.elasticsearch)
    failures = _Failures()
    logging.getLogger("deeplog_siem.scheduler").addHandler(failures)
    stop = threading.Event()
    daemon = threading.Thread(target=run_daemon, args=(cfg, job_clients, stop), daemon=True)
    frozen = False
    try:
        batch1 = render(sample.test[:40], seed=61, start=EPOCH + timedelta(days=1))
        batch2 = render(sample.test[40:80], seed=62, start=EPOCH + timedelta(days=2))
        total = len(batch1) + len(batch2)
        now = datetime.now(UTC)
        index_docs(c, stamped(batch1, cfg.source.index, "one", now - timedelta(seconds=10)))
        daemon.start()

        def committed() -> int:
            return sum(r["deeplog"]["run"]["docs_read"] for r in runs(c, cfg))

        wait_for("the first batch", lambda: committed() == len(batch1), 60)
        index_docs(c, stamped(batch2, cfg.source.index, "two", now - timedelta(seconds=5)))
        os.kill(server.pid, signal.SIGSTOP)
        frozen = True
        wait_for("a failed run", lambda: failures.count >= 1, 90)
        assert daemon.is_alive()
        os.kill(server.pid, signal.SIGCONT)
        frozen = False

        wait_for("the catch-up", lambda: committed() >= total, 90)
        failed = wait_for(
            "the failed run's document",
            lambda: [r for r in runs(c, cfg) if r["deeplog"]["run"]["status"] == "failed"],
            30,
        )
        time.sleep(2.5)  # two more intervals: nothing is read twice
        assert committed() == total
        assert daemon.is_alive()
        for r in failed:
            assert r["error"]["message"] and "Traceback" in r["error"]["stack_trace"]
        # The job gave up within its request timeout, not after some unbounded wait.
        assert min(r["deeplog"]["run"]["duration_ms"]["total"] for r in failed) <= 2 * timeout * 1000 + 1000
        cp = load_state(c, cfg.output.state_index, "detect").checkpoint
        last = c.es.search(
            index=cfg.source.index, size=1, sort=[{"event.ingested": "desc"}, {"@timestamp": "desc"}]
        )["hits"]["hits"][0]
        assert cp is not None and list(cp.sort) == last["sort"][:2]
    finally:
        if frozen:
            os.kill(server.pid, signal.SIGCONT)
        stop.set()
        daemon.join(timeout=60)
        logging.getLogger("deeplog_siem.scheduler").removeHandler(failures)
        job_clients.close()
        c.close()
        server.stop()
    assert not daemon.is_alive()
    assert gc.isenabled()  # failed runs turned the garbage collector back on (gcpause)


def test_a_training_run_that_fails_partway_records_the_documents_it_read(
    clients, es_section, prefix, sample, tmp_path
):
    """Training's read counts page by page: a run that fails after some pages records them, as detection
    does. The failure: progress goes to stderr, and a closed pipe there (`... 2>&1 | head`) raises."""
    cfg = parse_config(config_data(es_section, prefix, tmp_path, source={"page_size": 500}))
    lines = render(sample.train[:1200], seed=31)
    assert len(lines) > 20000
    index_docs(clients, list(documents(lines, f"{prefix}-train", run="train")))
    said: list[str] = []

    def progress(message: str) -> None:
        said.append(message)
        if "documents" in message:  # the reader's first report, after 20000 documents
            raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(BrokenPipeError):
        train(cfg, clients, index=f"{prefix}-train", progress=progress)
    clients.es.indices.refresh(index=cfg.output.runs_index)
    (run,) = [
        h["_source"]["deeplog"]["run"]
        for h in clients.es.search(
            index=cfg.output.runs_index, query={"term": {"deeplog.run.job": "train"}}, size=10
        )["hits"]["hits"]
    ]
    assert run["status"] == "failed"
    assert said[-1].startswith("  20000 documents") and run["docs_read"] == 20000


def test_a_detection_run_has_no_writer_until_it_runs_and_leaves_no_thread(
    clients, es_section, prefix, model_dir, sample
):
    from deeplog_siem.runner import DetectionRun, Job, Span
    from deeplog_siem.runs import RunSummary

    cfg = parse_config(config_data(es_section, prefix, model_dir))
    summary = RunSummary(run_id="r1", job="detect")
    run = DetectionRun.open(Job(cfg, clients, summary), Detection.load(cfg), Span())
    assert run.writer is None
    with pytest.raises(RuntimeError, match="starts with `run`"):
        run.active_writer()
    lines = render(sample.test[:5], seed=41, start=EPOCH + timedelta(days=1))
    index_docs(clients, stamped(lines, cfg.source.index, "one", datetime.now(UTC) - timedelta(minutes=1)))
    run.run(None, lambda message: None)
    assert summary.docs_read > 0 and run.writer is not None
    names = {t.name for t in threading.enumerate() if t.is_alive()}
    assert not names & {"deeplog-source", "deeplog-sink-writer"}


def test_a_run_ended_by_ctrl_c_is_recorded_interrupted(clients, es_section, prefix, tmp_path):
    from deeplog_siem.runs import RunSummary, recorded

    cfg = parse_config(config_data(es_section, prefix, tmp_path))
    summary = RunSummary(run_id=uuid.uuid4().hex, job="detect")
    with pytest.raises(KeyboardInterrupt), recorded(clients, cfg, summary):
        summary.docs_read = 7
        raise KeyboardInterrupt
    clients.es.indices.refresh(index=cfg.output.runs_index)
    doc = clients.es.get(index=cfg.output.runs_index, id=summary.run_id)["_source"]
    assert doc["deeplog"]["run"]["status"] == "interrupted" and doc["deeplog"]["run"]["docs_read"] == 7
    assert (
        doc["error"]["message"] == "KeyboardInterrupt" and "KeyboardInterrupt" in doc["error"]["stack_trace"]
    )
