"""calibration: held-out normal sessions -> what the key model's surprise is on normal traffic, per key.

Contract: `calibrate_keys(model, sessions, window=, normal_events=, seen_keys=)` scores the held-out normal
sessions (the version's validation sessions, which never gave a gradient) as detection does (every event
and each end) and keeps, per actual key, the surprise `-ln p` of the true next key at the exceedance levels
`LEVELS` its held-out windows can estimate (at least one window beyond each), and the mean excess of its
surprise over its `TAIL_LEVEL` level, the scale of an exponential tail beyond the last level (at least
`MIN_TAIL_SCALE`). A key with fewer than `MIN_KEY_WINDOWS` held-out windows uses the calibration of all
windows pooled. A key no normal event had (`seen_keys`: the training data's keys; UNK never) is at least
as rare as one in `normal_events + 1`; an unseen template (UNK, probability 0 by construction) is exactly
that rare. `KeyCalibration.rarity(keys, prob)` -> the rarity of each event
(`risk`), vectorised: one pass per distinct key. The calibration is JSON (`to_dict` / `from_dict`, an
`ArtifactError` naming the field of a damaged one) kept in the key model checkpoint's meta under
`META_KEY`, so the versions feedback makes from it carry it; `KeyCalibration.from_meta(meta)` is None for
a version trained before it existed (`risk.fallback_rarity`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any

import torch

from .config import ModelConfig
from .errors import ArtifactError
from .model import validation_split
from .vocab import EOS, PAD, UNK
from .windows import build_windows

META_KEY = "risk"
FORMAT = "deeplog-siem/risk-calibration"
FORMAT_VERSION = 1
# Exceedance levels whose surprise is kept per key (only those the key's held-out windows can estimate).
LEVELS = (0.5, 0.1, 0.01, 1e-3, 1e-4, 1e-5, 1e-6)
TAIL_LEVEL = 0.1  # the exponential tail's scale is the mean excess over this level
MIN_KEY_WINDOWS = 50
# The smallest tail scale, in nats: a key whose held-out surprises are all alike (a session end that always
# comes where expected) would otherwise make the slightest excess look astronomically rare.
MIN_TAIL_SCALE = 0.5
# Probabilities are clamped here before the logarithm (a softmax can round to 0).
MIN_PROBABILITY = 1e-30


@dataclass(frozen=True, slots=True)
class Tail:
    """One key's (or all keys') normal surprise: `surprise[i]` is exceeded by `levels[i]` of its held-out
    windows; beyond the last level the exceedance falls by e every `scale` nats."""

    windows: int
    levels: tuple[float, ...]
    surprise: tuple[float, ...]
    scale: float

    def rarity(self, s: torch.Tensor) -> torch.Tensor:
        """surprise [n] (double) -> exceedance [n] (double)."""
        pts = torch.tensor(self.surprise, dtype=torch.float64)
        logq = torch.log(torch.tensor(self.levels, dtype=torch.float64))
        i = torch.searchsorted(pts, s, right=True) - 1  # last point at or below s; -1: below the body
        last = len(self.levels) - 1
        out = torch.ones_like(s)
        mid = (i >= 0) & (i < last)
        if mid.any():
            j = i[mid]
            frac = (s[mid] - pts[j]) / (pts[j + 1] - pts[j])
            out[mid] = torch.exp(logq[j] + frac * (logq[j + 1] - logq[j]))
        tail = i == last
        if tail.any():
            out[tail] = self.levels[last] * torch.exp(-(s[tail] - pts[last]) / self.scale)
        return out.clamp(max=1.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "windows": self.windows,
            "levels": list(self.levels),
            # Unrounded: many held-out windows share the surprise a level sits at, and a rounded level would
            # rate them differently once stored than the calibration that was just made.
            "surprise": list(self.surprise),
            "scale": self.scale,
        }

    @classmethod
    def from_dict(cls, d: Any, path: str) -> Tail:
        if not isinstance(d, Mapping):
            raise ArtifactError(f"{path}: expected an object")
        levels, surprise = (
            _numbers(d.get("levels"), f"{path}.levels"),
            _numbers(d.get("surprise"), f"{path}.surprise"),
        )
        if not levels or len(levels) != len(surprise):
            raise ArtifactError(f"{path}: levels and surprise must be non-empty lists of one length")
        if any(b >= a for a, b in pairwise(levels)) or any(not 0 < x <= 1 for x in levels):
            raise ArtifactError(f"{path}.levels: must fall strictly within (0, 1]")
        if any(b < a for a, b in pairwise(surprise)):
            raise ArtifactError(f"{path}.surprise: must not decrease")
        scale, windows = d.get("scale"), d.get("windows")
        if (
            isinstance(scale, bool)
            or not isinstance(scale, (int, float))
            or not math.isfinite(scale)
            or scale <= 0
        ):
            raise ArtifactError(f"{path}.scale: expected a positive number, got {scale!r:.40}")
        if isinstance(windows, bool) or not isinstance(windows, int) or windows < 0:
            raise ArtifactError(f"{path}.windows: expected a count, got {windows!r:.40}")
        return cls(windows, tuple(levels), tuple(surprise), float(scale))


def _numbers(v: Any, path: str) -> list[float]:
    if not isinstance(v, list) or not all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v
    ):
        raise ArtifactError(f"{path}: expected a list of finite numbers")
    return [float(x) for x in v]


def fit_tail(surprise: torch.Tensor) -> Tail:
    """Held-out surprises [n] (n >= 1) -> their `Tail`."""
    s = surprise.double().sort().values
    n = s.numel()
    levels, points = [], []
    for level in LEVELS:
        if n * level < 1:
            break
        # The smallest surprise that at least `level` of the windows reach.
        points.append(float(s[n - math.ceil(n * level)]))
        levels.append(level)
    if not levels:
        levels, points = [1.0], [float(s[0])]
    base = float(s[n - max(1, math.ceil(n * TAIL_LEVEL))])
    excess = s[s > base] - base
    scale = max(MIN_TAIL_SCALE, float(excess.mean()) if excess.numel() else 0.0)
    return Tail(n, tuple(levels), tuple(points), scale)


@dataclass(frozen=True, slots=True)
class KeyCalibration:
    """The normal surprise of each key's held-out windows (`keys`), of all of them (`pooled`), the keys
    normal events had (`seen`) and how many normal events there were."""

    keys: Mapping[int, Tail]
    pooled: Tail
    seen: frozenset[int]
    normal_events: int
    # "validation": held-out sessions; "training": the version had none held out (validation_fraction 0).
    source: str = "validation"

    def rarity(self, keys: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
        """Actual keys [n] and their probabilities [n] -> rarity among normal events [n] (double)."""
        s = -torch.log(prob.double().clamp(min=MIN_PROBABILITY))
        out = self.pooled.rarity(s)
        for k in torch.unique(keys).tolist():
            m = keys == k
            tail = self.keys.get(k)
            if tail is not None:
                out[m] = tail.rarity(s[m])
            if k == UNK:
                # Its probability is 0 by construction (never predicted), not evidence: what is known is
                # that no normal event had it.
                out[m] = 1.0 / (self.normal_events + 1)
            elif k not in self.seen:
                out[m] = out[m].clamp(max=1.0 / (self.normal_events + 1))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "normal_events": self.normal_events,
            "source": self.source,
            "seen_keys": sorted(self.seen),
            "pooled": self.pooled.to_dict(),
            "keys": {str(k): t.to_dict() for k, t in sorted(self.keys.items())},
        }

    @classmethod
    def from_dict(cls, d: Any) -> KeyCalibration:
        p = META_KEY
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise ArtifactError(f"{p}: not a {FORMAT} object")
        if d.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                f"{p}.format_version: {d.get('format_version')!r}, this version reads {FORMAT_VERSION}: retrain"
            )
        n = d.get("normal_events")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ArtifactError(f"{p}.normal_events: expected a count, got {n!r:.40}")
        seen = d.get("seen_keys")
        if not isinstance(seen, list) or not all(
            isinstance(k, int) and not isinstance(k, bool) for k in seen
        ):
            raise ArtifactError(f"{p}.seen_keys: expected a list of key ids")
        keys = d.get("keys")
        if not isinstance(keys, Mapping):
            raise ArtifactError(f"{p}.keys: expected an object")
        tails = {}
        for k, t in keys.items():
            try:
                kid = int(k)
            except (TypeError, ValueError):
                raise ArtifactError(f"{p}.keys: {k!r:.40} is not a key id") from None
            tails[kid] = Tail.from_dict(t, f"{p}.keys.{k}")
        source = d.get("source")
        if not isinstance(source, str):
            raise ArtifactError(f"{p}.source: expected text, got {source!r:.40}")
        return cls(tails, Tail.from_dict(d.get("pooled"), f"{p}.pooled"), frozenset(seen), n, source)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> KeyCalibration | None:
        """The calibration in a key model checkpoint's meta; None for a version trained before it existed."""
        return cls.from_dict(meta[META_KEY]) if META_KEY in meta else None


