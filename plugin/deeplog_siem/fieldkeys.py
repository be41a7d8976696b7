"""fieldkeys: a document field that names the event -> log keys, without templating.

Contract:
- `FieldKeys(source_cfg, vocab=None)` is the templater's stand-in when `source.key_field` is set (Windows
  `event.code`, auditd `event.action`): `parse_docs(docs, learn=...)` returns one `ParsedEvent` per
  document, or None for one that is skipped, its reason counted in `skipped`: `no_key` (the key field is
  missing, null or empty) or `bad_key` (an object, a list, or text over `MAX_KEY_CHARS`). Everything read is
  untrusted; nothing raises on a bad document. Each distinct value is one key, for life (`<field>=<value>`
  is its template text); `learn=False` (detection) gives a value not seen in training the key UNK, its
  text the value.
- Numeric parameters come from `source.param_fields`, in that order: `numbers` holds their values as
  floats and `params` their text. A document where one of them is missing or not a finite number keeps its
  key and gets no numbers (so its vector is not its key's: the parameter model leaves it out, counted
  there); it is counted in `stats["param_missing"]`.
- `save(dir)` / `FieldKeys.load(dir, source_cfg)`: one JSON file (`STATE_FILE`), written atomically with a
  checksum; a missing, corrupted or foreign file, or one saved for another key field or other parameter
  fields, raises ArtifactError and nothing is half-loaded.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import SourceConfig
from .errors import ArtifactError, ConfigError
from .source import get_field
from .statefile import read_state, write_state
from .templater import ParsedEvent
from .vocab import NUM_RESERVED, UNK, Vocabulary

log = logging.getLogger(__name__)

STATE_FILE = "fieldkeys.json"
STATE_FORMAT = "deeplog-siem/fieldkeys"
STATE_VERSION = 1
# Longer values are no event name: the output indices keep keywords up to 1024 characters.
MAX_KEY_CHARS = 512


def _text(value: Any) -> str | None:
    """A scalar field value as text; None for an object or a list."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        x = float(value)
    elif isinstance(value, str):
        try:
            x = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return x if math.isfinite(x) else None


class FieldKeys:
    """Log keys read from `source.key_field`, numeric parameters from `source.param_fields`."""

    def __init__(self, source: SourceConfig, vocab: Vocabulary | None = None) -> None:
        if source.key_field is None:
            raise ConfigError("source.key_field: required for keys taken from a field")
        self.key_field = source.key_field
        self.param_fields = tuple(source.param_fields)
        self.vocab = vocab if vocab is not None else Vocabulary()
        self._ids = {t: i for i, t in enumerate(self.vocab.templates[NUM_RESERVED:], NUM_RESERVED)}
        self.skipped: Counter[str] = Counter()
        self.stats: Counter[str] = Counter()

    @property
    def num_templates(self) -> int:
        return len(self._ids)

    def parse_docs(self, docs: Sequence[Mapping[str, Any]], *, learn: bool) -> list[ParsedEvent | None]:
        return [self._one(d, learn) for d in docs]

    def _one(self, doc: Mapping[str, Any], learn: bool) -> ParsedEvent | None:
        raw = get_field(doc, self.key_field)
        if raw is None or raw == "":
            self.skipped["no_key"] += 1
            return None
        value = _text(raw)
        if value is None or len(value) > MAX_KEY_CHARS:
            self.skipped["bad_key"] += 1
            return None
        template = f"{self.key_field}={value}"
        key = self._ids.get(template)
        if key is None:
            if learn:
                key = self._ids[template] = self.vocab.add(template)
            else:
                key, template = UNK, value
        params, numbers = self._params(doc)
        return ParsedEvent(key, template, params, numbers)

    def _params(self, doc: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[float, ...]]:
        if not self.param_fields:
            return (), ()
        raws = [get_field(doc, f) for f in self.param_fields]
        numbers = [_number(r) for r in raws]
        params = tuple(_text(r) or "" for r in raws)
        if any(n is None for n in numbers):
            self.stats["param_missing"] += 1
            return params, ()
        return params, tuple(n for n in numbers if n is not None)

    def state_dict(self) -> dict[str, Any]:
        return {
            "key_field": self.key_field,
            "param_fields": list(self.param_fields),
            "vocab": self.vocab.to_dict(),
        }

    def save(self, directory: Path | str) -> Path:
        path = write_state(
            Path(directory) / STATE_FILE, kind=STATE_FORMAT, version=STATE_VERSION, state=self.state_dict()
        )
        log.info("fieldkeys: saved %d keys of %s to %s", self.num_templates, self.key_field, path)
        return path

    @classmethod
    def load(cls, directory: Path | str, source: SourceConfig) -> FieldKeys:
        path = Path(directory) / STATE_FILE
        state = read_state(
            path,
            kind=STATE_FORMAT,
            version=STATE_VERSION,
            what="field-keys state",
            missing="the model version was not trained with keys from a field (source.key_field); train "
            "again with this configuration",
        )
        try:
            saved = (state["key_field"], tuple(state["param_fields"]))
            vocab = Vocabulary.from_dict(state["vocab"])
        except (KeyError, TypeError) as e:
            raise ArtifactError(f"{path}: malformed ({type(e).__name__}: {e})") from None
        if saved != (source.key_field, tuple(source.param_fields)):
            raise ArtifactError(
                f"{path}: trained with source.key_field {saved[0]!r} and source.param_fields "
                f"{list(saved[1])}, configured {source.key_field!r} and {list(source.param_fields)}; "
                "restore those settings or train again"
            )
        return cls(source, vocab)
