"""model: the DeepLog log-key LSTM, its training on normal sessions, and its checkpoint.

Contract:
- `KeyLSTM(args)(keys [B, h], targets [B] | None)` -> (logits [B, V], mean cross-entropy | None): the
  distribution of the key that follows a window of h keys. `encode(keys, state)` is the LSTM part alone,
  resumable from a state: (output after the last key [B, H], (h, c) [layers, B, H]).
- `train_key_model(sessions, vocab_size, cfg)` -> (model, TrainReport): learns from normal sessions only
  (vocabulary ids, duplicates kept). Every event is a target (windows are left-padded) and so is the end of
  the session (EOS). Minibatches are drawn from the distinct (window, target) pairs with their counts, and
  a pair drawn m times is computed once with weight m: the same gradients as minibatch SGD over every
  window, a fraction of the compute on repetitive logs. A seeded split of whole
  sessions drives early stopping; the best epoch's weights are returned.
- `save_checkpoint(path, model, vocab, meta)` writes one self-describing file atomically;
  `load_checkpoint(path)` -> (model, vocab, meta) with `torch.load(weights_only=True)`, or `ArtifactError`
  for a missing, truncated, tampered or incompatible file.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .atomic import atomic_write
from .config import ModelConfig
from .errors import ArtifactError, ConfigError
from .timefmt import utc_now
from .vocab import PAD, UNK, Vocabulary
from .windows import build_windows

log = logging.getLogger(__name__)

FORMAT = "deeplog-siem/key-lstm"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class KeyModelArgs:
    vocab_size: int
    window: int = 10
    embedding: int = 32
    layers: int = 2
    hidden: int = 64
    dropout: float = 0.0

    @classmethod
    def from_config(cls, vocab_size: int, cfg: ModelConfig) -> KeyModelArgs:
        return cls(vocab_size, cfg.window, cfg.embedding, cfg.layers, cfg.hidden, cfg.dropout)


class KeyLSTM(nn.Module):
    def __init__(self, args: KeyModelArgs):
        super().__init__()
        self.args = args
        self.embed = nn.Embedding(args.vocab_size, args.embedding, padding_idx=PAD)
        self.lstm = nn.LSTM(
            args.embedding,
            args.hidden,
            args.layers,
            batch_first=True,
            dropout=args.dropout if args.layers > 1 else 0.0,
        )
        self.head = nn.Linear(args.hidden, args.vocab_size)

    def encode(
        self, keys: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """keys [B, t] (continuing from `state`, the LSTM's (h, c) [layers, B, H] after earlier keys, or from
        the start) -> (top layer's output after the last key [B, H], (h, c) after it). Running a window as
        a prefix and then the rest from the prefix's state is the same computation as one pass: the detector
        computes the state of a prefix shared by many windows once."""
        out, state = self.lstm(self.embed(keys), state)  # [B, t, H]
        return out[:, -1], state

    def forward(
        self,
        keys: torch.Tensor,
        targets: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = self.head(self.encode(keys)[0])  # [B, V]
        if targets is None:
            return logits, None
        if weights is None:
            return logits, F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
        # Weighted mean: a unique (window, target) row with weight c counts as c identical rows.
        ce = F.cross_entropy(logits, targets, reduction="none", label_smoothing=label_smoothing)
        return logits, (ce * weights).sum() / weights.sum()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device: cuda requested but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"model.device: must be one of 'auto', 'cpu', 'cuda', got {name!r}")
    return torch.device(name)


def fingerprint(sessions: Sequence[Sequence[int]]) -> str:
    """sha256 of the sessions in order, one line per session: identifies the training data of a model."""
    h = hashlib.sha256()
    for s in sessions:
        h.update((" ".join(map(str, s)) + "\n").encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------- training


@dataclass
class TrainReport:
    epochs_run: int
    best_epoch: int
    train_loss: float
    val_loss: float | None
    seconds: float
    train_sessions: int
    val_sessions: int
    train_windows: int
    unique_windows: int
    device: str
    fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _unique_rows(
    sessions: Sequence[Sequence[int]], h: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(keys [U, h], targets [U], counts [U] float, total windows) over all windows of the sessions."""
    w = build_windows(sessions, h)
    ok = w.targets != UNK  # an unknown key is never a normal next event
    rows = torch.cat([w.keys[ok], w.targets[ok, None]], 1)  # [N, h+1]
    if rows.numel() == 0:
        return rows[:, :h], rows[:, h], torch.zeros(0), 0
    uniq, counts = torch.unique(rows, dim=0, return_counts=True)
    return uniq[:, :h], uniq[:, h], counts.float(), rows.shape[0]


@torch.no_grad()
def _eval_loss(
    model: KeyLSTM,
    keys: torch.Tensor,
    targets: torch.Tensor,
    counts: torch.Tensor,
    bs: int,
    label_smoothing: float = 0.0,
) -> float:
    model.eval()
    total = 0.0
    for i in range(0, keys.shape[0], bs):
        logits, _ = model(keys[i : i + bs])
        total += float(
            (
                F.cross_entropy(
                    logits, targets[i : i + bs], reduction="none", label_smoothing=label_smoothing
                )
                * counts[i : i + bs]
            ).sum()
        )
    return total / float(counts.sum())


def _split(n: int, cfg: ModelConfig, gen: torch.Generator) -> tuple[list[int], list[int]]:
    n_val = int(n * cfg.validation_fraction)
    order = torch.randperm(n, generator=gen).tolist()
    return order[n_val:], order[:n_val]


def validation_split(n_sessions: int, cfg: ModelConfig) -> tuple[list[int], list[int]]:
    """(training, validation) session indices exactly as `train_key_model` splits them: the validation
    sessions never give a gradient, so they serve as held-out normal data (the feedback job's safety check)."""
    return _split(n_sessions, cfg, torch.Generator().manual_seed(cfg.seed))


def unique_rows(sessions: Sequence[Sequence[int]], h: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distinct (window [U, h], target [U]) pairs of the sessions with their counts [U] (float)."""
    keys, targets, counts, _ = _unique_rows(sessions, h)
    return keys, targets, counts


# torch's own choice at import (one per core), so 0 can restore it after a detection run set 1 (the
# setting is process-wide and the daemon trains and detects in one process).
_DEFAULT_THREADS = torch.get_num_threads()


def use_threads(n: int) -> None:
    """Set torch's CPU threads for this process (`model.threads`; 0 = torch's default)."""
    torch.set_num_threads(n if n > 0 else _DEFAULT_THREADS)


def train_key_model(
    sessions: Sequence[Sequence[int]],
    vocab_size: int,
    cfg: ModelConfig,
    progress: Callable[[str], None] | None = None,
) -> tuple[KeyLSTM, TrainReport]:
    t0 = time.perf_counter()
    say = progress or (lambda m: log.info("%s", m))
    if not sessions:
        raise ArtifactError("cannot train a key model on zero sessions")
    use_threads(cfg.threads)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_idx, val_idx = _split(len(sessions), cfg, gen)
    val = [sessions[i] for i in val_idx]
    train = [sessions[i] for i in train_idx]
    keys, targets, counts, n_windows = _unique_rows(train, cfg.window)
    vkeys, vtargets, vcounts, _ = _unique_rows(val, cfg.window) if val else (None, None, None, 0)
    if n_windows == 0:
        raise ArtifactError("cannot train a key model: the training sessions have no known keys")
    say(
        f"training on {len(train)} sessions ({n_windows} windows, {keys.shape[0]} unique), "
        f"validating on {len(val)} sessions, device {device}"
    )
    model = KeyLSTM(KeyModelArgs.from_config(vocab_size, cfg)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    keys, targets, counts = keys.to(device), targets.to(device), counts.to(device)
    if vkeys is not None:
        vkeys, vtargets, vcounts = vkeys.to(device), vtargets.to(device), vcounts.to(device)
    best, best_state, best_epoch, stale, epoch, train_loss = math.inf, None, 0, 0, 0, math.nan
    steps = max(1, math.ceil(n_windows / cfg.batch_size))
    for epoch in range(1, cfg.epochs + 1):
        te = time.perf_counter()
        model.train()
        # An epoch is n_windows / batch_size steps of batch_size windows drawn with their frequencies, the
        # gradient of plain minibatch SGD over every window; each distinct window is computed once per step.
        draws = torch.multinomial(counts.cpu(), steps * cfg.batch_size, replacement=True, generator=gen)
        total = 0.0
        for batch in draws.view(steps, cfg.batch_size):
            idx, mult = torch.unique(batch, return_counts=True)
            idx, mult = idx.to(device), mult.to(device, torch.float)
            _, loss = model(keys[idx], targets[idx], mult, cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
        train_loss = total / steps
        score = (
            _eval_loss(model, vkeys, vtargets, vcounts, 8192, cfg.label_smoothing)
            if vkeys is not None
            else train_loss
        )
        say(
            f"epoch {epoch}/{cfg.epochs}: train loss {train_loss:.4f}"
            + (f", validation loss {score:.4f}" if vkeys is not None else "")
            + f" ({time.perf_counter() - te:.1f}s)"
        )
        if score < best - 1e-4:
            best, best_epoch, stale = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= cfg.patience:
                say(f"early stop: no improvement for {cfg.patience} epochs, keeping epoch {best_epoch}")
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    report = TrainReport(
        epochs_run=epoch,
        best_epoch=best_epoch,
        train_loss=train_loss,
        val_loss=best if vkeys is not None else None,
        seconds=time.perf_counter() - t0,
        train_sessions=len(train),
        val_sessions=len(val),
        train_windows=n_windows,
        unique_windows=int(keys.shape[0]),
        device=str(device),
        fingerprint=fingerprint(sessions),
    )
    return model, report


# --------------------------------------------------------------------------------------------- checkpoint


def _digest(header: dict[str, Any], state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(bytes(t.reshape(-1).view(torch.uint8).tolist()))  # no numpy dependency
    return h.hexdigest()


def save_checkpoint(
    path: str | os.PathLike[str], model: KeyLSTM, vocab: Vocabulary, meta: dict[str, Any] | None = None
) -> Path:
    """Write model + vocabulary + `meta` (JSON-safe: fingerprint, metrics, templater reference...) atomically."""
    p = Path(path)
    if len(vocab) != model.args.vocab_size:
        raise ArtifactError(
            f"vocabulary has {len(vocab)} keys but the model was built for {model.args.vocab_size}"
        )
    try:
        meta = json.loads(json.dumps(meta or {}))
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"checkpoint meta must be JSON-serialisable: {e}") from None
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "torch_version": str(torch.__version__),
        "created": utc_now(),
        "args": dataclasses.asdict(model.args),
        "vocab": vocab.to_dict(),
        "meta": meta,
    }
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_write(p) as f:
        torch.save({"header": header, "digest": _digest(header, state), "state": state}, f)
    return p


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[KeyLSTM, Vocabulary, dict[str, Any]]:
    """-> (model in eval mode on CPU, vocabulary, header with `meta`, versions, args and creation time)."""
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{p}: model checkpoint not found")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, pickle/zip errors, EOFError... for damaged files
        raise ArtifactError(f"{p}: not a readable model checkpoint (truncated or corrupted?): {e}") from None
    try:
        header, digest, state = ck["header"], ck["digest"], ck["state"]
        fmt, version = header["format"], header["format_version"]
    except (KeyError, TypeError):
        raise ArtifactError(f"{p}: not a deeplog-siem key-model checkpoint") from None
    if fmt != FORMAT:
        raise ArtifactError(f"{p}: checkpoint format {fmt!r}, expected {FORMAT!r}")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{p}: checkpoint format version {version} was written by deeplog-siem "
            f"{header.get('package_version', '?')}; this is deeplog-siem {__version__}, which reads format "
            f"version {FORMAT_VERSION}: retrain the model with this version"
        )
    if _digest(header, state) != digest:
        raise ArtifactError(f"{p}: checkpoint content does not match its digest (tampered or corrupted)")
    try:
        args = KeyModelArgs(**header["args"])
        vocab = Vocabulary.from_dict(header["vocab"])
        if len(vocab) != args.vocab_size:
            raise ArtifactError(f"{p}: vocabulary has {len(vocab)} keys, model expects {args.vocab_size}")
        model = KeyLSTM(args)
        model.load_state_dict(state)
    except (TypeError, RuntimeError, ValueError) as e:
        raise ArtifactError(f"{p}: checkpoint does not match its model arguments: {e}") from None
    model.eval()
    return model, vocab, header
