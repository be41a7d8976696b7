"""Ingest pipelines: the grok patterns and processor chains, run in Python over real HDFS lines.

The shipped pipelines are executed by a small Python interpreter of the processors they use (grok expanded
to Python regular expressions from the standard grok pattern definitions, set with mustache fields, date
with the Java formats we use, remove, append, pipeline, on_failure, and the one Painless script form the
pipelines use: the partition key of the session field). HDFS lines are the real ones from
../shared/data/hdfs_raw, checked against loghub's structured ground truth; OpenStack and syslog lines are
representative lines in the loghub OpenStack and Linux formats (no raw files of those are available here).
When DEEPLOG_TEST_ES_URL names a real Elasticsearch with ingest, the same documents go through the real
`_ingest/pipeline/_simulate` API and must give the same fields.
"""

from __future__ import annotations

import copy
import csv
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from deeplog_siem.partitions import partition_key
from deeplog_siem.setup_assets import PIPELINES, ingest_pipelines

from .conftest import need_data, real_cluster

# Standard grok definitions (logstash-patterns-core "legacy" set, which Elasticsearch and OpenSearch ship),
# restricted to the names the pipelines use. IPV6 is simplified: no test line carries an IPv6 host.
GROK_BASE = {
    "BASE10NUM": r"(?<![0-9.+-])(?>[+-]?(?:(?:[0-9]+(?:\.[0-9]+)?)|(?:\.[0-9]+)))",
    "NUMBER": r"(?:%{BASE10NUM})",
    "INT": r"(?:[+-]?(?:[0-9]+))",
    "POSINT": r"\b(?:[1-9][0-9]*)\b",
    "NONNEGINT": r"\b(?:[0-9]+)\b",
    "NOTSPACE": r"\S+",
    "DATA": r".*?",
    "GREEDYDATA": r".*",
    "UUID": r"[A-Fa-f0-9]{8}-(?:[A-Fa-f0-9]{4}-){3}[A-Fa-f0-9]{12}",
    "MONTH": r"\b(?:[Jj]an(?:uary|uar)?|[Ff]eb(?:ruary|ruar)?|[Mm](?:a|ä)?r(?:ch|z)?|[Aa]pr(?:il)?|[Mm]a(?:y|i)?|[Jj]un(?:e|i)?|[Jj]ul(?:y|i)?|[Aa]ug(?:ust)?|[Ss]ep(?:tember)?|[Oo](?:c|k)?t(?:ober)?|[Nn]ov(?:ember)?|[Dd]e(?:c|z)(?:ember)?)\b",
    "MONTHNUM": r"(?:0?[1-9]|1[0-2])",
    "MONTHDAY": r"(?:(?:0[1-9])|(?:[12][0-9])|(?:3[01])|[1-9])",
    "YEAR": r"(?>\d\d){1,2}",
    "HOUR": r"(?:2[0123]|[01]?[0-9])",
    "MINUTE": r"(?:[0-5][0-9])",
    "SECOND": r"(?:(?:[0-5]?[0-9]|60)(?:[:.,][0-9]+)?)",
    "TIME": r"(?!<[0-9])%{HOUR}:%{MINUTE}(?::%{SECOND})(?![0-9])",
    "ISO8601_TIMEZONE": r"(?:Z|[+-]%{HOUR}(?::?%{MINUTE}))",
    "TIMESTAMP_ISO8601": r"%{YEAR}-%{MONTHNUM}-%{MONTHDAY}[T ]%{HOUR}:?%{MINUTE}(?::?%{SECOND})?%{ISO8601_TIMEZONE}?",
    "SYSLOGTIMESTAMP": r"%{MONTH} +%{MONTHDAY} %{TIME}",
    "HOSTNAME": r"\b(?:[0-9A-Za-z][0-9A-Za-z-]{0,62})(?:\.(?:[0-9A-Za-z][0-9A-Za-z-]{0,62}))*(?:\.?|\b)",
    "IPV4": r"(?<![0-9])(?:(?:[0-1]?[0-9]{1,2}|2[0-4][0-9]|25[0-5])[.](?:[0-1]?[0-9]{1,2}|2[0-4][0-9]|25[0-5])[.](?:[0-1]?[0-9]{1,2}|2[0-4][0-9]|25[0-5])[.](?:[0-1]?[0-9]{1,2}|2[0-4][0-9]|25[0-5]))(?![0-9])",
    "IPV6": r"(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}",
    "IP": r"(?:%{IPV6}|%{IPV4})",
    "IPORHOST": r"(?:%{IP}|%{HOSTNAME})",
    "SYSLOGHOST": r"%{IPORHOST}",
    "LOGLEVEL": r"([Aa]lert|ALERT|[Tt]race|TRACE|[Dd]ebug|DEBUG|[Nn]otice|NOTICE|[Ii]nfo?(?:rmation)?|INFO?(?:RMATION)?|[Ww]arn?(?:ing)?|WARN?(?:ING)?|[Ee]rr?(?:or)?|ERR?(?:OR)?|[Cc]rit?(?:ical)?|CRIT?(?:ICAL)?|[Ff]atal|FATAL|[Ss]evere|SEVERE|EMERG(?:ENCY)?|[Ee]merg(?:ency)?)",
}

