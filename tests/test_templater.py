"""Templater: accuracy on real HDFS lines, stable keys, persistence, bad input, format presets."""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from pathlib import Path

import pytest

from deeplog_lab.bench.templater import one_to_one_rate, read_ground_truth, recovery_rate
from deeplog_lab.keyseq import read_key_sessions
from deeplog_lab.replay import render
from deeplog_lab.shared_data import shared_data_dir
from deeplog_siem.config import MaskConfig, TemplaterConfig, example_config_text, parse_config
from deeplog_siem.errors import ArtifactError, ConfigError
from deeplog_siem.templater import STATE_FILE, ParsedEvent, Templater, _shape_table
from deeplog_siem.vocab import NUM_RESERVED, UNK, Vocabulary

DATA = shared_data_dir()
HDFS_2K = DATA / "hdfs_raw" / "HDFS_2k.log"
needs_data = pytest.mark.skipif(not HDFS_2K.is_file(), reason=f"shared data not found at {DATA}")


@pytest.fixture(scope="module")
def hdfs_2k() -> list[str]:
    return HDFS_2K.read_text(encoding="utf-8").splitlines()


def grouping_accuracy(truth: list[str], predicted: list[int]) -> float:
    """The Drain paper's grouping accuracy: a line counts when its predicted group holds exactly the lines
    of its ground-truth event."""
    t_groups: dict[str, set[int]] = defaultdict(set)
    p_groups: dict[int, set[int]] = defaultdict(set)
    for i, (t, p) in enumerate(zip(truth, predicted, strict=True)):
        t_groups[t].add(i)
        p_groups[p].add(i)
    correct = sum(len(g) for g in p_groups.values() if g == t_groups[truth[next(iter(g))]])
    return correct / len(truth)


# ------------------------------------------------------------------------------------ accuracy


@needs_data
def test_hdfs_2k_grouping_accuracy(hdfs_2k: list[str]) -> None:
    truth = read_ground_truth(DATA / "hdfs_raw" / "HDFS_2k.log_structured.csv")
    tpl = Templater(TemplaterConfig(format="hdfs"))
    events = tpl.parse_many(hdfs_2k, learn=True)
    assert all(e is not None for e in events)
    ga = grouping_accuracy(truth, [e.key for e in events])  # type: ignore[union-attr]
    print(f"HDFS_2k grouping accuracy {ga:.4f}, {tpl.num_templates} templates, {len(set(truth))} in truth")
    assert ga >= 0.99


@needs_data
def test_hdfs_header_never_reaches_drain(hdfs_2k: list[str]) -> None:
    tpl = Templater(TemplaterConfig(format="hdfs"))
    tpl.parse_many(hdfs_2k, learn=True)
    for template in tpl.templates().values():
        assert not re.search(r"\b(INFO|WARN|dfs\.\w+|\d{6})\b", template), template
    fields = tpl.header_fields(hdfs_2k[0])
    assert fields["level"] == "INFO" and fields["component"] == "dfs.DataNode$PacketResponder"


@needs_data
def test_params_and_numbers(hdfs_2k: list[str]) -> None:
    tpl = Templater(TemplaterConfig(format="hdfs"))
    ev = tpl.parse(hdfs_2k[2], learn=True)
    # 081109 204005 35 INFO dfs.FSNamesystem: BLOCK* NameSystem.addStoredBlock: blockMap updated:
    #   10.251.73.220:50010 is added to blk_7128370237687728475 size 67108864
    assert ev is not None
    assert (
        ev.template == "BLOCK* NameSystem.addStoredBlock: blockMap updated: <IP> is added to <BLK> size <NUM>"
    )
    assert ev.params == ("10.251.73.220:50010", "blk_7128370237687728475", "67108864")
    assert ev.numbers == (67108864.0,)
    assert tpl.numeric_labels(ev.key) == ("size",)
    # Every event of one key has a numeric vector of the same length.
    lengths: dict[int, set[int]] = defaultdict(set)
    for e in tpl.parse_many(hdfs_2k, learn=True):
        assert e is not None
        lengths[e.key].add(len(e.numbers))
        assert len(tpl.numeric_labels(e.key)) == len(e.numbers)
    assert all(len(v) == 1 for v in lengths.values())


