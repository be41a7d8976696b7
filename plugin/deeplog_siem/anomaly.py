"""anomaly: scored events -> anomaly documents (the analyst-facing record; fields in README.md), and the
one typed form of that document, which the detection job writes and the feedback job reads.

Contract:
- `AnomalyDoc` (frozen dataclasses nested as the document is: `deeplog` is a `Details`, with `SourceInfo`,
  `SessionInfo`, `KeyInfo`, `WindowInfo`, `ExpectedKey`, `ParameterInfo`) is the only spelling of the schema
  in code. `to_source() -> dict` is the JSON the job writes (a field that is None is left out; an empty nested
  object stays `{}`), `AnomalyDoc.from_source(dict) -> AnomalyDoc` reads a document back from the cluster
  (`Details.from_source(dict)` reads its `deeplog` object alone). What is read back is untrusted (responders
  and other tools update these documents): a missing required field or a value of the wrong type raises
  `InvalidAnomaly` with the field's path and the reason, never another exception; unknown fields are ignored.
  `Feedback` is the responders' and the feedback job's part of `deeplog` (`feedback`, `feedback_status`, ...),
  read leniently by `Feedback.from_source`: a wrong value there is a verdict the feedback job reports, not a
  malformed document.
- `key_anomaly(ctx, event, verdict, workflow=None) -> dict` builds the bulk action (`_index`, `_id` and the
  source) for an event the log-key model did not expect (types `log_key`, `unseen_key`, `session_end`): what
  happened, what was expected with which probability, the window of preceding events, the session and a
  query for its raw logs, and (`workflow`, from `workflow.diagnose`) where the session left its workflow or
  why no workflow applies. `parameter_anomaly(ctx, event, verdict, workflow=None) -> dict` builds one for an
  event the key model accepted whose parameter vector the parameter model did not (type `parameter`): key
  and template, the deviating dimensions in words ("time gap 4.8 s, expected 0.9 s (0.7 .. 1.2 s)"),
  observed and predicted values, the interval, the error and its threshold. `ctx` (`DocContext`) is what all
  documents of a run share, `event` (`SessionEvent`) the event in its session, `verdict` (`KeyVerdict`,
  `ParamVerdict`) the model's scores.
- What the feedback job learns from (`Details.learned()`: the event, model version, actual key, window, and
  the parameter error and threshold) is sealed by the job (`deeplog.seal`, `seal.sign` with
  `DocContext.seal_key`), so an edit by anyone who can write the index shows; `session.query` quotes the
  session id, whatever it holds, as one phrase.
- The `_id` is deterministic (source document id + detector + model version), so re-processing never
  duplicates a document. ECS names where ECS has them, `deeplog.*` for the rest; the index template
  (assets/templates/anomalies.json) maps every field the dataclasses can write (tests/test_anomaly_doc.py).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import DEFAULT_JOB
from .links import discover_url
from .related import related_values
from .risk import ECS_SEVERITY, fallback_rarity, param_rarity, risk_score, severity
from .seal import sign
from .timefmt import utc_now
from .vocab import EOS, NUM_RESERVED, PAD, UNK, Vocabulary

RULES = {
    "log_key": ("DeepLog log-key model", "The event's log key was not among the model's top-g predictions."),
    "unseen_key": ("DeepLog unseen log key", "The message matches no log template learned from normal logs."),
    "session_end": ("DeepLog log-key model", "The session ended where the model expected more events."),
    "parameter": ("DeepLog parameter-value model", "A parameter value deviated from its predicted value."),
}


ECS_VERSION = "8.11.0"
ECS_CATEGORY = ("intrusion_detection",)
ECS_TYPE = ("info",)
PRODUCT = "deeplog-siem"
OBSERVER_TYPE = "log-anomaly-detection"


class InvalidAnomaly(ValueError):
    """A document read back from the cluster does not have the anomaly document's form."""


# ------------------------------------------------------------------------------------------ typed document


@dataclass(frozen=True, slots=True)
class HostInfo:
    name: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EventInfo:
    kind: str = "alert"
    module: str = "deeplog"
    dataset: str = "deeplog.anomaly"
    created: str
    # ECS alert fields: the risk score and its band as Elastic detection rules number them. Optional when
    # read back: documents written before risk scores existed have neither.
    risk_score: float | None = None
    severity: int | None = None
    category: tuple[str, ...] = ECS_CATEGORY
    type: tuple[str, ...] = ECS_TYPE


