"""One detection job shared by worker processes (`deeplog-siem run` with `workers.partitions`), coordinated only
through the embedded server: a worker SIGKILLed mid-run and one joining late lose and double nothing, and the
dead worker's partitions are taken over within two lease periods."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from elasticsearch import helpers

from deeplog_lab.replay import documents, load_sample, render
from deeplog_siem.config import Config, parse_config
from deeplog_siem.es import Clients
from deeplog_siem.membership import Membership, rendezvous_owner
from deeplog_siem.partitions import Partition, all_partitions, partition_key
from deeplog_siem.runner import run_once, run_partition, train
from deeplog_siem.scheduler import feedback_job, retrain_job
from deeplog_siem.state import JobState, load_state, release_lease, state_id, take_lease, take_partition_lease
from deeplog_siem.timefmt import iso_utc

from .conftest import REPO, config_data, for_subprocess

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

PARTS = 6
LEASE_S = 6
FIELD = "deeplog.partition"
SMALL_MODEL = {"epochs": 1, "hidden": 8, "embedding": 8, "layers": 1, "threads": 1, "device": "cpu"}


def test_rendezvous_moves_only_the_joining_or_leaving_workers_share():
    job = "detect"
    before = {p: rendezvous_owner(job, p, {"a", "b", "c"}) for p in range(256)}
    joined = {p: rendezvous_owner(job, p, {"a", "b", "c", "d"}) for p in range(256)}
    assert all(joined[p] in (before[p], "d") for p in range(256))
    assert 30 < sum(1 for p in range(256) if joined[p] == "d") < 100  # about a quarter
    left = {p: rendezvous_owner(job, p, {"a", "c"}) for p in range(256)}
    assert all(left[p] == before[p] for p in range(256) if before[p] != "b")
    assert set(before.values()) == {"a", "b", "c"}


def index_keyed(clients: Clients, index: str, lines, *, batch: int = 0) -> list[dict]:
    """Replayed HDFS lines as a shipper with the deeplog-hdfs pipeline sends them: the block's partition key,
    event.ingested stamped per bulk; a later `batch` is ingested a day later."""
    docs = []
    stamp = datetime(2026, 1, 1 + batch, tzinfo=UTC)
    for i, d in enumerate(documents(lines, index, run=f"src{batch}")):
        block = re.search(r"blk_-?\d+", d["message"])
        assert block is not None
        d["deeplog"] = {"partition": partition_key(block.group(0))}
        d["event"]["ingested"] = (stamp + timedelta(seconds=i // 200)).isoformat().replace("+00:00", "Z")
        docs.append(d)
    ok, errors = helpers.bulk(clients.es, docs, chunk_size=2000, raise_on_error=False)
    assert not errors and ok == len(docs), errors[:3]
    clients.es.indices.refresh(index=index)
    return docs


@pytest.fixture(scope="module")
def small_model(clients: Clients, es_section: dict, tmp_path_factory) -> Iterator[Path]:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    d = tmp_path_factory.mktemp("model")
    cfg = parse_config(config_data(es_section, prefix, d, model=SMALL_MODEL, params={"enabled": False}))
    ok, _ = helpers.bulk(
        clients.es, documents(render(load_sample().train[:150], seed=3), f"{prefix}-train", run="t")
    )
    clients.es.indices.refresh(index=f"{prefix}-train")
    try:
        train(cfg, clients, index=f"{prefix}-train")
        yield d
    finally:
        clients.es.options(ignore_status=404).indices.delete(index=f"{prefix}*", expand_wildcards="all")


class Worker:
    """`deeplog-siem run` in a subprocess; its stderr read as it comes (a full pipe would stall it)."""

    def __init__(self, config: Path, name: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO / "plugin"), "DEEPLOG_WORKER": name}
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deeplog_siem.cli", "run", "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def stop(self) -> str:
        """SIGTERM, then its whole log once it has exited."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=10)
        return "".join(self.lines)


