"""sink: documents -> an index, every one acknowledged or accounted for.

Contract: `write(clients, docs) -> WriteResult`. Each document carries `_index` and a deterministic `_id`,
so writing the same results twice overwrites instead of duplicating. Transient failures (429, 5xx, lost
connections) are retried with backoff; documents the server rejects for good (a mapping conflict, say)
are counted by reason in `WriteResult.rejected` and logged; if transient failures remain after the
retries, `SinkError` is raised and the caller must not advance its checkpoint.
"""

from __future__ import annotations

import logging
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
