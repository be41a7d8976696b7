"""artifacts: versioned model directories under `model.dir`, and which one is current.

Contract: `ModelStore(dir).create() -> (version, path)` gives a fresh directory to write a model version
into; `publish(version)` makes it current atomically (a `CURRENT` file replaced with os.replace), so a
crash during training never leaves a half-written model in use; `current() -> (version, path)` or
`ArtifactError` telling the user to train first. Each version directory holds the templater state
(`templater/`), the key model checkpoint (`keymodel.pt`) and, when `params.enabled`, the parameter model
(`parammodel.pt`), see models/README.md.
"""

from __future__ import annotations

import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

from .errors import ArtifactError

KEYMODEL = "keymodel.pt"
PARAMMODEL = "parammodel.pt"
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
        tmp = self.dir / f".CURRENT.{os.getpid()}"
        tmp.write_text(version + "\n")
        os.replace(tmp, self.dir / "CURRENT")

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
