"""logfile: a raw log file -> source documents, timestamps read from the header of its format.

Contract: `LogFile(path, fmt="auto")` reads a text file line by line (UTF-8; undecodable bytes replaced and
counted). The format is chosen from the first `format_detect.SAMPLE_SIZE` lines when `fmt` is `auto`.
`documents(index=..., message_field=..., timestamp_field=..., ingested=...)` yields one bulk document per
non-blank line, in file order: the line as the message, `event.ingested` (the ingest time, one value per
run), `log.file.path`, `log.offset` (line number) and the event time taken from the header's
`timestamp` (or `date` and `time`) group. A header time without a year takes the ingest year; a line
whose header does not match or whose time cannot be read gets the ingest time, counted in
`stats["time_from_ingest"]`; blank lines are skipped and counted in `stats["blank"]`. A document's `_id`
is a hash of the file's name, the line number and the line, so ingesting the same file again adds nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .config import TemplaterConfig
from .format_detect import AUTO, SAMPLE_SIZE, FormatChoice, chosen_config
from .formats import PRESETS
from .timefmt import iso

log = logging.getLogger(__name__)

# Layouts of the header times of the presets, tried in order; a layout without %Y takes the ingest year.
_LAYOUTS = (
    "%Y-%m-%dT%H:%M:%S.%f%z",
    "%Y-%m-%dT%H:%M:%S%z",
    "%Y-%m-%d %H:%M:%S.%f",
    "%Y-%m-%d %H:%M:%S",
    "%Y/%m/%d %H:%M:%S",
    "%y/%m/%d %H:%M:%S",
    "%y%m%d %H%M%S",
    "%a %b %d %H:%M:%S.%f %Y",
    "%a %b %d %H:%M:%S %Y",
    "%d/%b/%Y:%H:%M:%S %z",
    "%Y%m%d-%H:%M:%S:%f",
    "%b %d %H:%M:%S",
    "%m-%d %H:%M:%S.%f",
    "%m.%d %H:%M:%S",
)
_SPACES = re.compile(r" +")


def header_time(fields: dict[str, str], ingest: datetime) -> datetime | None:
    """The event time named by a header's groups (`timestamp`, or `date` and `time`), or None."""
    raw = fields.get("timestamp") or " ".join(v for v in (fields.get("date"), fields.get("time")) if v)
    if not raw:
        return None
    text = _SPACES.sub(" ", raw.strip()).replace(",", ".").replace("Z", "+0000")
    for layout in _LAYOUTS:
        try:
            t = datetime.strptime(text, layout)
        except ValueError:
            continue
        if "%Y" not in layout and "%y" not in layout:
            try:
                t = t.replace(year=ingest.year)
            except ValueError:  # 29 February outside a leap year
                return None
        return t if t.tzinfo is not None else t.replace(tzinfo=UTC)
    return None


class LogFile:
    def __init__(self, path: Path | str, fmt: str = AUTO) -> None:
        self.path = Path(path)
        if fmt != AUTO and fmt not in PRESETS:
            raise ValueError(f"unknown format {fmt!r} (one of: auto, {', '.join(PRESETS)})")
        self.stats: Counter[str] = Counter()
        with self._open() as f:
            sample = [line.rstrip("\r\n") for line in itertools.islice(f, SAMPLE_SIZE)]
        cfg, self.choice = chosen_config(TemplaterConfig(format=fmt), sample)  # type: ignore[arg-type]
        rx = PRESETS[cfg.format].header_regex
        self._header = re.compile(rx, re.DOTALL) if rx else None

    @property
    def format(self) -> str:
        return self.choice.format

    def _open(self) -> Any:
        return open(self.path, encoding="utf-8", errors="surrogateescape", newline="")

    def lines(self) -> Iterator[tuple[int, str]]:
        """(line number from 1, text) of every line; undecodable bytes replaced and counted."""
        with self._open() as f:
            for n, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if not line.isascii():
                    fixed = line.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                    if fixed != line:
                        self.stats["invalid_utf8"] += 1
                    line = fixed
                yield n, line

    def documents(
        self,
        *,
        index: str,
        message_field: str = "message",
        timestamp_field: str = "@timestamp",
        ingested: datetime | None = None,
    ) -> Iterator[dict[str, Any]]:
        now = ingested or datetime.now(UTC)
        stamp = iso(now)
        name = self.path.name
        for n, line in self.lines():
            if not line.strip():
                self.stats["blank"] += 1
                continue
            when = None
            if self._header is not None:
                m = self._header.match(line)
                if m is not None:
                    when = header_time({k: v for k, v in m.groupdict().items() if v}, now)
            if when is None:
                self.stats["time_from_ingest"] += 1
                when = now
            self.stats["lines"] += 1
            doc_id = hashlib.sha256(f"{name}\n{n}\n{line}".encode("utf-8", "surrogatepass")).hexdigest()[:20]
            yield {
                "_index": index,
                "_id": doc_id,
                timestamp_field: iso(when),
                message_field: line,
                "event": {"ingested": stamp},
                "log": {"file": {"path": str(self.path)}, "offset": n},
            }


def describe(choice: FormatChoice) -> str:
    """One line naming the chosen format and the share of lines its header matched."""
    return (
        f"format {choice.format} (header matched {100 * choice.share:.1f}% of {choice.sampled} sampled lines)"
    )
