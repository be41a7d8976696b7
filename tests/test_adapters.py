"""Adapters to library and interpreter internals: what drain_state reads of drain3 and regex_syntax reads of
CPython's regex parser is still there, in the shape they read it.

These tests exist to fail when a new drain3 or Python changes what the adapters rely on; each assertion
names the dependency and the file to update.
"""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from drain3.drain import Drain, LogCluster, Node

from deeplog_siem import regex_syntax
from deeplog_siem.config import TemplaterConfig
from deeplog_siem.drain_state import ClusterState, DrainState, export_drain, restore_drain
from deeplog_siem.formats import HDFS_SESSION_REGEX, OPENSTACK_SESSION_REGEX, PRESETS
from deeplog_siem.regex_syntax import digit_tests
from deeplog_siem.templater import Templater, _shape_table

ALL = frozenset("0123456789")

# Masked contents as the templater hands them to Drain3: a generalisation (terminating / Interrupted.),
# several token counts, first tokens beyond max_children (wildcard child nodes), an empty-ish message.
LEARN = [
    "PacketResponder <NUM> for block <BLK> terminating",
    "PacketResponder <NUM> for block <BLK> Interrupted.",
    "Receiving block <BLK> src: /<IP> dest: /<IP>",
    "Received block <BLK> of size <NUM> from /<IP>",
    "BLOCK* ask <IP> to delete <BLK>",
    "Deleting block <BLK> file <PATH>",
    "Verification succeeded for <BLK>",
    "alpha one two",
    "beta one two three",
    "gamma one two three four",
    "delta x y z",
    "epsilon x y z",
    "zeta x y z",
    "Verification failed for <BLK>",
]
LATER = [
    "PacketResponder <NUM> for block <BLK> Interrupted.",
    "eta x y z",
    "Verification succeeded for <BLK>",
    "Received block <BLK> of size <NUM> from /<IP> again",
    "theta one two three four",
    "brand new message here",
    "delta x y w",
]


def _drain_dep(cond: bool, what: str) -> None:
    assert cond, f"drain3 internals changed: {what}; update drain_state.py"


def _drain() -> Drain:
    """A Drain configured as the templater configures it (small max_children to get wildcard nodes)."""
    return Templater(TemplaterConfig(format="none", similarity_threshold=0.5, max_children=3)).miner.drain


def _learned() -> Drain:
    d = _drain()
    for m in LEARN:
        d.add_log_message(m)
    return d


def _check_drain_internals(d: Drain) -> None:
    """Every attribute and type drain_state reads or writes, on a drain that has learned something."""
    _drain_dep(isinstance(getattr(d, "root_node", None), Node), "Drain.root_node is not a Node")
    _drain_dep(
        type(getattr(d, "id_to_cluster", None)) is dict,
        "Drain.id_to_cluster is not a plain dict when max_clusters is None",
    )
    _drain_dep(isinstance(getattr(d, "clusters_counter", None), int), "Drain.clusters_counter is not an int")
    _drain_dep(d.max_clusters is None, "Drain.max_clusters is no longer None by default")
    _drain_dep(len(d.id_to_cluster) > 0, "Drain.add_log_message no longer fills Drain.id_to_cluster")
    for cid, c in d.id_to_cluster.items():
        _drain_dep(type(cid) is int, "Drain.id_to_cluster keys are not ints")
        _drain_dep(isinstance(c, LogCluster), "Drain.id_to_cluster values are not LogCluster")
        _drain_dep(
            getattr(c, "cluster_id", None) == cid, "LogCluster.cluster_id is not its id_to_cluster key"
        )
        _drain_dep(isinstance(getattr(c, "size", None), int), "LogCluster.size is not an int")
        tokens = getattr(c, "log_template_tokens", None)
        _drain_dep(
            isinstance(tokens, tuple) and all(isinstance(t, str) for t in tokens),
            "LogCluster.log_template_tokens is not a tuple of str",
        )
        _drain_dep(
            c.get_template() == ClusterState(cid, c.size, tokens).template,  # type: ignore[arg-type]
            "LogCluster.get_template() is no longer the tokens joined by one space",
        )
    _drain_dep(
        d.clusters_counter == max(d.id_to_cluster), "Drain.clusters_counter is not the last id handed out"
    )
    _drain_dep(
        list(d.clusters) == list(d.id_to_cluster.values()), "Drain.clusters is not id_to_cluster's values"
    )

    leaves: list[int] = []

    def walk(n: Any, depth: int) -> None:
        children = getattr(n, "key_to_child_node", None)
        ids = getattr(n, "cluster_ids", None)
        _drain_dep(type(children) is dict, "Node.key_to_child_node is not a dict")
        _drain_dep(type(ids) is list, "Node.cluster_ids is not a list")
        for tok, ch in children.items():  # type: ignore[union-attr]
            _drain_dep(type(tok) is str and isinstance(ch, Node), "Node.key_to_child_node is not str -> Node")
            walk(ch, depth + 1)
        leaves.extend(ids)  # type: ignore[arg-type]

    walk(d.root_node, 0)
    _drain_dep(
        all(k.isdigit() for k in d.root_node.key_to_child_node),
        "the root's children are no longer keyed by the token count as text",
    )
    _drain_dep(
        sorted(leaves) == sorted(d.id_to_cluster),
        "the tree's Node.cluster_ids no longer name every cluster exactly once",
    )
    _drain_dep("<*>" in repr(export_drain(d).tree), "no wildcard child node with max_children reached")

    # restore_drain builds these itself
    n = Node()
    _drain_dep(n.key_to_child_node == {} and n.cluster_ids == [], "Node() no longer starts empty")
    c = LogCluster(["a", "<*>"], 7)
    _drain_dep(
        (c.log_template_tokens, c.cluster_id, c.size) == (("a", "<*>"), 7, 1),
        "LogCluster(tokens, cluster_id) no longer sets log_template_tokens, cluster_id and size 1",
    )
    for slot in ("key_to_child_node", "cluster_ids"):
        _drain_dep(slot in getattr(Node, "__slots__", (slot,)), f"Node has no slot {slot}")


