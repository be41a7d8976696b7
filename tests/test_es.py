"""Connection: flavour detection against the real server, and actionable failures."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from deeplog_siem.config import ElasticsearchConfig
from deeplog_siem.errors import ConnectionFailed
from deeplog_siem.es import connect

from .conftest import closed_port, real_cluster


def test_connect_detects_flavour_and_round_trips(clients, prefix):
    assert clients.flavour in ("elasticsearch", "opensearch")
    if not real_cluster():
        assert clients.flavour == "opensearch"
    clients.es.index(index=f"{prefix}-x", id="1", document={"a": 1}, refresh=True)
    assert clients.es.get(index=f"{prefix}-x", id="1")["_source"] == {"a": 1}


def test_unreachable_host_names_the_host():
    host = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(ConnectionFailed, match=r"cannot connect to http://127\.0\.0\.1:\d+"):
        connect(ElasticsearchConfig(hosts=(host,), request_timeout=2, max_retries=0))


def test_silent_host_times_out_within_request_timeout():
    # A listening socket that never answers: the client must give up after request_timeout.
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        host = f"http://127.0.0.1:{srv.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(ConnectionFailed, match="did not answer within 1 s"):
            connect(ElasticsearchConfig(hosts=(host,), request_timeout=1, max_retries=0))
        assert time.monotonic() - t0 < 10


def test_cli_unreachable_exits_nonzero_without_traceback(tmp_path):
    cfg = tmp_path / "c.yml"
    host = f"http://127.0.0.1:{closed_port()}"
    cfg.write_text(
        f"elasticsearch: {{hosts: ['{host}'], request_timeout: 2, max_retries: 0}}\n"
        "source: {index: logs, session_regex: '(blk_-?\\d+)'}\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "deeplog_siem.cli", "detect", "--once", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert host in r.stderr
    assert "Traceback" not in r.stderr


def test_tls_to_a_plain_http_server_says_what_to_fix(es_url):
    if real_cluster():
        pytest.skip("needs a plain-HTTP server to shake hands with: the embedded one")
    https = es_url.replace("http://", "https://")
    with pytest.raises(
        ConnectionFailed, match=r"TLS handshake with https://127\.0\.0\.1:\d+ failed.*ca_certs"
    ):
        connect(ElasticsearchConfig(hosts=(https,), request_timeout=3, max_retries=0))


def test_rejected_credentials_say_what_to_fix():
    """A local endpoint answering 401 like a secured cluster does."""
    import http.server
    import threading

    class Deny(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            body = (
                b'{"error":{"type":"security_exception","reason":"unable to authenticate user"},"status":401}'
            )
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Deny)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        host = f"http://127.0.0.1:{srv.server_address[1]}"
        with pytest.raises(
            ConnectionFailed, match="rejected the credentials .401.; check elasticsearch.api_key"
        ):
            connect(
                ElasticsearchConfig(
                    hosts=(host,), username="u", password="wrong", request_timeout=3, max_retries=0
                )
            )
    finally:
        srv.shutdown()