@torch.no_grad()
def calibrate_keys(
    model: torch.nn.Module,
    sessions: Sequence[Sequence[int]],
    *,
    window: int,
    normal_events: int,
    seen_keys: Iterable[int],
    batch: int = 8192,
) -> KeyCalibration:
    """Score the held-out normal `sessions` (every event and each end, as detection does) -> the calibration.
    `normal_events`: how many normal events the version learnt from and held out; `seen_keys`: their keys."""
    w = build_windows(sessions, window)
    s = torch.empty(len(w), dtype=torch.float64)
    model.eval()
    device = next(model.parameters()).device
    for i in range(0, len(w), batch):
        logits, _ = model(w.keys[i : i + batch].to(device))
        logits[:, [PAD, UNK]] = float("-inf")
        logp = torch.log_softmax(logits.double(), dim=1).cpu()
        s[i : i + batch] = -logp.gather(1, w.targets[i : i + batch, None]).squeeze(1)
    known = w.targets != UNK
    s, targets = s[known], w.targets[known]
    if not s.numel():
        raise ArtifactError("cannot calibrate risk scores: no held-out normal events")
    tails = {}
    for k in torch.unique(targets).tolist():
        m = targets == k
        if int(m.sum()) >= MIN_KEY_WINDOWS:
            tails[k] = fit_tail(s[m])
    seen = frozenset(int(k) for k in seen_keys) | {EOS}
    return KeyCalibration(tails, fit_tail(s), seen - {UNK, PAD}, int(normal_events))