def test_drain_internals_drain_state_relies_on() -> None:
    _check_drain_internals(_learned())


def test_drain_public_api_the_templater_relies_on() -> None:
    d = _drain()
    changes = [d.add_log_message(m)[1] for m in ("a b c", "a b d", "a b d", "x y")]
    assert changes == ["cluster_created", "cluster_template_changed", "none", "cluster_created"], (
        f"drain3 API changed: add_log_message change types {changes}; update templater.py"
    )
    c = d.match("a b zzz", full_search_strategy="fallback")
    assert c is not None and c.get_template() == "a b <*>", "drain3 API changed: match(); update templater.py"
    assert d.match("q r s", full_search_strategy="fallback") is None, "drain3 API changed: match() of unseen"
    new, change = d.add_log_message("p q r s")
    assert (new.cluster_id, change) == (d.clusters_counter, "cluster_created") == (3, "cluster_created"), (
        "drain3 internals changed: a new cluster no longer gets clusters_counter + 1; update drain_state.py"
    )


def test_the_drain_check_fails_on_changed_internals() -> None:
    """The check above can fail: drains whose internals no longer look as drain_state expects."""
    broken: list[tuple[str, Any]] = [
        ("root_node", SimpleNamespace(children={}, cluster_ids=[])),
        ("id_to_cluster", list(_learned().id_to_cluster.values())),
        ("clusters_counter", "14"),
    ]
    for attr, value in broken:
        d = _learned()
        setattr(d, attr, value)
        with pytest.raises(AssertionError, match="drain3 internals changed: .*; update drain_state.py"):
            _check_drain_internals(d)
    d = _learned()
    next(iter(d.id_to_cluster.values())).log_template_tokens = ["now", "a", "list"]  # type: ignore[assignment]
    with pytest.raises(AssertionError, match="log_template_tokens is not a tuple of str"):
        _check_drain_internals(d)


def _plain(state: DrainState) -> DrainState:
    """`state` through JSON and back, as a saved file gives it."""
    tree = json.loads(json.dumps(state.tree))
    return DrainState(state.clusters_counter, state.clusters, tree)