_GROK_REF = re.compile(r"%\{(\w+)(?::([\w.@\[\]]+))?(?::(int|long|float|double|boolean))?\}")


def grok_to_regex(pattern: str, definitions: dict[str, str]) -> tuple[re.Pattern[str], dict[str, tuple]]:
    """Expand `%{NAME:field:type}` into a Python regex; returns it and group name -> (field, type)."""
    defs = {**GROK_BASE, **definitions}
    fields: dict[str, tuple] = {}

    def expand(text: str, depth: int) -> str:
        if depth > 20:
            raise ValueError(f"grok pattern recursion too deep: {text}")

        def sub(m: re.Match[str]) -> str:
            name, field, typ = m.groups()
            if name not in defs:
                raise KeyError(f"grok pattern {name} is not defined (add it to GROK_BASE)")
            inner = expand(defs[name], depth + 1)
            if field is None:
                return f"(?:{inner})"
            group = f"g{len(fields)}"
            fields[group] = (field, typ)
            return f"(?P<{group}>{inner})"

        return _GROK_REF.sub(sub, text)

    return re.compile(expand(pattern, 0)), fields


# ------------------------------------------------------------------------------ a tiny ingest interpreter


class Failure(Exception):
    def __init__(self, message: str, processor: str) -> None:
        super().__init__(message)
        self.processor = processor


def _get(doc: dict, path: str) -> Any:
    cur: Any = doc
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _set(doc: dict, path: str, value: Any) -> None:
    parts = path.split(".")
    cur = doc
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value


def _remove(doc: dict, path: str) -> bool:
    parts = path.split(".")
    cur = doc
    for part in parts[:-1]:
        if not isinstance(cur, dict) or part not in cur:
            return False
        cur = cur[part]
    return cur.pop(parts[-1], None) is not None


_MUSTACHE = re.compile(r"\{\{\{?\s*([\w.@]+)\s*\}?\}\}")
# The Java date formats the pipelines use, as strptime formats (a format not listed fails the test).
JAVA_DATE = {
    "yyMMdd HHmmss": "%y%m%d %H%M%S",
    "yyyy-MM-dd HH:mm:ss.SSS": "%Y-%m-%d %H:%M:%S.%f",
    "MMM d HH:mm:ss": "%b %d %H:%M:%S",
    "MMM  d HH:mm:ss": "%b %d %H:%M:%S",
}
INGEST_TS = "2024-05-01T12:00:00.000Z"


def _parse_date(value: str, formats: list[str]) -> str:
    for f in formats:
        try:
            if f == "ISO8601":
                dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
            else:
                dt = datetime.strptime(value, JAVA_DATE[f])
                if "y" not in f:  # like Elasticsearch: a year-less date gets the current year
                    dt = dt.replace(year=datetime.now(UTC).year)
        except ValueError:
            continue
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    raise Failure(f"unable to parse date [{value}]")


