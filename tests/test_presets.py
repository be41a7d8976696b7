"""Format presets by family on real lines, `auto` on every labelled sample, and masks by kind.

The loghub samples (`loghub_2k/`, `hdfs_raw/HDFS_2k.log`) give real lines of each family with the message
a shipper would have split off (`Content`); families without a sample there are checked on lines written
in their documented layout.
"""

from __future__ import annotations

import re

import pytest

from deeplog_lab.bench.parsing import grouping_accuracy, systems
from deeplog_lab.shared_data import shared_data_dir
from deeplog_siem.config import TemplaterConfig
from deeplog_siem.errors import ConfigError
from deeplog_siem.format_detect import chosen_config, detect_format
from deeplog_siem.formats import AUTO_CANDIDATES, PRESETS
from deeplog_siem.masks import BY_KIND
from deeplog_siem.templater import Templater

pytestmark = pytest.mark.skipif(
    not (shared_data_dir() / "loghub_2k").is_dir(), reason="needs the loghub samples in ../shared/data"
)

# The family each sample's layout belongs to; HPC's lines carry no header of a known family.
FAMILY = {
    "Android": "logcat",
    "Apache": "web_error",
    "HDFS": "hdfs",
    "HPC": "epoch",
    "Hadoop": "log4j",
    "HealthApp": "pipe",
    "Linux": "syslog",
    "Mac": "syslog",
    "OpenSSH": "syslog",
    "Proxifier": "bracket",
    "Spark": "log4j",
    "Windows": "windows",
    "Zookeeper": "log4j",
}
SAMPLES = {s.system: s for s in systems(shared_data_dir())}


def test_every_labelled_sample_is_here() -> None:
    assert set(SAMPLES) == set(FAMILY)


@pytest.mark.parametrize("system", sorted(FAMILY))
def test_auto_chooses_the_family_of_each_sample_and_its_header_yields_the_message(system: str) -> None:
    s = SAMPLES[system]
    choice = detect_format(s.raw)
    assert choice.format == FAMILY[system]
    rx = PRESETS[choice.format].header_regex
    if rx is None:
        assert max(choice.shares.values()) < 0.5
        return
    header = re.compile(rx, re.DOTALL)
    same = sum(
        1
        for raw, content in zip(s.raw, s.content, strict=True)
        if (m := header.match(raw)) is not None and m.group("content").strip() == content.strip()
    )
    # Apache's labels keep "[client a.b.c.d]" in the message and a few Mac lines have a header of their
    # own; every other line's content is exactly the labelled message.
    assert same / len(s.raw) >= 0.93, (system, same)
    assert choice.share >= 0.93


def test_auto_says_none_when_the_messages_are_content_already() -> None:
    for system in ("OpenSSH", "Hadoop", "Android", "Windows"):
        assert detect_format(SAMPLES[system].content).format == "none", system


def test_auto_ignores_what_is_not_text_and_counts_it() -> None:
    lines = SAMPLES["OpenSSH"].raw[:50]
    choice = detect_format([*lines, None, 7, "  ", b"Dec 10 06:55:46 LabSZ sshd[1]: x"])
    assert (choice.format, choice.sampled, choice.ignored) == ("syslog", 50, 4)
    assert detect_format([]).format == "none"


def test_a_configured_format_is_kept_and_auto_is_replaced_by_the_choice() -> None:
    lines = SAMPLES["Zookeeper"].raw[:200]
    cfg, choice = chosen_config(TemplaterConfig(format="syslog"), lines)
    assert cfg.format == "syslog" and choice.share == 0.0
    cfg, choice = chosen_config(TemplaterConfig(format="auto"), lines)
    assert cfg.format == "log4j" and choice.share == 1.0
    # A header_regex of the configuration is the header whose share is reported.
    own = TemplaterConfig(format="syslog", header_regex=r"^(?P<date>\S+) (?P<time>\S+) - (?P<content>.*)$")
    assert chosen_config(own, lines)[1].share == 1.0


def test_the_templater_refuses_auto_until_a_format_is_chosen() -> None:
    with pytest.raises(ConfigError, match="auto is chosen from a sample"):
        Templater(TemplaterConfig(format="auto"))


# Families without a loghub sample here: lines in the layouts their products document.
WRITTEN = {
    "rfc5424": (
        '<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" '
        'eventSource="Application" eventID="1011"] An application event log entry',
        "An application event log entry",
    ),
    "web_access": (
        '127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326 '
        '"http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)"',
        '"GET /apache_pb.gif HTTP/1.0" 200 2326 "http://www.example.com/start.html" '
        '"Mozilla/4.08 [en] (Win98; I ;Nav)"',
    ),
    "web_error": (
        "[Wed Oct 11 14:32:52.123456 2000] [core:error] [pid 35708:tid 4328636416] [client 10.1.2.3:5091] "
        "AH00037: Symbolic link not allowed or link target not accessible: /usr/local/apache2/htdocs/x",
        "AH00037: Symbolic link not allowed or link target not accessible: /usr/local/apache2/htdocs/x",
    ),
    "generic": (
        "2024-03-01 12:00:00.123 [worker-1] ERROR app.db: connection to db-7.example.org:5432 lost",
        "connection to db-7.example.org:5432 lost",
    ),
    "syslog": (
        "<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8",
        "'su root' failed for lonvick on /dev/pts/8",
    ),
}