@needs_data
def test_cache_gives_the_same_events_as_no_cache(hdfs_2k: list[str]) -> None:
    rendered = [r.message for r in render(read_key_sessions(DATA / "hdfs_keys" / "hdfs_train")[:300])]
    tricky = [
        "081109 203615 148 INFO dfs.DataNode: task7 finished in 12 ms",  # a digit the masks leave
        "081109 203615 148 INFO dfs.DataNode: task8 finished in 15 ms",
        "081109 203615 148 INFO dfs.DataNode: multi\nline message 42",
        "no header at all 17",
        "   ",
    ]
    lines = hdfs_2k + rendered + tricky + hdfs_2k[:50]
    cached = Templater(TemplaterConfig(format="hdfs"))
    plain = Templater(TemplaterConfig(format="hdfs", cache_size=0))
    for learn in (True, False):
        a = [e for i in range(0, len(lines), 100) for e in cached.parse_many(lines[i : i + 100], learn=learn)]
        b = [plain.parse(m, learn=learn) for m in lines]
        assert a == b
    assert cached.stats["l1_hits"] > len(lines)  # the cache was used, not bypassed
    assert cached.vocab.templates == plain.vocab.templates


@needs_data
def test_rendered_hdfs_sessions_keys_map_one_to_one() -> None:
    rng = random.Random(7)
    files = ("hdfs_train", "hdfs_test_normal_dev", "hdfs_test_abnormal_dev")
    pool = [s for f in files for s in read_key_sessions(DATA / "hdfs_keys" / f)]
    # Every sessions that holds a rare key (fewer than 60 sessions) plus a random sample of the rest, so
    # look-alike events (PacketResponder ... Interrupted. vs ... terminating) are both present.
    per_key: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(pool):
        for k in set(s):
            per_key[k].append(i)
    chosen = {i for ids in per_key.values() if len(ids) < 60 for i in ids}
    chosen |= set(rng.sample(range(len(pool)), 300))
    sessions = [pool[i] for i in sorted(chosen)]
    lines = render(sessions, seed=11)
    rate, total = recovery_rate(TemplaterConfig(format="hdfs"), lines)
    print(f"one-to-one on {total} rendered sessions: {rate:.4f}")
    assert total == len(sessions)
    assert rate >= 0.999


def test_one_to_one_rate_definition() -> None:
    ok = [[(5, 10), (22, 11)], [(5, 10)]]
    merged = [[(8, 12), (11, 12)], [(11, 12)], [(11, 12)]]  # two original keys -> one recovered key
    assert one_to_one_rate(ok)[0] == 1.0
    assert one_to_one_rate(merged)[0] == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------------- stable keys


def _none_cfg(**kw: object) -> TemplaterConfig:
    return TemplaterConfig(**{"format": "none", "similarity_threshold": 0.5, **kw})  # type: ignore[arg-type]


def test_generalisation_keeps_the_key_and_records_the_change() -> None:
    tpl = _none_cfg()
    t = Templater(tpl)
    a = t.parse("user alice logged in from web", learn=True)
    b = t.parse("user bob logged in from web", learn=True)
    assert a is not None and b is not None
    assert a.key == b.key == NUM_RESERVED
    assert a.template == "user alice logged in from web"
    assert b.template == "user <*> logged in from web" and b.params == ("bob",)
    assert t.vocab.changes == [(a.key, "user alice logged in from web", "user <*> logged in from web")]
    again = t.parse("user alice logged in from web", learn=False)  # the cache was invalidated
    assert again == ParsedEvent(a.key, "user <*> logged in from web", ("alice",), (), False)


def test_unseen_message_is_unk_in_match_only_mode() -> None:
    t = Templater(_none_cfg())
    known = t.parse("disk sda1 is 93 percent full", learn=True)
    assert known is not None
    vocab_before = list(t.vocab.templates)
    unk = t.parse("kernel panic at address 12 on cpu 3", learn=False)
    assert unk is not None and unk.key == UNK
    assert unk.template == "kernel panic at address <NUM> on cpu <NUM>"
    assert unk.params == ("12", "3") and unk.numbers == ()
    assert t.vocab.templates == vocab_before and t.num_templates == 1
    assert t.stats["unk"] == 1
    # Matching still works for a known shape, and a later learn of the unseen message gives it a key.
    assert t.parse("disk sda1 is 12 percent full", learn=False).key == known.key  # type: ignore[union-attr]
    learned = t.parse("kernel panic at address 12 on cpu 3", learn=True)
    assert learned is not None and learned.key == NUM_RESERVED + 1


