"""carry: key ids of one model version's vocabulary -> the ids of the same templates in another's, and what
feedback taught a version, translated that way.

Contract:
- `Translation(source, target)` maps key ids by template text (PAD, UNK and EOS to themselves); an id whose
  template the target lacks, or that is outside the source vocabulary, has no translation.
  `pairs(keys [N, h], targets [N], window) -> (keys [N, window], targets [N], ok [N] bool)`: windows are
  cut or left-padded to `window`; where `ok` is False a key of the pair has no translation (its keys and
  target are then meaningless).
- `carried_pairs(meta, translation, window) -> (Pairs, dropped)`: the (window -> key) pairs a version's
  feedback lineage keeps (`feedback.lineage_of`), in the target vocabulary; pairs that cannot be translated
  are dropped and counted.
- `carried_scales(version_dir, translation) -> (scales, dropped)`: the version's parameter-threshold
  widenings (`paramfeedback`), each (previous key, key) series translated; untranslatable series dropped and
  counted.
A retraining mines its templates afresh, so the same template usually gets another id: these translations
let the retrained version keep the feedback of the version it replaces and be compared with it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from . import paramfeedback
from .feedback import Pairs, lineage_of
from .vocab import NUM_RESERVED, PAD, Vocabulary

log = logging.getLogger(__name__)


class Translation:
    def __init__(self, source: Vocabulary, target: Vocabulary) -> None:
        index = {t: i for i, t in enumerate(target.templates) if i >= NUM_RESERVED}
        table = [i if i < NUM_RESERVED else index.get(t, -1) for i, t in enumerate(source.templates)]
        self.table = torch.tensor(table, dtype=torch.long)

    def ids(self, keys: torch.Tensor) -> torch.Tensor:
        """Key ids -> translated ids, -1 where there is none."""
        keys = keys.long()
        known = (keys >= 0) & (keys < self.table.numel())
        out = torch.full_like(keys, -1)
        out[known] = self.table[keys[known]]
        return out

    def pairs(
        self, keys: torch.Tensor, targets: torch.Tensor, window: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k, t = self.ids(keys), self.ids(targets)
        h = k.shape[1]
        if h > window:
            k = k[:, h - window :]
        elif h < window:
            k = torch.cat([torch.full((k.shape[0], window - h), PAD, dtype=torch.long), k], 1)
        ok = (k >= 0).all(1) & (t >= 0)
        return k.clamp(min=0), t.clamp(min=0), ok


def carried_pairs(meta: dict[str, Any], translation: Translation, window: int) -> tuple[Pairs, int]:
    kept = (lineage_of(meta) or {}).get("pairs", [])
    if not kept:
        return Pairs(torch.empty((0, window), dtype=torch.long), torch.empty(0, dtype=torch.long)), 0
    keys = torch.tensor([p[0] for p in kept], dtype=torch.long)
    targets = torch.tensor([p[1] for p in kept], dtype=torch.long)
    k, t, ok = translation.pairs(keys, targets, window)
    dropped = int((~ok).sum())
    if dropped:
        log.warning("%s feedback pair(s) use templates the retrained vocabulary lacks: not carried", dropped)
    return Pairs(k[ok], t[ok]), dropped


def carried_scales(version_dir: Path, translation: Translation) -> tuple[paramfeedback.Scales, int]:
    scales = paramfeedback.load(version_dir)
    out: paramfeedback.Scales = {}
    dropped = 0
    for (prev, key), scale in scales.items():
        p, k = translation.ids(torch.tensor([prev, key])).tolist()
        if p < 0 or k < 0:
            dropped += 1
            continue
        out[(p, k)] = max(out.get((p, k), 1.0), scale)
    if dropped:
        log.warning("%s widened parameter series use templates the retrained vocabulary lacks", dropped)
    return out, dropped
