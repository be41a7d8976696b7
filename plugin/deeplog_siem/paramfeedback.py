"""paramfeedback: false-positive feedback on parameter anomalies -> per-series threshold scales, and back.

Contract: `load(version_dir) -> {(previous key, key): scale}` (empty when none was learnt) and
`save(version_dir, scales)` (atomically: a crash leaves the old file or the new one). A scale s >= 1 widens
that series' error bound from the parameter model's threshold t to s * t: the feedback job sets it just above
the error of a vector a responder marked as normal, and detection (`runner`) applies it, so the same value is
not flagged again while other series keep their bounds. Stored as JSON next to the parameter model
(`param_feedback.json`, see models/README.md).

`widening(error, threshold) -> factor | reason`: the factor on the bound in effect at detection that accepts
a marked error, finite and at most `MAX_WIDEN`; `capped(scale) -> reason | None` holds a series' scale to
`MAX_SCALE` over the model's own threshold. A mark that asks for more is refused with the reason, never
clipped: the responder sees why and the series stays guarded. `save` refuses a non-finite scale, `load`
reports one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from . import atomic
from .artifacts import PARAM_FEEDBACK
from .errors import ArtifactError
from .parammodel import key_from_text, key_text

FORMAT_VERSION = 1
Scales = dict[tuple[int, int], float]
# A widened threshold sits this much above the marked error, so the same value is not flagged again.
WIDEN_MARGIN = 1.05
# One mark widens a series' bound at most this many times; marks add up to at most MAX_SCALE times the model's
# own threshold. Beyond that a series would stop being watched: retraining is the remedy for so large a shift.
MAX_WIDEN = 10.0
MAX_SCALE = 100.0


def widening(error: float, threshold: float) -> float | str:
    """The factor (>= 1) on the bound `threshold` that accepts `error`, or why none may be applied."""
    if not (math.isfinite(threshold) and threshold > 0):
        return f"deeplog.parameter.threshold: {threshold!r} is not a usable bound"
    if not (math.isfinite(error) and error >= 0):
        return f"deeplog.parameter.error: {error!r} is not a usable error"
    factor = max(1.0, WIDEN_MARGIN * error / threshold)
    if not factor <= MAX_WIDEN:
        return (
            f"deeplog.parameter.error: accepting {error:g} would widen the threshold {threshold:g} "
            f"{factor:.3g} times, more than the {MAX_WIDEN:g} one mark may (retrain for so large a shift)"
        )
    return factor


def capped(scale: float) -> str | None:
    """None when a series' total scale is within MAX_SCALE, else why it may not be published."""
    if math.isfinite(scale) and 1.0 <= scale <= MAX_SCALE:
        return None
    return (
        f"deeplog.parameter.error: with earlier marks the series' threshold would be {scale:.3g} times the "
        f"model's, more than the {MAX_SCALE:g} feedback may widen it (retrain for so large a shift)"
    )


def load(version_dir: Path) -> Scales:
    f = Path(version_dir) / PARAM_FEEDBACK
    if not f.is_file():
        return {}
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unknown format_version {data.get('format_version')!r}")
        scales = {key_from_text(k): float(v) for k, v in data["series"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ArtifactError(f"{f}: malformed parameter feedback ({e})") from None
    bad = [key_text(k) for k, v in scales.items() if not (v >= 1.0 and math.isfinite(v))]
    if bad:
        raise ArtifactError(f"{f}: scales must be finite and >= 1 (series {', '.join(bad)})")
    return scales


def save(version_dir: Path, scales: Scales) -> None:
    bad = [key_text(k) for k, v in scales.items() if not (v >= 1.0 and math.isfinite(v))]
    if bad:
        raise ValueError(f"threshold scales must be finite and >= 1 (series {', '.join(bad)})")
    body = {"format_version": FORMAT_VERSION, "series": {key_text(k): v for k, v in sorted(scales.items())}}
    atomic.write_text(Path(version_dir) / PARAM_FEEDBACK, json.dumps(body, indent=1, allow_nan=False) + "\n")
