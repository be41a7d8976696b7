"""feedback: responders' verdicts on anomaly documents -> a fine-tuned key model version, exactly once.

Contract:
- The feedback fields of an anomaly document (README "Feedback"): responders set `deeplog.feedback`
  (`false_positive` | `true_positive`) and optionally `deeplog.feedback_by` / `deeplog.feedback_comment`, by
  any update or with `mark(...)` (`deeplog-siem feedback mark`). The job writes `deeplog.feedback_status`
  (`applied` | `recorded` | `invalid` | `unsupported` | `rejected`), `deeplog.feedback_applied_at`,
  `deeplog.feedback_model_version` and `deeplog.feedback_error`.
- `apply_feedback(config, clients) -> FeedbackSummary` (`deeplog-siem feedback apply`, and the scheduler's
  feedback job): the job's own anomaly documents (`deeplog.job` is its `job.name`; for the default job also
  those without `deeplog.job`, written before jobs had names: `jobdocs.job_query`) with a verdict and no
  status (or an `invalid` status whose value has since been corrected) -> (1) those whose id is already in
  the current model's lineage are marked applied without training (a run that crashed after publishing);
  (2) invalid values, true positives, documents whose
  `deeplog` object does not have the anomaly document's form (`anomaly.Details.from_source`: `unsupported`,
  with the field and the reason), documents whose learned fields do not match the detection job's seal
  (`seal.check`: edited, unsealed, or sealed under another key), whose model version is not a version name,
  or whose threshold widening is not finite or beyond the caps (`paramfeedback.widening`, `capped`: all
  `invalid`, with the reason naming the field, and not read again until a verdict is set anew), and anomaly
  types the key model cannot learn are marked and counted; what is learned comes from the sealed fields
  alone, the verdict from the responder; a document that fails in any other way is `invalid` with the
  error, and the run goes on with the others; (3) the false positives' (window -> actual key) pairs
  fine-tune the current key model (`finetune`: a small learning rate, a replay batch of normal training
  windows in every step, until every pair is within the top g and above the probability floor, at most
  `feedback.max_steps` steps; every verdict is the detection job's, anchored to the trained model the
  lineage started from: `detector`); (4) the update is rejected when it
  raises the false-alarm rate on the held-out normal windows by more than `feedback.tolerance`, or the alarm
  rate on the detection job's sample of recent live traffic (`recent`) by more than that plus two standard
  errors; (5) else a new model version is published whose checkpoint meta holds the lineage (parent version,
  feedback ids applied, time, run id), with the trained model as its anchor (`anchor.pt`), and only then are
  the documents marked applied. One run document in the runs index (job `feedback`).
- Exactly once: a feedback id is in the lineage of the published version before its document is marked; a
  crash between the two is repaired by step (1) of the next run, and a crash before publishing leaves the
  current model untouched, so the next run applies the feedback to the same parent again.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from . import paramfeedback, seal, sink, stopping
from .anomaly import Details, Feedback, InvalidAnomaly
from .artifacts import ANCHOR, KEYMODEL, PARAMMODEL, ModelStore
from .config import DEFAULT_JOB, Config, FeedbackConfig, ModelConfig
from .detector import KeyDetector, load_anchor
from .errors import ArtifactError, DeeplogError
from .es import Clients
from .incident_verdicts import apply_incident_verdicts
from .jobdocs import job_query
from .model import KeyLSTM, load_checkpoint, resolve_device, save_checkpoint, use_threads
from .parammodel import key_text
from .recent import RecentSample
from .runs import RunSummary, recorded
from .samples import NORMAL_SAMPLE, NormalSample, Rows
from .timefmt import utc_now
from .vocab import EOS, NUM_RESERVED, PAD, Vocabulary
from .windows import Windows

log = logging.getLogger(__name__)

FEEDBACK_JOB = "feedback"
FALSE_POSITIVE, TRUE_POSITIVE = "false_positive", "true_positive"
VERDICTS = (FALSE_POSITIVE, TRUE_POSITIVE)
# Anomaly types whose verdict is a (window -> next key) pair the key model can learn. An `unseen_key` is a
# message no template matched: the model's vocabulary is fixed between trainings, so only retraining helps.
LEARNABLE = ("log_key", "session_end")
APPLIED, RECORDED, INVALID, UNSUPPORTED, REJECTED = (
    "applied",
    "recorded",
    "invalid",
    "unsupported",
    "rejected",
)
# Pairs of earlier feedback kept in each version's lineage and replayed by later updates, so a later update
# does not undo an earlier one.
MAX_KEPT_PAIRS = 5000


@dataclass
class FeedbackSummary(RunSummary):
    """A feedback run's summary: the run document's `deeplog.run.feedback` holds its documents by outcome
    (found, applied, reconciled, invalid, ...) and the key-model update's figures."""

    feedback: Counter[str] = field(default_factory=Counter)
    feedback_detail: dict[str, Any] = field(default_factory=dict)

    def extra_fields(self) -> dict[str, Any]:
        if not self.feedback and not self.feedback_detail:
            return {}
        return {"feedback": {**self.feedback, **self.feedback_detail}}

    def extra_line(self) -> str:
        return f", feedback {dict(self.feedback)} {self.feedback_detail or ''}" if self.feedback else ""


# ------------------------------------------------------------------------------------------------ marking


