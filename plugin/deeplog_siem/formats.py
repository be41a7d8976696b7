"""formats: per-format templating presets (header regex, default masks, similarity threshold).

Contract: `preset(name) -> FormatPreset`; `resolve(cfg) -> ResolvedTemplating`, the effective settings the
templater uses once the YAML's overrides (header_regex, masks, similarity_threshold) are applied on top of
the preset of `cfg.format`. An unknown format name raises KeyError (the configuration admits only the names
of PRESETS, and `auto`, which format_detect replaces by one of `AUTO_CANDIDATES` before anything resolves
it). Presets describe families of header layouts (syslog, Java layouts, web server logs, ...) and share the
masks by kind of `masks.BY_KIND`; `hdfs`, `openstack` and `bgl` keep the masks they shipped with, since a
saved model's fingerprint holds their text. Nothing here compiles a pattern: the templater does, and reports a bad one as ConfigError.
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
from .masks import BY_KIND

# The masks of the presets named after one system (hdfs, openstack, bgl) stay exactly as they were: their
# text is part of every saved model's fingerprint. The family presets use masks.BY_KIND.
_IP1 = r"\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?"
IP = rf"(?<![\w.]){_IP1}(?:,?[ \t]+{_IP1})*(?![\w.])"
NUM = r"(?<![\w.:/-])[-+]?\d+(?:\.\d+)?(?![\w/]|[.:]\w)"
PATH = r"(?<![\w/])/[A-Za-z_.][^\s]*"
UUID = r"(?<![\w-])[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?![\w-])"
HEX = r"(?<![\w])0[xX][0-9a-fA-F]+(?![\w])"

# With every kind of value masked, what is left to differ between two messages of one event is mostly a
# word, either one that names the event or one that is a value (a user name). Drain cannot tell them apart,
# so it only generalises a word in very long messages, and the value merge (siblings) folds back the
# positions that take many forms across templates.
KIND_THRESHOLD = 0.95
# A word that names the event takes one or two forms at its position; a value takes many.
MERGE_VALUES = 4

HEXID = r"(?<![\w-])[0-9a-f]{32}(?![\w-])"

HDFS_SESSION_REGEX = r"(blk_-?\d+)"
OPENSTACK_SESSION_REGEX = r"\[instance: ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\]"


@dataclass(frozen=True)
class FormatPreset:
    header_regex: str | None
    masks: tuple[tuple[str, str], ...]
    similarity_threshold: float
    # How many templates differing at one position only make that position a value (0: never merged).
    merge_values: int = 0


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
    # <34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8
    # 2024-03-01T12:00:00.123+00:00 web01 nginx[812]: ...  (RFC 3164 layout with an ISO timestamp)
    "syslog": FormatPreset(
        header_regex=(
            r"^(?:<\d{1,3}>)?(?P<timestamp>[A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2}|\d{4}-\d{2}-\d{2}T\S+) "
            r"(?P<host>\S+) (?P<component>[^\s:\[]+)(?:\[(?P<pid>\d+)\])?(?: \((?P<origin>[^\s()]*)\))?: "
            r"(?P<content>.*)$"
        ),
        masks=BY_KIND,
        similarity_threshold=KIND_THRESHOLD,
        merge_values=MERGE_VALUES,
    ),
    # <165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3"] msg
    "rfc5424": FormatPreset(
        header_regex=(
            r"^<(?P<priority>\d{1,3})>(?P<version>\d{1,2}) (?P<timestamp>\S+) (?P<host>\S+) (?P<component>\S+) (?P<pid>\S+) "
            r"(?P<msgid>\S+) (?P<structured>-|(?:\[[^\]]*\])+)(?: (?P<content>.*))?$"
        ),
        masks=BY_KIND,
        similarity_threshold=KIND_THRESHOLD,
        merge_values=MERGE_VALUES,
    ),
    # Java logging layouts (log4j, logback, java.util.logging's one-line form):
    # 2015-10-18 18:01:47,978 INFO [main] org.apache.hadoop.mapreduce.v2.app.MRAppMaster: Created ...
    # 2015-07-29 17:41:44,747 - INFO  [QuorumPeer[myid=1]/0.0.0.0:2181:FastLeaderElection@774] - Notification ...
    # 17/06/09 20:10:40 INFO executor.CoarseGrainedExecutorBackend: Registered signal handlers ...
    # The thread may hold one level of brackets; the logger name is a dotted word ending in ":" or " -".
    "log4j": FormatPreset(
        header_regex=(
            r"^(?P<timestamp>(?:\d{4}-\d{2}-\d{2}|\d{2}/\d{2}/\d{2})[ T]\d{2}:\d{2}:\d{2}(?:[,.]\d+)?) "
            r"(?:- )?(?P<level>TRACE|DEBUG|INFO|WARN|WARNING|ERROR|FATAL|SEVERE|FINE|FINER|FINEST) +"
            r"(?:\[(?P<thread>[^\[\]]*(?:\[[^\[\]]*\][^\[\]]*)*)\] +)?"
            r"(?:- |(?P<component>[\w$.]+(?:@\d+)?)(?::| -) )?(?P<content>.*)$"
        ),
        masks=BY_KIND,
        similarity_threshold=KIND_THRESHOLD,
        merge_values=MERGE_VALUES,
    ),
    # Web server error logs (Apache httpd 2.2 and 2.4, nginx):
    # [Sun Dec 04 04:47:44 2005] [notice] workerEnv.init() ok /etc/httpd/conf/workers2.properties
    # [Wed Oct 11 14:32:52.123456 2000] [core:error] [pid 35708:tid 4328636416] [client 1.2.3.4:80] File ...
    # 2024/03/01 12:00:00 [error] 812#812: *1 open() "/x" failed (2: No such file or directory), client: ...
    "web_error": FormatPreset(
        header_regex=(
            r"^(?:\[(?P<timestamp>[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2}(?:\.\d+)? \d{4})\] "
            r"\[(?P<level>[^\]\s]+)\]|(?P<date>\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}) \[(?P<nginx_level>[a-z]+)\])"
            r"(?: \[pid (?P<pid>\d+)(?::tid \d+)?\])?(?: (?P<worker>\d+#\d+):)?(?: \[client (?P<client>[^\]]+)\])?"
            r" (?P<content>.*)$"
        ),
        masks=BY_KIND,
        similarity_threshold=KIND_THRESHOLD,
        merge_values=MERGE_VALUES,
    ),
    # Web server access logs (common and combined log formats): the request line, status and size are the
    # content, the client and time the header.
    # 127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326 "-" "Mozilla/4.08"
    "web_access": FormatPreset(
        header_regex=(
            r"^(?P<client>\S+) (?P<ident>\S+) (?P<user>\S+) \[(?P<timestamp>[^\]]+)\] (?P<content>\".*)$"
        ),
        masks=BY_KIND,
        similarity_threshold=KIND_THRESHOLD,
        merge_values=MERGE_VALUES,
    ),
    # Windows servicing and setup logs (CBS.log, DISM, WindowsUpdate.log-like): date time, level, component.
    # 2016-09-28 04:30:30, Info                  CBS    Loaded Servicing Stack v6.1.7601.23505 with Core: ...
    "windows": FormatPreset(
        header_regex=(
            r"^(?P<timestamp>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}), (?P<level>[A-Za-z]+) +"
            r"(?P<component>\S+) +(?P<content>.*)$"
        ),
        masks=BY_KIND,
        similarity_threshold=KIND_THRESHOLD,
        merge_values=MERGE_VALUES,
    ),
    # Android logcat, threadtime format: date time pid tid level tag: message.
    # 03-17 16:13:38.811  1702  2395 D WindowManager: printFreezingDisplayLogsopening app wtoken = ...
    "logcat": FormatPreset(
        header_regex=(
            r"^(?P<timestamp>\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3}) +(?P<pid>\d+) +(?P<tid>\d+) "
            r"(?P<level>[VDIWEFA]) (?P<component>[^:]*): (?P<content>.*)$"
        ),
        masks=BY_KIND,
        similarity_threshold=KIND_THRESHOLD,
        merge_values=MERGE_VALUES,
    ),
    # Pipe-separated records: timestamp|component|[pid|]message.
    # 20171223-22:15:29:606|Step_LSC|30002312|onStandStepChanged 3579
    "pipe": FormatPreset(
        header_regex=(
            r"^(?P<timestamp>\d[\d:.,/ T-]*)\|(?P<component>[^|]*)\|(?:(?P<pid>\d+)\|)?(?P<content>.*)$"
        ),
        masks=BY_KIND,
        similarity_threshold=KIND_THRESHOLD,
        merge_values=MERGE_VALUES,
    ),
    # A bracketed timestamp, then an optional "program - " (proxy, VPN and desktop client logs).
    # [10.30 16:49:06] chrome.exe - proxy.example.org:5070 open through proxy proxy.example.org:5070 HTTPS
    "bracket": FormatPreset(
        header_regex=(
            r"^\[(?P<timestamp>\d[\d:., /T-]*)\] (?:(?P<component>[^\s\[\]]+(?: [^\s\[\]-]\S*)?) - )?"
            r"(?P<content>.*)$"
        ),
        masks=BY_KIND,
        similarity_threshold=KIND_THRESHOLD,
        merge_values=MERGE_VALUES,
    ),
    # Records of a cluster's or a batch system's event store: a few fields (a record id, a node, a component,
    # a state), then the time in Unix seconds, an optional one-digit flag, then the message. At most four fields, tried shortest first,
    # so the timestamp is the first ten-digit field and matching stays linear.
    # 134681 node-246 unix.hw state_change.unavailable 1077804742 1 Component State Change: ...
    "epoch": FormatPreset(
        header_regex=(
            r"^(?:(?P<fields>\S+(?: \S+){0,3}?) )?(?P<timestamp>\d{10}(?:\.\d+)?) (?:(?P<flag>-?\d) )?"
            r"(?P<content>.*)$"
        ),
        masks=BY_KIND,
        similarity_threshold=KIND_THRESHOLD,
        merge_values=MERGE_VALUES,
    ),
    # The generic layout: a date and time, an optional thread or pid, a level, an optional component.
    # 2024-03-01 12:00:00.123 [worker-1] ERROR app.db: connection lost
    # 2024-03-01T12:00:00Z 812 WARN cache: evicting 12 entries
    "generic": FormatPreset(
        header_regex=(
            r"^(?P<timestamp>(?:\d{4}[-/.]\d{2}[-/.]\d{2}|\d{2}[-/.]\d{2}[-/.]\d{2,4}|\d{6,8})[ T-]"
            r"\d{2}:?\d{2}:?\d{2}(?:[.,:]\d+)?(?:Z|[+-]\d{2}:?\d{2})?),? +(?:(?P<pid>\d+) +)?"
            r"(?:\[(?P<thread>[^\]]*)\] +)?"
            r"(?P<level>(?i:TRACE|DEBUG|INFO|NOTICE|WARN|WARNING|ERROR|ERR|CRITICAL|CRIT|FATAL|SEVERE|ALERT|EMERG))"
            r"[:|]? +(?:(?:-|(?P<component>[\w$.@/-]+(?:\[\d+\])?):) )?(?P<content>.*)$"
        ),
        masks=BY_KIND,
        similarity_threshold=KIND_THRESHOLD,
        merge_values=MERGE_VALUES,
    ),
    # The message is already the content (a shipper split the header off) or its format is unknown.
    "none": FormatPreset(
        header_regex=None,
        masks=BY_KIND,
        similarity_threshold=KIND_THRESHOLD,
        merge_values=MERGE_VALUES,
    ),
}

# The formats `auto` chooses among, most specific first: on a tie of header matches the first one wins.
AUTO_CANDIDATES: tuple[str, ...] = (
    "hdfs",
    "openstack",
    "bgl",
    "rfc5424",
    "syslog",
    "web_error",
    "web_access",
    "windows",
    "logcat",
    "log4j",
    "pipe",
    "bracket",
    "epoch",
    "generic",
)


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
    merge_values: int = 0

    def to_dict(self) -> dict[str, object]:
        # merge_values only when on, so that the settings (and fingerprints) of states saved before the
        # value merge existed read the same.
        extra: dict[str, object] = {"merge_values": self.merge_values} if self.merge_values else {}
        return extra | {
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
        merge_values=p.merge_values,
    )
