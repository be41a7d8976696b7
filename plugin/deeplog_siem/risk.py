"""risk: how far beyond normal traffic a flagged event is (its rarity) -> a 0-100 risk score and a severity.

Contract:
- Every anomaly has a rarity `q` in (0, 1]: the share of normal events at least as unusual as it. The risk
  score is `POINTS_PER_DECADE` points per decade of rarity, `risk_score(q) = clamp(12.5 * -log10 q, 0, 100)`
  rounded to 0.1, and the band is fixed on that scale (`severity`: low < 25 <= medium < 50 <= high < 75 <=
  critical): low is more common than 1 normal event in 100, medium up to 1 in 10,000, high up to 1 in
  1,000,000, critical rarer. A band is a statement about normal traffic, not about a model's raw output,
  so it means the same for every model version and log type. `ECS_SEVERITY` numbers the bands as Elastic
  detection rules do (`event.severity`).
- Key anomalies: the rarity comes from the model version's calibration (`calibration.KeyCalibration`);
  `fallback_rarity(p, vocab_size)` is the documented bound for a version trained before calibration
  existed: `vocab_size * p` (under a calibrated model a normal event's key gets probability at most t with
  chance at most vocab_size * t).
- Parameter anomalies: `param_rarity(error, threshold, confidence)`: the error is in standard deviations of
  its series' held-out prediction errors, and the series' threshold is where the configured per-vector
  false-alarm rate `1 - confidence` lies; the rarity is that rate, scaled up to the threshold by how much
  rarer the error's two-sided Gaussian tail is than the threshold's and beyond it by an exponential tail
  that falls by e every `BEYOND_SCALE` standard deviations past the threshold (a threshold widened by
  feedback widens this too). Without a confidence (`None`), the error's two-sided Gaussian tail alone.
No torch here: the anomaly builders and the feedback job import this module.
"""

from __future__ import annotations

import math

POINTS_PER_DECADE = 12.5
BANDS = (("critical", 75.0), ("high", 50.0), ("medium", 25.0), ("low", 0.0))
SEVERITIES = ("low", "medium", "high", "critical")
ECS_SEVERITY = {"low": 21, "medium": 47, "high": 73, "critical": 99}
TINY = 1e-300  # the smallest rarity kept (risk 100 long before it)
# Beyond its threshold a series' error is rated by an exponential tail, one factor e per this many standard
# deviations: the Gaussian fitted to a few hundred held-out errors says nothing about how fast its tail
# falls that far out, and its own rate there (about the threshold, in std units) would rate a normal
# vector just outside the held-out errors `high`.
BEYOND_SCALE = 1.0


def risk_score(rarity: float) -> float:
    """Rarity in (0, 1] -> risk 0..100, rounded to 0.1; a rarity that is not a number counts as 1 (no risk)."""
    q = float(rarity)
    if math.isnan(q):
        q = 1.0
    q = min(max(q, TINY), 1.0)
    return round(min(100.0, max(0.0, -POINTS_PER_DECADE * math.log10(q))), 1)


def severity(risk: float) -> str:
    """The band of a risk score."""
    for name, low in BANDS:
        if risk >= low:
            return name
    return "low"


def fallback_rarity(probability: float, vocab_size: int) -> float:
    """A key anomaly's rarity under a version without calibration: vocab_size * p, within (0, 1]."""
    return min(1.0, max(TINY, float(probability) * max(1, vocab_size)))


def param_rarity(error: float, threshold: float, confidence: float | None) -> float:
    """A parameter anomaly's rarity (see the module's contract); a threshold of 0 (not modelled) gives 1."""
    if not math.isfinite(error):
        return TINY if error == math.inf else 1.0
    tail = math.erfc(abs(error) / math.sqrt(2.0))
    if confidence is None:
        return min(1.0, max(TINY, tail))
    if threshold <= 0:
        return 1.0
    if abs(error) > threshold:
        return min(1.0, max(TINY, (1.0 - confidence) * math.exp(-(abs(error) - threshold) / BEYOND_SCALE)))
    at_threshold = math.erfc(threshold / math.sqrt(2.0))
    if at_threshold <= 0:
        return 1.0
    return min(1.0, max(TINY, (1.0 - confidence) * tail / at_threshold))
