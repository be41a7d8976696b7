"""preview: what training would make of a sample of the source, computed without writing anything.

Contract: `preview(config, docs) -> Preview` over the source documents `docs` (the caller reads them):
the templater format (the one `auto` would choose, or the configured one) and the share of messages its
header matched; the templates learned on the sample (an in-memory templater, nothing saved) with their
counts; the sessions the configured session settings give and their lengths; the share of documents that
belong to no session; and suggested settings, each a (dotted setting, why) pair. Documents whose message
is not text are counted in `skipped`, never dropped silently.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import Config
from .format_detect import AUTO, FormatChoice, chosen_config
from .sessions import SessionKeyer
from .source import SourceDoc
from .templater import Templater

# Below these the sample says the setting is probably wrong for this source.
_HEADER_OK = 0.9
_SESSIONS_OK = 0.5
_TEMPLATES_PER_DOC_OK = 0.2


@dataclass
class Preview:
    docs: int
    choice: FormatChoice
    configured_format: str
    templates: list[tuple[int, int, str]]  # (key, count, template), most frequent first
    sessions: int
    session_lengths: dict[str, float]  # min, median, mean, max
    no_session: int
    skipped: dict[str, int]
    suggestions: list[tuple[str, str]] = field(default_factory=list)

    @property
    def no_session_share(self) -> float:
        return self.no_session / self.docs if self.docs else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "docs": self.docs,
            "format": self.choice.format,
            "configured_format": self.configured_format,
            "header_share": round(self.choice.share, 4),
            "templates": [{"key": k, "count": c, "template": t} for k, c, t in self.templates],
            "num_templates": len(self.templates),
            "sessions": self.sessions,
            "session_lengths": self.session_lengths,
            "no_session_share": round(self.no_session_share, 4),
            "skipped": self.skipped,
            "suggestions": [{"setting": s, "why": w} for s, w in self.suggestions],
        }


def preview(config: Config, docs: Sequence[SourceDoc]) -> Preview:
    field_name = config.source.message_field
    messages = [d.get(field_name) for d in docs]
    tcfg, choice = chosen_config(config.templater, messages)
    templater = Templater(tcfg)
    events = templater.parse_many(messages, learn=True)
    keyer = SessionKeyer(config.source)
    counts: Counter[int] = Counter()
    lengths: Counter[str] = Counter()
    no_session = 0
    for doc, msg, ev in zip(docs, messages, events, strict=True):
        if ev is not None:
            counts[ev.key] += 1
        sids = keyer.sessions_of(msg if isinstance(msg, str) else "", doc.source)
        if not sids:
            no_session += 1
        for sid in sids:
            lengths[sid] += 1
    # Keys handed out before a value merge count under the key that replaced them, as training reads them.
    merged: Counter[int] = Counter()
    for k, c in counts.items():
        merged[templater.canonical(k)] += c
    templates = [(k, c, templater.vocab.template(k)) for k, c in merged.most_common()]
    ls = sorted(lengths.values())
    summary = (
        {
            "min": ls[0],
            "median": statistics.median(ls),
            "mean": round(statistics.fmean(ls), 2),
            "max": ls[-1],
        }
        if ls
        else {}
    )
    p = Preview(
        docs=len(docs),
        choice=choice,
        configured_format=config.templater.format,
        templates=templates,
        sessions=len(lengths),
        session_lengths=summary,
        no_session=no_session,
        skipped=dict(templater.skipped),
    )
    p.suggestions = _suggest(config, p)
    return p


def _suggest(config: Config, p: Preview) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if not p.docs:
        return [("source.index", "no documents read: check the index name and the time window")]
    if config.templater.format == AUTO:
        out.append(
            (
                f"templater.format: {p.choice.format}",
                "what auto chooses on this sample; training records it in the model",
            )
        )
    elif p.choice.share < _HEADER_OK:
        out.append(
            (
                "templater.format: auto",
                f"the {p.configured_format} header matched only {100 * p.choice.share:.0f}% of the messages",
            )
        )
    if p.no_session_share > _SESSIONS_OK:
        out.append(
            (
                "source.session_regex / source.session_field",
                f"{100 * p.no_session_share:.0f}% of the documents belong to no session: capture the id that "
                "ties one task's lines together (a process id, a request or connection id)",
            )
        )
    mean = p.session_lengths.get("mean", 0)
    if p.sessions and mean < config.model.window:
        out.append(
            (
                f"model.window: {max(1, int(mean))}",
                f"sessions hold {mean} events on average, fewer than the window of {config.model.window}",
            )
        )
    if len(p.templates) > _TEMPLATES_PER_DOC_OK * p.docs:
        out.append(
            (
                "templater.masks",
                f"{len(p.templates)} templates for {p.docs} documents: a kind of value is probably not masked",
            )
        )
    return out
