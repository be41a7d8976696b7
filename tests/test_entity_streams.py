"""Entity streams (`source.entity_fields`) for logs without a session id, on the real (embedded) server: real
sshd events (loghub OpenSSH_2k, each line's ground-truth event id as `event.code`), one stream per host and
process id, cut into sessions wherever it is idle for `sessions.idle_timeout_seconds`, in training as in
detection, as DeepLog treats system logs.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from deeplog_siem.config import parse_config
from deeplog_siem.errors import ConfigError
from deeplog_siem.runner import run_once, train
from deeplog_siem.setup_assets import create_indices
from deeplog_siem.state import load_state

from ._loghub import index_docs, iso, openssh_time, rows
from .conftest import config_data

MODEL = {"epochs": 4, "patience": 2, "threads": 1, "device": "cpu"}
GAP = 600.0
SOURCE = {
    "session_regex": None,
    "entity_fields": ["host.name", "process.pid"],
    "key_field": "event.code",
}


def _doc(r: dict[str, str], *, at=None) -> dict:
    return {
        "@timestamp": iso(at or openssh_time(r)),
        "message": r["Content"],
        "host": {"name": r["Component"]},
        "process": {"pid": int(r["Pid"]), "name": "sshd"},
        "event": {"code": r["EventId"]},
    }


def _parts(data: list[dict[str, str]], gap: float) -> int:
    """Sessions of the sample's streams (host, pid), each cut where it is idle for `gap` seconds."""
    last: dict[tuple[str, str], float] = {}
    parts = 0
    for r in data:
        entity, t = (r["Component"], r["Pid"]), openssh_time(r).timestamp()
        if entity not in last or t - last[entity] >= gap:
            parts += 1
        last[entity] = max(last.get(entity, t), t)
    return parts


def test_entity_fields_are_one_way_of_naming_sessions(es_section):
    base = {"elasticsearch": es_section, "source": {"index": "logs", "entity_fields": ["host.name"]}}
    assert parse_config(base).source.entity_fields == ("host.name",)
    with pytest.raises(ConfigError, match=r"^source\.session_field: set exactly one of"):
        parse_config({**base, "source": {**base["source"], "session_field": "x"}})
    with pytest.raises(ConfigError, match=r"^source\.entity_fields\[1\]: must name a field"):
        parse_config({**base, "source": {**base["source"], "entity_fields": ["host.name", ""]}})


def test_sshd_streams_by_host_and_pid_cut_at_idle_gaps_end_to_end(clients, es_section, prefix, tmp_path):
    data = rows("OpenSSH")
    cfg = parse_config(
        config_data(
            es_section,
            prefix,
            tmp_path / "models",
            source={**SOURCE, "index": f"{prefix}-sshd"},
            sessions={"idle_timeout_seconds": GAP},
            model=MODEL,
        )
    )
    create_indices(clients, cfg)

    # Training reads each stream cut at its idle gaps: one process of the sample is idle for over 10 minutes.
    train_rows = data[:1500]
    entities = {(r["Component"], r["Pid"]) for r in train_rows}
    index_docs(clients, f"{prefix}-sshd-train", [_doc(r) for r in train_rows], run="train")
    t = train(cfg, clients, index=f"{prefix}-sshd-train")
    assert t.skipped == {}
    assert t.sessions == _parts(train_rows, GAP) == len(entities) + 1

    # Detection: the rest, one event with no entity at all, one with a host but no process id, and a
    # process id the host reuses an hour after the last line (a new stream of that entity: a new session).
    test_rows = data[1500:]
    end = openssh_time(test_rows[-1])
    reused = test_rows[0]["Pid"]
    docs = [_doc(r) for r in test_rows]
    docs.append({**docs[0], "host": {}, "process": {}})
    docs.append({**docs[1], "process": {"name": "sshd"}})
    docs += [_doc(r, at=end + timedelta(hours=1, seconds=i)) for i, r in enumerate(test_rows[:2])]
    index_docs(clients, cfg.source.index, docs, run="test")
    s = run_once(cfg, clients)
    assert s.status == "ok", s.error
    assert s.skipped == {"no_session": 1} and s.processed == len(docs) - 1

    # The sessions left open are saved with the job's state: the reused process's stream holds the two
    # events after the gap only (its earlier part was closed at the gap, inside the same page).
    tails = load_state(clients, cfg.output.state_index, "detect").sessions["sessions"]
    sid = f"{test_rows[0]['Component']}|{reused}"
    before_gap = sum(1 for r in test_rows if r["Pid"] == reused)
    assert before_gap >= 2
    assert tails[sid][5] == 2  # SessionTail.count: events of the session
    # Every (host, pid) stream is one session id, the reused one included, and the host's events without a
    # process id are the host's.
    assert s.sessions == len({(r["Component"], r["Pid"]) for r in test_rows}) + 1
