"""A tiny synthetic workflow shared by the model/detector tests: ids 3..9 stand for log keys."""

from __future__ import annotations

import random

from deeplog_siem.vocab import Vocabulary

A, B, C, D, E, F, G = range(3, 10)


def vocabulary() -> Vocabulary:
    v = Vocabulary()
    for name in "ABCDEFG":
        v.add(f"event {name} <*>")
    return v


def workflow(rng: random.Random) -> list[int]:
    """open, 1-3 read/ack rounds, close, and sometimes a cleanup step before the final report."""
    s = [A, B]
    for _ in range(rng.randint(1, 3)):
        s += [C, D]
    s += [E, F] if rng.random() < 0.8 else [E, G, F]
    return s


def sessions(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [workflow(rng) for _ in range(n)]
