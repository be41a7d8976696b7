"""seal: the detection job's signature over what the feedback job learns from an anomaly document.

Contract:
- `key(model_dir) -> bytes` is the job's secret: 32 random bytes (`secrets.token_bytes`) in
  `model_dir/.seal_key`, created once (mode 0600, written through `atomic`; when two jobs create it at the
  same time, the first file to land wins and both use it). `existing_key(model_dir)` reads it without creating
  it (None when there is none). A key file of another length is an `ArtifactError`.
- `sign(key, fields) -> str` seals a JSON-able mapping: `hmac-sha256:<key id>:<hex digest>` over its canonical
  JSON (sorted keys, no spaces, ASCII), so the same values give the same seal whatever order or spacing the
  cluster returns them in. `check(key, fields, seal) -> str | None` is None when `seal` is the job's seal of
  `fields` under `key`, else the reason, naming `deeplog.seal`.

Why a seal and not a record of its own: responders must be able to write the anomalies index (that is how
they give a verdict), so any of them can change any field of a document. The detection job and the feedback
job share `model.dir`, which responders cannot read; an HMAC keyed by a secret there lets the feedback job
tell the job's values from edited ones without a second index, its mapping, retention and privileges to
administer, and without a lookup per document. The verdict, who and why stay unsealed: they are the
responders' to write.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import atomic
from .errors import ArtifactError

log = logging.getLogger(__name__)

KEY_FILE = ".seal_key"
KEY_BYTES = 32
SCHEME = "hmac-sha256"


def existing_key(model_dir: str | os.PathLike[str]) -> bytes | None:
    """The job's seal key in `model_dir`, or None when no job has created one yet."""
    path = Path(model_dir) / KEY_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ArtifactError(f"{path}: the seal key cannot be read ({e})") from None
    if len(data) != KEY_BYTES:
        raise ArtifactError(f"{path}: a seal key has {KEY_BYTES} bytes, this file {len(data)}")
    return data


def key(model_dir: str | os.PathLike[str]) -> bytes:
    """The job's seal key in `model_dir`, created on first use."""
    found = existing_key(model_dir)
    if found is not None:
        return found
    path = Path(model_dir) / KEY_FILE
    staged = path.with_name(f"{KEY_FILE}.{secrets.token_hex(4)}.new")
    with atomic.atomic_write(staged) as f:
        # Owner-only before a byte is written: the secret is never in a file others can read.
        os.fchmod(f.fileno(), 0o600)
        f.write(secrets.token_bytes(KEY_BYTES))
    try:
        # A link, not a rename: it never replaces a key another job created meanwhile and sealed with.
        os.link(staged, path)
        log.info("seal key created in %s", path)
    except FileExistsError:
        pass
    finally:
        staged.unlink(missing_ok=True)
    created = existing_key(model_dir)
    if created is None:
        raise ArtifactError(f"{path}: the seal key vanished after it was created")
    return created


def key_id(secret: bytes) -> str:
    """A short public name of a key: tells a document sealed under another `model.dir` from an edited one."""
    return hashlib.sha256(b"deeplog-seal-key-id\x00" + secret).hexdigest()[:12]


def canonical(fields: Mapping[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sign(secret: bytes, fields: Mapping[str, Any]) -> str:
    digest = hmac.new(secret, canonical(fields), hashlib.sha256).hexdigest()
    return f"{SCHEME}:{key_id(secret)}:{digest}"


def check(secret: bytes | None, fields: Mapping[str, Any], seal: str | None) -> str | None:
    """None when `seal` is the job's seal of `fields`, else why the fields cannot be trusted."""
    if seal is None:
        return (
            "deeplog.seal: missing, so the learned fields cannot be told from edited ones "
            "(a document written before sealing, or the seal was removed); mark a newer anomaly instead"
        )
    if secret is None:
        return f"deeplog.seal: no seal key in model.dir ({KEY_FILE}), so no document can be verified"
    parts = seal.split(":")
    # ASCII first: `hmac.compare_digest` refuses other text.
    if not seal.isascii() or len(parts) != 3 or parts[0] != SCHEME:
        return f"deeplog.seal: not a seal the job writes ({seal!r:.60})"
    if parts[1] != key_id(secret):
        return "deeplog.seal: sealed with a key this model.dir does not hold (another installation?)"
    if not hmac.compare_digest(seal, sign(secret, fields)):
        return "deeplog.seal: learned fields do not match the job's seal (edited after detection)"
    return None
