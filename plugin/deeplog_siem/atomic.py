"""atomic: the one way the job writes a file, so a reader never sees half of one.

Contract: `atomic_write(path)` is a context manager that yields a binary file object opened on a temporary
file with a unique name in the target's own folder (same file system, so the rename is atomic); on a clean
exit the data is flushed and fsynced, the file renamed over `path` and the folder fsynced, so a crash leaves
either the old file or the new one, never a torn one, and two processes writing the same path never share
a temporary file. On an exception the temporary file is removed and `path` is untouched. `write_bytes` and
`write_text` are the one-shot forms; `fsync_dir(folder)` makes a rename in `folder` durable. Folders are created as needed. The file gets the mode a plain write
would give it (0666 less the umask), not mkstemp's owner-only one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

# The process's umask, read once: os.umask can only be read by setting it.
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        # mkstemp makes the file readable by its owner only: give it the mode an ordinary write would, so an
        # operator or a sidecar under another user can still read the model files.
        os.fchmod(fd, 0o666 & ~_UMASK)
        f = os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(p.parent)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_write(path) as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def fsync_dir(directory: Path) -> None:
    """Make the entries of `directory` (a rename into it) durable; a no-op where it cannot be opened."""
    # The rename is durable only once the folder's entry is; some file systems refuse to open a folder.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
