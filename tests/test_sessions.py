"""Sessions: keying by regex or field, bounded tails across runs, idle close with end-of-session."""

from __future__ import annotations

import gc
import json
import random
import tracemalloc
from collections import defaultdict

import pytest

from deeplog_lab.keyseq import read_key_sessions
from deeplog_lab.replay import render
from deeplog_lab.shared_data import shared_data_dir
from deeplog_siem.config import SourceConfig, TemplaterConfig
from deeplog_siem.errors import ArtifactError, ConfigError
from deeplog_siem.formats import HDFS_SESSION_REGEX, OPENSTACK_SESSION_REGEX
from deeplog_siem.sessions import EOS, MAX_SESSION_ID, PAD, SessionKeyer, SessionTracker, series_key
from deeplog_siem.templater import Templater

DATA = shared_data_dir()


def _keyer(**kw: str) -> SessionKeyer:
    return SessionKeyer(SourceConfig(index="logs", **kw))  # type: ignore[arg-type]


def test_hdfs_block_id_by_regex() -> None:
    k = _keyer(session_regex=HDFS_SESSION_REGEX)
    line = "081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block blk_-38865 end"
    assert k.session_of(line, {}) == "blk_-38865"
    assert k.session_of("081109 203615 148 INFO dfs.DataNode: no block here", {}) is None
    assert k.session_of(None, {}) is None  # type: ignore[arg-type]
    assert k.skipped == {"no_session": 2}
    delete = "BLOCK* ask 10.250.14.224:50010 to delete  blk_1 blk_-2 blk_1"
    assert k.sessions_of(delete) == ("blk_1", "blk_-2")


def test_openstack_instance_id_by_regex() -> None:
    k = _keyer(session_regex=OPENSTACK_SESSION_REGEX)
    msg = (
        "2017-05-16 00:00:04.500 2931 INFO nova.compute.manager [req-3ea4052c-895d-4b64-9e2d-04d64c4d94ab "
        "- - - - -] [instance: b9000564-fe1a-409b-b8cc-1e88b294cd1d] VM Started (Lifecycle Event)"
    )
    assert k.session_of(msg, {}) == "b9000564-fe1a-409b-b8cc-1e88b294cd1d"


def test_session_by_document_field() -> None:
    k = _keyer(session_field="openstack.instance_id")
    assert k.session_of("x", {"openstack": {"instance_id": "i-1"}}) == "i-1"
    assert k.session_of("x", {"openstack.instance_id": "i-2"}) == "i-2"  # flat dotted key
    assert k.session_of("x", {"openstack": {}}) is None
    assert k.session_of("x", {"openstack": {"instance_id": ""}}) is None
    hp = _keyer(session_field="host.name, process.pid")  # logs without a task id: host/process streams
    assert hp.session_of("x", {"host": {"name": "web1"}, "process": {"pid": 812}}) == "web1|812"
    assert hp.session_of("x", {"host": {"name": "web1"}}) is None
    assert k.skipped["no_session"] == 2 and hp.skipped["no_session"] == 1


def test_tail_keeps_last_window_keys_and_vectors_with_time_gaps() -> None:
    tr = SessionTracker(window=3, idle_timeout_s=60, max_sessions=10, ttl_s=600)
    obs = [
        tr.observe("s", k, (float(k * 10),), ts, wall=0.0) for k, ts in [(5, 100.0), (6, 101.5), (7, 104.0)]
    ]
    assert obs[0].first and obs[0].vector == (0.0, 50.0) and obs[0].history == ()
    assert obs[1].vector == (1.5, 60.0) and obs[1].history == (5,)
    assert obs[2].vector == (2.5, 70.0) and obs[2].history == (5, 6)
    o = tr.observe("s", 8, (), 110.0, wall=0.0)  # a key without numbers: only the time gap
    assert o.history == (5, 6, 7) and o.vector == (6.0,)
    tail = tr.get("s")
    assert tail is not None
    assert list(tail.keys) == [6, 7, 8]
    assert tail.vectors() == [(1.5, 60.0), (2.5, 70.0), (6.0,)]
    assert tail.last_ts == 110.0
    # An event that arrives late does not give a negative gap or move the clock back.
    assert tr.observe("s", 9, (), 105.0, wall=0.0).vector == (0.0,)
    assert tr.get("s").last_ts == 110.0  # type: ignore[union-attr]


