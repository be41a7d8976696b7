"""detector: windows of log keys -> per-event verdicts of the log-key model.

Contract: `KeyDetector(model, top_g, device, cache_size, min_probability).score(windows)` -> `KeyScores` with,
for every window (one event, or the end of a session), the 0-based rank and the probability of the actual key,
the top-g candidate keys with their probabilities, `unseen` (the key is UNK: no template matched) and
`anomalous` (rank >= g, or probability < min_probability, or unseen, or `anchored`). The candidate set is DeepLog's top-g,
refined by an optional probability floor: keys the model gives almost no mass are not candidates even when
they rank in the top g (with 30 keys and one near-certain successor, the tail of the top-g is noise). Scoring is batched: identical windows are scored once (`torch.unique`), the
distribution of the next key is cached per window (LRU, bounded by `cache_size`), and the verdict is read
from the distribution, so results do not depend on the cache, on batch sizes or on what else is scored in
the same call. PAD and UNK are never predicted (their probability is 0); EOS is a valid prediction.
`build_windows`/`Windows` (from `keyseq`) turn sessions into windows; `load_anchor(version_dir, model)` reads
a feedback version's anchor.

A model version made by responders' feedback is scored with an `anchor`: the trained model it descends from.
A key that model rejects after a window is accepted by the update only where the update raised its
probability at least `anchor_ratio` times (feedback taught it); otherwise the event stays flagged
(`anchored`). Fine-tuning moves the whole next-key distribution, and a rejected key can enter the top g
because others fell below it, not because anyone marked it: a repeated or missing step would go unseen.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path

import torch

from .artifacts import ANCHOR, KEYMODEL
from .errors import ArtifactError
from .keyseq import Windows, build_windows
from .model import KeyLSTM, load_checkpoint
from .vocab import PAD, UNK

__all__ = ["KeyDetector", "KeyScores", "Windows", "build_windows", "load_anchor"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyScores:
    rank: torch.Tensor  # [N] long: 0 = the most likely key
    prob: torch.Tensor  # [N] float: probability of the actual key
    topk_keys: torch.Tensor  # [N, g] long: most likely keys first
    topk_probs: torch.Tensor  # [N, g] float
    anomalous: torch.Tensor  # [N] bool
    unseen: torch.Tensor  # [N] bool: the actual key is UNK
    # [N] bool: flagged only because the anchor (the trained model) rejects the key and feedback did not
    # raise its probability anchor_ratio times; all False without an anchor.
    anchored: torch.Tensor
    anchor_prob: torch.Tensor  # [N] float: the anchor's probability of the actual key (`prob` without one)

    def __len__(self) -> int:
        return self.rank.numel()


class KeyDetector:
    def __init__(
        self,
        model: KeyLSTM,
        top_g: int,
        device: torch.device | str = "cpu",
        cache_size: int = 100_000,
        chunk_rows: int = 256,
        min_probability: float = 0.0,
        anchor: KeyLSTM | None = None,
        anchor_ratio: float = 2.0,
    ):
        if not 0.0 <= min_probability < 1.0:
            raise ValueError(f"min_probability must be in [0, 1), got {min_probability}")
        self.min_probability = min_probability
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.h, self.vocab_size = model.args.window, model.args.vocab_size
        if anchor is not None and (anchor.args.window, anchor.args.vocab_size) != (self.h, self.vocab_size):
            raise ValueError(
                f"the anchor model has window {anchor.args.window} and {anchor.args.vocab_size} keys, "
                f"the model {self.h} and {self.vocab_size}: not the same lineage"
            )
        self.anchor = anchor.to(self.device).eval() if anchor is not None and anchor_ratio > 0 else None
        self.anchor_ratio = anchor_ratio
        # Cached rows hold the model's distribution, then the anchor's (when there is one).
        self._width = self.vocab_size * (2 if self.anchor is not None else 1)
        self.top_g = min(top_g, self.vocab_size)
        # Every forward pass has exactly chunk_rows rows (the last one padded): BLAS picks kernels, and so
        # rounding, by matrix shape, so a fixed shape makes a window's scores independent of how many
        # windows are scored with it (and of the cache). Small, because with a warm cache most calls
        # have a few hundred new windows or fewer: at 2,048 rows most of the LSTM's work was padding
        # (bench keymodel (a): about 500k -> 680k windows/s at 256; the distinct-window rate is unchanged).
        self.chunk_rows = chunk_rows
        self.cache_size = cache_size
        self._slots: OrderedDict[Hashable, int] = OrderedDict()  # window -> row of _store, LRU order
        self._store = torch.empty((cache_size, self._width))
        self.hits = self.misses = 0
        # Windows are encoded as one int64 (base-V digits) when that fits: unique and hashing are then 1-D.
        self._radix = self.vocab_size ** torch.arange(self.h) if self.vocab_size**self.h < 2**62 else None

    def clear_cache(self) -> None:
        self._slots.clear()
        self.hits = self.misses = 0

    @torch.no_grad()
    def _forward(self, keys: torch.Tensor) -> torch.Tensor:
        """keys [U, h] -> next-key distributions [U, V] (CPU), in fixed-size batches; [U, 2V] with an anchor
        (the model's, then the anchor's)."""
        out, n = [], keys.shape[0]
        padded = torch.full((-(-n // self.chunk_rows) * self.chunk_rows, self.h), PAD, dtype=torch.long)
        padded[:n] = keys
        padded = padded.to(self.device)
        models = [self.model] if self.anchor is None else [self.model, self.anchor]
        for i in range(0, n, self.chunk_rows):
            parts = []
            for m in models:
                logits, _ = m(padded[i : i + self.chunk_rows])  # [chunk_rows, V]
                logits[:, [PAD, UNK]] = float("-inf")
                parts.append(torch.softmax(logits.float(), dim=1).cpu())
            out.append(torch.cat(parts, dim=1))
        return torch.cat(out)[:n] if out else torch.empty((0, self._width))

    def _unique(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[Hashable]]:
        """keys [N, h] -> (unique windows [U, h], inverse [N], hashable id per unique window)."""
        if self._radix is not None:
            codes, inverse = torch.unique(keys @ self._radix, return_inverse=True)
            uniq = codes[:, None] // self._radix % self.vocab_size
            return uniq, inverse, codes.tolist()
        uniq, inverse = torch.unique(keys, dim=0, return_inverse=True)
        return uniq, inverse, [tuple(r) for r in uniq.tolist()]

    def distributions(self, uniq: torch.Tensor, ids: list[Hashable]) -> torch.Tensor:
        """Distributions [U, V] ([U, 2V] with an anchor) for distinct windows, from the cache where possible."""
        if self.cache_size == 0:
            self.misses += len(ids)
            return self._forward(uniq)
        slots = [self._slots.get(i) for i in ids]
        miss = [j for j, s in enumerate(slots) if s is None]
        hit = [j for j, s in enumerate(slots) if s is not None]
        probs = torch.empty((len(ids), self._width))
        if hit:
            hit_slots = [slots[j] for j in hit]
            probs[hit] = self._store[hit_slots]
            for j in hit:
                self._slots.move_to_end(ids[j])
        if miss:
            computed = self._forward(uniq[miss])
            probs[miss] = computed
            # Keep the most recent cache_size of the new windows; evict least recently used entries.
            keep = miss[-self.cache_size :]
            new_slots = []
            for j in keep:
                if len(self._slots) < self.cache_size:
                    slot = len(self._slots)
                else:
                    slot = self._slots.popitem(last=False)[1]
                self._slots[ids[j]] = slot
                new_slots.append(slot)
            self._store[new_slots] = computed[len(miss) - len(keep) :]
        self.hits += len(hit)
        self.misses += len(miss)
        return probs

    def score(self, windows: Windows) -> KeyScores:
        keys, targets = windows.keys, windows.targets
        if keys.shape[1] != self.h:
            raise ValueError(
                f"windows have {keys.shape[1]} keys, the model was trained on windows of {self.h}"
            )
        if keys.shape[0] == 0:
            e = torch.empty(0, dtype=torch.long)
            ek = torch.empty((0, self.top_g), dtype=torch.long)
            return KeyScores(e, e.float(), ek, ek.float(), e.bool(), e.bool(), e.bool(), e.float())
        uniq, inverse, ids = self._unique(keys)
        both = self.distributions(uniq, ids)  # [U, V] or [U, 2V]
        probs = both[:, : self.vocab_size]  # [U, V]
        sorted_probs, order, ranks = _ranked(probs)
        rank = ranks[inverse, targets]
        prob = probs[inverse, targets]
        unseen = targets == UNK
        g = self.top_g
        anomalous = (rank >= g) | (prob < self.min_probability) | unseen
        anchored = torch.zeros_like(anomalous)
        anchor_prob = prob
        if self.anchor is not None:
            aprobs = both[:, self.vocab_size :]  # [U, V]
            anchor_prob = aprobs[inverse, targets]  # [N]
            a_rank = _ranked(aprobs)[2][inverse, targets]  # [N]
            a_rejects = (a_rank >= g) | (anchor_prob < self.min_probability)
            anchored = ~anomalous & a_rejects & (prob < self.anchor_ratio * anchor_prob)
            anomalous = anomalous | anchored
        return KeyScores(
            rank=rank,
            prob=prob,
            topk_keys=order[inverse, :g],
            topk_probs=sorted_probs[inverse, :g],
            anomalous=anomalous,
            unseen=unseen,
            anchored=anchored,
            anchor_prob=anchor_prob,
        )


def _ranked(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """probs [U, V] -> (sorted probs [U, V], keys in that order [U, V], 0-based rank of every key [U, V]).
    A stable sort gives ties a fixed order, so rank < g exactly when the key is among the first g."""
    sorted_probs, order = probs.sort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(probs.shape[1]).expand_as(order))
    return sorted_probs, order, ranks


def load_anchor(path: Path, model: KeyLSTM) -> KeyLSTM | None:
    """The trained key model a feedback version descends from (`anchor.pt`), on `model`'s device; None for
    a trained version. An anchor of another vocabulary size or window is an `ArtifactError` (key ids are
    what both models share; template texts may be generalised since)."""
    if not (path / ANCHOR).is_file():
        return None
    anchor, _, _ = load_checkpoint(path / ANCHOR)
    if (anchor.args.vocab_size, anchor.args.window) != (model.args.vocab_size, model.args.window):
        raise ArtifactError(
            f"{path / ANCHOR}: the anchor model does not match {path / KEYMODEL} (another vocabulary or "
            "window); restore an earlier version (`deeplog-siem model restore`) or retrain"
        )
    return anchor.to(next(model.parameters()).device)
