"""source: incremental reads of raw log documents, in checkpoint order, without gaps or repeats.

Contract: `Source(clients, cfg).pages(after: Checkpoint | None, end=..., limit=...) -> Iterator[list[SourceDoc]]`
yields pages of documents sorted by (checkpoint field, timestamp field), each strictly after `after`.
Reads use a point in time (Elasticsearch `_pit` or OpenSearch `_search/point_in_time`, closed in `finally`)
and `search_after`, so a page boundary never skips or repeats a document even while indexing goes on.
`source.slices` slices of the point in time are read at once (a thread each, `prefetch`) and merged back
into the one sort order; each request starts the order-field range at the last value it has seen.

A `Checkpoint` is the sort values of the last processed document plus the ids of the processed documents
that share exactly those values: resuming with a range query from those values and dropping the listed
ids is exact without any tiebreaker field in the documents.

Only documents whose order field is older than now - `query_delay_seconds` are read, so a document that is
indexed but not yet searchable is never jumped over. That `now` is the cluster's (date math it evaluates),
never the job's clock: each read first asks the cluster for the newest order value below it (with the read's
other filters) and then reads up to that value, so every page and slice of the read has the same upper bound.
In timestamp order (no `event.ingested`), each read also goes `overlap_seconds` behind the checkpoint, and
the checkpoint keeps the ids of the documents it processed in that window: a late event inside the window
is processed once, a re-read one is skipped.
Documents without the order field are never read (they cannot be placed in order).

`Source(clients, cfg, partition=)` reads one partition of the source (`partitions.Partition.clause`) and
also returns the partition field; the field must be numeric in the index (a text or keyword one would
compare as strings), else `ConfigError`.
"""

from __future__ import annotations

import base64
import heapq
import json
import logging
import math
import zlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from elasticsearch import ApiError

from .config import SourceConfig
from .errors import ConfigError
from .es import Clients
from .partitions import Partition
from .prefetch import Prefetch

log = logging.getLogger(__name__)

KEEP_ALIVE = "2m"


@dataclass(frozen=True)
class Checkpoint:
    sort: tuple[Any, ...]  # (checkpoint field value, timestamp value) of the last processed document
    ids: tuple[str, ...] = ()  # processed document ids whose sort values equal `sort`
    # Timestamp order with an overlap: processed document id -> its order value (epoch ms), for every
    # document within the overlap window behind `sort`; a re-read of that window skips exactly these.
    recent: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"sort": list(self.sort), "ids": list(self.ids)}
        if self.recent:
            # One opaque string: a mapping never sees (or conflicts over) thousands of ids and values.
            raw = json.dumps(self.recent, separators=(",", ":")).encode()
            d["recent"] = base64.b64encode(zlib.compress(raw, 6)).decode("ascii")
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Checkpoint | None:
        if not d or not d.get("sort"):
            return None
        recent = json.loads(zlib.decompress(base64.b64decode(d["recent"]))) if d.get("recent") else {}
        return cls(tuple(d["sort"]), tuple(d.get("ids", ())), recent)

    def advance(self, doc: SourceDoc) -> Checkpoint:
        return self.advance_many([doc])

    def advance_many(self, docs: Iterable[SourceDoc], overlap_ms: float = 0) -> Checkpoint:
        """The checkpoint after `docs` (in read order); one pass, whatever the number of ties."""
        return advance(self, docs, overlap_ms)  # type: ignore[return-value]


