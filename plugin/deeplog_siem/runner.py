"""runner: the thin composition of the pipeline stages.

Contracts:
- `train(config, clients) -> TrainSummary`: raw logs (source) -> templates and keys (templater) -> sessions
  (sessions) -> key model (model) and, with `params.enabled`, the parameter model over each (previous key,
  key) series of parameter vectors (parammodel) -> a new published model version (artifacts).
- `run_once(config, clients) -> RunSummary`: new raw logs since the checkpoint (source) -> keys (templater,
  match-only) -> per-session windows with the tails carried over from earlier runs (sessions, detector) ->
  the events the key model accepts -> parameter model, each against the last vectors of its series, also
  carried across runs (parammodel) -> anomaly documents (anomaly) -> written and acknowledged (sink) ->
  checkpoint and tails saved (state), one bounded chunk at a time; then one run document in the runs index
  and one summary log line.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import traceback
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from . import gcpause, paramfeedback, sink
from .anomaly import EventRef, key_anomaly, parameter_anomaly, session_query
from .artifacts import KEYMODEL, PARAMMODEL, TEMPLATER, ModelStore
from .config import Config
from .detector import KeyDetector, KeyScores, Windows, build_windows, load_anchor
from .errors import DeeplogError
from .es import Clients
from .model import fingerprint, load_checkpoint, resolve_device, save_checkpoint, train_key_model, use_threads
from .parammodel import ParameterModel
from .prefetch import Prefetch
from .recent import RecentSample
from .samples import NORMAL_SAMPLE, build_normal_sample
from .sessions import SessionKeyer, SessionTracker, series_key
from .source import Source, SourceDoc, advance
from .state import JobState, load_state, prepare_state, save_state
from .templater import Templater
from .vocab import EOS, PAD, UNK
from .workflow import WORKFLOWS_FILE, WorkflowModel, concurrency_mask, concurrent_partners, diagnose
from .workflow_mining import mine_workflows, model_predictor

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
DETECT_JOB = "detect"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _quiet(_: str) -> None:
    pass


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
    # Feedback runs: documents by outcome (found, applied, reconciled, invalid, ...) and the update's figures.
    feedback: Counter[str] = field(default_factory=Counter)
    feedback_detail: dict[str, Any] = field(default_factory=dict)

    @property
    def anomalies_total(self) -> int:
        return sum(self.anomalies.values())

    def line(self) -> str:
        secs = self.durations_ms.get("total", 0) / 1000
        rate = self.docs_read / secs if secs else 0.0
        return (
            f"{self.job} run {self.run_id} {self.status}: {self.docs_read} docs read ({rate:.0f}/s), "
            f"{self.processed} processed, skipped {dict(self.skipped) or 0}, {self.sessions} sessions, "
            f"{self.anomalies_total} anomalies {dict(self.anomalies) or ''}, "
            f"{sum(self.rejected.values())} rejected writes, "
            + (f"{self.sessions_evicted} sessions evicted, " if self.sessions_evicted else "")
            + (f"lag {self.lag_seconds:.1f} s, " if self.lag_seconds is not None else "")
            + f"model {self.model_version}, {secs:.1f} s"
            + (f", feedback {dict(self.feedback)} {self.feedback_detail or ''}" if self.feedback else "")
            + (f", error: {self.error}" if self.error else "")
        )

    def document(self, index: str) -> dict[str, Any]:
        secs = self.durations_ms.get("total", 0) / 1000
        return {
            "_index": index,
            "_id": self.run_id,
            "@timestamp": _now(),
            "event": {"kind": "metric", "module": "deeplog", "dataset": "deeplog.run"},
            "deeplog": {
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
                    "duration_ms": dict(self.durations_ms),
                    "lag_seconds": self.lag_seconds,
                    "model_version": self.model_version,
                    **(
                        {"feedback": {**self.feedback, **self.feedback_detail}}
                        if self.feedback or self.feedback_detail
                        else {}
                    ),
                }
            },
            **({"error": {"message": self.error, "stack_trace": self.stack_trace}} if self.error else {}),
        }


class _Timer:
    def __init__(self, summary: RunSummary, stage: str) -> None:
        self.summary, self.stage = summary, stage

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.summary.durations_ms[self.stage] += int((time.perf_counter() - self.t0) * 1000)


# Run documents that could not be written (the server was away: often the very reason the run failed) wait
# here and go with the next run's document, so an outage still leaves its failed runs in the runs index.
# Bounded: a long outage keeps the latest ones.
_UNRECORDED: deque[dict[str, Any]] = deque(maxlen=1000)
_UNRECORDED_LOCK = threading.Lock()


def record_run(clients: Clients, config: Config, summary: RunSummary) -> None:
    """The run document and the one summary line; a failure to record is logged, never raised."""
    log.info("%s", summary.line())
    with _UNRECORDED_LOCK:
        batch = [*_UNRECORDED, summary.document(config.output.runs_index)]
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


@contextmanager
def _recorded(clients: Clients, config: Config, summary: RunSummary) -> Iterator[RunSummary]:
    """Time a run and record it, failed or not; a failure is re-raised after it is recorded."""
    t0 = time.perf_counter()
    try:
        yield summary
    except Exception as e:
        summary.status, summary.error, summary.stack_trace = "failed", str(e), traceback.format_exc()
        raise
    finally:
        summary.durations_ms["total"] = int((time.perf_counter() - t0) * 1000)
        record_run(clients, config, summary)


# ------------------------------------------------------------------------------------------------ train


@dataclass
class TrainSummary:
    version: str
    docs: int
    sessions: int
    templates: int
    skipped: dict[str, int]
    report: dict[str, Any]


def _events(
    docs: list[SourceDoc],
    templater: Templater,
    keyer: SessionKeyer,
    cfg: Config,
    learn: bool,
    skipped: Counter,
):
    """Parse one page: (doc, session id, parsed event) for every usable document; the rest counted."""
    messages = [d.get(cfg.source.message_field) for d in docs]
    before = Counter(templater.skipped)
    parsed = templater.parse_many(messages, learn=learn)
    skipped.update(templater.skipped - before)  # empty, not_string, binary: counted by the templater
    out = []
    for doc, msg, ev in zip(docs, messages, parsed, strict=True):
        if ev is None:
            continue
        sid = keyer.session_of(msg if isinstance(msg, str) else "", doc.source)
        if sid is None:
            skipped["no_session"] += 1
            continue
        out.append((doc, sid, ev))
    return out


def train(
    config: Config,
    clients: Clients,
    *,
    start: str | None = None,
    end: str | None = None,
    index: str | None = None,
    progress: Progress = _quiet,
) -> TrainSummary:
    summary = RunSummary(run_id=uuid.uuid4().hex, job="train", window_start=start, window_end=end)
    with _recorded(clients, config, summary):
        src_cfg = replace(config.source, index=index) if index else config.source
        source = Source(clients, src_cfg)
        templater = Templater(config.templater)
        keyer = SessionKeyer(config.source)
        sessions: dict[str, list[int]] = defaultdict(list)
        # Event times per session, for the workflow model's task split and typical step gaps.
        times: dict[str, list[float]] = defaultdict(list)
        skipped: Counter[str] = Counter()
        # Parameter vectors per (previous key, key) series, in reading (time) order; the gap needs each
        # session's last event time. A key id stays while Drain generalises its template, but its number of
        # numeric parameters may change then: the fit keeps each series' dominant vector length.
        series: dict[tuple[int, int], list[tuple[float, ...]]] = defaultdict(list)
        series_times: dict[tuple[int, int], list[float]] = defaultdict(list)  # for the shared load level
        last_seen: dict[str, tuple[int, float]] = {}
        with_params = config.params.enabled
        progress(f"reading training logs from {src_cfg.index} ...")
        for page in source.pages(start=start, end=end):
            summary.docs_read += len(page)
            for doc, sid, ev in _events(page, templater, keyer, config, True, skipped):
                sessions[sid].append(ev.key)
                ts = epoch_seconds(doc.get(src_cfg.timestamp_field))
                times[sid].append(ts if ts is not None else (times[sid][-1] if times[sid] else 0.0))
                if with_params:
                    if ts is None:
                        skipped["params_bad_timestamp"] += 1
                        continue
                    prev = last_seen.get(sid)
                    gap = 0.0 if prev is None else max(0.0, ts - prev[1])
                    series[(PAD if prev is None else prev[0], ev.key)].append((gap, *ev.numbers))
                    series_times[(PAD if prev is None else prev[0], ev.key)].append(ts)
                    last_seen[sid] = (ev.key, ts if prev is None else max(ts, prev[1]))
            if summary.docs_read % 20000 < len(page):
                progress(
                    f"  {summary.docs_read} documents, {len(sessions)} sessions, {templater.num_templates} templates"
                )
        if not sessions:
            raise DeeplogError(
                f"no usable training logs in {src_cfg.index} (skipped: {dict(skipped) or 'none'})"
            )
        progress(f"training the log-key model on {len(sessions)} sessions ({summary.docs_read} events) ...")
        training = list(sessions.values())
        model, report = train_key_model(training, len(templater.vocab), config.model, progress=progress)
        store = ModelStore(config.model.dir)
        version, path = store.create()
        templater.save(path / TEMPLATER)
        meta = {
            "fingerprint": fingerprint(training),
            "templater": f"{TEMPLATER}/templater.json",
            "source_index": src_cfg.index,
            "window": [start, end],
            "documents": summary.docs_read,
            "metrics": report.to_dict(),
        }
        progress("building workflow models ...")
        workflows = mine_workflows(
            training,
            templater.vocab.templates,
            times=[times[sid] for sid in sessions],
            predict=model_predictor(model),
            window=config.model.window,
        )
        workflows.save(path)
        meta["workflows"] = WORKFLOWS_FILE
        save_checkpoint(path / KEYMODEL, model, templater.vocab, meta)
        # Normal windows for the feedback job: replayed while fine-tuning, held out for its safety check.
        fb = config.feedback
        build_normal_sample(training, config.model, fb.replay_windows, fb.heldout_windows).save(
            path / NORMAL_SAMPLE
        )
        if with_params:
            progress(f"training the parameter model on {len(series)} (previous key, key) series ...")
            use_threads(config.model.threads)
            pm, p_report = ParameterModel.fit(series, config.params, series_times)
            pm.save(path / PARAMMODEL, meta={"model_version": version, "report": p_report.to_dict()})
            report = report.to_dict() | {"params": p_report.to_dict()}
        else:
            report = report.to_dict()
        store.publish(version)
        publish_workflows(clients, config, version, workflows)
        summary.model_version = version
        summary.sessions = len(sessions)
        summary.skipped = skipped
        return TrainSummary(
            version,
            summary.docs_read,
            len(sessions),
            templater.num_templates,
            dict(skipped),
            report,
        )


def publish_workflows(clients: Clients, config: Config, version: str, workflows: WorkflowModel) -> int:
    """Write one document per workflow of model `version` to the workflows index; returns how many."""
    docs = workflows.documents(config.output.workflows_index, version, _now())
    result = sink.write(clients, docs)
    if sum(result.rejected.values()):
        log.warning(
            "workflows index %s rejected %s documents", config.output.workflows_index, dict(result.rejected)
        )
    return len(docs)


def publish_current_workflows(clients: Clients, config: Config) -> str:
    """`setup`: (re)write the current model version's workflows to the workflows index; says what it did."""
    try:
        version, path = ModelStore(config.model.dir).current()
    except DeeplogError:
        return "workflows: no trained model yet (train writes them)"
    if not (path / WORKFLOWS_FILE).is_file():
        return f"workflows: model version {version} has none (train again to build them)"
    n = publish_workflows(clients, config, version, WorkflowModel.load(path))
    return f"workflows: {n} of model version {version} written to {config.output.workflows_index}"


