"""evaluate_feedback: a drift scenario -> false-positive rate and recall before and after feedback.

Contract: `run(seed, ...) -> dict` (the figures behind `deeplog-siem evaluate-feedback`):
1. `workload.generate_workload`: `n_train` normal tasks (seed) to train on; then two drifted test sets
   (seeds + 1 and + 2) of `n_test` tasks each, where `drift_rate` of the `delete` tasks have a new,
   legitimate step (`workload.DRIFT_STEP`: a known line in a new place) and `path_rate` of all tasks an
   injected path anomaly (a missing, repeated or foreign step: the true anomalies).
2. The product's stages: `Templater` (format `openstack`), sessions by instance id, the key model
   (`train_key_model`, `ModelConfig` defaults except a smaller, faster size), the detector's verdict (top g
   and the probability floor), the normal-window sample stored at train time (`samples`).
3. Before: every event of the first test set is scored (plus each session's end); an anomaly is a flagged
   event. A random `mark_share` of the anomalies that fall in tasks without an injected anomaly (the false
   positives) is "marked by responders"; their (window -> key) pairs go through the feedback job's own
   `feedback.finetune_learnable` (pairs it cannot learn are set aside) and safety check (`feedback.false_alarm_rate` on the held-out normal windows, and
   `feedback.recent_check` on the job's sample of recent windows: `recent.RecentSample`, filled as the
   detection job fills it, from the scoring passes over the first test set before each round).
4. After: both test sets are scored again with the updated model (anchored to the trained one, as the job
   scores a feedback version: `feedback.anchor_ratio`). Per test set: `fp_rate` = normal tasks
   (no injected anomaly in their session) with at least one flagged event (a session-end flag counts for
   the session's last task) / normal tasks; `recall` = tasks with an injected anomaly flagged (an event of
   the task, the line after a missing step, or the session end after it) / such tasks. The first set holds
   the marked anomalies; the second ("fresh") is unseen data with the same drift.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from deeplog_siem.config import FeedbackConfig, ModelConfig, TemplaterConfig
from deeplog_siem.detector import KeyDetector, build_windows
from deeplog_siem.feedback import Judge, Pairs, false_alarm_rate, finetune_learnable, recent_check, verdict
from deeplog_siem.model import KeyLSTM, train_key_model
from deeplog_siem.recent import RecentSample
from deeplog_siem.samples import build_normal_sample
from deeplog_siem.templater import Templater
from deeplog_siem.vocab import UNK

from .evaluate_params import SIMILARITY, _events
from .workload import DRIFT_STEP, Workload, generate_workload

log = logging.getLogger(__name__)


class _TestSet:
    """A generated test workload, templated and windowed once; scored by any model."""

    def __init__(self, tpl: Templater, w: Workload, window: int) -> None:
        self.w = w
        ev = _events(tpl, w, False, window)
        self.sids = list(ev["per_session"])
        self.lines = [[ev["lines"][j] for j in ev["per_session"][s]] for s in self.sids]
        sessions = [[ev["keys"][j] for j in ev["per_session"][s]] for s in self.sids]
        self.windows = build_windows(sessions, window)
        self.label_of = {lab["task_id"]: lab for lab in w.labels}
        self.anomalous_sessions = {lab["session"] for lab in w.labels}
        self.last_task = {t["session"]: t["task_id"] for t in w.tasks}
        self.task_of_line = {line: t["task_id"] for t in w.tasks for line in t["lines"]}
        self.normal_tasks = {
            t["task_id"]
            for t in w.tasks
            if t["task_id"] not in self.label_of and t["session"] not in self.anomalous_sessions
        }

    def task_of_window(self, i: int) -> str:
        s, pos = int(self.windows.session[i]), int(self.windows.position[i])
        if pos < len(self.lines[s]):
            return self.task_of_line[self.lines[s][pos]]
        return self.last_task[self.sids[s]]  # the end of the session: its last task

    def kinds(self, tasks: set[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in tasks:
            lab = self.label_of[t]
            k = f"{lab['task_type']} {lab['kind']} {lab['step']}"
            out[k] = out.get(k, 0) + 1
        return dict(sorted(out.items()))

    def score(
        self, model: KeyLSTM, cfg: ModelConfig, anchor: KeyLSTM | None = None, anchor_ratio: float = 0.0
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        det = KeyDetector(
            model,
            cfg.top_g,
            device="cpu",
            cache_size=0,
            min_probability=cfg.floor(model.args.vocab_size),
            anchor=anchor,
            anchor_ratio=anchor_ratio,
        )
        flags = det.score(self.windows).anomalous
        flagged_tasks: set[str] = set()
        flagged_lines: set[int] = set()
        ended: set[str] = set()  # tasks whose session's end was flagged
        for i in flags.nonzero().flatten().tolist():
            task = self.task_of_window(i)
            flagged_tasks.add(task)
            s, pos = int(self.windows.session[i]), int(self.windows.position[i])
            if pos < len(self.lines[s]):
                flagged_lines.add(self.lines[s][pos])
            else:
                ended.add(task)
        fp = len(self.normal_tasks & flagged_tasks)
        found_ids = {
            t
            for t, lab in self.label_of.items()
            if t in flagged_tasks or any(x in flagged_lines for x in lab["lines"])
        }
        found = len(found_ids)
        n_lab = len(self.label_of)
        # Found where the anomaly is: an affected line flagged, or (a step missing at the very end) the
        # session's end. A flag elsewhere in the task (the drifted step, say) does not count here.
        at_anomaly = sum(
            1
            for t, lab in self.label_of.items()
            if any(x in flagged_lines for x in lab["lines"]) or (not lab["lines"] and t in ended)
        )
        return flags, {
            "fp_tasks": fp,
            "normal_tasks": len(self.normal_tasks),
            "fp_rate": fp / len(self.normal_tasks) if self.normal_tasks else 0.0,
            "recall": found / n_lab if n_lab else 0.0,
            "recall_at_anomaly": at_anomaly / n_lab if n_lab else 0.0,
            "found": found,
            "found_ids": found_ids,
            "anomalous_tasks": n_lab,
            "anomalies": int(flags.sum()),
        }


def run(
    seed: int = 0,
    n_train: int = 3000,
    n_test: int = 3000,
    mark_share: float = 0.1,
    drift_rate: float = 0.5,
    path_rate: float = 0.05,
    max_rounds: int = 3,
    model_cfg: ModelConfig | None = None,
    feedback_cfg: FeedbackConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    say = progress or (lambda m: log.info("%s", m))
    t0 = time.perf_counter()
    mcfg = model_cfg or ModelConfig(top_g=3, hidden=32, seed=seed, device="cpu", threads=1)
    fcfg = feedback_cfg or replace(FeedbackConfig(), seed=seed)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    train_w = generate_workload(n_train, seed)
    tests = {
        "test": generate_workload(n_test, seed + 1, path_rate=path_rate, drift_rate=drift_rate),
        "fresh": generate_workload(n_test, seed + 2, path_rate=path_rate, drift_rate=drift_rate),
    }
    tpl = Templater(TemplaterConfig(format="openstack", similarity_threshold=SIMILARITY))
    tr = _events(tpl, train_w, True, mcfg.window)
    sets = {name: _TestSet(tpl, w, mcfg.window) for name, w in tests.items()}
    train_sessions = [[tr["keys"][j] for j in idx] for idx in tr["per_session"].values()]
    model, report = train_key_model(train_sessions, len(tpl.vocab), mcfg, progress=lambda m: None)
    sample = build_normal_sample(train_sessions, mcfg, fcfg.replay_windows, fcfg.heldout_windows)
    say(
        f"{tpl.num_templates} templates; key model trained on {len(train_sessions)} sessions ({report.seconds:.1f}s)"
    )

    before = {name: ts.score(model, mcfg)[1] for name, ts in sets.items()}
    test = sets["test"]
    floor = mcfg.floor(model.args.vocab_size)
    rng = random.Random(seed)
    current = model
    keep_k = torch.empty((0, mcfg.window), dtype=torch.long)
    keep_t = torch.empty(0, dtype=torch.long)
    # The detection job's sample of the windows it scored: filled by the detection passes over the marked set
    # only (the job scores it before each round); the fresh set stays unseen. Verdicts are not stored.
    recent = RecentSample.empty(tpl.vocab, mcfg.window, fcfg.recent_windows)
    rounds: list[dict[str, Any]] = []
    first_fps = None
    ratio = fcfg.anchor_ratio
    for r in range(1, max_rounds + 1):
        # The job scores a feedback version against the trained model (the detector's anchor).
        anchor = None if current is model else model
        flags, _ = test.score(current, mcfg, anchor, ratio)
        recent.offer_scored(test.windows)
        # False positives: anomalies in normal tasks of sessions without an injected anomaly. (An unlabelled
        # task next to an injected one is often flagged because of it: "Powering on" right after a stop
        # task that lost its shutdown step; a responder looking at the session would not call that normal.)
        fp_windows = [
            i for i in flags.nonzero().flatten().tolist() if test.task_of_window(i) in test.normal_tasks
        ]
        first_fps = len(fp_windows) if first_fps is None else first_fps
        if not fp_windows:
            break
        marked = sorted(rng.sample(fp_windows, max(1, round(mark_share * len(fp_windows)))))
        # What the feedback job would learn from: unseen-key anomalies are `unsupported` there.
        learnable = torch.tensor([i for i in marked if int(test.windows.targets[i]) != UNK], dtype=torch.long)
        if learnable.numel() == 0:
            rounds.append({"round": r, "fp_events": len(fp_windows), "marked": len(marked), "learnable": 0})
            break
        k, t = test.windows.keys[learnable], test.windows.targets[learnable]
        # The feedback job's own update: fine-tuning with replay and the earlier rounds' pairs, then the
        # held-out safety check against the parent.
        tuned, rep, held = finetune_learnable(
            current, Pairs(k, t), sample.replay, mcfg, fcfg, keep=Pairs(keep_k, keep_t), anchor=anchor
        )
        set_aside = int((~held).sum())
        k, t = k[held], t[held]
        judge = Judge(mcfg.top_g, floor, anchor, ratio)
        fa_before = false_alarm_rate(current, sample.heldout, judge)
        fa_after = false_alarm_rate(tuned, sample.heldout, replace(judge, anchor=model))
        live = recent_check(current, tuned, recent.rows(), judge)
        why = verdict(rep, fa_before, fa_after, fcfg.tolerance, live)
        ok = why is None
        rounds.append(
            {
                "round": r,
                "fp_events": len(fp_windows),
                "marked": len(marked),
                "learnable": int(learnable.numel()),
                "steps": rep.steps,
                "marked_accepted_after": rep.accepted_after,
                "set_aside": set_aside,
                "heldout_false_alarm_before": fa_before,
                "heldout_false_alarm_after": fa_after,
                "recent_windows": int(live.windows),
                "recent_alarm_before": live.rate_before,
                "recent_alarm_after": live.rate_after,
                "accepted": ok,
                "rejected_because": why,
            }
        )
        say(
            f"round {r}: marked {len(marked)} of {len(fp_windows)} false-positive anomalies; {rep.steps} steps; "
            f"held-out false alarms {fa_before:.4%} -> {fa_after:.4%}{'' if ok else ' (update rejected)'}"
        )
        if not ok:
            break
        current = tuned
        keep_k, keep_t = torch.cat([keep_k, k]), torch.cat([keep_t, t])
    total_marked = sum(x["marked"] for x in rounds)
    result: dict[str, Any] = {
        "seed": seed,
        "drift": f"{drift_rate:.0%} of delete tasks get '{DRIFT_STEP.lines[0][1]}' after the request",
        "drift_rate": drift_rate,
        "path_rate": path_rate,
        "n_train_tasks": n_train,
        "n_test_tasks": n_test,
        "templates": tpl.num_templates,
        "top_g": mcfg.top_g,
        "min_probability": floor,
        "anchor_ratio": ratio,
        "mark_share": mark_share,
        "rounds": rounds,
        "fp_events_before": first_fps or 0,
        "marked": total_marked,
        "marked_share_of_initial_fps": total_marked / first_fps if first_fps else 0.0,
        "updates_accepted": sum(bool(x.get("accepted")) for x in rounds),
        "normal_tasks": before["test"]["normal_tasks"],
        "anomalous_tasks": before["test"]["anomalous_tasks"],
    }
    for name, ts in sets.items():
        _, after = ts.score(current, mcfg, None if current is model else model, ratio)
        b = before[name]
        fb_, fa_ = b.pop("found_ids"), after.pop("found_ids")
        result[name] = {
            "before": b,
            "after": after,
            # Which injected anomalies the update stopped (or started) finding, by task type, kind and step.
            "lost": ts.kinds(fb_ - fa_),
            "gained": ts.kinds(fa_ - fb_),
            "fp_ratio": after["fp_rate"] / b["fp_rate"] if b["fp_rate"] else 0.0,
            "recall_drop_points": 100 * (b["recall"] - after["recall"]),
            "recall_at_anomaly_drop_points": 100 * (b["recall_at_anomaly"] - after["recall_at_anomaly"]),
        }
    result["fp_rate_before"] = result["test"]["before"]["fp_rate"]
    result["fp_rate_after"] = result["test"]["after"]["fp_rate"]
    result["recall_before"] = result["test"]["before"]["recall"]
    result["recall_after"] = result["test"]["after"]["recall"]
    result["seconds"] = time.perf_counter() - t0
    return result
