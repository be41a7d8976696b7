"""detector: windows of log keys -> per-event verdicts of the log-key model.

Contract: `KeyDetector(model, top_g, device=, cache_size=, min_probability=).score(windows)` -> `KeyScores` with,
for every window (one event, or the end of a session), the 0-based rank and the probability of the actual key,
the top-g candidate keys with their probabilities, `unseen` (the key is UNK: no template matched) and
`anomalous` (rank >= g, or probability < min_probability, or unseen, or `anchored`) and `rarity`, the share
of normal events at least as unusual (`calibration.KeyCalibration`, or its documented bound without one). The candidate set is
DeepLog's top-g, refined by an optional probability floor: keys the model gives almost no mass are not
candidates even when they rank in the top g (with 30 keys and one near-certain successor, the tail of the
top-g is noise). Scoring is batched: identical windows are scored once (`torch.unique`), the distribution of
the next key is cached per window (LRU, bounded by `cache_size`), and the verdict is read from the
distribution, so results do not depend on the cache, on batch sizes or on what else is scored in the same
call. A window's LSTM pass starts from the state after its first h // 2 keys, computed once per distinct
prefix and kept beside the cache (distinct windows share prefixes, so the LSTM runs over fewer keys and gives
the same distributions). PAD and UNK are never predicted (their probability is 0); EOS is a valid
prediction.
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
from dataclasses import dataclass
from pathlib import Path

import torch

from .artifacts import ANCHOR, KEYMODEL
from .calibration import KeyCalibration, key_rarity
from .errors import ArtifactError
from .model import KeyLSTM, load_checkpoint
from .vocab import PAD, UNK
from .windows import Windows, build_windows

__all__ = ["KeyDetector", "KeyScores", "Windows", "build_windows", "load_anchor"]

log = logging.getLogger(__name__)

# Prefix states kept per model (at most the window cache's size): 1 KB each with the default model (2
# layers x (h, c) x 64 floats), so 8 MB when full.
PREFIX_CAPACITY = 8192


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
    # [N] double: the share of normal events at least as unusual (`calibration`; the risk score's input).
    rarity: torch.Tensor

    def __len__(self) -> int:
        return self.rank.numel()


class KeyDetector:
    def __init__(
        self,
        model: KeyLSTM,
        top_g: int,
        *,
        device: torch.device | str = "cpu",
        cache_size: int = 100_000,
        chunk_rows: int = 256,
        min_probability: float = 0.0,
        anchor: KeyLSTM | None = None,
        anchor_ratio: float = 2.0,
        calibration: KeyCalibration | None = None,
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
        # None: a version trained before calibration existed (`calibration.key_rarity`'s bound).
        self.calibration = calibration
        # Cached rows hold the model's distribution, then the anchor's (when there is one).
        self._width = self.vocab_size * (2 if self.anchor is not None else 1)
        self.top_g = min(top_g, self.vocab_size)
        self.chunk_rows = chunk_rows  # rows of every LSTM pass (see _run)
        # A window runs as a prefix of h // 2 keys, whose LSTM state every window starting with it shares,
        # then the rest of it.
        self.prefix_depth = self.h // 2 if self.h >= 4 else 0
        self._prefixes = [_PrefixStore(min(cache_size, PREFIX_CAPACITY)) for _ in range(2)]
        self.cache_size = cache_size
        # Most keys of a row that one int64 holds as base-V digits (see _unique).
        self._part_width = next(w for w in range(64, 0, -1) if self.vocab_size**w < 2**62)
        self._slots: OrderedDict[int, int] = OrderedDict()  # window -> row of _store, LRU order
        self._store = torch.empty((cache_size, self._width))
        self.hits = self.misses = 0

    @torch.no_grad()
    def _forward(self, keys: torch.Tensor) -> torch.Tensor:
        """keys [U, h] -> next-key distributions [U, V] (CPU); [U, 2V] with an anchor (the model's, then the
        anchor's). The LSTM runs from each window's prefix state (`_prefix_states`) over the rest of it."""
        n, r, d = keys.shape[0], self.chunk_rows, self.prefix_depth
        if n == 0:
            return torch.empty((0, self._width))
        parts = []
        for i, m in enumerate([self.model] if self.anchor is None else [self.model, self.anchor]):
            state = self._prefix_states(i, m, keys[:, :d]) if d else None
            out, _ = self._run(m, keys[:, d:].to(self.device), state)  # [n rounded up to chunk_rows, H]
            probs = []
            for j in range(0, out.shape[0], r):
                logits = m.head(out[j : j + r])  # [chunk_rows, V]
                logits[:, [PAD, UNK]] = float("-inf")
                probs.append(torch.softmax(logits.float(), dim=1).cpu())
            parts.append(torch.cat(probs)[:n])
        return torch.cat(parts, dim=1)

    def _run(
        self, m: KeyLSTM, keys: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """keys [n, t] on the device, from `state` ((h, c) [layers, n, H]) or from the start -> (the top
        layer's output after the last key [n rounded up to chunk_rows, H], the state after it [layers, n, H]).

        Every LSTM pass has exactly chunk_rows rows (the last one padded): BLAS picks kernels, and so
        rounding, by matrix shape, so a fixed shape makes a window's scores independent of how many windows
        are scored with it (and of the caches). Small, because with a warm cache most calls have a few
        hundred new windows or fewer, and a large pass would be mostly padding (BENCHMARKS.md)."""
        n, r = keys.shape[0], self.chunk_rows
        total = -(-n // r) * r
        padded = torch.full((total, keys.shape[1]), PAD, dtype=torch.long, device=self.device)
        padded[:n] = keys
        if state is not None:
            state = (_pad_rows(state[0], total), _pad_rows(state[1], total))
        outs, hs, cs = [], [], []
        for i in range(0, total, r):
            part = (
                None
                if state is None
                else (state[0][:, i : i + r].contiguous(), state[1][:, i : i + r].contiguous())
            )
            out, (h, c) = m.encode(padded[i : i + r], part)
            outs.append(out)
            hs.append(h)
            cs.append(c)
        return torch.cat(outs), (torch.cat(hs, 1)[:, :n], torch.cat(cs, 1)[:, :n])

    def _prefix_states(self, i: int, m: KeyLSTM, prefixes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """prefixes [U, d] on the CPU (the first d keys of distinct windows) -> m's LSTM state after them,
        (h, c) [layers, U, H] on the device. Distinct windows share few distinct prefixes (HDFS dev files:
        13,378 windows, 2,938 prefixes of 5 keys), so each is run once, and kept (bounded) while the cache is
        on. Prefix ids are computed on the CPU: CUDA has no int64 matrix product."""
        uniq, inverse, ids = self._unique(prefixes)
        uniq, inverse = uniq.to(self.device), inverse.to(self.device)
        store = self._prefixes[i]
        slots = torch.tensor(
            [store.slots.get(c, -1) for c in ids], device=self.device
        )  # [P]: slot of the stored state, -1 when not stored
        cached = slots >= 0
        h = torch.empty((m.args.layers, len(ids), m.args.hidden), device=self.device)
        c = torch.empty_like(h)
        if cached.any():
            h[:, cached], c[:, cached] = store.h[:, slots[cached]], store.c[:, slots[cached]]
        if not cached.all():
            miss = (~cached).nonzero().flatten()
            _, (mh, mc) = self._run(m, uniq[miss])
            h[:, miss], c[:, miss] = mh, mc
            store.add([ids[j] for j in miss.tolist()], mh, mc)
        return h[:, inverse], c[:, inverse]

    def _unique(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """keys [N, t] -> (unique rows [U, t], inverse [N], id per unique row: its keys as base-V digits).

        The id is one int64 when V**t fits, which makes unique 1-D. Wider
        rows (a vocabulary of more than 79 keys and windows of 10) are cut into parts that fit, each part
        ranked with a 1-D unique and the ranks combined part by part (every rank is below N, so a pair of
        them fits): torch's unique over rows is several times slower. The id is then the exact Python int."""
        n, t = keys.shape
        width = self._part_width
        if t <= width:
            radix = self.vocab_size ** torch.arange(t)
            codes, inverse = torch.unique(keys @ radix, return_inverse=True)
            uniq = codes[:, None] // radix % self.vocab_size
            return uniq, inverse, codes.tolist()
        radix = self.vocab_size ** torch.arange(width)
        parts = [keys[:, i : i + width] @ radix[: min(width, t - i)] for i in range(0, t, width)]  # [N] each
        inverse = torch.zeros(n, dtype=torch.long)
        for part in parts:
            rank = torch.unique(part, return_inverse=True)[1]
            inverse = torch.unique(inverse * n + rank, return_inverse=True)[1]
        first = torch.empty(int(inverse.max()) + 1 if n else 0, dtype=torch.long)
        first[inverse] = torch.arange(n)  # a row of each distinct window
        base = self.vocab_size**width
        ids = []
        for digits in torch.stack([p[first] for p in parts], 1).tolist():
            code = 0
            for d in reversed(digits):
                code = code * base + d
            ids.append(code)
        return keys[first], inverse, ids

    def distributions(self, uniq: torch.Tensor, ids: list[int]) -> torch.Tensor:
        """Distributions [U, V] ([U, 2V] with an anchor) for distinct windows, from the cache where possible."""
        if self.cache_size == 0:
            self.misses += len(ids)
            return self._forward(uniq)
        # One list -> tensor conversion, then tensor indexing: torch converts a list index element by element.
        slots = torch.tensor([self._slots.get(i, -1) for i in ids])  # [U]: row of _store, -1 when not cached
        cached = slots >= 0
        hit = cached.nonzero().flatten()
        miss_at = (~cached).nonzero().flatten()
        miss = miss_at.tolist()
        probs = torch.empty((len(ids), self._width))
        if len(hit):
            probs[hit] = self._store[slots[hit]]
            move = self._slots.move_to_end
            for j in hit.tolist():
                move(ids[j])
        if miss:
            computed = self._forward(uniq[miss_at])
            probs[miss_at] = computed
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
            self._store[torch.tensor(new_slots)] = computed[len(miss) - len(keep) :]
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
            return KeyScores(
                e, e.float(), ek, ek.float(), e.bool(), e.bool(), e.bool(), e.float(), e.double()
            )
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
        # The calibration describes the trained model; an event flagged only by the anchor is as rare as
        # the anchor finds it.
        rarity = key_rarity(
            self.calibration, targets, torch.where(anchored, anchor_prob, prob), self.vocab_size
        )
        return KeyScores(
            rank=rank,
            prob=prob,
            topk_keys=order[inverse, :g],
            topk_probs=sorted_probs[inverse, :g],
            anomalous=anomalous,
            unseen=unseen,
            anchored=anchored,
            anchor_prob=anchor_prob,
            rarity=rarity,
        )


class _PrefixStore:
    """One model's LSTM states after window prefixes: prefix id -> slot of `h`/`c` [layers, capacity, H].
    Emptied when full rather than evicting one by one: a state is recomputed exactly as it was, and logs
    have few distinct prefixes (the HDFS dev files 2,938). Capacity 0 keeps nothing (cache off)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.slots: dict[int, int] = {}
        self.h = self.c = torch.empty(0)

    def add(self, ids: list[int], h: torch.Tensor, c: torch.Tensor) -> None:
        """ids [k], h and c [layers, k, H]; more than capacity states are not kept."""
        if not 0 < len(ids) <= self.capacity:
            return
        if self.h.shape[1:2] != (self.capacity,):
            self.h = h.new_empty((h.shape[0], self.capacity, h.shape[2]))
            self.c = torch.empty_like(self.h)
        if len(self.slots) + len(ids) > self.capacity:
            self.slots.clear()
        at = list(range(len(self.slots), len(self.slots) + len(ids)))
        self.slots.update(zip(ids, at, strict=True))
        self.h[:, at], self.c[:, at] = h, c


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """x [layers, n, H] -> [layers, rows, H], zeros below."""
    return torch.cat([x, x.new_zeros((x.shape[0], rows - x.shape[1], x.shape[2]))], 1)


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
