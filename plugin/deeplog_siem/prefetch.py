"""prefetch: an iterator read ahead by a background thread.

Contract: `Prefetch(items: Iterator[T], depth) ` runs `items` in its own thread, at most `depth` items ahead;
`next() -> T | None` (None at the end; an exception raised by `items` is raised here), iteration yields the
same items, `ready()` says whether `next()` would return at once, and `close()` stops the thread, which
closes `items` in its own thread (a generator's `finally`, e.g. closing a point in time, runs there).
Items must not be None.

Used for the source's pages (the next page is on its way while this one is scored) and for each slice of a
sliced read (every slice's next request is in flight at once).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Prefetch(Generic[T]):
    _END = object()

    def __init__(self, items: Iterator[T], depth: int = 2, name: str = "deeplog-prefetch") -> None:
        self._items = items
        self._q: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        # A timeout, not a blocking put: `close()` must be able to stop a reader whose queue is full.
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    break
            self._put(self._END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(e)
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()

    def ready(self) -> bool:
        """Whether `next()` would return without waiting."""
        return not self._q.empty()

    def next(self) -> T | None:
        if self._done:
            return None
        item = self._q.get()
        if item is self._END:
            self._done = True
            return None
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return item

    def __iter__(self) -> Iterator[T]:
        while (item := self.next()) is not None:
            yield item

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._q.get(timeout=0.1)
            except queue.Empty:
                pass
        self._thread.join()