def states(clients: Clients, cfg: Config) -> list[JobState]:
    return [
        load_state(clients, cfg.output.state_index, state_id(cfg.job.name, partition=p))
        for p in all_partitions(PARTS, FIELD)
    ]


def run_docs(clients: Clients, cfg: Config) -> list[dict]:
    if not clients.es.indices.exists(index=cfg.output.runs_index):
        return []
    clients.es.indices.refresh(index=cfg.output.runs_index)
    hits = clients.es.search(
        index=cfg.output.runs_index, query={"term": {"deeplog.run.job": "detect"}}, size=10000
    )["hits"]["hits"]
    return [h["_source"]["deeplog"]["run"] for h in hits]


def wait_for(what: str, cond, timeout: float, workers: list[Worker]):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        for w in workers:
            assert w.proc.poll() is None, f"worker {w.name} exited: {''.join(w.lines[-30:])}"
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def live_workers(clients: Clients, cfg: Config) -> set[str]:
    return Membership(clients, cfg, threading.Event()).live()


def anomaly_ids(clients: Clients, index: str) -> set[str]:
    clients.es.indices.refresh(index=index)
    hits = clients.es.search(index=index, size=10000, source=False)["hits"]["hits"]
    return {h["_id"] for h in hits}


def test_three_workers_one_killed_one_joining_process_every_document_once(
    clients, es_section, prefix, small_model, tmp_path
):
    data = config_data(
        es_section,
        prefix,
        small_model,
        model={"device": "cpu"},
        params={"enabled": False},
        source={"page_size": 40},
        schedule={
            "chunk_size": 40,
            "lease_seconds": LEASE_S,
            "detect_interval_seconds": 1,
            "feedback_interval_seconds": 3600,
        },
        workers={"partitions": PARTS, "worker_id": "${DEEPLOG_WORKER}"},
    )
    cfg_file = tmp_path / "workers.yml"
    cfg_file.write_text(yaml.safe_dump(for_subprocess(data)), encoding="utf-8")
    cfg = parse_config({**data, "workers": {"partitions": PARTS, "worker_id": "test"}})
    docs = index_keyed(clients, cfg.source.index, render(load_sample().test[:120], seed=11))
    parts = all_partitions(PARTS, FIELD)
    owned = defaultdict(int)
    for d in docs:
        owned[next(p.index for p in parts if p.owns(d["deeplog"]["partition"]))] += 1

    workers = [Worker(cfg_file, "w1"), Worker(cfg_file, "w2")]
    try:
        # w1 mid-run: holding a partition's lease after committing a chunk of that run.
        def w1_mid_run() -> int | None:
            for i, s in enumerate(states(clients, cfg)):
                if s.lease and s.tally and s.tally.get("worker") == "w1":
                    if s.lease.owner.endswith(":" + s.tally["run_id"]) and s.tally["docs_read"] > 0:
                        return i
            return None

        wait_for("w1 to commit a chunk", w1_mid_run, 60, workers)
        workers.append(Worker(cfg_file, "w3"))  # joins while the others work
        workers[0].proc.send_signal(signal.SIGKILL)
        workers[0].proc.wait()
        killed_at = time.monotonic()
        left_by_w1 = {
            i for i, s in enumerate(states(clients, cfg)) if s.tally and s.tally.get("worker") == "w1"
        }
        assert left_by_w1

        def taken_over() -> bool:
            now = states(clients, cfg)
            return all(now[i].tally and now[i].tally.get("worker") != "w1" for i in left_by_w1)

        wait_for("w1's partitions to be taken over", taken_over, 4 * LEASE_S, workers[1:])
        assert time.monotonic() - killed_at <= 2 * LEASE_S

        # More logs once w3 has joined (its heartbeat is there): the pool of w2 and w3 shares them.
        wait_for("w3 to join", lambda: "w3" in live_workers(clients, cfg), 60, workers[1:])
        later = index_keyed(clients, cfg.source.index, render(load_sample().test[120:180], seed=12), batch=1)
        for d in later:
            owned[next(p.index for p in parts if p.owns(d["deeplog"]["partition"]))] += 1
        docs += later

        def all_done() -> bool:
            runs = run_docs(clients, cfg)
            return sum(r["docs_read"] for r in runs) >= len(docs)

        wait_for("every document to be read", all_done, 60, workers[1:])
    finally:
        outputs = [w.stop() for w in workers[1:]]
        workers[0].proc.kill()
    assert "Traceback" not in "".join(outputs), outputs
    # The workers that stopped cleanly left the pool; the killed one's heartbeat is left to expire.
    clients.es.indices.refresh(index=cfg.output.state_index)
    ids = {h["_id"] for h in clients.es.search(index=cfg.output.state_index, size=100)["hits"]["hits"]}
    assert {i for i in ids if ".worker." in i} == {"detect.worker.w1"}

    # Every source document was processed exactly once over the committed runs: per partition, the runs
    # that moved the checkpoint tile its range from the start to the saved checkpoint, and their counts add
    # up to the partition's documents.
    runs = run_docs(clients, cfg)
    assert any(r["status"] == "interrupted" and r["worker"] == "w1" for r in runs)
    assert {r["worker"] for r in runs if r["docs_read"]} == {"w1", "w2", "w3"}
    final = states(clients, cfg)
    for p in parts:
        mine = [r for r in runs if r["partition"] == {"id": p.index, "of": PARTS}]
        moved = {}
        for r in mine:
            if r["checkpoint_from"] == r["checkpoint_to"]:
                assert r["docs_read"] == 0, r
                continue
            key = tuple(r["checkpoint_from"] or ())
            assert key not in moved, f"two runs of partition {p.index} from {key}"
            moved[key] = r
        cp, total = (), 0
        while moved:
            r = moved.pop(cp)
            total += r["docs_read"]
            cp = tuple(r["checkpoint_to"])
        assert cp == tuple(final[p.index].checkpoint.sort)
        assert total == owned[p.index], p.index

    # The union of the workers' anomalies equals one unpartitioned worker's over the same documents (the
    # sessions still open closed by one last pass of every partition, as `detect --once --close-sessions`).
    for p in parts:
        last = run_partition(cfg, clients, partition=p, worker="test", close_sessions=True)
        assert last is not None and last.status == "ok" and last.docs_read == 0
    ref_data = config_data(
        es_section, f"{prefix}-ref", small_model, model={"device": "cpu"}, params={"enabled": False}
    )
    ref_data["source"]["index"] = cfg.source.index
    ref = run_once(parse_config(ref_data), clients, close_sessions=True)
    assert ref.status == "ok" and ref.docs_read == len(docs) and ref.anomalies_total > 0
    got = anomaly_ids(clients, cfg.output.anomalies_index)
    assert got == anomaly_ids(clients, f"{prefix}-ref-anomalies")


