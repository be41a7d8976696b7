"""siblings: templates that differ from each other at one token position only, and when that position holds a
value rather than a word of the event.

Contract: `Siblings(min_values)`; `add(cid, tokens) -> (signature, ids) | None` registers a template and
returns a group to merge once `min_values` templates of one token count differ at one position only (the
signature is their tokens with `<*>` there); `merged(signature, survivor)` records that the group became
one template, `retarget(old, new)` that template `old` was folded into `new`; `absorber(tokens) -> cid |
None` is the merged template a new template belongs to; `forget` drops a template. `to_state()` /
`load_state(data)` hold the merged signatures as plain data, `targets()` the templates they lead to.
`kind_blind_match(template, tokens)`: the positions where `tokens` holds values of another kind than
`template` (and nothing else differs), to widen to `<*>`.

Why: Drain compares a message with a template by the share of equal tokens, so a word naming the event and
a word that is a value (a user name) weigh the same. A threshold strict enough to keep "... HTTPS" apart
from "... SOCKS5" gives each user name its own template. Across templates, though, the two differ: an
event word takes one or two forms at its position, a value takes many. Counting the distinct templates
that differ at one position only tells them apart without knowing any product's words.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

WILDCARD = "<*>"
# The words left besides the value position must still say what happened: a message of a few words that
# differs in one of them is another message, not another value.
MIN_WORDS = 3
_PLACEHOLDER = re.compile(r"<[^<>\s]*>")
_WORD = re.compile(r"[A-Za-z]{2}")

Signature = tuple[str, ...]


class Siblings:
    def __init__(self, min_values: int) -> None:
        self.min_values = min_values
        self._groups: dict[Signature, dict[int, str]] = {}  # cluster id -> its token at the position
        self._merged: dict[Signature, int] = {}

    def absorber(self, tokens: Sequence[str]) -> int | None:
        """The merged template whose `<*>` position alone tells `tokens` apart from it, if any."""
        if not self._merged:
            return None
        for sig, _ in _signatures(tokens):
            cid = self._merged.get(sig)
            if cid is not None:
                return cid
        return None

    def add(self, cid: int, tokens: Sequence[str]) -> tuple[Signature, list[int]] | None:
        found = None
        for sig, value in _signatures(tokens):
            group = self._groups.setdefault(sig, {})
            group[cid] = value
            if found is None and sig not in self._merged and _is_value(group, value, self.min_values):
                found = (sig, list(group))
        return found

    def forget(self, cid: int, tokens: Sequence[str]) -> None:
        for sig, _ in _signatures(tokens):
            group = self._groups.get(sig)
            if group is not None:
                group.pop(cid, None)

    def merged(self, sig: Signature, survivor: int) -> None:
        self._merged[sig] = survivor
        self._groups.pop(sig, None)

    def retarget(self, old: int, new: int) -> None:
        """Template `old` was merged into `new`: what was merged into `old` now belongs to `new`."""
        for sig, cid in self._merged.items():
            if cid == old:
                self._merged[sig] = new

    def targets(self) -> set[int]:
        return set(self._merged.values())

    def to_state(self) -> list[list[object]]:
        return [[cid, list(sig)] for sig, cid in self._merged.items()]

    def load_state(self, data: Sequence[Sequence[object]]) -> None:
        for cid, sig in data:
            self._merged[tuple(str(t) for t in sig)] = int(cid)  # type: ignore[arg-type, call-overload]


def _is_value(group: dict[int, str], value: str, min_values: int) -> bool:
    """Whether the position a group differs at holds a value: it takes many forms; or one of its forms,
    with its masked values read as any text, is another form ("mask=<NUM>" beside "mask=ffffffff", a user
    "<NUM>" beside a user "admin", "(<HOST>)" beside "()"): the values there are of a kind."""
    if len(group) >= min_values:
        return True
    forms = set(group.values())
    if len(forms) < 2:
        return False
    for f in forms:
        if "<" in f:
            rx = _any_value(f)
            if any(o != f and rx.fullmatch(o) for o in forms):
                return True
    return False


def _any_value(form: str) -> re.Pattern[str]:
    parts = _PLACEHOLDER.split(form)
    return re.compile(".*".join(re.escape(p) for p in parts), re.DOTALL)


def _signatures(tokens: Sequence[str]) -> list[tuple[Signature, str]]:
    """`tokens` with each position in turn replaced by `<*>`, with the token it replaced (positions already
    `<*>` give none). None when fewer than `MIN_WORDS` tokens holding a word (outside masked values) are
    left besides the position: what is left would not name an event."""
    t = list(tokens)
    is_word = [_WORD.search(_PLACEHOLDER.sub(" ", tok)) is not None for tok in t]
    words = sum(is_word)
    out = []
    for i, tok in enumerate(t):
        if tok == WILDCARD or words - is_word[i] < MIN_WORDS:
            continue
        t[i] = WILDCARD
        out.append((tuple(t), tok))
        t[i] = tok
    return out


def kind_blind_match(template: Sequence[str], tokens: Sequence[str]) -> list[int] | None:
    """The positions to widen to `<*>` when `tokens` is `template`'s event with values of another kind (a
    number printed in decimal in one message and in hexadecimal in the next: `diff=<NUM>`, `diff=<HEX>`);
    None when the two differ otherwise. `<*>` in the template takes any token."""
    if len(template) != len(tokens):
        return None
    widen = []
    for i, (a, b) in enumerate(zip(template, tokens, strict=True)):
        if a == b or a == WILDCARD:
            continue
        if "<" in a and "<" in b and _PLACEHOLDER.sub("<>", a) == _PLACEHOLDER.sub("<>", b):
            widen.append(i)
            continue
        return None
    return widen
