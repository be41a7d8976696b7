"""Replayed HDFS documents carry the one timestamp form the job writes and reads back the same instant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from deeplog_lab.replay import EPOCH, documents, load_sample, render
from deeplog_siem.timefmt import epoch_seconds


def test_document_timestamps_are_utc_z_and_a_naive_start_means_utc():
    sessions = load_sample(limit_train=5).train
    aware = list(documents(render(sessions, seed=3), "logs"))
    naive = list(documents(render(sessions, seed=3, start=EPOCH.replace(tzinfo=None)), "logs"))
    shifted = EPOCH.astimezone(timezone(timedelta(hours=2)))  # the same instant, another offset
    offset = list(documents(render(sessions, seed=3, start=shifted), "logs"))
    assert (
        [d["@timestamp"] for d in aware]
        == [d["@timestamp"] for d in naive]
        == [d["@timestamp"] for d in offset]
    )
    first = aware[0]["@timestamp"]
    assert first.endswith("Z") and len(first) == len("2008-11-09T20:35:15.000Z")
    assert epoch_seconds(first) >= EPOCH.timestamp()
    assert all(epoch_seconds(d["@timestamp"]) is not None for d in aware)
    assert datetime.fromisoformat(aware[-1]["@timestamp"]) > EPOCH.astimezone(UTC)
