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
from importlib import resources
from pathlib import Path

from deeplog_siem.errors import DataError
from deeplog_siem.vocab import NUM_RESERVED, UNK, Vocabulary

from .shared_data import shared_data_dir

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
        text = resources.files("deeplog_lab").joinpath("data/HDFS_templates.csv").read_text(encoding="utf-8")
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
