"""incidents: anomaly documents -> one incident document per session (per entity and time bucket).

Contract:
- `IncidentKey(job, session_id, bucket_start)` names one incident: the session of its anomalies
  (`deeplog.session.id`), the job that wrote them (`deeplog.job`, None where the documents have none) and,
  for an entity stream (sessions from `source.session_field`, e.g. a host, whose "session" never ends), the
  start of the `output.incident_bucket_seconds` bucket of the anomaly's `@timestamp` (None: one incident per
  session). `incident_key(source, bucket_s)` -> the key of one anomaly document (None when it names no
  session). `incident_id(key)` is deterministic.
- `refresh_incidents(clients, config, keys) -> WriteResult`: reads back every anomaly of each touched
  incident from the anomalies index (whichever run wrote them), recomputes the incident from them and writes
  it to `output.incidents` as a partial update with upsert: a responder's verdict on the incident
  (`deeplog.feedback*`) stays, everything the job computes is replaced. Recomputing instead of
  incrementing makes it idempotent: reprocessing, a chunk read again after a crash, or a backfill over a
  processed range gives the same document. The detection run calls it after the chunk's anomalies are
  acknowledged and before the checkpoint moves, so a run killed in between is repaired by the rerun.
- What is read back is untrusted: a field of the wrong type counts as absent. `deeplog.risk_score`
  (0-100) and `deeplog.severity` (low|medium|high|critical) default to 0 and low where absent.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import sink
from .config import Config
from .es import Clients
from .timefmt import epoch_seconds, iso_utc

log = logging.getLogger(__name__)

SEVERITIES = ("low", "medium", "high", "critical")
# ECS `event.severity` of each band (the numbers Elastic Security uses for its own severities).
ECS_SEVERITY = {"low": 21, "medium": 47, "high": 73, "critical": 99}
TYPES = ("log_key", "unseen_key", "session_end", "parameter")
# Links kept on one incident: an entity's bucket can hold thousands of anomalies; the count says how many.
MAX_LINKS = 200
_SESSIONS_PER_QUERY = 256
_PAGE = 2000
_FIELDS = [
    "@timestamp",
    "host.name",
    "deeplog.anomaly_type",
    "deeplog.summary",
    "deeplog.session.id",
    "deeplog.model_version",
    "deeplog.job",
    "deeplog.risk_score",
    "deeplog.severity",
    "deeplog.workflow",
]
# A total order of the anomalies of one session (their ids derive from these fields), for `search_after`.
_SORT = [
    {"@timestamp": "asc"},
    {"deeplog.source.index": "asc"},
    {"deeplog.source.id": "asc"},
    {"deeplog.anomaly_type": "asc"},
    {"deeplog.model_version": "asc"},
]


@dataclass(frozen=True)
class IncidentKey:
    job: str | None
    session_id: str
    bucket_start: float | None = None


def bucket_seconds(config: Config) -> int:
    """`output.incident_bucket_seconds`, or its default: hourly for entity streams, else per session."""
    b = config.output.incident_bucket_seconds
    if b is not None:
        return b
    return 3600 if config.source.session_field is not None else 0


def _get(source: Any, path: str) -> Any:
    cur = source
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part)
    return cur


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _strings(value: Any) -> list[str] | None:
    """The strings of a list read back (another tool may have written anything there)."""
    if not isinstance(value, list):
        return None
    return [v for v in value if isinstance(v, str)][:MAX_LINKS]


def incident_key(source: Mapping[str, Any], bucket_s: int) -> IncidentKey | None:
    """The incident an anomaly document belongs to (None: it names no session or has no usable time)."""
    sid = _str(_get(source, "deeplog.session.id"))
    if sid is None:
        return None
    bucket = None
    if bucket_s > 0:
        ts = epoch_seconds(source.get("@timestamp"))
        if ts is None:
            return None
        bucket = float(math.floor(ts / bucket_s) * bucket_s)
    return IncidentKey(_str(_get(source, "deeplog.job")), sid, bucket)


def incident_id(key: IncidentKey) -> str:
    raw = (
        f"{key.job or ''}\x1f{key.session_id}\x1f{'' if key.bucket_start is None else repr(key.bucket_start)}"
    )
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:40]


def risk_of(source: Mapping[str, Any]) -> float:
    """`deeplog.risk_score` clamped to 0-100 (0 where absent or not a finite number)."""
    v = _get(source, "deeplog.risk_score")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return 0.0
    return min(100.0, max(0.0, float(v)))


def severity_of(source: Mapping[str, Any]) -> str:
    v = _get(source, "deeplog.severity")
    return v if v in SEVERITIES else "low"


@dataclass
class _Incident:
    """What one incident's anomalies add up to, fed in (time, id) order."""

    key: IncidentKey
    first: float | None = None
    last: float | None = None
    count: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TYPES, 0))
    risk: float = 0.0
    severity: int = 0
    lead: tuple[float, str, str, str] | None = None  # (risk, id, summary, type) of the leading anomaly
    links: list[str] = field(default_factory=list)
    versions: set[str] = field(default_factory=set)
    hosts: set[str] = field(default_factory=set)
    workflow: dict[str, Any] | None = None  # the first anomaly that says where the session left its workflow

    def add(self, doc_id: str, source: Mapping[str, Any]) -> None:
        ts = epoch_seconds(source.get("@timestamp"))
        if ts is not None:
            self.first = ts if self.first is None else min(self.first, ts)
            self.last = ts if self.last is None else max(self.last, ts)
        self.count += 1
        kind = _get(source, "deeplog.anomaly_type")
        if kind in self.counts:
            self.counts[kind] += 1
        risk = risk_of(source)
        self.risk = max(self.risk, risk)
        self.severity = max(self.severity, SEVERITIES.index(severity_of(source)))
        if self.lead is None or risk > self.lead[0]:
            summary = _str(_get(source, "deeplog.summary")) or ""
            self.lead = (risk, doc_id, summary, kind if isinstance(kind, str) else "")
        if len(self.links) < MAX_LINKS:
            self.links.append(doc_id)
        for value, into in (
            (_get(source, "deeplog.model_version"), self.versions),
            (_get(source, "host.name"), self.hosts),
        ):
            if _str(value) and len(into) < MAX_LINKS:
                into.add(value)
        wf = _get(source, "deeplog.workflow")
        if self.workflow is None and isinstance(wf, Mapping) and _str(wf.get("diverged_at")):
            self.workflow = dict(wf)

    def document(self) -> dict[str, Any]:
        first = iso_utc(self.first) if self.first is not None else None
        last = iso_utc(self.last) if self.last is not None else None
        severity = SEVERITIES[self.severity]
        lead = self.lead or (0.0, "", "", "")
        wf = self.workflow or {}
        key = self.key
        deeplog: dict[str, Any] = {
            "session": {"id": key.session_id},
            "incident": {
                "id": incident_id(key),
                "bucket_start": iso_utc(key.bucket_start) if key.bucket_start is not None else None,
                "first": first,
                "last": last,
                "anomaly_count": self.count,
                "counts": dict(self.counts),
                "risk_score": self.risk,
                "severity": severity,
                "summary": lead[2],
                "leading_anomaly_id": lead[1],
                "leading_anomaly_type": lead[3] or None,
                "anomaly_ids": list(self.links),
                "links_complete": self.count <= MAX_LINKS,
                "model_versions": sorted(self.versions),
                # The first place the session left its workflow (`deeplog.workflow.*` of that anomaly).
                "workflow": {
                    "name": _str(wf.get("name")),
                    "diverged_at": _str(wf.get("diverged_at")),
                    "expected_next": _strings(wf.get("expected_next")),
                    "summary": _str(wf.get("summary")),
                },
            },
        }
        if key.job is not None:
            deeplog["job"] = key.job
        return {
            "@timestamp": first,
            "message": lead[2],
            "event": {
                "kind": "alert",
                "module": "deeplog",
                "dataset": "deeplog.incident",
                "start": first,
                "end": last,
                "risk_score": self.risk,
                "severity": ECS_SEVERITY[severity],
            },
            "related": {"hosts": sorted(self.hosts)},
            "deeplog": deeplog,
        }


