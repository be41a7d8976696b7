"""metrics: the daemon's Prometheus metrics, fed from the runs it finishes.

Contract: `Metrics(config)` owns its own `CollectorRegistry` (never the process-wide default, so several
daemons, or tests, in one process keep apart); `generate()` -> the text exposition of it. Every job run of
that configuration that `runs.record_run` records in this process (`runs.add_observer`) is counted by
`observe(config, summary, written=)`: its documents read, processed and skipped (by reason), anomalies by
type, the run itself by job and status, its duration, the lag, the model version, and the time of the last
`ok` run of its job. A run whose run document could not be written is counted all the same: the document
waits in this process and goes with the next run's (`runs`), so once the cluster takes it again every
counter equals the sum over the run documents this process wrote; until then
`deeplog_run_documents_pending` says how many are missing from the runs index. `set_leases(fn)` gives the
callable `deeplog_partition_leases_held` reads at each scrape; `set_up(bool)` sets `deeplog_up`.
README "Health and metrics" lists every metric.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .config import Config

if TYPE_CHECKING:
    from .runs import RunSummary

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
# From a quick detection pass to a retraining of an hour and more.
DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, float("inf"))
# Run jobs whose figures describe the live detection (lag, model version in use).
_DETECT_JOBS = frozenset({"detect"})


def config_key(config: Config) -> tuple[str, str]:
    """What tells one configuration's runs from another's in one process: its runs index and job name."""
    return config.output.runs_index, config.job.name


class Metrics:
    """One daemon's metrics; thread-safe (prometheus_client's own locks), updated by `observe`."""

    def __init__(self, config: Config) -> None:
        self.key = config_key(config)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.docs_read = Counter(
            "deeplog_documents_read", "Source documents read by committed chunks", ["job"], registry=r
        )
        self.docs_processed = Counter(
            "deeplog_documents_processed", "Source documents scored", ["job"], registry=r
        )
        self.docs_skipped = Counter(
            "deeplog_documents_skipped",
            "Source documents read but not scored, by reason",
            ["job", "reason"],
            registry=r,
        )
        self.anomalies = Counter("deeplog_anomalies", "Anomalies found, by type", ["type"], registry=r)
        self.runs = Counter(
            "deeplog_runs", "Job runs finished, by job and status", ["job", "status"], registry=r
        )
        self.duration = Histogram(
            "deeplog_run_duration_seconds",
            "Duration of job runs, by job",
            ["job"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.lag = Gauge(
            "deeplog_lag_seconds",
            "Seconds between the newest source document and the detection checkpoint after the last run "
            "that could tell",
            registry=r,
        )
        self.lag.set(float("nan"))  # unknown until a detection run can tell; 0 would say "caught up"
        self.leases = Gauge(
            "deeplog_partition_leases_held", "Job-state leases this process holds now", registry=r
        )
        self.leases.set(0)
        self.model = Info("deeplog_model", "The model version the last detection run used", registry=r)
        self.last_success = Gauge(
            "deeplog_last_success_timestamp_seconds",
            "End of the last ok run of each job (epoch s)",
            ["job"],
            registry=r,
        )
        self.pending = Gauge(
            "deeplog_run_documents_pending",
            "Run documents this process could not write yet (they go with the next run's)",
            registry=r,
        )
        self.up = Gauge("deeplog_up", "1 while the daemon runs", registry=r)

    def set_up(self, up: bool) -> None:
        self.up.set(1 if up else 0)

    def set_leases(self, held: Callable[[], float]) -> None:
        """`held()` is read at every scrape; it must be quick and must not raise."""
        self.leases.set_function(held)

    def observe(self, config: Config, summary: RunSummary, *, written: bool, pending: int) -> None:
        """Count one finished run of `config` (runs of other configurations in this process are not ours)."""
        if config_key(config) != self.key:
            return
        job = summary.job
        self.docs_read.labels(job).inc(summary.docs_read)
        self.docs_processed.labels(job).inc(summary.processed)
        for reason, n in summary.skipped.items():
            self.docs_skipped.labels(job, reason).inc(n)
        for kind, n in summary.anomalies.items():
            self.anomalies.labels(kind).inc(n)
        self.runs.labels(job, summary.status).inc()
        self.duration.labels(job).observe(summary.durations_ms.get("total", 0) / 1000)
        if job in _DETECT_JOBS:
            if summary.lag_seconds is not None:
                self.lag.set(summary.lag_seconds)
            if summary.model_version is not None:
                self.model.info({"version": summary.model_version})
        if summary.status == "ok":
            self.last_success.labels(job).set(time.time())
        self.pending.set(pending)
        if not written:
            log.debug("run %s counted before its run document could be written", summary.run_id)

    def generate(self) -> bytes:
        """The text exposition of this registry."""
        return generate_latest(self.registry)
