"""evaluate_params: generated OpenStack-like logs -> recall per slowdown, FP rate and path-anomaly recall.

Contract: `run(seed, ...) -> dict` (the figures behind `deeplog-siem evaluate-params`):
1. `workload.generate_workload`: `n_train` normal tasks (seed) and `n_test` test tasks (seed + 1) with
   slowdowns of 2x, 3x and 5x injected into `anomaly_rate` of the tasks and path anomalies into `path_rate`.
2. The real pipeline stages: `Templater` (format `openstack`, learning on the training lines, match-only on
   the test lines), sessions by instance id (`SessionTracker`: vectors = time gap + numbers), the log-key
   model (`train_key_model` with the configuration defaults: h=10, 2x64, early stopping; `KeyDetector`)
   and the parameter model (`ParameterModel`, one series per (previous key, key), with the shared load
   level from the event times), both trained on the
   normal training data only. The key model's g and probability floor come from 20% of the normal
   training sessions held out from its training (`choose_key_thresholds`), never from the test data.
3. Test: every event is scored by the key model (plus each session's end); only events the key model
   accepts go to the parameter model (as in DeepLog), each against the earlier accepted vectors of its
   series.
4. Per task (one request id): a slowdown is recalled when the parameter model flags an event of the task,
   or the key model rejects the slowed line itself (then it never reaches the parameter model; this happens
   after a path anomaly earlier in the same session; `recall_Nx_param_only` leaves these out);
   a path anomaly when the key model flags an event of the task, the line that follows a missing step, or
   the end of the session the task ends. `fp_rate`: normal tasks of sessions without any injected anomaly
   flagged by either model; `fp_rate_all_unlabelled` also counts unlabelled tasks of anomalous sessions.
5. Risk (`deeplog_siem.risk`; the key model calibrated on the same held-out sessions as g): `severity` counts,
   per band, the normal tasks of `fp_rate` and the recalled slowed tasks of each factor whose highest
   severity (of their flagged events) it is; `high_or_critical_Nx` is the share of the slowed tasks with a
   high or critical anomaly, `normal_high_or_critical_rate` the share of the normal tasks with one.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from deeplog_siem.calibration import calibrate_keys
from deeplog_siem.config import ModelConfig, ParamsConfig, TemplaterConfig
from deeplog_siem.detector import KeyDetector, build_windows
from deeplog_siem.model import train_key_model
from deeplog_siem.parammodel import ParameterModel
from deeplog_siem.risk import SEVERITIES, param_rarity, risk_score, severity
from deeplog_siem.sessions import SessionTracker
from deeplog_siem.templater import Templater
from deeplog_siem.vocab import PAD, UNK

from .workload import Workload, generate_workload, templated_events

log = logging.getLogger(__name__)

SLOWDOWNS = (2.0, 3.0, 5.0)
# Drain's 0.5 (the openstack preset) merges "VM Started/Paused/Resumed/Stopped (Lifecycle Event)" and the
# "Took N seconds to spawn/destroy ..." lines into one key each: the key model then cannot see a missing or
# repeated lifecycle event, and one parameter series mixes durations of different steps.
SIMILARITY = 0.9
G_HOLDOUT = 0.2  # share of the normal training sessions held out to choose the key model's g
G_QUANTILE = 0.999  # g and the floor accept this share of the held-out normal events
FLOOR_SHARE = 0.1


def _events(tpl: Templater, w: Workload, learn: bool, window: int) -> dict[str, Any]:
    """Parse, sessionise and vectorise a workload's lines (in time order)."""
    tracker = SessionTracker(window, 1e9, 10**7, 1e10)
    keys, prevs, vectors, sessions, lines, times = [], [], [], [], [], []
    per_session: dict[str, list[int]] = {}
    for i, sid, ev, ts in templated_events(tpl, w.lines, learn):
        obs = tracker.observe(sid, ev.key, ev.numbers, ts, wall=0.0)
        per_session.setdefault(sid, []).append(len(keys))
        keys.append(ev.key)
        prevs.append(obs.history[-1] if obs.history else PAD)
        vectors.append(obs.vector)
        sessions.append(sid)
        lines.append(i)
        times.append(ts)
    return {
        "keys": keys,
        "series": list(zip(prevs, keys, strict=True)),
        "vectors": vectors,
        "sessions": sessions,
        "lines": lines,
        "per_session": per_session,
        "times": times,
    }