def test_idle_sessions_close_and_are_returned_for_end_of_session_scoring() -> None:
    tr = SessionTracker(window=10, idle_timeout_s=60, max_sessions=10, ttl_s=3600)
    tr.observe("a", 5, (), 1000.0, wall=0.0)
    tr.observe("a", 22, (), 1010.0, wall=0.0)
    tr.observe("b", 5, (), 1050.0, wall=0.0)
    assert tr.close_idle(now=1060.0, wall=0.0) == []
    closed = tr.close_idle(now=1070.0, wall=0.0)
    assert [(sid, list(t.keys)) for sid, t in closed] == [("a", [5, 22])]
    # The caller scores EOS after the closed session's last keys: window (5, 22) -> EOS.
    assert EOS == 2
    assert "a" not in tr and "b" in tr and tr.stats["closed_idle"] == 1
    # TTL (wall clock): a session the job has not touched for ttl_s closes even if event time stalls.
    assert [sid for sid, _ in tr.close_idle(now=1060.0, wall=3600.0)] == ["b"]
    assert tr.stats["closed_ttl"] == 1
    tr.observe("c", 5, (), 1.0, wall=0.0)
    assert [sid for sid, _ in tr.close_all()] == ["c"] and len(tr) == 0


def test_the_training_tracker_never_closes_or_drops_a_session() -> None:
    tr = SessionTracker.unbounded()
    for i in range(5000):
        tr.observe(f"s{i}", 5, (), float(i), wall=0.0)
    tr.observe("s0", 6, (1.0,), 10**9, wall=0.0)
    assert len(tr) == 5000 and tr.stats["evicted_lru"] == 0
    assert tr.close_idle(now=10.0**12, wall=10.0**12) == []
    # Only the previous key is kept: all a parameter series needs, its vector computed as detection does.
    o = tr.observe("s0", 7, (2.0,), 10**9 + 4, wall=0.0)
    assert o.history == (6,) and o.vector == (4.0, 2.0) and series_key(o, 7) == (6, 7)


def test_lru_eviction_is_bounded_and_counted() -> None:
    tr = SessionTracker(window=4, idle_timeout_s=60, max_sessions=3, ttl_s=600)
    for sid in "abc":
        tr.observe(sid, 5, (), 1.0, wall=0.0)
    tr.observe("a", 6, (), 2.0, wall=0.0)  # a is now the most recently updated
    tr.observe("d", 5, (), 3.0, wall=0.0)
    assert sorted(sid for sid, _ in tr.sessions()) == ["a", "c", "d"]
    assert tr.stats["evicted_lru"] == 1 and len(tr) == 3


def test_tails_persist_through_json() -> None:
    tr = SessionTracker(window=5, idle_timeout_s=60, max_sessions=100, ttl_s=600)
    rng = random.Random(1)
    for i in range(200):
        tr.observe(f"blk_{i % 40}", rng.randint(3, 30), (rng.random() * 1e8,), 1000.0 + i * 0.37, wall=5.0)
    blob = json.dumps(tr.to_dict(), separators=(",", ":"))
    back = SessionTracker.from_dict(
        json.loads(blob), window=5, idle_timeout_s=60, max_sessions=100, ttl_s=600
    )
    assert len(back) == len(tr) == 40
    for sid, t in tr.sessions():
        b = back.get(sid)
        assert b is not None
        assert list(b.keys) == list(t.keys) and b.vectors() == t.vectors() and b.last_ts == t.last_ts
    # The next event after a restart gets its gap from the persisted last timestamp.
    last = tr.get("blk_0").last_ts  # type: ignore[union-attr]
    assert back.observe("blk_0", 5, (), last + 2.0, wall=5.0).vector == (2.0,)
    # Restoring with a smaller window or bound keeps the newest.
    small = SessionTracker.from_dict(
        json.loads(blob), window=2, idle_timeout_s=60, max_sessions=10, ttl_s=600
    )
    assert len(small) == 10 and small.stats["evicted_lru"] == 30
    assert all(len(t.keys) == 2 for _, t in small.sessions())
    with pytest.raises(ArtifactError, match="session state: malformed"):
        SessionTracker.from_dict({"version": 1, "sessions": {"x": [[1], [1, 1], [0.0], 0, 0]}}, **_ARGS)
    with pytest.raises(ArtifactError, match="session state: malformed"):
        SessionTracker.from_dict({"version": 9}, **_ARGS)


