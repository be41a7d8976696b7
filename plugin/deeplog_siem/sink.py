"""sink: documents -> an index, every one acknowledged or accounted for.

Contract: `write(clients, docs, op=...) -> WriteResult`. Each document carries `_index` (an index or a
rollover alias) and a deterministic `_id`; its bulk operation is its own `_op_type`, else `op`. With
`op="create"` a document whose id exists already is left as it is (responders' verdicts on an anomaly
survive any reprocessing) and counted in `WriteResult.existing`, neither a failure nor retried. Writes go
through `helpers.streaming_bulk`; each acknowledgement is matched to its document by `_id`, since the server
names the concrete index behind a rollover alias, not the alias the document was sent to. Transient
failures (429, 5xx, lost connections) are retried with backoff; documents the server rejects for good (a
mapping conflict, say) are counted by reason in `WriteResult.rejected` and logged; if transient failures
remain after the retries, `SinkError` is raised and the caller must not advance its checkpoint.
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
from typing import Any, Literal

from elasticsearch import ApiError, helpers

from .errors import SinkError
from .es import Clients

log = logging.getLogger(__name__)

_TRANSIENT = {429, 500, 502, 503, 504}
Op = Literal["index", "create"]


@dataclass
class WriteResult:
    written: int = 0
    existing: int = 0  # `create` documents whose id was there already: left as they were
    rejected: Counter[str] = field(default_factory=Counter)  # reason -> count, permanent failures

    @property
    def failed(self) -> int:
        return sum(self.rejected.values())

    def add(self, other: WriteResult) -> None:
        self.written += other.written
        self.existing += other.existing
        self.rejected.update(other.rejected)


def _reason(info: dict[str, Any]) -> str:
    err = info.get("error")
    if isinstance(err, dict):
        return str(err.get("type", "unknown"))
    return str(err or f"status_{info.get('status')}")


def _status(e: ApiError) -> int:
    try:
        return int(e.meta.status)
    except (TypeError, ValueError):
        return 0


def write(
    clients: Clients,
    docs: Iterable[dict[str, Any]],
    *,
    op: Op = "index",
    chunk_size: int = 500,
    attempts: int = 5,
    backoff_s: float = 1.0,
    refresh: bool = False,
) -> WriteResult:
    result = WriteResult()
    pending = _Pending(d if "_op_type" in d else {**d, "_op_type": op} for d in docs)
    indices = pending.indices()
    for attempt in range(attempts):
        try:
            for ok, item in helpers.streaming_bulk(
                clients.es,
                pending.docs(),
                chunk_size=chunk_size,
                max_retries=2,
                initial_backoff=backoff_s,
                raise_on_error=False,
                raise_on_exception=False,
            ):
                kind, info = next(iter(item.items()))
                status = int(info.get("status", 0) or 0)
                if not ok and (status in _TRANSIENT or status == 0):
                    continue  # still pending: sent again by the next attempt
                doc = pending.settle(info)
                if ok:
                    result.written += 1
                elif status == 409 and kind == "create":
                    result.existing += 1
                else:
                    result.rejected[_reason(info)] += 1
                    where = doc["_index"] if doc else info.get("_index")
                    log.warning("document %s rejected by %s: %s", info.get("_id"), where, info.get("error"))
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


class _Pending:
    """The documents not yet acknowledged, found again by the `_id` of an acknowledgement: its `_index` is the
    concrete index, which for a document sent to a rollover alias is not the name it was sent to, and
    the helper's own retries of 429s reorder the acknowledgements, so neither the name nor the position
    finds it."""

    def __init__(self, docs: Iterable[dict[str, Any]]) -> None:
        self._by_id: dict[str, list[dict[str, Any]]] = {}
        for d in docs:
            self._by_id.setdefault(str(d["_id"]), []).append(d)

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_id.values())

    def docs(self) -> list[dict[str, Any]]:
        return [d for same in self._by_id.values() for d in same]

    def indices(self) -> set[str]:
        return {d["_index"] for same in self._by_id.values() for d in same}

    def settle(self, info: dict[str, Any]) -> dict[str, Any] | None:
        """Remove the document `info` acknowledges -> it (None for an id no longer pending)."""
        same = self._by_id.get(str(info.get("_id")))
        if not same:
            return None
        # One id sent to two targets in one write: the one named alike, else the first sent.
        at = next((i for i, d in enumerate(same) if d["_index"] == info.get("_index")), 0)
        doc = same.pop(at)
        if not same:
            del self._by_id[str(info.get("_id"))]
        return doc


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
                    self._result.add(r)
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
