"""sink: documents -> an index, every one acknowledged or accounted for.

Contract: `write(clients, docs) -> WriteResult`. Each document carries `_index` and a deterministic `_id`,
so writing the same results twice overwrites instead of duplicating. Transient failures (429, 5xx, lost
connections) are retried with backoff; documents the server rejects for good (a mapping conflict, say)
are counted by reason in `WriteResult.rejected` and logged; if transient failures remain after the
retries, `SinkError` is raised and the caller must not advance its checkpoint.
`BackgroundWriter` does the same from a thread of its own: `submit(docs)` returns at once, `flush()` returns
the combined `WriteResult` once everything submitted so far is acknowledged (or raises what went wrong).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from elasticsearch import helpers

from .errors import SinkError
from .es import Clients

log = logging.getLogger(__name__)

_TRANSIENT = {429, 500, 502, 503, 504}


@dataclass
class WriteResult:
    written: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # reason -> count, permanent failures

    @property
    def failed(self) -> int:
        return sum(self.rejected.values())


def _reason(info: dict[str, Any]) -> str:
    err = info.get("error")
    if isinstance(err, dict):
        return str(err.get("type", "unknown"))
    return str(err or f"status_{info.get('status')}")


def write(
    clients: Clients,
    docs: Iterable[dict[str, Any]],
    *,
    chunk_size: int = 500,
    attempts: int = 5,
    backoff_s: float = 1.0,
    refresh: bool = False,
) -> WriteResult:
    result = WriteResult()
    pending = {(d["_index"], d["_id"]): d for d in docs}
    indices = {k[0] for k in pending}
    for attempt in range(attempts):
        try:
            for ok, item in helpers.streaming_bulk(
                clients.es,
                list(pending.values()),
                chunk_size=chunk_size,
                max_retries=2,
                initial_backoff=backoff_s,
                raise_on_error=False,
                raise_on_exception=False,
            ):
                info = next(iter(item.values()))
                key = (info.get("_index"), info.get("_id"))
                status = int(info.get("status", 0) or 0)
                if ok:
                    result.written += 1
                    pending.pop(key, None)
                elif status not in _TRANSIENT and status != 0:
                    result.rejected[_reason(info)] += 1
                    pending.pop(key, None)
                    log.warning("document %s rejected by %s: %s", key[1], key[0], info.get("error"))
        except Exception as e:  # noqa: BLE001 - connection-level failure: what is still pending is retried
            log.warning("bulk write failed (attempt %s/%s): %s", attempt + 1, attempts, e)
        if not pending:
            break
        time.sleep(backoff_s * 2**attempt)
    else:
        raise SinkError(f"{len(pending)} document(s) could not be written after {attempts} attempts")
    if refresh and indices:
        clients.es.indices.refresh(index=",".join(sorted(indices)))
    return result


class BackgroundWriter:
    """`write` in a thread of its own, so the server indexes one batch of results while the job reads and
    scores the next, instead of the job waiting for every write at the end of a chunk."""

    def __init__(self, clients: Clients, **write_kw: Any) -> None:
        self._clients, self._kw = clients, write_kw
        self._q: queue.Queue[list[dict[str, Any]] | None] = queue.Queue()
        self._cond = threading.Condition()
        self._pending = 0
        self._result = WriteResult()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="deeplog-sink-writer", daemon=True)
        self._thread.start()

    def submit(self, docs: Iterable[dict[str, Any]]) -> None:
        batch = list(docs)
        if not batch:
            return
        with self._cond:
            self._pending += 1
        self._q.put(batch)

    def _run(self) -> None:
        while (batch := self._q.get()) is not None:
            try:
                r = write(self._clients, batch, **self._kw)
                with self._cond:
                    self._result.written += r.written
                    self._result.rejected.update(r.rejected)
            except BaseException as e:  # noqa: BLE001 - handed to flush(), raised in the job's thread
                with self._cond:
                    self._error = self._error or e
            finally:
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()

    def flush(self) -> WriteResult:
        """Wait for every submitted batch; the result of all of them since the last flush."""
        with self._cond:
            self._cond.wait_for(lambda: self._pending == 0)
            error, self._error = self._error, None
            result, self._result = self._result, WriteResult()
        if error is not None:
            raise error
        return result

    def close(self) -> None:
        """Stop the thread once the batches already submitted are done (their outcome is not reported)."""
        self._q.put(None)
        self._thread.join()