def test_export_then_restore_gives_the_same_matches_and_ids() -> None:
    a = _learned()
    exported = export_drain(a)
    assert json.loads(json.dumps(exported.tree)) == exported.tree  # plain data only
    b = _drain()
    restore_drain(b, _plain(exported))
    _check_drain_internals(b)
    assert export_drain(b) == exported
    probe = [*LEARN, *LATER, "PacketResponder <NUM> for block <BLK> whatever", "x y z", ""]
    for m in probe:
        for strategy in ("never", "fallback", "always"):
            ma, mb = a.match(m, full_search_strategy=strategy), b.match(m, full_search_strategy=strategy)
            assert (ma and (ma.cluster_id, ma.get_template())) == (
                mb and (mb.cluster_id, mb.get_template())
            ), (
                f"drain3 internals changed: a rebuilt Drain matches {m!r} ({strategy}) differently; "
                "update drain_state.py"
            )
    for m in LATER:
        ca, xa = a.add_log_message(m)
        cb, xb = b.add_log_message(m)
        assert (ca.cluster_id, ca.get_template(), ca.size, xa) == (
            cb.cluster_id,
            cb.get_template(),
            cb.size,
            xb,
        ), f"drain3 internals changed: a rebuilt Drain learns {m!r} differently; update drain_state.py"
    assert export_drain(a) == export_drain(b)


def test_restore_rejects_a_bad_state_and_leaves_the_drain_as_it_was() -> None:
    good = export_drain(_learned())
    cases = [
        (DrainState(good.clusters_counter, good.clusters, [[["3", [[], [999]]]], []]), "unknown cluster 999"),
        (DrainState(1, good.clusters, good.tree), "clusters_counter below"),
        (DrainState(good.clusters_counter, good.clusters, [[["3"]], []]), "not enough values"),
    ]
    for state, message in cases:
        d = _learned()
        before = (d.root_node, d.id_to_cluster, d.clusters_counter)
        with pytest.raises(ValueError, match=message):
            restore_drain(d, state)
        assert (d.root_node, d.id_to_cluster, d.clusters_counter) == before


# --------------------------------------------------------------------------------------------- regex


def _regex_dep(cond: bool, what: str) -> None:
    assert cond, f"Python's regex parser changed: {what}; update regex_syntax.py"


# (pattern, what digit_tests must say): one construct each, in the shape regex_syntax reads it.
CONSTRUCTS: list[tuple[str, list[frozenset[str]] | None]] = [
    (r"7", [frozenset("7")]),  # LITERAL
    (r"[^7]", [ALL - {"7"}]),  # NOT_LITERAL
    (r"[^0-4]", [frozenset("56789")]),  # IN with NEGATE and RANGE
    (r"[0-4a9]", [frozenset("012349")]),  # IN with RANGE and LITERAL
    (r"\d", [ALL]),  # IN CATEGORY_DIGIT
    (r"[\w]", [ALL]),
    (r"[\S]", [ALL]),
    (r"[^\n]", []),  # NOT_LITERAL of a non-digit: no split, nothing reported
    (r"\D", [frozenset()]),
    (r"[\s]", [frozenset()]),
    (r".", []),  # ANY
    (r"\b^$", []),  # AT
    (r"(?:12|3)", [frozenset("1"), frozenset("2"), frozenset("3")]),  # BRANCH
    (r"(?P<n>9)", [frozenset("9")]),  # SUBPATTERN
    (r"(?i:8)", [frozenset("8")]),  # SUBPATTERN with flags
    (r"6{2,3}", [frozenset("6")]),  # MAX_REPEAT
    (r"5+?", [frozenset("5")]),  # MIN_REPEAT
    (r"(?=4)", [frozenset("4")]),  # ASSERT
    (r"(?<!3)", [frozenset("3")]),  # ASSERT_NOT
    (r"(\d)\1", None),  # GROUPREF: compares text
    (r"(a)?(?(1)1|2)", None),  # GROUPREF_EXISTS
]
CONSTRUCTS += [(r"(?>2)", [frozenset("2")]), (r"1++", [frozenset("1")])]  # ATOMIC_GROUP, POSSESSIVE_REPEAT


def _check_constructs() -> None:
    _regex_dep(regex_syntax.parser_available(), "no re._parser or sre_parse")
    for pattern, expected in CONSTRUCTS:
        got = digit_tests(pattern)
        _regex_dep(got == expected, f"{pattern!r} reads as {got}, not {expected}")