def run(
    seed: int = 0,
    n_train: int = 4000,
    n_test: int = 6000,
    anomaly_rate: float = 0.05,
    path_rate: float = 0.03,
    model_cfg: ModelConfig | None = None,
    params_cfg: ParamsConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    say = progress or (lambda m: log.info("%s", m))
    t0 = time.perf_counter()
    mcfg = model_cfg or ModelConfig(window=10, seed=seed, device="cpu", threads=1)
    pcfg = params_cfg or replace(ParamsConfig(), seed=seed)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    train_w = generate_workload(n_train, seed, 0.0, SLOWDOWNS, 0.0)
    test_w = generate_workload(n_test, seed + 1, anomaly_rate, SLOWDOWNS, path_rate)
    say(f"generated {len(train_w.lines)} training lines, {len(test_w.lines)} test lines")
    tpl = Templater(TemplaterConfig(format="openstack", similarity_threshold=SIMILARITY))
    tr = _events(tpl, train_w, True, mcfg.window)
    te = _events(tpl, test_w, False, mcfg.window)
    vocab_size = len(tpl.vocab)
    say(f"{tpl.num_templates} templates; {len(tr['per_session'])} training sessions")

    # Key model on the normal sessions; a share of them (chosen by the seed) is held out to choose g.
    all_sessions = [[tr["keys"][j] for j in idx] for idx in tr["per_session"].values()]
    order = random.Random(seed).sample(range(len(all_sessions)), len(all_sessions))
    n_g = int(len(all_sessions) * G_HOLDOUT)
    g_sessions = [all_sessions[i] for i in order[:n_g]]
    key_model, key_report = train_key_model(
        [all_sessions[i] for i in order[n_g:]], vocab_size, mcfg, progress=lambda m: None
    )
    top_g, floor, g_ranks = choose_key_thresholds(key_model, g_sessions, mcfg.window, mcfg.floor(vocab_size))
    say(
        f"key model: best epoch {key_report.best_epoch}, {key_report.seconds:.1f}s; from held-out sessions: "
        f"top g {top_g}, probability floor {floor:.3g} (ranks {g_ranks})"
    )

    # Parameter model on the normal events, one series per key in time order.
    series: dict[int, list[tuple[float, ...]]] = {}
    series_times: dict[int, list[float]] = {}
    for k, v, t in zip(tr["series"], tr["vectors"], tr["times"], strict=True):
        series.setdefault(k, []).append(v)
        series_times.setdefault(k, []).append(t)
    pm, p_report = ParameterModel.fit(series, pcfg, series_times)
    say(
        f"parameter model: {len(pm.models)} (previous key, key) series modelled, not modelled: {p_report.to_dict()['not_modelled']} ({p_report.seconds:.1f}s)"
    )

    # Test: key model first.
    sids = list(te["per_session"])
    test_sessions = [[te["keys"][j] for j in te["per_session"][s]] for s in sids]
    # Risk calibration on the same held-out normal sessions (as `deeplog-siem train` does on its own).
    calibration = calibrate_keys(
        key_model,
        g_sessions,
        window=mcfg.window,
        normal_events=sum(len(x) + 1 for x in all_sessions),
        seen_keys={k for x in all_sessions for k in x},
    )
    detector = KeyDetector(
        key_model,
        top_g,
        device="cpu",
        cache_size=mcfg.cache_size,
        min_probability=floor,
        calibration=calibration,
    )
    t_score = time.perf_counter()
    win = build_windows(test_sessions, mcfg.window)
    ks = detector.score(win)
    n_events = len(te["keys"])
    key_flag = torch.zeros(n_events, dtype=torch.bool)
    # The risk of each event's anomaly (0: none), key or parameter.
    event_risk = torch.zeros(n_events, dtype=torch.float64)
    eos_flag: set[str] = set()
    bad_rows = ks.anomalous.nonzero().flatten().tolist()
    for s, pos, q in zip(
        win.session[bad_rows].tolist(),
        win.position[bad_rows].tolist(),
        ks.rarity[bad_rows].tolist(),
        strict=True,
    ):
        idx = te["per_session"][sids[s]]
        if pos < len(idx):
            key_flag[idx[pos]] = True
            event_risk[idx[pos]] = risk_score(q)
        else:
            eos_flag.add(sids[s])
    # Parameter model on the accepted events only.
    accepted = [i for i in range(n_events) if not key_flag[i] and te["keys"][i] != UNK]
    ps = pm.score_series(
        [te["series"][i] for i in accepted],
        [te["vectors"][i] for i in accepted],
        [te["times"][i] for i in accepted],
    )
    param_flag = torch.zeros(n_events, dtype=torch.bool)
    param_flag[torch.tensor(accepted, dtype=torch.long)] = ps.anomalous
    for j in ps.anomalous.nonzero().flatten().tolist():
        q = param_rarity(float(ps.error[j]), ps.threshold[j], pcfg.confidence)
        event_risk[accepted[j]] = max(float(event_risk[accepted[j]]), risk_score(q))
    score_s = time.perf_counter() - t_score
    # Per task.
    line_event = {line: i for i, line in enumerate(te["lines"])}
    label_of = {lab["task_id"]: lab for lab in test_w.labels}
    anomalous_sessions = {lab["session"] for lab in test_w.labels}
    last_task = {t["session"]: t["task_id"] for t in test_w.tasks}  # tasks are listed in session order

    def flagged(lines: list[int], flags: torch.Tensor) -> bool:
        return any(bool(flags[line_event[x]]) for x in lines if x in line_event)

    def top_risk(lines: list[int], flags: torch.Tensor) -> float:
        """The highest risk among the flagged events of these lines (0: none flagged)."""
        return max(
            (float(event_risk[line_event[x]]) for x in lines if x in line_event and flags[line_event[x]]),
            default=0.0,
        )

    # Per band: normal tasks (as in fp_rate) and slowed tasks per factor whose highest severity it is.
    bands: dict[str, Counter[str]] = {"normal": Counter(), **{f"{k:g}x": Counter() for k in SLOWDOWNS}}

    # Events of normal tasks in sessions without any injected anomaly: where the false positives come from.
    normal_event = torch.zeros(n_events, dtype=torch.bool)
    for t in test_w.tasks:
        if t["task_id"] not in label_of and t["session"] not in anomalous_sessions:
            normal_event[[line_event[x] for x in t["lines"] if x in line_event]] = True
    by_series: dict[Any, list[int]] = {}
    for j, i in enumerate(accepted):
        if normal_event[i]:
            c = by_series.setdefault(te["series"][i], [0, 0])
            c[1] += 1
            c[0] += bool(ps.anomalous[j])
    key_fp_by_key: dict[int, list[int]] = {}
    for i in normal_event.nonzero().flatten().tolist():
        c = key_fp_by_key.setdefault(te["keys"][i], [0, 0])
        c[1] += 1
        c[0] += bool(key_flag[i])
    hits: dict[str, list[int]] = {f"{k:g}x": [0, 0] for k in SLOWDOWNS}
    localised = dict.fromkeys(hits, 0)
    path = {"missing": [0, 0], "repeated": [0, 0], "foreign": [0, 0]}
    fp = fp_all = normal = normal_all = 0
    missed: Counter[str] = Counter()
    param_only = dict.fromkeys(hits, 0)
    for t in test_w.tasks:
        lab = label_of.get(t["task_id"])
        any_flag = flagged(t["lines"], key_flag | param_flag)
        if lab is None:
            normal_all += 1
            fp_all += any_flag
            if t["session"] not in anomalous_sessions:
                normal += 1
                fp += any_flag
                if any_flag:
                    bands["normal"][severity(top_risk(t["lines"], key_flag | param_flag))] += 1
        elif lab["kind"] == "slowdown":
            name = f"{lab['factor']:g}x"
            hits[name][1] += 1
            by_param = flagged(t["lines"], param_flag)
            # A slowed line the key model rejects (an earlier path anomaly of the session changed its
            # context) never reaches the parameter model, as in DeepLog; the job still reports the line.
            by_key = flagged(lab["lines"], key_flag)
            hits[name][0] += by_param or by_key
            if by_param or by_key:
                worst = max(top_risk(t["lines"], param_flag), top_risk(lab["lines"], key_flag))
                bands[name][severity(worst)] += 1
            param_only[name] += by_param
            if not by_param:
                why = " (slowed line rejected by the key model)" if by_key else ""
                missed[f"slowdown {name} {lab['task_type']}.{lab['step']}{why}"] += 1
            localised[name] += flagged(lab["lines"], param_flag)
        else:
            found = flagged(t["lines"] + lab["lines"], key_flag) or (
                last_task[t["session"]] == t["task_id"] and t["session"] in eos_flag
            )
            path[lab["kind"]][1] += 1
            path[lab["kind"]][0] += found
            if not found:
                missed[f"{lab['kind']} {lab['task_type']}.{lab['step']}"] += 1
    path_total = sum(v[1] for v in path.values())
    upper = ("high", "critical")
    result: dict[str, Any] = {
        "seed": seed,
        "n_train_tasks": n_train,
        "n_test_tasks": n_test,
        "templates": tpl.num_templates,
        "fp_rate": fp / normal if normal else 0.0,
        "fp_tasks": fp,
        "normal_tasks": normal,
        "fp_rate_all_unlabelled": fp_all / normal_all if normal_all else 0.0,
        # Per band, the tasks whose highest severity it is: normal tasks as in fp_rate, slowed tasks recalled.
        "severity": {part: {b: c[b] for b in SEVERITIES} for part, c in bands.items()},
        "normal_high_or_critical_rate": sum(bands["normal"][b] for b in upper) / normal if normal else 0.0,
        # Per event of the normal tasks counted in fp_rate.
        "fp_rate_key_events": float(key_flag[normal_event].float().mean()) if normal_event.any() else 0.0,
        "fp_rate_param_events": (
            float(param_flag[normal_event].float().mean()) if normal_event.any() else 0.0
        ),
        "param_flags_by_series": {
            f"{p}>{k} {tpl.vocab.template(k)[12:50]}": f"{c[0]}/{c[1]}"
            for (p, k), c in sorted(by_series.items(), key=lambda x: -x[1][0])[:8]
            if c[0]
        },
        "key_flags_by_key": {
            f"{k} {tpl.vocab.template(k)[12:50]}": f"{c[0]}/{c[1]}"
            for k, c in sorted(key_fp_by_key.items(), key=lambda x: -x[1][0])[:8]
            if c[0]
        },
        "path_recall": sum(v[0] for v in path.values()) / path_total if path_total else 0.0,
        "path_missed": dict(missed.most_common()),
        "path_by_kind": {k: {"found": v[0], "total": v[1]} for k, v in path.items()},
        "param_keys_modelled": len(pm.models),
        "param_level_series": len(pm.level_series),
        "param_keys_not_modelled": p_report.to_dict()["not_modelled"],
        "param_skipped_events": dict(pm.skipped),
        "confidence": pcfg.confidence,
        "top_g": top_g,
        "top_g_heldout_ranks": g_ranks,
        "min_probability": floor,
        "key_best_epoch": key_report.best_epoch,
        "similarity_threshold": SIMILARITY,
        "key_train_seconds": key_report.seconds,
        "param_train_seconds": p_report.seconds,
        "score_seconds": score_s,
        "seconds": time.perf_counter() - t0,
    }
    for name, (hit, total) in hits.items():
        result[f"recall_{name}"] = hit / total if total else 0.0
        result[f"high_or_critical_{name}"] = sum(bands[name][b] for b in upper) / total if total else 0.0
        result[f"slowed_tasks_{name}"] = total
        result[f"localised_{name}"] = localised[name] / total if total else 0.0
        result[f"recall_{name}_param_only"] = param_only[name] / total if total else 0.0
    result["inference"] = compare_inference(
        pm, [te["series"][i] for i in accepted], [te["vectors"][i] for i in accepted]
    )
    return result


def choose_key_thresholds(
    model: Any, sessions: list[list[int]], window: int, floor: float
) -> tuple[int, float, dict[str, int]]:
    """g and the probability floor from held-out normal sessions only (the test data is never looked at).

    g: the smallest g under which at most G_QUANTILE of the held-out events (and session ends) would be
    flagged by rank; one odd held-out event (a truncated session) must not open the candidate set to every
    key. Floor: FLOOR_SHARE of the G_QUANTILE-lowest held-out probability of the true next key, never below
    the configured floor: with label smoothing a never-seen transition keeps ~1e-4 and can rank inside a
    top 3 of near-zero candidates, while every normal branch of this workload has a probability of 0.1 or
    more. Returns g, the floor and the held-out rank histogram."""
    probe = KeyDetector(model, 1, device="cpu", cache_size=0, min_probability=floor)
    ks = probe.score(build_windows(sessions, window))
    seen = ~ks.unseen
    ranks, probs = ks.rank[seen], ks.prob[seen].double()
    hist = {str(int(r)): int(c) for r, c in zip(*torch.unique(ranks, return_counts=True), strict=True)}
    if not ranks.numel():
        return 1, floor, hist
    g = int(torch.quantile(ranks.double(), G_QUANTILE, interpolation="higher")) + 1
    low = float(torch.quantile(probs, 1 - G_QUANTILE, interpolation="lower"))
    return max(1, g), max(floor, FLOOR_SHARE * low), hist


def compare_inference(
    pm: ParameterModel, keys: list[int], vectors: list[tuple[float, ...]]
) -> dict[str, Any]:
    """Wall time of scoring the accepted test events with one forward per key group (the product) versus
    one forward of a single multi-key LSTM of the same width over all events (inputs padded to the widest
    key plus a one-hot key; untrained: timing only), best of 3."""
    h = pm.cfg.window
    t_group = min(_timed(lambda: pm.score_series(keys, vectors)) for _ in range(3))
    d_max = max((km.model.args.dim for km in pm.models.values()), default=1)
    ids = {k: i for i, k in enumerate(sorted(pm.models))}
    rows = [i for i, k in enumerate(keys) if k in ids]
    lstm = torch.nn.LSTM(d_max + len(ids), pm.cfg.hidden, pm.cfg.layers, batch_first=True)
    head = torch.nn.Linear(pm.cfg.hidden, d_max)

    def multi() -> None:
        x = torch.zeros(len(rows), h, d_max + len(ids))  # [N, h, D_max + K]
        past: dict[int, list[tuple[float, ...]]] = {}
        for j, i in enumerate(rows):
            k = keys[i]
            p = past.setdefault(k, [])
            for t, v in enumerate(p[-h:]):
                x[j, h - len(p[-h:]) + t, : len(v)] = torch.tensor(v)
            x[j, :, d_max + ids[k]] = 1.0
            p.append(vectors[i])
        with torch.no_grad():
            out, _ = lstm(x)
            head(out[:, -1])

    t_multi = min(_timed(multi) for _ in range(3))
    return {
        "events": len(keys),
        "keys": len(ids),
        "per_key_group_seconds": t_group,
        "multi_key_seconds": t_multi,
        "note": "2 shared CPU cores; figures may be depressed by other load",
    }


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
