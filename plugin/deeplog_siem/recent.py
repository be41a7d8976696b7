"""recent: the (window -> key) pairs the detection job scored -> a bounded sample of recent live traffic kept
beside the model versions, and back.

Contract:
- `RecentSample.load(model_dir, vocab, window, capacity)` -> the sample stored in
  `<model.dir>/recent_windows.pt`, or an empty one when there is none, when it was taken under another
  vocabulary (a retrain: its key ids mean other templates) or another window length, or when the file is
  unreadable (logged; it is a sample, never worth failing a run for).
- `offer_scored(windows)`: what the job scored (every pair but UNK ones) goes through `offer`.
- `offer(keys [N, h], targets [N], take [N] bool)`: the pairs with `take` set enter by reservoir sampling with
  a horizon, vectorised (one random draw per pair, one scatter): until `capacity` pairs are held each enters;
  then pair number n (counted from the start, at most `HORIZON` x capacity) replaces a random held pair with
  probability capacity / n. So the sample is uniform over the pairs seen, and once HORIZON x capacity have
  been seen each new pair still enters with probability 1 / HORIZON: the sample covers about the last
  HORIZON x capacity scored windows, the older ones fading out.
- `save(model_dir)`: written atomically (`atomic.atomic_write`), read with weights_only=True.
- `rows()` -> `samples.Rows`: the distinct pairs with how often each was sampled, for the feedback job's
  safety check (an update must not raise the alarm rate on recent live traffic).
Runtime state of the detection job, not a model artifact: one file for the model directory, shared by the
versions of one vocabulary (feedback versions keep their parent's vocabulary, so it carries over them).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .atomic import atomic_write
from .samples import Rows
from .vocab import UNK, Vocabulary
from .windows import Windows

log = logging.getLogger(__name__)

FORMAT = "deeplog-siem/recent-windows"
RECENT_FILE = "recent_windows.pt"
# Once this many times the capacity have been seen, each new pair still enters with probability
# 1 / HORIZON: the sample follows the traffic instead of freezing on what the job saw first.
HORIZON = 8


def vocab_fingerprint(vocab: Vocabulary) -> str:
    """Identifies the key ids' meaning: a retrained model has another vocabulary, its ids other templates."""
    return hashlib.sha256("\x00".join(vocab.templates).encode()).hexdigest()[:16]


