"""anomaly: scored events -> anomaly documents (the analyst-facing record; fields in README.md).

Contract: `key_anomaly(...) -> dict` builds one document for an event the log-key model did not expect
(types `log_key`, `unseen_key`, `session_end`): what happened, what was expected with which probability,
the window of preceding events, the session and a query for its raw logs, and (`workflow`, from
`workflow.diagnose`) where the session left its workflow or why no workflow applies. `parameter_anomaly(...)
-> dict` builds one for an event the key model accepted whose parameter vector the parameter model did not
(type `parameter`): key and template, the deviating dimensions in words ("time gap 4.8 s, expected 0.9 s
(0.7 .. 1.2 s)"), observed and predicted values, the interval, the error and its threshold. The `_id` is
deterministic (source document id + detector + model version), so re-processing never duplicates it.
ECS names where ECS has them, `deeplog.*` for the rest.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .vocab import EOS, NUM_RESERVED, PAD, UNK, Vocabulary

RULES = {
    "log_key": ("DeepLog log-key model", "The event's log key was not among the model's top-g predictions."),
    "unseen_key": ("DeepLog unseen log key", "The message matches no log template learned from normal logs."),
    "session_end": ("DeepLog log-key model", "The session ended where the model expected more events."),
    "parameter": ("DeepLog parameter-value model", "A parameter value deviated from its predicted value."),
}


@dataclass(frozen=True, slots=True)
class EventRef:
    """The raw log event an anomaly is about."""

    index: str
    id: str
    timestamp: Any
    message: str
    host: str | None


def anomaly_id(source_index: str, source_id: str, detector: str, model_version: str) -> str:
    raw = f"{source_index}\x1f{source_id}\x1f{detector}\x1f{model_version}".encode()
    return hashlib.sha1(raw).hexdigest()  # noqa: S324 - an id, not a security hash


def key_label(key: int, vocab: Vocabulary) -> str:
    return {PAD: "<PAD>", UNK: "<UNK>", EOS: "<end of session>"}.get(key, f"K{key}")


def session_query(session_field: str | None, session_id: str, message_field: str) -> str:
    """A Lucene/KQL query string that finds the session's raw logs in Discover."""
    escaped = session_id.replace('"', '\\"')
    if session_field:
        return f'{session_field}:"{escaped}"'
    return f'{message_field}:"{escaped}"'


def key_anomaly(
    *,
    anomaly_type: str,
    event: EventRef,
    session_id: str,
    position: int,
    window: Sequence[int],
    actual: int,
    probability: float,
    rank: int,
    expected: Sequence[tuple[int, float]],
    params: Sequence[str],
    vocab: Vocabulary,
    model_version: str,
    run_id: str,
    query: str,
    top_g: int,
    index: str,
    min_probability: float = 0.0,
    workflow: dict[str, Any] | None = None,
    anchor_probability: float | None = None,
) -> dict[str, Any]:
    name, description = RULES[anomaly_type]
    history = [k for k in window if k != PAD]
    actual_text = vocab.template(actual) if actual not in (EOS, UNK) else key_label(actual, vocab)
    exp = [
        {
            "key_id": int(k),
            "template": vocab.template(k) if k >= NUM_RESERVED else key_label(k, vocab),
            "probability": round(float(p), 6),
            "rank": r,
        }
        for r, (k, p) in enumerate(expected, 1)
    ]
    exp_summary = ", ".join(f"{key_label(e['key_id'], vocab)} ({e['probability']:.2f})" for e in exp[:5])
    if anomaly_type == "unseen_key":
        summary = f"unseen log message in session {session_id}: no known template matches"
    elif anomaly_type == "session_end":
        summary = f"session {session_id} ended after {position} events; expected next: {exp_summary}"
    else:
        # A key inside the top g is flagged only by the probability floor (model.min_probability), or, under
        # a feedback version, because the trained model rejects it and no feedback raised it (the anchor).
        if rank >= top_g:
            why = f"rank {rank + 1} > top-{top_g}"
        elif anchor_probability is not None:
            why = f"rejected by the trained model at p={anchor_probability:.4g}, not taught by feedback"
        else:
            why = f"below min_probability {min_probability:g}"
        summary = (
            f'unexpected {key_label(actual, vocab)} "{actual_text}" at event {position} of session '
            f"{session_id} (p={probability:.4g}, {why}); expected: {exp_summary}"
        )
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "_index": index,
        "_id": anomaly_id(
            event.index,
            event.id,
            "log_key" if anomaly_type != "session_end" else "session_end",
            model_version,
        ),
        "@timestamp": event.timestamp,
        "message": event.message,
        "host": {"name": event.host} if event.host else {},
        "event": {"kind": "alert", "module": "deeplog", "dataset": "deeplog.anomaly", "created": now},
        "rule": {"name": name, "id": f"deeplog-{anomaly_type}", "description": description},
        "deeplog": {
            "anomaly_type": anomaly_type,
            "score": round(1.0 - float(probability), 6),
            "summary": summary,
            "model_version": model_version,
            "run_id": run_id,
            "source": {"index": event.index, "id": event.id},
            "session": {"id": session_id, "position": position, "query": query},
            "key": {
                "id": int(actual),
                "template": actual_text,
                "probability": round(float(probability), 6),
                "rank": int(rank) + 1,
                "params": [str(p) for p in params],
            },
            "window": {
                "key_ids": [int(k) for k in history],
                "templates": [vocab.template(k) for k in history],
            },
            # Stored for reading, not indexed (`enabled: false`: indexing 9 candidates x 4 values cost more than
            # the rest of the document); `expected_keys` is the searchable form, most likely first.
            "expected": exp,
            "expected_keys": [key_label(int(k), vocab) for k, _ in expected],
            "expected_summary": exp_summary,
            **({"workflow": workflow} if workflow is not None else {}),
        },
    }


