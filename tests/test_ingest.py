"""`deeplog-siem ingest` on a loghub sample file, against the embedded server; the file reader on its own."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from deeplog_lab.shared_data import shared_data_dir
from deeplog_siem.cli import main
from deeplog_siem.logfile import LogFile, header_time

from .conftest import config_data

OPENSSH = shared_data_dir() / "loghub_2k" / "OpenSSH_2k.log"


needs_sample = pytest.mark.skipif(not OPENSSH.is_file(), reason="needs the loghub samples in ../shared/data")


def _config_file(es_section: dict, prefix: str, tmp_path: Path) -> Path:
    path = tmp_path / "deeplog.yml"
    data = config_data(
        es_section,
        prefix,
        tmp_path / "models",
        source={"index": f"{prefix}-ssh", "session_regex": r"sshd\[(\d+)\]", "query_delay_seconds": 0},
        templater={"format": "auto"},
    )
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _ingest(cfg_file: Path, index: str, capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    assert main(["ingest", str(OPENSSH), "--index", index, "-c", str(cfg_file), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@needs_sample
def test_ingest_indexes_every_line_with_its_header_time_and_a_rerun_adds_nothing(
    es_section, clients, prefix, tmp_path, capsys
):
    cfg_file = _config_file(es_section, prefix, tmp_path)
    index = f"{prefix}-ssh"
    lines = OPENSSH.read_text(encoding="utf-8").splitlines()
    first = _ingest(cfg_file, index, capsys)
    assert (first["format"], first["header_share"]) == ("syslog", 1.0)
    assert first["lines"] == first["written"] == len(lines) == 2000
    assert (first["existing"], first["rejected"], first["time_from_ingest"]) == (0, {}, 0)
    assert clients.es.count(index=index)["count"] == len(lines)

    hit = clients.es.search(index=index, query={"term": {"log.offset": 1}})["hits"]["hits"][0]["_source"]
    assert hit["message"] == lines[0]
    # "Dec 10 06:55:46" has no year: it takes the year of the ingest.
    assert hit["@timestamp"] == f"{datetime.now(UTC).year}-12-10T06:55:46.000Z"
    assert hit["event"]["ingested"].endswith("Z")

    again = _ingest(cfg_file, index, capsys)
    assert (again["written"], again["existing"]) == (0, len(lines))
    assert clients.es.count(index=index)["count"] == len(lines)


@needs_sample
def test_ingest_with_a_named_format_and_a_missing_file(es_section, clients, prefix, tmp_path, capsys):
    cfg_file = _config_file(es_section, prefix, tmp_path)
    out = _ingest(cfg_file, f"{prefix}-none", capsys, "--format", "none")
    # No header to read a time from: every line gets the ingest time, and says so.
    assert out["format"] == "none" and out["time_from_ingest"] == out["lines"] == 2000
    assert main(["ingest", str(tmp_path / "nope.log"), "--index", f"{prefix}-x", "-c", str(cfg_file)]) == 2
    assert "is not a readable file" in capsys.readouterr().err


def test_the_reader_counts_blank_undecodable_and_headerless_lines(tmp_path: Path) -> None:
    path = tmp_path / "mixed.log"
    path.write_bytes(
        b"2015-10-18 18:01:47,978 INFO [main] org.example.App: started\n"
        b"\n"
        b"2015-10-18 18:01:48,001 WARN [main] org.example.App: bad byte \xff here\n"
        b"a continuation line without a header\r\n"
        b"2015-10-18 18:01:49,500 INFO [main] org.example.App: done"
    )
    lf = LogFile(path)
    assert lf.format == "log4j"
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    docs = list(lf.documents(index="x", ingested=now))
    assert [d["log"]["offset"] for d in docs] == [1, 3, 4, 5]
    assert [d["@timestamp"] for d in docs] == [
        "2015-10-18T18:01:47.978Z",
        "2015-10-18T18:01:48.001Z",
        "2026-01-02T03:04:05.000Z",
        "2015-10-18T18:01:49.500Z",
    ]
    assert docs[1]["message"].endswith("bad byte \ufffd here")
    assert (lf.stats["blank"], lf.stats["invalid_utf8"], lf.stats["time_from_ingest"]) == (1, 1, 1)
    assert len({d["_id"] for d in docs}) == 4
    assert [d["_id"] for d in LogFile(path).documents(index="x", ingested=now)] == [d["_id"] for d in docs]
    with pytest.raises(ValueError, match="unknown format"):
        LogFile(path, "nosuch")


@pytest.mark.parametrize(
    "fields,expected",
    [
        ({"timestamp": "Jun 14 15:16:01"}, "2026-06-14T15:16:01"),
        ({"timestamp": "2024-03-01T12:00:00.123+01:00"}, "2024-03-01T11:00:00.123"),
        ({"timestamp": "Sun Dec 04 04:47:44 2005"}, "2005-12-04T04:47:44"),
        ({"timestamp": "10/Oct/2000:13:55:36 -0700"}, "2000-10-10T20:55:36"),
        ({"timestamp": "17/06/09 20:10:40"}, "2017-06-09T20:10:40"),
        ({"timestamp": "03-17 16:13:38.811"}, "2026-03-17T16:13:38.811"),
        ({"timestamp": "20171223-22:15:29:606"}, "2017-12-23T22:15:29.606"),
        ({"timestamp": "10.30 16:49:06"}, "2026-10-30T16:49:06"),
        ({"timestamp": "2016-09-28 04:30:30"}, "2016-09-28T04:30:30"),
        ({"date": "081109", "time": "203615"}, "2008-11-09T20:36:15"),
        ({"timestamp": "not a time"}, None),
        ({}, None),
    ],
)
def test_header_times_of_every_family_are_read(fields: dict, expected: str | None) -> None:
    t = header_time(fields, datetime(2026, 1, 1, tzinfo=UTC))
    if expected is None:
        assert t is None
    else:
        assert t is not None and t.astimezone(UTC).replace(tzinfo=None).isoformat(
            timespec="milliseconds"
        ) == datetime.fromisoformat(expected).isoformat(timespec="milliseconds")
