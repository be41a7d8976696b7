"""Every shipped preset's regexes run in linear time on crafted lines.

For each regex (a header is matched the way the templater matches it, masks and session regexes are
searched along the line), a family of adversarial lines is built from the pattern's own structure: long
runs of the literals it names and of characters its classes compete for, after prefixes that satisfy the
start of a real line of the format, ending with a character that makes the match fail late. The slowest
of them at 16 KB must cost less than `RATIO` times the preset's whole regex work on a normal line of the
same length, and its cost must grow roughly linearly from 4 KB to 16 KB (a quadratic pattern grows 16x).
"""

from __future__ import annotations

import functools
import gc
import itertools
import re
import statistics
import time
from collections.abc import Callable, Iterator

import pytest

from deeplog_siem.formats import HDFS_SESSION_REGEX, OPENSTACK_SESSION_REGEX, PRESETS

try:  # Python >= 3.11
    import re._constants as sc
    import re._parser as sp
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as sc  # type: ignore[no-redef]
    import sre_parse as sp  # type: ignore[no-redef]

RATIO = 20.0
GROWTH = 8.0  # 16 KB against 4 KB: linear is 4x, quadratic 16x
SCREEN = 2048
SIZES = (4096, 16384)

# A real line of each format (the loghub layouts); its content is what a normal line repeats.
REAL = {
    "hdfs": "081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block "
    "blk_38865049064139660 terminating",
    "openstack": "nova-api.log.1.2017-05-16_13:53:08 2017-05-16 00:00:00.008 25746 INFO "
    "nova.osapi_compute.wsgi.server [req-38101a0b-2096-447d-96ea-a692162415ae "
    "113d3a99c3da401fbd62cc2caa5b96d2 54fdadf51f95476fb0ed4c7e1d23bd6d - - -] 10.11.10.1 "
    '"GET /v2/54fdadf51f95476fb0ed4c7e1d23bd6d/servers/detail HTTP/1.1" status: 200 len: 1893 '
    "time: 0.2477829 [instance: b9000564-fe1a-409b-b8cc-1e88b294cd1d]",
    "bgl": "- 1117955341 2005.06.05 R25-M0-NE-C:J04-U11 2005-06-05-00.09.01.903733 R25-M0-NE-C:J04-U11 "
    "RAS KERNEL INFO CE sym 2, at 0x0b85eee0, mask 0x10 core.2275 172.16.96.116:33569",
    "syslog": "Jun 14 15:16:01 combo sshd(pam_unix)[19939]: authentication failure; logname= uid=0 "
    "euid=0 tty=NODEVssh ruser= rhost=218.188.2.4",
    "rfc5424": "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 "
    'iut="3" eventSource="Application"] An application event log entry from 10.0.0.5:514',
    "log4j": "2015-07-29 17:41:44,747 - INFO  [QuorumPeer[myid=1]/0:0:0:0:0:0:0:0:2181:FastLeaderElection@774] "
    "- Notification time out: 3200 from /10.10.34.19:33425",
    "web_error": "[Sun Dec 04 04:47:44 2005] [notice] workerEnv.init() ok /etc/httpd/conf/workers2.properties",
    "web_access": '127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326 '
    '"http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)"',
    "windows": "2016-09-28 04:30:30, Info                  CBS    Loaded Servicing Stack v6.1.7601.23505 with "
    "Core: C:\\Windows\\winsxs\\amd64_microsoft-windows-servicingstack_31bf3856ad364e35\\cbscore.dll",
    "logcat": "03-17 16:13:38.811  1702  2395 D WindowManager: printFreezingDisplayLogsopening app wtoken = "
    "AppWindowToken{9f4ef63 token=Token{a64f992 ActivityRecord{de9231d u0 com.tencent.qt.qtl/.activity t761}}}",
    "pipe": "20171223-22:15:29:606|Step_LSC|30002312|onStandStepChanged 3579 at 2017-12-23T22:15:29Z",
    "bracket": "[10.30 16:49:06] chrome.exe - proxy.cse.cuhk.edu.hk:5070 close, 1190 bytes (1.16 KB) sent, "
    "lifetime <1 sec",
    "epoch": "134681 node-246 unix.hw state_change.unavailable 1077804742 1 Component State Change: Component "
    '"alt0" is in the unavailable state (HWID=3180)',
    "generic": "2024-03-01 12:00:00.123 [worker-1] ERROR app.db: connection to db-7.example.org:5432 lost "
    "after 30 s, user alice@example.org, session 5f0c2a1e9d",
    "none": "Received block blk_-1608999687919862906 of size 91178 from /10.250.10.6 "
    "id 0b85eee0-1a2b-3c4d-5e6f-0123456789ab at Wed Jun 29 14:44:35 2005, 9.6 KB in 120 ms, "
    "see https://example.org/x?y=1 mac 00:1a:2b:3c:4d:5e hash 9f4ef63a node-12",
}
SESSION_REGEXES = {"hdfs": HDFS_SESSION_REGEX, "openstack": OPENSTACK_SESSION_REGEX}
# Characters the usual classes (\d, \w, \S, \s, [^\]], ...) compete for, and what makes a match fail late.
POOL = " \t.:-_/[]0a9Ax,=\n"
PAIR_POOL = " .:-_/[0a"
ENDINGS = ("", "!", "\n", "\x00")