def test_given_vocabulary_ids_are_reused_for_the_same_template() -> None:
    vocab = Vocabulary()
    known = vocab.add("something else entirely")
    vocab.add("disk <*> is <NUM> percent full")
    t = Templater(_none_cfg(), vocab)
    assert t.parse("something else entirely", learn=True).key == known  # type: ignore[union-attr]
    # A new template never takes an id that means something else: it is appended.
    ev = t.parse("disk sda1 is 93 percent full", learn=True)
    assert ev is not None and ev.key == len(vocab) - 1 == known + 2


# ---------------------------------------------------------------------------------- persistence


@needs_data
def test_restart_round_trip_gives_the_same_keys(hdfs_2k: list[str], tmp_path: Path) -> None:
    cfg = TemplaterConfig(format="hdfs")
    t = Templater(cfg)
    t.parse_many(hdfs_2k[:1000], learn=True)
    before = t.parse_many(hdfs_2k, learn=False)
    path = t.save(tmp_path)
    assert path == tmp_path / STATE_FILE
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]  # no temporary file left behind
    t2 = Templater.load(tmp_path, cfg)
    assert t2.parse_many(hdfs_2k, learn=False) == before
    assert t2.vocab.to_dict() == t.vocab.to_dict()
    # Learning goes on after a restart exactly as without one.
    cont_a = t.parse_many(hdfs_2k[1000:], learn=True)
    cont_b = t2.parse_many(hdfs_2k[1000:], learn=True)
    assert cont_a == cont_b


# A state file written by the templater before its Drain3 state went through drain_state, from the messages
# beside it: the on-disk format must not move, byte for byte, and such files must keep loading.
GOLDEN = Path(__file__).parent / "fixtures" / "templater"


def _golden_cfg() -> TemplaterConfig:
    return TemplaterConfig(format="hdfs", similarity_threshold=0.6, depth=4, max_children=3)


def test_saved_state_is_byte_identical_to_the_established_format(tmp_path: Path) -> None:
    messages = (GOLDEN / "messages.log").read_text(encoding="utf-8").splitlines()
    t = Templater(_golden_cfg())
    t.parse_many(messages, learn=True)
    assert t.stats["templates_changed"] > 0  # generalisations are in the file too
    saved = t.save(tmp_path).read_bytes()
    assert saved == (GOLDEN / STATE_FILE).read_bytes()


def test_a_state_saved_by_the_earlier_templater_loads_and_goes_on_learning() -> None:
    messages = (GOLDEN / "messages.log").read_text(encoding="utf-8").splitlines()
    fresh = Templater(_golden_cfg())
    fresh.parse_many(messages, learn=True)
    loaded = Templater.load(GOLDEN, _golden_cfg())
    assert loaded.state_dict() == fresh.state_dict()
    assert loaded.parse_many(messages, learn=False) == fresh.parse_many(messages, learn=False)
    more = [
        m.replace("terminating", "finished").replace("Broken pipe", "Timed out waiting")
        for m in messages
        if "terminating" in m or "Broken pipe" in m
    ]
    assert loaded.parse_many(more, learn=True) == fresh.parse_many(more, learn=True)
    assert loaded.state_dict() == fresh.state_dict()


