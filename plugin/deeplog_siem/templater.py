"""templater: raw log message -> ParsedEvent (stable log key, template, parameters, numeric vector).

Contract:
- `Templater(cfg, vocab=None)`; `parse(message, learn=...)`, `parse_many(messages, learn=...)` return one
  `ParsedEvent` per message, or None for a message that is skipped (its reason counted in `skipped`:
  "empty", "not_string", "binary"). Nothing raises on bad input. Bytes are decoded as UTF-8; undecodable
  bytes are replaced and counted in `stats["invalid_utf8"]`; lone surrogates in a string (broken UTF-16
  that a JSON escape or a shipper left) are replaced by U+FFFD on entry and counted per message in
  `stats["invalid_unicode"]`, so templates, parameters and the saved state are valid text; messages longer
  than `max_message_bytes` are truncated at a character boundary, counted in `stats["truncated"]` and still
  parsed.
- Only the content matched by the format's header regex (named group `content`) is templated.
- Keys are stable: one Drain3 cluster <-> one vocabulary id for life. When Drain3 generalises a template the
  id stays and `Vocabulary.rename` records old and new text. With the value merge on (`merge_values`, the
  family presets) templates that differ only where a value goes are folded into the oldest one: its id
  stays, the others lead to it through `aliases` (saved with the state; `canonical(key)`), and a merge
  never folds two keys that the templater was given or loaded with. Keys handed out while learning are
  read through `canonical` by whatever kept them. `learn=False` only matches known templates
  (drain3 `match`); a message that matches none gets key UNK, its masked content as template text.
- `params`: the raw text of each parameter of the template, left to right: every masked value (<NUM>, <IP>,
  ...) and every token Drain3 turned into <*>. `numbers`: the values of the parameters whose mask is in
  `numeric_masks`, as floats; their count is fixed per template (`numeric_labels(key)` names them).
- `save(dir)` / `Templater.load(dir, cfg)`: one JSON file, written atomically; a missing, corrupted or
  incompatible file raises ArtifactError and nothing is half-loaded. Drain3's parse tree and clusters go
  into it as plain data (drain_state), not as drain3's own jsonpickle snapshot, so loading runs no code
  named in the file and the format does not follow drain3's class layout.

Speed. Two bounded caches sit in front of Drain3:
- L2, masked content -> (key, template): saves Drain3's tree search.
- L1, line *shape* -> event layout (key, template, slices of the parameters in the line). The shape is the
  line with every ASCII digit replaced by a representative digit, computed for a whole page with one
  `str.translate`. It is exact, not a heuristic: the header regex and masks are checked (on their parsed
  form, through regex_syntax) to treat the digits of a class alike, so two lines of one shape get the same
  header split and the same mask spans; a layout is cached only when no digit is left outside the masks, so
  both lines give Drain3 the same masked content. A hit costs a dict lookup and C-level slicing. When a
  pattern cannot be analysed (a back-reference, or an interpreter whose regex parser regex_syntax cannot
  read) the L1 cache is off and every line takes the slower path, with the same results.
Both caches are cleared whenever the template tree changes (a template created or generalised), so a cached
answer is always the one the current tree gives. Known difference from calling Drain3 directly with
`learn=True`: a message whose masked content is cached does not reach Drain3 again, so it neither bumps the
cluster size nor is re-matched against clusters created since it was cached (the cache is cleared then).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import operator
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from drain3.drain import LogCluster
from drain3.template_miner import TemplateMiner
from drain3.template_miner_config import TemplateMinerConfig

from .config import TemplaterConfig
from .drain_state import DRAIN3_VERSION, ClusterState, DrainState, export_drain, remove_cluster, restore_drain
from .errors import ArtifactError, ConfigError
from .formats import PRESETS, ResolvedTemplating, resolve
from .regex_syntax import digit_tests
from .siblings import Siblings, kind_blind_match
from .statefile import read_state, write_state
from .vocab import NUM_RESERVED, UNK, Vocabulary

log = logging.getLogger(__name__)

STATE_FILE = "templater.json"
STATE_FORMAT = "deeplog-siem/templater"
STATE_VERSION = 1
WILDCARD = "<*>"
_DIGITS = "0123456789"
_ASCII_DIGIT = re.compile(r"[0-9]")
# Control characters other than tab/newline/carriage return: a message made of many is not text.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TOKEN = re.compile(r"\S+")
# A surrogate code point is never text on its own: JSON escapes and shippers that cut a pair leave them.
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class ParsedEvent:
    key: int  # vocabulary id; UNK when no known template matches (match-only mode)
    template: str  # the key's template text (for UNK: the masked message)
    params: tuple[str, ...]  # raw text of every parameter, left to right (kept for the anomaly document)
    numbers: tuple[float, ...]  # values of the numeric-mask parameters; fixed length per template
    truncated: bool = False  # the message was cut to max_message_bytes before templating


# The generated __init__ of a frozen dataclass goes through object.__setattr__ per field; the slot
# descriptors are cheaper and this runs once per parsed line.
_new = object.__new__
_set_key = ParsedEvent.key.__set__  # type: ignore[attr-defined]
_set_template = ParsedEvent.template.__set__  # type: ignore[attr-defined]
_set_params = ParsedEvent.params.__set__  # type: ignore[attr-defined]
_set_numbers = ParsedEvent.numbers.__set__  # type: ignore[attr-defined]
_set_truncated = ParsedEvent.truncated.__set__  # type: ignore[attr-defined]


def _event(
    key: int, template: str, params: tuple[str, ...], numbers: tuple[float, ...], trunc: bool
) -> ParsedEvent:
    ev = _new(ParsedEvent)
    _set_key(ev, key)
    _set_template(ev, template)
    _set_params(ev, params)
    _set_numbers(ev, numbers)
    _set_truncated(ev, trunc)
    return ev


def _empty_tuple(_: str) -> tuple[()]:
    return ()


def _getter(slices: Sequence[slice]) -> Callable[[str], tuple[str, ...]]:
    """A C-level function line -> tuple of the substrings at `slices`."""
    if not slices:
        return _empty_tuple
    if len(slices) == 1:
        (s,) = slices
        return lambda line: (line[s],)
    return operator.itemgetter(*slices)


def _safe_float(v: str) -> float:
    try:
        return float(v)
    except ValueError:
        return math.nan


def _number_getter(slices: Sequence[slice], safe: bool) -> Callable[[str], tuple[float, ...]]:
    if not slices:
        return _empty_tuple
    conv = _safe_float if safe else float
    if len(slices) == 1:
        (s,) = slices
        return lambda line: (conv(line[s]),)
    get = _getter(slices)
    return lambda line: tuple(map(conv, get(line)))


# ------------------------------------------------------------------------------ digit-shape analysis


def _shape_table(patterns: Sequence[str], literals: Sequence[str]) -> dict[int, int] | None:
    """A translate table mapping each ASCII digit to the representative of its class (digits no pattern
    tells apart), or None when the shape cache cannot be exact for these patterns."""
    tests: list[frozenset[str]] = []
    for p in patterns:
        t = digit_tests(p)
        if t is None:
            return None
        tests.extend(t)
    for lit in literals:
        tests.extend(frozenset(c) for c in lit if c in _DIGITS)
    classes: dict[tuple[bool, ...], str] = {}
    table: dict[int, int] = {}
    for d in _DIGITS:
        sig = tuple(d in t for t in tests)
        table[ord(d)] = ord(classes.setdefault(sig, d))
    return table


def _relocate(rx: str, index: int, offset: int) -> str:
    """`rx` made safe to embed as alternative `index` of the combined mask regex after `offset` groups:
    its named groups get unique names and numeric back-references are shifted."""
    rx = re.sub(r"\(\?P<([A-Za-z_][A-Za-z0-9_]*)>", rf"(?P<_m{index}_\1>", rx)
    rx = re.sub(r"\(\?P=([A-Za-z_][A-Za-z0-9_]*)\)", rf"(?P=_m{index}_\1)", rx)
    return re.sub(
        r"(?<!\\)((?:\\\\)*)\\([1-9][0-9]?)", lambda m: f"{m.group(1)}\\{int(m.group(2)) + offset}", rx
    )


# ----------------------------------------------------------------------------------------- templater


@dataclass(frozen=True, slots=True)
class _Layout:
    """What a line shape resolves to: the event minus the per-line values, or a skip reason."""

    key: int
    template: str
    params: Callable[[str], tuple[str, ...]]
    numbers: Callable[[str], tuple[float, ...]]
    skip: str | None = None


def _skip_layout(reason: str) -> _Layout:
    return _Layout(UNK, "", _empty_tuple, _empty_tuple, reason)


class Templater:
    """One Drain3 TemplateMiner behind a header splitter, a one-pass masker and two caches."""

    def __init__(self, cfg: TemplaterConfig, vocab: Vocabulary | None = None) -> None:
        if cfg.format == "auto":
            raise ConfigError(
                "templater.format: auto is chosen from a sample of the source when training "
                "(format_detect.chosen_config) or read from the trained model, not used as a format itself"
            )
        self.cfg = cfg
        self.settings: ResolvedTemplating = resolve(cfg)
        s = self.settings
        self.vocab = vocab if vocab is not None else Vocabulary()
        self.skipped: Counter[str] = Counter()
        self.stats: Counter[str] = Counter()
        self._cluster_key: dict[int, int] = {}
        # Vocabulary entries from a given vocabulary that no cluster owns yet: reused on an exact match.
        self._unowned: dict[str, int] = {
            t: i for i, t in enumerate(self.vocab.templates[NUM_RESERVED:], NUM_RESERVED)
        }
        # Keys a model may have been trained on: a value merge never folds two of them into one.
        self._trained = len(self.vocab)
        # Merged-away key -> the key that replaced it (kept in the saved state).
        self.aliases: dict[int, int] = {}
        self._siblings = Siblings(s.merge_values) if s.merge_values else None

        try:
            self._header = re.compile(s.header_regex, re.DOTALL) if s.header_regex else None
            names = [n for n, _ in s.masks]
            parts = []
            groups = 0
            for i, (_, rx) in enumerate(s.masks):
                parts.append(f"(?P<_m{i}>{_relocate(rx, i, groups + 1)})")
                groups += 1 + re.compile(rx).groups
            self._masker = re.compile("|".join(parts)) if parts else None
        except re.error as e:
            raise ConfigError(f"templater: cannot combine the header regex and masks: {e}") from None
        if self._header is not None and "content" not in self._header.groupindex:
            raise ConfigError("templater.header_regex: must have a named group (?P<content>...)")
        self._mask_names = {f"_m{i}": n for i, n in enumerate(names)}
        self._numeric = frozenset(s.numeric_masks)
        self._placeholder = re.compile(
            "|".join(re.escape(f"<{n}>") for n in dict.fromkeys(names)) or r"(?!x)x"
        )

        mc = TemplateMinerConfig()
        mc.drain_sim_th = s.similarity_threshold
        mc.drain_depth = s.depth
        mc.drain_max_children = s.max_children
        mc.drain_extra_delimiters = list(s.extra_delimiters)
        mc.masking_instructions = []  # masking happens here, in one pass that also yields the values
        mc.parametrize_numeric_tokens = True
        self.miner = TemplateMiner(persistence_handler=None, config=mc)

        patterns = [p for p in (s.header_regex, *(rx for _, rx in s.masks)) if p]
        self._shape = _shape_table(patterns, s.extra_delimiters)
        if self._shape is None:
            log.info("templater: masks/header not digit-blind; line-shape cache disabled")
        self._cache_size = cfg.cache_size
        self._l1: dict[str, _Layout] = {}  # line shape -> layout (learned keys only)
        self._l1_unk: dict[str, _Layout] = {}  # line shape -> UNK layout (match-only mode)
        self._l2: dict[str, tuple[int | None, int, str]] = {}  # masked content -> (cluster id, key, template)
        self._fast_max_chars = cfg.max_message_bytes // 4  # 4 bytes per char at most in UTF-8

    # ------------------------------------------------------------------------------------- public

    def parse(self, message: Any, *, learn: bool) -> ParsedEvent | None:
        return self.parse_many((message,), learn=learn)[0]

    def parse_many(self, messages: Sequence[Any], *, learn: bool) -> list[ParsedEvent | None]:
        n = len(messages)
        if n == 0:
            return []
        self.stats["messages"] += n
        shape = self._shape
        if shape is None or self._cache_size == 0:
            return [self._parse_one(m, learn) for m in messages]
        try:
            page = "\n".join(messages)
        except TypeError:  # something other than str in the page
            return [self._parse_one(m, learn) for m in messages]
        if not page.isascii() and _SURROGATE.search(page):
            messages = [self._valid_unicode(m) for m in messages]
            page = "\n".join(messages)
        if page.count("\n") != n - 1 or "\x00" in page or max(map(len, messages)) > self._fast_max_chars:
            return [self._parse_one(m, learn) for m in messages]

        shapes = page.translate(shape).split("\n")
        l1get = self._l1.get
        unkget = None if learn else self._l1_unk.get
        out: list[ParsedEvent | None] = []
        append = out.append
        misses = 0
        for msg, sh, lay in zip(messages, shapes, map(l1get, shapes), strict=True):
            if lay is None and unkget is not None:
                lay = unkget(sh)
                if lay is not None:
                    self.stats["unk"] += 1
            if lay is None:
                misses += 1
                append(self._parse_text(msg, False, learn, sh))
            elif lay.skip is not None:
                self.skipped[lay.skip] += 1
                append(None)
            else:
                append(_event(lay.key, lay.template, lay.params(msg), lay.numbers(msg), False))
        self.stats["l1_hits"] += n - misses
        return out

    def canonical(self, key: int) -> int:
        """The key that `key` stands for now: the survivor when the value merge folded it into another.
        Keys returned while learning may be folded later; whatever kept them reads them through this."""
        return self.aliases.get(key, key)

    def numeric_labels(self, key: int) -> tuple[str, ...]:
        """Names of the numeric dimensions of `key`, in order: the word before each numeric parameter
        ("size" in "... size <NUM>"), else the mask name. Fixed for a given template text."""
        labels = []
        prev = ""
        for tok in self.vocab.template(key).split():
            for m in self._placeholder.finditer(tok):
                name = tok[m.start() + 1 : m.end() - 1]
                if name in self._numeric:
                    before = tok[: m.start()].strip(":=/ ")
                    labels.append(before or prev or name)
            if not self._placeholder.fullmatch(tok) and tok != WILDCARD:
                prev = tok.strip(":=/,")
        return tuple(labels)

    def header_fields(self, message: str) -> dict[str, str]:
        """The header regex's named groups other than content (level, component, ...); {} if none."""
        if self._header is None or not isinstance(message, str):
            return {}
        m = self._header.match(message)
        if m is None:
            return {}
        return {k: v for k, v in m.groupdict().items() if k != "content" and v is not None}

    @property
    def num_templates(self) -> int:
        return len(self._cluster_key)

    def templates(self) -> dict[int, str]:
        """Key id -> current template text of every learned key."""
        return {k: self.vocab.template(k) for k in self._cluster_key.values()}

    def clear_caches(self) -> None:
        self._l1.clear()
        self._l1_unk.clear()
        self._l2.clear()

    # ------------------------------------------------------------------------------- slow path

    def _valid_unicode(self, text: str) -> str:
        """`text` with each lone surrogate replaced by U+FFFD, counted per message: templates, parameters and
        the state file must be text that encodes as UTF-8."""
        if text.isascii():
            return text
        clean, n = _SURROGATE.subn("\ufffd", text)
        if n:
            self.stats["invalid_unicode"] += 1
        return clean

    def _parse_one(self, message: Any, learn: bool) -> ParsedEvent | None:
        if isinstance(message, str):
            text = self._valid_unicode(message)
        elif isinstance(message, (bytes, bytearray, memoryview)):
            raw = bytes(message)
            if b"\x00" in raw:
                self.skipped["binary"] += 1
                return None
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                self.stats["invalid_utf8"] += 1
                text = raw.decode("utf-8", errors="replace")
                if text.count("\ufffd") * 4 > len(text):  # mostly undecodable: not UTF-8 text
                    self.skipped["binary"] += 1
                    return None
        else:
            self.skipped["not_string"] += 1
            return None
        truncated = False
        if len(text) > self._fast_max_chars:
            encoded = text.encode("utf-8", errors="surrogatepass")
            if len(encoded) > self.cfg.max_message_bytes:
                text = encoded[: self.cfg.max_message_bytes].decode("utf-8", errors="ignore")
                truncated = True
                self.stats["truncated"] += 1
        shape = None
        if self._shape is not None and self._cache_size and "\n" not in text and not truncated:
            shape = text.translate(self._shape)
            lay = self._l1.get(shape) or (None if learn else self._l1_unk.get(shape))
            if lay is not None:
                self.stats["l1_hits"] += 1
                if lay.skip is not None:
                    self.skipped[lay.skip] += 1
                    return None
                if lay.key == UNK:
                    self.stats["unk"] += 1
                return _event(lay.key, lay.template, lay.params(text), lay.numbers(text), False)
        return self._parse_text(text, truncated, learn, shape)

    def _parse_text(self, text: str, truncated: bool, learn: bool, shape: str | None) -> ParsedEvent | None:
        """Template one decoded message; caches its layout under `shape` when that is exact."""
        self.stats["l1_misses"] += 1
        if not text or text.isspace():
            return self._skip(shape, "empty")
        if "\x00" in text or len(_CONTROL.findall(text)) * 10 > len(text):
            return self._skip(shape, "binary")

        c0, c1 = 0, len(text)
        if self._header is not None:
            hm = self._header.match(text)
            if hm is not None:
                c0, c1 = hm.span("content")
            else:
                self.stats["no_header"] += 1
        content = text[c0:c1]

        # One masking pass: the masked content and, per mask, its span in `content` and in `masked`.
        pieces: list[str] = []
        spans: list[tuple[int, int, int, int, str]] = []  # (content start, end, masked start, end, name)
        pos = mpos = 0
        digit_outside = False
        if self._masker is not None:
            for m in self._masker.finditer(content):
                a, b = m.span()
                if a == b:
                    continue
                lit = content[pos:a]
                if not digit_outside and _ASCII_DIGIT.search(lit):
                    digit_outside = True
                pieces.append(lit)
                mpos += a - pos
                name = self._mask_names[m.lastgroup]  # type: ignore[index]
                ph = f"<{name}>"
                pieces.append(ph)
                spans.append((a, b, mpos, mpos + len(ph), name))
                mpos += len(ph)
                pos = b
        lit = content[pos:]
        if not digit_outside and _ASCII_DIGIT.search(lit):
            digit_outside = True
        pieces.append(lit)
        masked = "".join(pieces)
        if not masked.strip():
            return self._skip(shape, "empty")

        cid, key, template = self._lookup(masked, learn)
        if cid is None:
            # Unseen in match-only mode: UNK, with every masked value as a parameter.
            self.stats["unk"] += 1
            slices = [slice(c0 + a, c0 + b) for a, b, _, _, _ in spans]
            lay = _Layout(UNK, " ".join(masked.split()), _getter(slices), _empty_tuple)
            if shape is not None and not digit_outside and self._cache_size:
                self._put(self._l1_unk, shape, lay)
            return _event(UNK, lay.template, lay.params(text), (), truncated)

        param_slices, num_slices = self._param_slices(masked, spans, template, c0)
        pget = _getter(param_slices)
        nvals = _getter(num_slices)(text)
        safe = False
        try:
            numbers = tuple(map(float, nvals))
        except ValueError:
            safe = True
            numbers = tuple(map(_safe_float, nvals))
        if shape is not None and not digit_outside and self._cache_size:
            self._put(self._l1, shape, _Layout(key, template, pget, _number_getter(num_slices, safe)))
        return _event(key, template, pget(text), numbers, truncated)

    def _skip(self, shape: str | None, reason: str) -> None:
        self.skipped[reason] += 1
        if shape is not None and self._cache_size:
            self._put(self._l1, shape, _skip_layout(reason))
        return None

    def _lookup(self, masked: str, learn: bool) -> tuple[int | None, int, str]:
        hit = self._l2.get(masked)
        if hit is not None and (hit[0] is not None or not learn):
            return hit
        drain = self.miner.drain
        if learn:
            cluster, change = drain.add_log_message(masked)
            cid, key = self._on_learned(cluster, change)
            res: tuple[int | None, int, str] = (cid, key, self.vocab.templates[key])
        else:
            # "fallback": a linear search among same-length clusters when the tree walk finds nothing,
            # so a known template is not reported as unseen; it runs once per distinct masked content.
            cluster = drain.match(masked, full_search_strategy="fallback")
            if cluster is None or cluster.cluster_id not in self._cluster_key:
                res = (None, UNK, "")
            else:
                key = self._cluster_key[cluster.cluster_id]
                res = (cluster.cluster_id, key, self.vocab.templates[key])
        if self._cache_size:
            self._put(self._l2, masked, res)
        return res

    def _on_learned(self, cluster: LogCluster, change: str) -> tuple[int, int]:
        template = cluster.get_template()
        cid = cluster.cluster_id
        if change == "cluster_created":
            if self._siblings is not None:
                into = self._siblings.absorber(cluster.log_template_tokens)
                if into is None:
                    into = self._kind_blind(cluster)
                if into is not None:
                    # One more value at a merged template's value position: that template's key.
                    remove_cluster(self.miner.drain, cid)
                    self.miner.drain.id_to_cluster[into].size += cluster.size
                    self.stats["templates_absorbed"] += 1
                    return into, self._cluster_key[into]
            key = self._unowned.pop(template, None)
            if key is None:
                key = self.vocab.add(template)
            self._cluster_key[cid] = key
            self.stats["templates_created"] += 1
            self.clear_caches()
            log.debug("templater: new key %s: %s", key, template)
            if self._siblings is not None:
                group = self._siblings.add(cid, cluster.log_template_tokens)
                if group is not None:
                    return self._merge(*group, cid)
        else:
            key = self._cluster_key[cid]
            if change == "cluster_template_changed":
                log.info("templater: key %s generalised: %r -> %r", key, self.vocab.templates[key], template)
                self.vocab.rename(key, template)
                self.stats["templates_changed"] += 1
                self.clear_caches()
                if self._siblings is not None:
                    self._siblings.add(cid, cluster.log_template_tokens)
        return cid, key

    def _kind_blind(self, cluster: LogCluster) -> int | None:
        """A template of the new cluster's event whose values there are of another kind: widened to `<*>`
        at those positions, its cluster id."""
        drain = self.miner.drain
        tokens = cluster.log_template_tokens
        for cid in drain.get_clusters_ids_for_seq_len(len(tokens)):
            other = drain.id_to_cluster.get(cid)
            if other is None or cid == cluster.cluster_id:
                continue
            widen = kind_blind_match(other.log_template_tokens, tokens)
            if widen is None:
                continue
            if widen:
                new = list(other.log_template_tokens)
                for i in widen:
                    new[i] = WILDCARD
                self._siblings.forget(cid, other.log_template_tokens)  # type: ignore[union-attr]
                other.log_template_tokens = new
                key = self._cluster_key[cid]
                self.vocab.rename(key, other.get_template())
                self._siblings.add(cid, new)  # type: ignore[union-attr]
                self.stats["templates_changed"] += 1
                self.clear_caches()
            return cid
        return None

    def _merge(self, sig: tuple[str, ...], ids: list[int], cid: int) -> tuple[int, int]:
        """Fold the templates `ids` (differing only where `sig` has a `<*>`) into one with that `<*>`;
        returns the (cluster id, key) that `cid` maps to afterwards."""
        drain = self.miner.drain
        members = [i for i in ids if i in drain.id_to_cluster and _one_apart(drain.id_to_cluster[i], sig)]
        trained = [i for i in members if self._cluster_key[i] < self._trained]
        if len(members) < 2 or len(trained) > 1:
            return cid, self._cluster_key[cid]
        survivor = trained[0] if trained else min(members)
        skey = self._cluster_key[survivor]
        kept = drain.id_to_cluster[survivor]
        for i in members:
            if i == survivor:
                continue
            gone = drain.id_to_cluster[i]
            self._siblings.forget(i, gone.log_template_tokens)  # type: ignore[union-attr]
            kept.size += gone.size
            remove_cluster(drain, i)
            old = self._cluster_key.pop(i)
            for k, v in self.aliases.items():
                if v == old:
                    self.aliases[k] = skey
            self.aliases[old] = skey
            self._siblings.retarget(i, survivor)  # type: ignore[union-attr]
        self._siblings.forget(survivor, kept.log_template_tokens)  # type: ignore[union-attr]
        kept.log_template_tokens = list(sig)
        template = kept.get_template()
        log.info("templater: keys of %s merged into %s: %r", len(members) - 1, skey, template)
        self.vocab.rename(skey, template)
        self._siblings.merged(sig, survivor)  # type: ignore[union-attr]
        self._siblings.add(survivor, kept.log_template_tokens)  # type: ignore[union-attr]
        self.stats["templates_merged"] += len(members) - 1
        self.clear_caches()
        return survivor, skey

    def _param_slices(
        self, masked: str, spans: list[tuple[int, int, int, int, str]], template: str, c0: int
    ) -> tuple[list[slice], list[slice]]:
        """Slices (in line coordinates) of the parameters and of the numeric parameters."""
        norm = masked
        for d in self.settings.extra_delimiters:
            norm = norm.replace(d, " " * len(d))  # same tokens as Drain3's split, offsets kept
        toks = [m.span() for m in _TOKEN.finditer(norm)]
        ttoks = template.split(" ")
        params: list[slice] = []
        numbers: list[slice] = []
        if len(toks) != len(ttoks):
            self.stats["param_mismatch"] += 1
            return [slice(c0 + a, c0 + b) for a, b, _, _, _ in spans], []

        def to_content(mp: int) -> int:
            # masked offset -> content offset, through the spans before it
            shift = 0
            for a, b, ma, mb, _ in spans:
                if mp >= mb:
                    shift = (b - a) - (mb - ma) + shift
                elif mp > ma:
                    return a  # inside a placeholder: its value's start
                else:
                    break
            return mp + shift

        si = 0
        for (ta, tb), tt in zip(toks, ttoks, strict=True):
            while si < len(spans) and spans[si][3] <= ta:
                si += 1
            if tt == WILDCARD:
                params.append(slice(c0 + to_content(ta), c0 + to_content(tb)))
                while si < len(spans) and spans[si][2] < tb:
                    si += 1
                continue
            while si < len(spans) and spans[si][2] < tb:
                a, b, _, _, name = spans[si]
                sl = slice(c0 + a, c0 + b)
                params.append(sl)
                if name in self._numeric:
                    numbers.append(sl)
                si += 1
        return params, numbers

    def _put(self, cache: dict[Any, Any], key: Any, value: Any) -> None:
        if len(cache) >= self._cache_size:
            # Drop the older half (dicts keep insertion order): amortised O(1), no per-hit bookkeeping.
            for k in list(cache)[: max(1, len(cache) // 2)]:
                del cache[k]
            self.stats["cache_evictions"] += 1
        cache[key] = value

    # ------------------------------------------------------------------------------ persistence

    def fingerprint(self) -> str:
        blob = json.dumps(self.settings.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def state_dict(self) -> dict[str, Any]:
        exported = export_drain(self.miner.drain)
        return {
            "settings": self.settings.to_dict(),
            "fingerprint": self.fingerprint(),
            "drain3_version": DRAIN3_VERSION,
            "clusters_counter": exported.clusters_counter,
            "clusters": [
                [c.cluster_id, self._cluster_key[c.cluster_id], c.size, list(c.tokens)]
                for c in exported.clusters
            ],
            "tree": exported.tree,
            "vocab": self.vocab.to_dict(),
        } | self._merge_state()

    def _merge_state(self) -> dict[str, Any]:
        # Only with the value merge on, so that states saved without it stay byte for byte as they were.
        if self._siblings is None:
            return {}
        return {
            "aliases": sorted([k, v] for k, v in self.aliases.items()),
            "merged": self._siblings.to_state(),
        }

    def save(self, directory: Path | str) -> Path:
        """Write the state to `directory/templater.json` atomically; returns the file's path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = write_state(
            directory / STATE_FILE, kind=STATE_FORMAT, version=STATE_VERSION, state=self.state_dict()
        )
        log.info("templater: saved %d templates to %s", len(self._cluster_key), path)
        return path

    @classmethod
    def load(cls, directory: Path | str, cfg: TemplaterConfig) -> Templater:
        path = Path(directory) / STATE_FILE
        state = read_state(
            path,
            kind=STATE_FORMAT,
            version=STATE_VERSION,
            what="templater state",
            missing="train first, or point model.dir at the artifacts",
        )
        return cls.from_state(state, cfg, source=str(path))

    @classmethod
    def from_state(cls, state: Any, cfg: TemplaterConfig, source: str = "templater state") -> Templater:
        """Rebuild a templater from `state_dict()`; everything is checked before anything is kept."""
        try:
            vocab = Vocabulary.from_dict(state["vocab"])
            if cfg.format == "auto":
                # The format training chose is part of the model: detection uses it, not a new guess.
                saved_format = state["settings"]["format"]
                if saved_format not in PRESETS:
                    raise ValueError(f"unknown saved format {saved_format!r}")
                cfg = replace(cfg, format=saved_format)
            t = cls(cfg, vocab)
            if state["fingerprint"] != t.fingerprint():
                saved = state.get("settings", {})
                now = t.settings.to_dict()
                diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
                raise ArtifactError(
                    f"{source}: built with different templater settings ({', '.join(diff) or 'unknown'}); "
                    "restore those settings or retrain"
                )
            clusters: list[ClusterState] = []
            cluster_key: dict[int, int] = {}
            for cid, key, size, tokens in state["clusters"]:
                cid, key = int(cid), int(key)
                if not NUM_RESERVED <= key < len(vocab):
                    raise ValueError(f"cluster {cid} maps to key {key}, outside the vocabulary")
                c = ClusterState(cid, int(size), tuple(str(x) for x in tokens))
                if c.template != vocab.templates[key]:
                    raise ValueError(f"cluster {cid} template differs from vocabulary key {key}")
                clusters.append(c)
                cluster_key[cid] = key
            if len(set(cluster_key.values())) != len(cluster_key):
                raise ValueError("two clusters share one key")
            saved = DrainState(int(state["clusters_counter"]), tuple(clusters), state["tree"])
            live = set(cluster_key.values())
            aliases = {int(k): int(v) for k, v in state.get("aliases", [])}
            for k, v in aliases.items():
                if not NUM_RESERVED <= k < len(vocab) or k in live or v not in live:
                    raise ValueError(f"alias {k} -> {v} does not lead from a merged key to a live one")
            if t._siblings is not None:
                t._siblings.load_state(state.get("merged", []))
                if not t._siblings.targets() <= set(cluster_key):
                    raise ValueError("a merged template names an unknown cluster")
                for c in clusters:
                    t._siblings.add(c.cluster_id, c.tokens)
            restore_drain(t.miner.drain, saved)  # checks the tree and counter before changing anything
        except ArtifactError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ArtifactError(f"{source}: malformed ({type(e).__name__}: {e})") from None
        t._cluster_key = cluster_key
        t.aliases = aliases
        owned = set(cluster_key.values()) | set(aliases)
        t._unowned = {tp: i for i, tp in enumerate(vocab.templates) if i >= NUM_RESERVED and i not in owned}
        return t


def _one_apart(cluster: LogCluster, sig: tuple[str, ...]) -> bool:
    """Whether the cluster's tokens equal `sig` but at one position, where `sig` has `<*>`."""
    tokens = cluster.log_template_tokens
    if len(tokens) != len(sig):
        return False
    diff = [i for i, (a, b) in enumerate(zip(tokens, sig, strict=True)) if a != b]
    return len(diff) == 1 and sig[diff[0]] == WILDCARD
