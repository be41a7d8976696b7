"""windows: sessions of vocabulary ids -> the (h preceding keys -> actual key) windows the key model scores.

Contract: `build_windows(sessions, h, context=, add_eos=)` -> `Windows` (tensors, one row per scored event, in
session order), built with tensor ops and no per-window loop; `h < 1` or a `context`/`add_eos` of the wrong
length raises `ValueError`. Training, detection, the feedback job and the lab all window sessions through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import torch

from .vocab import EOS, PAD, UNK


@dataclass(frozen=True)
class Windows:
    """Every scored event as (h preceding keys -> actual key), in session order.

    keys [N, h] (left-padded with PAD), targets [N], session [N] (index into the sessions given),
    position [N] (index of the target within its session as given; the end-of-session EOS has position
    len(session)).
    """

    keys: torch.Tensor
    targets: torch.Tensor
    session: torch.Tensor
    position: torch.Tensor

    def __len__(self) -> int:
        return self.targets.numel()


def build_windows(
    sessions: Sequence[Sequence[int]],
    h: int,
    *,
    context: Sequence[int] | None = None,
    add_eos: bool | Sequence[bool] = True,
) -> Windows:
    """Windows for every event of `sessions` (vocabulary ids), built with tensor ops, no per-window loop.

    `context[i]` leading keys of session i are history only (scored by an earlier run): they fill the windows
    of the following events but get no window of their own. `add_eos` (one flag, or one per session) appends
    EOS as the final target, for sessions known to be complete. UNK events are scored (they are anomalies of
    their own) but left out of the history of later events: an unknown line is one anomaly, and the model,
    which never saw UNK in a window, judges the rest of the flow as if that line were absent.
    """
    n = len(sessions)
    if h < 1:
        raise ValueError(f"window must be >= 1, got {h}")
    eos = [bool(add_eos)] * n if isinstance(add_eos, bool) else [bool(e) for e in add_eos]
    ctx = [0] * n if context is None else [int(c) for c in context]
    if len(eos) != n or len(ctx) != n:
        raise ValueError(f"context/add_eos must have one entry per session ({n})")
    lengths = torch.tensor([len(s) for s in sessions], dtype=torch.long)
    # Every session gets an EOS slot (dropped below when add_eos is off) so the index arithmetic is uniform.
    ext = torch.tensor(list(chain.from_iterable((*s, EOS) for s in sessions)), dtype=torch.long)
    seq = torch.repeat_interleave(torch.arange(n), lengths + 1)
    starts = torch.cumsum(lengths + 1, 0) - (lengths + 1)
    pos = torch.arange(ext.numel()) - starts[seq] if n else ext
    known = ext != UNK
    before = torch.cumsum(known, 0) - known.long()  # known (non-UNK) slots before each slot, all sessions
    # History: session i occupies h PADs then its known keys in `hist`; the window of a slot is the h entries
    # that end just before where that slot's key goes, so windows never cross sessions.
    hist = torch.full((h * n + int(known.sum()),), PAD, dtype=torch.long)
    hist[(h * (seq + 1) + before)[known]] = ext[known]
    start = h * seq + before
    keep = (pos >= torch.tensor(ctx, dtype=torch.long)[seq]) & (
        (pos < lengths[seq]) | torch.tensor(eos, dtype=torch.bool)[seq]
    )
    keys = hist.unfold(0, h, 1)[start[keep]] if keep.any() else torch.empty((0, h), dtype=torch.long)
    return Windows(keys=keys, targets=ext[keep], session=seq[keep], position=pos[keep])
