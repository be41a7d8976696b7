"""urls: what a URL may show when it is printed (logs, errors, command output), and whom it names.

Contract:
- `redact(url) -> str`: the URL with its user information replaced by `***` (`https://***@host:9200`) and
  the value of every query parameter and the fragment by `***`; the scheme, host, port and path stay, so
  the text still says where. A text that is not a URL comes back unchanged.
- `redact_text(text) -> str`: every `scheme://...` URL inside free text (an exception's message) redacted
  the same way, and the query values of a request target standing alone (`url: /path?token=***`); linear
  in the text's length.
- `has_userinfo(url) -> bool`: whether the URL carries a user name or password (what `redact` hides).
- `origin(url) -> (scheme, host, port)`: lowercase scheme and host, the port with the scheme's default
  filled in; what decides whether two URLs reach the same server.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# A URL starts where no scheme character precedes it, so a long run of scheme characters is scanned once;
# punctuation that closes a sentence is not part of it.
_URL = re.compile(r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*+://[^\s'\"<>]+(?<![,.;:)\]])")
# A request target (`/path?query`) standing alone, as HTTP libraries quote it in their errors.
_TARGET = re.compile(r"(?<!\S)(/[^\s?'\"<>]*+)\?([^\s'\"<>]+)(?<![,.;:)\]])")
_DEFAULT_PORTS = {"http": 80, "https": 443}
MASK = "***"


def _without_userinfo(rest: str) -> tuple[bool, str]:
    """(had user information, the part after `scheme://` without it)."""
    # User information ends at an '@'. A password written with a raw '/', '?' or '#' would move the
    # standard authority boundary and show the rest of it, so everything up to the last '@' before the
    # first '/' after the first '@' counts: a path or query holding an '@' hides too much, never too little.
    at = rest.find("@")
    if at == -1:
        return False, rest
    slash = rest.find("/", at)
    cut = rest.rfind("@", 0, len(rest) if slash == -1 else slash)
    return True, rest[cut + 1 :]


def redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    had_userinfo, rest = _without_userinfo(rest)
    end = len(rest)
    for ch in "/?#":
        i = rest.find(ch)
        if i != -1:
            end = min(end, i)
    authority = (MASK + "@" if had_userinfo else "") + rest[:end]
    path, hash_, fragment = rest[end:].partition("#")
    path, qmark, query = path.partition("?")
    if qmark:
        query = _mask_query(query)
    return f"{scheme}://{authority}{path}{qmark}{query}{hash_}{MASK if fragment else ''}"


def _mask_query(query: str) -> str:
    return "&".join(p.partition("=")[0] + "=" + MASK if p else p for p in query.split("&"))


def redact_text(text: str) -> str:
    text = _URL.sub(lambda m: redact(m.group(0)), text)
    return _TARGET.sub(lambda m: f"{m.group(1)}?{_mask_query(m.group(2))}", text)


def has_userinfo(url: str) -> bool:
    _, sep, rest = url.partition("://")
    return bool(sep) and _without_userinfo(rest)[0]


def origin(url: str) -> tuple[str, str, int | None]:
    scheme, sep, rest = url.partition("://")
    parts = urlsplit(f"{scheme}://{_without_userinfo(rest)[1]}" if sep else url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port if port is not None else _DEFAULT_PORTS.get(scheme)