# The only Painless the shipped pipelines may use: deeplog.partition from one session field, when present.
_PARTITION_SCRIPT = re.compile(
    r"if \(ctx\.(\w+)\?\.(\w+) != null\) \{ if \(ctx\.deeplog == null\) \{ ctx\.deeplog = new HashMap\(\); \} "
    r"ctx\.deeplog\.partition = Math\.floorMod\(ctx\.\1\.\2\.hashCode\(\), 1024\); \}"
)


def _run_script(opts: dict, doc: dict) -> None:
    m = _PARTITION_SCRIPT.fullmatch(opts["source"])
    if opts.get("lang", "painless") != "painless" or m is None:
        raise AssertionError(f"script {opts['source']!r} is not the form this test interprets: add it")
    value = _get(doc, f"{m.group(1)}.{m.group(2)}")
    if value is not None:
        _set(doc, "deeplog.partition", partition_key(str(value)))


def run_pipeline(name: str, doc: dict, pipelines: dict[str, dict]) -> dict:
    body = pipelines[name]
    try:
        for proc in body["processors"]:
            _run_processor(proc, doc, pipelines)
    except Failure as e:
        if "on_failure" not in body:
            raise
        ctx = {"_ingest": {"on_failure_message": str(e), "on_failure_processor_type": e.processor}}
        for proc in body["on_failure"]:
            _run_processor(proc, doc, pipelines, ctx)
    return doc


