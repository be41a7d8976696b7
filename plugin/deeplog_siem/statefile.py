"""statefile: a learned state saved as one JSON file that says what it is and carries its own checksum.

Contract: `write_state(path, kind=, version=, state=)` writes `{"format": kind, "version": version, "sha256":
..., "state": state}` atomically (`atomic.atomic_write`); the checksum is over the state's canonical JSON, so
a hand-edited or torn state is caught whatever its layout. `read_state(path, kind=, version=, what=,
missing=)` returns the state, or raises `ArtifactError` naming `what` and the path: `missing` when the file
is absent, then unreadable, not valid JSON, another kind of file, another version, a checksum mismatch.
The caller checks the state's own fields.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .atomic import atomic_write
from .errors import ArtifactError


def _digest(state: Any) -> str:
    body = json.dumps(state, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def write_state(path: Path, *, kind: str, version: int, state: Any) -> Path:
    doc = {"format": kind, "version": version, "sha256": _digest(state), "state": state}
    with atomic_write(path) as f:
        f.write(json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    return path


def read_state(path: Path, *, kind: str, version: int, what: str, missing: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(f"{what} not found: {path} ({missing})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{what} {path}: cannot read: {e}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{what} {path}: corrupted (not valid JSON: {e})") from None
    if not isinstance(doc, dict) or doc.get("format") != kind:
        raise ArtifactError(f"{what} {path}: not a deeplog-siem {what} file")
    if doc.get("version") != version:
        raise ArtifactError(
            f"{what} {path}: version {doc.get('version')!r} is not supported (expected {version})"
        )
    state = doc.get("state")
    if _digest(state) != doc.get("sha256"):
        raise ArtifactError(f"{what} {path}: corrupted (checksum mismatch)")
    return state