def _literal_runs(pattern: str) -> set[str]:
    """The runs of literal characters anywhere in the pattern (".log", "blk_", "[instance: ", ...)."""
    runs: set[str] = set()

    def walk(sub) -> None:
        run = ""
        for op, av in sub:
            if op is sc.LITERAL:
                run += chr(av)
                continue
            if run:
                runs.add(run)
                run = ""
            if op is sc.BRANCH:
                for b in av[1]:
                    walk(b)
            elif op is sc.SUBPATTERN:
                walk(av[-1])
            elif op in (sc.MAX_REPEAT, sc.MIN_REPEAT, getattr(sc, "POSSESSIVE_REPEAT", None)):
                walk(av[2])
            elif op in (sc.ASSERT, sc.ASSERT_NOT):
                walk(av[1])
            elif op is getattr(sc, "ATOMIC_GROUP", None):
                walk(av)
        if run:
            runs.add(run)

    walk(sp.parse(pattern))
    return runs


def _units(pattern: str) -> list[str]:
    singles = list(POOL)
    pairs = [a + b for a, b in itertools.product(PAIR_POOL, repeat=2) if a != b]
    literals = sorted(_literal_runs(pattern))
    with_digit = [lit + "1" for lit in literals] + [lit + " " for lit in literals]
    return singles + pairs + literals + with_digit + ["1.1.1.1 ", "blk_1 ", "0x1 "]


def _prefixes(fmt: str, anchored: bool) -> list[str]:
    """Starts of a real line (its first k space-separated fields), so later quantifiers are reached."""
    if not anchored:
        return [""]
    fields = REAL[fmt].split(" ")
    return [""] + [" ".join(fields[:k]) + " " for k in range(1, 10)]


