"""runs: the summary of one job run, its run document and its one summary log line.

Contract: `RunSummary` holds a run's figures (documents read, processed and skipped by reason, sessions,
anomalies by type, rejected writes, documents already written by an earlier run, stage durations, window,
lag, model version, error; for detection the checkpoint before and after, and with partitions which one,
the worker and the documents without a partition key); `document(index, job_name=)`
-> the run document (`deeplog.run.*`, README "Run documents"; `deeplog.job`: the `job.name` of the
configuration that ran it), `line()` -> the summary log line.
`extra_fields()` and `extra_line()` are what a job adds of its own (the feedback job's figures: see
`feedback.FeedbackSummary`). `record_run(clients, config, summary)` writes the document and logs the line;
a failure to record is logged, never raised, and the document waits to go with the next run's.
`add_observer(fn)` / `remove_observer(fn)`: `fn(config, summary, written=, pending=)` is called for every run
`record_run` records, after its write was tried (`metrics`, `health`); an observer that raises is logged.
`recorded(clients, config, summary)` is the context manager every job runs inside: it times the run and
records it, failed or not; a failure is recorded with its message and stack trace, then re-raised. A run
that ends without an error but with documents the server refused for good is `degraded`, never `ok`; a run
that lost its job state to another process (`StateConflict`) is `conflict`; a job that ended at a safe point
on a stop request (`JobStopped`) is `stopped`; both are re-raised.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from . import sink
from .config import DEFAULT_JOB, Config
from .errors import JobStopped, StateConflict
from .es import Clients
from .timefmt import utc_now

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    run_id: str
    job: str
    status: str = "ok"
    # Counts cover committed chunks only (anomalies written, checkpoint saved): a chunk a failed run could
    # not commit is read again by the next run, so summing docs_read over runs counts every document once.
    docs_read: int = 0
    processed: int = 0  # documents scored; docs_read == processed + sum(skipped)
    skipped: Counter[str] = field(default_factory=Counter)
    sessions: int = 0
    anomalies: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    # Anomalies found again (a backfill, a re-read chunk) whose document existed: kept, verdicts and all.
    already_written: int = 0
    durations_ms: Counter[str] = field(default_factory=Counter)
    window_start: Any = None
    window_end: Any = None
    # Seconds between the newest document in the source index and the checkpoint after this run (0 = caught
    # up); None when unknown (backfills, non-date order fields, or the lookup failed).
    lag_seconds: float | None = None
    sessions_evicted: int = 0  # open sessions dropped by sessions.max_open: their end was not scored
    model_version: str | None = None
    error: str | None = None
    stack_trace: str | None = None
    # Detection: the checkpoint's sort values before and after the run (None: none yet), so the runs of a
    # state can be checked to tile the source; with partitions, which one (index, count) and which worker.
    checkpoint_from: list[Any] | None = None
    checkpoint_to: list[Any] | None = None
    partition: tuple[int, int] | None = None
    worker: str | None = None
    docs_unpartitioned: int = 0  # read without a usable partition key (partition 0 reads them all)
    docs_other_partition: int = 0  # read by this partition's range but another partition's (not counted)

    @property
    def anomalies_total(self) -> int:
        return sum(self.anomalies.values())

    def extra_fields(self) -> dict[str, Any]:
        """A job's own fields of `deeplog.run` (none here)."""
        return {}

    def extra_line(self) -> str:
        """A job's own part of the summary line, before the error (none here)."""
        return ""

    def line(self) -> str:
        secs = self.durations_ms.get("total", 0) / 1000
        rate = self.docs_read / secs if secs else 0.0
        return (
            f"{self.job} run {self.run_id}{self._where()} {self.status}: {self.docs_read} docs read ({rate:.0f}/s), "
            f"{self.processed} processed, skipped {dict(self.skipped) or 0}, {self.sessions} sessions, "
            f"{self.anomalies_total} anomalies {dict(self.anomalies) or ''}, "
            f"{sum(self.rejected.values())} rejected writes, "
            + (f"{self.already_written} already written, " if self.already_written else "")
            + (f"{self.sessions_evicted} sessions evicted, " if self.sessions_evicted else "")
            + (f"lag {self.lag_seconds:.1f} s, " if self.lag_seconds is not None else "")
            + f"model {self.model_version}, {secs:.1f} s"
            + self.extra_line()
            + (f", error: {self.error}" if self.error else "")
        )

    def document(self, index: str, *, job_name: str = DEFAULT_JOB) -> dict[str, Any]:
        secs = self.durations_ms.get("total", 0) / 1000
        return {
            "_index": index,
            "_id": self.run_id,
            "@timestamp": utc_now(),
            "event": {"kind": "metric", "module": "deeplog", "dataset": "deeplog.run"},
            "deeplog": {
                "job": job_name,
                "run": {
                    "id": self.run_id,
                    "job": self.job,
                    "status": self.status,
                    "window_start": self.window_start,
                    "window_end": self.window_end,
                    "docs_read": self.docs_read,
                    "docs_processed": self.processed,
                    "docs_per_s": round(self.docs_read / secs, 1) if secs else 0.0,
                    "skipped": dict(self.skipped),
                    "sessions": self.sessions,
                    "sessions_evicted": self.sessions_evicted,
                    "anomalies": dict(self.anomalies),
                    "anomalies_total": self.anomalies_total,
                    "bulk_failures": sum(self.rejected.values()),
                    "already_written": self.already_written,
                    "duration_ms": dict(self.durations_ms),
                    "lag_seconds": self.lag_seconds,
                    "model_version": self.model_version,
                    **self._detection_fields(),
                    **self.extra_fields(),
                },
            },
            **({"error": {"message": self.error, "stack_trace": self.stack_trace}} if self.error else {}),
        }

    def _where(self) -> str:
        """Which partition, on which worker, for a partitioned detection run."""
        if self.partition is None:
            return ""
        return f" (partition {self.partition[0]} of {self.partition[1]}, worker {self.worker})"

    def _detection_fields(self) -> dict[str, Any]:
        if self.job != "detect":
            return {}
        out: dict[str, Any] = {"checkpoint_from": self.checkpoint_from, "checkpoint_to": self.checkpoint_to}
        if self.partition is not None:
            out["partition"] = {"id": self.partition[0], "of": self.partition[1]}
            out["worker"] = self.worker
            out["docs_unpartitioned"] = self.docs_unpartitioned
            out["docs_other_partition"] = self.docs_other_partition
        return out


