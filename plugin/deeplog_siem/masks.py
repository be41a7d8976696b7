"""masks: regexes for the kinds of variable values found inside log messages.

Contract: each constant is one regex that matches a whole value of its kind and nothing around it (the
lookarounds keep it from starting or ending inside a word); `BY_KIND` lists them as (mask name, regex) in
the order the templater must try them: the first mask that matches at a position wins, so the specific
kinds (dates, addresses, paths) come before the general ones (NUM, then ID, a word holding digits).
Every regex runs in linear time on any line (tests/test_formats_redos.py) and treats all ASCII digits
alike except where a kind reads a literal digit (`0x`, a leading zero), so the templater's line-shape
cache stays exact. Kinds, never literals of one product's logs: a value is recognised by its shape.
"""

from __future__ import annotations

_MONTH = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*"
_WEEKDAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*"
_CLOCK = r"\d{1,2}:\d{2}(?::\d{2})?(?:[.,]\d+)?"

# "Wed Jun 29 14:44:35 2005", "Jun 29 14:44:35", "Thu, 5 May 2011": a date written with month names.
DATE_TEXT = (
    rf"(?<![\w:])(?:{_WEEKDAY},? +)?(?:{_MONTH} +\d{{1,2}}|\d{{1,2}} +{_MONTH})"
    rf"(?: +\d{{4}})?(?: +{_CLOCK})?(?: +\d{{4}})?(?![\w:])"
)
# 2016-09-28, 2016/09/28, 2005.06.03 and 28/09/2016, with an ISO time and zone attached ("T12:00:00Z"), or
# a time joined by "_" as file names write it ("2017-07-03_16,05,51.031703", commas where ":" cannot be).
DATE = (
    r"(?<![\w.:/-])(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}/\d{1,2}/\d{2,4})"
    r"(?:T\d{1,2}:\d{2}(?::\d{2})?(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?"
    r"|_\d{1,2}[:,.-]\d{2}(?:[:,.-]\d{2})?(?:\.\d+)?)?(?![\w/]|[.:-]\d)"
)
# 14:44:35, 14:44, 14:44:35.123, 00:02 (a clock reading or a duration written as one).
TIME = rf"(?<![\w.:/-]){_CLOCK}(?![\w:]|\.\d)"
UUID = r"(?<![\w-])[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?![\w-])"
URL = r"(?<![\w.+-])[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]+"
EMAIL = r"(?<![\w.+%-])[\w.+%-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w.-])"
MAC = r"(?<![\w:-])[0-9a-fA-F]{2}(?:[:-][0-9a-fA-F]{2}){5}(?![\w:-])"
# An IPv4 address with an optional port; a list of them ("a:p, b:p" or "a:p b:p") is one parameter so
# that messages naming one or several peers share a template.
_IP1 = r"\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?"
IP = rf"(?<![\w.]){_IP1}(?:,?[ \t]+{_IP1})*(?![\w.])"
# A host name of three or more parts with a port (proxy.example.org:8080; "Foo.java:12" is a source
# line, not an address), or a domain name ending in a
# top-level domain, with its port if one follows (mail.example.org, github.com:443, dsl-12.example.NET).
HOSTPORT = r"(?<![\w.@-])[A-Za-z0-9][\w-]*(?:\.[\w-]+){2,}:\d{1,5}(?![\w.:])"
DOMAIN = (
    r"(?<![\w.@/-])(?:[A-Za-z0-9-]+\.)+(?:com|net|org|edu|gov|mil|info|biz|io|[a-z]{2}|[A-Z]{2})"
    r"(?::\d{1,5})?(?![\w.:-])"
)
# An absolute path that starts with a name (so "/10.0.0.1:50010" stays an address).
PATH = r"(?<![\w/])/[A-Za-z_.][^\s]*"
# C:\Windows\... or \\server\share\...
WINPATH = r"(?<![\w\\])(?:[A-Za-z]:|\\\\[\w.$-]+)\\[^\s]*"
HEX = r"(?<![\w])0[xX][0-9a-fA-F]+(?![\w])"
# A hexadecimal word of 6 or more digits that holds both a digit and a letter (a hash, a handle, an id),
# or a zero-padded word of 8 or more (a counter printed at a fixed width, whatever its digits).
HEXWORD = r"(?<![\w.-])(?:(?=[a-fA-F]*\d)(?=\d*[a-fA-F])[0-9a-fA-F]{6,}|0[0-9a-fA-F]{7,})(?![\w-])"
_NUMBER = r"(?<![\w.])\d+(?:\.\d+)?"
_SIZE_UNIT = r" ?(?:[KMGTP]i?B|[kKMGTP]b|bytes?|B)(?![\w])"
# A size, with its restatement in other units when one follows in parentheses ("1190 bytes (1.16 KB)").
SIZE = rf"{_NUMBER}{_SIZE_UNIT}(?: \(\d+(?:\.\d+)?{_SIZE_UNIT}\))?"
# A duration with its unit; "<1 sec" and ">5 s" are durations too.
DURATION = (
    r"(?<![\w.<>])[<>]?\d+(?:\.\d+)? ?(?:ms|us|ns|s|sec|secs|seconds?|mins?|minutes?|h|hrs?|hours?|days?)"
    r"(?![\w])"
)
# A number standing alone (not part of a word, a dotted name, a path or an address), or the value of a
# "key:value" pair.
NUM = r"(?:(?<![\w.:/-])|(?<=[A-Za-z]:))[-+]?\d+(?:\.\d+)?(?![\w/]|[.:]\w)"

# Any other word that holds a digit next to a separator, or two digits apart ("node-12", "broadcast_9",
# "x86_64", "a1b2"): an id, a host, a version, not a word of the message's text. A word with one trailing
# digit ("ssh2", "SOCKS5", "IPv4") names a protocol or a type and stays. Last, so every specific kind
# above keeps its own name.
ID = r"(?<![\w.-])(?=[A-Za-z]*(?:[_.-][A-Za-z_.-]*\d|\d[A-Za-z]*[\d_.-]))[\w.-]*\w"

BY_KIND: tuple[tuple[str, str], ...] = (
    ("DATE", DATE_TEXT),
    ("DATE", DATE),
    ("TIME", TIME),
    ("UUID", UUID),
    ("URL", URL),
    ("EMAIL", EMAIL),
    ("MAC", MAC),
    ("HOST", IP),
    ("HOST", HOSTPORT),
    ("HOST", DOMAIN),
    ("PATH", PATH),
    ("PATH", WINPATH),
    ("HEX", HEX),
    ("HEX", HEXWORD),
    ("SIZE", SIZE),
    ("DURATION", DURATION),
    ("NUM", NUM),
    ("ID", ID),
)
