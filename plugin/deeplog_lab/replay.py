"""replay: DeepLog HDFS key sequences -> realistic raw HDFS log documents in an index.

Contract: `render(sessions, seed=...) -> list[LogLine]` turns key sequences (HDFS event numbers E1..E30 of
`HDFS_templates.csv`) into raw HDFS lines in the format of loghub's `HDFS.log` (header `081109 203615 148
INFO dfs.DataNode$PacketResponder: ...`), with block ids, IPs, ports, sizes and paths like the real ones, the
sessions interleaved in time. Seeded: the same input and seed render the same lines. `index_lines(clients,
index, lines)` bulk-indexes them as Filebeat-like documents (`@timestamp`, `message`, `host.name`,
`event.ingested`, `event.sequence`, `log.*`, `agent.*`) with deterministic ids, so a replay is idempotent.

The packaged sample (`data/hdfs_sample.csv.gz`, from ../shared/data/hdfs_keys; see README for attribution)
has one labelled session per row: `split,label,keys`.
"""

from __future__ import annotations

import csv
import gzip
import io
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

from elasticsearch import helpers

from deeplog_siem.errors import DataError, SinkError
from deeplog_siem.es import Clients
from deeplog_siem.timefmt import iso, utc_now

# (level, component, format) per HDFS event number; the formats are those of the real HDFS.log lines.
# Fields: b block id, ip/ip2 datanode IPs, port, size, path, n responder number, exc exception text.
_FORMATS: dict[int, tuple[str, str, str]] = {
    1: ("INFO", "dfs.FSDataset", "Adding an already existing block {b}"),
    2: ("INFO", "dfs.DataBlockScanner", "Verification succeeded for {b}"),
    3: ("INFO", "dfs.DataNode$DataXceiver", "{ip}:50010 Served block {b} to /{ip2}"),
    4: ("WARN", "dfs.DataNode$DataXceiver", "{ip}:50010:Got exception while serving {b} to /{ip2}:"),
    5: ("INFO", "dfs.DataNode$DataXceiver", "Receiving block {b} src: /{ip}:{port} dest: /{ip2}:50010"),
    6: (
        "INFO",
        "dfs.DataNode$DataXceiver",
        "Received block {b} src: /{ip}:{port} dest: /{ip2}:50010 of size {size}",
    ),
    7: ("INFO", "dfs.DataNode$DataXceiver", "writeBlock {b} received exception {exc}"),
    8: ("INFO", "dfs.DataNode$PacketResponder", "PacketResponder {n} for block {b} Interrupted."),
    9: ("INFO", "dfs.DataNode$PacketResponder", "Received block {b} of size {size} from /{ip}"),
    10: ("INFO", "dfs.DataNode$PacketResponder", "PacketResponder {b} {n} Exception {exc}"),
    11: ("INFO", "dfs.DataNode$PacketResponder", "PacketResponder {n} for block {b} terminating"),
    12: ("INFO", "dfs.DataNode$DataXceiver", "{ip}:50010:Exception writing block {b} to mirror {ip2}:50010"),
    13: ("INFO", "dfs.DataNode$DataXceiver", "Receiving empty packet for block {b}"),
    14: ("INFO", "dfs.DataNode$DataXceiver", "Exception in receiveBlock for block {b} {exc}"),
    15: (
        "INFO",
        "dfs.DataNode$BlockReceiver",
        "Changing block file offset of block {b} from {off} to {off2} meta file offset to {off3}",
    ),
    16: ("INFO", "dfs.DataNode$DataTransfer", "{ip}:50010:Transmitted block {b} to /{ip2}:50010"),
    17: ("WARN", "dfs.DataNode", "{ip}:50010:Failed to transfer {b} to {ip2}:50010 got {exc}"),
    18: ("INFO", "dfs.DataNode", "{ip}:50010 Starting thread to transfer block {b} to {targets}"),
    19: ("INFO", "dfs.FSDataset", "Reopen Block {b}"),
    20: (
        "WARN",
        "dfs.FSDataset",
        "Unexpected error trying to delete block {b}. BlockInfo not found in volumeMap.",
    ),
    21: ("INFO", "dfs.FSDataset", "Deleting block {b} file {datadir}/{b}"),
    22: ("INFO", "dfs.FSNamesystem", "BLOCK* NameSystem.allocateBlock: {path}. {b}"),
    23: ("INFO", "dfs.FSNamesystem", "BLOCK* NameSystem.delete: {b} is added to invalidSet of {ip}:50010"),
    24: (
        "INFO",
        "dfs.FSNamesystem",
        "BLOCK* Removing block {b} from neededReplications as it does not belong to any file.",
    ),
    25: ("INFO", "dfs.FSNamesystem", "BLOCK* ask {ip}:50010 to replicate {b} to datanode(s) {targets_sp}"),
    26: (
        "INFO",
        "dfs.FSNamesystem",
        "BLOCK* NameSystem.addStoredBlock: blockMap updated: {ip}:50010 is added to {b} size {size}",
    ),
    27: (
        "INFO",
        "dfs.FSNamesystem",
        "BLOCK* NameSystem.addStoredBlock: Redundant addStoredBlock request received for {b} on {ip}:50010 size {size}",
    ),
    28: (
        "INFO",
        "dfs.FSNamesystem",
        "BLOCK* NameSystem.addStoredBlock: addStoredBlock request received for {b} on {ip}:50010 size {size} But it does not belong to any file.",
    ),
    29: ("WARN", "dfs.PendingReplicationMonitor", "PendingReplicationMonitor timed out block {b}"),
    30: ("INFO", "dfs.FSNamesystem", "BLOCK* ask {ip}:50010 to delete  {b}"),
}
# One exception text per event: in HDFS.log each event's exception varies, and Drain3 then splits it into
# several templates; fixed texts keep the replayed keys one-to-one with the DeepLog keys they came from.
_EXCEPTIONS = {
    7: "java.io.IOException: Could not read from stream",
    10: "java.io.EOFException",
    14: "java.io.IOException: Connection reset by peer",
    17: "java.io.IOException: Connection reset by peer",
}
_SUBNETS = ("10.251", "10.250")
_NAMENODE = "10.250.19.102"  # messages of dfs.FSNamesystem come from the namenode
EPOCH = datetime(2008, 11, 9, 20, 35, 15, tzinfo=UTC)  # HDFS.log starts 081109 203515