def test_regex_parser_structures_regex_syntax_relies_on() -> None:
    _check_constructs()
    # The argument positions walked into, on one pattern of every construct.
    sc, sp = regex_syntax._sc, regex_syntax._sp
    assert sc is not None and sp is not None
    parsed = list(sp.parse(r"(?P<g>1)(?:ab|2)3*(?=4)[0-5\d]"))
    ops = [op for op, _ in parsed]
    _regex_dep(ops == [sc.SUBPATTERN, sc.BRANCH, sc.MAX_REPEAT, sc.ASSERT, sc.IN], f"opcodes are now {ops}")
    _regex_dep(list(parsed[0][1][-1]) == [(sc.LITERAL, ord("1"))], "SUBPATTERN's subpattern is not last")
    _regex_dep(len(parsed[1][1][1]) == 2, "BRANCH's alternatives are not its argument's second item")
    _regex_dep(
        list(parsed[2][1][2]) == [(sc.LITERAL, ord("3"))], "a repeat's subpattern is not its third item"
    )
    _regex_dep(
        list(parsed[3][1][1]) == [(sc.LITERAL, ord("4"))], "ASSERT's subpattern is not its second item"
    )
    _regex_dep(
        list(parsed[4][1]) == [(sc.RANGE, (ord("0"), ord("5"))), (sc.CATEGORY, sc.CATEGORY_DIGIT)],
        "IN's items are not (RANGE, (lo, hi)) and (CATEGORY, code)",
    )


# Every pattern the shipped configuration uses: the presets' header regexes and masks, the session regex
# presets, and the examples in the example configuration.
SHIPPED = [
    *(p.header_regex for p in PRESETS.values() if p.header_regex),
    *(rx for p in PRESETS.values() for _, rx in p.masks),
    HDFS_SESSION_REGEX,
    OPENSTACK_SESSION_REGEX,
    r"^(?P<date>\S+) (?P<time>\S+) (?P<content>.*)$",
    r"\d+\.\d+\.\d+\.\d+",
]


def _check_shipped(patterns: list[str]) -> None:
    for p in patterns:
        _regex_dep(digit_tests(p) is not None, f"{p!r} can no longer be analysed (line-shape cache off)")


def test_shipped_patterns_are_analysed_and_give_the_expected_shape_tables() -> None:
    _check_shipped(SHIPPED)
    # Digit classes per preset: all digits alike, except '0' where a mask reads "0x".
    expected = {"hdfs": "0000000000", "openstack": "0000000000", "bgl": "0111111111", "syslog": "0111111111"}
    # The family presets share masks.BY_KIND, whose hexadecimal kinds read "0x" and a leading zero.
    for name in ("syslog", "rfc5424", "log4j", "web_error", "web_access", "windows", "logcat", "pipe"):
        expected[name] = "0111111111"
    expected.update(bracket="0111111111", epoch="0111111111", generic="0111111111", none="0111111111")
    assert set(expected) == set(PRESETS)
    for name, preset in PRESETS.items():
        table = _shape_table([p for p in (preset.header_regex, *(rx for _, rx in preset.masks)) if p], [])
        _regex_dep(table is not None, f"preset {name}: no shape table")
        got = "".join(chr(table[ord(d)]) for d in "0123456789")  # type: ignore[index]
        _regex_dep(got == expected[name], f"preset {name}: digit classes {got}, expected {expected[name]}")


def test_the_regex_checks_fail_on_a_changed_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks above can fail: a parser whose output has an unknown opcode or shape."""
    unknown_op = SimpleNamespace(parse=lambda pattern: [(object(), None)])
    monkeypatch.setattr(regex_syntax, "_sp", unknown_op)
    with pytest.raises(AssertionError, match="regex parser changed: .*; update regex_syntax.py"):
        _check_shipped(SHIPPED)
    with pytest.raises(AssertionError, match="regex parser changed"):
        _check_constructs()
    assert regex_syntax._sc is not None
    other_shape = SimpleNamespace(parse=lambda pattern: [(regex_syntax._sc.SUBPATTERN, 5)])
    monkeypatch.setattr(regex_syntax, "_sp", other_shape)
    with pytest.raises(AssertionError, match="can no longer be analysed"):
        _check_shipped(SHIPPED)


def test_without_the_parser_the_templater_works_without_its_shape_cache(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(regex_syntax, "_sp", None)
    with caplog.at_level(logging.WARNING, logger="deeplog_siem.regex_syntax"):
        t = Templater(TemplaterConfig(format="hdfs"))
    assert "no re._parser or sre_parse" in caplog.text
    assert t._shape is None
    line = "081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block blk_38865 terminating"
    ev = t.parse(line, learn=True)
    assert ev is not None and ev.template == "PacketResponder <NUM> for block <BLK> terminating"
    assert ev.params == ("1", "blk_38865") and ev.numbers == (1.0,)
    assert t.stats["l1_hits"] == 0
