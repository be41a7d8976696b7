"""partitions: one detection job split across workers by a key the server side stamps on each document.

Contract: `partition_key(value) -> int` is Java's `String.hashCode()` of the session value (UTF-16 code units,
32-bit overflow) floor-mod `KEYS` (1024): what an ingest pipeline's Painless script computes
(`Math.floorMod(value.hashCode(), 1024)`), so any shipper can stamp it. `Partition(index, of, field)` is
partition `index` of `of`: it covers the keys [floor(index*KEYS/of), floor((index+1)*KEYS/of)), and
`clause()` is the filter that reads it. Partition 0 also reads every document without a usable key (missing,
outside [0, KEYS)), so each document is read by exactly one partition whatever the cluster holds; a document
a range reads but another partition owns (a list of keys: the largest usable one decides) is recognised by
`owns(value)` and left to its owner. `suffix` is the partition's state-document suffix (`.p<i>of<P>`), and
`owner_of_session(sid)` the partition of a session id (the tails of an unpartitioned state are handed out
by it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

KEYS = 1024
MAX_PARTITIONS = KEYS


def java_string_hash(value: str) -> int:
    """Java's `String.hashCode()`: over UTF-16 code units, as a signed 32-bit integer."""
    h = 0
    units = value.encode("utf-16-be", "surrogatepass")
    for i in range(0, len(units), 2):
        h = (31 * h + (units[i] << 8 | units[i + 1])) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def partition_key(value: str) -> int:
    """The partition key of a session value, in [0, KEYS)."""
    return java_string_hash(value) % KEYS  # Python's % is a floor-mod, as Math.floorMod


def usable_key(value: Any) -> float | None:
    """A key value as read from a document (untrusted): a number, or a numeric string as the server
    would coerce it, in [0, KEYS); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value if 0 <= value < KEYS else None


def document_key(value: Any) -> float | None:
    """The key that decides a document's partition: its largest usable value (a field may hold a list),
    None when it has none."""
    values = value if isinstance(value, list) else [value]
    usable = [k for k in (usable_key(v) for v in values) if k is not None]
    return max(usable) if usable else None


@dataclass(frozen=True)
class Partition:
    """Partition `index` of `of`, keyed by the numeric document field `field`."""

    index: int
    of: int
    field: str

    def __post_init__(self) -> None:
        if not 1 <= self.of <= MAX_PARTITIONS or not 0 <= self.index < self.of:
            raise ValueError(f"no partition {self.index} of {self.of}")

    @property
    def lo(self) -> int:
        return self.index * KEYS // self.of

    @property
    def hi(self) -> int:
        return (self.index + 1) * KEYS // self.of

    @property
    def suffix(self) -> str:
        return f".p{self.index}of{self.of}"

    def covers(self, key: float) -> bool:
        return self.lo <= key < self.hi

    def owns(self, value: Any) -> bool:
        """Whether a document whose key field holds `value` is this partition's to process."""
        key = document_key(value)
        return self.index == 0 if key is None else self.covers(key)

    def owner_of_session(self, sid: str) -> bool:
        return self.covers(partition_key(sid))

    def clause(self) -> dict[str, Any]:
        """The filter that reads this partition. Partition 0's is "no key in another partition's range", so
        it also reads the documents without a key or with one out of range; every other partition's is its
        range."""
        if self.index > 0:
            return {"range": {self.field: {"gte": self.lo, "lt": self.hi}}}
        if self.of == 1:
            return {"match_all": {}}
        return {"bool": {"must_not": [{"range": {self.field: {"gte": self.hi, "lt": KEYS}}}]}}


def all_partitions(count: int, field: str) -> list[Partition]:
    return [Partition(i, count, field) for i in range(count)]
