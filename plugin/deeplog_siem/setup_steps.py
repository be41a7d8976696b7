"""setup_steps: what the cluster installer (`setup_assets`) and the Kibana installer (`kibana`) share.

Contract: `Step(component, name, action, detail)` is one thing setup did or would do to one asset, `Action`
the closed set of outcomes and `CHANGES` those that write (or would write) something. `content_hash(obj)` ->
a short, stable hash of a JSON-able value whatever its key order: installed assets carry it, and an asset
whose hash already matches is not written again. `asset_text(*parts)` -> the text of a file shipped under
the package's `assets/`, `asset_files(folder, suffix)` -> (name, text) of a folder's files; a missing file
raises FileNotFoundError (a broken installation, not a user error).
Both installers depend on this module and never on each other, so `setup_assets` can run the Kibana step
without an import cycle.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

Action = Literal[
    "created", "updated", "unchanged", "skipped", "failed", "would create", "would update", "imported"
]
CHANGES = frozenset({"created", "updated", "imported", "would create", "would update"})


@dataclass(frozen=True)
class Step:
    """One thing setup did (or would do) to one asset."""

    component: str  # "index template" | "lifecycle policy" | "ingest pipeline" | "index" | "saved object"
    name: str
    action: Action
    detail: str = ""

    def line(self) -> str:
        text = f"{self.action:>12}  {self.component} {self.name}"
        return f"{text}: {self.detail}" if self.detail else text


def content_hash(obj: Any) -> str:
    """A short, stable hash of a JSON-able value (key order does not matter)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def asset_text(*parts: str) -> str:
    return resources.files("deeplog_siem").joinpath("assets", *parts).read_text(encoding="utf-8")


def asset_files(folder: str, suffix: str) -> list[tuple[str, str]]:
    """(name, text) of every file ending in `suffix` in one asset folder, by name."""
    root = resources.files("deeplog_siem").joinpath("assets", folder)
    return sorted((p.name, p.read_text(encoding="utf-8")) for p in root.iterdir() if p.name.endswith(suffix))