def test_load_errors_are_clear_and_nothing_is_half_loaded(tmp_path: Path) -> None:
    cfg = _none_cfg()
    with pytest.raises(ArtifactError, match="templater state not found"):
        Templater.load(tmp_path, cfg)
    t = Templater(cfg)
    t.parse_many(["a b 1", "c d e 2", "c d f 3"], learn=True)
    path = t.save(tmp_path)
    good = path.read_text(encoding="utf-8")

    path.write_text(good[: len(good) // 2], encoding="utf-8")
    with pytest.raises(ArtifactError, match="corrupted .not valid JSON"):
        Templater.load(tmp_path, cfg)

    doc = json.loads(good)
    doc["state"]["clusters"][0][3][0] = "tampered"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        Templater.load(tmp_path, cfg)

    path.write_text(json.dumps({"format": "something else"}), encoding="utf-8")
    with pytest.raises(ArtifactError, match="not a deeplog-siem templater state"):
        Templater.load(tmp_path, cfg)

    path.write_text(good, encoding="utf-8")
    with pytest.raises(ArtifactError, match="different templater settings .masks"):
        Templater.load(tmp_path, _none_cfg(masks=(MaskConfig("N", r"\d+"),)))
    assert Templater.load(tmp_path, cfg).num_templates == t.num_templates


def test_malformed_but_checksummed_state_is_rejected() -> None:
    t = Templater(_none_cfg())
    t.parse_many(["a b 1", "c d e 2"], learn=True)
    state = t.state_dict()
    state["tree"] = [[["3", [[], [999]]]], []]  # a tree leaf pointing at no cluster
    with pytest.raises(ArtifactError, match="unknown cluster 999"):
        Templater.from_state(state, _none_cfg())


# ------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("", "empty"),
        ("   \t ", "empty"),
        (b"", "empty"),
        (None, "not_string"),
        (42, "not_string"),
        ({"message": "x"}, "not_string"),
        (["a"], "not_string"),
        (b"\x00\x01\x02ELF\x00\x00", "binary"),
        ("text with a NUL\x00 inside", "binary"),
        (bytes(range(128, 256)) * 4, "binary"),  # undecodable through and through
        ("\x01\x02\x03\x04\x05\x06 ab", "binary"),
    ],
)
def test_bad_input_is_skipped_and_counted(message: object, reason: str) -> None:
    t = Templater(_none_cfg())
    assert t.parse(message, learn=True) is None
    assert t.skipped == {reason: 1}
    assert t.num_templates == 0


def test_invalid_utf8_is_decoded_with_replacement_and_counted() -> None:
    t = Templater(_none_cfg())
    ev = t.parse(b"login failed for user \xff\xfeadmin from host 7", learn=True)
    assert ev is not None and "\ufffd" in ev.template
    assert t.stats["invalid_utf8"] == 1 and not t.skipped
    ok = t.parse(b"login ok for user bob", learn=True)
    assert ok is not None and t.stats["invalid_utf8"] == 1


@pytest.mark.parametrize("as_bytes", [False, True])
def test_multi_megabyte_message_is_truncated_and_parsed(as_bytes: bool) -> None:
    cfg = _none_cfg(max_message_bytes=4096)
    t = Templater(cfg)
    big = "stack trace follows " + "at com.example.Foo.bar(Foo.java:123) é " * 100000  # ~4 MB, multibyte
    ev = t.parse(big.encode() if as_bytes else big, learn=True)
    assert ev is not None and ev.truncated
    assert t.stats["truncated"] == 1
    assert ev.template.startswith("stack trace follows at com.example.Foo.bar(Foo.java:<NUM>) é at")
    # Each "123" of the truncated message is "<NUM>" in the template: two bytes longer.
    assert 4000 < len(ev.template.encode()) <= 4096 + 2 * ev.template.count("<NUM>")


def test_mixed_page_stays_aligned() -> None:
    t = Templater(_none_cfg())
    page = [
        "job 1 started",
        None,
        "",
        "job 2 started",
        b"job 3 started",
        "two\nlines 4",
        3.5,
        "job 4 started",
    ]
    out = t.parse_many(page, learn=True)
    assert len(out) == len(page)
    assert [e is None for e in out] == [False, True, True, False, False, False, True, False]
    assert out[0].key == out[3].key == out[4].key == out[7].key  # type: ignore[union-attr]
    assert t.skipped == {"not_string": 2, "empty": 1}


# ------------------------------------------------------------------------------------- presets

