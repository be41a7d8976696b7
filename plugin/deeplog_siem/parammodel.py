"""parammodel: per-key parameter-value vectors -> DeepLog parameter-value anomalies.

Contract:
- Input: per log key, its parameter vectors in event-time order over all sessions (DeepLog models each key's
  values as one time series). A vector is `Observed.vector`: (time gap since the session's previous event,
  *the key's numbers). Every key has at least the time gap, so a key without numeric parameters is modelled
  on the gap alone; what is skipped (and counted) is a key with fewer than `min_observations` vectors, and a
  vector whose length differs from its key's model (the template changed): `ParameterModel.skipped`.
- `ParamLSTM(args)(history [B, h, D], target [B, D] | None)` -> (prediction [B, D], mean squared error |
  None), in normalised units.
- `ParameterModel.fit(series, cfg)`: per key, values are normalised per dimension with statistics of the
  training part only: a dimension that is never negative is put on a log scale first (`log1p(x / median)`:
  durations vary multiplicatively, and a k-times slowdown is then a shift of about log k whatever the
  step's length), then centred and scaled; a constant dimension gets scale 1 (no division by zero). The
  first `1 - heldout_fraction` of the series trains the regressor (normal data only); its residuals on the
  held-out rest give a per-key, per-dimension Gaussian (mean, std) of the error. `confidence` is per vector
  (one event): split evenly over the vector's effective number of non-constant dimensions (Bonferroni,
  `z_bound`; `effective_dims` from the held-out errors' correlation), a vector is anomalous when a
  dimension's error is outside its share of that two-sided interval (default 0.9998: |z| > 3.72 for a time
  gap alone, 3.89 per dimension for two independent ones); the std is floored at `min_error_std` so a
  constant dimension (which takes no share: it can only change, not vary) does not flag rounding noise.
  A dimension whose held-out errors fall outside that interval far more often than the Gaussian allows
  (a bimodal size) is not judged (`judged`, reported): it would alert on normal values all the time.
- Shared load level (`fit(..., times)`): a host's load stretches every step at once, and all series together
  see it far more often than one. The level is an exponentially time-weighted mean (`LEVEL_TAU_S`) of the
  recent gaps' log deviations from their series' training mean, over the series that follow it (slope on
  it > 0.5 in training); for those, the gap is predicted by a least-squares mix of the level and the LSTM's
  prediction, with its own held-out error Gaussian. `levels(keys, vectors, times, state)` -> the level
  before each event, updating `state` (`sessions.SharedLevel`, carried across job runs).
- `ParameterModel.score(keys, histories, vectors, levels=None)` -> `ParamScores`, batched: events are grouped by key and
  each key's model runs one forward over all its events (padded histories). The prediction is the median
  of the history plus the LSTM's correction, so one extreme value in the history (an anomaly) does not make
  the next prediction extreme too, and a level beyond the training range is followed.
- `save(path)` / `ParameterModel.load(path)`: one self-describing file (args, normalisation and error
  statistics per key, versions) read with `torch.load(weights_only=True)`; ArtifactError when damaged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
import zlib
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import torch
from torch import nn

from . import __version__
from .atomic import atomic_write
from .config import ParamsConfig
from .errors import ArtifactError
from .sessions import SharedLevel
from .timefmt import utc_now

log = logging.getLogger(__name__)

SeriesKey = Hashable  # a log key (int) or a (previous key, key) transition: JSON-encodable ints


def key_text(key: SeriesKey) -> str:
    """A series key as it is stored in checkpoints and reports: "12" or "[11, 12]"."""
    return json.dumps(list(key) if isinstance(key, tuple) else key)


def key_from_text(text: str) -> SeriesKey:
    v = json.loads(text)
    return tuple(int(x) for x in v) if isinstance(v, list) else int(v)


FORMAT = "deeplog-siem/param-lstm"
LSTM_CLAMP = 4.0  # normalised units
# A dimension is judged while at most this many of its held-out errors (or EXCESS_FACTOR times the expected
# number, if more) fall outside the interval. Not 1: with a few hundred held-out errors per series, two
# outside happen by chance to enough series that a timed step would go unjudged and its slowdowns unseen;
# four or more by chance are rare.
MAX_HELDOUT_OUTSIDE = 3
EXCESS_FACTOR = 10.0
FORMAT_VERSION = 2  # 2: prediction = history median + LSTM correction
# Shared load level: time constant of its exponential average, and the most one event's log deviation may
# move it by (an anomaly in the average must not shift the level every series is predicted from).
LEVEL_TAU_S = 60.0
LEVEL_CLAMP = 1.0
# A series follows the shared level when its regression slope on it exceeds these (first over the level of
# all series, which bookkeeping series dilute, then over the level of the series kept by the first round).
LEVEL_SLOPES = (1.0, 0.5)


@dataclass(frozen=True)
class ParamModelArgs:
    dim: int
    window: int
    hidden: int
    layers: int


class ParamLSTM(nn.Module):
    def __init__(self, args: ParamModelArgs):
        super().__init__()
        self.args = args
        self.lstm = nn.LSTM(args.dim, args.hidden, args.layers, batch_first=True)
        self.head = nn.Linear(args.hidden, args.dim)
        nn.init.zeros_(self.head.weight)  # start as the median predictor; training adds what history tells
        nn.init.zeros_(self.head.bias)

    def forward(
        self, history: torch.Tensor, target: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # The LSTM predicts the change from the median of the history, and sees the history relative to
        # that median only: a level that drifts (system load) is followed whatever its range in training,
        # and the LSTM cannot learn the training period's level (it did, pulling predictions towards it:
        # biased, wider errors on later data). One extreme value in the history (an anomaly) moves neither
        # the median nor, clamped, the LSTM's input much. Trained from scratch without this, the LSTM
        # learnt little more than the training mean.
        base = history.median(dim=1).values  # [B, D]
        rel = (history - base.unsqueeze(1)).clamp(-LSTM_CLAMP, LSTM_CLAMP)  # [B, h, D]
        out, _ = self.lstm(rel)  # [B, h, H]
        pred = base + self.head(out[:, -1])  # [B, D]
        if target is None:
            return pred, None
        return pred, ((pred - target) ** 2).mean()


@dataclass
class Normaliser:
    """Per-dimension transform fitted on training values: optional log scale, then centre and scale."""

    log_offset: list[float]  # > 0: x -> log(x + log_offset) first; 0: identity (a dimension with negatives)
    mean: list[float]
    std: list[float]  # 1.0 for a constant dimension
    lo: list[float]  # training range after normalisation (reported)
    hi: list[float]
    constant: list[bool]

    @classmethod
    def fit(cls, values: torch.Tensor) -> Normaliser:
        """values [N, D] (float64)."""
        offsets = []
        for d in range(values.shape[1]):
            col = values[:, d]
            pos = col[col > 0]
            if not bool((col >= 0).all()) or not pos.numel():
                offsets.append(0.0)
                continue
            # A plain log keeps a lognormal duration Gaussian and makes a k-times slowdown a shift of log k;
            # log1p(x / median) everywhere would widen the errors on a busier host than in training (its
            # slope grows with x). Where zeros occur, the values sit at the clock's resolution (bookkeeping
            # lines a few ms apart): there log(x + median) keeps a 0 near the smallest gaps instead of orders
            # of magnitude below them. Else the offset only keeps a 0 finite.
            if bool((col == 0).any()):
                offsets.append(float(pos.median()))
            else:
                offsets.append(float(pos.min()) / 100)
        t = cls._log(values, offsets)
        mean, std = t.mean(0), t.std(0, unbiased=False)
        constant = std < 1e-9
        std = torch.where(constant, torch.ones_like(std), std)
        z = (t - mean) / std
        return cls(
            offsets,
            mean.tolist(),
            std.tolist(),
            z.min(0).values.tolist(),
            z.max(0).values.tolist(),
            constant.tolist(),
        )

    @staticmethod
    def _log(values: torch.Tensor, offsets: Sequence[float]) -> torch.Tensor:
        s = torch.tensor(offsets, dtype=values.dtype)
        logged = torch.log(values.clamp(min=0) + torch.where(s > 0, s, torch.ones_like(s)))
        return torch.where(s > 0, logged, values)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        v = values.double()
        t = self._log(v, self.log_offset)
        return ((t - torch.tensor(self.mean, dtype=v.dtype)) / torch.tensor(self.std, dtype=v.dtype)).float()

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        t = z.double() * torch.tensor(self.std, dtype=torch.float64) + torch.tensor(
            self.mean, dtype=torch.float64
        )
        s = torch.tensor(self.log_offset, dtype=torch.float64)
        return torch.where(s > 0, torch.exp(t) - s, t)


@dataclass
class LevelFit:
    """The time gap of a series that follows the shared load level: predicted as coef[0] + coef[1] * level /
    gap std + coef[2] * the LSTM's prediction (normalised units); its held-out error Gaussian replaces the
    plain one of dimension 0 when a level is given."""

    coef: list[float]
    err_mean: float
    err_std: float


@dataclass
class KeyParamModel:
    key: SeriesKey
    model: ParamLSTM
    norm: Normaliser
    err_mean: list[float]  # per dimension, from held-out residuals
    err_std: list[float]  # per dimension, from held-out residuals, floored
    n_train: int
    n_heldout: int
    # Per dimension: judged (its held-out errors fit the Gaussian at the configured confidence), or not.
    judged: list[bool] = field(default_factory=list)
    level: LevelFit | None = None
    split: float = 0.0  # effective number of dimensions sharing the confidence (0: every non-constant one)


@dataclass
class ParamTrainReport:
    modelled: dict[SeriesKey, dict[str, Any]] = field(default_factory=dict)
    not_modelled: dict[SeriesKey, str] = field(default_factory=dict)  # key -> reason
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "modelled": {key_text(k): v for k, v in self.modelled.items()},
            "not_modelled": {key_text(k): v for k, v in self.not_modelled.items()},
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class ParamScores:
    """Per scored event (same order as given); rows of keys not modelled have modelled=False."""

    modelled: torch.Tensor  # [N] bool
    anomalous: torch.Tensor  # [N] bool
    error: torch.Tensor  # [N] max |z| over the dimensions (error in std units of the key's Gaussian)
    dims: list[list[int]]  # per event: the dimensions outside the interval
    observed: list[list[float]]  # raw values
    predicted: list[list[float]]  # raw values
    low: list[list[float]]  # raw bounds of the interval per dimension
    high: list[list[float]]
    # Per event: the |z| bound each of its dimensions was held to (0.0: not modelled).
    threshold: list[float] = field(default_factory=list)


def z_bound(confidence: float, dims: float) -> float:
    """|z| bound per dimension of a vector with `dims` judged dimensions: the two-sided `confidence` holds
    for the whole vector, split evenly over its dimensions (Bonferroni): at 0.999 a one-dimensional
    vector is flagged beyond 3.29 standard deviations, each dimension of a three-dimensional one beyond 3.59."""
    return NormalDist().inv_cdf(1 - (1 - confidence) / (2 * max(1.0, dims)))


def split_dims(constant: Sequence[bool]) -> int:
    """Dimensions that share a vector's error budget: a constant dimension (training std 0) alerts only on a
    change of its value, never on noise, so it takes no share."""
    return max(1, sum(not c for c in constant))


def effective_dims(resid: torch.Tensor, constant: Sequence[bool]) -> float:
    """The number of independent tests among a vector's non-constant dimensions, from the correlation of
    their held-out errors [N, D] (Nyholt 2004: M_eff = 1 + (M - 1)(1 - var(eigenvalues) / M)): two
    dimensions that move together ("Took 1.02 seconds to deallocate network" logged 1.02 s after the previous
    line, correlation 0.99) count about once and keep the one-dimensional bound; two independent ones count
    twice, as in the plain Bonferroni split. (Li and Ji's count is not used: it counts two strongly
    correlated dimensions almost twice; only an exact copy counts once.)"""
    cols = [d for d, c in enumerate(constant) if not c]
    if len(cols) < 2 or resid.shape[0] < 3:
        return float(split_dims(constant))
    r = torch.nan_to_num(torch.corrcoef(resid[:, cols].double().T), nan=0.0)
    r.fill_diagonal_(1.0)
    lam = torch.linalg.eigvalsh(r)
    m_dims = len(cols)
    m = 1 + (m_dims - 1) * (1 - float(lam.var(unbiased=True)) / m_dims)
    return min(float(len(cols)), max(1.0, m))


def _windows(z: torch.Tensor, h: int) -> torch.Tensor:
    """z [N, D] -> history windows [N, h, D]: for row i the h rows before it, left-padded with zeros."""
    n, d = z.shape
    padded = torch.cat([torch.zeros(h, d), z])  # [h+N, D]
    return padded.unfold(0, h, 1)[:n].transpose(1, 2)  # [N, h, D]


class ParameterModel:
    def __init__(self, cfg: ParamsConfig, models: dict[SeriesKey, KeyParamModel] | None = None):
        self.cfg = cfg
        self.models = models or {}
        self.skipped: dict[str, int] = {"not_modelled": 0, "dim_mismatch": 0}
        # Per-series widening of the error bound learnt from responders' false positives (paramfeedback):
        # the bound of series k is scale x the confidence's bound, so scores, intervals and dims agree.
        self.threshold_scales: dict[SeriesKey, float] = {}
        # Series whose time gap follows the shared load level (they also feed it).
        self.level_series: set[SeriesKey] = {k for k, km in self.models.items() if km.level is not None}

    # ------------------------------------------------------------------------------------------ training

    @classmethod
    def fit(
        cls,
        series: Mapping[SeriesKey, Sequence[Sequence[float]]],
        cfg: ParamsConfig,
        times: Mapping[SeriesKey, Sequence[float]] | None = None,
    ) -> tuple[ParameterModel, ParamTrainReport]:
        """`times` (event times in seconds, aligned with `series`): also fit the shared load level."""
        t0 = time.perf_counter()
        cfg.validate("params")
        pm, report = cls(cfg), ParamTrainReport()
        torch.manual_seed(cfg.seed)
        fitted: dict[SeriesKey, tuple[list[float], torch.Tensor, torch.Tensor]] = {}
        for key in sorted(series):
            vecs = series[key]
            lengths = Counter(len(v) for v in vecs)
            dim, _ = lengths.most_common(1)[0] if vecs else (0, 0)
            # A template generalised during learning changes its number of parameters: keep the
            # dominant length (the vectors dropped are counted in the report).
            kept = [v for v in vecs if len(v) == dim] if len(lengths) > 1 else vecs
            if len(kept) < cfg.min_observations:
                report.not_modelled[key] = (
                    f"{len(kept)} observations < min_observations {cfg.min_observations}"
                )
                continue
            if dim == 0:
                report.not_modelled[key] = "empty vectors"
                continue
            ts = list(times[key]) if times is not None else []
            if times is not None and len(lengths) > 1:
                ts = [t for v, t in zip(vecs, ts, strict=True) if len(v) == dim]
            vecs = kept
            km, z, pred = pm._fit_key(key, torch.tensor(vecs, dtype=torch.float64))
            pm.models[key] = km
            if times is not None:
                fitted[key] = (ts, z[:, 0].double(), pred[:, 0].double())
            report.modelled[key] = {
                "dim": km.model.args.dim,
                "train": km.n_train,
                "heldout": km.n_heldout,
                "err_std": [round(s, 4) for s in km.err_std],
                "constant_dims": [i for i, c in enumerate(km.norm.constant) if c],
                "not_judged_dims": [i for i, j in enumerate(km.judged) if not j],
                "effective_dims": round(km.split, 3),
                "dropped_other_lengths": len(series[key]) - len(kept),
            }
        if fitted:
            pm._fit_level(fitted)
        for key in pm.level_series:
            lv = pm.models[key].level
            assert lv is not None
            report.modelled[key]["level_coef"] = [round(c, 4) for c in lv.coef]
            report.modelled[key]["level_err_std"] = round(lv.err_std, 4)
        report.seconds = time.perf_counter() - t0
        log.info(
            "parameter model: %s series modelled, %s not modelled (%.1fs)",
            len(pm.models),
            len(report.not_modelled),
            report.seconds,
        )
        return pm, report

    def _fit_key(
        self, key: SeriesKey, values: torch.Tensor
    ) -> tuple[KeyParamModel, torch.Tensor, torch.Tensor]:
        """The series' model, its normalised values [N, D] and the model's predictions of them [N, D]."""
        cfg = self.cfg
        n = values.shape[0]
        n_train = max(1, min(n - 1, int(round(n * (1 - cfg.heldout_fraction)))))
        norm = Normaliser.fit(values[:n_train])
        z = norm.forward(values)  # [N, D]
        hist = _windows(z, cfg.window)  # [N, h, D]
        model = ParamLSTM(ParamModelArgs(values.shape[1], cfg.window, cfg.hidden, cfg.layers))
        opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
        gen = torch.Generator().manual_seed(cfg.seed + zlib.crc32(key_text(key).encode()))
        model.train()
        for _ in range(cfg.epochs):
            for idx in torch.randperm(n_train, generator=gen).split(cfg.batch_size):
                _, loss = model(hist[idx], z[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            pred_all, _ = model(hist)
        pred = pred_all[n_train:]
        resid = z[n_train:] - pred  # held-out residuals only: training residuals understate the error
        err_mean = resid.mean(0)
        err_std = (
            resid.std(0, unbiased=False).clamp(min=cfg.min_error_std)
            if resid.shape[0] > 1
            else (torch.full_like(err_mean, cfg.min_error_std))
        )
        # A dimension whose held-out errors leave the interval far more often than the Gaussian allows is
        # not Gaussian (HDFS block sizes: mostly 64 MB, a partial last block now and then, 5-6 std away):
        # judging it would flag normal values all the time, so it is reported and left out of the verdict.
        split = effective_dims(resid, norm.constant)
        z_thr = z_bound(cfg.confidence, split)
        outside = (((resid - err_mean) / err_std).abs() > z_thr).sum(0)  # [D]
        p_out = 2 * (1 - NormalDist().cdf(z_thr))  # per dimension
        allowed = max(MAX_HELDOUT_OUTSIDE, EXCESS_FACTOR * p_out * resid.shape[0])
        judged = [bool(o <= allowed) for o in outside.tolist()]
        km = KeyParamModel(
            key, model, norm, err_mean.tolist(), err_std.tolist(), n_train, n - n_train, judged, split=split
        )
        return km, z, pred_all

    def _fit_level(self, fitted: Mapping[SeriesKey, tuple[list[float], torch.Tensor, torch.Tensor]]) -> None:
        """Which series follow the shared load level, and how: per series, a least-squares fit of its
        normalised gap on the level and the LSTM's prediction over its training part; the error Gaussian
        from its held-out part. A host's load moves every step's duration at once; one series sees a new
        event every few seconds at best, all series together many per second, so the level estimated from
        all of them is closer to the current load than the median of the series' own last vectors."""
        # Every event of every series in time order (the order of reading breaks ties).
        order = sorted(
            ((t, n, key, i) for n, (key, (ts, _, _)) in enumerate(fitted.items()) for i, t in enumerate(ts)),
            key=lambda e: (e[0], e[1], e[3]),
        )
        dev = {k: (z0 * self.models[k].norm.std[0]).tolist() for k, (_, z0, _) in fitted.items()}

        def run(use: set[SeriesKey]) -> dict[SeriesKey, torch.Tensor]:
            lv = {k: [0.0] * len(ts) for k, (ts, _, _) in fitted.items()}
            st = SharedLevel()
            for t, _, k, i in order:
                lv[k][i] = _level_before(st, t)
                if k in use:
                    _level_add(st, dev[k][i])
            return {k: torch.tensor(v, dtype=torch.float64) for k, v in lv.items()}

        candidates = {k for k in fitted if not self.models[k].norm.constant[0]}
        use = candidates
        for min_slope in LEVEL_SLOPES:
            level = run(use)
            use = set()
            for k in candidates:
                km, (_, z0, _) = self.models[k], fitted[k]
                x = torch.stack([torch.ones_like(level[k]), level[k]], 1)[: km.n_train]
                sol = torch.linalg.lstsq(x, (z0 * km.norm.std[0])[: km.n_train].unsqueeze(1)).solution
                if float(sol[1, 0]) > min_slope:
                    use.add(k)
        level = run(use)
        for k in use:
            km, (_, z0, p0) = self.models[k], fitted[k]
            x = torch.stack([torch.ones_like(p0), level[k] / km.norm.std[0], p0], 1)  # [N, 3]
            coef = torch.linalg.lstsq(x[: km.n_train], z0[: km.n_train].unsqueeze(1)).solution.flatten()
            resid = z0[km.n_train :] - x[km.n_train :] @ coef
            if resid.numel() < 2:
                continue
            std = max(float(resid.std(unbiased=False)), self.cfg.min_error_std)
            km.level = LevelFit(coef.tolist(), float(resid.mean()), std)
        self.level_series = {k for k in use if self.models[k].level is not None}

    def levels(
        self,
        keys: Sequence[SeriesKey],
        vectors: Sequence[Sequence[float]],
        times: Sequence[float],
        state: SharedLevel,
    ) -> list[float]:
        """The shared load level (log units) just before each event, given in time order; `state` is
        updated with the events of the series that follow it (carry it across runs)."""
        out = []
        for k, v, t in zip(keys, vectors, times, strict=True):
            out.append(_level_before(state, float(t)))
            km = self.models.get(k)
            if km is None or k not in self.level_series or len(v) != km.model.args.dim:
                continue
            off = km.norm.log_offset[0]
            x = math.log(max(float(v[0]), 0.0) + off) if off > 0 else float(v[0])
            _level_add(state, x - km.norm.mean[0])
        return out

    # ----------------------------------------------------------------------------------------- scoring

    @torch.no_grad()
    def score(
        self,
        keys: Sequence[SeriesKey],
        histories: Sequence[Sequence[Sequence[float]]],
        vectors: Sequence[Sequence[float]],
        levels: Sequence[float] | None = None,
    ) -> ParamScores:
        """Score events: `histories[i]` holds up to `window` earlier vectors of key `keys[i]`, oldest first;
        `levels[i]` the shared load level before event i (`levels`), or None: history alone."""
        n = len(keys)
        modelled = torch.zeros(n, dtype=torch.bool)
        anomalous = torch.zeros(n, dtype=torch.bool)
        error = torch.zeros(n)
        dims: list[list[int]] = [[] for _ in range(n)]
        observed = [list(map(float, v)) for v in vectors]
        predicted: list[list[float]] = [[] for _ in range(n)]
        low: list[list[float]] = [[] for _ in range(n)]
        high: list[list[float]] = [[] for _ in range(n)]
        bounds = [0.0] * n
        groups: dict[SeriesKey, list[int]] = {}
        for i, k in enumerate(keys):
            groups.setdefault(k, []).append(i)
        for k, rows in groups.items():
            km = self.models.get(k)
            if km is None:
                self.skipped["not_modelled"] += len(rows)
                continue
            d, h = km.model.args.dim, km.model.args.window
            ok = [i for i in rows if len(vectors[i]) == d and all(len(x) == d for x in histories[i])]
            self.skipped["dim_mismatch"] += len(rows) - len(ok)
            if not ok:
                continue
            # Left-padded with NaN, normalised in one call, then the padding set to 0 (the training mean).
            # Built flat: one list of floats and one tensor call, not a nested list per event (the hot spot of
            # the job's detect stage when every event has a history).
            flat: list[float] = []
            for i in ok:
                p = list(histories[i])[-h:]
                flat.extend([math.nan] * (d * (h - len(p))))
                for x in p:
                    flat.extend(x)
            hist = km.norm.forward(torch.tensor(flat, dtype=torch.float64).view(-1, d)).view(-1, h, d)
            hist = torch.nan_to_num(hist, nan=0.0)  # [n_k, h, D]
            obs = torch.tensor([vectors[i] for i in ok], dtype=torch.float64)
            zobs = km.norm.forward(obs)
            dev = km.model.head.weight.device
            pred, _ = km.model(hist.to(dev))  # one forward per key group: [n_k, D]
            pred = pred.cpu()
            z_thr = z_bound(self.cfg.confidence, km.split or split_dims(km.norm.constant))
            z_thr *= self.threshold_scales.get(k, 1.0)
            mu, sd = torch.tensor(km.err_mean), torch.tensor(km.err_std)
            if levels is not None and km.level is not None:
                # The gap from the shared level and the history's prediction, with its own error Gaussian.
                c = km.level.coef
                lz = torch.tensor([levels[i] for i in ok]) / km.norm.std[0]  # [n_k]
                pred = pred.clone()
                pred[:, 0] = c[0] + c[1] * lz + c[2] * pred[:, 0]
                mu[0], sd[0] = km.level.err_mean, km.level.err_std
            zs = ((zobs - pred) - mu) / sd  # [n_k, D]
            judged = torch.tensor(km.judged or [True] * d)
            zs = torch.where(judged, zs, torch.zeros_like(zs))  # dimensions not judged never alert
            out = zs.abs() > z_thr
            idx = torch.tensor(ok)
            modelled[idx] = True
            anomalous[idx] = out.any(1)
            error[idx] = zs.abs().max(1).values
            raw_pred = km.norm.inverse(pred + mu).tolist()
            raw_lo = km.norm.inverse(pred + mu - z_thr * sd).tolist()
            raw_hi = km.norm.inverse(pred + mu + z_thr * sd).tolist()
            hit = out.any(1).tolist()
            for j, i in enumerate(ok):
                if hit[j]:  # the deviating dimensions are only read for anomalies
                    dims[i] = out[j].nonzero().flatten().tolist()
                predicted[i], low[i], high[i] = raw_pred[j], raw_lo[j], raw_hi[j]
                bounds[i] = z_thr
        return ParamScores(modelled, anomalous, error, dims, observed, predicted, low, high, bounds)

    def score_series(
        self,
        keys: Sequence[SeriesKey],
        vectors: Sequence[Sequence[float]],
        times: Sequence[float] | None = None,
    ) -> ParamScores:
        """Score a stream of events in time order, each against the earlier vectors of its key in it (and,
        with `times`, the shared load level of the stream's earlier events)."""
        h = self.cfg.window
        past: dict[SeriesKey, list[Sequence[float]]] = {}
        histories = []
        for k, v in zip(keys, vectors, strict=True):
            p = past.setdefault(k, [])
            histories.append(p[-h:])
            p.append(v)
            if len(p) > 4 * h:
                del p[: len(p) - h]
        levels = self.levels(keys, vectors, times, SharedLevel()) if times is not None else None
        return self.score(keys, histories, vectors, levels)

    # -------------------------------------------------------------------------------------- checkpoint

    def save(self, path: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> Path:
        p = Path(path)
        header = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "package_version": __version__,
            "torch_version": str(torch.__version__),
            "created": utc_now(),
            "config": dataclasses.asdict(self.cfg),
            "keys": {
                key_text(k): {
                    "args": dataclasses.asdict(km.model.args),
                    "norm": dataclasses.asdict(km.norm),
                    "err_mean": km.err_mean,
                    "err_std": km.err_std,
                    "judged": km.judged,
                    "n_train": km.n_train,
                    "n_heldout": km.n_heldout,
                    "level": dataclasses.asdict(km.level) if km.level is not None else None,
                    "split": km.split,
                }
                for k, km in self.models.items()
            },
            "meta": json.loads(json.dumps(meta or {})),
        }
        state = {
            f"{key_text(k)}/{name}": t.detach().cpu()
            for k, km in self.models.items()
            for name, t in km.model.state_dict().items()
        }
        with atomic_write(p) as f:
            torch.save({"header": json.dumps(header), "state": state}, f)
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: torch.device | str = "cpu") -> ParameterModel:
        p = Path(path)
        if not p.is_file():
            raise ArtifactError(f"{p}: parameter model not found")
        try:
            ck = torch.load(p, map_location="cpu", weights_only=True)
            header, state = json.loads(ck["header"]), ck["state"]
        except Exception as e:  # damaged zip, pickle or JSON: all mean the same to the user
            raise ArtifactError(f"{p}: not a readable parameter model: {e}") from None
        if header.get("format") != FORMAT or header.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                f"{p}: format {header.get('format')!r} v{header.get('format_version')}, expected {FORMAT!r} "
                f"v{FORMAT_VERSION}: retrain the parameter model"
            )
        try:
            cfg = ParamsConfig(**header["config"])
            models = {}
            for ks, entry in header["keys"].items():
                k = key_from_text(ks)
                model = ParamLSTM(ParamModelArgs(**entry["args"]))
                prefix = f"{ks}/"
                model.load_state_dict({n[len(prefix) :]: t for n, t in state.items() if n.startswith(prefix)})
                model.to(device).eval()
                models[k] = KeyParamModel(
                    k,
                    model,
                    Normaliser(**entry["norm"]),
                    entry["err_mean"],
                    entry["err_std"],
                    entry["n_train"],
                    entry["n_heldout"],
                    entry["judged"],
                    LevelFit(**entry["level"]) if entry.get("level") else None,
                    float(entry.get("split", 0.0)),
                )
        except (KeyError, TypeError, RuntimeError, ValueError) as e:
            raise ArtifactError(f"{p}: parameter model does not match its arguments: {e}") from None
        return cls(cfg, models)


def _level_before(state: SharedLevel, t: float) -> float:
    """Decay the level's state to time t (never backwards) and return the level there (0: no data yet)."""
    if state.last_t is not None and t > state.last_t:
        d = math.exp(-(t - state.last_t) / LEVEL_TAU_S)
        state.num *= d
        state.den *= d
    state.last_t = t if state.last_t is None else max(state.last_t, t)
    return state.num / state.den if state.den > 1e-9 else 0.0


def _level_add(state: SharedLevel, deviation: float) -> None:
    state.num += max(-LEVEL_CLAMP, min(LEVEL_CLAMP, deviation))
    state.den += 1.0