@dataclass(frozen=True, slots=True)
class EcsInfo:
    version: str = ECS_VERSION


@dataclass(frozen=True, slots=True, kw_only=True)
class ObserverInfo:
    """The product and the job that wrote the document."""

    name: str
    product: str = PRODUCT
    vendor: str = PRODUCT
    type: str = OBSERVER_TYPE


@dataclass(frozen=True, slots=True)
class RelatedInfo:
    """ECS `related.*`: the hosts, users and IP addresses the event names (`related.related`)."""

    hosts: tuple[str, ...] = ()
    user: tuple[str, ...] = ()
    ip: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RuleInfo:
    name: str
    id: str
    description: str


@dataclass(frozen=True, slots=True)
class SourceInfo:
    index: str
    id: str


@dataclass(frozen=True, slots=True)
class SessionInfo:
    id: str
    position: int
    query: str
    url: str | None = None  # the session's logs in Kibana Discover (only with `kibana.url`)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: int
    template: str
    probability: float | None = None  # key anomalies only
    rank: int | None = None  # key anomalies only, 1-based
    params: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WindowInfo:
    key_ids: tuple[int, ...]
    templates: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ExpectedKey:
    key_id: int
    template: str
    probability: float
    rank: int


@dataclass(frozen=True, slots=True)
class ParameterInfo:
    dimension: tuple[str, ...]
    observed: tuple[float, ...]
    predicted: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    error: float
    threshold: float
    description: str


@dataclass(frozen=True, slots=True)
class Details:
    """The document's `deeplog` object."""

    anomaly_type: str
    score: float
    summary: str
    model_version: str
    run_id: str
    source: SourceInfo
    session: SessionInfo
    key: KeyInfo
    window: WindowInfo
    # 0-100 and its band (`risk`); optional when read back (documents written before risk scores existed).
    risk_score: float | None = None
    severity: str | None = None
    # Stored for reading, not indexed (`enabled: false`: indexing every candidate's values would cost more
    # than the rest of the document); `expected_keys` is the searchable form, most likely first. Key
    # anomalies only.
    expected: tuple[ExpectedKey, ...] | None = None
    expected_keys: tuple[str, ...] | None = None
    expected_summary: str | None = None
    parameter: ParameterInfo | None = None  # parameter anomalies only
    # `workflow.Diagnosis.fields()`: that module owns its form (mapped `dynamic: true`).
    workflow: dict[str, Any] | None = None
    # The job's `seal.sign` over `learned()`: stored, not indexed.
    seal: str | None = None
    # `job.name` of the job that wrote it (absent on documents written before jobs had names: the default
    # job's).
    job: str | None = None

    def learned(self) -> dict[str, Any]:
        """What the feedback job learns from, and so what the detection job seals: the event, the model
        version, the actual key, the window and the parameter error with its threshold."""
        p = self.parameter
        return {
            "anomaly_type": self.anomaly_type,
            "model_version": self.model_version,
            "source": [self.source.index, self.source.id],
            "key": [self.key.id, self.key.template],
            "window": [list(self.window.key_ids), list(self.window.templates)],
            "parameter": None if p is None else [p.error, p.threshold],
        }

    def sealed(self, secret: bytes | None) -> Details:
        """This object with the job's seal under `secret` (None: unsealed, as before sealing existed)."""
        return self if secret is None else dataclasses.replace(self, seal=sign(secret, self.learned()))

    @classmethod
    def from_source(cls, source: Any) -> Details:
        """The `deeplog` object of a document read back, alone: what the rest of the document holds is not
        read (other tools may change it), and errors carry the same paths as `AnomalyDoc.from_source`."""
        if not isinstance(source, Mapping):
            _fail("", f"expected an object, got {type(source).__name__}")
        if "deeplog" not in source:
            _fail("deeplog", "missing")
        return _decode(cls, source["deeplog"], "deeplog")


