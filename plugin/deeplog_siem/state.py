"""state: a job's checkpoint and open-session tails, persisted as one document in the state index.

Contract: `load_state(clients, index, job) -> JobState` (an empty state when none was saved yet) and
`save_state(clients, index, state)` (`prepare_state(state)` builds the saved form ahead, to pass as
`save_state(..., prepared=)`). A save is a single-document index operation, so a crash leaves either
the previous state or the new one, never a mix. Saves do not wait for a refresh: the state is only ever read
back by id (a real-time GET), and waiting would add up to a refresh interval to every chunk. The session
tails are stored compressed in a field the mapping never indexes; they are only read back by this module.
"""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import dataclass, field
from typing import Any

from .errors import ArtifactError
from .es import Clients
from .source import Checkpoint
from .timefmt import utc_now

FORMAT = 1


@dataclass
class JobState:
    job: str
    checkpoint: Checkpoint | None = None
    sessions: dict[str, Any] = field(default_factory=dict)  # the session tracker's to_dict()
    model_version: str | None = None
    updated: str | None = None


def _pack(obj: Any) -> str:
    # Level 1: the tails are saved after every chunk, on the job's critical path, where time matters more
    # than the last few percent of size.
    return base64.b64encode(zlib.compress(json.dumps(obj, separators=(",", ":")).encode(), 1)).decode("ascii")


def _unpack(text: str) -> Any:
    return json.loads(zlib.decompress(base64.b64decode(text)))


def load_state(clients: Clients, index: str, job: str) -> JobState:
    resp = clients.es.options(ignore_status=404).get(index=index, id=job)
    if not resp.get("found"):
        return JobState(job)
    src = resp["_source"]
    try:
        d = src["deeplog"]["state"]
        fmt = (d.get("data") or {}).get("format")
        if fmt != FORMAT:
            raise ValueError(f"unknown state format {fmt!r}")
        return JobState(
            job=job,
            checkpoint=Checkpoint.from_dict(d.get("checkpoint")),
            sessions=_unpack(d["tails"]) if d.get("tails") else {},
            model_version=d.get("model_version"),
            updated=d.get("updated_at"),
        )
    except (KeyError, ValueError, TypeError, zlib.error) as e:
        raise ArtifactError(
            f"state document {index}/{job} is unreadable ({e}); delete it to start from scratch"
        ) from None


def prepare_state(state: JobState) -> dict[str, Any]:
    """The saved form of `state` (the tails packed), for `save_state`: a caller that has to wait for
    something before it may save (the job: its last anomaly writes) builds it while it waits."""
    return {
        "job": state.job,
        "model_version": state.model_version,
        "checkpoint": state.checkpoint.to_dict() if state.checkpoint else None,
        "tails": _pack(state.sessions) if state.sessions else None,
        "data": {"format": FORMAT},
    }


def save_state(clients: Clients, index: str, state: JobState, prepared: dict[str, Any] | None = None) -> None:
    """Save `state` (or `prepared`, its form from `prepare_state`, which must be of the same state)."""
    now = utc_now()
    body = {**(prepared if prepared is not None else prepare_state(state)), "updated_at": now}
    clients.es.index(index=index, id=state.job, document={"@timestamp": now, "deeplog": {"state": body}})
    state.updated = now
