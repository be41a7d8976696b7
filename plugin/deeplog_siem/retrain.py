"""retrain: the scheduled retraining -> a model version learned from the lookback window's logs, published
only when it passes the checks a feedback update passes.

Contract: `retrain(config, clients, now=None) -> RetrainSummary` (the scheduler's retrain job):
1. the sessions with anomalies since now - `schedule.retrain_lookback_days` that no responder marked a false
   positive (`flagged`) are left out of the training set, templates included;
2. the window's logs (`source.index`) without them -> a candidate version (`runner.train_version`), not
   published;
3. under the model store's lock, the current version's feedback is carried into the candidate, translated by
   template text to the candidate's vocabulary (`carry`): the (window -> key) pairs its lineage keeps
   fine-tune the candidate (`feedback.finetune_learnable`; the trained candidate becomes the anchor), and its
   parameter-threshold widenings are copied. The candidate's lineage names the current version as its
   parent (`kind: retrain`), so the feedback applied there stays applied;
4. the candidate is judged as a feedback update is (`feedback.verdict`): the false-alarm rate on the
   candidate's held-out normal windows against the current version's on the same windows, the alarm rate on
   the detection job's sample of recent traffic against the current version's, every carried pair learned.
   A window with a template one of the two versions lacks counts as flagged by that version;
5. it is published (and its workflows written) when it passes; otherwise the current version stays, the
   run's status is `rejected` and `deeplog.run.retrain.reason` says why; the candidate stays unpublished in
   the model directory.
With no current version the candidate is published unchecked (there is nothing to compare it with). One run
document (job `retrain`, figures under `deeplog.run.retrain`); a failure is recorded and raised.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import torch

from . import paramfeedback
from .artifacts import ANCHOR, KEYMODEL, PARAMMODEL, ModelStore
from .carry import Translation, carried_pairs, carried_scales
from .config import Config
from .detector import load_anchor
from .errors import ArtifactError
from .es import Clients
from .feedback import (
    REJECTED,
    FinetuneReport,
    Judge,
    RecentCheck,
    accepted,
    checked_figures,
    finetune_learnable,
    recent_windows,
    update_lineage,
    verdict,
)
from .flagged import flagged_sessions
from .model import KeyLSTM, load_checkpoint, resolve_device, save_checkpoint, use_threads
from .parammodel import key_text
from .runner import Job, Progress, Span, TrainRequest, publish_workflows, quiet, train_version
from .runs import RunSummary, recorded
from .samples import NORMAL_SAMPLE, NormalSample, Rows
from .timefmt import iso, utc_now
from .vocab import Vocabulary
from .workflow import WorkflowModel

log = logging.getLogger(__name__)

RETRAIN_JOB = "retrain"


@dataclass
class RetrainSummary(RunSummary):
    """A retraining run's summary: `deeplog.run.retrain` holds what was left out, the candidate, what was
    carried over, the checks' figures and, when rejected, the reason."""

    retrain: dict[str, Any] = field(default_factory=dict)

    def extra_fields(self) -> dict[str, Any]:
        return {"retrain": dict(self.retrain)} if self.retrain else {}

    def extra_line(self) -> str:
        return f", retrain {self.retrain}" if self.retrain else ""


@dataclass
class _Version:
    """A model version's key model, loaded."""

    version: str
    path: Path
    model: KeyLSTM
    vocab: Vocabulary
    meta: dict[str, Any]

    @classmethod
    def load(cls, version: str, path: Path, device: torch.device) -> _Version:
        model, vocab, header = load_checkpoint(path / KEYMODEL)
        return cls(version, path, model.to(device), vocab, header["meta"])

    def judge(self, config: Config, anchor: KeyLSTM | None) -> Judge:
        floor = config.model.floor(self.model.args.vocab_size)
        return Judge(config.model.top_g, floor, anchor, config.feedback.anchor_ratio)


def retrain(
    config: Config, clients: Clients, *, now: datetime | None = None, progress: Progress = quiet
) -> RetrainSummary:
    """One retraining run (see the module contract); `progress` receives the training's progress lines."""
    now = now or datetime.now(UTC)
    since, until = iso(now - timedelta(days=config.schedule.retrain_lookback_days)), iso(now)
    summary = RetrainSummary(run_id=uuid.uuid4().hex, job=RETRAIN_JOB, window_start=since, window_end=until)
    with recorded(clients, config, summary):
        flagged = flagged_sessions(clients, config, since=since)
        summary.retrain.update(flagged.counts())
        request = TrainRequest(span=Span(since, until), leave_out=flagged.sessions, publish=False)
        trained = train_version(Job(config, clients, summary), request, progress)
        summary.retrain |= {
            "sessions_left_out": trained.sessions_left_out,
            "candidate_version": trained.version,
        }
        store = ModelStore(config.model.dir)
        # The feedback job publishes under the same lock: the version compared with is the one replaced.
        with store.lock():
            _decide(Job(config, clients, summary), store, trained.version)
    return summary


