"""regex_syntax: which ASCII digits each character test of a regular expression accepts.

Contract: `digit_tests(pattern) -> list[frozenset[str]] | None`: for every single-character test in
`pattern` that accepts some ASCII digits and not others (a literal digit, a negated literal digit, a
character class) the set of digits it accepts, in pattern order, wherever the test sits (groups,
alternatives, repeats, lookarounds). Tests that accept every digit (`.`, `\\w`, `\\S`, `\\d`, anchors) or
none (`\\s`, a non-digit literal) tell no digits apart and may be left out. None when the answer cannot be
given: the pattern compares text it captured (back-references, conditionals), it uses a construct this
module does not know, or the interpreter has no regex parser this module can read (then a warning is
logged). A pattern `re` rejects raises `re.error`.

Why: the templater's line-shape cache replaces every digit by the representative of its class, and that is
exact only when no header or mask regex tells two digits of one class apart. Answering that needs the
parsed form of a pattern, which the standard library does not publish: CPython's private `re._parser`
(`sre_parse` before 3.11) and its opcode constants (`re._constants` / `sre_constants`). This is the only
module that reads them: `parse(pattern)` as a sequence of `(opcode, argument)` pairs; LITERAL and
NOT_LITERAL carry a code point, IN a list of (NEGATE | LITERAL | RANGE (lo, hi) | CATEGORY) items, BRANCH
`(None, [subpatterns])`, SUBPATTERN its subpattern last, MAX_REPEAT / MIN_REPEAT / POSSESSIVE_REPEAT
`(min, max, subpattern)`, ASSERT / ASSERT_NOT `(direction, subpattern)`, ATOMIC_GROUP a subpattern.
tests/test_adapters.py pins each of those on small patterns and on every preset's patterns, so a Python
that changes them fails there, naming this file; at run time an unknown shape only turns the cache off.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

_sc: ModuleType | None
_sp: ModuleType | None
try:  # Python >= 3.11
    import re._constants as _sc
    import re._parser as _sp
except ImportError:  # pragma: no cover - Python 3.10, or a Python without the private parser
    try:
        import sre_constants as _sc  # type: ignore[no-redef]
        import sre_parse as _sp  # type: ignore[no-redef]
    except ImportError:
        _sc = _sp = None

_DIGITS = "0123456789"
_ALL_DIGITS = frozenset(_DIGITS)


class _Unsupported(Exception):
    pass


def parser_available() -> bool:
    """Whether this interpreter has the regex parser `digit_tests` reads."""
    return _sp is not None


def digit_tests(pattern: str) -> list[frozenset[str]] | None:
    if _sc is None or _sp is None:
        log.warning("regex_syntax: this Python has no re._parser or sre_parse; digit analysis unavailable")
        return None
    try:
        return _walk(_sp.parse(pattern), _sc)
    except _Unsupported:
        return None
    except (AttributeError, IndexError, TypeError, ValueError) as e:
        log.warning(
            "regex_syntax: the regex parser's output has an unknown shape (%r); digit analysis off", e
        )
        return None


def _walk(parsed: Any, sc: ModuleType) -> list[frozenset[str]]:
    tests: list[frozenset[str]] = []
    word_like = {
        sc.CATEGORY_DIGIT,
        sc.CATEGORY_UNI_DIGIT,
        sc.CATEGORY_WORD,
        sc.CATEGORY_UNI_WORD,
        sc.CATEGORY_NOT_SPACE,
        sc.CATEGORY_UNI_NOT_SPACE,
        sc.CATEGORY_NOT_LINEBREAK,
        sc.CATEGORY_UNI_NOT_LINEBREAK,
    }
    repeats = (sc.MAX_REPEAT, sc.MIN_REPEAT, getattr(sc, "POSSESSIVE_REPEAT", None))
    atomic = getattr(sc, "ATOMIC_GROUP", None)

    def in_set(items: list[tuple[Any, Any]]) -> frozenset[str]:
        acc: set[str] = set()
        negate = False
        for op, av in items:
            if op is sc.NEGATE:
                negate = True
            elif op is sc.LITERAL:
                if chr(av) in _ALL_DIGITS:
                    acc.add(chr(av))
            elif op is sc.RANGE:
                acc.update(d for d in _DIGITS if av[0] <= ord(d) <= av[1])
            elif op is sc.CATEGORY:
                if av in word_like:
                    acc.update(_DIGITS)
            else:
                raise _Unsupported(op)
        return _ALL_DIGITS - acc if negate else frozenset(acc)

    def walk(sub: Any) -> None:
        for op, av in sub:
            if op is sc.LITERAL:
                if chr(av) in _ALL_DIGITS:
                    tests.append(frozenset(chr(av)))
            elif op is sc.NOT_LITERAL:
                if chr(av) in _ALL_DIGITS:
                    tests.append(_ALL_DIGITS - {chr(av)})
            elif op is sc.IN:
                tests.append(in_set(av))
            elif op in (sc.ANY, sc.AT):
                pass  # ANY and anchors (\b uses \w, which holds every digit) treat all digits alike
            elif op is sc.BRANCH:
                for b in av[1]:
                    walk(b)
            elif op is sc.SUBPATTERN:
                walk(av[-1])
            elif op in repeats:
                walk(av[2])
            elif op in (sc.ASSERT, sc.ASSERT_NOT):
                walk(av[1])
            elif op is atomic:
                walk(av)
            else:
                raise _Unsupported(op)

    walk(parsed)
    return tests