def dimension_name(dim: int) -> str:
    """Dimension 0 of a parameter vector is the time gap; then the template's numeric parameters in order."""
    return "time gap" if dim == 0 else f"parameter {dim}"


def _value(dim: int, v: float) -> str:
    return f"{v:.3g} s" if dim == 0 else f"{v:.4g}"


def parameter_anomaly(
    *,
    event: EventRef,
    session_id: str,
    position: int,
    window: Sequence[int],
    key: int,
    params: Sequence[str],
    dims: Sequence[int],
    observed: Sequence[float],
    predicted: Sequence[float],
    low: Sequence[float],
    high: Sequence[float],
    error: float,
    threshold: float,
    vocab: Vocabulary,
    model_version: str,
    run_id: str,
    query: str,
    index: str,
    workflow: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`dims`: the deviating dimensions; the value lists hold every dimension of the vector; `workflow`: the
    session's place in its workflow with the slow step (`workflow.Diagnosis.fields()`)."""
    name, description = RULES["parameter"]
    history = [k for k in window if k != PAD]
    template = vocab.template(key)
    said = [
        f"{dimension_name(d)} {_value(d, observed[d])}, expected {_value(d, predicted[d])} "
        f"({_value(d, low[d])} .. {_value(d, high[d])})"
        for d in dims
    ]
    text = "; ".join(said)
    summary = f'unusual parameters of {key_label(key, vocab)} "{template}" in session {session_id}: {text}'
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "_index": index,
        "_id": anomaly_id(event.index, event.id, "parameter", model_version),
        "@timestamp": event.timestamp,
        "message": event.message,
        "host": {"name": event.host} if event.host else {},
        "event": {"kind": "alert", "module": "deeplog", "dataset": "deeplog.anomaly", "created": now},
        "rule": {"name": name, "id": "deeplog-parameter", "description": description},
        "deeplog": {
            "anomaly_type": "parameter",
            # Two-sided Gaussian confidence of the error: 0.999 at 3.29 standard deviations.
            "score": round(math.erf(float(error) / math.sqrt(2.0)), 6),
            "summary": summary,
            "model_version": model_version,
            "run_id": run_id,
            "source": {"index": event.index, "id": event.id},
            "session": {"id": session_id, "position": position, "query": query},
            "key": {"id": int(key), "template": template, "params": [str(p) for p in params]},
            "window": {
                "key_ids": [int(k) for k in history],
                "templates": [vocab.template(k) for k in history],
            },
            "parameter": {
                "dimension": [dimension_name(d) for d in dims],
                "observed": [round(float(v), 6) for v in observed],
                "predicted": [round(float(v), 6) for v in predicted],
                "low": [round(float(v), 6) for v in low],
                "high": [round(float(v), 6) for v in high],
                "error": round(float(error), 4),
                "threshold": round(float(threshold), 4),
                "description": text,
            },
            **({"workflow": workflow} if workflow is not None else {}),
        },
    }
