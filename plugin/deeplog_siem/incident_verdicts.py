"""incident_verdicts: a responder's verdict on an incident -> the same verdict on each of its anomalies.

Contract: `apply_incident_verdicts(clients, config) -> Counter` (run by the feedback job before it reads the
anomalies' verdicts, so they are learned in the same run). An incident document with `deeplog.feedback`
and no `deeplog.feedback_status` is pending. Everything on it is untrusted (whoever can write a verdict can
write every field), so which anomalies it covers is never read from its list of links: it is derived from
its identity (session, job, time bucket), which must hash to the document's own `_id`
(`incidents.incident_id`) and fit `output.incident_bucket_seconds`, and the anomalies are looked up in this
job's anomalies index alone, with the same session, the same `deeplog.job` (none where the incident names
none) and inside the bucket. Only anomalies with no verdict of their own get the incident's (a responder's
verdict on one anomaly is never overturned), at most `feedback.max_per_run` per incident and run (the
incident stays pending until none is left); each then goes through the feedback job's checks like any
other (the seal, the types it can learn). The incident gets `feedback_status`: `applied` with
`feedback_anomalies` (how many of its anomalies now carry the verdict), or `invalid` with
`feedback_error` naming what is wrong; the run goes on with the other incidents whatever one holds.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any

from . import sink
from .config import Config
from .es import Clients
from .incidents import IncidentKey, bucket_seconds, incident_id
from .jobdocs import job_query
from .timefmt import epoch_seconds, iso_utc, utc_now

log = logging.getLogger(__name__)

VERDICTS = ("false_positive", "true_positive")
APPLIED, INVALID = "applied", "invalid"


def _pending_query(job_name: str) -> dict[str, Any]:
    return {
        "bool": {
            # A job passes on the verdicts of its own incidents: each job's feedback run learns its own.
            "filter": [{"exists": {"field": "deeplog.feedback"}}, job_query(job_name)],
            "must_not": [{"exists": {"field": "deeplog.feedback_status"}}],
        }
    }


def _text(value: Any) -> str | None:
    return value[:4096] if isinstance(value, str) and value else None


def incident_of(hit: Mapping[str, Any], config: Config) -> IncidentKey | str:
    """The identity of a pending incident document -> its key, or why it cannot be trusted."""
    d = hit.get("_source", {}).get("deeplog")
    if not isinstance(d, Mapping):
        return "deeplog: missing"
    session = d.get("session")
    sid = session.get("id") if isinstance(session, Mapping) else None
    if not isinstance(sid, str) or not sid:
        return "deeplog.session.id: missing or not a string"
    job = d.get("job")
    if job is not None and (not isinstance(job, str) or not job):
        return "deeplog.job: not a string"
    incident = d.get("incident")
    raw = incident.get("bucket_start") if isinstance(incident, Mapping) else None
    bucket_s = bucket_seconds(config)
    bucket = None
    if raw is not None:
        bucket = epoch_seconds(raw)
        if bucket is None or bucket_s == 0 or bucket % bucket_s:
            return f"deeplog.incident.bucket_start: {raw!r} is not the start of an incident bucket of {bucket_s} s"
    elif bucket_s:
        return f"deeplog.incident.bucket_start: missing (incidents span {bucket_s} s buckets)"
    key = IncidentKey(job, sid, bucket)
    if incident_id(key) != hit.get("_id"):
        return (
            "the incident's session, job and bucket do not match its id (edited, or not written by the job)"
        )
    return key


def _anomalies_query(key: IncidentKey, bucket_s: int) -> dict[str, Any]:
    flt: list[dict[str, Any]] = [{"term": {"deeplog.session.id": key.session_id}}]
    must_not: list[dict[str, Any]] = [{"exists": {"field": "deeplog.feedback"}}]
    if key.job is None:
        must_not.append({"exists": {"field": "deeplog.job"}})
    else:
        flt.append({"term": {"deeplog.job": key.job}})
    if key.bucket_start is not None:
        rng = {"gte": iso_utc(key.bucket_start), "lt": iso_utc(key.bucket_start + bucket_s)}
        flt.append({"range": {"@timestamp": rng}})
    return {"bool": {"filter": flt, "must_not": must_not}}


def _count_query(key: IncidentKey, bucket_s: int, verdict: str) -> dict[str, Any]:
    q = _anomalies_query(key, bucket_s)["bool"]
    rest = [c for c in q["must_not"] if c != {"exists": {"field": "deeplog.feedback"}}]
    return {"bool": {"filter": [*q["filter"], {"term": {"deeplog.feedback": verdict}}], "must_not": rest}}


def apply_incident_verdicts(clients: Clients, config: Config) -> Counter[str]:
    """Pass each pending incident verdict on to the incident's anomalies (see the contract)."""
    out: Counter[str] = Counter()
    index, anomalies = config.output.incidents, config.output.anomalies_index
    if not clients.es.indices.exists(index=index) or not clients.es.indices.exists(index=anomalies):
        return out
    clients.es.indices.refresh(index=index)
    hits = clients.es.search(
        index=index,
        query=_pending_query(config.job.name),
        size=config.feedback.max_per_run,
        source_includes=["deeplog"],
    )["hits"]["hits"]
    bucket_s = bucket_seconds(config)
    for hit in hits:
        try:
            status, fields = _one(clients, config, hit, bucket_s)
        except Exception as e:  # noqa: BLE001 - one incident, whatever it holds, must not stop the others
            log.exception("feedback: incident %s could not be processed", hit.get("_id"))
            status, fields = INVALID, {"feedback_error": f"{type(e).__name__}: {e}"}
        out[status or "continued"] += 1
        if status is None:
            continue
        doc = {"feedback_status": status, "feedback_applied_at": utc_now(), **fields}
        clients.es.update(index=hit["_index"], id=hit["_id"], doc={"deeplog": doc})
    if hits:
        clients.es.indices.refresh(index=index)
        log.info("feedback: incident verdicts %s", dict(out))
    return out


