"""related: an event's host, message and parameters -> the hosts, users and IP addresses it names (ECS
`related.*`).

Contract: `related_values(host, message, params) -> (hosts, users, ips)`, each a tuple without duplicates in
the order found, at most `LIMIT` values of at most `MAX_LENGTH` characters each. Hosts: the event's host
name. IP addresses: every IPv4 or IPv6 address in the message and the parameters that `ipaddress` accepts
(`10.0.0.1:50010` gives 10.0.0.1), written in its canonical form. Users: the word after `user`, `user=`,
`user:` or `for` ... `from` (sshd's "for invalid user bob from"). What the logs hold is untrusted: linear
regular expressions only, and anything that does not parse is left out, never an error.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence

LIMIT = 16
MAX_LENGTH = 256
_IPV4 = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?![\d.]*\d)")
_IPV6 = re.compile(r"(?<![0-9A-Fa-f:])([0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7})(?![0-9A-Fa-f:])")
_USER = re.compile(
    r"\buser(?:name)?\s*[=:]?\s*([A-Za-z0-9._@-]{1,64})"
    r"|\bfor\s+(?:invalid\s+user\s+)?([A-Za-z0-9._@-]{1,64})\s+from\b",
    re.IGNORECASE,
)
_NOT_USERS = frozenset({"invalid", "unknown", "from", "for", "id", "name"})


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    out: dict[str, None] = {}
    for v in values:
        if v and len(v) <= MAX_LENGTH:
            out.setdefault(v, None)
        if len(out) >= LIMIT:
            break
    return tuple(out)


def _ips(text: str) -> list[str]:
    found = []
    for m in _IPV4.finditer(text):
        try:
            found.append(str(ipaddress.IPv4Address(m.group(1))))
        except ValueError:
            continue
    for m in _IPV6.finditer(text):
        try:
            found.append(str(ipaddress.IPv6Address(m.group(1))))
        except ValueError:
            continue
    return found


def related_values(
    host: str | None, message: str, params: Sequence[object] = ()
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    texts = [message, *(p for p in params if isinstance(p, str))]
    ips = [ip for t in texts for ip in _ips(t)]
    users = [
        u for m in _USER.finditer(message) if (u := m.group(1) or m.group(2)) and u.lower() not in _NOT_USERS
    ]
    return _unique([host] if host else []), _unique(users), _unique(ips)