def _crafted(unit: str, prefix: str, ending: str, size: int) -> str:
    body = size - len(prefix) - len(ending)
    return prefix + (unit * (body // len(unit) + 1))[:body] + ending


def _runner(pattern: str, anchored: bool) -> Callable[[str], object]:
    if anchored:  # the templater matches a header from the line's start, with DOTALL
        rx = re.compile(pattern, re.DOTALL)
        return rx.match
    rx = re.compile(pattern)
    return lambda line: sum(1 for _ in rx.finditer(line))


def _batch(fn: Callable[[], object]) -> int:
    """Calls of `fn` that take long enough together to be measured."""
    number = 1
    while True:
        t0 = time.thread_time()
        for _ in range(number):
            fn()
        if time.thread_time() - t0 >= 0.002:
            return number
        number *= 4


def _timings(*fns: Callable[[], object], repeat: int = 9) -> list[list[float]]:
    """Seconds per call of each function in each of `repeat` rounds. Within a round the functions' batches
    follow each other, so a busy moment of the machine weighs on all of them alike."""
    # As timeit does: a collection of the test process's garbage is no part of a regex's cost.
    gc.disable()
    try:
        numbers = [_batch(fn) for fn in fns]
        rounds = []
        for _ in range(repeat):
            row = []
            for fn, number in zip(fns, numbers, strict=True):
                t0 = time.thread_time()
                for _ in range(number):
                    fn()
                row.append((time.thread_time() - t0) / number)
            rounds.append(row)
    finally:
        gc.enable()
    return rounds


def _best(*fns: Callable[[], object]) -> list[float]:
    """Seconds per call of each function: the best of its rounds."""
    return [min(col) for col in zip(*_timings(*fns), strict=True)]


def _normal(fmt: str, size: int) -> str:
    real = REAL[fmt]
    return (real + (" " + real) * (size // len(real) + 1))[:size]


def _preset_work(fmt: str) -> Callable[[str], object]:
    """All of a preset's regex work on one line: header match, then every mask along the line."""
    preset = PRESETS[fmt]
    header = re.compile(preset.header_regex, re.DOTALL) if preset.header_regex else None
    masks = [re.compile(rx) for _, rx in preset.masks]

    def work(line: str) -> int:
        if header is not None:
            header.match(line)
        return sum(1 for rx in masks for _ in rx.finditer(line))

    return work


def _shipped() -> Iterator[tuple[str, str, str, bool]]:
    seen: set[str] = set()  # the family presets share their masks: each is checked once
    for fmt, preset in PRESETS.items():
        if preset.header_regex:
            yield fmt, "header", preset.header_regex, True
        for i, (name, rx) in enumerate(preset.masks):
            if rx not in seen:
                seen.add(rx)
                yield fmt, f"mask {i} {name}", rx, False
        if fmt in SESSION_REGEXES:
            yield fmt, "session", SESSION_REGEXES[fmt], False


def _worst(pattern: str, fmt: str, anchored: bool) -> list[tuple[str, str, str]]:
    """The crafted shapes (unit, prefix, ending) that cost most at the screening size."""
    run = _runner(pattern, anchored)
    timed = []
    for unit, prefix, ending in itertools.product(_units(pattern), _prefixes(fmt, anchored), ENDINGS):
        line = _crafted(unit, prefix, ending, SCREEN)
        t0 = time.thread_time()
        run(line)
        timed.append((time.thread_time() - t0, (unit, prefix, ending)))
    timed.sort(reverse=True)
    return [shape for _, shape in timed[:3]]


@pytest.mark.parametrize(
    "fmt,what,pattern,anchored", list(_shipped()), ids=[f"{f}-{w}" for f, w, _, _ in _shipped()]
)
def test_shipped_regex_is_linear_on_crafted_lines(fmt: str, what: str, pattern: str, anchored: bool) -> None:
    run = _runner(pattern, anchored)
    work = _preset_work(fmt)
    normal = _normal(fmt, SIZES[-1])
    (normal_time,) = _best(lambda: work(normal))
    assert len(normal) == SIZES[-1]
    for unit, prefix, ending in _worst(pattern, fmt, anchored):
        small, large = (_crafted(unit, prefix, ending, n) for n in SIZES)
        assert len(large) == SIZES[-1]
        rounds = _timings(functools.partial(run, small), functools.partial(run, large))
        t_small, t_large = (min(col) for col in zip(*rounds, strict=True))
        # Growth: the median over rounds of the 16 KB time over the 4 KB time measured just before it.
        growth = statistics.median(large_t / small_t for small_t, large_t in rounds)
        shape = f"{fmt} {what}: {prefix!r} + {unit!r}* + {ending!r}"
        assert t_large < RATIO * normal_time, (
            f"{shape}: {t_large:.6f} s at 16 KB, a normal line's whole regex work {normal_time:.6f} s"
        )
        assert growth < GROWTH, (
            f"{shape}: {t_small:.6f} s at 4 KB -> {t_large:.6f} s at 16 KB, {growth:.1f}x (not linear)"
        )


def test_normal_lines_still_match_the_header() -> None:
    """The crafted-line bound is only meaningful if the normal lines take the header's normal path."""
    for fmt, preset in PRESETS.items():
        if preset.header_regex:
            m = re.compile(preset.header_regex, re.DOTALL).match(_normal(fmt, SIZES[-1]))
            assert m is not None and len(m.group("content")) > SIZES[-1] // 2, fmt
