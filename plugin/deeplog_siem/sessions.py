"""sessions: log document -> session id, and the per-session tails kept across job runs.

Contract:
- `SessionKeyer(source_cfg)`: `session_of(message, doc) -> str | None` by a document field
  (`source.session_field`, dotted; several comma-separated fields are joined with "|", e.g.
  "host.name,process.pid" for logs without a task id) or by the first capture group of
  `source.session_regex` over the message (HDFS block id, OpenStack instance id). None = no session; counted
  in `skipped["no_session"]`. With `source.entity_fields` (logs without a session id: `host.name`,
  `user.name`, `source.ip`, `process.pid`, ...) the id is the entity: the fields' values joined with "|", a
  missing one as "-"; a document with none of them has no session. `sessions_of` returns every id a message
  names (an HDFS delete naming many blocks belongs to each block's session).
- `SessionTracker(window, idle_timeout_s, max_sessions, ttl_s)`: per open session the last `window` keys, the
  parameter vector of each of those events (time gap since the session's previous event, then the key's
  numbers) and the last event time. `observe()` appends an event and returns its vector and the keys before
  it; `close_idle(now)` closes sessions with no event for `idle_timeout_s` (event time, the clock of `now`)
  or untouched by the job for `ttl_s` (wall clock) and returns them so the caller scores the end-of-session
  key (EOS) after their last keys; with `cut_streams=True` (entity streams) `observe()` also cuts a
  session whose next event comes `idle_timeout_s` or more after its last one (event time): the old part is
  closed (`stats["closed_gap"]`) and handed out by `take_cut()` to be scored like an idle one, and the event
  starts a new session under the same id, so a gap inside a page cuts exactly where training cuts; beyond
  `max_sessions` the least recently updated session is dropped and counted in `stats["evicted_lru"]`.
  `SessionTracker.unbounded()` never closes or drops a session (training
  computes its parameter vectors with it, as detection does). `to_dict()`/`from_dict()` give a compact
  JSON-safe form for the run checkpoint. An open session is kept small (flat arrays: `bench templater`
  measures it).
- `SessionTracker.param_history` (`ParamHistory`): the parameter model's inputs, carried across runs with
  the tails: per parameter series (the (previous key, key) transition of a session: `series_key(observed,
  key)`), the last `depth` vectors the job scored, across all sessions. `take(series, vectors)` returns each
  event's history (the vectors before it, including earlier ones of the same batch) and appends the event.
  `SessionTracker.param_level` (`SharedLevel`): the state of the parameter model's shared load level, saved
  with them.
"""

from __future__ import annotations

import hashlib
import math
import re
import sys
import time
from array import array
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import SourceConfig
from .errors import ArtifactError, ConfigError
from .source import get_field
from .vocab import EOS, PAD

__all__ = [
    "EOS",
    "Observed",
    "ParamHistory",
    "SessionKeyer",
    "SessionTail",
    "SessionTracker",
    "SharedLevel",
    "series_key",
]


# Session ids are keywords in every output index, searchable up to 1024 characters (`ignore_above`): a longer
# one (crafted in a log line) would make its anomalies invisible to a term query, the retraining's exclusion
# of flagged sessions included. Past this length an id is cut and made unique again with its digest.
MAX_SESSION_ID = 512