@pytest.mark.parametrize("fmt", sorted(WRITTEN))
def test_presets_of_families_without_a_sample_split_their_documented_layout(fmt: str) -> None:
    line, content = WRITTEN[fmt]
    m = re.compile(PRESETS[fmt].header_regex or "", re.DOTALL).match(line)
    assert m is not None and m.group("content") == content
    assert detect_format([line] * 3).format == fmt


def test_nginx_error_lines_are_web_errors() -> None:
    line = (
        '2024/03/01 12:00:00 [error] 812#812: *1 open() "/usr/share/nginx/html/x" failed '
        "(2: No such file or directory), client: 10.0.0.5, server: localhost"
    )
    m = re.compile(PRESETS["web_error"].header_regex or "", re.DOTALL).match(line)
    assert m is not None and m.group("content").startswith('*1 open() "/usr/share/nginx/html/x" failed')


def test_every_family_preset_is_an_auto_candidate() -> None:
    assert set(AUTO_CANDIDATES) == {n for n, p in PRESETS.items() if p.header_regex}


# ------------------------------------------------------------------------------------------------ masks

KINDS = [
    ("connection from x at Wed Jun 29 14:44:35 2005 ok", "DATE"),
    ("started 2016-09-28T04:30:30.123Z ok", "DATE"),
    ("file [2017-07-03_16,05,51.031703]-x.txt ok", "DATE"),
    ("lifetime 00:02 ok", "TIME"),
    ("id 0b85eee0-1a2b-3c4d-5e6f-0123456789ab ok", "UUID"),
    ("see https://example.org/a?b=1 ok", "URL"),
    ("mail from alice.smith@example.org ok", "EMAIL"),
    ("mac 00:1a:2b:3c:4d:5e ok", "MAC"),
    ("from 10.0.0.5:22 ok", "HOST"),
    ("via proxy.example.org:5070 ok", "HOST"),
    ("resolve mail.example.org ok", "HOST"),
    ("via github.com:443 ok", "HOST"),
    ("at Foo.java:123 ok", "NUM"),
    ("open /var/log/messages ok", "PATH"),
    ("load C:\\Windows\\system32\\x.dll ok", "PATH"),
    ("handle 0x7f3a ok", "HEX"),
    ("token 9f4ef63a ok", "HEX"),
    ("seq 0000000d ok", "HEX"),
    ("sent 1190 bytes (1.16 KB) ok", "SIZE"),
    ("size 9.6 KB ok", "SIZE"),
    ("took 120 ms ok", "DURATION"),
    ("lifetime <1 sec ok", "DURATION"),
    ("count 42 ok", "NUM"),
    ("PendingReds:1 ok", "NUM"),
    ("uid=0 ok", "NUM"),
    ("node node-246 ok", "ID"),
    ("block broadcast_9_piece0 ok", "ID"),
]


@pytest.mark.parametrize("text,kind", KINDS, ids=[k for _, k in KINDS])
def test_each_kind_of_value_is_masked_by_its_name(text: str, kind: str) -> None:
    t = Templater(TemplaterConfig(format="none"))
    ev = t.parse(text, learn=True)
    assert ev is not None
    assert f"<{kind}>" in ev.template and ev.template.endswith(" ok"), ev.template
    assert len(ev.params) == 1


def test_words_with_one_trailing_digit_name_a_protocol_and_stay() -> None:
    t = Templater(TemplaterConfig(format="none"))
    ev = t.parse("open through proxy SOCKS5 with ssh2 over IPv4", learn=True)
    assert ev is not None and ev.template == "open through proxy SOCKS5 with ssh2 over IPv4"


def test_the_kinds_are_named_from_a_small_fixed_set() -> None:
    assert {n for n, _ in BY_KIND} == {
        "DATE", "TIME", "UUID", "URL", "EMAIL", "MAC", "HOST", "PATH", "HEX", "SIZE", "DURATION", "NUM", "ID",
    }  # fmt: skip


def test_content_only_lines_group_by_event_with_preset_none() -> None:
    """Messages without their header, as a shipper indexes them, group by their true event."""
    for system in ("OpenSSH", "HealthApp", "Zookeeper", "Hadoop"):
        s = SAMPLES[system]
        t = Templater(TemplaterConfig(format="none"))
        keys = [t.canonical(ev.key) if ev is not None else -1 for ev in t.parse_many(s.content, learn=True)]
        assert grouping_accuracy(s.truth, keys) >= 0.9, system


def test_hdfs_raw_lines_keep_every_event_apart_with_auto() -> None:
    s = SAMPLES["HDFS"]
    cfg, _ = chosen_config(TemplaterConfig(format="auto"), s.raw)
    keys = [ev.key if ev is not None else -1 for ev in Templater(cfg).parse_many(s.raw, learn=True)]
    assert grouping_accuracy(s.truth, keys) == 1.0


def test_grouping_accuracy_counts_only_groups_that_hold_exactly_one_event() -> None:
    truth = ["a", "a", "b", "b", "c"]
    assert grouping_accuracy(truth, [1, 1, 2, 2, 3]) == 1.0
    assert grouping_accuracy(truth, [1, 1, 2, 2, 2]) == 0.4  # b and c merged: only a's lines count
    assert grouping_accuracy(truth, [1, 2, 3, 3, 4]) == 0.6  # a split: b and c count
    with pytest.raises(ValueError):
        grouping_accuracy(truth, [1])