def mark(
    clients: Clients,
    config: Config,
    anomaly_id: str,
    verdict: str,
    by: str | None = None,
    comment: str | None = None,
) -> str:
    """Set a verdict on one anomaly document -> "marked" or "unchanged" (the same verdict already applied)."""
    if verdict not in VERDICTS:
        raise DeeplogError(f"feedback must be one of {', '.join(VERDICTS)}, got {verdict!r}")
    index = config.output.anomalies_index
    hits = clients.es.search(index=index, query={"ids": {"values": [anomaly_id]}}, size=1)["hits"]["hits"]
    if not hits:
        raise DeeplogError(f"no anomaly document with id {anomaly_id!r} in {index}")
    hit = hits[0]
    fb = Feedback.from_source(hit["_source"])
    if fb.feedback == verdict and fb.feedback_status in (APPLIED, RECORDED):
        return "unchanged"
    doc: dict[str, Any] = {
        "feedback": verdict,
        "feedback_by": by,
        "feedback_comment": comment,
        # A new verdict is processed afresh by the next feedback run.
        "feedback_status": None,
        "feedback_error": None,
        "feedback_applied_at": None,
        "feedback_model_version": None,
    }
    # The concrete index from the hit: an alias over several rollover indices refuses single-document writes.
    clients.es.update(index=hit["_index"], id=hit["_id"], doc={"deeplog": doc}, refresh=True)
    return "marked"


def pending_query(job_name: str = DEFAULT_JOB) -> dict[str, Any]:
    """Job `job_name`'s anomaly documents with a verdict it has not processed (or an invalid one corrected
    since): another job's verdicts are that job's to learn, under its own model."""
    return {
        "bool": {
            "filter": [{"exists": {"field": "deeplog.feedback"}}, job_query(job_name)],
            "should": [
                {"bool": {"must_not": [{"exists": {"field": "deeplog.feedback_status"}}]}},
                {
                    # An invalid verdict corrected since. A document invalid for what it holds has a
                    # processed time: it is read again only once a verdict is set anew (`mark` clears it).
                    "bool": {
                        "filter": [
                            {"term": {"deeplog.feedback_status": INVALID}},
                            {"terms": {"deeplog.feedback": list(VERDICTS)}},
                        ],
                        "must_not": [{"exists": {"field": "deeplog.feedback_applied_at"}}],
                    }
                },
            ],
            "minimum_should_match": 1,
        }
    }


def _pending(clients: Clients, config: Config) -> list[dict[str, Any]]:
    index = config.output.anomalies_index
    if not clients.es.indices.exists(index=index):
        return []
    clients.es.indices.refresh(index=index)
    res = clients.es.search(
        index=index,
        query=pending_query(config.job.name),
        sort=[{"@timestamp": {"order": "asc", "unmapped_type": "date"}}],
        size=config.feedback.max_per_run,
        # The job reads nothing else: the raw event's message and the rest stay on the server.
        source_includes=["deeplog"],
    )
    return res["hits"]["hits"]


def _update(hit: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"_op_type": "update", "_index": hit["_index"], "_id": hit["_id"], "doc": {"deeplog": fields}}


# ------------------------------------------------------------------------------------------------ lineage