_OS_API = (
    "nova-api.log.1.2017-05-16_13:53:08 2017-05-16 {t} 25746 INFO nova.osapi_compute.wsgi.server [req-{r}"
)
_OS_REQ = (
    ' 113d3a99c3da401fbd62cc2caa5b96d2 54fdadf51f95476fb0ed4c7e1d23bd6d - - -] 10.11.10.1 "GET '
    '/v2/54fdadf51f95476fb0ed4c7e1d23bd6d/servers/detail HTTP/1.1" status: 200 len: {n} time: {s}'
)
_OS_VM = (
    "2017-05-16 {t} 2931 INFO nova.compute.manager [req-{r} - - - - -] "
    "[instance: {i}] VM Started (Lifecycle Event)"
)
_BGL = "- {e} 2005.06.05 R25-M0-NE-C:J04-U11 2005-06-05-00.09.01.903733 R25-M0-NE-C:J04-U11 RAS {c} {content}"
_SSH = "authentication failure; logname= uid=0 euid=0 tty=NODEVssh ruser= rhost={ip}"
_NGINX = (
    "upstream timed out (110: Connection timed out) while reading response header from upstream, client: {ip}"
)
_CIOD = "ciod: failed to read message prefix on control stream (CioStream socket to {ip}"
PRESET_LINES = {
    "openstack": [
        (
            _OS_API.format(t="00:00:00.008", r="38101a0b-2096-447d-96ea-a692162415ae")
            + _OS_REQ.format(n=1893, s=0.2477829),
            _OS_API.format(t="00:00:02.013", r="9bc36dd9-91c5-4314-898a-47625eb93b09")
            + _OS_REQ.format(n=1910, s=0.2808621),
            '<IP> "GET <PATH> HTTP/1.1" status: <NUM> len: <NUM> time: <NUM>',
        ),
        (
            "nova-compute.log.1.2017-05-16_13:55:31 "
            + _OS_VM.format(
                t="00:00:04.500",
                r="3ea4052c-895d-4b64-9e2d-04d64c4d94ab",
                i="b9000564-fe1a-409b-b8cc-1e88b294cd1d",
            ),
            _OS_VM.format(
                t="00:01:04.500",
                r="4ea4052c-895d-4b64-9e2d-04d64c4d94ab",
                i="0f1ae2c4-1f50-4e1c-9c6d-3b0f3e8b4b2d",
            ),
            "[instance: <UUID>] VM Started (Lifecycle Event)",
        ),
    ],
    "bgl": [
        (
            _BGL.format(e=1117955341, c="KERNEL INFO", content="CE sym 2, at 0x0b85eee0, mask 0x10"),
            _BGL.format(e=1117955342, c="KERNEL INFO", content="CE sym 17, at 0x1a2b3c40, mask 0x02"),
            "CE sym <NUM>, at <HEX>, mask <HEX>",
        ),
        (
            _BGL.format(e=1117869872, c="APP FATAL", content=_CIOD.format(ip="172.16.96.116:33569")),
            _BGL.format(e=1117869999, c="APP FATAL", content=_CIOD.format(ip="172.16.96.20:41002")),
            _CIOD.format(ip="<IP>"),
        ),
    ],
    "syslog": [
        (
            "Jun 14 15:16:01 combo sshd(pam_unix)[19939]: " + _SSH.format(ip="218.188.2.4"),
            "Jul  1 09:01:05 combo sshd(pam_unix)[10583]: " + _SSH.format(ip="61.53.154.93"),
            "authentication failure; logname= uid=<NUM> euid=<NUM> tty=NODEVssh ruser= rhost=<HOST>",
        ),
        (
            "2024-03-01T12:00:00.123+00:00 web01 nginx[812]: " + _NGINX.format(ip="10.0.0.5"),
            "2024-03-01T12:00:09.999+00:00 web02 nginx[813]: " + _NGINX.format(ip="10.0.0.77"),
            _NGINX.format(ip="<HOST>").replace("(110:", "(<NUM>:"),
        ),
    ],
}


@pytest.mark.parametrize("fmt", sorted(PRESET_LINES))
def test_format_presets_strip_headers_and_mask(fmt: str) -> None:
    t = Templater(TemplaterConfig(format=fmt))  # type: ignore[arg-type]
    for a, b, template in PRESET_LINES[fmt]:
        ea = t.parse(a, learn=True)
        eb = t.parse(b, learn=True)
        assert ea is not None and eb is not None
        assert ea.key == eb.key
        assert eb.template == template
    assert t.stats["no_header"] == 0
    assert t.num_templates == len(PRESET_LINES[fmt])