def _decide(job: Job, store: ModelStore, candidate: str) -> None:
    config, summary = job.config, job.summary
    assert isinstance(summary, RetrainSummary)
    try:
        current, current_path = store.current()
    except ArtifactError:
        log.info("retrain: no current model version; publishing %s unchecked", candidate)
        _publish(job, store, candidate)
        return
    use_threads(config.model.threads)
    device = resolve_device(config.model.device)
    cur = _Version.load(current, current_path, device)
    cand = _Version.load(candidate, store.location(candidate), device)
    window = cand.model.args.window
    to_cand, to_cur = Translation(cur.vocab, cand.vocab), Translation(cand.vocab, cur.vocab)
    sample = NormalSample.load(cand.path / NORMAL_SAMPLE)

    pairs, pairs_dropped = carried_pairs(cur.meta, to_cand, window)
    tuned, rep = cand.model, FinetuneReport(0, 0, 0, 0)
    if len(pairs):
        tuned, rep, held = finetune_learnable(cand.model, pairs, sample.replay, config.model, config.feedback)
        pairs_dropped += int((~held).sum())
        pairs = pairs[held]
    scales, series_dropped = carried_scales(cur.path, to_cand)
    # A fine-tuned candidate is judged, as detection will judge it, against the model it was trained as.
    cand_judge = cand.judge(config, cand.model if rep.steps else None)
    cur_judge = cur.judge(config, load_anchor(cur.path, cur.model))

    heldout = sample.heldout
    before = _alarm_rate(cur.model, cur_judge, heldout, to_cur, cur.model.args.window)
    after = _alarm_rate(tuned, cand_judge, heldout, None, window)
    live = _recent(
        (cur.model, cur_judge),
        (tuned, cand_judge),
        recent_windows(config, store, cur.vocab, cur.model.args.window),
        to_cand,
        window,
    )
    summary.retrain |= {
        "parent_version": current,
        "pairs_carried": len(pairs),
        "pairs_dropped": pairs_dropped,
        "series_carried": len(scales),
        "series_dropped": series_dropped,
        "steps": rep.steps,
        **checked_figures(before, after, live),
    }
    reason = verdict(rep, before, after, config.feedback.tolerance, live)
    if reason is not None:
        why = f"candidate {candidate} rejected: {reason}; model {current} kept"
        log.warning("retrain: %s", why)
        summary.status, summary.model_version = REJECTED, current
        summary.retrain["reason"] = why
        store.keep(candidate)  # listed for inspection; `model restore` publishes it by hand
        return
    lineage = {
        **update_lineage(
            parent=current,
            run_id=summary.run_id,
            applied_at=utc_now(),
            steps=rep.steps,
            heldout=(before, after),
            live=live,
            pairs=[[k, t] for k, t in zip(pairs.keys.tolist(), pairs.targets.tolist(), strict=True)],
        ),
        "kind": "retrain",
        "feedback_ids": [],
        "series_widened": {key_text(s): round(v, 4) for s, v in scales.items()},
    }
    if rep.steps:
        shutil.copy2(cand.path / KEYMODEL, cand.path / ANCHOR)
    save_checkpoint(cand.path / KEYMODEL, tuned.cpu(), cand.vocab, {**cand.meta, "lineage": lineage})
    if scales and (cand.path / PARAMMODEL).is_file():
        paramfeedback.save(cand.path, scales)
    _publish(job, store, candidate)


def _publish(job: Job, store: ModelStore, version: str) -> None:
    store.publish(version)
    publish_workflows(job.clients, job.config, version, WorkflowModel.load(store.dir / version))
    job.summary.model_version = version
    log.info("retrain: model %s published", version)


def _verdicts(
    model: KeyLSTM, judge: Judge, rows: Rows, translation: Translation | None, window: int
) -> torch.Tensor:
    """[U] bool: the model accepts pair i of `rows` (translated to its vocabulary first, when
    `translation` is given; a pair it cannot represent is not accepted)."""
    if len(rows) == 0:
        return torch.zeros(0, dtype=torch.bool)
    if translation is None:
        return accepted(model, rows.keys, rows.targets, judge).cpu()
    keys, targets, ok = translation.pairs(rows.keys, rows.targets, window)
    out = torch.zeros(len(rows), dtype=torch.bool)
    if bool(ok.any()):
        out[ok] = accepted(model, keys[ok], targets[ok], judge).cpu()
    return out


def _alarm_rate(
    model: KeyLSTM, judge: Judge, rows: Rows, translation: Translation | None, window: int
) -> float:
    """Share of the (count-weighted) windows the model flags."""
    if len(rows) == 0:
        return 0.0
    ok = _verdicts(model, judge, rows, translation, window)
    return float((rows.counts * (~ok).float()).sum() / rows.counts.sum())


def _recent(
    current: tuple[KeyLSTM, Judge],
    candidate: tuple[KeyLSTM, Judge],
    rows: Rows,
    translation: Translation,
    window: int,
) -> RecentCheck:
    """The current version's and the candidate's verdicts on the sample of recent traffic (in the current
    version's vocabulary)."""
    if len(rows) == 0:
        return RecentCheck()
    was = _verdicts(*current, rows, None, rows.keys.shape[1])
    now = _verdicts(*candidate, rows, translation, window)
    c = rows.counts
    return RecentCheck(
        float(c.sum()),
        float((c * ~was).sum()),
        float((c * (was & ~now)).sum()),
        float((c * (~was & now)).sum()),
    )
