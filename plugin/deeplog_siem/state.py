"""state: a job's checkpoint and open-session tails, persisted as one document in the state index.

Contract: `state_id(job_name, backfill=)` is the id of a job's state document (`detect` for the default job,
as before jobs had names; `<name>.detect` for a named one; `-backfill` appended for backfills), so jobs
sharing the state index never read or lease each other's state. `load_state(clients, index, job) ->
JobState` (an empty state when none was saved yet) and
`save_state(clients, index, state)` (`prepare_state(state)` builds the saved form ahead, to pass as
`save_state(..., prepared=)`). A save is a single-document index operation, so a crash leaves either
the previous state or the new one, never a mix. Saves do not wait for a refresh: the state is only ever read
back by id (a real-time GET), and waiting would add up to a refresh interval to every chunk. The session
tails are stored compressed in a field the mapping never indexes; they are only read back by this module.

One writer per state: a save is a compare-and-set against the document the state was read from (or last
saved as): `if_seq_no`/`if_primary_term`, or a create when there was none. If another process saved in
between, `StateConflict` is raised and nothing is saved, so a checkpoint never moves backwards.
`take_lease(clients, index, job, owner=, lease_s=)` loads the state and marks it held by `owner` until
`lease_s` seconds from now (renewed by every save); while another owner's lease runs it raises
`StateConflict` naming that owner, so a second process stops before reading anything. A lease whose owner
(`lease_owner(run_id)`: host, process id, run id) is a process of this host that is gone is taken over at
once, so a job restarted after a crash does not wait for it to expire. `release_lease` clears the lease at
the end of a run (best effort: a lease left behind on another host expires).

Partitions (`workers.partitions` > 1): partition i of P keeps its own state document, `state_id(...)` +
`.p<i>of<P>` (`take_partition_lease`), with its own checkpoint, tails and lease. The job's unpartitioned
document records the layout (`split`: P): a partition state created while an unpartitioned one exists
starts from its checkpoint with the tails of its own sessions; an unpartitioned run on a split state, or a
partitioned one with another P, stops with `ConfigError` naming what to do. Each save also carries the
tally of the run that made it (`JobState.tally`: run id, worker, counts, checkpoint before and after), so
a run that dies without recording itself can be recorded by the next one (`runner`).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from elasticsearch import ConflictError

from .config import DEFAULT_JOB
from .errors import ArtifactError, ConfigError, StateConflict
from .es import Clients
from .partitions import Partition
from .source import Checkpoint
from .timefmt import epoch_seconds, iso_utc, utc_now

log = logging.getLogger(__name__)

FORMAT = 1
# Owners of the leases runs of this process hold now: another run of this process (a thread) is alive.
_LIVE: set[str] = set()


@dataclass(frozen=True)
class Lease:
    """Who runs the job on this state, and until when (epoch seconds) unless renewed."""

    owner: str
    expires_at: float


@dataclass
class JobState:
    job: str
    checkpoint: Checkpoint | None = None
    sessions: dict[str, Any] = field(default_factory=dict)  # the session tracker's to_dict()
    model_version: str | None = None
    updated: str | None = None
    # The saved document this state was read from or last saved as (None: none yet, a save creates it):
    # a save succeeds only over that very document.
    seq_no: int | None = None
    primary_term: int | None = None
    lease: Lease | None = None
    lease_s: float | None = None  # this process's lease, renewed for this long by every save
    # The unpartitioned document of a partitioned job: the number of partitions it was split into.
    split: int | None = None
    # What the run that made the last save had committed by then (see `runner.DetectionRun`).
    tally: dict[str, Any] | None = None


def state_id(
    job_name: str, *, backfill: bool = False, preview: bool = False, partition: Partition | None = None
) -> str:
    """The id of job `job_name`'s detection state (a backfill, and a preview, keep their own, so neither
    moves the live checkpoint; a partition of a partitioned job its own)."""
    base = "detect" if job_name == DEFAULT_JOB else f"{job_name}.detect"
    if preview:
        return f"{base}-preview"
    if backfill:
        return f"{base}-backfill"
    return base + partition.suffix if partition is not None and partition.of > 1 else base


def _pack(obj: Any) -> str:
    # Level 1: the tails are saved after every chunk, on the job's critical path, where time matters more
    # than the last few percent of size.
    return base64.b64encode(zlib.compress(json.dumps(obj, separators=(",", ":")).encode(), 1)).decode("ascii")


def _unpack(text: str) -> Any:
    return json.loads(zlib.decompress(base64.b64decode(text)))


def _lease(raw: Any, where: str) -> Lease | None:
    """The saved lease, or None when there is none; one that does not read as a lease is ignored (logged),
    since the document may have been edited by hand."""
    if raw is None:
        return None
    owner = raw.get("owner") if isinstance(raw, dict) else None
    expires = epoch_seconds(raw.get("expires_at")) if isinstance(raw, dict) else None
    if not isinstance(owner, str) or expires is None:
        log.warning("state document %s has an unreadable lease %r; ignoring it", where, raw)
        return None
    return Lease(owner, expires)


def _split(raw: Any, where: str) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 2:
        raise ValueError(f"split is {raw!r}, not a number of partitions ({where})")
    return raw


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
            seq_no=int(resp["_seq_no"]),
            primary_term=int(resp["_primary_term"]),
            lease=_lease(d.get("lease"), f"{index}/{job}"),
            split=_split(d.get("split"), f"{index}/{job}"),
            tally=d["run"] if isinstance(d.get("run"), dict) else None,
        )
    except (KeyError, ValueError, TypeError, AttributeError, zlib.error) as e:
        raise ArtifactError(
            f"state document {index}/{job} is unreadable ({e}); delete it to start from scratch "
            "(stop every detector on it first)"
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
        **({"split": state.split} if state.split is not None else {}),
        **({"run": state.tally} if state.tally is not None else {}),
    }


def _conflict(index: str, job: str, what: str) -> StateConflict:
    return StateConflict(
        f"the state of job {job!r} ({index}/{job}) {what}: another process runs this job on the same state "
        "(two detectors, or a daemon and a manual run); this run stops without saving over it"
    )


def _cas(state: JobState) -> dict[str, Any]:
    if state.seq_no is None or state.primary_term is None:
        return {"op_type": "create"}
    return {"if_seq_no": state.seq_no, "if_primary_term": state.primary_term}


def save_state(clients: Clients, index: str, state: JobState, prepared: dict[str, Any] | None = None) -> None:
    """Save `state` (or `prepared`, its form from `prepare_state`, which must be of the same state) over the
    document it was read from; `StateConflict` if another process saved in between."""
    now = utc_now()
    lease = state.lease
    if lease is not None and state.lease_s is not None:
        lease = Lease(lease.owner, time.time() + state.lease_s)
    body = {**(prepared if prepared is not None else prepare_state(state)), "updated_at": now}
    body["lease"] = {"owner": lease.owner, "expires_at": iso_utc(lease.expires_at)} if lease else None
    try:
        resp = clients.es.index(
            index=index, id=state.job, document={"@timestamp": now, "deeplog": {"state": body}}, **_cas(state)
        )
    except ConflictError:
        raise _conflict(index, state.job, "was saved by another process since this run read it") from None
    state.updated, state.lease = now, lease
    state.seq_no, state.primary_term = int(resp["_seq_no"]), int(resp["_primary_term"])


def leases_held() -> int:
    """How many job-state leases runs of this process hold now."""
    return len(_LIVE)


def lease_owner(run_id: str) -> str:
    """The lease owner of run `run_id` of this process: host, process id and run id."""
    return f"{socket.gethostname()}:{os.getpid()}:{run_id}"


def owner_gone(owner: str) -> bool:
    """Whether `owner` is a run of a process of this host that no longer exists (or of this process that
    has ended); a process elsewhere cannot be checked."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return owner not in _LIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def take_lease(clients: Clients, index: str, job: str, *, owner: str, lease_s: float) -> JobState:
    """The job's state, held by `owner` for `lease_s` seconds (renewed by each save); `StateConflict` while
    another owner's lease runs."""
    state = load_state(clients, index, job)
    if state.split is not None:
        raise ConfigError(
            f"workers.partitions: the state of this job ({index}/{job}) was split into {state.split} "
            f"partitions, each with its own checkpoint; set workers.partitions: {state.split} (an "
            "unpartitioned run would read again what the partitions processed)"
        )
    _hold(clients, index, state, owner=owner, lease_s=lease_s)
    return state