# ------------------------------------------------------------------------ shape cache, config


def test_shape_analysis_is_conservative() -> None:
    blind = _shape_table([r"blk_-?\d+", r"[0-9a-f]{8}", r"\w+\s\S"], [])
    assert blind is not None and set(blind.values()) == {ord("0")}
    hexed = _shape_table([r"0x[0-9a-f]+"], [])  # '0' is told apart from the other digits
    assert hexed is not None and hexed[ord("0")] != hexed[ord("1")] and hexed[ord("1")] == hexed[ord("9")]
    assert _shape_table([r"(\d)\1"], []) is None  # back-references compare text: no shape cache
    # With a back-reference mask the templater still works, through the slow path.
    t = Templater(TemplaterConfig(format="none", masks=(MaskConfig("DUP", r"(\d)\1"),)))
    assert t.parse("code 11 seen", learn=True).template == "code <DUP> seen"  # type: ignore[union-attr]


def test_config_fields_are_validated() -> None:
    base = {
        "elasticsearch": {"hosts": ["http://localhost:9200"]},
        "source": {"index": "x", "session_regex": "a"},
    }
    cfg = parse_config({**base, "templater": {"format": "hdfs"}})
    assert cfg.templater.similarity_threshold is None and cfg.templater.numeric_masks == ("NUM",)
    for bad, key in [
        ({"cache_size": -1}, "templater.cache_size"),
        ({"numeric_masks": ["not an id"]}, "templater.numeric_masks[0]"),
        ({"similarity_threshold": 0}, "templater.similarity_threshold"),
        ({"extra_delimiters": [""]}, "templater.extra_delimiters[0]"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(key)):
            parse_config({**base, "templater": bad})
    assert "numeric_masks" in example_config_text()


def test_random_messages_cache_exactness_and_param_positions() -> None:
    """Seeded random messages mixing words, numbers, addresses, delimiters and wildcard positions: the cache
    changes nothing, and each parameter is the text at its place in the message."""
    rng = random.Random(5)
    words = ["open", "close", "user", "conn", "from", "to", "x=1", "k=v", "a,b", "job_7", "/tmp/f", "err"]

    def token() -> str:
        r = rng.random()
        if r < 0.2:
            return str(rng.randint(-50, 10**6))
        if r < 0.3:
            return ".".join(str(rng.randint(0, 255)) for _ in range(4)) + f":{rng.randint(1, 65535)}"
        if r < 0.35:
            return "/" + ".".join(str(rng.randint(0, 255)) for _ in range(4))
        return rng.choice(words)

    shapes = [[token() for _ in range(rng.randint(1, 7))] for _ in range(40)]
    messages = []
    for _ in range(1500):
        base = rng.choice(shapes)
        # Re-draw numeric tokens so one shape yields many messages; sometimes change a word (-> <*>).
        toks = [token() if any(c.isdigit() for c in t) else t for t in base]
        if rng.random() < 0.2:
            toks[rng.randrange(len(toks))] = rng.choice(words)
        messages.append(" ".join(toks))
    cfg = dict(format="none", similarity_threshold=0.4, extra_delimiters=(",", "="))
    cached = Templater(TemplaterConfig(**cfg))  # type: ignore[arg-type]
    plain = Templater(TemplaterConfig(**cfg, cache_size=0))  # type: ignore[arg-type]
    for learn in (True, False):
        a = [
            e
            for i in range(0, len(messages), 64)
            for e in cached.parse_many(messages[i : i + 64], learn=learn)
        ]
        b = [plain.parse(m, learn=learn) for m in messages]
        assert a == b
    assert cached.stats["param_mismatch"] == 0
    for m, e in zip(messages, a, strict=True):
        assert e is not None
        pos = 0
        for p in e.params:  # parameters are substrings of the message, left to right
            found = m.find(p, pos)
            assert p and found >= 0, (m, e)
            pos = found + len(p)
        n_ph = len(re.findall(r"<(?:[A-Z]+|\*)>", e.template))
        assert len(e.params) == n_ph or e.key == UNK, (m, e)