def advance(cp: Checkpoint | None, docs: Iterable[SourceDoc], overlap_ms: float = 0) -> Checkpoint | None:
    """`cp` moved past `docs` (given in read order). A document sorting before `cp` (a late arrival
    re-read in the overlap window) never moves the checkpoint back; it is only remembered as seen."""
    sort = cp.sort if cp else None
    ids = list(cp.ids) if cp else []
    recent = dict(cp.recent) if cp and overlap_ms > 0 else {}
    for d in docs:
        if overlap_ms > 0:
            recent[d.id] = d.sort[0]
        if sort is None or d.sort > sort:
            sort, ids = tuple(d.sort), [d.id]
        elif d.sort == sort:
            ids.append(d.id)
    if sort is None:
        return None
    if recent and isinstance(sort[0], (int, float)):
        lo = sort[0] - overlap_ms
        recent = {k: v for k, v in recent.items() if isinstance(v, (int, float)) and v >= lo}
    return Checkpoint(sort, tuple(ids), recent)


@dataclass(frozen=True, slots=True)
class SourceDoc:
    index: str
    id: str
    sort: tuple[Any, ...]
    source: dict[str, Any] = field(repr=False)

    def get(self, dotted: str) -> Any:
        return get_field(self.source, dotted)


def get_field(source: Mapping[str, Any], dotted: str) -> Any:
    """A field by dotted name, whether the document nests objects (`host: {name}`) or not (`host.name`)."""
    if dotted in source:
        return source[dotted]
    node: Any = source
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, Mapping):
            return None
        if part in node:
            node = node[part]
            continue
        rest = ".".join(parts[i:])
        return node.get(rest) if isinstance(node, Mapping) else None
    return node


