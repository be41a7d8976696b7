"""membership: which partitions of a job each worker runs, agreed through the cluster alone.

Contract: `Membership(clients, config, stop)` is this worker's (`worker_id(config)`: `workers.worker_id`, or
`<hostname>:<pid>`) membership in the job's pool. `beat()` writes its heartbeat document
`<job state id>.worker.<worker id>` in the state index, expiring `schedule.lease_seconds` from now, with a
refresh so the other workers' searches see it at once; `start()` keeps renewing it from a thread (a third of
a lease period apart) until `stop` is set or `leave()` deletes it. `live()` is the set of workers whose
heartbeat has not expired (a heartbeat of a process of this host that is gone counts as expired, as a
lease does; this worker always counts). `assigned(live)` is this worker's share of the partitions by
rendezvous hashing: each partition goes to the live worker with the highest hash of (job, partition,
worker), so a worker that joins or leaves moves only its own share. Assignment only says which leases to
try: the partition's lease and compare-and-set saves (`state`) are what keep two workers off one partition.

`take_writer(clients, config, what)` keeps the jobs that write the model (feedback, retraining) to one worker
of the pool: it takes the lease of the state document `<job state id>.<what>` for the job's run
(`release_writer` gives it back), and returns None (logged) while another worker's run holds it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from .config import Config
from .errors import StateConflict
from .es import Clients
from .state import JobState, lease_owner, owner_gone, release_lease, state_id, take_lease
from .timefmt import epoch_seconds, iso_utc, utc_now

log = logging.getLogger(__name__)

# Heartbeats of one job are few (one per worker); a search this large sees them all.
_MAX_WORKERS = 10000


def worker_id(config: Config) -> str:
    return config.workers.worker_id or f"{socket.gethostname()}:{os.getpid()}"


def rendezvous_owner(job: str, partition: int, workers: set[str]) -> str:
    """The worker of `workers` that runs `partition` of `job` (highest random weight)."""

    def weight(w: str) -> tuple[int, str]:
        digest = hashlib.blake2b(f"{job}\0{partition}\0{w}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big"), w

    return max(workers, key=weight)


class Membership:
    def __init__(self, clients: Clients, config: Config, stop: threading.Event) -> None:
        self.clients, self.config, self.stop = clients, config, stop
        self.worker = worker_id(config)
        self.job = state_id(config.job.name)
        self.prefix = f"{self.job}.worker."
        self.index = config.output.state_index
        self.lease_s = float(config.schedule.lease_seconds)
        self._thread: threading.Thread | None = None
        self._left = threading.Event()

    @property
    def doc_id(self) -> str:
        return self.prefix + self.worker

    def beat(self) -> None:
        expires = time.time() + self.lease_s
        body = {
            "@timestamp": utc_now(),
            "deeplog": {
                "worker": {
                    "id": self.worker,
                    "job": self.job,
                    "partitions": self.config.workers.partitions,
                    "expires_at": iso_utc(expires),
                }
            },
        }
        self.clients.es.index(index=self.index, id=self.doc_id, document=body, refresh=True)

    def start(self) -> None:
        """Keep the heartbeat renewed from a thread (once; later calls do nothing)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._beat_until_stopped, name="deeplog-heartbeat", daemon=True
        )
        self._thread.start()

    def _beat_until_stopped(self) -> None:
        every = max(0.5, self.lease_s / 3)
        while not self.stop.wait(every) and not self._left.is_set():
            try:
                self.beat()
            except Exception as e:  # noqa: BLE001 - the next beat tries again; an expired one only moves partitions
                log.warning("could not renew the heartbeat of worker %s: %s", self.worker, e)
        self.leave()

    def leave(self) -> None:
        """Delete the heartbeat (best effort: one left behind expires), so the others take this worker's
        partitions at their next run."""
        if self._left.is_set():
            return
        self._left.set()
        try:
            self.clients.es.options(ignore_status=404).delete(index=self.index, id=self.doc_id, refresh=True)
        except Exception as e:  # noqa: BLE001 - it expires on its own
            log.warning("could not delete the heartbeat of worker %s: %s", self.worker, e)

    def live(self) -> set[str]:
        """The workers of this job whose heartbeat has not expired, this one included."""
        resp = self.clients.es.options(ignore_status=404).search(
            index=self.index,
            query={"match_all": {}},
            source=["deeplog.worker"],
            size=_MAX_WORKERS,
        )
        now = time.time()
        workers = {self.worker}
        for hit in (resp.get("hits") or {}).get("hits") or []:
            if not str(hit.get("_id", "")).startswith(self.prefix):
                continue
            w = _heartbeat(hit.get("_source"))
            if w is None:
                log.warning("ignoring the unreadable heartbeat %s/%s", self.index, hit.get("_id"))
                continue
            wid, expires = w
            if hit.get("_id") != self.prefix + wid:
                # Written by hand or by something else: a worker's heartbeat is always under its own id.
                log.warning("ignoring heartbeat %s/%s: it names worker %r", self.index, hit.get("_id"), wid)
                continue
            if expires > now and not owner_gone(wid):
                workers.add(wid)
        return workers

    def assigned(self, live: set[str]) -> list[int]:
        """This worker's partitions among `live` workers."""
        return [
            p
            for p in range(self.config.workers.partitions)
            if rendezvous_owner(self.job, p, live) == self.worker
        ]


def _heartbeat(src: Any) -> tuple[str, float] | None:
    """(worker id, expiry) of a heartbeat document read from the cluster, None when it does not read as one."""
    w = ((src or {}).get("deeplog") or {}).get("worker") if isinstance(src, dict) else None
    if not isinstance(w, dict) or not isinstance(w.get("id"), str):
        return None
    expires = epoch_seconds(w.get("expires_at"))
    return None if expires is None else (w["id"], expires)


def take_writer(clients: Clients, config: Config, what: str) -> JobState | None:
    """The pool's lease on `what` (held until `release_writer`), or None when another worker's run holds it."""
    try:
        return take_lease(
            clients,
            config.output.state_index,
            f"{state_id(config.job.name)}.{what}",
            owner=lease_owner(uuid.uuid4().hex),
            lease_s=config.schedule.lease_seconds,
        )
    except StateConflict as e:
        log.info("%s skipped: another worker of this job runs it (%s)", what, e)
        return None


def release_writer(clients: Clients, config: Config, held: JobState) -> None:
    release_lease(clients, config.output.state_index, held)
