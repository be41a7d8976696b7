"""keyseq: DeepLog log-key sequence files -> sessions of vocabulary ids.

Contract: `read_key_sessions(path)` reads the DeepLog key format (one session per line, keys as space-separated
integers, usually with a trailing space) and returns the raw integers, one list per line, blank lines
included as empty sessions so line numbers and session counts stay honest; a malformed line raises
`DataError` naming the file and line. HDFS key `k` is loghub event `E{k}`; `hdfs_key_to_id` maps it to the
vocabulary id `k + NUM_RESERVED - 1` (E1 -> 3) so the reserved PAD/UNK/EOS ids stay free, and
`hdfs_vocabulary()` builds the matching `Vocabulary` from the packaged `data/HDFS_templates.csv`. Keys
outside the vocabulary become UNK, and `to_ids` counts them.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from itertools import chain
from pathlib import Path

import torch

from .errors import DataError
from .shared_data import shared_data_dir
from .vocab import EOS, NUM_RESERVED, PAD, UNK, Vocabulary

HDFS_DIR = shared_data_dir() / "hdfs_keys"


def read_key_sessions(path: str | os.PathLike[str]) -> list[list[int]]:
    p = Path(path)
    try:
        text = p.read_text(encoding="ascii")
    except FileNotFoundError:
        raise DataError(f"{p}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{p}: cannot read key sequences: {e}") from None
    sessions = []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            keys = [int(k) for k in line.split()]
        except ValueError:
            raise DataError(f"{p}:{n}: not a sequence of integer keys: {line[:80]!r}") from None
        if any(k < 1 for k in keys):
            raise DataError(f"{p}:{n}: keys must be >= 1: {line[:80]!r}")
        sessions.append(keys)
    return sessions


def hdfs_key_to_id(k: int) -> int:
    return k + NUM_RESERVED - 1


def id_to_hdfs_key(i: int) -> int:
    return i - NUM_RESERVED + 1


def to_ids(sessions: Iterable[Sequence[int]], vocab_size: int) -> tuple[list[list[int]], int]:
    """HDFS keys -> vocabulary ids; keys without a template become UNK. Returns (sessions, number of UNKs)."""
    out, unknown = [], 0
    for s in sessions:
        ids = [hdfs_key_to_id(k) for k in s]
        bad = sum(not NUM_RESERVED <= i < vocab_size for i in ids)
        if bad:
            unknown += bad
            ids = [i if NUM_RESERVED <= i < vocab_size else UNK for i in ids]
        out.append(ids)
    return out, unknown


def hdfs_vocabulary(path: str | os.PathLike[str] | None = None) -> Vocabulary:
    """Vocabulary whose id `hdfs_key_to_id(k)` is event E{k} of an `EventId,EventTemplate` CSV."""
    if path is None:
        text = resources.files("deeplog_siem").joinpath("data/HDFS_templates.csv").read_text(encoding="utf-8")
        name = "data/HDFS_templates.csv"
    else:
        text, name = Path(path).read_text(encoding="utf-8"), str(path)
    vocab = Vocabulary()
    for n, row in enumerate(csv.DictReader(io.StringIO(text)), 2):
        expected = f"E{len(vocab) - NUM_RESERVED + 1}"
        if row.get("EventId") != expected or not row.get("EventTemplate"):
            raise DataError(f"{name}:{n}: expected EventId {expected} with a template, got {row}")
        vocab.add(row["EventTemplate"])
    if len(vocab) == NUM_RESERVED:
        raise DataError(f"{name}: no templates")
    return vocab


# ------------------------------------------------------------------------------------------------ windows


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