@dataclass(frozen=True, slots=True)
class LogLine:
    time: datetime
    message: str  # the raw line, header included
    host: str
    session: str  # the block id, for labels and tests; documents carry it only inside the message
    key: int  # the HDFS event number the line was rendered from
    session_index: int  # position of the session in the rendered input


def _ip(rng: random.Random) -> str:
    return f"{rng.choice(_SUBNETS)}.{rng.randrange(1, 255)}.{rng.randrange(2, 255)}"


def _block_id(rng: random.Random) -> str:
    n = rng.randrange(10**17, 9 * 10**18)
    return f"blk_{'-' if rng.random() < 0.5 else ''}{n}"


def _render_event(key: int, b: str, nodes: Sequence[str], rng: random.Random) -> tuple[str, str, str, str]:
    try:
        level, component, fmt = _FORMATS[key]
    except KeyError:
        raise DataError(f"HDFS event E{key} does not exist (known: E1..E{max(_FORMATS)})") from None
    job = f"job_200811092030_{rng.randrange(1, 20):04d}"
    # Replication and transfer lines name one or two target datanodes, as in HDFS.log.
    targets = [f"{_ip(rng)}:50010" for _ in range(rng.choice((1, 2)))]
    task = rng.randrange(0, 1500)
    values: dict[str, Any] = {
        "b": b,
        "ip": rng.choice(nodes),
        "ip2": rng.choice(nodes),
        "port": rng.randrange(32768, 61000),
        "size": 67108864 if rng.random() < 0.8 else rng.randrange(1000, 67108864),
        "n": rng.randrange(0, 3),
        "exc": _EXCEPTIONS.get(key, ""),
        "off": rng.randrange(0, 67108864),
        "off2": rng.randrange(0, 67108864),
        "off3": rng.randrange(0, 524288),
        "path": (
            f"/user/root/rand/_temporary/_task_{job[4:]}_m_{task:06d}_0/part-{task:05d}"
            if rng.random() < 0.7
            else f"/mnt/hadoop/mapred/system/{job}/job.jar"
        ),
        "datadir": f"/mnt/hadoop/dfs/data/current/subdir{rng.randrange(0, 64)}",
        "targets": ", ".join(targets),
        "targets_sp": " ".join(targets),
    }
    host = _NAMENODE if component == "dfs.FSNamesystem" else values["ip"]
    return level, component, fmt.format(**values), host