# ----------------------------------------------------------------------------------------------- detect


def _tracker(config: Config, window: int, saved: dict[str, Any]) -> SessionTracker:
    kw = {
        "window": window,
        "param_depth": config.params.window,
        "idle_timeout_s": config.sessions.idle_timeout_seconds,
        "max_sessions": config.sessions.max_open,
        "ttl_s": config.sessions.ttl_seconds,
    }
    return SessionTracker.from_dict(saved, **kw) if saved else SessionTracker(**kw)


# Years 1..9999: what datetime (and so every timestamp the job writes) can represent.
_MIN_TS, _MAX_TS = -62135596800.0, 253402300799.0


def epoch_seconds(value: Any) -> float | None:
    """A document's timestamp as epoch seconds: ISO 8601 text or epoch milliseconds; None if unusable
    (wrong type, unparseable, or outside the years 1..9999)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        ts = float(value) / 1000.0
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            return None
        try:
            ts = (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
        except (OverflowError, ValueError):
            return None
    else:
        return None
    return ts if math.isfinite(ts) and _MIN_TS <= ts <= _MAX_TS else None


@dataclass
class Detection:
    """What a detection run needs loaded once: the current model version and its parts."""

    version: str
    templater: Templater
    detector: KeyDetector
    vocab: Any
    window: int
    top_g: int
    workflows: WorkflowModel | None = None  # None: a model version trained before workflow models
    params: ParameterModel | None = None  # None: params.enabled is off, or the version has no parameter model
    # key -> keys its workflow runs concurrently with (model.concurrency; empty without workflows)
    partners: dict[int, frozenset[int]] = field(default_factory=dict)
    # The windows scored, sampled for the feedback job's safety check (None: feedback.recent_windows is 0).
    recent: RecentSample | None = None

    def score(self, windows: Windows) -> KeyScores:
        """The key model's verdicts; the windows also feed the sample of recent traffic (one random draw per
        window, one scatter: no per-window loop)."""
        scores = self.detector.score(windows)
        if self.recent is not None:
            self.recent.offer_scored(windows)
        return scores

    @classmethod
    def load(cls, config: Config) -> Detection:
        version, path = ModelStore(config.model.dir).current()
        # Scoring runs in small batches beside the reader and writer threads: with threads 0 (auto) it uses
        # one torch thread, since OpenMP workers spinning between batches cost more CPU than they saved
        # (BENCHMARKS.md, bench pipeline: the job's CPU 2.9 s -> 1.3 s for 20k documents).
        use_threads(config.model.threads or 1)
        device = resolve_device(config.model.device)
        model, vocab, _meta = load_checkpoint(path / KEYMODEL)
        templater = Templater.load(path / TEMPLATER, config.templater)
        # A feedback version is scored against the trained model it descends from (`detector`: the anchor).
        anchor = load_anchor(path, model) if config.feedback.anchor_ratio > 0 else None
        detector = KeyDetector(
            model,
            top_g=config.model.top_g,
            device=device,
            cache_size=config.model.cache_size,
            min_probability=config.model.floor(model.args.vocab_size),
            anchor=anchor,
            anchor_ratio=config.feedback.anchor_ratio,
        )
        workflows = None
        if (path / WORKFLOWS_FILE).is_file():
            workflows = WorkflowModel.load(path)
        else:
            log.warning("model version %s has no workflow model: anomalies say so instead of a path", version)
        params = None
        if config.params.enabled:
            if (path / PARAMMODEL).is_file():
                params = ParameterModel.load(path / PARAMMODEL, device=device)
                # Thresholds responders' feedback widened (a file of the version, beside the model).
                params.threshold_scales = paramfeedback.load(path)
            else:
                log.warning(
                    "model version %s has no parameter model (trained with params.enabled off, or before it "
                    "existed): parameter anomalies are off until the next `deeplog-siem train`",
                    version,
                )
        recent = None
        if config.feedback.recent_windows:
            recent = RecentSample.load(
                config.model.dir, vocab, model.args.window, config.feedback.recent_windows
            )
        return cls(
            version,
            templater,
            detector,
            vocab,
            model.args.window,
            config.model.top_g,
            workflows,
            params,
            concurrent_partners(workflows) if config.model.concurrency else {},
            recent,
        )


def run_once(
    config: Config,
    clients: Clients,
    *,
    start: str | None = None,
    end: str | None = None,
    close_sessions: bool = False,
    detection: Detection | None = None,
    stop: threading.Event | None = None,
    progress: Progress = _quiet,
) -> RunSummary:
    """One detection pass over everything new since the checkpoint (or over [start, end) for a backfill)."""
    summary = RunSummary(run_id=uuid.uuid4().hex, job=DETECT_JOB, window_start=start, window_end=end)
    with _recorded(clients, config, summary):
        det = detection or Detection.load(config)
        summary.model_version = det.version
        backfill = start is not None or end is not None
        state = load_state(
            clients, config.output.state_index, DETECT_JOB if not backfill else f"{DETECT_JOB}-backfill"
        )
        if backfill:
            state.checkpoint, state.sessions = None, {}
        tracker = _tracker(config, det.window, state.sessions)
        keyer = SessionKeyer(config.source)
        source = Source(clients, config.source)
        chunk = _Chunk()
        seen_sessions: set[str] = set()
        # Read ahead about one scoring batch, so the reader keeps going while a batch is scored.
        depth = max(2, SCORE_BATCH // config.source.page_size + 1)
        pages = Prefetch(
            source.pages(state.checkpoint, start=start, end=end), depth=depth, name="deeplog-source"
        )
        writer = sink.BackgroundWriter(clients)
        # The collector's full passes over a chunk's live documents cost a third of the job's CPU (gcpause).
        collect_due = False
        with gcpause.paused():
            try:
                while True:
                    if len(chunk.pending_rows) >= IDLE_SCORE_BATCH and not pages.ready():
                        # The reader is behind: score what is pending instead of waiting, so less is left to
                        # score after the last page (that tail is not overlapped with reading).
                        _score_pending(config, det, tracker, chunk, summary, writer)
                    # Time spent waiting for a page, not reading in the background.
                    with _Timer(summary, "read"):
                        page = pages.next()
                    if page is None:
                        break
                    if collect_due:
                        gcpause.collect()
                        collect_due = False
                    _score_page(config, det, tracker, keyer, page, chunk, summary, seen_sessions, writer)
                    if len(chunk.docs) >= config.schedule.chunk_size:
                        _commit_chunk(
                            config, clients, det, tracker, state, chunk, summary, False, source, writer
                        )
                        progress(
                            f"  {summary.docs_read} documents, {summary.anomalies_total} anomalies so far"
                        )
                        chunk = _Chunk()
                        # The committed chunk's cycles, if any, are reclaimed once another page comes (memory
                        # stays bounded per chunk); a run that ends here leaves them to the collector.
                        collect_due = True
                        if stop is not None and stop.is_set():
                            summary.status = "stopped"
                            break
                pages.close()
                _commit_chunk(
                    config,
                    clients,
                    det,
                    tracker,
                    state,
                    chunk,
                    summary,
                    close_sessions,
                    source,
                    writer,
                    saved=summary.docs_read > 0,
                )
            finally:
                pages.close()
                writer.close()
        _save_recent(config, det)
        summary.sessions = len(seen_sessions)
        summary.sessions_evicted = tracker.stats["evicted_lru"]
        if not backfill:
            summary.lag_seconds = _lag(source, state.checkpoint)
        if tracker.stats["evicted_lru"]:
            log.warning(
                "%s open sessions evicted (sessions.max_open=%s): their end was not scored",
                tracker.stats["evicted_lru"],
                config.sessions.max_open,
            )
        return summary


def _save_recent(config: Config, det: Detection) -> None:
    """Persist the sample of scored windows for the feedback job; failing to is logged, never fatal (the
    anomalies and the checkpoint are committed already)."""
    if det.recent is None or not det.recent.changed:
        return
    try:
        det.recent.save(config.model.dir)
    except OSError as e:
        log.warning("could not save the sample of recent windows in %s: %s", config.model.dir, e)


def _lag(source: Source, checkpoint: Any) -> float | None:
    """How far the checkpoint is behind the newest readable document; a failed lookup is logged, not fatal."""
    done = checkpoint.sort[0] if checkpoint is not None else None
    if not isinstance(done, (int, float)):
        return None
    try:
        newest = source.newest(after=checkpoint)
    except Exception as e:  # noqa: BLE001 - the lag is informative; it must not fail a committed run
        log.warning("could not look up the newest document of %s: %s", source.cfg.index, e)
        return None
    if newest is None:
        return 0.0  # nothing from the checkpoint on (its own document deleted): nothing left to read either
    if not isinstance(newest, (int, float)):
        return None
    return round(max(0.0, (float(newest) - float(done)) / 1000.0), 3)


@dataclass
class _Chunk:
    """One bounded chunk in progress: scored page by page, committed (written, checkpointed) as a whole."""

    docs: list[SourceDoc] = field(default_factory=list)
    anomalies: list[dict[str, Any]] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    processed: int = 0
    first: float | None = None
    newest: float | None = None
    # Templated and observed events not scored yet: scoring waits for SCORE_BATCH of them, because every
    # forward pass has a fixed shape and a page's few hundred new windows would cost a whole pass.
    pending_rows: list[tuple[SourceDoc, str, Any, float]] = field(default_factory=list)
    pending_observed: list[Any] = field(default_factory=list)


SCORE_BATCH = 8192
# While no page is ready, pending events are scored once at least this many wait (smaller batches cost more
# per event; none at all would leave a whole SCORE_BATCH to score after the last page).
IDLE_SCORE_BATCH = 2048


def _score_page(
    config: Config,
    det: Detection,
    tracker: SessionTracker,
    keyer: SessionKeyer,
    docs: list[SourceDoc],
    chunk: _Chunk,
    summary: RunSummary,
    seen: set[str],
    writer: sink.BackgroundWriter,
) -> None:
    """Template one page and observe its events into `chunk`; score once enough are pending (nothing is
    written or checkpointed here)."""
    src = config.source
    chunk.docs.extend(docs)
    rows = []
    with _Timer(summary, "template"):
        for doc, sid, ev in _events(
            docs, det.templater, keyer, config, config.templater.learn_at_detection, chunk.skipped
        ):
            ts = epoch_seconds(doc.get(src.timestamp_field))
            if ts is None:
                chunk.skipped["bad_timestamp"] += 1
                continue
            rows.append((doc, sid, ev, ts))
        if not rows:
            return
        observed = tracker.observe_many(
            [r[1] for r in rows],
            [r[2].key for r in rows],
            [r[2].numbers for r in rows],
            [r[3] for r in rows],
            refs=[f"{r[0].index}/{r[0].id}" for r in rows],
        )
        seen.update(r[1] for r in rows)
        lo, hi = min(r[3] for r in rows), max(r[3] for r in rows)
        chunk.processed += len(rows)
        chunk.first = lo if chunk.first is None else min(chunk.first, lo)
        chunk.newest = hi if chunk.newest is None else max(chunk.newest, hi)
    chunk.pending_rows.extend(rows)
    chunk.pending_observed.extend(observed)
    if len(chunk.pending_rows) >= SCORE_BATCH:
        _score_pending(config, det, tracker, chunk, summary, writer)


def _score_pending(
    config: Config,
    det: Detection,
    tracker: SessionTracker,
    chunk: _Chunk,
    summary: RunSummary,
    writer: sink.BackgroundWriter,
) -> None:
    """Score the pending events; their anomalies go to the writer at once (ids are deterministic, so a
    chunk that fails later and is read again just overwrites them)."""
    rows, observed = chunk.pending_rows, chunk.pending_observed
    chunk.pending_rows, chunk.pending_observed = [], []
    if not rows:
        return
    with _Timer(summary, "detect"):
        # One short sequence per event: its history (carried across runs by the tracker) + itself.
        seqs = [(*o.history, r[2].key) for o, r in zip(observed, rows, strict=True)]
        windows = build_windows(seqs, det.window, context=[len(o.history) for o in observed], add_eos=False)
        scores = det.score(windows)
        # A concurrent step's first occurrence is accepted whatever its order (model.concurrency).
        flagged = scores.anomalous & ~concurrency_mask(windows.keys, windows.targets, det.partners)
        found = []
        for i in flagged.nonzero().flatten().tolist():
            doc, sid, ev, ts = rows[int(windows.session[i])]
            o = observed[int(windows.session[i])]
            found.append(
                _anomaly(
                    config,
                    det,
                    summary,
                    scores,
                    windows,
                    i,
                    doc,
                    sid,
                    ev.params,
                    o.position,
                    ts,
                    history=o.history,
                    gap_s=None if o.first else o.vector[0],
                )
            )
        if det.params is not None:
            # Only what the key model accepts goes on (DeepLog): a flagged event is one anomaly already, and
            # its vector would teach the series' history a path the model does not know.
            rejected = set(windows.session[flagged].tolist())
            accepted = [j for j in range(len(rows)) if j not in rejected and rows[j][2].key != UNK]
            if accepted:
                found += _score_params(config, det, tracker, summary, rows, observed, accepted)
    # One write per scoring pass, key and parameter anomalies together: each bulk request costs the server
    # (the embedded one stalls for a fifth of a second or more on every tenth bulk request to an index).
    chunk.anomalies.extend(found)
    writer.submit(found)


def _score_params(
    config: Config,
    det: Detection,
    tracker: SessionTracker,
    summary: RunSummary,
    rows: list[tuple[SourceDoc, str, Any, float]],
    observed: list[Any],
    accepted: list[int],
) -> list[dict[str, Any]]:
    """Parameter vectors of the accepted events, each against the last vectors of its (previous key, key)
    series (carried across runs by the tracker), scored in one batch: one forward per series group."""
    assert det.params is not None
    src = config.source
    series = [series_key(observed[j], rows[j][2].key) for j in accepted]
    vectors = [observed[j].vector for j in accepted]
    histories = tracker.param_history.take(series, vectors)
    # The shared load level continues across runs with the session tails, like the series' histories.
    levels = det.params.levels(series, vectors, [rows[j][3] for j in accepted], tracker.param_level)
    ps = det.params.score(series, histories, vectors, levels)
    found = []
    for n in ps.anomalous.nonzero().flatten().tolist():
        j = accepted[n]
        doc, sid, ev, ts = rows[j]
        o = observed[j]
        # Which step was slow against its usual gap in the session's workflow (or why no workflow applies).
        where = diagnose(
            det.workflows,
            list(o.history),
            ev.key,
            gap_s=o.vector[0],
            template_of=det.vocab.template,
            timing=True,
        )
        found.append(
            parameter_anomaly(
                event=_event_ref(src, doc, ts),
                session_id=sid,
                position=int(o.position),
                window=o.history,
                key=ev.key,
                params=ev.params,
                dims=ps.dims[n],
                observed=ps.observed[n],
                predicted=ps.predicted[n],
                low=ps.low[n],
                high=ps.high[n],
                error=float(ps.error[n]),
                threshold=ps.threshold[n],
                vocab=det.vocab,
                model_version=det.version,
                run_id=summary.run_id,
                query=session_query(src.session_field, sid, src.message_field),
                index=config.output.anomalies_index,
                workflow=where.fields(),
            )
        )
    return found


def _commit_chunk(
    config: Config,
    clients: Clients,
    det: Detection,
    tracker: SessionTracker,
    state: JobState,
    chunk: _Chunk,
    summary: RunSummary,
    close_all: bool,
    source: Source,
    writer: sink.BackgroundWriter,
    saved: bool = False,
) -> None:
    """Score the sessions the chunk ended, write its anomalies, then (only then) save checkpoint and tails.
    `saved`: this run has saved the state already, so an empty chunk that closes no session has nothing to
    save (the last page filled the previous chunk)."""
    src = config.source
    _score_pending(config, det, tracker, chunk, summary, writer)
    # With no new events, event time stands still: only the wall-clock TTL can close sessions then.
    if close_all:
        closed = tracker.close_all()
    else:
        closed = tracker.close_idle(chunk.newest if chunk.newest is not None else float("-inf"))
    if saved and not closed and not chunk.docs and not chunk.anomalies:
        return
    if closed:
        with _Timer(summary, "detect"):
            seqs = [tuple(t.keys) for _, t in closed]
            windows = build_windows(seqs, det.window, context=[len(q) for q in seqs], add_eos=True)
            scores = det.score(windows)
            ended = []
            for i in scores.anomalous.nonzero().flatten().tolist():
                sid, tail = closed[int(windows.session[i])]
                index, _, doc_id = tail.last_ref.partition("/")
                ref = SourceDoc(index, f"{doc_id}#end", (), {src.timestamp_field: _iso(tail.last_ts)})
                ended.append(
                    _anomaly(
                        config,
                        det,
                        summary,
                        scores,
                        windows,
                        i,
                        ref,
                        sid,
                        (),
                        tail.count,
                        history=tuple(tail.keys),
                    )
                )
        chunk.anomalies.extend(ended)
        writer.submit(ended)
    with _Timer(summary, "write"):  # waiting for the writes still in flight, then the state
        # The new state is built (checkpoint, packed tails) while the last writes are in flight: after the
        # last page this wait is the job's tail, not overlapped with any reading.
        nxt = JobState(
            state.job,
            advance(state.checkpoint, chunk.docs, source.overlap_ms),
            tracker.to_dict(),
            det.version,
        )
        prepared = prepare_state(nxt)
        result = writer.flush()
        # Only now, with every anomaly acknowledged, may the checkpoint move past these documents.
        state.checkpoint, state.sessions, state.model_version = (
            nxt.checkpoint,
            nxt.sessions,
            nxt.model_version,
        )
        save_state(clients, config.output.state_index, state, prepared)
    # Committed: the chunk counts in the summary (a chunk that fails before this is read again next run).
    summary.docs_read += len(chunk.docs)
    summary.processed += chunk.processed
    summary.skipped.update(chunk.skipped)
    summary.rejected.update(result.rejected)
    for a in chunk.anomalies:
        summary.anomalies[a["deeplog"]["anomaly_type"]] += 1
    if chunk.first is not None and chunk.newest is not None:
        summary.window_start = summary.window_start or _iso(chunk.first)
        summary.window_end = _iso(chunk.newest)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _event_ref(src: Any, doc: SourceDoc, ts: float | None) -> EventRef:
    """The raw event an anomaly is about; the timestamp normalised to ISO (the source may hold epoch millis
    or text the anomaly mapping would refuse), message and host only when they are strings."""
    msg, host = doc.get(src.message_field), doc.get(src.host_field)
    return EventRef(
        doc.index,
        doc.id,
        _iso(ts) if ts is not None else doc.get(src.timestamp_field),
        msg if isinstance(msg, str) else "",
        host if isinstance(host, str) else None,
    )


def _anomaly(
    config,
    det,
    summary,
    scores,
    windows,
    i,
    doc: SourceDoc,
    sid,
    params,
    position,
    ts: float | None = None,
    *,
    history: tuple[int, ...] = (),
    gap_s: float | None = None,
) -> dict[str, Any]:
    src = config.source
    target = int(windows.targets[i])
    # Where the session left its workflow (or why no workflow applies): the tracker's history of the session.
    where = diagnose(
        det.workflows, list(history), target, gap_s=gap_s, template_of=det.vocab.template
    ).fields()
    kind = "unseen_key" if bool(scores.unseen[i]) else ("session_end" if target == EOS else "log_key")
    return key_anomaly(
        anomaly_type=kind,
        event=_event_ref(src, doc, ts),
        session_id=sid,
        position=int(position),
        window=windows.keys[i].tolist(),
        actual=target,
        probability=float(scores.prob[i]),
        rank=int(scores.rank[i]),
        expected=list(zip(scores.topk_keys[i].tolist(), scores.topk_probs[i].tolist(), strict=True)),
        params=params,
        vocab=det.vocab,
        model_version=det.version,
        run_id=summary.run_id,
        query=session_query(src.session_field, sid, src.message_field),
        top_g=det.top_g,
        index=config.output.anomalies_index,
        min_probability=det.detector.min_probability,
        workflow=where,
        anchor_probability=float(scores.anchor_prob[i]) if bool(scores.anchored[i]) else None,
    )