def bounded(sid: str) -> str:
    """`sid`, or for an id over `MAX_SESSION_ID` characters its head, `~` and its SHA-256 (same id, same
    result; different ids stay apart)."""
    if len(sid) <= MAX_SESSION_ID:
        return sid
    digest = hashlib.sha256(sid.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{sid[: MAX_SESSION_ID - len(digest) - 1]}~{digest}"


# An entity field a document lacks, in the entity's id.
MISSING_ENTITY = "-"


class SessionKeyer:
    """Maps a log document to its session id (at most `MAX_SESSION_ID` characters, see `bounded`)."""

    def __init__(self, source: SourceConfig) -> None:
        self.skipped: Counter[str] = Counter()
        self._fields: tuple[str, ...] = ()
        self._regex: re.Pattern[str] | None = None
        self._entity = bool(source.entity_fields)
        if self._entity:
            self._fields = tuple(f.strip() for f in source.entity_fields)
        elif source.session_field is not None:
            self._fields = tuple(f.strip() for f in source.session_field.split(",") if f.strip())
            if not self._fields:
                raise ConfigError("source.session_field: must name at least one field")
        elif source.session_regex is not None:
            self._regex = re.compile(source.session_regex)
        else:
            raise ConfigError("source: set one of session_field, session_regex and entity_fields")

    def session_of(self, message: str, doc: Mapping[str, Any] | None = None) -> str | None:
        sid = self._one(message, doc)
        if sid is None:
            self.skipped["no_session"] += 1
        return sid

    def sessions_of(self, message: str, doc: Mapping[str, Any] | None = None) -> tuple[str, ...]:
        """Every session the message names, first-seen order, no repeats (regex mode); else (session_of,)."""
        if self._regex is None or not isinstance(message, str):
            sid = self.session_of(message, doc)
            return () if sid is None else (sid,)
        ids = tuple(
            dict.fromkeys(
                bounded(m.group(1) if m.groups() else m.group(0)) for m in self._regex.finditer(message)
            )
        )
        if not ids:
            self.skipped["no_session"] += 1
        return ids

    def _one(self, message: Any, doc: Mapping[str, Any] | None) -> str | None:
        if self._regex is not None:
            if not isinstance(message, str):
                return None
            m = self._regex.search(message)
            if m is None:
                return None
            sid = m.group(1) if m.groups() else m.group(0)
            return bounded(sid) if sid else None
        if doc is None:
            return None
        if self._entity:
            return self._entity_of(doc)
        parts = []
        for f in self._fields:
            v = get_field(doc, f)
            if v is None or isinstance(v, (Mapping, list)) or v == "":
                return None
            parts.append(str(v))
        return bounded("|".join(parts))

    def _entity_of(self, doc: Mapping[str, Any]) -> str | None:
        """The entity a document belongs to; a field it lacks is "-" (an event with a host but no user is
        the host's), and one with none of the fields belongs to no entity."""
        parts = []
        for f in self._fields:
            v = get_field(doc, f)
            parts.append(MISSING_ENTITY if v is None or isinstance(v, (Mapping, list)) or v == "" else str(v))
        if all(p == MISSING_ENTITY for p in parts):
            return None
        return bounded("|".join(parts))


class SessionTail:
    """The last `window` events of one session, stored flat (arrays) to keep an open session small."""

    __slots__ = ("keys", "dims", "values", "last_ts", "touched", "count", "last_ref")

    def __init__(self, last_ts: float, touched: float) -> None:
        self.keys = array("i")  # last keys, oldest first
        # Length of each event's vector (time gap + numbers), aligned with keys: "I", not a byte, since a
        # message may carry more than 255 numbers.
        self.dims = array("I")
        self.values = array("d")  # the vectors, concatenated
        self.last_ts = last_ts  # event time of the last event (seconds)
        self.touched = touched  # wall-clock time the job last updated this session
        self.count = 0  # events seen in this session, so positions continue across job runs
        self.last_ref = ""  # "index/id" of the last event's source document, for end-of-session anomalies

    def vectors(self) -> list[tuple[float, ...]]:
        out = []
        pos = 0
        for d in self.dims:
            out.append(tuple(self.values[pos : pos + d]))
            pos += d
        return out

    def _append(self, key: int, vector: Sequence[float], window: int) -> None:
        self.keys.append(key)
        self.dims.append(len(vector))
        self.values.extend(vector)
        if len(self.keys) > window:
            drop = len(self.keys) - window
            n = sum(self.dims[:drop])
            del self.keys[:drop]
            del self.dims[:drop]
            del self.values[:n]

    def to_list(self) -> list[Any]:
        return [
            self.keys.tolist(),
            self.dims.tolist(),
            self.values.tolist(),
            self.last_ts,
            self.touched,
            self.count,
            self.last_ref,
        ]

    @classmethod
    def from_list(cls, data: Any) -> SessionTail:
        keys, dims, values, last_ts, touched, count, last_ref = data
        t = cls(float(last_ts), float(touched))
        t.count, t.last_ref = int(count), str(last_ref)
        t.keys = array("i", (int(k) for k in keys))
        t.dims = array("I", (int(d) for d in dims))
        t.values = array("d", (float(v) for v in values))
        if len(t.keys) != len(t.dims) or sum(t.dims) != len(t.values):
            raise ValueError("keys, dims and values do not line up")
        return t


@dataclass(frozen=True, slots=True)
class Observed:
    """One event as the detectors need it."""

    session_id: str
    history: tuple[int, ...]  # up to `window` keys before this event in its session, oldest first
    vector: tuple[float, ...]  # (time gap since the session's previous event, *numbers); gap 0.0 if first
    first: bool  # the session's first event (seen by this tracker)
    position: int  # index of this event in its session (0 = first), continued across job runs


def series_key(observed: Observed, key: int) -> tuple[int, int]:
    """The parameter series of an event: (previous key of its session, or PAD for the first event, key).

    The time gap is a property of the transition: one message can end different steps ("VM Started" after
    "Creating image" takes ~8 s, after "Powering on instance" ~2.5 s), and one series mixing them hides a
    slowed step inside the normal spread of another."""
    return (observed.history[-1] if observed.history else PAD, int(key))


class ParamHistory:
    """The last `depth` parameter vectors of each series, oldest first (JSON-safe via to_list/from_list)."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self._rows: dict[tuple[int, int], list[tuple[float, ...]]] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, series: tuple[int, int]) -> list[tuple[float, ...]]:
        return list(self._rows.get(series, ()))

    def take(
        self, series: Sequence[tuple[int, int]], vectors: Sequence[Sequence[float]]
    ) -> list[list[tuple[float, ...]]]:
        out = []
        rows = self._rows
        for s, v in zip(series, vectors, strict=True):
            r = rows.setdefault(s, [])
            out.append(list(r))
            r.append(tuple(float(x) for x in v))
            if len(r) > self.depth:
                del r[0]
        return out

    def to_list(self) -> list[Any]:
        return [[p, k, [list(v) for v in vs]] for (p, k), vs in self._rows.items()]

    @classmethod
    def from_list(cls, data: Any, depth: int) -> ParamHistory:
        h = cls(depth)
        for p, k, vs in data:
            h._rows[(int(p), int(k))] = [tuple(float(x) for x in v) for v in vs][-depth:] if depth else []
        return h


class SharedLevel:
    """Running state of the parameter model's shared load level (`ParameterModel.levels`): an exponentially
    time-weighted sum and weight of recent log deviations of time gaps (JSON-safe via to_list/from_list)."""

    def __init__(self, num: float = 0.0, den: float = 0.0, last_t: float | None = None) -> None:
        self.num, self.den, self.last_t = num, den, last_t

    def to_list(self) -> list[float | None]:
        return [self.num, self.den, self.last_t]

    @classmethod
    def from_list(cls, data: Any) -> SharedLevel:
        if not data:
            return cls()
        num, den, last_t = data
        return cls(float(num), float(den), None if last_t is None else float(last_t))


class SessionTracker:
    def __init__(
        self,
        window: int,
        idle_timeout_s: float,
        max_sessions: int,
        ttl_s: float,
        param_depth: int = 10,
        *,
        cut_streams: bool = False,
    ) -> None:
        if window < 1:
            raise ConfigError(f"sessions.window: must be >= 1, got {window}")
        if idle_timeout_s <= 0:
            raise ConfigError(f"sessions.idle_timeout_s: must be > 0, got {idle_timeout_s}")
        if max_sessions < 1:
            raise ConfigError(f"sessions.max_sessions: must be >= 1, got {max_sessions}")
        if ttl_s < idle_timeout_s:
            raise ConfigError(f"sessions.ttl_s: must be >= idle_timeout_s ({idle_timeout_s}), got {ttl_s}")
        self.window = window
        self.idle_timeout_s = float(idle_timeout_s)
        self.max_sessions = max_sessions
        self.ttl_s = float(ttl_s)
        self.cut_streams = cut_streams
        self._cut: list[tuple[str, SessionTail]] = []  # sessions cut by a gap, not yet taken
        # Insertion order = least recently updated first (an update re-inserts at the end).
        self._tails: dict[str, SessionTail] = {}
        self.stats: Counter[str] = Counter()
        self.param_history = ParamHistory(param_depth)
        self.param_level = SharedLevel()

    @classmethod
    def unbounded(cls, window: int = 1) -> SessionTracker:
        """A tracker that never closes or drops a session: training's, which reads a bounded set of logs
        once and needs each event's vector (only the previous key of each session: `window` 1)."""
        return cls(window, math.inf, sys.maxsize, math.inf)

    def __len__(self) -> int:
        return len(self._tails)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._tails

    def get(self, session_id: str) -> SessionTail | None:
        return self._tails.get(session_id)

    def observe(
        self,
        session_id: str,
        key: int,
        numbers: Sequence[float],
        ts: float,
        wall: float | None = None,
        ref: str = "",
    ) -> Observed:
        """Append one event (event time `ts`, seconds) to its session."""
        tails = self._tails
        tail = tails.pop(session_id, None)
        wall = time.time() if wall is None else wall
        if tail is not None and self.cut_streams and ts - tail.last_ts >= self.idle_timeout_s:
            self._cut.append((session_id, tail))
            self.stats["closed_gap"] += 1
            tail = None
        if tail is None:
            tail = SessionTail(ts, wall)
            first = True
            gap = 0.0
            self.stats["opened"] += 1
            if len(tails) >= self.max_sessions:
                del tails[next(iter(tails))]
                self.stats["evicted_lru"] += 1
        else:
            first = False
            # Out-of-order events within a session get gap 0 rather than a negative one.
            gap = max(0.0, ts - tail.last_ts)
        history = tuple(tail.keys)
        position = tail.count
        tail.count += 1
        tail.last_ref = ref
        vector = (gap, *numbers)
        tail._append(key, vector, self.window)
        if ts > tail.last_ts or first:
            tail.last_ts = ts
        tail.touched = wall
        tails[session_id] = tail
        return Observed(session_id, history, vector, first, position)

    def observe_many(
        self,
        session_ids: Sequence[str],
        keys: Sequence[int],
        numbers: Sequence[Sequence[float]],
        timestamps: Sequence[float],
        wall: float | None = None,
        refs: Sequence[str] | None = None,
    ) -> list[Observed]:
        wall = time.time() if wall is None else wall
        obs = self.observe
        refs = refs if refs is not None else [""] * len(keys)
        return [
            obs(s, k, n, t, wall, r)
            for s, k, n, t, r in zip(session_ids, keys, numbers, timestamps, refs, strict=True)
        ]

    def close_idle(self, now: float, wall: float | None = None) -> list[tuple[str, SessionTail]]:
        """Close and return sessions idle for idle_timeout_s (event time) or untouched for ttl_s (wall)."""
        wall = time.time() if wall is None else wall
        idle_before = now - self.idle_timeout_s
        ttl_before = wall - self.ttl_s
        closed = [
            (sid, t) for sid, t in self._tails.items() if t.last_ts <= idle_before or t.touched <= ttl_before
        ]
        for sid, t in closed:
            del self._tails[sid]
            self.stats["closed_ttl" if t.last_ts > idle_before else "closed_idle"] += 1
        return closed

    def take_cut(self) -> list[tuple[str, SessionTail]]:
        """The sessions `observe` cut at a gap since the last call (entity streams), oldest cut first."""
        cut, self._cut = self._cut, []
        return cut

    def close_all(self) -> list[tuple[str, SessionTail]]:
        """Close every open session (end of a bounded replay or of training data)."""
        closed = list(self._tails.items())
        self._tails.clear()
        self.stats["closed_all"] += len(closed)
        return closed

    def sessions(self) -> Iterable[tuple[str, SessionTail]]:
        return self._tails.items()

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "window": self.window,
            "sessions": {sid: t.to_list() for sid, t in self._tails.items()},
            "params": self.param_history.to_list(),
            "param_level": self.param_level.to_list(),
        }

    @classmethod
    def from_dict(
        cls,
        data: Any,
        *,
        window: int,
        idle_timeout_s: float,
        max_sessions: int,
        ttl_s: float,
        param_depth: int = 10,
        cut_streams: bool = False,
    ) -> SessionTracker:
        """Restore tails saved by `to_dict`; a smaller window keeps the newest events."""
        tr = cls(window, idle_timeout_s, max_sessions, ttl_s, param_depth, cut_streams=cut_streams)
        try:
            if data.get("version") != 1:
                raise ValueError(f"unsupported version {data.get('version')!r}")
            tails = {}
            for sid, raw in data["sessions"].items():
                t = SessionTail.from_list(raw)
                if len(t.keys) > window:
                    keys, vecs = t.keys.tolist(), t.vectors()
                    count, last_ref = t.count, t.last_ref
                    t = SessionTail(t.last_ts, t.touched)
                    for k, v in zip(keys, vecs, strict=True):
                        t._append(k, v, window)
                    t.count, t.last_ref = count, last_ref
                tails[str(sid)] = t
            # Absent in state saved before the parameter model ran in the job: start empty.
            tr.param_history = ParamHistory.from_list(data.get("params", []), param_depth)
            tr.param_level = SharedLevel.from_list(data.get("param_level"))
        except (AttributeError, KeyError, TypeError, ValueError, OverflowError) as e:
            raise ArtifactError(f"session state: malformed ({type(e).__name__}: {e})") from None
        # Keep the most recently updated ones if the bound shrank.
        for sid in list(tails)[: max(0, len(tails) - max_sessions)]:
            del tails[sid]
            tr.stats["evicted_lru"] += 1
        tr._tails = tails
        return tr
