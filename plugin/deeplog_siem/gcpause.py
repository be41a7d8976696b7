"""gcpause: an allocation-heavy block of work -> the same work without the cyclic garbage collector's pauses.

Contract: `with paused():` turns Python's cyclic garbage collector off for the block and back on when the
last block that overlaps it ends (blocks nest and may run in several threads), and only if it was on before
the first began. `collect()` reclaims the cycles made since the last collection (a young-generation
collection, so its cost follows what was made since, not what was loaded before); a long block calls it
between bounded units of work (the job: after each chunk), so memory stays bounded however long the
backlog.

Why: the collector runs after every 700 net allocations, and a detection chunk keeps its documents alive
until its checkpoint (tens of thousands of dicts): the older generations fill and every full collection
walks all of them again, a large share of the job's own CPU (`bench pipeline --no-gc-pause` compares).
Reference counting still frees every acyclic object at once, and the job's own structures hold no cycles.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# False: `paused()` leaves the collector alone (`deeplog-siem bench pipeline --no-gc-pause` measures the
# difference).
ENABLED = True
_lock = threading.Lock()
_depth = 0
_was_enabled = False


@contextmanager
def paused() -> Iterator[None]:
    global _depth, _was_enabled
    if not ENABLED:
        yield
        return
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()


def collect() -> int:
    """Reclaim the cycles made since the last collection -> how many objects were unreachable.

    While the collector is paused, every object made since the last collection stays in the young
    generations, so collecting those (not the oldest) finds every cycle made in that time, and walks only
    what was made then: a full collection also walks everything loaded before the run (torch, the model, the
    client), many times the cost. Survivors move to
    the oldest generation, where the collector finds any later garbage once it runs again."""
    return gc.collect(1)