@dataclass
class RecentSample:
    capacity: int
    window: int
    vocab_fingerprint: str
    keys: torch.Tensor  # [n, h] int32, n <= capacity
    targets: torch.Tensor  # [n] int32
    seen: int = 0  # pairs offered so far, capped at HORIZON x capacity
    changed: bool = False  # pairs entered since it was loaded (or saved)
    _gen: torch.Generator = field(default_factory=torch.Generator, repr=False)

    @classmethod
    def empty(cls, vocab: Vocabulary, window: int, capacity: int) -> RecentSample:
        return cls(
            capacity,
            window,
            vocab_fingerprint(vocab),
            torch.empty((0, window), dtype=torch.int32),
            torch.empty(0, dtype=torch.int32),
        )

    def __len__(self) -> int:
        return int(self.targets.numel())

    def offer_scored(self, windows: Windows) -> int:
        """Offer every scored window whose key has a template (UNK pairs teach nothing) -> how many entered."""
        return self.offer(windows.keys, windows.targets, windows.targets != UNK)

    def offer(self, keys: torch.Tensor, targets: torch.Tensor, take: torch.Tensor) -> int:
        """Reservoir-sample the pairs (keys [N, h], targets [N]) where take [N] is set -> how many entered."""
        if self.capacity <= 0:
            return 0
        sel = take.nonzero().flatten()  # [m]
        m = int(sel.numel())
        if m == 0:
            return 0
        n0, cap = self.seen, self.capacity
        # Pair j is pair number n0 + j + 1 of the stream; with the horizon its odds stop falling at 1/HORIZON.
        number = torch.clamp(torch.arange(n0 + 1, n0 + m + 1), max=HORIZON * cap)  # [m]
        slot = torch.where(
            number <= cap,
            number - 1,
            (torch.rand(m, generator=self._gen) * number).long(),  # uniform in [0, number)
        )
        take = slot < cap
        slot, src = slot[take], sel[take]
        grow = max(0, min(cap, n0 + m) - len(self))
        if grow:
            self.keys = torch.cat([self.keys, torch.zeros((grow, self.window), dtype=torch.int32)])
            self.targets = torch.cat([self.targets, torch.zeros(grow, dtype=torch.int32)])
        # Several pairs of one batch may draw the same slot: one of them holds it, as if the others had left.
        self.keys[slot] = keys[src].to(torch.int32)
        self.targets[slot] = targets[src].to(torch.int32)
        self.seen = min(n0 + m, HORIZON * cap)
        self.changed = self.changed or bool(src.numel())
        return int(src.numel())

    def rows(self) -> Rows:
        """Distinct (window -> key) pairs [U, h], [U] with their counts [U] in the sample."""
        if len(self) == 0:
            return Rows(
                torch.empty((0, self.window), dtype=torch.long),
                torch.empty(0, dtype=torch.long),
                torch.empty(0),
            )
        both = torch.cat([self.keys, self.targets[:, None]], 1).long()  # [n, h + 1]
        uniq, counts = torch.unique(both, dim=0, return_counts=True)
        return Rows(uniq[:, :-1].contiguous(), uniq[:, -1].contiguous(), counts.float())

    def save(self, model_dir: str | os.PathLike[str]) -> Path:
        p = Path(model_dir) / RECENT_FILE
        body = {
            "format": FORMAT,
            "vocab": self.vocab_fingerprint,
            "window": self.window,
            "seen": self.seen,
            "keys": self.keys,
            "targets": self.targets,
        }
        # Two detection processes (the daemon and a backfill) may save at once: atomic_write gives each its
        # own temporary file.
        with atomic_write(p) as f:
            torch.save(body, f)
        self.changed = False
        return p

    @classmethod
    def load(
        cls, model_dir: str | os.PathLike[str], vocab: Vocabulary, window: int, capacity: int
    ) -> RecentSample:
        p = Path(model_dir) / RECENT_FILE
        out = cls.empty(vocab, window, capacity)
        if not p.is_file():
            return out
        try:
            body = torch.load(p, map_location="cpu", weights_only=True)
            if body.get("format") != FORMAT:
                raise ValueError("not a deeplog-siem sample of recent windows")
            if body["vocab"] != out.vocab_fingerprint or int(body["window"]) != window:
                log.info(
                    "%s was taken under another vocabulary or window (retrained since): started afresh", p
                )
                return out
            keys, targets = body["keys"].to(torch.int32), body["targets"].to(torch.int32)
            if keys.dim() != 2 or keys.shape[1] != window or keys.shape[0] != targets.numel():
                raise ValueError(f"malformed tensors {tuple(keys.shape)}, {tuple(targets.shape)}")
        except Exception as e:  # noqa: BLE001 - a damaged sample is replaced, never fatal
            log.warning("%s: unreadable sample of recent windows (%s): started afresh", p, e)
            return out
        # A smaller capacity than when it was written keeps a random part (the sample stays uniform).
        if keys.shape[0] > capacity:
            pick = torch.randperm(keys.shape[0], generator=out._gen)[:capacity]
            keys, targets = keys[pick], targets[pick]
        out.keys, out.targets = keys.contiguous(), targets.contiguous()
        # A sample that is not full (a larger capacity now) fills up first, as if it had seen only what it holds.
        full = len(out) >= capacity
        out.seen = min(max(int(body.get("seen", 0)), len(out)), HORIZON * capacity) if full else len(out)
        out._gen.manual_seed(out.seen)  # another stream of draws than the last run's
        return out