@dataclass(frozen=True, slots=True)
class AnomalyDoc:
    timestamp: str = field(metadata={"name": "@timestamp"})
    message: str
    host: HostInfo
    event: EventInfo
    rule: RuleInfo
    deeplog: Details
    # ECS alert fields; optional when read back (documents written before they existed).
    ecs: EcsInfo | None = None
    observer: ObserverInfo | None = None
    related: RelatedInfo | None = None

    @property
    def detector(self) -> str:
        """The detector in the `_id`: one event has at most one key anomaly and one parameter anomaly."""
        kind = self.deeplog.anomaly_type
        return kind if kind in ("session_end", "parameter") else "log_key"

    @property
    def doc_id(self) -> str:
        d = self.deeplog
        return anomaly_id(d.source.index, d.source.id, self.detector, d.model_version, job=d.job)

    def to_source(self) -> dict[str, Any]:
        return _encode(self)

    def action(self, index: str) -> dict[str, Any]:
        """The bulk action that writes this document to `index`."""
        return {"_index": index, "_id": self.doc_id, **self.to_source()}

    @classmethod
    def from_source(cls, source: Any) -> AnomalyDoc:
        return _decode(cls, source, "")


# A feedback field as read back: text as written, or whatever JSON value a responder or tool put there
# (text first: it is what the job writes and the index template maps).
FeedbackValue = str | int | float | bool | list[Any] | dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Feedback:
    """The feedback fields of `deeplog` (README "Feedback"): responders set the first three, the feedback
    job the rest."""

    feedback: FeedbackValue = None
    feedback_by: FeedbackValue = None
    feedback_comment: FeedbackValue = None
    feedback_status: FeedbackValue = None
    feedback_applied_at: FeedbackValue = None
    feedback_model_version: FeedbackValue = None
    feedback_error: FeedbackValue = None

    @classmethod
    def from_source(cls, source: Any) -> Feedback:
        """Lenient: every value is kept as read, text or not, so the job can say what is wrong with one (as
        JSON: `json.dumps`); a document without `deeplog` has no feedback."""
        d = source.get("deeplog") if isinstance(source, Mapping) else None
        if not isinstance(d, Mapping):
            return cls()
        return cls(**{f.name: d.get(f.name) for f in dataclasses.fields(cls)})


def json_name(f: dataclasses.Field) -> str:
    return f.metadata.get("name", f.name)


# The encoder runs once per anomaly document on the scoring thread: it looks each dataclass's fields up once
# (`_plan`), and tests exact types before the general checks, since nearly every value is a plain scalar.
_SCALARS = frozenset({str, int, float, bool, type(None)})
_VALUE, _SCALAR_ITEMS, _OTHER = 0, 1, 2


@functools.cache
def _plan(cls: type) -> tuple[tuple[str, str, int], ...]:
    """(attribute, JSON name, kind) of each field of a document dataclass, in field order; the kind, from the
    type hint, picks the fast path (a value that does not fit it takes the general one)."""
    hints = field_types(cls)
    plan = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if tp in _SCALARS:
            kind = _VALUE
        elif typing.get_origin(tp) is tuple and typing.get_args(tp)[0] in _SCALARS:
            kind = _SCALAR_ITEMS
        else:
            kind = _OTHER
        plan.append((f.name, json_name(f), kind))
    return tuple(plan)


def _encode_fields(obj: Any, plan: tuple[tuple[str, str, int], ...]) -> dict[str, Any]:
    """A dataclass -> its JSON object; a field that is None is left out."""
    out: dict[str, Any] = {}
    for attr, name, kind in plan:
        v = getattr(obj, attr)
        if v is None:
            continue
        t = type(v)
        if kind == _VALUE and t in _SCALARS:
            out[name] = v
        elif kind == _SCALAR_ITEMS and (t is tuple or t is list):
            out[name] = [x if type(x) in _SCALARS else _encode(x) for x in v]
        else:
            out[name] = _encode(v)
    return out


def _encode(value: Any) -> Any:
    t = type(value)
    if t in _SCALARS:
        return value
    if t is tuple or t is list:
        return [_encode(v) for v in value]
    if t is dict:
        return dict(value)
    if dataclasses.is_dataclass(value):
        return _encode_fields(value, _plan(t))
    if isinstance(value, (tuple, list)):
        return [_encode(v) for v in value]
    if isinstance(value, Mapping):
        return dict(value)
    return value


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fail(path: str, why: str) -> typing.NoReturn:
    raise InvalidAnomaly(f"{path or 'the document'}: {why}")