class Source:
    def __init__(self, clients: Clients, cfg: SourceConfig, *, partition: Partition | None = None) -> None:
        self.clients = clients
        self.cfg = cfg
        self.partition = partition
        # 1 where the server refused sliced reads (this run or an earlier one of this process).
        self.slices = 1 if cfg.index in clients.unsliced else cfg.slices
        # Whether the order field is a date: the query delay bounds only a time order (a sequence number
        # has no `now`).
        self.order_is_date = True
        self.order_field = self._order_field()
        if partition is not None and partition.of > 1:
            self._check_partition_field(partition.field)

    def _field_types(self, name: str) -> Any:
        # A plain GET: the client's field_caps() sends a body that some OpenSearch-compatible servers ignore.
        caps = self.clients.es.perform_request(
            "GET",
            f"/{self.cfg.index}/_field_caps",
            params={"fields": name, "ignore_unavailable": "true", "allow_no_indices": "true"},
            headers={"accept": "application/json"},
        ).body
        return caps.get("fields", {}).get(name)

    def _check_partition_field(self, name: str) -> None:
        types = self._field_types(name)
        numeric = {"long", "integer", "short", "byte", "unsigned_long", "float", "double", "half_float"}
        if isinstance(types, dict) and not set(types) <= numeric:
            raise ConfigError(
                f"workers.partition_field: {name} is mapped as {', '.join(sorted(types))} in {self.cfg.index}; "
                "partitions read it by numeric range: map it as an integer (see README, Several workers)"
            )

    def _order_field(self) -> str:
        """The checkpoint field when the documents have it, else the timestamp field (said once, at start)."""
        if self.cfg.checkpoint_field == self.cfg.timestamp_field:
            return self.cfg.timestamp_field
        # A plain GET: the client's field_caps() sends a body that some OpenSearch-compatible servers ignore.
        caps = self.clients.es.perform_request(
            "GET",
            f"/{self.cfg.index}/_field_caps",
            params={
                "fields": self.cfg.checkpoint_field,
                "ignore_unavailable": "true",
                "allow_no_indices": "true",
            },
            headers={"accept": "application/json"},
        ).body
        types = caps.get("fields", {}).get(self.cfg.checkpoint_field)
        if types:
            self.order_is_date = isinstance(types, dict) and set(types) <= {"date", "date_nanos"}
            return self.cfg.checkpoint_field
        log.warning(
            "%s has no %s field; reading in %s order (late-indexed events may be missed)",
            self.cfg.index,
            self.cfg.checkpoint_field,
            self.cfg.timestamp_field,
        )
        return self.cfg.timestamp_field

    @property
    def timestamp_order(self) -> bool:
        return self.order_field == self.cfg.timestamp_field

    @property
    def overlap_ms(self) -> float:
        """How far behind the checkpoint a run re-reads: timestamp order only (event.ingested needs none)."""
        return self.cfg.overlap_seconds * 1000.0 if self.timestamp_order else 0.0

    @property
    def fields(self) -> list[str]:
        cfg = self.cfg
        wanted = [cfg.message_field, cfg.timestamp_field, cfg.host_field, self.order_field]
        if cfg.session_field:
            # Several fields joined name one session ("host.name,process.pid"): each is read.
            wanted += [f.strip() for f in cfg.session_field.split(",") if f.strip()]
        wanted += [*cfg.entity_fields, *([cfg.key_field] if cfg.key_field else []), *cfg.param_fields]
        if self.partition is not None and self.partition.of > 1:
            wanted.append(self.partition.field)
        return sorted(set(wanted))

    def _sort(self) -> list[dict[str, Any]]:
        """The persistent sort (what a checkpoint records): checkpoint field, timestamp, optional tiebreaker."""
        keys = [self.order_field]
        if self.cfg.timestamp_field != self.order_field:
            keys.append(self.cfg.timestamp_field)
        sort = [{k: {"order": "asc", "unmapped_type": "date"}} for k in keys]
        if self.cfg.tiebreaker_field:
            sort.append({self.cfg.tiebreaker_field: {"order": "asc", "unmapped_type": "long"}})
        return sort

    def _delayed_now(self) -> str:
        """Now minus the query delay as date math, which the cluster evaluates with its own clock.
        `event.ingested` is stamped by the ingest node's clock, so only the cluster's clock tells which
        stamped documents may still be unsearchable: a job clock running ahead would move the bound past
        them and the checkpoint would jump over them for good. Date math counts whole seconds at finest,
        so a fractional delay is rounded up (waiting a little longer loses nothing)."""
        delay = math.ceil(self.cfg.query_delay_seconds)
        return f"now-{delay}s" if delay else "now"

    def _query(
        self, after: Checkpoint | None, start: str | None, end: str | None, upper: Any = None
    ) -> dict[str, Any]:
        """The read's query; `upper`: its pinned last order value (None: the cluster's delayed now)."""
        filters: list[dict[str, Any]] = []
        rng: dict[str, Any] = {}
        if upper is not None:
            rng["lte"] = upper
        elif self.order_is_date:
            rng["lt"] = self._delayed_now()
        if after is not None:
            # Epoch milliseconds: what the server returns as sort values of date fields, so they compare alike.
            floor = after.sort[0]
            if self.overlap_ms and isinstance(floor, (int, float)):
                floor = int(floor - self.overlap_ms)
            rng["gte"] = floor
        ts: dict[str, Any] = {}
        if start is not None:
            ts["gte"] = start
        if end is not None:
            ts["lt"] = end
        # Documents without the order field are never read: they have no place in the order.
        filters.append({"range": {self.order_field: rng}} if rng else {"exists": {"field": self.order_field}})
        if ts:
            filters.append({"range": {self.cfg.timestamp_field: ts}})
        if self.cfg.query:
            filters.append(self.cfg.query)
        if self.partition is not None and self.partition.of > 1:
            filters.append(self.partition.clause())
        return {"bool": {"filter": filters}}

    # PIT differs between the flavours: Elasticsearch `_pit`, OpenSearch `_search/point_in_time`.
    def _open_pit(self) -> str:
        es = self.clients.es
        if self.clients.flavour == "elasticsearch":
            return es.open_point_in_time(index=self.cfg.index, keep_alive=KEEP_ALIVE)["id"]
        resp = es.perform_request(
            "POST",
            f"/{self.cfg.index}/_search/point_in_time",
            params={"keep_alive": KEEP_ALIVE},
            headers={"accept": "application/json"},
        )
        return resp.body["pit_id"]

    def _close_pit(self, pit: str) -> None:
        es = self.clients.es
        try:
            if self.clients.flavour == "elasticsearch":
                es.close_point_in_time(id=pit)
            else:
                es.perform_request(
                    "DELETE",
                    "/_search/point_in_time",
                    body={"pit_id": [pit]},
                    headers={"accept": "application/json", "content-type": "application/json"},
                )
        except Exception as e:  # noqa: BLE001 - an unclosed PIT expires by itself; never mask the real error
            log.warning("could not close point in time: %s", e)

    def newest(
        self, after: Checkpoint | None = None, *, start: str | None = None, end: str | None = None
    ) -> Any:
        """The largest checkpoint-field value in the index (epoch ms for dates; None when the index is empty
        or missing, or holds nothing from `after` on): the run summary's lag, and the upper bound a read pins
        before it starts. Same filters as the reads (query delay, `source.query`, `start`/`end` on the
        timestamp); `after` bounds the search to the documents from that checkpoint on (the embedded server
        scans what the query matches, far less than the whole index)."""
        # The top hit of a descending sort, not a max aggregation: the cluster answers it from the field's
        # index without visiting every match (the embedded server too, at a third of the aggregation's cost).
        body = {
            "size": 1,
            "query": self._query(after, start, end),
            "sort": [{self.order_field: {"order": "desc", "unmapped_type": "date"}}],
            "_source": False,
            "track_total_hits": False,
        }
        resp = self.clients.es.options(ignore_status=404).search(index=self.cfg.index, **body)
        hits = (resp.get("hits") or {}).get("hits") or []
        return (hits[0].get("sort") or [None])[0] if hits else None

    def pages(
        self,
        after: Checkpoint | None = None,
        *,
        start: str | None = None,
        end: str | None = None,
        limit: int | None = None,
    ) -> Iterator[list[SourceDoc]]:
        """Pages of documents strictly after `after`, oldest first; at most `limit` documents in all."""
        if not self.clients.es.indices.exists(index=self.cfg.index, allow_no_indices=False):
            log.warning("source index %s does not exist yet", self.cfg.index)
            return
        # The cluster's delayed now is evaluated once, here, and pinned as a value: evaluated per request, the
        # slices read at once would each stop at a different bound, and a document one slice left out could
        # sort below one another slice returned, behind the checkpoint. Asked before the point in time opens,
        # so the point in time holds every document up to the bound.
        upper = self.newest(after, start=start, end=end)
        if upper is None:
            return
        pit = self._open_pit()
        try:
            yield from self._pages(pit, after, start, end, limit, upper)
        finally:
            self._close_pit(pit)

    def _pages(
        self,
        pit: str,
        after: Checkpoint | None,
        start: str | None,
        end: str | None,
        limit: int | None,
        upper: Any,
    ) -> Iterator[list[SourceDoc]]:
        body = self._body(pit, self._query(after, start, end, upper))
        skip_ids = set(after.ids) if after else set()
        seen = after.recent if after else {}
        floor = tuple(after.sort) if after else None
        n = len(body["sort"]) - 1
        left = limit
        if left is not None and left <= 0:
            return
        page: list[SourceDoc] = []
        with closing(self._hits(body)) as hits:
            for h in hits:
                doc = SourceDoc(h["_index"], h["_id"], tuple(h["sort"][:n]), h.get("_source") or {})
                if floor is not None:
                    if doc.sort == floor and doc.id in skip_ids:
                        continue
                    # Behind the checkpoint: only a late arrival in the overlap window not processed yet.
                    if doc.sort < floor and (not self.overlap_ms or doc.id in seen or doc.id in skip_ids):
                        continue
                page.append(doc)
                if left is not None:
                    left -= 1
                    if left <= 0:
                        break
                if len(page) >= self.cfg.page_size:
                    yield page
                    page = []
        if page:
            yield page

    def _body(self, pit: str, query: dict[str, Any]) -> dict[str, Any]:
        """The search request of a read: page size, sort, source fields, point in time."""
        return {
            "size": self.cfg.page_size,
            "query": query,
            # `_shard_doc` breaks ties inside the point in time: without it, search_after skips documents
            # whose sort values equal the last hit of a page (not every server adds it implicitly). It is
            # also what makes the slices' orders one order (`_hits`).
            "sort": [*self._sort(), {"_shard_doc": "asc"}],
            "_source": self.fields,
            "pit": {"id": pit, "keep_alive": KEEP_ALIVE},
            "track_total_hits": False,
        }

    def _hits(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every hit of the query in sort order: one search_after stream, or `slices` of them read at once
        and merged back into that order (each slice is sorted alike, and `_shard_doc` makes the order
        total within the point in time, so the merge is the single stream's order exactly)."""
        if self.slices <= 1:
            for hits in self._server_pages(body):
                yield from hits
            return
        streams = [
            Prefetch(
                self._server_pages(
                    {**body, "pit": dict(body["pit"]), "slice": {"id": i, "max": self.slices}}
                ),
                depth=2,
                name=f"deeplog-slice-{i}",
            )
            for i in range(self.slices)
        ]
        try:
            merged = heapq.merge(*(chain.from_iterable(s) for s in streams), key=_order_key)
            refused = False
            try:
                # The merge asks every slice for its first page before it yields: a server that refuses
                # sliced reads of a point in time says so here, before anything was handed on.
                first = next(merged)
            except StopIteration:
                return
            except ApiError as e:
                if e.status_code != 400:
                    raise
                log.warning(
                    "%s refused a sliced read (%s); reading one stream from now on, in this and later runs of this "
                    "process (set source.slices: 1)",
                    self.cfg.index,
                    e,
                )
                refused = True
            if refused:
                # Outside the except block, so the one-stream read's own errors are not chained to this one.
                for s in streams:
                    s.close()
                self.slices = 1
                self.clients.unsliced.add(self.cfg.index)
                yield from self._hits(body)
                return
            yield first
            yield from merged
        finally:
            for s in streams:
                s.close()

    def _server_pages(self, body: dict[str, Any], narrow: bool = True) -> Iterator[list[dict[str, Any]]]:
        """The raw hits of each search_after request (`body` is advanced in place). With `narrow`, each
        request after the first also starts the order-field range at the last hit's value: search_after
        alone returns the same hits, but a server that evaluates the query over every matching document
        before it skips to the search_after position (the embedded one does) then matches a shrinking
        remainder instead of the whole backlog on every page. `narrow=False` is the plain read the benchmark
        compares the job with."""
        query = body["query"]
        while True:
            resp = self.clients.es.search(**body)
            hits = resp["hits"]["hits"]
            if not hits:
                return
            body["pit"]["id"] = resp.get("pit_id", body["pit"]["id"])
            body["search_after"] = hits[-1]["sort"]
            if narrow:
                body["query"] = self._narrowed(query, hits[-1]["sort"][0])
            yield hits
            if len(hits) < self.cfg.page_size:
                return

    def _narrowed(self, query: dict[str, Any], value: Any) -> dict[str, Any]:
        """`query` (from `_query`) with its order-field range starting at `value` (a sort value of that
        field: epoch milliseconds for dates); unchanged for a value of any other kind."""
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return query
        filters = list(query["bool"]["filter"])
        # Hits come in ascending order from the first range's floor on, so `value` is never below it.
        rng = {**filters[0].get("range", {}).get(self.order_field, {}), "gte": value}
        filters[0] = {"range": {self.order_field: rng}}
        return {"bool": {**query["bool"], "filter": filters}}


def _order_key(hit: Mapping[str, Any]) -> tuple[tuple[bool, Any], ...]:
    # Missing values (a keyword tiebreaker absent from a document) come back as null and sort last; the
    # pairs keep None from ever being compared with a value.
    return tuple((v is None, v) for v in hit["sort"])