def _one(clients: Clients, config: Config, hit: dict[str, Any], bucket_s: int) -> tuple[Any, dict[str, Any]]:
    d = hit["_source"].get("deeplog") or {}
    verdict = d.get("feedback") if isinstance(d, Mapping) else None
    if verdict not in VERDICTS:
        return INVALID, {
            "feedback_error": f"deeplog.feedback: must be one of {', '.join(VERDICTS)}, got {verdict!r}"
        }
    key = incident_of(hit, config)
    if isinstance(key, str):
        return INVALID, {"feedback_error": key}
    anomalies = config.output.anomalies_index
    cap = config.feedback.max_per_run
    found = clients.es.search(
        index=anomalies, query=_anomalies_query(key, bucket_s), size=cap, source=False, track_total_hits=True
    )["hits"]
    comment = _text(d.get("feedback_comment")) or f"verdict on incident {hit['_id']}"
    marks = {
        "feedback": verdict,
        "feedback_by": _text(d.get("feedback_by")),
        "feedback_comment": comment,
        "feedback_status": None,
        "feedback_error": None,
        "feedback_applied_at": None,
        "feedback_model_version": None,
    }
    updates = [
        {"_op_type": "update", "_index": h["_index"], "_id": h["_id"], "doc": {"deeplog": marks}}
        for h in found["hits"]
    ]
    result = sink.write(clients, updates, refresh=True)
    if result.failed:
        return INVALID, {"feedback_error": f"anomalies refused the verdict: {dict(result.rejected)}"}
    if found["total"]["value"] > len(updates):
        return None, {}  # more than one run's share: the rest in the next run
    carried = clients.es.search(
        index=anomalies, query=_count_query(key, bucket_s, verdict), size=0, track_total_hits=True
    )["hits"]["total"]["value"]
    return APPLIED, {"feedback_anomalies": carried, "feedback_error": None}
