"""logging.json: every log record is one line of valid JSON whatever its message holds."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deeplog_siem.commands.console import setup_logging

log = logging.getLogger("deeplog_siem.test_json_logging")

# Every code point, lone surrogates included; quotes, backslashes, newlines, control and non-BMP characters
# are drawn on purpose, beside whatever else comes.
TEXT = st.text(
    alphabet=st.one_of(
        st.characters(min_codepoint=0, max_codepoint=0x10FFFF),
        st.sampled_from(
            ['"', "\\", "\n", "\r", "\t", "\x00", "\x1b", "\u2028", "\ud800", "\udfff", "😀", "%"]
        ),
    ),
    max_size=60,
)
ARGS = st.lists(
    st.one_of(TEXT, st.integers(), st.floats(allow_nan=True), st.none(), st.booleans()), max_size=4
)


def valid_text(s: str) -> str:
    """What a JSON line can carry of `s`: lone surrogates replaced by U+FFFD."""
    return s.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


@pytest.fixture
def json_log(tmp_path: Path) -> Iterator[Path]:
    """The job's JSON logging to a file (and stderr); the root logger as it was afterwards."""
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    path = tmp_path / "job.log"
    setup_logging("DEBUG", str(path), as_json=True)
    try:
        yield path
    finally:
        for h in root.handlers:
            if h not in saved:
                h.close()
        root.handlers[:] = saved
        root.setLevel(level)


class Lines:
    """The lines a file gained since the last call."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def new(self) -> list[str]:
        for h in logging.getLogger().handlers:
            h.flush()
        data = self.path.read_bytes()[self.offset :]
        self.offset += len(data)
        text = data.decode("utf-8")
        assert text.endswith("\n")
        return text[:-1].split("\n")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT, args=ARGS)
def test_every_line_is_one_json_object_with_the_formatted_message(json_log, text, args):
    lines = Lines(json_log)
    lines.offset = json_log.stat().st_size if json_log.exists() else 0
    if args:
        fmt = text.replace("%", "%%") + " %s" * len(args)
        log.warning(fmt, *args)
        message = fmt % tuple(args)
    else:
        # Without arguments logging takes the message as it is, `%` and all.
        log.warning(text)
        message = text
    (line,) = lines.new()
    doc = json.loads(line)
    assert doc["message"] == valid_text(message)
    assert doc["log.level"] == "warning"
    assert doc["log.logger"] == log.name
    assert doc["@timestamp"].endswith("Z")
    assert "error.type" not in doc


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_an_exception_is_in_the_error_fields(json_log, text):
    lines = Lines(json_log)
    lines.offset = json_log.stat().st_size if json_log.exists() else 0
    try:
        raise ValueError(text)
    except ValueError:
        log.exception('bulk rejected: "%s"', text)
    (line,) = lines.new()
    doc = json.loads(line)
    assert doc["message"] == valid_text(f'bulk rejected: "{text}"')
    assert doc["log.level"] == "error"
    assert doc["error.type"] == "ValueError"
    assert doc["error.message"] == valid_text(text)
    assert doc["error.stack_trace"].startswith("Traceback (most recent call last)")
    assert "raise ValueError(text)" in doc["error.stack_trace"]


def test_a_rejected_bulk_message_is_valid_json(json_log):
    lines = Lines(json_log)
    reason = (
        'failed to parse field [message] of type [text]: "Illegal unquoted character ((CTRL-CHAR, code 1))"'
    )
    log.error("bulk write rejected %s document(s): %s", 3, reason)
    (line,) = lines.new()
    assert json.loads(line)["message"] == f"bulk write rejected 3 document(s): {reason}"