# What reading the anomalies back sorts and filters on: an anomalies index auto-created by a bulk write
# (no `setup`) maps these as text, which neither sorts nor matches a session id as one term.
_NEEDED = {
    "@timestamp": "date",
    "deeplog.session.id": "keyword",
    "deeplog.source.index": "keyword",
    "deeplog.source.id": "keyword",
    "deeplog.anomaly_type": "keyword",
    "deeplog.model_version": "keyword",
}


def unusable(clients: Clients, index: str) -> str | None:
    """Why incidents cannot be computed from `index` (its mapping is not the shipped one), or None."""
    # A plain GET, as `source` asks: the client's field_caps() sends a body some compatible servers ignore.
    caps = clients.es.perform_request(
        "GET",
        f"/{index}/_field_caps",
        params={"fields": ",".join(_NEEDED), "ignore_unavailable": "true", "allow_no_indices": "true"},
        headers={"accept": "application/json"},
    ).body.get("fields", {})
    wrong = [f for f, t in _NEEDED.items() if set(caps.get(f, {})) != {t}]
    if not wrong:
        return None
    return (
        f"{index} does not map {', '.join(wrong)} as the shipped template does (created by a write before "
        "`deeplog-siem setup`?): incidents are not written; run setup and reindex it"
    )


def refresh_incidents(clients: Clients, config: Config, keys: Iterable[IncidentKey]) -> sink.WriteResult:
    """Recompute the touched incidents from their anomalies and write them (see the contract)."""
    wanted = set(keys)
    if not wanted:
        return sink.WriteResult()
    anomalies, bucket_s = config.output.anomalies_index, bucket_seconds(config)
    clients.es.indices.refresh(index=anomalies)
    found: dict[IncidentKey, _Incident] = {}
    sids = sorted({k.session_id for k in wanted})
    for at in range(0, len(sids), _SESSIONS_PER_QUERY):
        for hit in _anomalies_of(clients, anomalies, sids[at : at + _SESSIONS_PER_QUERY]):
            source = hit.get("_source") or {}
            key = incident_key(source, bucket_s)
            if key in wanted:
                found.setdefault(key, _Incident(key)).add(str(hit["_id"]), source)
    target = config.output.incidents
    docs = [
        {
            "_op_type": "update",
            "_index": target,
            "_id": incident_id(k),
            "doc": inc.document(),
            "doc_as_upsert": True,
        }
        for k, inc in sorted(found.items(), key=lambda kv: incident_id(kv[0]))
    ]
    if len(found) < len(wanted):
        # Anomalies the server has not acknowledged are never handed here; a missing one was deleted since.
        log.warning("%s touched incident(s) have no anomalies in %s", len(wanted) - len(found), anomalies)
    return sink.write(clients, docs)


def _anomalies_of(clients: Clients, index: str, sids: list[str]) -> Iterable[dict[str, Any]]:
    """Every anomaly of these sessions, in (time, id) order."""
    after: list[Any] | None = None
    while True:
        kw: dict[str, Any] = {"search_after": after} if after is not None else {}
        resp = clients.es.search(
            index=index,
            query={"terms": {"deeplog.session.id": sids}},
            sort=_SORT,
            size=_PAGE,
            source_includes=_FIELDS,
            track_total_hits=False,
            **kw,
        )
        hits = resp["hits"]["hits"]
        yield from hits
        if len(hits) < _PAGE:
            return
        after = hits[-1]["sort"]
