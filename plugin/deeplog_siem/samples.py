"""samples: normal training sessions -> the normal windows stored with a model version, and back.

Contract: `build_normal_sample(sessions, model_cfg, replay_windows, heldout_windows)` -> `NormalSample`:
distinct (window [h] -> next key) pairs with their counts, from the sessions the model trained on (`replay`,
mixed into feedback fine-tuning so the model does not forget) and from its validation sessions (`heldout`,
never a gradient: the feedback job's safety check). Each part keeps at most its cap of distinct windows,
drawn by frequency with a seeded generator. `save(path)` (atomically) / `NormalSample.load(path)` write and
read one file (`normal_sample.pt` in a version directory) with `torch.load(weights_only=True)`, or
`ArtifactError`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .atomic import atomic_write
from .config import ModelConfig
from .errors import ArtifactError
from .model import unique_rows, validation_split

FORMAT = "deeplog-siem/normal-sample"
NORMAL_SAMPLE = "normal_sample.pt"


@dataclass(frozen=True)
class Rows:
    keys: torch.Tensor  # [U, h] long
    targets: torch.Tensor  # [U] long
    counts: torch.Tensor  # [U] float: how often the pair occurred

    def __len__(self) -> int:
        return int(self.targets.numel())


@dataclass(frozen=True)
class NormalSample:
    replay: Rows
    heldout: Rows
    heldout_source: str  # "validation" (sessions the model never trained on) or "training" (none held out)

    def save(self, path: str | os.PathLike[str]) -> Path:
        p = Path(path)
        body = {"format": FORMAT, "heldout_source": self.heldout_source}
        for part in ("replay", "heldout"):
            rows = getattr(self, part)
            body.update(
                {f"{part}_keys": rows.keys, f"{part}_targets": rows.targets, f"{part}_counts": rows.counts}
            )
        with atomic_write(p) as f:
            torch.save(body, f)
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NormalSample:
        p = Path(path)
        if not p.is_file():
            raise ArtifactError(
                f"{p}: no normal-window sample with this model version (trained before feedback support?): "
                "retrain with `deeplog-siem train` to use feedback"
            )
        try:
            body = torch.load(p, map_location="cpu", weights_only=True)
            if body.get("format") != FORMAT:
                raise ArtifactError(f"{p}: not a deeplog-siem normal-window sample")
            parts = {
                part: Rows(body[f"{part}_keys"], body[f"{part}_targets"], body[f"{part}_counts"])
                for part in ("replay", "heldout")
            }
            return cls(parts["replay"], parts["heldout"], str(body["heldout_source"]))
        except ArtifactError:
            raise
        except Exception as e:  # torch/pickle/zip errors or missing keys: a damaged file
            raise ArtifactError(f"{p}: unreadable normal-window sample: {e}") from None


def _cap(rows: Rows, n: int, seed: int) -> Rows:
    if len(rows) <= n:
        return rows
    gen = torch.Generator().manual_seed(seed)
    pick = torch.multinomial(rows.counts, n, replacement=False, generator=gen).sort().values
    return Rows(rows.keys[pick], rows.targets[pick], rows.counts[pick])


def build_normal_sample(
    sessions: Sequence[Sequence[int]], cfg: ModelConfig, replay_windows: int, heldout_windows: int
) -> NormalSample:
    train_idx, val_idx = validation_split(len(sessions), cfg)
    train = [sessions[i] for i in train_idx]
    val = [sessions[i] for i in val_idx]
    replay = _cap(Rows(*unique_rows(train, cfg.window)), replay_windows, cfg.seed)
    if val:
        heldout, source = (
            _cap(Rows(*unique_rows(val, cfg.window)), heldout_windows, cfg.seed + 1),
            "validation",
        )
    else:
        heldout, source = _cap(replay, heldout_windows, cfg.seed + 1), "training"
    return NormalSample(replay, heldout, source)
