"""health: the daemon's HTTP endpoint, `GET /healthz` and Prometheus `GET /metrics`.

Contract: `serve(config, alive=, progress=)` -> a started `Endpoint` on `health.listen` (None when it is ""), served
by a stdlib `ThreadingHTTPServer` in a daemon thread until `Endpoint.close()`; a port that cannot be bound
(already in use, an address not of this host) raises `ConfigError` naming `health.listen` before anything
else starts, so a daemon an operator cannot watch does not run. `GET /metrics` -> `metrics.Metrics` as
Prometheus text; `GET /healthz` -> 200 with a small JSON body while `alive()` (the scheduler runs) and the
last detection run finished (any status) within `health.max_age_seconds` (default: as `deeplog-siem check`,
three detection intervals, at least 10 minutes), or none has been due for that long since the daemon
started, or the detection run in progress committed a chunk (`progress()`: when it last did, or started;
None while none runs) within that age: a run working through a long backlog is catching up, not stuck; 503 with the reason in the same body otherwise, and also once the last `health.max_failed_runs`
detection runs all failed (runs that keep failing still finish, yet detect nothing). Any other path or
method: 404. Nothing here reads the cluster: the verdict comes from the runs this process recorded.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import runs, state
from .config import Config, parse_listen
from .errors import ConfigError
from .metrics import CONTENT_TYPE, Metrics, config_key
from .timefmt import iso_utc
from .watchdog import DETECT, default_max_age

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    body: dict[str, Any]


class Health:
    """The detection runs of one configuration as far as `/healthz` needs them."""

    def __init__(
        self,
        config: Config,
        *,
        alive: Callable[[], bool],
        progress: Callable[[], float | None] = lambda: None,
    ) -> None:
        self.key = config_key(config)
        self.alive, self.progress = alive, progress
        self.max_age_s = config.health.max_age_seconds or default_max_age(config)
        self.max_failed = config.health.max_failed_runs
        self.started = time.time()
        self.last_finished: float | None = None
        self.last_status: str | None = None
        self.last_error: str | None = None
        self.failed_in_a_row = 0
        self.lock = threading.Lock()

    def observe(self, config: Config, summary: runs.RunSummary, *, written: bool, pending: int) -> None:
        if config_key(config) != self.key or summary.job != DETECT:
            return
        with self.lock:
            self.last_finished, self.last_status = time.time(), summary.status
            if summary.status == "failed":
                self.failed_in_a_row += 1
                self.last_error = summary.error
            else:
                self.failed_in_a_row, self.last_error = 0, None

    def _busy_for(self, now: float) -> float | None:
        """Seconds since the detection run in progress last committed a chunk (or started), when that is
        within the allowed age; None otherwise."""
        committed = self.progress()
        if committed is None or now - committed > self.max_age_s:
            return None
        return max(0.0, now - committed)

    def verdict(self, now: float | None = None) -> Verdict:
        now = time.time() if now is None else now
        with self.lock:
            last, status, error, failed = (
                self.last_finished,
                self.last_status,
                self.last_error,
                self.failed_in_a_row,
            )
        age = now - (self.started if last is None else last)
        body: dict[str, Any] = {
            "last_detection_run": None if last is None else iso_utc(last),
            "last_status": status,
            "age_seconds": round(max(0.0, age), 1),
            "max_age_seconds": self.max_age_s,
            "failed_in_a_row": failed,
        }
        if not self.alive():
            reason = "the scheduler is not running"
        elif failed >= self.max_failed:
            reason = f"the last {failed} detection runs failed; the last one: {error}"
        elif age > self.max_age_s and (busy := self._busy_for(now)) is not None:
            # A run working through a backlog finishes only at its end; while it keeps committing chunks
            # it is alive, and a liveness probe must not restart it.
            reason = f"catching up: the detection run in progress committed a chunk {busy:.0f} s ago"
            return Verdict(True, reason, {"status": "ok", "reason": reason, **body})
        elif age > self.max_age_s:
            reason = (
                f"no detection run finished in the {age:.0f} s since the daemon started"
                if last is None
                else f"the last detection run finished {age:.0f} s ago"
            ) + f" (allowed {self.max_age_s} s)"
        else:
            reason = "starting: no detection run finished yet" if last is None else "ok"
            return Verdict(True, reason, {"status": "ok", "reason": reason, **body})
        return Verdict(False, reason, {"status": "failing", "reason": reason, **body})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    metrics: Metrics
    health: Health


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, self.server.metrics.generate(), CONTENT_TYPE)
        elif path == "/healthz":
            v = self.server.health.verdict()
            self._send(200 if v.ok else 503, json.dumps(v.body).encode(), "application/json")
        else:
            self._send(404, b'{"error": "not found: try /healthz or /metrics"}', "application/json")

    def do_HEAD(self) -> None:  # noqa: N802
        self._send(404, b"", "text/plain")

    do_POST = do_PUT = do_DELETE = do_HEAD  # noqa: N815

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("%s %s", self.address_string(), format % args)


def _bind(host: str, port: int) -> _Server:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("_BoundServer", (_Server,), {"address_family": family})
    try:
        return server_class((host, port), _Handler)
    except OSError as e:
        hint = (
            "another process (another worker?) listens there: give each worker its own port"
            if e.errno == errno.EADDRINUSE
            else "give an address of this host"
        )
        raise ConfigError(
            f'health.listen: cannot listen on {host}:{port}: {e.strerror or e}; {hint}, or set it to "" '
            "to turn the endpoint off"
        ) from None


class Endpoint:
    """The running endpoint: its bound `url`, `metrics` and `health`; `close()` stops it."""

    def __init__(self, server: _Server) -> None:
        self.server, self.metrics, self.health = server, server.metrics, server.health
        host, port = server.server_address[:2]
        self.url = f"http://{f'[{host}]' if ':' in str(host) else host}:{port}"
        self.thread = threading.Thread(target=server.serve_forever, name="deeplog-health", daemon=True)

    def close(self) -> None:
        self.metrics.set_up(False)
        self.server.shutdown()
        self.server.server_close()
        runs.remove_observer(self.metrics.observe)
        runs.remove_observer(self.health.observe)
        self.thread.join(timeout=5)


def serve(
    config: Config, *, alive: Callable[[], bool], progress: Callable[[], float | None] = lambda: None
) -> Endpoint | None:
    """Start the endpoint `health.listen` names (None when it is off); `ConfigError` when it cannot bind."""
    address = parse_listen(config.health.listen, "health.listen")
    if address is None:
        log.info("health and metrics endpoint off (health.listen is empty)")
        return None
    server = _bind(*address)
    server.metrics, server.health = Metrics(config), Health(config, alive=alive, progress=progress)
    server.metrics.set_leases(state.leases_held)
    endpoint = Endpoint(server)
    runs.add_observer(server.metrics.observe)
    runs.add_observer(server.health.observe)
    server.metrics.set_up(True)
    endpoint.thread.start()
    log.info("health and metrics on %s (/healthz, /metrics)", endpoint.url)
    return endpoint