def test_detect_once_runs_every_partition_it_can_lease(clients, es_section, prefix, small_model, tmp_path):
    data = config_data(
        es_section,
        prefix,
        small_model,
        model={"device": "cpu"},
        params={"enabled": False},
        workers={"partitions": 3, "worker_id": "one-shot"},
    )
    cfg = parse_config(data)
    docs = index_keyed(clients, cfg.source.index, render(load_sample().test[:30], seed=5))
    cfg_file = tmp_path / "detect.yml"
    cfg_file.write_text(yaml.safe_dump(data), encoding="utf-8")
    # Partition 1 is held by a live run of another worker: skipped, the others run.
    held = take_partition_lease(
        clients,
        cfg.output.state_index,
        state_id(cfg.job.name),
        partition=Partition(1, 3, FIELD),
        owner="elsewhere:1:run",
        lease_s=600,
    )
    assert held.lease is not None
    env = {**os.environ, "PYTHONPATH": str(REPO / "plugin")}
    done = subprocess.run(
        [sys.executable, "-m", "deeplog_siem.cli", "detect", "--once", "--json", "--config", str(cfg_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["skipped_partitions"] == [1]
    assert sorted(r["partition"]["id"] for r in out["runs"]) == [0, 2]
    parts = all_partitions(3, FIELD)
    expected = sum(1 for d in docs if not parts[1].owns(d["deeplog"]["partition"]))
    assert sum(r["docs_read"] for r in out["runs"]) == expected


def test_feedback_and_retraining_run_on_one_worker_of_the_pool(
    clients, es_section, prefix, small_model, caplog
):
    """Every worker schedules feedback and retraining; while one runs either, the others skip it (logged)."""
    cfg = parse_config(
        config_data(
            es_section,
            prefix,
            small_model,
            model={"device": "cpu"},
            params={"enabled": False},
            workers={"partitions": 2, "worker_id": "w2"},
        )
    )
    caplog.set_level(logging.INFO)
    held = [
        take_lease_as(clients, cfg, what, owner="another-host:4242:run") for what in ("feedback", "retrain")
    ]
    feedback_job(cfg, clients)
    retrain_job(cfg, clients)
    assert "feedback skipped: another worker of this job runs it" in caplog.text
    assert "retrain skipped: another worker of this job runs it" in caplog.text
    assert "failed" not in caplog.text
    assert not all_runs(clients, cfg)  # nothing ran, so nothing was recorded
    for state in held:
        release_lease(clients, cfg.output.state_index, state)
    feedback_job(cfg, clients)
    assert [r["job"] for r in all_runs(clients, cfg)] == ["feedback"]


def take_lease_as(clients: Clients, cfg: Config, what: str, *, owner: str) -> JobState:
    return take_lease(
        clients, cfg.output.state_index, f"{state_id(cfg.job.name)}.{what}", owner=owner, lease_s=600
    )


def all_runs(clients: Clients, cfg: Config) -> list[dict]:
    if not clients.es.indices.exists(index=cfg.output.runs_index):
        return []
    clients.es.indices.refresh(index=cfg.output.runs_index)
    hits = clients.es.search(index=cfg.output.runs_index, size=100)["hits"]["hits"]
    return [h["_source"]["deeplog"]["run"] for h in hits]


def test_live_workers_are_the_unexpired_readable_heartbeats_of_the_job(clients, make_config):
    cfg = make_config(workers={"partitions": 4, "worker_id": "me"}, schedule={"lease_seconds": 30})
    stop = threading.Event()
    me = Membership(clients, cfg, stop)
    now = time.time()

    def beat(doc_id: str, worker: object) -> None:
        clients.es.index(index=cfg.output.state_index, id=doc_id, document={"deeplog": {"worker": worker}})

    beat("detect.worker.live", {"id": "live", "expires_at": iso_utc(now + 30)})
    beat("detect.worker.expired", {"id": "expired", "expires_at": iso_utc(now - 1)})
    beat("detect.worker.garbled", {"id": ["x"], "expires_at": iso_utc(now + 30)})
    beat("detect.worker.noexpiry", {"id": "noexpiry"})
    gone = f"{socket.gethostname()}:{dead_pid()}"
    beat(f"detect.worker.{gone}", {"id": gone, "expires_at": iso_utc(now + 30)})
    # A heartbeat under another worker's id (by hand, or forged) names nobody.
    beat("detect.worker.live2", {"id": "impostor", "expires_at": iso_utc(now + 30)})
    beat("other.detect.worker.elsewhere", {"id": "elsewhere", "expires_at": iso_utc(now + 30)})
    clients.es.indices.refresh(index=cfg.output.state_index)
    assert me.live() == {"me", "live"}
    me.beat()
    mine = me.assigned(me.live())
    assert mine == [p for p in range(4) if rendezvous_owner("detect", p, {"me", "live"}) == "me"]
    me.leave()
    assert not clients.es.options(ignore_status=404).get(index=cfg.output.state_index, id=me.doc_id)["found"]


def dead_pid() -> int:
    """The id of a process of this host that has ended."""
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(proc.stdout)