def lineage_of(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The feedback lineage in a checkpoint's meta (None for a trained, not fine-tuned, version)."""
    lin = meta.get("lineage")
    return lin if isinstance(lin, dict) else None


def applied_ids(store: ModelStore, version: str) -> dict[str, tuple[str, str]]:
    """feedback id -> (version that applied it, when) over `version` and its feedback ancestors."""
    out: dict[str, tuple[str, str]] = {}
    seen: set[str] = set()
    v: str | None = version
    while v and v not in seen and (store.dir / v / KEYMODEL).is_file():
        seen.add(v)
        _, _, header = load_checkpoint(store.dir / v / KEYMODEL)
        lin = lineage_of(header["meta"])
        if lin is None:
            break
        for fid in lin.get("feedback_ids", []):
            out.setdefault(str(fid), (v, str(lin.get("applied_at"))))
        v = lin.get("parent")
    return out


def copy_version(src: Any, dst: Any) -> None:
    """Every artifact of version `src` but its key model into `dst` (templater, workflows, parameter model,
    normal sample, parameter feedback...), so a feedback version keeps all that the update did not change."""
    for item in src.iterdir():
        if item.name == KEYMODEL:
            continue
        if item.is_dir():
            shutil.copytree(item, dst / item.name)
        else:
            shutil.copy2(item, dst / item.name)


# ----------------------------------------------------------------------------------------------- training


def _resolve(key_id: int, template: str, vocab: Vocabulary, index: dict[str, int]) -> int | None:
    """A key id of an anomaly document -> the id of the same template in this model's vocabulary, or None.

    The id is trusted only inside the vocabulary's template range: `vocab.template` answers an id beyond it
    with the `<UNK>` text, so a tampered id with that text would otherwise reach the model's embedding."""
    if key_id == EOS:
        return EOS
    if NUM_RESERVED <= key_id < len(vocab) and vocab.template(key_id) == template:
        return key_id
    return index.get(template)


def pair_of(d: Details, vocab: Vocabulary, window: int) -> tuple[list[int], int] | str:
    """The anomaly's (window [h] left-padded, actual key) in this vocabulary, or why it has none."""
    if d.anomaly_type not in LEARNABLE:
        return (
            f"{d.anomaly_type} anomalies cannot be learned from feedback (retrain to learn new log templates)"
        )
    index = {t: i for i, t in enumerate(vocab.templates) if i >= NUM_RESERVED}
    ids, texts = d.window.key_ids, d.window.templates
    if len(ids) != len(texts) or not ids:
        return "the anomaly document has no usable window"
    hist = [_resolve(k, t, vocab, index) for k, t in zip(ids, texts, strict=True)]
    target = _resolve(d.key.id, d.key.template, vocab, index)
    if target is None or any(k is None for k in hist):
        return "its log templates are not in the current model's vocabulary (retrained since?)"
    hist = [int(k) for k in hist if k is not None][-window:]
    return [PAD] * (window - len(hist)) + hist, int(target)


@dataclass
class FinetuneReport:
    steps: int
    accepted_before: int
    accepted_after: int
    pairs: int
    replay_repaired: int = 0  # replay windows the update flagged at some point and was trained back on
    earlier_broken: int = 0  # pairs of earlier feedback the parent accepted and the update flags
    unlearned: tuple[int, ...] = ()  # indices of the marked pairs the update still flags


# Standard errors the rise on the recent traffic must exceed (besides the tolerance) to reject an update.
RECENT_Z = 2.0


@dataclass(frozen=True)
class RecentCheck:
    """An update on the sample of recent live traffic (count-weighted windows): what it flags that the parent
    accepted, and what it accepts that the parent flagged."""

    windows: float = 0.0
    alarms_before: float = 0.0
    newly_flagged: float = 0.0
    cleared: float = 0.0

    @property
    def rate_before(self) -> float:
        return self.alarms_before / self.windows if self.windows else 0.0

    @property
    def rate_after(self) -> float:
        after = self.alarms_before + self.newly_flagged - self.cleared
        return after / self.windows if self.windows else 0.0

    def rises_beyond(self, tolerance: float) -> bool:
        """The alarm rate rises by more than `tolerance` plus two standard errors of the paired difference
        (McNemar): a few windows that flip in a small sample are not evidence."""
        if not self.windows:
            return False
        noise = RECENT_Z * math.sqrt(self.newly_flagged + self.cleared) / self.windows
        return self.rate_after - self.rate_before > tolerance + noise


def recent_check(model: KeyLSTM, tuned: KeyLSTM, rows: Rows, judge: Judge) -> RecentCheck:
    """The parent's (`model`, judged by `judge`) and the update's verdicts on the recent windows (distinct
    pairs with counts)."""
    if len(rows) == 0:
        return RecentCheck()
    was = accepted(model, rows.keys, rows.targets, judge)
    now = accepted(tuned, rows.keys, rows.targets, judge.of_update(model))
    c = rows.counts
    return RecentCheck(
        float(c.sum()),
        float((c * ~was).sum()),
        float((c * (was & ~now)).sum()),
        float((c * (~was & now)).sum()),
    )


def checked_figures(before: float, after: float, live: RecentCheck) -> dict[str, Any]:
    """The safety check's figures for a run summary: held-out false alarms and the alarm rate on recent
    live traffic, before and after (a feedback update's or a retraining candidate's)."""
    return {
        "heldout_false_alarm_before": round(before, 6),
        "heldout_false_alarm_after": round(after, 6),
        "recent_windows": int(live.windows),
        "recent_alarm_before": round(live.rate_before, 6),
        "recent_alarm_after": round(live.rate_after, 6),
    }


def update_lineage(
    *,
    parent: str,
    run_id: str,
    applied_at: str,
    steps: int,
    heldout: tuple[float, float],
    live: RecentCheck,
    pairs: list[list[Any]],
) -> dict[str, Any]:
    """The lineage a published version carries in its key model's meta: its parent, the run and the check
    it passed, and the (window, key) pairs it keeps learned (`applied_ids`, `lineage_of` read it back)."""
    return {
        "parent": parent,
        "applied_at": applied_at,
        "run_id": run_id,
        "steps": steps,
        "heldout_false_alarm_before": heldout[0],
        "heldout_false_alarm_after": heldout[1],
        "recent_alarm_before": live.rate_before,
        "recent_alarm_after": live.rate_after,
        "pairs": pairs,
    }


def verdict(
    rep: FinetuneReport,
    fa_before: float,
    fa_after: float,
    tolerance: float,
    recent: RecentCheck | None = None,
) -> str | None:
    """Why an update must be rejected, or None: it raises the held-out false-alarm rate or the alarm rate on
    the recent live traffic beyond the tolerance, it could not learn every marked pattern within the step
    bound, or it undoes earlier feedback."""
    if fa_after - fa_before > tolerance:
        return f"held-out false-alarm rate {fa_before:.4%} -> {fa_after:.4%} exceeds feedback.tolerance {tolerance:g}"
    if recent is not None and recent.rises_beyond(tolerance):
        # The windows the job scored lately: an update that takes back what the model accepted there only in
        # passing (at the top-g edge) shows here, not on the training windows above.
        return (
            f"alarm rate on recent traffic {recent.rate_before:.4%} -> {recent.rate_after:.4%} "
            f"({recent.newly_flagged:g} of {recent.windows:g} sampled windows newly flagged, "
            f"{recent.cleared:g} cleared) exceeds feedback.tolerance {tolerance:g}"
        )
    if rep.accepted_after < rep.pairs:
        # Pushing on a pattern that normal data contradicts mostly damages what nobody checks.
        return (
            f"only {rep.accepted_after} of {rep.pairs} marked patterns were learned within feedback.max_steps"
        )
    if rep.earlier_broken:
        return f"it would flag {rep.earlier_broken} pattern(s) of earlier feedback again"
    return None


@dataclass(frozen=True)
class Judge:
    """The detection job's verdict on (window -> key) pairs (`detector.KeyDetector`): the key among the
    model's top g above the probability floor and, for a feedback version, accepted by the trained model its
    lineage started from (`anchor`) or raised `anchor_ratio` times by feedback."""

    top_g: int
    floor: float
    anchor: KeyLSTM | None = None  # None: the judged model is the trained one
    anchor_ratio: float = 0.0

    def of_update(self, parent: KeyLSTM) -> Judge:
        """The judge of an update of `parent`: anchored to the lineage's trained model (`parent` itself when
        it is that model)."""
        return replace(self, anchor=self.anchor if self.anchor is not None else parent)


def accepted(
    model: KeyLSTM, keys: torch.Tensor, targets: torch.Tensor, judge: Judge, at_least: float = 0.0
) -> torch.Tensor:
    """[N] bool: the detector would accept target i after window i (the job's exact verdict), and gives it
    at least `at_least` probability."""
    det = KeyDetector(
        model,
        judge.top_g,
        device=next(model.parameters()).device,
        cache_size=0,
        min_probability=judge.floor,
        anchor=judge.anchor if judge.anchor is not model else None,
        anchor_ratio=judge.anchor_ratio,
    )
    n = targets.numel()
    z = torch.zeros(n, dtype=torch.long)
    sc = det.score(Windows(keys, targets, z, z))
    return ~sc.anomalous & (sc.prob >= at_least)


def false_alarm_rate(model: KeyLSTM, rows: Rows, judge: Judge) -> float:
    """Share of the (count-weighted) normal windows the detector would flag."""
    if len(rows) == 0:
        return 0.0
    ok = accepted(model, rows.keys, rows.targets, judge)
    return float((rows.counts * (~ok).float()).sum() / rows.counts.sum())


def _licence(fk: torch.Tensor, ft: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[V, V] bool: L[a, k] = a marked pair ends its window with key a and has target k, so the update may
    raise k after normal windows ending with a (where the marked key joins the usual successors)."""
    lic = torch.zeros(vocab_size, vocab_size, dtype=torch.bool, device=fk.device)
    if ft.numel():
        lic[fk[:, -1], ft] = True
    return lic


# The no-loosening guard lets a key the parent rejects after a normal window rise to this many times its
# parent probability, or to this share of the floor, whichever is higher, before the penalty applies: the
# tail may move a little, but not into the accepted set.
LOOSEN_RATIO = 1.5
LOOSEN_FLOOR_SHARE = 0.8


@dataclass(frozen=True)
class Pairs:
    """(window -> key) pairs: keys [P, h], targets [P]."""

    keys: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return self.targets.numel()

    def __getitem__(self, rows: torch.Tensor) -> Pairs:
        return Pairs(self.keys[rows], self.targets[rows])


def finetune(
    model: KeyLSTM,
    marked: Pairs,
    replay: Rows,
    model_cfg: ModelConfig,
    fb: FeedbackConfig,
    *,
    keep: Pairs | None = None,
    anchor: KeyLSTM | None = None,
    check_every: int = 10,
) -> tuple[KeyLSTM, FinetuneReport]:
    """A copy of `model` fine-tuned until the `marked` pairs are accepted with at least
    `fb.target_probability` (a margin, so that similar windows that were not marked are accepted too) and
    every replay window the model accepted before still is (at most `fb.max_steps` steps).

    Every step: the distinct feedback pairs (and earlier feedback pairs to keep, `keep`) and the replay
    windows the update has broken so far, each a cross-entropy weighted as `fb.weight` normal windows; and a
    batch of `fb.replay_batch` normal training windows drawn by frequency, distilled toward the parent
    (KL(parent || update) over all next keys, not only the observed one), plus `fb.guard_weight` x a
    penalty on every key the parent rejects after such a window (not in its top g above the floor) that the
    update raises toward acceptance. So the update moves the marked pairs and leaves the rest of the
    picture as it was: the keys the parent rejected after a normal window are what catches a missing or a
    repeated step there, and a plain cross-entropy on the observed next keys lets them drift up unseen. A
    marked key may rise after normal windows that end with the same key as its marked window (it joins
    their successors there). Broken replay windows are repaired (an LSTM that learns "VM Stopped, then
    destroyed" tends to forget "VM Stopped, then powering on" until reminded). Every "accepted" is the
    detector's verdict anchored to `anchor`, the trained model of the lineage (None: `model` is that model),
    with `fb.anchor_ratio`."""
    floor = model_cfg.floor(model.args.vocab_size)
    g = model_cfg.top_g
    device = next(model.parameters()).device
    parent = model.eval()
    tuned = copy.deepcopy(model)
    judge = Judge(g, floor, anchor if anchor is not None else parent, fb.anchor_ratio)

    def ok(m: KeyLSTM, k: torch.Tensor, t: torch.Tensor, at_least: float = 0.0) -> torch.Tensor:
        return accepted(m, k, t, judge, at_least)

    keys, targets = marked.keys, marked.targets
    if keep is None:
        keep = marked[torch.zeros(len(marked), dtype=torch.bool)]
    keep_keys, keep_targets = keep.keys, keep.targets
    fk, ft = keys, targets
    if keep_targets.numel():
        fk, ft = torch.cat([fk, keep_keys]), torch.cat([ft, keep_targets])
    # Distinct pairs, each with the same weight: a pattern marked a hundred times must not outweigh the
    # normal successors of its window (it joins them; the detector only needs it in the top g).
    rows = torch.unique(torch.cat([fk, ft[:, None]], 1), dim=0)  # [P', h + 1]
    fk, ft = rows[:, :-1].to(device), rows[:, -1].to(device)
    licence = _licence(fk, ft, model.args.vocab_size)  # [V, V]
    before = int(ok(tuned, keys, targets).sum())
    learned = int(ok(tuned, keys, targets, fb.target_probability).sum())
    replay_ok = ok(tuned, replay.keys, replay.targets)  # [R] accepted by the parent
    broken = torch.zeros_like(replay_ok)  # replay rows this update has flagged at some check
    # Earlier feedback the parent accepts must stay accepted.
    keep_ok = ok(tuned, keep_keys, keep_targets)
    gen = torch.Generator().manual_seed(fb.seed)
    torch.manual_seed(fb.seed)
    opt = torch.optim.Adam(tuned.parameters(), lr=fb.learning_rate)
    rk, rt, rc = replay.keys.to(device), replay.targets.to(device), replay.counts
    log_floor = math.log(LOOSEN_FLOOR_SHARE * floor) if floor > 0 else -math.inf
    steps = 0
    done = learned == targets.numel()
    while not done and steps < fb.max_steps:
        tuned.train()
        bk, bt = torch.cat([fk, rk[broken.to(device)]]), torch.cat([ft, rt[broken.to(device)]])
        bw = torch.full((bt.numel(),), float(fb.weight), device=device)
        for _ in range(min(check_every, fb.max_steps - steps)):
            stopping.check("feedback fine-tuning")  # between steps: the update is discarded, not published
            draws = torch.multinomial(rc, fb.replay_batch, replacement=True, generator=gen)
            idx, mult = torch.unique(draws, return_counts=True)
            idx, mult = idx.to(device), mult.to(device, torch.float)
            n = idx.numel()
            with torch.no_grad():
                p_logp = parent(rk[idx])[0].log_softmax(-1)  # [n, V]
                p_top = torch.zeros_like(p_logp, dtype=torch.bool).scatter_(
                    1, p_logp.topk(g, -1).indices, True
                )
                rejected = ~(p_top & (p_logp.exp() >= floor)) & ~licence[rk[idx, -1]]  # [n, V]
                ceiling = torch.clamp(p_logp + math.log(LOOSEN_RATIO), min=log_floor)  # [n, V]
            logits, _ = tuned(torch.cat([rk[idx], bk]))  # [n + B, V]
            logq = logits[:n].log_softmax(-1)  # [n, V]
            kl = (p_logp.exp() * (p_logp - logq)).sum(-1)  # [n]
            loosen = (torch.relu(logq - ceiling) * rejected).sum(-1)  # [n]
            ce = torch.nn.functional.cross_entropy(
                logits[n:], bt, reduction="none", label_smoothing=model_cfg.label_smoothing
            )  # [B]
            # One weighted mean over both: the replay windows weigh by how often they occur, each marked
            # or repaired pair as `fb.weight` of them.
            loss = ((kl + fb.guard_weight * loosen) * mult).sum() + (ce * bw).sum()
            loss = loss / (mult.sum() + bw.sum())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        now_ok = ok(tuned, replay.keys, replay.targets)
        lost = replay_ok & ~now_ok
        broken |= lost
        kept = bool((~keep_ok | ok(tuned, keep_keys, keep_targets)).all())
        done = bool(ok(tuned, keys, targets, fb.target_probability).all()) and kept
        done = done and not bool(lost.any())
    tuned.eval()
    learnt = ok(tuned, keys, targets)
    earlier_broken = int((keep_ok & ~ok(tuned, keep_keys, keep_targets)).sum())
    return tuned, FinetuneReport(
        steps,
        before,
        int(learnt.sum()),
        int(targets.numel()),
        int(broken.sum()),
        earlier_broken,
        tuple((~learnt).nonzero().flatten().tolist()),
    )


def finetune_learnable(
    model: KeyLSTM,
    marked: Pairs,
    replay: Rows,
    model_cfg: ModelConfig,
    fb: FeedbackConfig,
    *,
    keep: Pairs | None = None,
    anchor: KeyLSTM | None = None,
) -> tuple[KeyLSTM, FinetuneReport, torch.Tensor]:
    """`finetune`, and where some marked pairs were not learned within `fb.max_steps` while others were,
    the update is made again from the parent without them -> (update, its report, [P] bool: the pairs it
    holds). A pattern normal data contradicts must not hold back every other responder's feedback of the run;
    the verdict still rejects the retry if it cannot learn what is left."""
    tuned, rep = finetune(model, marked, replay, model_cfg, fb, keep=keep, anchor=anchor)
    held = torch.ones(len(marked), dtype=torch.bool)
    if rep.unlearned and len(rep.unlearned) < len(marked):
        held[list(rep.unlearned)] = False
        log.info(
            "feedback: %s of %s marked patterns not learned within feedback.max_steps; updating without them",
            len(rep.unlearned),
            len(marked),
        )
        tuned, rep = finetune(model, marked[held], replay, model_cfg, fb, keep=keep, anchor=anchor)
    return tuned, rep, held


# ---------------------------------------------------------------------------------------------------- job


@dataclass
class _Fp:
    hit: dict[str, Any]
    window: list[int]
    target: int


@dataclass
class _PFp:
    hit: dict[str, Any]
    doc: Details
    series: tuple[int, int]
    # The factor on the bound in effect when it was detected (`paramfeedback.widening`); that bound may
    # already have been widened by earlier feedback (see `_widen`).
    scale: float


def series_of(d: Details, vocab: Vocabulary) -> tuple[int, int] | str:
    """A parameter anomaly's (previous key, key) series in this vocabulary, or why there is none."""
    index = {t: i for i, t in enumerate(vocab.templates) if i >= NUM_RESERVED}
    ids, texts = d.window.key_ids, d.window.templates
    if len(ids) != len(texts):
        return "the anomaly document has no usable window"
    prev = _resolve(ids[-1], texts[-1], vocab, index) if ids else PAD
    target = _resolve(d.key.id, d.key.template, vocab, index)
    if prev is None or target is None:
        return "its log templates are not in the current model's vocabulary (retrained since?)"
    return int(prev), int(target)


# Longer than any name `ModelStore.create` gives, far below a file system's limit on a name.
MAX_VERSION_NAME = 128


def version_name_problem(name: str) -> str | None:
    """Why a model version named by a document cannot be a version directory of the store, or None. Checked
    before the name touches the file system."""
    if not name or len(name) > MAX_VERSION_NAME:
        return f"deeplog.model_version: {len(name)} characters, not a model version name"
    if (
        name in (".", "..")
        or name.startswith(".")
        or any(c in name for c in "/\\\0")
        or not name.isprintable()
    ):
        return f"deeplog.model_version: {name!r:.80} is not a model version name"
    return None


def version_dir(store: ModelStore, name: str) -> Path | None:
    """The directory of a version the store lists, resolved inside the store, or None."""
    if version_name_problem(name) is not None or name not in store.versions():
        return None
    root = store.dir.resolve()
    path = (root / name).resolve()
    return path if path.parent == root else None


@dataclass
class _Run:
    """One feedback run: what its steps share."""

    config: Config
    clients: Clients
    store: ModelStore
    summary: FeedbackSummary
    now: str
    # Called between publishing a new version and marking the documents (tests simulate a crash there).
    after_publish: Callable[[str], None] | None = None
    updates: list[dict[str, Any]] = field(default_factory=list)

    def mark_all(self, hits: Sequence[dict[str, Any]], status: str, error: str) -> None:
        """Mark documents the run did not apply (`status`: rejected, unsupported, invalid) and count them;
        the time it sets keeps an `invalid` document from being read again until a verdict is set anew."""
        self.updates += [
            _update(h, feedback_status=status, feedback_error=error, feedback_applied_at=self.now)
            for h in hits
        ]
        self.summary.feedback[status] += len(hits)

    def published(self, new_version: str, hits: Sequence[dict[str, Any]]) -> None:
        """After a version is published: the crash hook, the summary, then the documents' `applied`
        updates."""
        if self.after_publish is not None:
            self.after_publish(new_version)
        self.summary.model_version = new_version
        self.summary.feedback[APPLIED] += len(hits)
        self.updates += [
            _update(
                h,
                feedback_status=APPLIED,
                feedback_applied_at=self.now,
                feedback_model_version=new_version,
                feedback_error=None,
            )
            for h in hits
        ]


@dataclass
class _Parent:
    """The current model version a run updates."""

    version: str
    path: Path
    model: KeyLSTM
    vocab: Vocabulary
    header: dict[str, Any]

    @property
    def meta(self) -> dict[str, Any]:
        return self.header["meta"]


def _widen(run: _Run, pfps: Sequence[_PFp]) -> None:
    """Parameter false positives: widen their series' threshold in a new version (lineage as for the key
    model; the key model itself is unchanged), publish, then queue the documents' updates."""
    store = run.store
    version, path = store.current()
    model, vocab, header = load_checkpoint(path / KEYMODEL)
    scales = paramfeedback.load(path)
    then: dict[str, paramfeedback.Scales | str] = {}  # model version -> its scales (or why not), read once
    taken: list[_PFp] = []
    for f in pfps:
        # The document's threshold is that version's (possibly widened) bound: scale from the base bound.
        v = f.doc.model_version
        if v not in then:
            then[v] = _scales_of(store, v)
        was = then[v]
        if isinstance(was, str):
            run.mark_all([f.hit], UNSUPPORTED, was)
            continue
        need = was.get(f.series, 1.0) * f.scale
        why = paramfeedback.capped(max(scales.get(f.series, 1.0), need))
        if why is not None:
            run.mark_all([f.hit], INVALID, why)
            continue
        scales[f.series] = max(scales.get(f.series, 1.0), need)
        taken.append(f)
    pfps = taken
    if not pfps:
        return
    meta = header["meta"]
    parent_lineage = lineage_of(meta) or {}
    lineage = {
        "parent": version,
        "kind": "parameter",
        "feedback_ids": [f.hit["_id"] for f in pfps],
        "applied_at": run.now,
        "run_id": run.summary.run_id,
        "steps": 0,
        "series_widened": {key_text(f.series): round(scales[f.series], 4) for f in pfps},
        "pairs": parent_lineage.get("pairs", []),  # the key model's earlier feedback stays guarded
    }
    new_version, new_path = store.create()
    copy_version(path, new_path)
    paramfeedback.save(new_path, scales)
    save_checkpoint(new_path / KEYMODEL, model, vocab, {**meta, "lineage": lineage})
    store.publish(new_version)
    log.info(
        "feedback: model %s published (parent %s): parameter thresholds widened for %s series",
        new_version,
        version,
        len({f.series for f in pfps}),
    )
    run.published(new_version, [f.hit for f in pfps])


def _scales_of(store: ModelStore, version: str) -> paramfeedback.Scales | str:
    """The threshold scales of the version a document names (empty for a version the store no longer holds),
    or why they cannot be read. The name comes from the document: only a version the store lists is read, so
    a path cannot point the job at files outside it."""
    path = version_dir(store, version)
    if path is None:
        return {}
    try:
        return paramfeedback.load(path)
    except ArtifactError as e:
        return f"the threshold scales of model version {version} are unreadable ({e})"


def apply_feedback(
    config: Config,
    clients: Clients,
    *,
    after_publish: Callable[[str], None] | None = None,
) -> FeedbackSummary:
    """One feedback run (see the module contract). `after_publish(version)` is called between publishing the
    new version and marking the documents: tests use it to simulate a crash there."""
    summary = FeedbackSummary(run_id=uuid.uuid4().hex, job=FEEDBACK_JOB)
    with recorded(clients, config, summary):
        store = ModelStore(config.model.dir)
        with store.lock():  # one feedback writer at a time (the daemon and a manual `feedback apply`)
            _apply(_Run(config, clients, store, summary, utc_now(), after_publish))
        return summary


def _reconcile(run: _Run, hits: Sequence[dict[str, Any]], version: str) -> list[dict[str, Any]]:
    """(1) Feedback already in the current model (a run that crashed after publishing) is marked, never
    trained again -> the rest."""
    done = applied_ids(run.store, version)
    rest = []
    for h in hits:
        if h["_id"] in done:
            v, at = done[h["_id"]]
            run.updates.append(
                _update(
                    h,
                    feedback_status=APPLIED,
                    feedback_applied_at=at,
                    feedback_model_version=v,
                    feedback_error=None,
                )
            )
            run.summary.feedback["reconciled"] += 1
        else:
            rest.append(h)
    return rest


def _sort(run: _Run, parent: _Parent, hits: Sequence[dict[str, Any]]) -> tuple[list[_Fp], list[_PFp]]:
    """(2) Verdicts that train nothing are marked -> the key and the parameter false positives."""
    fps: list[_Fp] = []
    pfps: list[_PFp] = []
    secret = seal.existing_key(run.store.dir)
    for h in hits:
        try:
            found = _sort_one(run, parent, h, secret)
        except Exception as e:  # noqa: BLE001 - one document, whatever it holds, must not stop the others
            log.exception("feedback: anomaly document %s could not be read", h.get("_id"))
            run.mark_all([h], INVALID, f"the anomaly document could not be read ({type(e).__name__}: {e})")
            continue
        if isinstance(found, _Fp):
            fps.append(found)
        elif isinstance(found, _PFp):
            pfps.append(found)
    return fps, pfps


def _sort_one(run: _Run, parent: _Parent, h: dict[str, Any], secret: bytes | None) -> _Fp | _PFp | None:
    """One document: marked (None), or the false positive it teaches. What it teaches comes from the fields
    the detection job sealed; only the verdict is the responder's."""
    fbc, now = run.summary.feedback, run.now
    verdict = Feedback.from_source(h["_source"]).feedback
    if verdict not in VERDICTS:
        # As JSON, the form the responder wrote it in: 1, true, "fp".
        err = f"invalid feedback {json.dumps(verdict)}: use {' or '.join(VERDICTS)}"
        run.updates.append(_update(h, feedback_status=INVALID, feedback_error=err))
        fbc[INVALID] += 1
        return None
    if verdict == TRUE_POSITIVE:
        run.updates.append(_update(h, feedback_status=RECORDED, feedback_applied_at=now, feedback_error=None))
        fbc["true_positive"] += 1
        return None
    try:
        # Only the `deeplog` object: the job uses nothing else, and other tools may change the rest.
        doc = Details.from_source(h["_source"])
    except InvalidAnomaly as e:
        # Unsupported: not the anomaly document's form (another tool's change, or values the mapping let in).
        run.mark_all([h], UNSUPPORTED, f"the anomaly document is malformed ({e})")
        return None
    why = version_name_problem(doc.model_version) or seal.check(secret, doc.learned(), doc.seal)
    if why is not None:
        run.mark_all([h], INVALID, why)
        return None
    if doc.anomaly_type != "parameter":
        pair = pair_of(doc, parent.vocab, parent.model.args.window)
        if isinstance(pair, str):
            run.mark_all([h], UNSUPPORTED, pair)
            return None
        return _Fp(h, *pair)
    series = series_of(doc, parent.vocab)
    if isinstance(series, str) or not (parent.path / PARAMMODEL).is_file():
        why = series if isinstance(series, str) else "the current model version has no parameter model"
        run.mark_all([h], UNSUPPORTED, why)
        return None
    if doc.parameter is None:
        run.mark_all([h], UNSUPPORTED, "the anomaly document has no parameter error and threshold")
        return None
    scale = paramfeedback.widening(doc.parameter.error, doc.parameter.threshold)
    if isinstance(scale, str):
        run.mark_all([h], INVALID, scale)
        return None
    return _PFp(h, doc, series, scale)


def _apply(run: _Run) -> None:
    config, summary, store = run.config, run.summary, run.store
    fbc = summary.feedback
    # Verdicts on whole incidents reach their anomalies first, so this run reads them with the rest.
    apply_incident_verdicts(run.clients, config)
    # Pending feedback first: with none, a daemon started before the first training has nothing to fail on.
    hits = _pending(run.clients, config)
    fbc["found"] = len(hits)
    if not hits:
        try:
            summary.model_version = store.current()[0]
        except DeeplogError:
            pass
        return
    version, path = store.current()
    summary.model_version = version
    rest = _reconcile(run, hits, version)
    use_threads(config.model.threads)
    model, vocab, header = load_checkpoint(path / KEYMODEL)
    parent = _Parent(version, path, model.to(resolve_device(config.model.device)), vocab, header)
    fps, pfps = _sort(run, parent, rest)
    if fps:
        _learn(run, parent, fps)
    if pfps and summary.status != REJECTED:
        # On top of whatever the key-model update just published: one version per run and kind.
        _widen(run, pfps)
    elif pfps:
        err = "not applied: the key-model update of the same run was rejected; mark again to retry"
        run.mark_all([f.hit for f in pfps], REJECTED, err)
    result = sink.write(run.clients, run.updates, refresh=True)
    summary.rejected.update(result.rejected)
    for k in ("invalid", "rejected", "unsupported"):
        if fbc[k]:
            log.warning("feedback run %s: %s feedback document(s) %s", summary.run_id, fbc[k], k)


def recent_windows(config: Config, store: ModelStore, vocab: Vocabulary, window: int) -> Rows:
    """The detection job's sample of the windows it scored lately (`recent`), as distinct pairs with counts;
    empty when feedback.recent_windows is 0 or no detection ran under this vocabulary yet."""
    cap = config.feedback.recent_windows
    sample = RecentSample.load(store.dir, vocab, window, cap) if cap else RecentSample.empty(vocab, window, 0)
    return sample.rows()


def _learn(run: _Run, parent: _Parent, fps: Sequence[_Fp]) -> None:
    """(3)-(5) Fine-tune on the false positives, check, publish, and queue the documents' updates."""
    config, summary, model, version = run.config, run.summary, parent.model, parent.version
    sample = NormalSample.load(parent.path / NORMAL_SAMPLE)
    marked = Pairs(
        torch.tensor([f.window for f in fps], dtype=torch.long),
        torch.tensor([f.target for f in fps], dtype=torch.long),
    )
    kept = (lineage_of(parent.meta) or {}).get("pairs", [])
    keep = Pairs(
        torch.tensor([p[0] for p in kept], dtype=torch.long).view(-1, model.args.window),
        torch.tensor([p[1] for p in kept], dtype=torch.long),
    )
    # The trained model this lineage started from (None: the parent is that model).
    anchor = load_anchor(parent.path, model)
    tuned, rep, held = finetune_learnable(
        model, marked, sample.replay, config.model, config.feedback, keep=keep, anchor=anchor
    )
    set_aside = [f for f, h in zip(fps, held.tolist(), strict=True) if not h]
    fps = [f for f, h in zip(fps, held.tolist(), strict=True) if h]
    floor = config.model.floor(model.args.vocab_size)
    judge = Judge(config.model.top_g, floor, anchor, config.feedback.anchor_ratio)
    before = false_alarm_rate(model, sample.heldout, judge)
    after = false_alarm_rate(tuned, sample.heldout, judge.of_update(model))
    rows = recent_windows(config, run.store, parent.vocab, model.args.window)
    live = recent_check(model, tuned, rows, judge)
    summary.feedback_detail = {
        "parent_version": version,
        "steps": rep.steps,
        "pairs_accepted_before": rep.accepted_before,
        "pairs_accepted_after": rep.accepted_after,
        "pairs_set_aside": len(set_aside),
        **checked_figures(before, after, live),
        "heldout_source": sample.heldout_source,
        "recent_newly_flagged": int(live.newly_flagged),
        "recent_cleared": int(live.cleared),
    }
    reason = verdict(rep, before, after, config.feedback.tolerance, live)
    if reason is not None:
        err = f"update rejected: {reason}; model {version} kept"
        log.warning("%s", err)
        summary.status = REJECTED
        run.mark_all([f.hit for f in fps + set_aside], REJECTED, err)
        return
    lineage = {
        **update_lineage(
            parent=version,
            run_id=summary.run_id,
            applied_at=run.now,
            steps=rep.steps,
            heldout=(before, after),
            live=live,
            pairs=(kept + [[f.window, f.target] for f in fps])[-MAX_KEPT_PAIRS:],
        ),
        "feedback_ids": [f.hit["_id"] for f in fps],
    }
    new_version, new_path = run.store.create()
    copy_version(parent.path, new_path)  # with the parent's anchor, when the parent is a feedback version
    if anchor is None:
        shutil.copy2(parent.path / KEYMODEL, new_path / ANCHOR)
    save_checkpoint(new_path / KEYMODEL, tuned.cpu(), parent.vocab, {**parent.meta, "lineage": lineage})
    run.store.publish(new_version)
    log.info(
        "feedback: model %s published (parent %s, %s false positives, %s steps, held-out false alarms %.4f%% -> %.4f%%)",
        new_version,
        version,
        len(fps),
        rep.steps,
        100 * before,
        100 * after,
    )
    run.published(new_version, [f.hit for f in fps])
    if set_aside:
        err = (
            f"not learned within feedback.max_steps ({config.feedback.max_steps}): normal data contradicts "
            f"this pattern; the run's other {len(fps)} false positive(s) went into model {new_version}"
        )
        log.warning(
            "feedback run %s: %s marked pattern(s) set aside: %s", summary.run_id, len(set_aside), err
        )
        run.mark_all([f.hit for f in set_aside], REJECTED, err)


# ------------------------------------------------------------------------------------------ model versions


def describe_versions(store: ModelStore) -> list[dict[str, Any]]:
    """Every version, oldest first: created, current or not, parent and feedback applied (lineage)."""
    try:
        current = store.current()[0]
    except DeeplogError:
        current = None
    out = []
    for v in store.versions():
        p = store.dir / v / KEYMODEL
        row: dict[str, Any] = {"version": v, "current": v == current}
        try:
            _, _, header = load_checkpoint(p)
        except DeeplogError as e:
            row["error"] = str(e)
            out.append(row)
            continue
        lin = lineage_of(header["meta"]) or {}
        row.update(
            created=header.get("created"),
            parent=lin.get("parent"),
            feedback_applied=len(lin.get("feedback_ids", [])),
            feedback_kind=lin.get("kind", "key") if lin else None,
            series_widened=lin.get("series_widened"),
            heldout_false_alarm_before=lin.get("heldout_false_alarm_before"),
            heldout_false_alarm_after=lin.get("heldout_false_alarm_after"),
            feedback_sample=(store.dir / v / NORMAL_SAMPLE).is_file(),
        )
        out.append(row)
    return out