class Timer:
    """Adds the time spent inside it to `summary.durations_ms[stage]`."""

    def __init__(self, summary: RunSummary, stage: str) -> None:
        self.summary, self.stage = summary, stage

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.summary.durations_ms[self.stage] += int((time.perf_counter() - self.t0) * 1000)


# Run documents that could not be written (the server was away: often the very reason the run failed) wait
# here and go with the next run's document, so an outage still leaves its failed runs in the runs index.
# Bounded: a long outage keeps the latest ones.
_UNRECORDED: deque[dict[str, Any]] = deque(maxlen=1000)
_UNRECORDED_LOCK = threading.Lock()


Observer = Callable[..., None]
_OBSERVERS: list[Observer] = []


def add_observer(fn: Observer) -> None:
    """Call `fn(config, summary, written=, pending=)` for every run recorded from now on."""
    with _UNRECORDED_LOCK:
        _OBSERVERS.append(fn)


def remove_observer(fn: Observer) -> None:
    with _UNRECORDED_LOCK:
        if fn in _OBSERVERS:
            _OBSERVERS.remove(fn)


def _notify(config: Config, summary: RunSummary, *, written: bool) -> None:
    with _UNRECORDED_LOCK:
        observers, pending = list(_OBSERVERS), len(_UNRECORDED)
    for fn in observers:
        try:
            fn(config, summary, written=written, pending=pending)
        except Exception:  # noqa: BLE001 - an observer must not turn a finished run into a failure
            log.exception("run %s: an observer of finished runs failed", summary.run_id)


def record_run(clients: Clients, config: Config, summary: RunSummary) -> None:
    """The run document and the one summary line; a failure to record is logged, never raised."""
    name = config.job.name
    log.info("%s%s", "" if name == DEFAULT_JOB else f"job {name}: ", summary.line())
    with _UNRECORDED_LOCK:
        batch = [*_UNRECORDED, summary.document(config.output.runs_index, job_name=name)]
        _UNRECORDED.clear()
    try:
        sink.write(clients, batch, attempts=2, backoff_s=0.5)
    except Exception as e:  # noqa: BLE001 - recording must not turn a finished run into a failure
        with _UNRECORDED_LOCK:
            _UNRECORDED.extendleft(reversed(batch))
        log.warning(
            "could not record run %s in %s (kept to write with the next run): %s",
            summary.run_id,
            config.output.runs_index,
            e,
        )
        _notify(config, summary, written=False)
        return
    _notify(config, summary, written=True)


@contextmanager
def recorded(clients: Clients, config: Config, summary: RunSummary) -> Iterator[RunSummary]:
    """Time a run and record it, failed or not; a failure is re-raised after it is recorded. A run ended by
    what is not an error (Ctrl-C, SystemExit) is recorded `interrupted` and re-raised, so its run document
    does not say `ok` for work it did not finish."""
    t0 = time.perf_counter()
    try:
        yield summary
        if summary.status == "ok" and summary.rejected:
            summary.status = "degraded"
    except JobStopped:
        # Not a failure: nothing is wrong, and the next run does the work (as a detection run ended by stop).
        summary.status = "stopped"
        raise
    except StateConflict as e:
        summary.status, summary.error, summary.stack_trace = "conflict", str(e), None
        raise
    except Exception as e:
        summary.status, summary.error, summary.stack_trace = "failed", str(e), traceback.format_exc()
        raise
    except BaseException as e:
        summary.status, summary.error = "interrupted", str(e) or type(e).__name__
        summary.stack_trace = traceback.format_exc()
        raise
    finally:
        summary.durations_ms["total"] = int((time.perf_counter() - t0) * 1000)
        record_run(clients, config, summary)