def _decode(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _decode(args[0], value, path)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            _fail(path, f"expected an object, got {type(value).__name__}")
        hints = field_types(tp)
        kw = {}
        for f in dataclasses.fields(tp):
            name = json_name(f)
            sub = f"{path}.{name}" if path else name
            if name in value:
                kw[f.name] = _decode(hints[f.name], value[name], sub)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                _fail(sub, "missing")
        return tp(**kw)
    if origin is tuple:
        if not isinstance(value, list):
            _fail(path, f"expected a list, got {type(value).__name__}")
        item = typing.get_args(tp)[0]
        return tuple(_decode(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            _fail(path, f"expected an object, got {type(value).__name__}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(path, f"expected a finite number, got {value!r:.40}")
        try:
            # float() first: JSON allows integers no float can hold, and math.isfinite raises on those.
            number = float(value)
        except OverflowError:
            _fail(path, "number out of range")
        if not math.isfinite(number):
            _fail(path, f"expected a finite number, got {value!r:.40}")
        return number
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(path, f"expected an integer, got {value!r:.40}")
        return value
    if tp is str:
        if not isinstance(value, str):
            _fail(path, f"expected text, got {type(value).__name__}")
        return value
    raise TypeError(f"no reader for {tp!r}")  # a schema error in this module, not bad input


# --------------------------------------------------------------------------------------------- building


@dataclass(frozen=True, slots=True)
class EventRef:
    """The raw log event an anomaly is about."""

    index: str
    id: str
    timestamp: str  # ISO 8601, the job's form (`timefmt.iso_utc`)
    message: str
    host: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class DocContext:
    """What every anomaly document of one run shares."""

    vocab: Vocabulary
    model_version: str
    run_id: str
    index: str  # the anomalies index
    message_field: str
    session_field: str | None = None
    # The value the keyer writes for an entity field a document lacks (entity streams), else None.
    session_missing: str | None = None
    # The detector's settings, which the documents' summaries cite: required, since a default would make a
    # document give a wrong reason for its verdict.
    top_g: int
    min_probability: float
    # `seal.key(model.dir)`: the detection job seals what feedback learns from (None: documents unsealed).
    seal_key: bytes | None = field(default=None, repr=False)
    job: str = DEFAULT_JOB  # `job.name`: every document names its job (`deeplog.job`)
    # `kibana.url` and `kibana.space`: each document links to its session's logs in Discover.
    kibana_url: str | None = None
    kibana_space: str | None = None

    def query(self, session_id: str) -> str:
        return session_query(self.session_field, session_id, self.message_field, missing=self.session_missing)


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """The event an anomaly is about, in its session."""

    event: EventRef
    session_id: str
    position: int  # index of the event in its session (for a session end: its number of events)
    history: Sequence[int]  # the keys before it in its session, oldest first (PAD ignored)
    params: Sequence[str] = ()  # the message's parameters, as text


@dataclass(frozen=True, slots=True)
class KeyVerdict:
    """The log-key model's verdict on one event (or a session's end)."""

    anomaly_type: str  # log_key | unseen_key | session_end
    actual: int
    probability: float
    rank: int  # 0-based rank of `actual` among the predictions
    expected: Sequence[tuple[int, float]]  # (key, probability), most likely first
    # Under a feedback version: the trained model's probability when it (the anchor) rejects the key.
    anchor_probability: float | None = None
    # The share of normal events at least as unusual (`KeyScores.rarity`); None: `risk.fallback_rarity`.
    rarity: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ParamVerdict:
    """The parameter model's verdict on one event: the value lists hold every dimension of the vector,
    `dims` the deviating ones."""

    key: int
    dims: Sequence[int]
    observed: Sequence[float]
    predicted: Sequence[float]
    low: Sequence[float]
    high: Sequence[float]
    error: float
    threshold: float
    # The share of normal vectors at least as unusual (`risk.param_rarity` with `params.confidence`); None:
    # the error's Gaussian tail alone.
    rarity: float | None = None


def anomaly_id(
    source_index: str, source_id: str, detector: str, model_version: str, *, job: str | None = None
) -> str:
    """Two jobs reading the same document never share an id; the default job's ids are those of before
    jobs had names, so a re-read keeps the document written then."""
    raw = f"{source_index}\x1f{source_id}\x1f{detector}\x1f{model_version}"
    if job is not None and job != DEFAULT_JOB:
        raw += f"\x1f{job}"
    return hashlib.sha1(raw.encode()).hexdigest()  # noqa: S324 - an id, not a security hash


def key_label(key: int, vocab: Vocabulary) -> str:
    return {PAD: "<PAD>", UNK: "<UNK>", EOS: "<end of session>"}.get(key, f"K{key}")


def session_query(
    session_field: str | None, session_id: str, message_field: str, *, missing: str | None = None
) -> str:
    """A Lucene/KQL query string that finds the session's raw logs in Discover: the id is one quoted phrase
    whatever it holds (it comes from the logs). Inside quotes both languages treat only the backslash and the
    quote as special; KQL would keep any other escape as written, so those two alone are escaped, backslash
    first. Several comma-separated fields (or an entity stream's fields) made the id by joining their values
    with "|": each field gets its own phrase, and a value the keyer wrote as `missing` asks for the field's
    absence. An id that does not split into one value per field (a value holding "|") falls back to the
    message."""

    def phrase(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    fields = [f.strip() for f in (session_field or "").split(",") if f.strip()]
    if len(fields) == 1:
        return f"{fields[0]}:{phrase(session_id)}"
    values = session_id.split("|")
    if fields and len(values) == len(fields):
        present = [f"{f}:{phrase(v)}" for f, v in zip(fields, values, strict=True) if v != missing]
        absent = [f"NOT {f}:*" for f, v in zip(fields, values, strict=True) if v == missing]
        if present:
            return " AND ".join(present + absent)
    return f"{message_field}:{phrase(session_id)}"


def _common(ctx: DocContext, ev: SessionEvent, anomaly_type: str, rarity: float) -> dict[str, Any]:
    """The parts every anomaly document has, as `AnomalyDoc` and `Details` keyword arguments."""
    name, description = RULES[anomaly_type]
    history = [int(k) for k in ev.history if k != PAD]
    e = ev.event
    risk = risk_score(rarity)
    band = severity(risk)
    query = ctx.query(ev.session_id)
    url = discover_url(ctx.kibana_url, query, e.timestamp, space=ctx.kibana_space) if ctx.kibana_url else None
    hosts, users, ips = related_values(e.host, e.message, ev.params)
    doc = {
        "timestamp": e.timestamp,
        "message": e.message,
        "host": HostInfo(e.host or None),
        "event": EventInfo(created=utc_now(), risk_score=risk, severity=ECS_SEVERITY[band]),
        "rule": RuleInfo(name, f"deeplog-{anomaly_type}", description),
        "ecs": EcsInfo(),
        "observer": ObserverInfo(name=f"{PRODUCT} {ctx.job}"),
        "related": RelatedInfo(hosts, users, ips),
    }
    details = {
        "job": ctx.job,
        "anomaly_type": anomaly_type,
        "model_version": ctx.model_version,
        "run_id": ctx.run_id,
        "source": SourceInfo(e.index, e.id),
        "session": SessionInfo(ev.session_id, int(ev.position), query, url),
        "window": WindowInfo(tuple(history), tuple(ctx.vocab.template(k) for k in history)),
        "risk_score": risk,
        "severity": band,
    }
    return {"doc": doc, "details": details}


def key_document(
    ctx: DocContext, ev: SessionEvent, v: KeyVerdict, workflow: dict[str, Any] | None = None
) -> AnomalyDoc:
    vocab, kind = ctx.vocab, v.anomaly_type
    actual_text = vocab.template(v.actual) if v.actual not in (EOS, UNK) else key_label(v.actual, vocab)
    exp = tuple(
        ExpectedKey(
            int(k), vocab.template(k) if k >= NUM_RESERVED else key_label(k, vocab), round(float(p), 6), r
        )
        for r, (k, p) in enumerate(v.expected, 1)
    )
    exp_summary = ", ".join(f"{key_label(e.key_id, vocab)} ({e.probability:.2f})" for e in exp[:5])
    if kind == "unseen_key":
        summary = f"unseen log message in session {ev.session_id}: no known template matches"
    elif kind == "session_end":
        summary = f"session {ev.session_id} ended after {ev.position} events; expected next: {exp_summary}"
    else:
        # A key inside the top g is flagged only by the probability floor (model.min_probability), or, under
        # a feedback version, because the trained model rejects it and no feedback raised it (the anchor).
        if v.rank >= ctx.top_g:
            why = f"rank {v.rank + 1} > top-{ctx.top_g}"
        elif v.anchor_probability is not None:
            why = f"rejected by the trained model at p={v.anchor_probability:.4g}, not taught by feedback"
        else:
            why = f"below min_probability {ctx.min_probability:g}"
        summary = (
            f'unexpected {key_label(v.actual, vocab)} "{actual_text}" at event {ev.position} of session '
            f"{ev.session_id} (p={v.probability:.4g}, {why}); expected: {exp_summary}"
        )
    rarity = v.rarity if v.rarity is not None else fallback_rarity(v.probability, len(vocab))
    parts = _common(ctx, ev, kind, rarity)
    details = Details(
        **parts["details"],
        score=round(1.0 - float(v.probability), 6),
        summary=summary,
        key=KeyInfo(
            int(v.actual),
            actual_text,
            round(float(v.probability), 6),
            int(v.rank) + 1,
            tuple(str(p) for p in ev.params),
        ),
        expected=exp,
        expected_keys=tuple(key_label(int(k), vocab) for k, _ in v.expected),
        expected_summary=exp_summary,
        workflow=workflow,
    )
    return AnomalyDoc(**parts["doc"], deeplog=details.sealed(ctx.seal_key))


def key_anomaly(
    ctx: DocContext, ev: SessionEvent, v: KeyVerdict, workflow: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The bulk action of `key_document`."""
    return key_document(ctx, ev, v, workflow).action(ctx.index)


def dimension_name(dim: int) -> str:
    """Dimension 0 of a parameter vector is the time gap; then the template's numeric parameters in order."""
    return "time gap" if dim == 0 else f"parameter {dim}"


def _value(dim: int, v: float) -> str:
    return f"{v:.3g} s" if dim == 0 else f"{v:.4g}"


def parameter_document(
    ctx: DocContext, ev: SessionEvent, v: ParamVerdict, workflow: dict[str, Any] | None = None
) -> AnomalyDoc:
    """`workflow`: the session's place in its workflow with the slow step (`workflow.Diagnosis.fields()`)."""
    template = ctx.vocab.template(v.key)
    said = [
        f"{dimension_name(d)} {_value(d, v.observed[d])}, expected {_value(d, v.predicted[d])} "
        f"({_value(d, v.low[d])} .. {_value(d, v.high[d])})"
        for d in v.dims
    ]
    text = "; ".join(said)
    summary = (
        f'unusual parameters of {key_label(v.key, ctx.vocab)} "{template}" in session {ev.session_id}: {text}'
    )

    def rounded(xs: Sequence[float]) -> tuple[float, ...]:
        return tuple(round(float(x), 6) for x in xs)

    rarity = v.rarity if v.rarity is not None else param_rarity(v.error, v.threshold, None)
    parts = _common(ctx, ev, "parameter", rarity)
    details = Details(
        **parts["details"],
        # Two-sided Gaussian confidence of the error: 0.999 at 3.29 standard deviations.
        score=round(math.erf(float(v.error) / math.sqrt(2.0)), 6),
        summary=summary,
        key=KeyInfo(int(v.key), template, params=tuple(str(p) for p in ev.params)),
        parameter=ParameterInfo(
            dimension=tuple(dimension_name(d) for d in v.dims),
            observed=rounded(v.observed),
            predicted=rounded(v.predicted),
            low=rounded(v.low),
            high=rounded(v.high),
            error=round(float(v.error), 4),
            threshold=round(float(v.threshold), 4),
            description=text,
        ),
        workflow=workflow,
    )
    return AnomalyDoc(**parts["doc"], deeplog=details.sealed(ctx.seal_key))


def parameter_anomaly(
    ctx: DocContext, ev: SessionEvent, v: ParamVerdict, workflow: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The bulk action of `parameter_document`."""
    return parameter_document(ctx, ev, v, workflow).action(ctx.index)
