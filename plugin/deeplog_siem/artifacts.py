"""artifacts: versioned model directories under `model.dir`, and which one is current.

Contract: `ModelStore(dir).create() -> (version, path)` gives a fresh directory to write a model version
into; `publish(version)` makes it current atomically (the `CURRENT` file, `atomic.write_text`), so a
crash during training never leaves a half-written model in use; `current() -> (version, path)` or
`ArtifactError` telling the user to train first; `restore(version)` makes an earlier version current again;
`lock()` serialises writers (the feedback job) across processes. Each version directory holds the templater
state (`templater/`), the key model checkpoint (`keymodel.pt`, whose meta carries the lineage of feedback
versions), the workflow models (`workflows.json`), the normal-window sample (`normal_sample.pt`) and, when
`params.enabled`, the parameter model (`parammodel.pt`); a version made by feedback also holds the trained key
model it descends from (`anchor.pt`, the detector's anchor), see models/README.md. Beside the versions, the
detection job keeps its sample of recent windows (`recent_windows.pt`, `deeplog_siem.recent`).
"""

from __future__ import annotations

import fcntl
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from .atomic import write_text
from .errors import ArtifactError

KEYMODEL = "keymodel.pt"
# In a feedback version: the trained key model it descends from (the detector's anchor, README "Feedback").
ANCHOR = "anchor.pt"
PARAMMODEL = "parammodel.pt"
# Per-series widening of the parameter model's threshold learnt from false-positive feedback (README "Feedback").
PARAM_FEEDBACK = "param_feedback.json"
TEMPLATER = "templater"


class ModelStore:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)

    def create(self) -> tuple[str, Path]:
        version = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
        path = self.dir / version
        path.mkdir(parents=True, exist_ok=False)
        return version, path

    def publish(self, version: str) -> None:
        if not (self.dir / version / KEYMODEL).is_file():
            raise ArtifactError(f"model version {version} in {self.dir} has no {KEYMODEL}; not publishing it")
        write_text(self.dir / "CURRENT", version + "\n")

    def current(self) -> tuple[str, Path]:
        pointer = self.dir / "CURRENT"
        if not pointer.is_file():
            raise ArtifactError(
                f"no trained model in {self.dir}: run `deeplog-siem train --config FILE` first"
            )
        version = pointer.read_text().strip()
        path = self.dir / version
        if not path.is_dir():
            raise ArtifactError(f"{pointer} names model version {version!r}, but {path} does not exist")
        return version, path

    def versions(self) -> list[str]:
        return (
            sorted(p.name for p in self.dir.iterdir() if p.is_dir() and not p.name.startswith("."))
            if self.dir.is_dir()
            else []
        )

    def path(self, version: str) -> Path:
        p = self.dir / version
        if version.startswith(".") or "/" in version or not (p / KEYMODEL).is_file():
            known = ", ".join(self.versions()) or "none"
            raise ArtifactError(f"no model version {version!r} in {self.dir} (versions: {known})")
        return p

    def restore(self, version: str) -> None:
        """Make an existing version current again (a rollback); its checkpoint must load."""
        from .model import load_checkpoint  # torch is imported only by callers that need it

        load_checkpoint(self.path(version) / KEYMODEL)
        self.publish(version)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock on this model directory, held by one writer process at a time."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
