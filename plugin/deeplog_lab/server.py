"""server: the embedded in-memory server for the demo and the tests.

Contract: `start_embedded(port=0) -> EmbeddedServer` runs the osmem-server binary (an in-memory,
OpenSearch-compatible server shipped by the `osmem-server` package) on a loopback port, returns once it
answers, and `stop()` ends it. The binary also exits on its own when this process dies (it watches our pid
and its stdin), so no server outlives the demo or a test run. Data lives in memory only.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from deeplog_siem.errors import ServerError

log = logging.getLogger(__name__)


@dataclass
class EmbeddedServer:
    url: str
    pid: int
    version: str
    _handle: Any

    def stop(self) -> None:
        self._handle.close()

    @property
    def running(self) -> bool:
        return self._handle.process.poll() is None

    def __enter__(self) -> EmbeddedServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_embedded(port: int = 0, startup_timeout: float = 30.0) -> EmbeddedServer:
    """Start osmem-server on 127.0.0.1:`port` (0 = a free port) and wait until it answers."""
    try:
        from osmem_server import OsmemError, OsmemServer
    except ImportError:
        raise ServerError(
            "the embedded server needs the osmem-server package: pip install 'deeplog-siem[demo]'"
        ) from None
    try:
        handle = OsmemServer.start(addr=f"127.0.0.1:{port}", japanese=False, startup_timeout=startup_timeout)
    except (OsmemError, OSError) as e:
        raise ServerError(f"embedded server did not start: {e}") from None
    try:
        with urllib.request.urlopen(handle.url, timeout=startup_timeout) as resp:
            info = json.loads(resp.read())
    except OSError as e:
        handle.close()
        raise ServerError(f"embedded server started at {handle.url} but does not answer: {e}") from None
    version = str(info.get("version", {}).get("number", handle.version))
    log.info("embedded server %s listening on %s (pid %s)", version, handle.url, handle.pid)
    return EmbeddedServer(url=handle.url, pid=handle.pid, version=version, _handle=handle)


@contextmanager
def stop_signals() -> Iterator[threading.Event]:
    """SIGINT/SIGTERM set the yielded event instead of interrupting, from entering until leaving the block:
    entered before the server starts, a stop request that arrives while it starts is not lost."""
    done = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        done.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield done
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def serve_forever(server: EmbeddedServer, done: threading.Event | None = None) -> None:
    """Block until SIGINT/SIGTERM (or `done`, from `stop_signals`) or until the server process ends, then
    stop it."""
    try:
        if done is None:
            with stop_signals() as done:
                _wait(server, done)
        else:
            _wait(server, done)
    finally:
        server.stop()


def _wait(server: EmbeddedServer, done: threading.Event) -> None:
    while not done.wait(0.5):
        if not server.running:
            raise ServerError("embedded server exited unexpectedly")