def _hold(clients: Clients, index: str, state: JobState, *, owner: str, lease_s: float) -> None:
    """Mark `state` held by `owner` and save it; `StateConflict` while another owner's lease runs."""
    job = state.job
    held = state.lease
    if held is not None and held.owner != owner:
        if held.expires_at > time.time() and not owner_gone(held.owner):
            raise _conflict(index, job, f"is held by {held.owner} until {iso_utc(held.expires_at)}")
        log.warning(
            "state %s/%s: taking over the lease of %s (expired or its process is gone)",
            index,
            job,
            held.owner,
        )
    state.lease, state.lease_s = Lease(owner, time.time() + lease_s), lease_s
    save_state(clients, index, state)
    _LIVE.add(owner)


def _live_lease(lease: Lease | None) -> bool:
    return lease is not None and lease.expires_at > time.time() and not owner_gone(lease.owner)


def mark_split(clients: Clients, index: str, base_job: str, partitions: int) -> JobState:
    """The job's unpartitioned state, marked as split into `partitions` (created as a mark alone when there
    is none); `ConfigError` when it was split into another number, `StateConflict` while an unpartitioned
    run holds it or another process marks it at the same time."""
    base = load_state(clients, index, base_job)
    if base.split == partitions:
        return base
    if base.split is not None:
        raise ConfigError(
            f"workers.partitions: the state of this job ({index}/{base_job}) was split into {base.split} "
            f"partitions, not {partitions}; set workers.partitions: {base.split} on every worker (README, "
            "Several workers: changing the number of partitions)"
        )
    if _live_lease(base.lease):
        assert base.lease is not None
        raise _conflict(index, base_job, f"is held by an unpartitioned run ({base.lease.owner})")
    base.split, base.lease = partitions, None
    base.lease_s = None
    save_state(clients, index, base)
    log.warning(
        "state %s/%s: this job now runs in %s partitions; each starts from this checkpoint (%s)",
        index,
        base_job,
        partitions,
        base.checkpoint.sort if base.checkpoint else "none: the start of the source",
    )
    return base


