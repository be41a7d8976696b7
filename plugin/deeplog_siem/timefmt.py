"""timefmt: the one ISO 8601 form the job writes, and the one reader of document timestamps.

Contract: `utc_now()` and `iso_utc(epoch_seconds)` -> ISO 8601 text in UTC with milliseconds and a `Z`
(`2008-11-09T20:35:15.000Z`), the form every document the job writes carries. `epoch_seconds(value)` reads a
source document's timestamp (ISO 8601 text, or epoch milliseconds as a number) -> epoch seconds, or None when
it is unusable (wrong type, unparseable, not finite, or outside the years 1..9999 that datetime and so every
timestamp the job writes can represent); naive text is taken as UTC. Training and detection read
timestamps through it, so the two never disagree on what a usable timestamp is.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

# Years 1..9999 as epoch seconds.
_MIN_TS, _MAX_TS = -62135596800.0, 253402300799.0


def iso(dt: datetime) -> str:
    """An aware datetime -> ISO 8601 in UTC with milliseconds and `Z`."""
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_now() -> str:
    return iso(datetime.now(UTC))


def iso_utc(ts: float) -> str:
    return iso(datetime.fromtimestamp(ts, UTC))


def epoch_seconds(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        ts = float(value) / 1000.0
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            return None
        try:
            ts = (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
        except (OverflowError, ValueError):
            return None
    else:
        return None
    return ts if math.isfinite(ts) and _MIN_TS <= ts <= _MAX_TS else None
