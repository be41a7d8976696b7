"""Documents built from a loghub 2k sample's structured CSV (real lines, their ground-truth event ids), as a
shipper that parsed the header into fields would index them."""

from __future__ import annotations

import csv
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from deeplog_siem import sink
from deeplog_siem.es import Clients
from deeplog_siem.timefmt import utc_now

from .conftest import need_data


def rows(system: str) -> list[dict[str, str]]:
    """The structured rows of `system`'s 2k sample, in log order, each with `offset`: the line's byte offset
    in the raw log file (what Filebeat puts in `log.offset`)."""
    raw = need_data("loghub_2k", f"{system}_2k.log").read_bytes().splitlines(keepends=True)
    with need_data("loghub_2k", f"{system}_2k.log_structured.csv").open(encoding="utf-8", newline="") as f:
        out = list(csv.DictReader(f))
    assert len(out) == len(raw), system
    offset = 0
    for r, line in zip(out, raw, strict=True):
        r["offset"] = str(offset)
        offset += len(line)
    return out


def windows_time(r: dict[str, str]) -> datetime:
    return datetime.strptime(f"{r['Date']} {r['Time']}", "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)


def openssh_time(r: dict[str, str]) -> datetime:
    # The syslog header has no year: the sample is from December 2016 (loghub).
    return datetime.strptime(f"2016 {r['Date']} {r['Day']} {r['Time']}", "%Y %b %d %H:%M:%S").replace(
        tzinfo=UTC
    )


def index_docs(clients: Clients, index: str, docs: list[dict[str, Any]], *, run: str) -> None:
    """Bulk-index `docs` (ids `run-N`), `event.ingested` stamped as an ingest pipeline would."""
    now = utc_now()
    actions = []
    for i, d in enumerate(docs):
        d = {**d, "event": {**d.get("event", {}), "ingested": now}}
        actions.append({"_index": index, "_id": f"{run}-{i}", **d})
    result = sink.write(clients, actions)
    assert not sum(result.rejected.values()), result.rejected
    clients.es.indices.refresh(index=index)


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")


Doc = Callable[[dict[str, str]], dict[str, Any]]