def _own_tails(saved: dict[str, Any], partition: Partition) -> dict[str, Any]:
    """The tracker state `saved` (`SessionTracker.to_dict`) with only the sessions of `partition`; the
    parameter series, which all sessions share, go to every partition."""
    if not saved:
        return {}
    sessions = saved.get("sessions")
    if not isinstance(sessions, dict):
        return saved
    return {**saved, "sessions": {s: t for s, t in sessions.items() if partition.owner_of_session(s)}}


def take_partition_lease(
    clients: Clients, index: str, base_job: str, *, partition: Partition, owner: str, lease_s: float
) -> JobState:
    """Partition `partition`'s state (`state_id` + its suffix), held by `owner` as `take_lease` holds a
    job's; a partition with no state yet starts from the job's unpartitioned checkpoint and tails."""
    job = base_job + partition.suffix
    state = load_state(clients, index, job)
    if state.seq_no is None:
        base = mark_split(clients, index, base_job, partition.of)
        state.checkpoint, state.model_version = base.checkpoint, base.model_version
        state.sessions = _own_tails(base.sessions, partition)
    _hold(clients, index, state, owner=owner, lease_s=lease_s)
    return state


def release_lease(clients: Clients, index: str, state: JobState) -> None:
    """Clear this process's lease, only over the document it last saved; a failure is logged, not raised
    (the lease expires on its own)."""
    if state.lease is None or state.seq_no is None or state.primary_term is None:
        return
    _LIVE.discard(state.lease.owner)
    try:
        resp = clients.es.update(
            index=index,
            id=state.job,
            doc={"deeplog": {"state": {"lease": None}}},
            if_seq_no=state.seq_no,
            if_primary_term=state.primary_term,
        )
    except ConflictError:
        log.warning(
            "state %s/%s changed since this run saved it: its lease is not released here", index, state.job
        )
        return
    except Exception as e:  # noqa: BLE001 - the run is over; its lease expires on its own
        log.warning("could not release the lease on state %s/%s: %s", index, state.job, e)
        return
    state.lease = None
    state.seq_no, state.primary_term = int(resp["_seq_no"]), int(resp["_primary_term"])
