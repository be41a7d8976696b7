"""watchdog: is the detection job alive? The newest run document of the runs index, against a maximum age.

Contract: `check(clients, config, max_age_s=None, now=None) -> Verdict`: the newest run document of job
`detect` (a scheduled or manual detection; previews and backfills do not count) in `output.runs_index`;
`fires` when there is none, or when it is older than `max_age_s` (default `default_max_age(config)`: three
detection intervals, at least 10 minutes). `Verdict.line()` is one line for a cron job's mail or a systemd
unit's status. The same condition ships as an OpenSearch Alerting monitor and a Kibana rule
(`assets/alerting/*watchdog*`). A cluster that cannot be asked raises (the caller reports it as an error, not
as a verdict).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from .config import Config
from .es import Clients
from .timefmt import epoch_seconds, iso_utc

log = logging.getLogger(__name__)

DETECT = "detect"


def default_max_age(config: Config) -> int:
    return max(3 * config.schedule.detect_interval_seconds, 600)


@dataclass(frozen=True)
class Verdict:
    fires: bool
    max_age_s: int
    last_run: str | None = None
    age_s: float | None = None
    status: str | None = None

    def line(self) -> str:
        if self.last_run is None:
            return f"ALERT: no detection run recorded (none within the last {self.max_age_s} s either)"
        state = "ALERT" if self.fires else "OK"
        return (
            f"{state}: last detection run {self.last_run} ({self.age_s:.0f} s ago, status {self.status}); "
            f"allowed age {self.max_age_s} s"
        )


def check(
    clients: Clients, config: Config, max_age_s: int | None = None, now: float | None = None
) -> Verdict:
    limit = default_max_age(config) if max_age_s is None else max_age_s
    index = config.output.runs_index
    if not clients.es.indices.exists(index=index):
        return Verdict(True, limit)
    clients.es.indices.refresh(index=index)
    hits = clients.es.search(
        index=index,
        query={"term": {"deeplog.run.job": DETECT}},
        sort=[{"@timestamp": {"order": "desc", "unmapped_type": "date"}}],
        size=1,
        source_includes=["@timestamp", "deeplog.run.status"],
    )["hits"]["hits"]
    if not hits:
        return Verdict(True, limit)
    source = hits[0]["_source"]
    ts = epoch_seconds(source.get("@timestamp"))
    if ts is None:
        return Verdict(True, limit)
    age = max(0.0, (time.time() if now is None else now) - ts)
    status = ((source.get("deeplog") or {}).get("run") or {}).get("status")
    return Verdict(age > limit, limit, iso_utc(ts), age, status if isinstance(status, str) else None)
