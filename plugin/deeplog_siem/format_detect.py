"""format_detect: `templater.format: auto`, the preset whose header matches most lines of a sample.

Contract: `detect_format(messages, *, min_share=...) -> FormatChoice`: the candidate preset
(formats.AUTO_CANDIDATES, most specific first) whose header regex matches the largest share of the sample's
text messages; on a tie the earlier candidate wins. When no header matches at least `min_share` of them the
messages are taken as content already (a shipper split the header off) and the choice is `none`. Messages
that are not text, or blank, are not part of the sample (counted in `FormatChoice.ignored`).
`chosen_config(cfg, messages) -> (TemplaterConfig, FormatChoice)`: `cfg` with `format` set to the choice
when it says `auto`, unchanged (with the share its header matches) otherwise.
`config_for_source(cfg, source, message_field=..., start=..., end=...)`: the same on the first
`SAMPLE_SIZE` documents of the source in that window (read only when `cfg.format` is `auto`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from .config import TemplaterConfig
from .formats import AUTO_CANDIDATES, PRESETS
from .source import Source

log = logging.getLogger(__name__)

AUTO = "auto"
# Below this share of matched lines a header is an accident of a few lines, not the sample's format.
MIN_SHARE = 0.5
SAMPLE_SIZE = 2000


@dataclass(frozen=True)
class FormatChoice:
    format: str  # the preset chosen
    share: float  # share of the sampled messages its header matched (1.0 for `none`: all are content)
    sampled: int  # text messages looked at
    ignored: int = 0  # messages that were not text or were blank
    shares: dict[str, float] = field(default_factory=dict)  # every candidate's share, for reports


def _compiled() -> list[tuple[str, re.Pattern[str]]]:
    out = []
    for name in AUTO_CANDIDATES:
        rx = PRESETS[name].header_regex
        if rx:
            out.append((name, re.compile(rx, re.DOTALL)))
    return out


def detect_format(messages: Iterable[Any], *, min_share: float = MIN_SHARE) -> FormatChoice:
    texts: list[str] = []
    ignored = 0
    for m in messages:
        if isinstance(m, str) and m.strip():
            texts.append(m)
        else:
            ignored += 1
    if not texts:
        return FormatChoice("none", 1.0, 0, ignored)
    shares: dict[str, float] = {}
    for name, rx in _compiled():
        hits = sum(1 for t in texts if rx.match(t) is not None)
        shares[name] = hits / len(texts)
    best = max(shares, key=lambda n: shares[n])  # max keeps the first of equal shares
    if shares[best] < min_share:
        return FormatChoice("none", 1.0, len(texts), ignored, shares)
    return FormatChoice(best, shares[best], len(texts), ignored, shares)


def header_share(fmt: str, messages: Iterable[Any], header_regex: str | None = None) -> float:
    """Share of the text messages the header (`header_regex`, else preset `fmt`'s) matches (1.0 when there
    is none)."""
    rx = header_regex if header_regex is not None else PRESETS[fmt].header_regex
    texts = [m for m in messages if isinstance(m, str) and m.strip()]
    if not rx or not texts:
        return 1.0
    c = re.compile(rx, re.DOTALL)
    return sum(1 for t in texts if c.match(t) is not None) / len(texts)


def chosen_config(cfg: TemplaterConfig, messages: Iterable[Any]) -> tuple[TemplaterConfig, FormatChoice]:
    sample = list(messages)
    if cfg.format != AUTO:
        texts = sum(1 for m in sample if isinstance(m, str) and m.strip())
        share = header_share(cfg.format, sample, cfg.header_regex)
        return cfg, FormatChoice(cfg.format, share, texts, len(sample) - texts)
    choice = detect_format(sample)
    log.info(
        "templater: format auto chose %s (header matched %.1f%% of %d sampled messages)",
        choice.format,
        100 * choice.share,
        choice.sampled,
    )
    return replace(cfg, format=choice.format), choice


def config_for_source(
    cfg: TemplaterConfig,
    source: Source,
    *,
    message_field: str,
    start: str | None = None,
    end: str | None = None,
) -> tuple[TemplaterConfig, FormatChoice | None]:
    """`cfg` with an `auto` format chosen from the source's first documents; `cfg` and None otherwise."""
    if cfg.format != AUTO:
        return cfg, None
    sample: list[Any] = []
    for page in source.pages(start=start, end=end, limit=SAMPLE_SIZE):
        sample.extend(doc.get(message_field) for doc in page)
    return chosen_config(cfg, sample)
