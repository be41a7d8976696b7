"""flagged: the anomalies index -> the sessions a retraining must not learn from.

Contract: `flagged_sessions(clients, config, since=T) -> Flagged`: the sessions (`deeplog.session.id`) with
at least one anomaly document of the job (`jobdocs.job_query`: another job's session ids are its own) in
`output.anomalies_index` whose `@timestamp` is at or after `since` and that
no responder marked a false positive (`deeplog.feedback` exactly `false_positive`); a session whose
anomalies in the window were all marked false positives is not among them (it is counted as `kept`). The
index is untrusted: documents are read in pages sorted by session id, each page starting after the last
session of the previous one (the rest of that session's documents are not read), at most `max_sessions`
sessions, and a document whose session id or verdict is not a plain string is counted as `malformed` and
ignored (a verdict in another form is no responder's: its session is left out). More sessions than the bound
is a `DeeplogError` (a retraining that could not see every flagged session could learn an attack). A missing
index flags nothing; a failed search is raised (the run fails and is recorded).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .config import Config
from .errors import DeeplogError
from .es import Clients
from .jobdocs import job_query

log = logging.getLogger(__name__)

FALSE_POSITIVE = "false_positive"
SESSION_FIELD = "deeplog.session.id"
FEEDBACK_FIELD = "deeplog.feedback"
PAGE_SIZE = 1000
# Sessions with unmarked anomalies one retraining may leave out; beyond this the retraining is refused.
MAX_SESSIONS = 500_000


@dataclass(frozen=True)
class Flagged:
    sessions: frozenset[str]  # sessions with an anomaly no responder marked a false positive
    kept: int  # sessions whose anomalies in the window were all marked false positives
    read: int  # anomaly documents read
    malformed: int  # documents ignored: session id or verdict not a plain string

    def counts(self) -> dict[str, int]:
        return {
            "sessions_flagged": len(self.sessions),
            "sessions_false_positive": self.kept,
            "anomalies_read": self.read,
            "anomalies_malformed": self.malformed,
        }


def _query(since: str, false_positive: bool, job_name: str) -> dict[str, Any]:
    marked = {"term": {FEEDBACK_FIELD: FALSE_POSITIVE}}
    return {
        "bool": {
            "filter": [
                {"range": {"@timestamp": {"gte": since}}},
                job_query(job_name),
                {"exists": {"field": SESSION_FIELD}},
                *([marked] if false_positive else []),
            ],
            **({} if false_positive else {"must_not": [marked]}),
        }
    }


def _hits(clients: Clients, index: str, query: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One hit per session (the first by the sort), session by session: `search_after` on the session id
    jumps over the rest of a session's documents."""
    after: list[Any] | None = None
    while True:
        res = clients.es.search(
            index=index,
            query=query,
            sort=[{SESSION_FIELD: {"order": "asc"}}],
            size=PAGE_SIZE,
            source_includes=[SESSION_FIELD, FEEDBACK_FIELD],
            track_total_hits=False,
            **({"search_after": after} if after is not None else {}),
        )
        hits = res["hits"]["hits"]
        yield from hits
        if len(hits) < PAGE_SIZE or not hits[-1].get("sort"):
            return
        after = hits[-1]["sort"]


def _fields(hit: Mapping[str, Any]) -> tuple[Any, Any]:
    d = hit.get("_source", {}).get("deeplog") if isinstance(hit.get("_source"), Mapping) else None
    if not isinstance(d, Mapping):
        return None, None
    session = d.get("session")
    return (session.get("id") if isinstance(session, Mapping) else None), d.get("feedback")


def flagged_sessions(
    clients: Clients, config: Config, *, since: str, max_sessions: int = MAX_SESSIONS
) -> Flagged:
    index = config.output.anomalies_index
    if not clients.es.indices.exists(index=index):
        log.info("anomalies index %s does not exist: no session to leave out", index)
        return Flagged(frozenset(), 0, 0, 0)
    clients.es.indices.refresh(index=index)
    flagged: set[str] = set()
    marked: set[str] = set()
    read = malformed = 0
    for false_positive in (False, True):
        for hit in _hits(clients, index, _query(since, false_positive, config.job.name)):
            read += 1
            sid, verdict = _fields(hit)
            if not isinstance(sid, str) or not sid:
                malformed += 1
                continue
            if false_positive and verdict == FALSE_POSITIVE:
                marked.add(sid)
                continue
            if false_positive:
                # The server matched the term inside a list or another form: not a responder's verdict.
                malformed += 1
            flagged.add(sid)
            if len(flagged) > max_sessions:
                raise DeeplogError(
                    f"more than {max_sessions} sessions with unmarked anomalies in {index} since {since}: "
                    "retraining refused (it could not leave them all out)"
                )
    return Flagged(frozenset(flagged), len(marked - flagged), read, malformed)