def _run_processor(proc: dict, doc: dict, pipelines: dict[str, dict], ctx: dict | None = None) -> None:
    ((ptype, opts),) = proc.items()
    ctx = {**(ctx or {}), "_ingest": {"timestamp": INGEST_TS, **(ctx or {}).get("_ingest", {})}}

    def render(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        return _MUSTACHE.sub(lambda m: str(_get({**doc, **ctx}, m.group(1)) or ""), value)

    try:
        if ptype == "pipeline":
            run_pipeline(opts["name"], doc, pipelines)
        elif ptype == "set":
            if opts.get("override", True) or _get(doc, opts["field"]) is None:
                _set(doc, opts["field"], render(opts["value"]))
        elif ptype == "append":
            cur = _get(doc, opts["field"]) or []
            _set(doc, opts["field"], list(cur) + [render(v) for v in opts["value"]])
        elif ptype == "remove":
            if not _remove(doc, opts["field"]) and not opts.get("ignore_missing"):
                raise Failure(f"field [{opts['field']}] not present", "remove")
        elif ptype == "date":
            value = _get(doc, opts["field"])
            if value is None:
                raise Failure(f"field [{opts['field']}] not present", "date")
            _set(doc, opts.get("target_field", "@timestamp"), _parse_date(value, opts["formats"]))
        elif ptype == "grok":
            value = _get(doc, opts["field"])
            if value is None:
                if opts.get("ignore_missing"):
                    return
                raise Failure(f"field [{opts['field']}] not present", "grok")
            for pattern in opts["patterns"]:
                rx, fields = grok_to_regex(pattern, opts.get("pattern_definitions", {}))
                m = rx.search(value)
                if m:
                    for group, (field, typ) in fields.items():
                        v = m.group(group)
                        if v is not None:
                            _set(doc, field, int(v) if typ in ("int", "long") else v)
                    return
            raise Failure("Provided Grok expressions do not match field value", "grok")
        elif ptype == "script":
            _run_script(opts, doc)
        else:
            raise AssertionError(f"processor {ptype} is not interpreted by this test: add it")
    except Failure:
        if not opts.get("ignore_failure"):
            raise


@pytest.fixture(scope="module")
def pipelines() -> dict[str, dict]:
    return ingest_pipelines()


def ingest(pipelines: dict, name: str, line: str) -> dict:
    return run_pipeline(name, {"message": line}, pipelines)


# ------------------------------------------------------------------------------------------------ HDFS


def test_hdfs_pipeline_matches_loghub_ground_truth(pipelines):
    log_path = need_data("hdfs_raw", "HDFS_2k.log")
    truth_path = need_data("hdfs_raw", "HDFS_2k.log_structured.csv")
    lines = log_path.read_text(encoding="utf-8").splitlines()
    with truth_path.open(newline="", encoding="utf-8") as f:
        truth = list(csv.DictReader(f))
    assert len(lines) == len(truth) == 2000
    levels = set()
    for line, row in zip(lines, truth, strict=True):
        doc = ingest(pipelines, "deeplog-hdfs", line)
        assert "tags" not in doc, (line, doc.get("error"))
        assert doc["message"] == line  # the job's templater needs the original line
        assert doc["process"]["thread"]["id"] == int(row["Pid"])
        assert doc["log"]["level"] == row["Level"]
        assert doc["log"]["logger"] == row["Component"]
        expected_ts = datetime.strptime(row["Date"] + row["Time"], "%y%m%d%H%M%S").replace(tzinfo=UTC)
        assert doc["@timestamp"] == expected_ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        blocks = re.findall(r"blk_-?\d+", row["Content"])
        assert doc.get("hdfs", {}).get("block_id") == (blocks[0] if blocks else None)
        assert doc["event"] == {"ingested": INGEST_TS, "dataset": "hdfs"}
        assert "_tmp" not in doc
        levels.add(row["Level"])
    assert levels >= {"INFO", "WARN"}  # the sample exercises more than one level


def test_session_pipelines_stamp_the_partition_key_of_the_session(pipelines):
    lines = need_data("hdfs_raw", "HDFS_2k.log").read_text(encoding="utf-8").splitlines()
    keyed = 0
    for line in lines:
        doc = ingest(pipelines, "deeplog-hdfs", line)
        block = doc.get("hdfs", {}).get("block_id")
        if block is None:
            assert "deeplog" not in doc, line  # no session: no key (partition 0 reads it)
            continue
        assert doc["deeplog"] == {"partition": partition_key(block)}
        keyed += 1
    assert keyed == len(lines)  # every line of the sample names a block
    no_block = ingest(
        pipelines, "deeplog-hdfs", "081109 204005 35 INFO dfs.FSNamesystem: BLOCK* NameSystem.heartbeat"
    )
    assert "tags" not in no_block and "hdfs" not in no_block and "deeplog" not in no_block
    for line, expected in OPENSTACK:
        doc = ingest(pipelines, "deeplog-openstack", line)
        instance = expected.get("openstack.instance_id")
        assert _get(doc, "deeplog.partition") == (partition_key(instance) if instance else None), line
    assert all(
        0 <= _get(ingest(pipelines, "deeplog-hdfs", x), "deeplog.partition") < 1024 for x in lines[:50]
    )


def test_hdfs_pipeline_session_id_agrees_with_block_labels(pipelines):
    """On the first 715 lines, every labelled block appears as hdfs.block_id (the session the job groups by)."""
    lines = need_data("hdfs_raw", "HDFS_first715_raw.log").read_text(encoding="utf-8").splitlines()
    with need_data("hdfs_raw", "HDFS_first715_block_labels.csv").open(newline="") as f:
        labelled = {row["BlockId"] for row in csv.DictReader(f)}
    seen = set()
    for line in lines:
        doc = ingest(pipelines, "deeplog-hdfs", line)
        assert "tags" not in doc, line
        if "block_id" in doc.get("hdfs", {}):
            seen.add(doc["hdfs"]["block_id"])
    assert seen == labelled


def test_hdfs_pipeline_parses_every_line_of_the_20k_sample(pipelines):
    lines = need_data("hdfs_raw", "HDFS_20k_labelled_lines.log").read_text(encoding="utf-8").splitlines()
    failed = [line for line in lines if "tags" in ingest(pipelines, "deeplog-hdfs", line)]
    assert len(lines) == 20002
    assert failed == []


def test_unparsable_line_is_kept_tagged_and_still_stamped(pipelines):
    for name in ("deeplog-hdfs", "deeplog-openstack", "deeplog-syslog"):
        doc = ingest(pipelines, name, "this is not a log line of any known format")
        assert doc["message"] == "this is not a log line of any known format"
        assert doc["tags"] == [name.replace("-", "_", 1) + "_parse_failure"]
        assert "Grok expressions do not match" in doc["error"]["message"]
        # Without event.ingested the checkpointed reader would never see the document.
        assert doc["event"]["ingested"] == INGEST_TS
        assert "_tmp" not in doc


# -------------------------------------------------------------------------------- OpenStack and syslog

OPENSTACK = [
    (  # loghub OpenStack format: log file name first; an instance lifecycle line
        "nova-compute.log.1.2017-05-16_13:55:31 2017-05-16 00:00:04.500 2931 INFO nova.compute.manager "
        "[req-3ea4052c-895d-4b64-9e2d-04d64c4d94ab - - - - -] [instance: b9000564-fe1a-409b-b8cc-1e88b294cd1d] "
        "VM Started (Lifecycle Event)",
        {
            "@timestamp": "2017-05-16T00:00:04.500Z",
            "process.pid": 2931,
            "log.level": "INFO",
            "log.logger": "nova.compute.manager",
            "log.file.path": "nova-compute.log.1.2017-05-16_13:55:31",
            "openstack.request_id": "3ea4052c-895d-4b64-9e2d-04d64c4d94ab",
            "openstack.instance_id": "b9000564-fe1a-409b-b8cc-1e88b294cd1d",
        },
    ),
    (  # an API line: a request id but no instance (no session)
        "nova-api.log.1.2017-05-16_13:53:08 2017-05-16 00:00:00.008 25746 INFO nova.osapi_compute.wsgi.server "
        "[req-38101a0b-2096-447d-96ea-a692162415ae 113d3a99c3da401fbd62cc2caa5b96d2 "
        '54fdadf51e254cbbb26a9e1e9d0b52b4 - - -] 10.11.10.1 "GET /v2/54fdadf51e254cbbb26a9e1e9d0b52b4/servers/detail '
        'HTTP/1.1" status: 200 len: 1893 time: 0.2477829',
        {
            "@timestamp": "2017-05-16T00:00:00.008Z",
            "process.pid": 25746,
            "log.level": "INFO",
            "openstack.request_id": "38101a0b-2096-447d-96ea-a692162415ae",
            "openstack.instance_id": None,
        },
    ),
    (  # as written by the service itself (no file-name prefix), no request context, a warning
        "2017-05-16 00:00:10.127 2931 WARNING nova.compute.manager [instance: 96abccce-8d1f-4e07-b6d1-4b2ab87e23b4] "
        "Instance shutdown by itself. Calling the stop API.",
        {
            "@timestamp": "2017-05-16T00:00:10.127Z",
            "log.level": "WARNING",
            "log.file.path": None,
            "openstack.request_id": None,
            "openstack.instance_id": "96abccce-8d1f-4e07-b6d1-4b2ab87e23b4",
        },
    ),
]

SYSLOG = [
    (  # loghub Linux format
        "Jun 14 15:16:01 combo sshd(pam_unix)[19939]: authentication failure; logname= uid=0 euid=0 tty=NODEVssh "
        "ruser= rhost=218.188.2.4",
        {
            "host.name": "combo",
            "process.name": "sshd(pam_unix)",
            "process.pid": 19939,
            "_ts": "06-14T15:16:01",
        },
    ),
    (  # single-digit day (space-padded); "syslogd 1.4.1:" is not PROG[PID]: time and host still parse
        "Jul  9 22:53:19 combo syslogd 1.4.1: restart.",
        {"host.name": "combo", "process.name": None, "_ts": "07-09T22:53:19"},
    ),
    (
        "Jul  9 22:53:22 combo kernel: klogd 1.4.1, log source = /proc/kmsg started.",
        {"host.name": "combo", "process.name": "kernel", "process.pid": None, "_ts": "07-09T22:53:22"},
    ),
    (  # with a PRI and an RFC 3339 timestamp (rsyslog's high-precision template)
        "<38>2024-03-02T10:11:12.345+01:00 web-01.example.org sshd[812]: Accepted publickey for root",
        {
            "host.name": "web-01.example.org",
            "process.name": "sshd",
            "process.pid": 812,
            "log.syslog.priority": 38,
            "@timestamp": "2024-03-02T09:11:12.345Z",
        },
    ),
]


@pytest.mark.parametrize("line,expected", OPENSTACK)
def test_openstack_pipeline(pipelines, line, expected):
    doc = ingest(pipelines, "deeplog-openstack", line)
    assert "tags" not in doc, doc.get("error")
    for field, value in expected.items():
        assert _get(doc, field) == value, field
    assert doc["event"]["dataset"] == "openstack" and doc["event"]["ingested"] == INGEST_TS


@pytest.mark.parametrize("line,expected", SYSLOG)
def test_syslog_pipeline(pipelines, line, expected):
    doc = ingest(pipelines, "deeplog-syslog", line)
    assert "tags" not in doc, doc.get("error")
    for field, value in expected.items():
        if field == "_ts":
            assert doc["@timestamp"][5:19] == value
        else:
            assert _get(doc, field) == value, field


def test_syslog_pipeline_keeps_the_shippers_host_name(pipelines):
    doc = run_pipeline(
        "deeplog-syslog",
        {"message": SYSLOG[0][0], "host": {"name": "collector-host"}},
        pipelines,
    )
    assert doc["host"]["name"] == "collector-host"


def test_every_pipeline_has_description_and_on_failure(pipelines):
    assert list(pipelines) == list(PIPELINES)
    for name, body in pipelines.items():
        assert len(body["description"]) > 30, name
        tags = [p["append"]["value"] for p in body["on_failure"] if "append" in p]
        assert tags and all(t[0].endswith("_failure") for t in tags), name
        if name != "deeplog-event-ingested":
            assert body["processors"][0] == {"pipeline": {"name": "deeplog-event-ingested"}}, name


# ---------------------------------------------------------------------------- the real _simulate API


def test_pipelines_through_real_simulate_api(clients, pipelines):
    if not real_cluster():
        pytest.skip(
            "needs DEEPLOG_TEST_ES_URL naming a real Elasticsearch: the embedded server has no ingest"
        )
    if clients.flavour != "elasticsearch" or not clients.has_ingest:
        pytest.skip(f"DEEPLOG_TEST_ES_URL is {clients.flavour} {clients.version} without the ingest API")
    tag = f"t{uuid.uuid4().hex[:8]}"
    renamed = {n: f"{tag}-{n}" for n in pipelines}
    es = clients.es
    try:
        for name, body in pipelines.items():
            text = json.dumps(body)
            for old, new in renamed.items():
                text = text.replace(f'"name": "{old}"', f'"name": "{new}"')
            es.ingest.put_pipeline(id=renamed[name], **json.loads(text))
        hdfs = need_data("hdfs_raw", "HDFS_2k.log").read_text(encoding="utf-8").splitlines()[:50]
        cases = [("deeplog-hdfs", line) for line in hdfs]
        cases += [("deeplog-openstack", line) for line, _ in OPENSTACK]
        cases += [("deeplog-syslog", line) for line, _ in SYSLOG]
        cases += [(n, "not a log line") for n in ("deeplog-hdfs", "deeplog-openstack", "deeplog-syslog")]
        for name, line in cases:
            resp = es.ingest.simulate(id=renamed[name], docs=[{"_source": {"message": line}}])
            real = resp["docs"][0]["doc"]["_source"]
            mine = ingest(pipelines, name, line)
            for field in ("process", "log", "hdfs", "openstack", "tags", "deeplog"):
                assert real.get(field) == mine.get(field), (name, line, field)
            if "tags" not in mine and "syslog" not in name:
                assert real["@timestamp"].startswith(mine["@timestamp"][:19]), (name, line)
            assert real["event"]["ingested"]
    finally:
        for new in renamed.values():
            es.options(ignore_status=404).ingest.delete_pipeline(id=new)


def test_pipeline_bodies_do_not_share_state():
    a, b = ingest_pipelines(), ingest_pipelines()
    a["deeplog-hdfs"]["processors"].clear()
    assert b["deeplog-hdfs"]["processors"] and copy.deepcopy(b) == ingest_pipelines()
