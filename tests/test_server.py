"""`deeplog-siem server`: prints a working URL, and leaves no process behind on SIGTERM or Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest


def _children_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_server_command_serves_and_stops_cleanly(sig):
    proc = subprocess.Popen(
        [sys.executable, "-m", "deeplog_siem.cli", "server"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        url = re.search(r"at (http://127\.0\.0\.1:\d+)", line).group(1)
        with urllib.request.urlopen(url, timeout=10) as r:
            info = json.loads(r.read())
        assert info["version"]["distribution"] == "opensearch"
        server_pid = int(re.search(r"pid (\d+)", proc.stderr.readline()).group(1))
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 0
        deadline = time.monotonic() + 10
        while _children_alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _children_alive(server_pid), "the embedded server outlived the command"
    finally:
        if proc.poll() is None:
            proc.kill()
