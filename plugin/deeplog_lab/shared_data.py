"""shared_data: where the project's real evaluation data lives, for commands and tests that use it.

Contract: `shared_data_dir() -> Path`: `$DEEPLOG_DATA_DIR` when set, else the `shared/data` folder beside the
checkout (or beside the working directory). The product never needs it at run time: the demo uses the
packaged sample; `evaluate`, the benchmarks and the tests read the full files from here.
"""

from __future__ import annotations

import os
from pathlib import Path


def shared_data_dir() -> Path:
    env = os.environ.get("DEEPLOG_DATA_DIR")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    for base in (repo, Path.cwd()):
        cand = base.parent / "shared" / "data"
        if cand.is_dir():
            return cand
    return repo.parent / "shared" / "data"
