"""artifacts: versioned model directories under `model.dir`, and which one is current.

Contract: `ModelStore(dir).create() -> (version, path)` gives a fresh staging directory (a hidden temporary
name in the store) to write a model version into; `publish(version)` renames it to its version name and
makes it current atomically (the `CURRENT` file, `atomic.write_text`), so a version is visible only once
complete and a crash (SIGKILL included) during training never leaves a half-written model listed or in use;
`keep(version)` moves it to its name without making it current (a retraining candidate that was refused),
`location(version)` is where its files are (staging or its name).
A staging directory is held (an flock) by the process writing it; `create` removes those whose process is
gone; `current() -> (version, path)` or
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
import logging
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .atomic import fsync_dir, write_text
from .errors import ArtifactError

log = logging.getLogger(__name__)

KEYMODEL = "keymodel.pt"
# In a feedback version: the trained key model it descends from (the detector's anchor, README "Feedback").
ANCHOR = "anchor.pt"
PARAMMODEL = "parammodel.pt"
# Per-series widening of the parameter model's threshold learnt from false-positive feedback (README "Feedback").
PARAM_FEEDBACK = "param_feedback.json"
TEMPLATER = "templater"
STAGING = ".staging-"
_OWNER = ".owner"
# A staging directory without its owner file is one being created (or one a crash left right then): removed
# only once it is this old.
_UNOWNED_GRACE_S = 3600.0
# Staging directory -> its locked owner file, for the whole process: another `ModelStore` of the same
# directory (the retraining's check after its training) must not drop the lock a version is still held by.
_HELD: dict[str, Any] = {}


class ModelStore:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)

    def create(self) -> tuple[str, Path]:
        """A new version's name and its staging directory, held by this process until `publish`."""
        self.clean_staging()
        version = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
        path = self._staging(version)
        path.mkdir(parents=True, exist_ok=False)
        owner = open(path / _OWNER, "w")  # noqa: SIM115 - held open (and locked) until publish
        fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _HELD[str(path)] = owner
        return version, path

    def _staging(self, version: str) -> Path:
        return self.dir / f"{STAGING}{version}"

    def publish(self, version: str) -> None:
        """Make `version` current; a version still in staging is moved to its name first."""
        self.keep(version)
        write_text(self.dir / "CURRENT", version + "\n")

    def keep(self, version: str) -> Path:
        """Move `version` from staging to its name (complete, listed, not current) -> its directory."""
        stage, final = self._staging(version), self.dir / version
        if stage.is_dir() and not final.exists():
            if not (stage / KEYMODEL).is_file():
                raise ArtifactError(
                    f"model version {version} in {self.dir} has no {KEYMODEL}; not publishing it"
                )
            (stage / _OWNER).unlink(missing_ok=True)
            os.rename(stage, final)
            fsync_dir(self.dir)
            owner = _HELD.pop(str(stage), None)
            if owner is not None:
                owner.close()
        if not (final / KEYMODEL).is_file():
            raise ArtifactError(f"model version {version} in {self.dir} has no {KEYMODEL}; not publishing it")
        return final

    def location(self, version: str) -> Path:
        """Where `version`'s files are: its staging directory until it is published, then its own name."""
        stage = self._staging(version)
        return stage if stage.is_dir() else self.dir / version

    def discard(self, version: str) -> None:
        """Remove `version` while it is still in staging (training stopped before publishing it)."""
        stage = self._staging(version)
        owner = _HELD.pop(str(stage), None)
        shutil.rmtree(stage, ignore_errors=True)
        if owner is not None:
            owner.close()

    def clean_staging(self) -> list[str]:
        """Remove staging directories no live process holds (their writer was killed) -> their names."""
        removed = []
        for path in self.dir.glob(f"{STAGING}*") if self.dir.is_dir() else []:
            if path.is_dir() and self._abandoned(path):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
                log.warning(
                    "model store %s: removed %s, left unfinished by a process that is gone",
                    self.dir,
                    path.name,
                )
        return removed

    @staticmethod
    def _abandoned(path: Path) -> bool:
        try:
            f = open(path / _OWNER)  # noqa: SIM115 - closed below, after the lock test
        except FileNotFoundError:
            try:
                return time.time() - path.stat().st_mtime > _UNOWNED_GRACE_S
            except FileNotFoundError:
                return False  # published or removed meanwhile
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # its writer is alive
            return True

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