_ARGS = {"window": 5, "idle_timeout_s": 60.0, "max_sessions": 10, "ttl_s": 600.0}


def test_invalid_tracker_settings() -> None:
    with pytest.raises(ConfigError, match="window"):
        SessionTracker(0, 60, 10, 600)
    with pytest.raises(ConfigError, match="ttl_s"):
        SessionTracker(10, 60, 10, 30)


def test_open_session_costs_under_one_kilobyte() -> None:
    rng = random.Random(0)
    tr = SessionTracker(window=10, idle_timeout_s=3600, max_sessions=100000, ttl_s=7200)
    sids = [f"blk_{rng.randint(-(2**63), 2**63 - 1)}" for _ in range(10000)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for j in range(12):  # more events than the window: tails are full
            for sid in sids:
                ref = f"logs-hdfs-2008.11.09/{rng.getrandbits(100):020x}"  # the last event's source doc
                tr.observe(sid, 5 + j % 20, (float(rng.randint(0, 10**8)),), 1000.0 + j, wall=0.0, ref=ref)
        per_session = (tracemalloc.get_traced_memory()[0] - before) / len(tr)
    finally:
        tracemalloc.stop()
    print(f"{per_session:.0f} bytes per open session (window 10, 2-dim vectors)")
    assert per_session <= 1024


@pytest.mark.skipif(
    not (DATA / "hdfs_raw" / "HDFS_2k.log").is_file(), reason=f"shared data not found at {DATA}"
)
def test_rendered_hdfs_lines_rebuild_their_sessions() -> None:
    """Lines -> templater -> session keyer -> tracker: each session's key sequence, closed with EOS, is the
    original one under the key mapping (sessions interleaved in time)."""
    sessions = read_key_sessions(DATA / "hdfs_keys" / "hdfs_train")[:200]
    lines = render(sessions, seed=3)
    tpl = Templater(TemplaterConfig(format="hdfs"))
    keyer = _keyer(session_regex=HDFS_SESSION_REGEX)
    tr = SessionTracker(window=100, idle_timeout_s=1e9, max_sessions=1000, ttl_s=1e9)
    mapping: dict[int, int] = {}
    for r, ev in zip(lines, tpl.parse_many([r.message for r in lines], learn=True), strict=True):
        assert ev is not None
        sid = keyer.session_of(r.message, {})
        assert sid == r.session
        tr.observe(sid, ev.key, ev.numbers, r.time.timestamp(), wall=0.0)
        assert mapping.setdefault(r.key, ev.key) == ev.key
    assert len(set(mapping.values())) == len(mapping)
    rebuilt = defaultdict(list)
    for sid, tail in tr.close_all():
        rebuilt[sid] = [*tail.keys, EOS]
    expected = {r.session: None for r in lines}
    assert len(rebuilt) == len(expected) == len(sessions)
    by_block: dict[str, list[int]] = defaultdict(list)
    for r in lines:
        by_block[r.session].append(mapping[r.key])
    for sid, keys in rebuilt.items():
        assert keys == [*by_block[sid], EOS]


def test_parameter_series_histories_are_carried_across_runs() -> None:
    tr = SessionTracker(3, 60.0, 100, 3600.0, param_depth=2)
    a = tr.observe("s1", 5, (7.0,), 100.0, wall=0.0)
    b = tr.observe("s1", 6, (), 101.5, wall=0.0)
    assert series_key(a, 5) == (PAD, 5) and series_key(b, 6) == (5, 6)
    hist = tr.param_history.take([(5, 6), (5, 6), (5, 6), (PAD, 5)], [(1.0,), (2.0,), (3.0,), (0.0, 7.0)])
    assert hist == [[], [(1.0,)], [(1.0,), (2.0,)], []]  # earlier events of the same batch count
    saved = json.loads(json.dumps(tr.to_dict()))
    again = SessionTracker.from_dict(
        saved, window=3, idle_timeout_s=60.0, max_sessions=100, ttl_s=3600.0, param_depth=2
    )
    assert again.param_history.get((5, 6)) == [(2.0,), (3.0,)]  # the last param_depth vectors
    assert again.param_history.get((PAD, 5)) == [(0.0, 7.0)]
    del saved["params"]  # state saved before the parameter model ran in the job
    assert (
        len(
            SessionTracker.from_dict(
                saved, window=3, idle_timeout_s=60.0, max_sessions=100, ttl_s=3600.0
            ).param_history
        )
        == 0
    )


def test_a_message_with_hundreds_of_numbers_is_tracked_in_training_and_detection() -> None:
    from deeplog_siem.runner import EventRow, TrainingSet
    from deeplog_siem.source import SourceDoc
    from deeplog_siem.templater import ParsedEvent

    numbers = tuple(float(i) for i in range(300))
    rows = [
        EventRow(
            SourceDoc("logs", f"d{i}", (i,), {}),
            "s1",
            ParsedEvent(5, "t" + " <NUM>" * 300, tuple(map(str, numbers)), numbers),
            100.0 + i,
        )
        for i in range(3)
    ]
    data = TrainingSet(True)
    data.add(rows)
    assert data.series[(5, 5)] == [(1.0, *numbers)] * 2
    # Training keeps no document reference per event: only detection reports a session's last document.
    assert data.tracker.get("s1").last_ref == ""  # type: ignore[union-attr]
    tr = SessionTracker(window=2, idle_timeout_s=60, max_sessions=10, ttl_s=600)
    for i in range(3):
        assert tr.observe("s1", 5, numbers, 100.0 + i, wall=0.0).vector == (float(i > 0), *numbers)
    blob = json.loads(json.dumps(tr.to_dict()))
    assert blob["sessions"]["s1"][1] == [301, 301]
    back = SessionTracker.from_dict(blob, **_ARGS)
    assert back.get("s1").vectors() == tr.get("s1").vectors()  # type: ignore[union-attr]
    # Tails saved with one byte per vector length load as before.
    old = {"version": 1, "sessions": {"s": [[5, 6], [1, 2], [0.0, 1.0, 7.0], 3.0, 4.0, 2, "i/d"]}}
    assert SessionTracker.from_dict(old, **_ARGS).get("s").vectors() == [(0.0,), (1.0, 7.0)]  # type: ignore[union-attr]


def test_a_crafted_long_session_id_is_bounded_to_what_the_indices_can_search():
    # The output indices search keywords up to 1024 characters; a longer session id in a log line would hide
    # that session's anomalies from term queries (the retraining's exclusion of flagged sessions included).
    k = SessionKeyer(SourceConfig(index="x", session_regex=r"session=(\S+)"))
    long_a, long_b = "a" * 40_000, "a" * 39_999 + "b"
    ids = [k.session_of(f"login session={sid} ok", {}) for sid in (long_a, long_b, long_a)]
    assert all(sid is not None and len(sid) <= MAX_SESSION_ID <= 1024 for sid in ids)
    assert ids[0] == ids[2] != ids[1]  # the same id maps alike, different ids stay apart
    assert k.sessions_of(f"session={long_a} session=short", {}) == (ids[0], "short")
    fields = SessionKeyer(SourceConfig(index="x", session_field="user.name"))
    assert len(fields.session_of("m", {"user": {"name": long_b}}) or "") <= MAX_SESSION_ID
    assert k.session_of("session=blk_1 ok", {}) == "blk_1"  # ordinary ids are untouched
