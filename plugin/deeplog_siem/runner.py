"""runner: the thin composition of the pipeline stages.

Contracts:
- `train(config, clients) -> TrainSummary`: raw logs (source) -> templates and keys (templater) -> sessions
  (sessions) -> key model (model) and, with `params.enabled`, the parameter model over each (previous key,
  key) series of parameter vectors (parammodel) -> a new published model version (artifacts).
  `train_version(job, TrainRequest)` is its body inside a caller's run: a span, the sessions to leave out
  (dropped before templating), and whether to publish (the scheduled retraining checks a candidate first).
- `run_once(config, clients) -> RunSummary`: new raw logs since the checkpoint (source) -> keys (templater,
  match-only) -> per-session windows with the tails carried over from earlier runs (sessions, detector) ->
  the events the key model accepts -> parameter model, each against the last vectors of its series, also
  carried across runs (parammodel) -> anomaly documents (anomaly) -> written and acknowledged (sink) ->
  checkpoint and tails saved (state), one bounded chunk at a time; then one run document in the runs index
  and one summary log line (runs). `DetectionRun` is that run's state and stages; `Detection` the loaded
  model version, which the daemon keeps between runs. The checkpoint and tails are the job's own
  (`state.state_id(job.name)`), and every anomaly document names the job (`deeplog.job`).
- `run_partition(config, clients, partition=, worker=)`: the same run over one partition of the source
  (`partitions`), on that partition's own state; None, with nothing recorded, when another process holds it.
  Each save carries the run's tally; a run that finds the tally of a run that never recorded itself (killed)
  records it, status `interrupted`, with what it had committed, so the committed runs of a partition account
  for every committed chunk.
- Training and detection read documents through the same `EventReader` (what is usable: templated, with a
  session and an event time `timefmt.epoch_seconds` accepts; the rest counted by reason, `bad_timestamp`
  for the time) and compute parameter vectors through the same `SessionTracker.observe`, so the parameter
  model is fitted on the vectors detection scores. Keys come from the templater, or with `source.key_field`
  from that field (`fieldkeys`); the model version records which, and detection loads the same. One
  difference is by design: detection closes a session idle for `sessions.idle_timeout_seconds` (its next
  event starts afresh), training reads each session whole; entity streams (`source.entity_fields`) are cut
  at that gap by both, per event.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from . import calibration, gcpause, incidents, paramfeedback, seal, sink, stopping
from .anomaly import (
    DocContext,
    EventRef,
    KeyVerdict,
    ParamVerdict,
    SessionEvent,
    key_anomaly,
    parameter_anomaly,
)
from .artifacts import KEYMODEL, PARAMMODEL, TEMPLATER, ModelStore
from .calibration import KeyCalibration, calibrate_version
from .config import Config
from .detector import KeyDetector, KeyScores, Windows, build_windows, load_anchor
from .errors import ArtifactError, DeeplogError, StateConflict
from .es import Clients
from .fieldkeys import STATE_FILE as FIELDKEYS_FILE
from .fieldkeys import FieldKeys
from .format_detect import config_for_source
from .model import fingerprint, load_checkpoint, resolve_device, save_checkpoint, train_key_model, use_threads
from .parammodel import ParameterModel
from .partitions import Partition, document_key
from .prefetch import Prefetch
from .recent import RecentSample
from .risk import param_rarity
from .runs import RunSummary, Timer, record_run, recorded
from .samples import NORMAL_SAMPLE, build_normal_sample
from .sessions import MISSING_ENTITY, Observed, SessionKeyer, SessionTail, SessionTracker, series_key
from .setup_assets import ensure_index_like
from .source import Source, SourceDoc, advance
from .state import (
    JobState,
    lease_owner,
    prepare_state,
    release_lease,
    save_state,
    state_id,
    take_lease,
    take_partition_lease,
)
from .templater import STATE_FILE as TEMPLATER_FILE
from .templater import ParsedEvent, Templater
from .timefmt import epoch_seconds, iso_utc, utc_now
from .vocab import EOS, UNK, Vocabulary
from .workflow import WORKFLOWS_FILE, WorkflowModel, concurrency_mask, concurrent_partners, diagnose
from .workflow_mining import mine_workflows, model_predictor

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
# What turns documents into log keys: Drain over the message, or a field naming the event (source.key_field).
Keys = Templater | FieldKeys
DETECT_JOB = "detect"
PREVIEW_JOB = "detect-preview"


def quiet(_: str) -> None:
    """The progress sink of a caller that shows none."""


@dataclass(frozen=True)
class Job:
    """What every stage of a job run needs: its configuration, the cluster and the summary it fills."""

    config: Config
    clients: Clients
    summary: RunSummary


@dataclass(frozen=True)
class Span:
    """What a run reads: everything new since the checkpoint, or [start, end) (a backfill; training reads
    only such a range); `close_sessions`: the sessions still open at the end are closed (their end scored)."""

    start: str | None = None
    end: str | None = None
    close_sessions: bool = False
    # A backfill that alerts nobody: anomalies go to `output.preview`, no incident is written, and the
    # live checkpoint, tails and sample of recent traffic stay as they are.
    preview: bool = False

    @property
    def backfill(self) -> bool:
        return self.start is not None or self.end is not None


# ------------------------------------------------------------------------------------------------- events


class EventRow(NamedTuple):
    """One usable event: its document, session, templated event and event time (epoch seconds)."""

    doc: SourceDoc
    sid: str
    event: ParsedEvent
    ts: float


# A NamedTuple's generated __new__ costs several times a plain tuple's; this runs once per event read.
_new_row = tuple.__new__


class EventReader:
    """Source documents -> the events the models see, for training and detection alike."""

    def __init__(self, templater: Keys, keyer: SessionKeyer, config: Config) -> None:
        self.templater, self.keyer = templater, keyer
        self.message_field = config.source.message_field
        self.timestamp_field = config.source.timestamp_field

    def rows(self, docs: list[SourceDoc], skipped: Counter[str], *, learn: bool) -> list[EventRow]:
        """Template one page -> a row for every usable document; the rest counted in `skipped` by reason
        (empty, not_string, binary: the templater's; no_key, bad_key: `FieldKeys`'; no_session;
        bad_timestamp)."""
        templater = self.templater
        messages = [d.get(self.message_field) for d in docs]
        before = Counter(templater.skipped)
        if isinstance(templater, FieldKeys):
            parsed = templater.parse_docs([d.source for d in docs], learn=learn)
        else:
            parsed = templater.parse_many(messages, learn=learn)
        skipped.update(templater.skipped - before)
        out = []
        for doc, msg, ev in zip(docs, messages, parsed, strict=True):
            if ev is None:
                continue
            sid = self.keyer.session_of(msg if isinstance(msg, str) else "", doc.source)
            if sid is None:
                skipped["no_session"] += 1
                continue
            ts = epoch_seconds(doc.get(self.timestamp_field))
            if ts is None:
                skipped["bad_timestamp"] += 1
                continue
            out.append(_new_row(EventRow, (doc, sid, ev, ts)))
        return out


def observe(tracker: SessionTracker, rows: list[EventRow], *, refs: bool = True) -> list[Observed]:
    """Append the rows to their sessions -> each event's history and parameter vector. `refs`: keep each
    session's last document (`index/id`, for detection's end-of-session anomaly); training has no use for
    it."""
    return tracker.observe_many(
        [r.sid for r in rows],
        [r.event.key for r in rows],
        [r.event.numbers for r in rows],
        [r.ts for r in rows],
        refs=[f"{r.doc.index}/{r.doc.id}" for r in rows] if refs else None,
    )


# ------------------------------------------------------------------------------------------------ train


@dataclass
class TrainSummary:
    version: str
    docs: int
    sessions: int
    templates: int
    skipped: dict[str, int]
    report: dict[str, Any]
    sessions_left_out: int = 0  # sessions of the window not learned (`TrainRequest.leave_out`)
    format: str = ""  # the templater's format (the one `auto` chose, when configured so)


@dataclass
class TrainingSet:
    """What training learns from, in reading (time) order: each session's keys and event times (the key
    model; the workflow model's task split and typical step gaps) and, with `with_params`, each (previous
    key, key) series' parameter vectors and event times (the parameter model and its shared load level).
    A key id stays while Drain generalises its template, but its number of numeric parameters may change
    then: the fit keeps each series' dominant vector length. With `cut_s` (entity streams) a stream is cut
    into parts wherever it is idle `cut_s` or more, as detection's tracker cuts it (`cut_streams`)."""

    with_params: bool
    cut_s: float | None = None
    sessions: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    times: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    series: dict[tuple[int, int], list[tuple[float, ...]]] = field(default_factory=lambda: defaultdict(list))
    series_times: dict[tuple[int, int], list[float]] = field(default_factory=lambda: defaultdict(list))
    # Detection's session tracker, never closing a session: the vectors are computed as detection does.
    tracker: SessionTracker = field(default_factory=SessionTracker.unbounded)
    # Sessions of the window that `read_training(leave_out=...)` did not learn from.
    left_out: set[str] = field(default_factory=set)
    # Entity streams: each stream's current part (its name in `sessions`), last event time and parts so far.
    parts: dict[str, tuple[str, float, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cut_s is not None:
            self.tracker = SessionTracker(1, self.cut_s, sys.maxsize, math.inf, cut_streams=True)

    def add(self, rows: list[EventRow]) -> None:
        sessions, times = self.sessions, self.times
        for r in rows:
            sid = r.sid if self.cut_s is None else self._part(r.sid, r.ts)
            sessions[sid].append(r.event.key)
            times[sid].append(r.ts)
        if not self.with_params:
            return
        series, series_times = self.series, self.series_times
        for r, o in zip(rows, observe(self.tracker, rows, refs=False), strict=True):
            s = series_key(o, r.event.key)
            series[s].append(o.vector)
            series_times[s].append(r.ts)
        self.tracker.take_cut()  # training scores no ends: the parts are in `sessions` already

    def rekey(self, aliases: Mapping[int, int]) -> None:
        """Read every key through `aliases` (keys the templater merged into another while training read
        the logs): the model learns the keys detection will see."""
        if not aliases:
            return
        for keys in self.sessions.values():
            keys[:] = [aliases.get(k, k) for k in keys]
        old_series, old_times = self.series, self.series_times
        self.series, self.series_times = defaultdict(list), defaultdict(list)
        folded: set[tuple[int, int]] = set()
        for s, vectors in old_series.items():
            new = (aliases.get(s[0], s[0]), aliases.get(s[1], s[1]))
            if new in self.series:
                folded.add(new)
            self.series[new].extend(vectors)
            self.series_times[new].extend(old_times[s])
        for s in folded:
            # Series folded together go back to reading order, as the parameter model reads them.
            order = sorted(range(len(self.series[s])), key=self.series_times[s].__getitem__)
            self.series[s] = [self.series[s][i] for i in order]
            self.series_times[s] = [self.series_times[s][i] for i in order]

    def _part(self, sid: str, ts: float) -> str:
        """The part of stream `sid` an event at `ts` belongs to (a new one after a gap of `cut_s`)."""
        assert self.cut_s is not None
        part = self.parts.get(sid)
        if part is None:
            name, last, n = sid, ts, 1
        elif ts - part[1] >= self.cut_s:
            # NUL keeps a part's name apart from every entity id a log field would hold.
            name, last, n = f"{sid}\x00{part[2] + 1}", ts, part[2] + 1
        else:
            # Out of order within a part: the part's last time stays the latest, as the tracker's does.
            name, last, n = part[0], max(part[1], ts), part[2]
        self.parts[sid] = (name, last, n)
        return name


def read_training(
    config: Config,
    source: Source,
    templater: Keys,
    *,
    span: Span,
    summary: RunSummary,
    leave_out: AbstractSet[str] = frozenset(),
    progress: Progress = quiet,
) -> TrainingSet:
    """Read the training logs -> what training learns from. The documents read and skipped (by reason) are
    counted in `summary` page by page, so a run that fails partway records what it read. The documents of
    the sessions in `leave_out` are dropped before templating (skipped as `left_out`): neither their
    templates nor their keys are learned."""
    keyer = SessionKeyer(config.source)
    reader = EventReader(templater, keyer, config)
    cut = config.sessions.idle_timeout_seconds if config.source.entity_fields else None
    data = TrainingSet(config.params.enabled, cut_s=cut)
    for page in source.pages(start=span.start, end=span.end):
        summary.docs_read += len(page)
        if leave_out:
            kept = _without(page, keyer, leave_out, config.source.message_field, data.left_out)
            summary.skipped["left_out"] += len(page) - len(kept)
            page = kept
        data.add(reader.rows(page, summary.skipped, learn=True))
        if summary.docs_read % 20000 < len(page):
            progress(
                f"  {summary.docs_read} documents, {len(data.sessions)} sessions, "
                f"{templater.num_templates} templates"
            )
    if isinstance(templater, Templater):
        data.rekey(templater.aliases)
    return data


def _without(
    page: list[SourceDoc],
    keyer: SessionKeyer,
    leave_out: AbstractSet[str],
    message_field: str,
    seen: set[str],
) -> list[SourceDoc]:
    """The page without the documents of the sessions in `leave_out` (those met are added to `seen`)."""
    kept = []
    for doc in page:
        msg = doc.get(message_field)
        sid = keyer.session_of(msg if isinstance(msg, str) else "", doc.source)
        if sid is not None and sid in leave_out:
            seen.add(sid)
        else:
            kept.append(doc)
    return kept


def train(
    config: Config,
    clients: Clients,
    *,
    start: str | None = None,
    end: str | None = None,
    index: str | None = None,
    progress: Progress = quiet,
) -> TrainSummary:
    summary = RunSummary(run_id=uuid.uuid4().hex, job="train", window_start=start, window_end=end)
    with recorded(clients, config, summary):
        return train_version(
            Job(config, clients, summary), TrainRequest(span=Span(start, end), index=index), progress
        )


@dataclass(frozen=True)
class TrainRequest:
    """What `train_version` learns from and whether it publishes: `index` (default `source.index`) over
    `span`, without the sessions in `leave_out`; `publish=False` leaves the new version unpublished (a
    candidate the caller checks before publishing it)."""

    span: Span = Span()
    index: str | None = None
    leave_out: AbstractSet[str] = frozenset()
    publish: bool = True


def train_version(job: Job, request: TrainRequest, progress: Progress = quiet) -> TrainSummary:
    """Read, fit and save a new model version inside the run of `job` (its summary counts what was read)."""
    config, clients, summary = job.config, job.clients, job.summary
    src_cfg = replace(config.source, index=request.index) if request.index else config.source
    templater: Keys
    if config.source.key_field:
        templater = FieldKeys(config.source)
    else:
        tcfg, _ = config_for_source(
            config.templater,
            Source(clients, src_cfg),
            message_field=src_cfg.message_field,
            start=request.span.start,
            end=request.span.end,
        )
        templater = Templater(tcfg)
    progress(f"reading training logs from {src_cfg.index} ...")
    data = read_training(
        config,
        Source(clients, src_cfg),
        templater,
        span=request.span,
        summary=summary,
        leave_out=request.leave_out,
        progress=progress,
    )
    if isinstance(templater, FieldKeys) and templater.stats["param_missing"]:
        log.warning(
            "%s documents lack a finite number in one of source.param_fields %s: the parameter model leaves "
            "their vectors out",
            templater.stats["param_missing"],
            list(config.source.param_fields),
        )
    if not data.sessions:
        raise DeeplogError(
            f"no usable training logs in {src_cfg.index} (skipped: {dict(summary.skipped) or 'none'})"
        )
    progress(f"training the log-key model on {len(data.sessions)} sessions ({summary.docs_read} events) ...")
    version, report = _fit(job, templater, data, src_cfg.index, progress, publish=request.publish)
    summary.model_version = version
    summary.sessions = len(data.sessions)
    return TrainSummary(
        version=version,
        docs=summary.docs_read,
        sessions=len(data.sessions),
        templates=templater.num_templates,
        skipped=dict(summary.skipped),
        report=report,
        sessions_left_out=len(data.left_out),
        format="key_field" if isinstance(templater, FieldKeys) else templater.settings.format,
    )


def _fit(
    job: Job, templater: Keys, data: TrainingSet, index: str, progress: Progress, *, publish: bool = True
) -> tuple[str, dict[str, Any]]:
    """Fit the models on `data`, save them as a new version and (`publish`) publish it -> (version, report).
    On a stop request (`stopping`) it ends between epochs, or before it publishes, with nothing published."""
    config, summary = job.config, job.summary
    training = list(data.sessions.values())

    def epoch_done(message: str) -> None:
        # The key model reports after every epoch: a safe point to stop at.
        stopping.check("training")
        progress(message)

    model, report = train_key_model(training, len(templater.vocab), config.model, progress=epoch_done)
    stopping.check("training")
    store = ModelStore(config.model.dir)
    version, path = store.create()
    templater.save(path / TEMPLATER)
    meta = {
        "fingerprint": fingerprint(training),
        "templater": f"{TEMPLATER}/{FIELDKEYS_FILE if isinstance(templater, FieldKeys) else TEMPLATER_FILE}",
        "source_index": index,
        "window": [summary.window_start, summary.window_end],
        "documents": summary.docs_read,
        "metrics": report.to_dict(),
    }
    progress("building workflow models ...")
    workflows = mine_workflows(
        training,
        templater.vocab.templates,
        times=[data.times[sid] for sid in data.sessions],
        predict=model_predictor(model),
        window=config.model.window,
    )
    workflows.save(path)
    meta["workflows"] = WORKFLOWS_FILE
    meta[calibration.META_KEY] = calibrate_version(model, training, config.model).to_dict()
    save_checkpoint(path / KEYMODEL, model, templater.vocab, meta)
    # Normal windows for the feedback job: replayed while fine-tuning, held out for its safety check.
    fb = config.feedback
    build_normal_sample(training, config.model, fb.replay_windows, fb.heldout_windows).save(
        path / NORMAL_SAMPLE
    )
    out = report.to_dict()
    if data.with_params:
        progress(f"training the parameter model on {len(data.series)} (previous key, key) series ...")
        use_threads(config.model.threads)
        pm, p_report = ParameterModel.fit(data.series, config.params, data.series_times)
        pm.save(path / PARAMMODEL, meta={"model_version": version, "report": p_report.to_dict()})
        out |= {"params": p_report.to_dict()}
    if stopping.requested():
        store.discard(version)  # never published, so nothing refers to it
        stopping.check("training")
    if publish:
        # Under the store's lock: a feedback run holds it from reading CURRENT to publishing its child
        # version, so it cannot publish over this newer version afterwards.
        with store.lock():
            store.publish(version)
        publish_workflows(job.clients, config, version, workflows)
    return version, out


def publish_workflows(clients: Clients, config: Config, version: str, workflows: WorkflowModel) -> int:
    """Write one document per workflow of model `version` to the workflows index; returns how many."""
    docs = workflows.documents(config.output.workflows_index, version, utc_now())
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


@dataclass
class Detection:
    """What a detection run needs loaded once: the current model version and its parts."""

    version: str
    templater: Keys
    detector: KeyDetector
    vocab: Vocabulary
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
        # one torch thread, since OpenMP workers spinning between batches cost more CPU than they save.
        use_threads(config.model.threads or 1)
        device = resolve_device(config.model.device)
        model, vocab, header = load_checkpoint(path / KEYMODEL)
        risk = KeyCalibration.from_meta(header["meta"])
        if risk is None:
            log.warning(
                "model version %s has no risk calibration (trained before it existed): risk scores use the "
                "model's probabilities alone until the next `deeplog-siem train`",
                version,
            )
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
            calibration=risk,
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
            version=version,
            templater=_load_keys(config, path),
            detector=detector,
            vocab=vocab,
            window=model.args.window,
            top_g=config.model.top_g,
            workflows=workflows,
            params=params,
            partners=concurrent_partners(workflows) if config.model.concurrency else {},
            recent=recent,
        )


def _load_keys(config: Config, path: Path) -> Keys:
    """The model version's way to log keys, which must be the configuration's."""
    if config.source.key_field:
        return FieldKeys.load(path / TEMPLATER, config.source)
    if (path / TEMPLATER / FIELDKEYS_FILE).is_file():
        raise ArtifactError(
            f"model version {path.name} takes its log keys from a field (source.key_field), this "
            "configuration templates the message: set source.key_field as in training, or train again"
        )
    return Templater.load(path / TEMPLATER, config.templater)


def run_once(
    config: Config,
    clients: Clients,
    *,
    start: str | None = None,
    end: str | None = None,
    close_sessions: bool = False,
    detection: Detection | None = None,
    stop: threading.Event | None = None,
    progress: Progress = quiet,
    preview: bool = False,
) -> RunSummary:
    """One detection pass over everything new since the checkpoint (or over [start, end) for a backfill;
    `preview`: a backfill into `output.preview` that alerts nobody, see `Span.preview`)."""
    span = Span(start, end, close_sessions, preview)
    if preview and not span.backfill:
        raise DeeplogError("a preview is a backfill: give --start and/or --end")
    job_name = PREVIEW_JOB if preview else DETECT_JOB
    summary = RunSummary(run_id=uuid.uuid4().hex, job=job_name, window_start=start, window_end=end)
    with recorded(clients, config, summary):
        det = detection or Detection.load(config)
        summary.model_version = det.version
        if preview:
            ensure_index_like(clients, config.output.preview, "anomalies")
        run = DetectionRun.open(Job(config, clients, summary), det, span)
        try:
            run.run(stop, progress)
            run.finish()
        finally:
            run.release()
        return summary


def run_partition(
    config: Config,
    clients: Clients,
    *,
    partition: Partition,
    worker: str,
    detection: Detection | None = None,
    stop: threading.Event | None = None,
    progress: Progress = quiet,
    close_sessions: bool = False,
) -> RunSummary | None:
    """One detection pass over partition `partition` of the source, on its own state; None when another
    process holds that state's lease (nothing is read or recorded: the caller tries again later)."""
    summary = RunSummary(run_id=uuid.uuid4().hex, job=DETECT_JOB)
    summary.partition, summary.worker = (partition.index, partition.of), worker
    span = Span(close_sessions=close_sessions)
    try:
        state = take_partition_lease(
            clients,
            config.output.state_index,
            state_id(config.job.name),
            partition=partition,
            owner=lease_owner(summary.run_id),
            lease_s=config.schedule.lease_seconds,
        )
    except StateConflict as e:
        log.info("partition %s of %s skipped: %s", partition.index, partition.of, e)
        return None
    except Exception:
        with recorded(clients, config, summary):
            raise
    with recorded(clients, config, summary):
        job = Job(config, clients, summary)
        try:
            _record_interrupted(job, state, partition)
            det = detection or Detection.load(config)
            summary.model_version = det.version
            run = DetectionRun(job, det, span, state, partition=partition)
        except BaseException:
            release_lease(clients, config.output.state_index, state)
            raise
        try:
            run.run(stop, progress)
            run.finish()
        finally:
            run.release()
        return summary


def _record_interrupted(job: Job, state: JobState, partition: Partition) -> None:
    """Record the run whose tally `state` carries when that run never recorded itself (its process was
    killed between a committed chunk and its run document): status `interrupted`, with what it committed."""
    tally = state.tally
    run_id = tally.get("run_id") if tally else None
    if not tally or not isinstance(run_id, str) or not run_id or run_id == job.summary.run_id:
        return
    runs_index = job.config.output.runs_index
    got = job.clients.es.options(ignore_status=404).get(index=runs_index, id=run_id, source=False)
    if got.get("found"):
        return

    def count(name: str) -> int:
        return _count(tally.get(name))

    def counts(name: str) -> Counter[str]:
        raw = tally.get(name)
        return Counter({str(k): _count(v) for k, v in raw.items()}) if isinstance(raw, dict) else Counter()

    lost = RunSummary(run_id=run_id, job=DETECT_JOB, status="interrupted")
    lost.docs_read, lost.processed = count("docs_read"), count("docs_processed")
    lost.skipped, lost.anomalies = counts("skipped"), counts("anomalies")
    lost.docs_unpartitioned = count("docs_unpartitioned")
    lost.docs_other_partition = count("docs_other_partition")
    lost.checkpoint_from = _sort_list(tally.get("checkpoint_from"))
    lost.checkpoint_to = _sort_list(tally.get("checkpoint_to"))
    lost.partition = (partition.index, partition.of)
    lost.worker = str(tally.get("worker")) if tally.get("worker") is not None else None
    mv = tally.get("model_version")
    lost.model_version = mv if isinstance(mv, str) else None
    lost.error = (
        f"the process running it ended before it recorded the run; recorded by run {job.summary.run_id}, "
        "which took the partition over: the counts are what it had committed"
    )
    log.warning("partition %s of %s: run %s %s", partition.index, partition.of, run_id, lost.error)
    record_run(job.clients, job.config, lost)


def _count(v: Any) -> int:
    """A count from a saved tally (a document anyone may have edited): a non-negative integer, else 0."""
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


def _sort_list(v: Any) -> list[Any] | None:
    return list(v) if isinstance(v, list) else None


@dataclass
class _Chunk:
    """One bounded chunk in progress: scored page by page, committed (written, checkpointed) as a whole."""

    docs: list[SourceDoc] = field(default_factory=list)
    anomalies: list[dict[str, Any]] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    processed: int = 0
    foreign: int = 0  # read by the partition's range but another partition's (not processed here)
    unpartitioned: int = 0  # without a usable partition key (partition 0's)
    first: float | None = None
    newest: float | None = None
    # Templated and observed events not scored yet: scoring waits for SCORE_BATCH of them, because every
    # forward pass has a fixed shape and a page's few hundred new windows would cost a whole pass.
    pending_rows: list[EventRow] = field(default_factory=list)
    pending_observed: list[Observed] = field(default_factory=list)


SCORE_BATCH = 8192
# While no page is ready, pending events are scored once at least this many wait (smaller batches cost more
# per event; none at all would leave a whole SCORE_BATCH to score after the last page).
IDLE_SCORE_BATCH = 2048


class DetectionRun:
    """One detection run: the loaded model, the open sessions, the checkpoint, the reader and the writer,
    and the chunk in progress. `open` loads the state, `run` reads, scores and commits chunk by chunk,
    `finish` fills in what the summary says about the whole run."""

    def __init__(
        self, job: Job, det: Detection, span: Span, state: JobState, *, partition: Partition | None = None
    ) -> None:
        config = job.config
        self.config, self.clients, self.summary = config, job.clients, job.summary
        self.det, self.span, self.state = det, span, state
        self.partition = partition if partition is not None and partition.of > 1 else None
        self.tracker = _tracker(config, det.window, state.sessions)
        self.reader = EventReader(det.templater, SessionKeyer(config.source), config)
        self.source = Source(job.clients, config.source, partition=self.partition)
        self.summary.checkpoint_from = self.summary.checkpoint_to = _sort_of(state)
        self.writer: sink.BackgroundWriter | None = None  # started by `run`, which closes it
        self.chunk = _Chunk()
        self.seen: set[str] = set()
        # Why incidents cannot be written in this run ("" when they can; None until asked).
        self.incidents_skipped: str | None = None
        src = config.source
        self.ctx = DocContext(
            vocab=det.vocab,
            model_version=det.version,
            run_id=job.summary.run_id,
            index=config.output.preview if span.preview else config.output.anomalies_index,
            message_field=src.message_field,
            # An entity stream is found by its fields, as a session of comma-separated fields is.
            session_field=src.session_field or ",".join(src.entity_fields) or None,
            session_missing=MISSING_ENTITY if src.entity_fields else None,
            top_g=det.top_g,
            min_probability=det.detector.min_probability,
            seal_key=seal.key(config.model.dir),
            job=config.job.name,
            kibana_url=config.kibana.url,
            kibana_space=config.kibana.space,
        )

    def active_writer(self) -> sink.BackgroundWriter:
        """The writer of the run in progress."""
        if self.writer is None:
            raise RuntimeError("the detection run's writer starts with `run`")
        return self.writer

    @classmethod
    def open(cls, job: Job, det: Detection, span: Span) -> DetectionRun:
        """Load the state and take its lease: `StateConflict` while another process runs on it."""
        state = take_lease(
            job.clients,
            job.config.output.state_index,
            state_id(job.config.job.name, backfill=span.backfill, preview=span.preview),
            owner=lease_owner(job.summary.run_id),
            lease_s=job.config.schedule.lease_seconds,
        )
        if span.backfill:
            state.checkpoint, state.sessions = None, {}
        try:
            return cls(job, det, span, state)
        except BaseException:
            # Nobody else would give the lease back: the caller never gets the run to release.
            release_lease(job.clients, job.config.output.state_index, state)
            raise

    def release(self) -> None:
        """Give the state's lease back (best effort: a lease left behind expires)."""
        release_lease(self.clients, self.config.output.state_index, self.state)

    def run(self, stop: threading.Event | None, progress: Progress) -> None:
        """Read, score and commit chunk by chunk until the source is exhausted or `stop` is set (then the
        chunk in progress is committed first)."""
        config, summary, span = self.config, self.summary, self.span
        # Read ahead about one scoring batch, so the reader keeps going while a batch is scored.
        depth = max(2, SCORE_BATCH // config.source.page_size + 1)
        # The writer first, and the reader inside the `try` that closes both: whichever fails to start, no
        # thread is left running.
        # Create-if-absent: an anomaly written before (a backfill, a chunk read again after a failed commit)
        # keeps its document, and with it the responders' verdicts.
        writer = self.writer = sink.BackgroundWriter(self.clients, op="create")
        pages: Prefetch[list[SourceDoc]] | None = None
        # The collector's full passes over a chunk's live documents would cost much of the job's CPU
        # (gcpause).
        collect_due = False
        with gcpause.paused():
            try:
                pages = Prefetch(
                    self.source.pages(self.state.checkpoint, start=span.start, end=span.end),
                    depth=depth,
                    name="deeplog-source",
                )
                while True:
                    if len(self.chunk.pending_rows) >= IDLE_SCORE_BATCH and not pages.ready():
                        # The reader is behind: score what is pending instead of waiting, so less is left to
                        # score after the last page (that tail is not overlapped with reading).
                        self.score_pending()
                    # Time spent waiting for a page, not reading in the background.
                    with Timer(summary, "read"):
                        page = pages.next()
                    if page is None:
                        break
                    if collect_due:
                        gcpause.collect()
                        collect_due = False
                    self.read_page(page)
                    if len(self.chunk.docs) >= config.schedule.chunk_size:
                        self.commit_chunk(close_all=False)
                        progress(
                            f"  {summary.docs_read} documents, {summary.anomalies_total} anomalies so far"
                        )
                        self.chunk = _Chunk()
                        # The committed chunk's cycles, if any, are reclaimed once another page comes (memory
                        # stays bounded per chunk); a run that ends here leaves them to the collector.
                        collect_due = True
                        if stop is not None and stop.is_set():
                            summary.status = "stopped"
                            break
                pages.close()
                # A run that saved the state already has nothing to save for an empty last chunk that
                # closes no session (the last page filled the previous chunk).
                self.commit_chunk(close_all=span.close_sessions, saved=summary.docs_read > 0)
            finally:
                if pages is not None:
                    pages.close()
                writer.close()

    def finish(self) -> None:
        summary, tracker = self.summary, self.tracker
        if summary.docs_unpartitioned:
            log.warning(
                "%s documents had no usable %s: partition 0 processed them (README, Several workers)",
                summary.docs_unpartitioned,
                self.config.workers.partition_field,
            )
        if not self.span.preview:
            _save_recent(self.config, self.det)
        summary.sessions = len(self.seen)
        summary.sessions_evicted = tracker.stats["evicted_lru"]
        if not self.span.backfill:
            summary.lag_seconds = _lag(self.source, self.state.checkpoint)
        if tracker.stats["evicted_lru"]:
            log.warning(
                "%s open sessions evicted (sessions.max_open=%s): their end was not scored",
                tracker.stats["evicted_lru"],
                self.config.sessions.max_open,
            )

    def read_page(self, docs: list[SourceDoc]) -> None:
        """Template one page and observe its events into the chunk; score once enough are pending (nothing
        is written or checkpointed here)."""
        chunk = self.chunk
        chunk.docs.extend(docs)
        if self.partition is not None:
            docs = self._own(docs)
        with Timer(self.summary, "template"):
            rows = self.reader.rows(docs, chunk.skipped, learn=self.config.templater.learn_at_detection)
            if not rows:
                return
            observed = observe(self.tracker, rows)
            cut = self.tracker.take_cut()
            self.seen.update(r.sid for r in rows)
            lo, hi = min(r.ts for r in rows), max(r.ts for r in rows)
            chunk.processed += len(rows)
            chunk.first = lo if chunk.first is None else min(chunk.first, lo)
            chunk.newest = hi if chunk.newest is None else max(chunk.newest, hi)
        if cut:
            # Entity streams: the parts a gap ended inside this page end here, as in training.
            ended = self._score_ended(cut)
            chunk.anomalies.extend(ended)
            self.active_writer().submit(ended)
        chunk.pending_rows.extend(rows)
        chunk.pending_observed.extend(observed)
        if len(chunk.pending_rows) >= SCORE_BATCH:
            self.score_pending()

    def _own(self, docs: list[SourceDoc]) -> list[SourceDoc]:
        """The page's documents this partition processes; the others are counted (their partition's
        range reads them too) and only move the checkpoint."""
        part, chunk = self.partition, self.chunk
        assert part is not None
        own = []
        for d in docs:
            value = d.get(part.field)
            if not part.owns(value):
                chunk.foreign += 1
                continue
            if document_key(value) is None:
                chunk.unpartitioned += 1
            own.append(d)
        return own

    def score_pending(self) -> None:
        """Score the pending events; their anomalies go to the writer at once (ids are deterministic, so a
        chunk that fails later and is read again just overwrites them)."""
        chunk, det = self.chunk, self.det
        rows, observed = chunk.pending_rows, chunk.pending_observed
        chunk.pending_rows, chunk.pending_observed = [], []
        if not rows:
            return
        with Timer(self.summary, "detect"):
            # One short sequence per event: its history (carried across runs by the tracker) + itself.
            seqs = [(*o.history, r.event.key) for o, r in zip(observed, rows, strict=True)]
            windows = build_windows(
                seqs, det.window, context=[len(o.history) for o in observed], add_eos=False
            )
            scores = det.score(windows)
            # A concurrent step's first occurrence is accepted whatever its order (model.concurrency).
            flagged = scores.anomalous & ~concurrency_mask(windows.keys, windows.targets, det.partners)
            found = []
            for i in flagged.nonzero().flatten().tolist():
                j = int(windows.session[i])
                r, o = rows[j], observed[j]
                ev = SessionEvent(
                    self._event_ref(r.doc, r.ts), r.sid, o.position, windows.keys[i].tolist(), r.event.params
                )
                found.append(
                    self._key_anomaly(
                        _Scored(scores, windows, i), ev, o.history, gap_s=None if o.first else o.vector[0]
                    )
                )
            if det.params is not None:
                # Only what the key model accepts goes on (DeepLog): a flagged event is one anomaly already,
                # and its vector would teach the series' history a path the model does not know.
                rejected = set(windows.session[flagged].tolist())
                accepted = [j for j in range(len(rows)) if j not in rejected and rows[j].event.key != UNK]
                if accepted:
                    found += self._score_params([rows[j] for j in accepted], [observed[j] for j in accepted])
        # One write per scoring pass, key and parameter anomalies together: each bulk request costs the
        # server (the embedded one stalls on every tenth bulk request to an index).
        chunk.anomalies.extend(found)
        self.active_writer().submit(found)

    def _score_params(self, rows: list[EventRow], observed: list[Observed]) -> list[dict[str, Any]]:
        """Parameter vectors of the accepted events, each against the last vectors of its (previous key, key)
        series (carried across runs by the tracker), scored in one batch: one forward per series group."""
        params, tracker = self.det.params, self.tracker
        assert params is not None
        series = [series_key(o, r.event.key) for o, r in zip(observed, rows, strict=True)]
        vectors = [o.vector for o in observed]
        histories = tracker.param_history.take(series, vectors)
        # The shared load level continues across runs with the session tails, like the series' histories.
        levels = params.levels(series, vectors, [r.ts for r in rows], tracker.param_level)
        ps = params.score(series, histories, vectors, levels)
        found = []
        for n in ps.anomalous.nonzero().flatten().tolist():
            r, o = rows[n], observed[n]
            # Which step was slow against its usual gap in the session's workflow (or why no workflow
            # applies).
            where = diagnose(
                self.det.workflows,
                list(o.history),
                r.event.key,
                gap_s=o.vector[0],
                template_of=self.det.vocab.template,
                timing=True,
            )
            verdict = ParamVerdict(
                key=r.event.key,
                dims=ps.dims[n],
                observed=ps.observed[n],
                predicted=ps.predicted[n],
                low=ps.low[n],
                high=ps.high[n],
                error=float(ps.error[n]),
                threshold=ps.threshold[n],
                rarity=param_rarity(float(ps.error[n]), ps.threshold[n], self.config.params.confidence),
            )
            ev = SessionEvent(self._event_ref(r.doc, r.ts), r.sid, int(o.position), o.history, r.event.params)
            found.append(parameter_anomaly(self.ctx, ev, verdict, where.fields()))
        return found

    def commit_chunk(self, *, close_all: bool, saved: bool = False) -> None:
        """Score the sessions the chunk ended, write its anomalies, then (only then) save checkpoint and
        tails. `saved`: this run has saved the state already, so an empty chunk that closes no session has
        nothing to save."""
        chunk, summary = self.chunk, self.summary
        self.score_pending()
        # With no new events, event time stands still: only the wall-clock TTL can close sessions then.
        if close_all:
            closed = self.tracker.close_all()
        else:
            closed = self.tracker.close_idle(chunk.newest if chunk.newest is not None else float("-inf"))
        if saved and not closed and not chunk.docs and not chunk.anomalies:
            return
        if closed:
            ended = self._score_ended(closed)
            chunk.anomalies.extend(ended)
            self.active_writer().submit(ended)
        with Timer(summary, "write"):
            result = self._save()
        # Committed: the chunk counts in the summary (a chunk that fails before this is read again next run).
        summary.docs_read += len(chunk.docs) - chunk.foreign
        summary.docs_other_partition += chunk.foreign
        summary.docs_unpartitioned += chunk.unpartitioned
        summary.checkpoint_to = _sort_of(self.state)
        summary.processed += chunk.processed
        summary.skipped.update(chunk.skipped)
        summary.rejected.update(result.rejected)
        summary.already_written += result.existing
        for a in chunk.anomalies:
            summary.anomalies[a["deeplog"]["anomaly_type"]] += 1
        if chunk.first is not None and chunk.newest is not None:
            summary.window_start = summary.window_start or iso_utc(chunk.first)
            summary.window_end = iso_utc(chunk.newest)

    def _save(self) -> sink.WriteResult:
        """Wait for the writes in flight, then save the state past the chunk's documents."""
        state = self.state
        # The new state is built (checkpoint, packed tails) while the last writes are in flight: after the
        # last page this wait is the job's tail, not overlapped with any reading.
        nxt = replace(
            state,
            checkpoint=advance(state.checkpoint, self.chunk.docs, self.source.overlap_ms),
            sessions=self.tracker.to_dict(),
            model_version=self.det.version,
        )
        if self.partition is not None:
            nxt.tally = self._tally(nxt)
        prepared = prepare_state(nxt)
        result = self.active_writer().flush()
        if not self.span.preview and self.chunk.anomalies and self._incidents_usable():
            # Before the checkpoint moves: a run that dies here reads the chunk again, and the rerun
            # recomputes these incidents from all their anomalies.
            bucket_s = incidents.bucket_seconds(self.config)
            keys = {incidents.incident_key(a, bucket_s) for a in self.chunk.anomalies}
            result.add(
                incidents.refresh_incidents(self.clients, self.config, {k for k in keys if k is not None})
            )
        # Only now, with every anomaly acknowledged, may the checkpoint move past these documents; and only
        # over the state this run read (StateConflict if another process saved since).
        save_state(self.clients, self.config.output.state_index, nxt, prepared)
        self.state = nxt
        return result

    def _tally(self, nxt: JobState) -> dict[str, Any]:
        """What this run will have committed once `nxt` is saved: saved with it, in the same document."""
        summary, chunk = self.summary, self.chunk
        anomalies = Counter(summary.anomalies)
        for a in chunk.anomalies:
            anomalies[a["deeplog"]["anomaly_type"]] += 1
        return {
            "run_id": summary.run_id,
            "worker": summary.worker,
            "model_version": self.det.version,
            "docs_read": summary.docs_read + len(chunk.docs) - chunk.foreign,
            "docs_processed": summary.processed + chunk.processed,
            "docs_unpartitioned": summary.docs_unpartitioned + chunk.unpartitioned,
            "docs_other_partition": summary.docs_other_partition + chunk.foreign,
            "skipped": dict(summary.skipped + chunk.skipped),
            "anomalies": dict(anomalies),
            "checkpoint_from": summary.checkpoint_from,
            "checkpoint_to": _sort_of(nxt),
        }

    def _incidents_usable(self) -> bool:
        """Whether this run can compute incidents (asked once per run; a wrong mapping is warned about and
        skips them, it must not hold detection back)."""
        if self.incidents_skipped is None:
            why = incidents.unusable(self.clients, self.config.output.anomalies_index)
            if why is not None:
                log.warning("%s", why)
            self.incidents_skipped = why or ""
        return not self.incidents_skipped

    def _score_ended(self, closed: list[tuple[str, SessionTail]]) -> list[dict[str, Any]]:
        """The end-of-session key (EOS) after each closed session's last keys; the anomalies of the ends the
        model did not expect."""
        with Timer(self.summary, "detect"):
            seqs = [tuple(t.keys) for _, t in closed]
            windows = build_windows(seqs, self.det.window, context=[len(q) for q in seqs], add_eos=True)
            scores = self.det.score(windows)
            ended = []
            for i in scores.anomalous.nonzero().flatten().tolist():
                sid, tail = closed[int(windows.session[i])]
                index, _, doc_id = tail.last_ref.partition("/")
                ref = SourceDoc(index, f"{doc_id}#end", (), {})
                ev = SessionEvent(
                    self._event_ref(ref, tail.last_ts), sid, tail.count, windows.keys[i].tolist()
                )
                ended.append(self._key_anomaly(_Scored(scores, windows, i), ev, tuple(tail.keys)))
        return ended

    def _event_ref(self, doc: SourceDoc, ts: float) -> EventRef:
        """The raw event an anomaly is about; the timestamp normalised to ISO (the source may hold epoch
        millis or text the anomaly mapping would refuse), message and host only when they are strings."""
        src = self.config.source
        msg, host = doc.get(src.message_field), doc.get(src.host_field)
        return EventRef(
            doc.index,
            doc.id,
            iso_utc(ts),
            msg if isinstance(msg, str) else "",
            host if isinstance(host, str) else None,
        )

    def _key_anomaly(
        self, scored: _Scored, ev: SessionEvent, history: tuple[int, ...], gap_s: float | None = None
    ) -> dict[str, Any]:
        """`history`: the tracker's keys of the session before the event, for where it left its workflow."""
        scores, i = scored.scores, scored.i
        target = int(scored.windows.targets[i])
        where = diagnose(
            self.det.workflows, list(history), target, gap_s=gap_s, template_of=self.det.vocab.template
        )
        kind = "unseen_key" if bool(scores.unseen[i]) else ("session_end" if target == EOS else "log_key")
        verdict = KeyVerdict(
            anomaly_type=kind,
            actual=target,
            probability=float(scores.prob[i]),
            rank=int(scores.rank[i]),
            expected=list(zip(scores.topk_keys[i].tolist(), scores.topk_probs[i].tolist(), strict=True)),
            anchor_probability=float(scores.anchor_prob[i]) if bool(scores.anchored[i]) else None,
            rarity=float(scores.rarity[i]),
        )
        return key_anomaly(self.ctx, ev, verdict, where.fields())


@dataclass(frozen=True)
class _Scored:
    """Window `i` of a scored batch."""

    scores: KeyScores
    windows: Windows
    i: int


def _sort_of(state: JobState) -> list[Any] | None:
    return list(state.checkpoint.sort) if state.checkpoint is not None else None


def _tracker(config: Config, window: int, saved: dict[str, Any]) -> SessionTracker:
    kw = {
        "window": window,
        "param_depth": config.params.window,
        "idle_timeout_s": config.sessions.idle_timeout_seconds,
        "max_sessions": config.sessions.max_open,
        "ttl_s": config.sessions.ttl_seconds,
        "cut_streams": bool(config.source.entity_fields),
    }
    return SessionTracker.from_dict(saved, **kw) if saved else SessionTracker(**kw)


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
