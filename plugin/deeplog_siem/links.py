"""links: an anomaly's session -> a Kibana Discover URL that shows the session's logs around the event.

Contract: `discover_url(kibana_url, query, timestamp, space=None) -> str`: Discover (`/app/discover`, under
`/s/<space>` for a space other than the default) with the session's query (`anomaly.session_query`, KQL)
and a time range from `BEFORE` ahead of the event to `AFTER` past it, in the rison form Kibana reads from
the URL's fragment; every value is quoted for rison and then percent-encoded, whatever the session id holds
(it comes from the logs). A timestamp that is not ISO 8601 leaves the time range out (Kibana's default).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import quote

BEFORE = timedelta(hours=24)  # sessions seldom last longer; the event may be a session's last
AFTER = timedelta(hours=1)


def _rison_string(text: str) -> str:
    """A rison string literal: quoted, with `!` and `'` escaped by `!`."""
    return "'" + text.replace("!", "!!").replace("'", "!'") + "'"


def _time_range(timestamp: str) -> str | None:
    try:
        t = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        return None

    def iso(x: datetime) -> str:
        return x.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    return f"(time:(from:{_rison_string(iso(t - BEFORE))},to:{_rison_string(iso(t + AFTER))}))"


def discover_url(kibana_url: str, query: str, timestamp: str, *, space: str | None = None) -> str:
    base = kibana_url.rstrip("/")
    if space and space != "default":
        base += f"/s/{quote(space, safe='')}"
    app = f"(query:(language:kuery,query:{_rison_string(query)}))"
    parts = []
    g = _time_range(timestamp)
    if g is not None:
        parts.append("_g=" + quote(g, safe="(),:'!"))
    parts.append("_a=" + quote(app, safe="(),:'!"))
    return f"{base}/app/discover#/?{'&'.join(parts)}"
