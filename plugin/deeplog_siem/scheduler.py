"""scheduler: the `deeplog-siem run` daemon.

Contract: `run_daemon(config, clients, stop)` runs the jobs of the `schedule` section with APScheduler 3
until `stop` is set (the CLI sets it on SIGTERM/SIGINT): detection every `detect_interval_seconds`, the
feedback job (`feedback.apply_feedback`) every `feedback_interval_seconds`, and retraining on `retrain_cron`
when configured. One instance of each job at a time, missed runs coalesced,
`misfire_grace_seconds` of tolerance, a warning when a run takes longer than its interval. A failed run is
recorded in the runs index (`runs.recorded`) and logged here; the daemon keeps going. On stop, a detection run
finishes the chunk it is in (its anomalies written and its checkpoint saved) and ends; retraining and the
feedback job end at their next safe point (`stopping`) without publishing a model version, recorded
`stopped`. Retraining logs its progress (one line per epoch). While it runs, `health.serve` answers
`/healthz` and `/metrics` on `health.listen`; a port it cannot bind stops the daemon before it starts.

With `workers.partitions` > 1 the detection job is one worker of a pool (`membership`): each run renews this
worker's heartbeat, works out its share of the partitions among the live workers and runs each of them
whose lease it can take (`runner.run_partition`); a partition another worker still holds is tried again
at the next run. The leases it holds are the `deeplog_partition_leases_held` metric (`state.leases_held`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from . import health
from .artifacts import ModelStore
from .config import Config
from .cron import parse_cron
from .errors import JobStopped
from .es import Clients
from .membership import Membership, release_writer, take_writer, worker_id
from .partitions import Partition
from .runner import Detection, run_once, run_partition

log = logging.getLogger(__name__)


class DetectJob:
    """Detection as a scheduled job: keeps the loaded model until a new version is published."""

    def __init__(self, config: Config, clients: Clients, stop: threading.Event) -> None:
        self.config, self.clients, self.stop = config, clients, stop
        self.detection: Detection | None = None
        self.worker_id = worker_id(config)
        partitioned = config.workers.partitions > 1
        self.membership = Membership(clients, config, stop) if partitioned else None
        self.assigned: list[int] = []  # this worker's partitions at its last run
        # When the detection run in progress last committed a chunk (None: no run in progress): a run
        # working through a long backlog finishes only at its end, and `/healthz` must tell it from a
        # stuck one.
        self._committed_at: float | None = None

    def last_commit(self) -> float | None:
        """When the detection run in progress last committed a chunk (epoch seconds; its start until its first
        commit), None while no detection run is in progress."""
        return self._committed_at

    def _committed(self, _message: str) -> None:
        self._committed_at = time.time()

    def close(self) -> None:
        """Leave the pool (the heartbeat is deleted, so the others take this worker's partitions at once)."""
        if self.membership is not None:
            self.membership.leave()

    def __call__(self) -> None:
        t0 = time.monotonic()
        self._committed_at = time.time()
        try:
            self._detect()
        finally:
            self._committed_at = None
        elapsed = time.monotonic() - t0
        if elapsed > self.config.schedule.detect_interval_seconds:
            log.warning(
                "detection run took %.1f s, longer than its interval of %s s: runs are falling behind",
                elapsed,
                self.config.schedule.detect_interval_seconds,
            )

    def _detect(self) -> None:
        try:
            version, _ = ModelStore(self.config.model.dir).current()
            if self.detection is None or self.detection.version != version:
                self.detection = Detection.load(self.config)
                log.info("detection uses model version %s", version)
        except Exception:  # noqa: BLE001 - run_once loads it again and records why it cannot
            self.detection = None
        try:
            if self.membership is None:
                run_once(
                    self.config,
                    self.clients,
                    detection=self.detection,
                    stop=self.stop,
                    progress=self._committed,
                )
            else:
                self._run_partitions(self.membership)
        except Exception as e:  # noqa: BLE001 - recorded by runs.recorded; the schedule must go on
            log.error("detection run failed: %s", e)

    def _run_partitions(self, membership: Membership) -> None:
        membership.beat()
        membership.start()
        live = membership.live()
        mine = membership.assigned(live)
        if mine != self.assigned:
            log.info(
                "worker %s runs partitions %s of %s (%s live workers)",
                self.worker_id,
                mine,
                self.config.workers.partitions,
                len(live),
            )
        self.assigned = mine
        cfg = self.config.workers
        for index in mine:
            if self.stop.is_set():
                break
            try:
                run_partition(
                    self.config,
                    self.clients,
                    partition=Partition(index, cfg.partitions, cfg.partition_field),
                    worker=self.worker_id,
                    detection=self.detection,
                    stop=self.stop,
                    progress=self._committed,
                )
            except Exception as e:  # noqa: BLE001 - recorded by runs.recorded; the other partitions go on
                log.error("detection run of partition %s of %s failed: %s", index, cfg.partitions, e)


def retrain_job(config: Config, clients: Clients) -> None:
    _as_sole_writer(config, clients, "retrain", _retrain)


def _retrain(config: Config, clients: Clients) -> None:
    from .retrain import retrain  # imports torch training code only when the job runs

    try:
        summary = retrain(config, clients, progress=lambda m: log.info("retraining: %s", m.strip()))
        log.info(
            "retraining %s: model version %s from %s sessions",
            summary.status,
            summary.model_version,
            summary.sessions,
        )
    except JobStopped as e:
        log.info("%s; the current model version is kept", e)
    except Exception as e:  # noqa: BLE001 - recorded by runs.recorded; the schedule must go on
        log.error("retraining failed: %s", e)


def feedback_job(config: Config, clients: Clients) -> None:
    _as_sole_writer(config, clients, "feedback", _feedback)


def _as_sole_writer(
    config: Config, clients: Clients, what: str, job: Callable[[Config, Clients], None]
) -> None:
    """Run `job`; with several workers, only while this one holds the pool's lease on `what`
    (`membership.take_writer`): the others skip that run, logged."""
    if config.workers.partitions <= 1:
        job(config, clients)
        return
    try:
        held = take_writer(clients, config, what)
    except Exception as e:  # noqa: BLE001 - the schedule must go on; the next run tries again
        log.error("%s not run: could not take its lease: %s", what, e)
        return
    if held is None:
        return
    try:
        job(config, clients)
    finally:
        release_writer(clients, config, held)


def _feedback(config: Config, clients: Clients) -> None:
    from .feedback import apply_feedback  # imports torch training code only when the job runs

    try:
        apply_feedback(config, clients)
    except JobStopped as e:
        log.info("%s; the feedback documents stay pending for the next run", e)
    except Exception as e:  # noqa: BLE001 - recorded by runs.recorded; the schedule must go on
        log.error("feedback run failed: %s", e)


def build_scheduler(config: Config, clients: Clients, stop: threading.Event) -> BackgroundScheduler:
    sched = BackgroundScheduler(
        timezone=UTC,
        job_defaults={
            "coalesce": True,
            "max_instances": 1,
            "misfire_grace_time": config.schedule.misfire_grace_seconds,
        },
    )
    sched.add_job(
        DetectJob(config, clients, stop),
        IntervalTrigger(seconds=config.schedule.detect_interval_seconds),
        id="detect",
        name="detect",
        next_run_time=datetime.now(UTC),
    )
    sched.add_job(
        feedback_job,
        IntervalTrigger(seconds=config.schedule.feedback_interval_seconds),
        args=(config, clients),
        id="feedback",
        name="feedback",
    )
    if config.schedule.retrain_cron:
        sched.add_job(
            retrain_job,
            # crontab's semantics (weekday 0 is Sunday), not `CronTrigger.from_crontab`'s (0 is Monday).
            parse_cron(config.schedule.retrain_cron, "schedule.retrain_cron").trigger(UTC),
            args=(config, clients),
            id="retrain",
            name="retrain",
        )

    def on_skip(event: JobExecutionEvent) -> None:
        log.warning(
            "job %s: a run was skipped because the previous one is still running or missed", event.job_id
        )

    sched.add_listener(on_skip, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
    return sched


def run_daemon(config: Config, clients: Clients, stop: threading.Event) -> None:
    sched = build_scheduler(config, clients, stop)
    detect = sched.get_job("detect").func
    endpoint = health.serve(config, alive=lambda: sched.running, progress=detect.last_commit)
    try:
        sched.start()
    except BaseException:
        if endpoint is not None:
            endpoint.close()
        raise
    log.info(
        "deeplog-siem running: detection every %s s, feedback every %s s%s; stop with SIGTERM or Ctrl-C",
        config.schedule.detect_interval_seconds,
        config.schedule.feedback_interval_seconds,
        f", retraining on '{config.schedule.retrain_cron}'" if config.schedule.retrain_cron else "",
    )
    try:
        stop.wait()
    finally:
        log.info("stopping: waiting for the running job to finish its chunk")
        sched.shutdown(wait=True)
        _leave(sched)
        if endpoint is not None:
            endpoint.close()


def _leave(sched: BackgroundScheduler) -> None:
    detect = sched.get_job("detect")
    if detect is not None and isinstance(detect.func, DetectJob):
        detect.func.close()