def render(
    sessions: Sequence[Sequence[int]],
    *,
    seed: int = 0,
    start: datetime = EPOCH,
    sessions_per_minute: float = 600.0,
) -> list[LogLine]:
    """Render sessions as interleaved raw HDFS lines, in time order.

    Session i starts at about `start + i / sessions_per_minute`; its events follow each other by a few
    hundred milliseconds to a few seconds, so neighbouring sessions interleave as on a real cluster. A naive
    `start` is taken as UTC.
    """
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)  # naive times are UTC, as everywhere in the job
    rng = random.Random(seed)
    rendered: list[tuple[datetime, int, LogLine]] = []
    gap = 60.0 / sessions_per_minute
    t0 = start
    for si, keys in enumerate(sessions):
        b = _block_id(rng)
        nodes = [_ip(rng) for _ in range(3)]
        t = t0 + timedelta(seconds=rng.expovariate(1.0 / gap) if gap > 0 else 0.0)
        t0 = t
        for ei, key in enumerate(keys):
            level, component, content, host = _render_event(int(key), b, nodes, rng)
            header = f"{t:%y%m%d %H%M%S} {rng.randrange(13, 30000)} {level} {component}: "
            rendered.append((t, si * 100000 + ei, LogLine(t, header + content, host, b, int(key), si)))
            t += timedelta(milliseconds=rng.lognormvariate(5.5, 1.2))
    rendered.sort(key=lambda r: (r[0], r[1]))
    return [r[2] for r in rendered]


# ------------------------------------------------------------------------------------------ the sample


@dataclass(frozen=True)
class Sample:
    train: list[list[int]]  # normal sessions to train on
    test: list[list[int]]  # the detection mix
    test_labels: list[bool]  # True = anomalous, per test session


def load_sample(limit_train: int | None = None, limit_test: int | None = None) -> Sample:
    """The packaged labelled sample (real HDFS key sequences from the DeepLog data)."""
    raw = resources.files("deeplog_lab").joinpath("data/hdfs_sample.csv.gz").read_bytes()
    train: list[list[int]] = []
    test: list[list[int]] = []
    labels: list[bool] = []
    for row in csv.reader(io.StringIO(gzip.decompress(raw).decode("ascii"))):
        split, label, keys = row
        seq = [int(k) for k in keys.split()]
        if split == "train":
            train.append(seq)
        else:
            test.append(seq)
            labels.append(label == "anomaly")
    train = train[:limit_train] if limit_train else train
    if limit_test:
        # Keep the anomaly share of the full mix when the test set is cut down.
        test, labels = test[:limit_test], labels[:limit_test]
    return Sample(train, test, labels)


# ------------------------------------------------------------------------------------------- indexing


def documents(
    lines: Iterable[LogLine], index: str, *, dataset: str = "hdfs", run: str = "replay"
) -> Iterator[dict]:
    """Filebeat-like documents; `_id` is derived from the run name and the line number (idempotent)."""
    offset = 0
    for seq, line in enumerate(lines):
        yield {
            "_index": index,
            "_id": f"{run}-{seq}",
            "@timestamp": iso(line.time),
            "message": line.message,
            "host": {"name": line.host},
            "event": {"dataset": dataset, "sequence": seq},
            "log": {"file": {"path": f"/var/log/hadoop/{dataset}.log"}, "offset": offset},
            "agent": {"type": "filebeat", "name": "deeplog-replay"},
        }
        offset += len(line.message) + 1


def index_lines(
    clients: Clients,
    index: str,
    lines: Sequence[LogLine],
    *,
    run: str = "replay",
    chunk_size: int = 2000,
    progress: Callable[[str], None] | None = None,
) -> int:
    """Bulk-index rendered lines; stamps `event.ingested` per chunk as an ingest pipeline would."""
    count = 0

    def stamped() -> Iterator[dict]:
        for i, doc in enumerate(documents(lines, index, run=run)):
            if i % chunk_size == 0:
                now = utc_now()
            doc["event"]["ingested"] = now
            yield doc

    for ok, item in helpers.streaming_bulk(
        clients.es, stamped(), chunk_size=chunk_size, max_retries=3, raise_on_error=False
    ):
        if not ok:
            raise SinkError(f"replay: indexing into {index} failed: {item}")
        count += 1
        if progress and count % 20000 == 0:
            progress(f"  indexed {count}/{len(lines)} lines into {index}")
    clients.es.indices.refresh(index=index)
    return count
