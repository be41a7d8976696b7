"""detector: windows of log keys -> per-event verdicts of the log-key model.

Contract: `KeyDetector(model, top_g, device, cache_size, min_probability).score(windows)` -> `KeyScores` with,
for every window (one event, or the end of a session), the 0-based rank and the probability of the actual key,
the top-g candidate keys with their probabilities, `unseen` (the key is UNK: no template matched) and
`anomalous` (rank >= g, or probability < min_probability, or unseen). The candidate set is DeepLog's top-g,
refined by an optional probability floor: keys the model gives almost no mass are not candidates even when
they rank in the top g (with 30 keys and one near-certain successor, the tail of the top-g is noise). Scoring is batched: identical windows are scored once (`torch.unique`), the
distribution of the next key is cached per window (LRU, bounded by `cache_size`), and the verdict is read
from the distribution, so results do not depend on the cache, on batch sizes or on what else is scored in
the same call. PAD and UNK are never predicted (their probability is 0); EOS is a valid prediction.
`build_windows`/`Windows` (from `keyseq`) turn sessions into windows.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import torch

from .keyseq import Windows, build_windows
from .model import KeyLSTM
from .vocab import PAD, UNK

__all__ = ["KeyDetector", "KeyScores", "Windows", "build_windows"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyScores:
    rank: torch.Tensor  # [N] long: 0 = the most likely key
    prob: torch.Tensor  # [N] float: probability of the actual key
    topk_keys: torch.Tensor  # [N, g] long: most likely keys first
    topk_probs: torch.Tensor  # [N, g] float
    anomalous: torch.Tensor  # [N] bool
    unseen: torch.Tensor  # [N] bool: the actual key is UNK

    def __len__(self) -> int:
        return self.rank.numel()


class KeyDetector:
    def __init__(
        self,
        model: KeyLSTM,
        top_g: int,
        device: torch.device | str = "cpu",
        cache_size: int = 100_000,
        chunk_rows: int = 2048,
        min_probability: float = 0.0,
    ):
        if not 0.0 <= min_probability < 1.0:
            raise ValueError(f"min_probability must be in [0, 1), got {min_probability}")
        self.min_probability = min_probability
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.h, self.vocab_size = model.args.window, model.args.vocab_size
        self.top_g = min(top_g, self.vocab_size)
        # Every forward pass has exactly chunk_rows rows (the last one padded): BLAS picks kernels, and so
        # rounding, by matrix shape, so a fixed shape makes a window's scores independent of how many
        # windows are scored with it (and of the cache).
        self.chunk_rows = chunk_rows
        self.cache_size = cache_size
        self._slots: OrderedDict[Hashable, int] = OrderedDict()  # window -> row of _store, LRU order
        self._store = torch.empty((cache_size, self.vocab_size))
        self.hits = self.misses = 0
        # Windows are encoded as one int64 (base-V digits) when that fits: unique and hashing are then 1-D.
        self._radix = self.vocab_size ** torch.arange(self.h) if self.vocab_size**self.h < 2**62 else None

    def clear_cache(self) -> None:
        self._slots.clear()
        self.hits = self.misses = 0

    @torch.no_grad()
    def _forward(self, keys: torch.Tensor) -> torch.Tensor:
        """keys [U, h] -> next-key distributions [U, V] (CPU), in fixed-size batches."""
        out, n = [], keys.shape[0]
        padded = torch.full((-(-n // self.chunk_rows) * self.chunk_rows, self.h), PAD, dtype=torch.long)
        padded[:n] = keys
        padded = padded.to(self.device)
        for i in range(0, n, self.chunk_rows):
            logits, _ = self.model(padded[i : i + self.chunk_rows])  # [chunk_rows, V]
            logits[:, [PAD, UNK]] = float("-inf")
            out.append(torch.softmax(logits.float(), dim=1).cpu())
        return torch.cat(out)[:n] if out else torch.empty((0, self.vocab_size))

    def _unique(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[Hashable]]:
        """keys [N, h] -> (unique windows [U, h], inverse [N], hashable id per unique window)."""
        if self._radix is not None:
            codes, inverse = torch.unique(keys @ self._radix, return_inverse=True)
            uniq = codes[:, None] // self._radix % self.vocab_size
            return uniq, inverse, codes.tolist()
        uniq, inverse = torch.unique(keys, dim=0, return_inverse=True)
        return uniq, inverse, [tuple(r) for r in uniq.tolist()]

    def distributions(self, uniq: torch.Tensor, ids: list[Hashable]) -> torch.Tensor:
        """Distributions [U, V] for distinct windows, from the cache where possible."""
        if self.cache_size == 0:
            self.misses += len(ids)
            return self._forward(uniq)
        slots = [self._slots.get(i) for i in ids]
        miss = [j for j, s in enumerate(slots) if s is None]
        hit = [j for j, s in enumerate(slots) if s is not None]
        probs = torch.empty((len(ids), self.vocab_size))
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
            return KeyScores(e, e.float(), ek, ek.float(), e.bool(), e.bool())
        uniq, inverse, ids = self._unique(keys)
        probs = self.distributions(uniq, ids)  # [U, V]
        # A stable sort gives ties a fixed order, so rank < g exactly when the key is in topk_keys.
        sorted_probs, order = probs.sort(dim=1, descending=True, stable=True)  # [U, V]
        ranks = torch.empty_like(order).scatter_(1, order, torch.arange(self.vocab_size).expand_as(order))
        rank = ranks[inverse, targets]
        prob = probs[inverse, targets]
        unseen = targets == UNK
        g = self.top_g
        return KeyScores(
            rank=rank,
            prob=prob,
            topk_keys=order[inverse, :g],
            topk_probs=sorted_probs[inverse, :g],
            anomalous=(rank >= g) | (prob < self.min_probability) | unseen,
            unseen=unseen,
        )
