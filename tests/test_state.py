"""Job state on the real server: one writer per state (compare-and-set saves, a lease per run)."""

from __future__ import annotations

import socket
import subprocess
import sys
from dataclasses import replace

import pytest

from deeplog_siem.errors import StateConflict
from deeplog_siem.runs import RunSummary, recorded
from deeplog_siem.source import Checkpoint
from deeplog_siem.state import lease_owner, load_state, release_lease, save_state, take_lease


def _at(n: int) -> Checkpoint:
    return Checkpoint.from_dict({"sort": [n], "ids": [f"doc{n}"]})


def test_a_save_over_a_state_saved_since_it_was_read_is_refused(clients, prefix):
    index = f"{prefix}-state"
    # Neither process finds a state: the first save creates it, the second may not overwrite it.
    a, b = load_state(clients, index, "detect"), load_state(clients, index, "detect")
    a.checkpoint = _at(10)
    save_state(clients, index, a)
    b.checkpoint = _at(5)
    with pytest.raises(StateConflict, match="another process"):
        save_state(clients, index, b)
    # Both read the saved state; the one that saves second is refused, so the checkpoint never goes back.
    a, b = load_state(clients, index, "detect"), load_state(clients, index, "detect")
    a.checkpoint = _at(20)
    save_state(clients, index, a)
    a.checkpoint = _at(30)
    save_state(clients, index, a)  # its own last save is what it saves over next
    with pytest.raises(StateConflict):
        save_state(clients, index, b)
    assert load_state(clients, index, "detect").checkpoint == _at(30)


def test_a_held_lease_stops_a_second_owner_until_released_or_expired(clients, prefix):
    index = f"{prefix}-state"
    first = take_lease(clients, index, "detect", owner="host-a:1:run1", lease_s=600)
    with pytest.raises(StateConflict, match="held by host-a:1:run1 until"):
        take_lease(clients, index, "detect", owner="host-b:2:run2", lease_s=600)
    first.checkpoint = _at(7)
    save_state(clients, index, first)  # saving renews the lease, and keeps it
    with pytest.raises(StateConflict):
        take_lease(clients, index, "detect", owner="host-b:2:run2", lease_s=600)
    release_lease(clients, index, first)
    second = take_lease(clients, index, "detect", owner="host-b:2:run2", lease_s=0)
    assert second.checkpoint == _at(7)
    # A lease that ran out (its process killed) is taken over; the late owner's save is refused.
    third = take_lease(clients, index, "detect", owner="host-c:3:run3", lease_s=600)
    second.checkpoint = _at(1)
    with pytest.raises(StateConflict):
        save_state(clients, index, second)
    assert load_state(clients, index, "detect").lease.owner == third.lease.owner == "host-c:3:run3"


def test_an_unreadable_lease_is_ignored_not_trusted(clients, prefix):
    index = f"{prefix}-state"
    save_state(clients, index, load_state(clients, index, "detect"))
    clients.es.update(index=index, id="detect", doc={"deeplog": {"state": {"lease": {"owner": ["x"]}}}})
    assert load_state(clients, index, "detect").lease is None
    assert take_lease(clients, index, "detect", owner="me", lease_s=60).lease.owner == "me"


def test_a_run_that_lost_its_state_is_recorded_as_a_conflict(clients, make_config, prefix):
    cfg = make_config()
    summary = RunSummary(run_id="r-conflict", job="detect")
    with pytest.raises(StateConflict), recorded(clients, cfg, summary):
        take_lease(clients, cfg.output.state_index, "detect", owner="other", lease_s=600)
        take_lease(clients, cfg.output.state_index, "detect", owner="this run", lease_s=600)
    clients.es.indices.refresh(index=cfg.output.runs_index)
    run = clients.es.get(index=cfg.output.runs_index, id="r-conflict")["_source"]["deeplog"]["run"]
    assert run["status"] == summary.status == "conflict"


def test_a_run_with_rejected_documents_is_degraded_not_ok(clients, make_config):
    cfg = make_config()
    summary = RunSummary(run_id="r-degraded", job="detect")
    with recorded(clients, cfg, summary):
        summary.rejected["mapper_parsing_exception"] += 2
    clients.es.indices.refresh(index=cfg.output.runs_index)
    run = clients.es.get(index=cfg.output.runs_index, id="r-degraded")["_source"]["deeplog"]["run"]
    assert (run["status"], run["bulk_failures"]) == ("degraded", 2)


def test_the_lease_of_a_process_of_this_host_that_is_gone_is_taken_over_at_once(clients, prefix):
    index = f"{prefix}-state"
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = f"{socket.gethostname()}:{int(ended.stdout)}:run-of-a-killed-job"
    take_lease(clients, index, "detect", owner=dead, lease_s=600)
    restarted = take_lease(clients, index, "detect", owner=lease_owner("r2"), lease_s=600)
    assert restarted.lease.owner == lease_owner("r2")
    # A run of this very process that is still going holds its lease against another run (a thread) ...
    with pytest.raises(StateConflict):
        take_lease(clients, index, "detect", owner=lease_owner("r3"), lease_s=600)
    # ... and one that ended without giving it back (its release could not be written) does not.
    outdated = replace(restarted)
    save_state(clients, index, restarted)
    release_lease(clients, index, outdated)  # refused: the state changed since that copy
    assert load_state(clients, index, "detect").lease.owner == lease_owner("r2")
    assert take_lease(
        clients, index, "detect", owner=lease_owner("r4"), lease_s=60
    ).lease.owner == lease_owner("r4")
