"""formats: per-format templating presets (header regex, default masks, similarity threshold).

Contract: `preset(name) -> FormatPreset`; `resolve(cfg) -> ResolvedTemplating`, the effective settings the
templater uses once the YAML's overrides (header_regex, masks, similarity_threshold) are applied on top of
the preset of `cfg.format`. An unknown format name raises KeyError (the configuration admits only the names
of PRESETS). Nothing here compiles a pattern: the templater does, and reports a bad one as ConfigError.
Every preset is covered by tests on real-looking lines of its format; every header, mask and session regex
here must stay analysable by regex_syntax (tests/test_adapters.py), or the templater's line-shape cache is
off for that format. Every regex here runs in linear time on any line, crafted ones included
(tests/test_formats_redos.py): no two quantifiers may compete for the same characters.

Masks are applied in one left-to-right pass of a single combined regex (the first mask that matches at a
position wins), so order matters: specific masks (block ids, UUIDs, addresses, paths) come before NUM.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import TemplaterConfig

# An IPv4 address with an optional port; a list of them ("a:p, b:p" or "a:p b:p") is one parameter so
# that messages naming one or several datanodes share a template (HDFS E18/E25 in loghub's labelling).
_IP1 = r"\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?"
IP = rf"(?<![\w.]){_IP1}(?:,?[ \t]+{_IP1})*(?![\w.])"
# A number standing alone: not part of a word, a dotted name, a path or an address.
NUM = r"(?<![\w.:/-])[-+]?\d+(?:\.\d+)?(?![\w/]|[.:]\w)"
# An absolute path that starts with a name (so "/10.0.0.1:50010" stays an address).
PATH = r"(?<![\w/])/[A-Za-z_.][^\s]*"
UUID = r"(?<![\w-])[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?![\w-])"
HEXID = r"(?<![\w-])[0-9a-f]{32}(?![\w-])"
HEX = r"(?<![\w])0[xX][0-9a-fA-F]+(?![\w])"

HDFS_SESSION_REGEX = r"(blk_-?\d+)"
OPENSTACK_SESSION_REGEX = r"\[instance: ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\]"


@dataclass(frozen=True)
class FormatPreset:
    header_regex: str | None
    masks: tuple[tuple[str, str], ...]
    similarity_threshold: float


PRESETS: dict[str, FormatPreset] = {
    # 081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block blk_3886... terminating
    # With every variable masked, templates of one event only differ in masked values, so a high threshold
    # keeps apart events that differ in one constant word (PacketResponder ... "terminating" vs
    # "Interrupted.": 5 of 6 tokens equal, merged by Drain's usual 0.5).
    "hdfs": FormatPreset(
        header_regex=(
            r"^(?P<date>\d{6}) (?P<time>\d{6}) (?P<pid>\d+) (?P<level>[A-Z]+) (?P<component>[^\s:]+): "
            r"(?P<content>.*)$"
        ),
        masks=(
            ("BLK", r"blk_-?\d+(?:[ \t]+blk_-?\d+)*"),
            ("PATH", PATH),
            ("IP", IP),
            ("NUM", NUM),
        ),
        similarity_threshold=0.9,
    ),
    # nova-api.log.1.2017-05-16_13:53:08 2017-05-16 00:00:00.008 25746 INFO nova.osapi_compute.wsgi.server
    #   [req-38101a0b-... 113d3a99c3da401fbd62cc2caa5b96d2 54fdadf51f95476fb0ed4c7e1d23bd6d - - -] ...
    # The log file name is the first field when it names `.log`: a lookahead checks that and one possessive
    # run takes the field, so no two quantifiers compete for the same characters on any line.
    "openstack": FormatPreset(
        header_regex=(
            r"^(?:(?P<logrecord>(?=\S+?\.log)\S++) )?(?P<date>\d{4}-\d{2}-\d{2}) "
            r"(?P<time>\d{2}:\d{2}:\d{2}(?:\.\d+)?) (?P<pid>\d+) (?P<level>[A-Z]+) (?P<component>\S+) "
            r"(?:\[(?P<context>[^\]]*)\] )?(?P<content>.*)$"
        ),
        masks=(
            ("UUID", UUID),
            ("HEXID", HEXID),
            ("PATH", PATH),
            ("IP", IP),
            ("NUM", NUM),
        ),
        similarity_threshold=0.5,
    ),
    # - 1117838570 2005.06.03 R02-M1-N0-C:J12-U11 2005-06-03-15.42.50.675872 R02-M1-N0-C:J12-U11 RAS KERNEL
    #   INFO instruction cache parity error corrected
    "bgl": FormatPreset(
        header_regex=(
            r"^(?P<label>\S+) (?P<timestamp>\d+) (?P<date>\d{4}\.\d{2}\.\d{2}) (?P<node>\S+) (?P<time>\S+) "
            r"(?P<node_repeat>\S+) (?P<type>\S+) (?P<component>\S+) (?P<level>[A-Z]+) (?P<content>.*)$"
        ),
        masks=(
            ("HEX", HEX),
            ("IP", IP),
            ("CORE", r"(?<![\w.])core\.\d+(?![\w])"),
            ("NUM", NUM),
        ),
        similarity_threshold=0.5,
    ),
    # Jun 14 15:16:01 combo sshd(pam_unix)[19939]: authentication failure; logname= uid=0 rhost=218.188.2.4
    # 2024-03-01T12:00:00.123+00:00 web01 nginx[812]: ...  (RFC 5424-style timestamps too)
    "syslog": FormatPreset(
        header_regex=(
            r"^(?P<timestamp>[A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2}|\d{4}-\d{2}-\d{2}T\S+) (?P<host>\S+) "
            r"(?P<component>[^\s:\[]+)(?:\[(?P<pid>\d+)\])?: (?P<content>.*)$"
        ),
        masks=(
            ("UUID", UUID),
            ("HEX", HEX),
            ("PATH", PATH),
            ("IP", IP),
            ("NUM", NUM),
        ),
        similarity_threshold=0.5,
    ),
    "none": FormatPreset(
        header_regex=None,
        masks=(
            ("UUID", UUID),
            ("IP", IP),
            ("NUM", NUM),
        ),
        similarity_threshold=0.5,
    ),
}


@dataclass(frozen=True)
class ResolvedTemplating:
    """The settings that decide which template a line gets; their fingerprint guards saved state."""

    format: str
    header_regex: str | None
    masks: tuple[tuple[str, str], ...]
    numeric_masks: tuple[str, ...]
    similarity_threshold: float
    depth: int
    max_children: int
    extra_delimiters: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "format": self.format,
            "header_regex": self.header_regex,
            "masks": [list(m) for m in self.masks],
            "numeric_masks": list(self.numeric_masks),
            "similarity_threshold": self.similarity_threshold,
            "depth": self.depth,
            "max_children": self.max_children,
            "extra_delimiters": list(self.extra_delimiters),
        }


def preset(name: str) -> FormatPreset:
    return PRESETS[name]


def resolve(cfg: TemplaterConfig) -> ResolvedTemplating:
    p = PRESETS[cfg.format]
    masks = p.masks if cfg.masks is None else tuple((m.name, m.regex) for m in cfg.masks)
    return ResolvedTemplating(
        format=cfg.format,
        header_regex=cfg.header_regex if cfg.header_regex is not None else p.header_regex,
        masks=masks,
        numeric_masks=tuple(cfg.numeric_masks),
        similarity_threshold=(
            cfg.similarity_threshold if cfg.similarity_threshold is not None else p.similarity_threshold
        ),
        depth=cfg.depth,
        max_children=cfg.max_children,
        extra_delimiters=tuple(cfg.extra_delimiters),
    )
