"""paramfeedback: false-positive feedback on parameter anomalies -> per-series threshold scales, and back.

Contract: `load(version_dir) -> {(previous key, key): scale}` (empty when none was learnt) and
`save(version_dir, scales)` (atomically: a crash leaves the old file or the new one). A scale s >= 1 widens
that series' error bound from the parameter model's threshold t to s * t: the feedback job sets it just above
the error of a vector a responder marked as normal, and detection (`runner`) applies it, so the same value is
not flagged again while other series keep their bounds. Stored as JSON next to the parameter model
(`param_feedback.json`, see models/README.md).
"""

from __future__ import annotations

import json
from pathlib import Path

from . import atomic
from .artifacts import PARAM_FEEDBACK
from .errors import ArtifactError
from .parammodel import key_from_text, key_text

FORMAT_VERSION = 1
Scales = dict[tuple[int, int], float]


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
    bad = [key_text(k) for k, v in scales.items() if not v >= 1.0]
    if bad:
        raise ArtifactError(f"{f}: scales must be >= 1 (series {', '.join(bad)})")
    return scales


def save(version_dir: Path, scales: Scales) -> None:
    body = {"format_version": FORMAT_VERSION, "series": {key_text(k): v for k, v in sorted(scales.items())}}
    atomic.write_text(Path(version_dir) / PARAM_FEEDBACK, json.dumps(body, indent=1) + "\n")