def fallback_rarity(prob: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """A version without calibration: vocab_size * p, at most 1."""
    return (prob.double() * vocab_size).clamp(min=MIN_PROBABILITY, max=1.0)


def calibrate_version(
    model: torch.nn.Module, sessions: Sequence[Sequence[int]], cfg: ModelConfig
) -> KeyCalibration:
    """The calibration of a model trained by `model.train_key_model(sessions, ..., cfg)`: on its validation
    sessions (the training sessions when it held none out)."""
    _, val_idx = validation_split(len(sessions), cfg)
    heldout = [sessions[i] for i in val_idx]
    cal = calibrate_keys(
        model,
        heldout or sessions,
        window=cfg.window,
        normal_events=sum(len(s) + 1 for s in sessions),
        seen_keys={k for s in sessions for k in s},
    )
    return cal if heldout else replace(cal, source="training")


def key_rarity(
    calibration: KeyCalibration | None, keys: torch.Tensor, prob: torch.Tensor, vocab_size: int
) -> torch.Tensor:
    """The rarity of each event [n] (double): from `calibration`, or `risk.fallback_rarity`'s bound without one."""
    if calibration is not None:
        return calibration.rarity(keys, prob)
    return (prob.double() * max(1, vocab_size)).clamp(min=1e-300, max=1.0)
