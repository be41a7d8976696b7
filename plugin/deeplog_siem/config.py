"""config: YAML file -> frozen `Config` dataclasses.

Contract: `load_config(path)` (or `parse_config(mapping)`) returns a fully validated, immutable `Config`, or
raises `ConfigError` whose message starts with the dotted key that is wrong (`elasticsearch.hosts is
required`, `model.window: must be >= 1, got 0`, `source.pagesize: unknown key`). `${VAR}` and
`${VAR:-default}` in string values are expanded from the environment so secrets stay out of the file.
Runtime state (checkpoints, model versions) never lives here: see `state`.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from .cron import parse_cron
from .errors import ConfigError
from .urls import has_userinfo, redact

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _check(key: str, ok: bool, reason: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {reason}")


def _check_credentials(key: str, api_key: str | None, username: str | None, password: str | None) -> None:
    _check(
        f"{key}.password",
        (username is None) == (password is None),
        "username and password must be given together",
    )
    _check(f"{key}.api_key", not (api_key and username), "give either api_key or username/password, not both")


def _check_url(key: str, url: str) -> None:
    _check(key, url.startswith(("http://", "https://")), f"must be an http(s) URL, got {redact(url)!r}")


def _check_plain_http(key: str, url: str, section: str, credentials: str | None, allowed: bool) -> None:
    """Credentials must not cross the network in clear text unless the configuration says so."""
    if credentials is None and has_userinfo(url):
        credentials = "the URL's user name and password"
    if allowed or credentials is None or not url.lower().startswith("http://"):
        return
    raise ConfigError(
        f"{key}: {credentials} would be sent unencrypted to {redact(url)}; use an https:// URL, or set "
        f"{section}.allow_insecure_http: true where the network to it is trusted"
    )


def _credentials_name(section: str, api_key: str | None, username: str | None) -> str | None:
    if api_key:
        return f"{section}.api_key"
    if username is not None:
        return f"{section}.username/password"
    return None


# The job name of a configuration that names none: its state, anomaly and run documents keep the ids and
# fields a single job had before jobs had names.
DEFAULT_JOB = "default"
_JOB_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")


@dataclass(frozen=True)
class JobConfig:
    """Which job (log type) this configuration runs: several run side by side on the same output indices,
    each with its own checkpoint, session tails, model directory and feedback."""

    name: str = DEFAULT_JOB

    def validate(self, key: str) -> None:
        _check(
            f"{key}.name",
            bool(_JOB_NAME_RE.fullmatch(self.name)),
            "must be a short slug (lowercase letters, digits, _ and -, starting with a letter or digit, at "
            f"most 40 characters), got {self.name!r}",
        )


@dataclass(frozen=True)
class ElasticsearchConfig:
    hosts: tuple[str, ...]
    api_key: str | None = None
    username: str | None = None
    password: str | None = None
    ca_certs: str | None = None
    verify_certs: bool = True
    request_timeout: float = 30.0
    max_retries: int = 3
    flavour: Literal["auto", "elasticsearch", "opensearch"] = "auto"
    # Credentials over plain http (a test cluster on a trusted network) must be allowed explicitly.
    allow_insecure_http: bool = False

    def validate(self, key: str) -> None:
        _check(f"{key}.hosts", len(self.hosts) > 0, "must list at least one URL")
        for i, h in enumerate(self.hosts):
            _check_url(f"{key}.hosts[{i}]", h)
        _check(f"{key}.request_timeout", self.request_timeout > 0, f"must be > 0, got {self.request_timeout}")
        _check(f"{key}.max_retries", self.max_retries >= 0, f"must be >= 0, got {self.max_retries}")
        _check_credentials(key, self.api_key, self.username, self.password)
        credentials = _credentials_name(key, self.api_key, self.username)
        for i, h in enumerate(self.hosts):
            _check_plain_http(f"{key}.hosts[{i}]", h, key, credentials, self.allow_insecure_http)
        if self.ca_certs is not None:
            _check(f"{key}.ca_certs", Path(self.ca_certs).is_file(), f"file not found: {self.ca_certs}")


@dataclass(frozen=True)
class SourceConfig:
    index: str
    query: dict[str, Any] | None = None
    message_field: str = "message"
    timestamp_field: str = "@timestamp"
    # Checkpoint order: `event.ingested` survives late-arriving events; the timestamp field is the fallback.
    checkpoint_field: str = "event.ingested"
    host_field: str = "host.name"
    session_field: str | None = None
    session_regex: str | None = None
    # Logs without a session id: each combination of these fields' values is one stream, cut into sessions
    # wherever it is idle for sessions.idle_timeout_seconds (in training as in detection).
    entity_fields: tuple[str, ...] = ()
    # A field that already names the event (event.code, event.action): its value is the log key (no
    # templating).
    key_field: str | None = None
    # With key_field: numeric fields that make up the event's parameter vector, in this order.
    param_fields: tuple[str, ...] = ()
    # A field unique per document that orders events logged in the same millisecond (e.g. log.offset,
    # event.sequence); optional: without it, ties are resolved exactly by document id at checkpoints.
    tiebreaker_field: str | None = None
    page_size: int = 1000
    # Point-in-time slices read at once and merged back into checkpoint order: a backlog is read as fast as
    # the cluster serves parallel requests, not one request after another. 1 = one search_after stream.
    slices: int = 2
    # Only documents whose checkpoint field (event.ingested, or the timestamp field when the index has no
    # event.ingested) is older than now minus this are read: a document indexed but not yet searchable
    # (refresh interval, a slow shard) must not be jumped over by the checkpoint.
    query_delay_seconds: float = 5.0
    # Timestamp order only: each run re-reads this far behind the checkpoint and processes the documents it
    # has not seen (their ids are kept in the checkpoint), so events that arrive slightly late are not lost.
    overlap_seconds: float = 30.0

    def validate(self, key: str) -> None:
        _check(f"{key}.index", bool(self.index.strip()), "must not be empty")
        for name in ("query_delay_seconds", "overlap_seconds"):
            v = getattr(self, name)
            _check(f"{key}.{name}", 0 <= v <= 86400, f"must be in 0..86400, got {v}")
        _check(f"{key}.page_size", 1 <= self.page_size <= 10000, f"must be in 1..10000, got {self.page_size}")
        _check(f"{key}.slices", 1 <= self.slices <= 16, f"must be in 1..16, got {self.slices}")
        ways = [self.session_field is not None, self.session_regex is not None, bool(self.entity_fields)]
        _check(
            f"{key}.session_field",
            sum(ways) == 1,
            "set exactly one of session_field, session_regex and entity_fields",
        )
        for name in ("entity_fields", "param_fields"):
            values = getattr(self, name)
            for i, f in enumerate(values):
                _check(f"{key}.{name}[{i}]", bool(f.strip()), "must name a field")
            _check(f"{key}.{name}", len(set(values)) == len(values), "lists a field twice")
        if self.key_field is not None:
            _check(f"{key}.key_field", bool(self.key_field.strip()), "must name a field")
        _check(
            f"{key}.param_fields",
            not self.param_fields or self.key_field is not None,
            "needs source.key_field (with templating, the numbers come from the message)",
        )
        if self.session_regex is not None:
            try:
                rx = re.compile(self.session_regex)
            except re.error as e:
                raise ConfigError(f"{key}.session_regex: invalid regular expression: {e}") from None
            _check(
                f"{key}.session_regex", rx.groups <= 1, "must have at most one capture group (the session id)"
            )


@dataclass(frozen=True)
class MaskConfig:
    name: str
    regex: str

    def validate(self, key: str) -> None:
        _check(
            f"{key}.name", bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.name)), "must be an identifier"
        )
        try:
            re.compile(self.regex)
        except re.error as e:
            raise ConfigError(f"{key}.regex: invalid regular expression: {e}") from None


@dataclass(frozen=True)
class TemplaterConfig:
    # Header preset naming the log format; only the message content after the header reaches Drain3.
    # "auto": chosen by training from a sample of the source and recorded in the model (format_detect).
    format: Literal[
        "auto",
        "hdfs",
        "openstack",
        "bgl",
        "syslog",
        "rfc5424",
        "log4j",
        "web_error",
        "web_access",
        "windows",
        "logcat",
        "pipe",
        "bracket",
        "generic",
        "none",
    ] = "hdfs"
    header_regex: str | None = None
    # None: the format preset's threshold (see formats.PRESETS).
    similarity_threshold: float | None = None
    depth: int = 4
    max_children: int = 100
    extra_delimiters: tuple[str, ...] = ()
    masks: tuple[MaskConfig, ...] | None = None
    # Masks whose values are numbers: they make up a key's numeric parameter vector.
    numeric_masks: tuple[str, ...] = ("NUM",)
    max_message_bytes: int = 16384
    learn_at_detection: bool = False
    # Entries of each of the templater's two caches (line shape -> event layout, masked content -> key).
    cache_size: int = 100000

    def validate(self, key: str) -> None:
        if self.similarity_threshold is not None:
            _check(
                f"{key}.similarity_threshold",
                0.0 < self.similarity_threshold <= 1.0,
                f"must be in (0, 1], got {self.similarity_threshold}",
            )
        _check(f"{key}.cache_size", self.cache_size >= 0, f"must be >= 0, got {self.cache_size}")
        for i, name in enumerate(self.numeric_masks):
            _check(
                f"{key}.numeric_masks[{i}]",
                bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)),
                "must be an identifier",
            )
        for i, d in enumerate(self.extra_delimiters):
            _check(f"{key}.extra_delimiters[{i}]", d != "", "must not be empty")
        _check(f"{key}.depth", self.depth >= 3, f"must be >= 3, got {self.depth}")
        _check(f"{key}.max_children", self.max_children >= 1, f"must be >= 1, got {self.max_children}")
        _check(
            f"{key}.max_message_bytes",
            self.max_message_bytes >= 64,
            f"must be >= 64, got {self.max_message_bytes}",
        )
        if self.header_regex is not None:
            try:
                rx = re.compile(self.header_regex)
            except re.error as e:
                raise ConfigError(f"{key}.header_regex: invalid regular expression: {e}") from None
            _check(
                f"{key}.header_regex", "content" in rx.groupindex, "must have a named group (?P<content>...)"
            )
        for i, m in enumerate(self.masks or ()):
            m.validate(f"{key}.masks[{i}]")


@dataclass(frozen=True)
class SessionsConfig:
    # A session with no event for this long (event time) is closed and its end-of-session key scored.
    idle_timeout_seconds: float = 600.0
    # Bound on open sessions kept between runs; beyond it the least recently updated is dropped (counted).
    max_open: int = 200000
    # Wall-clock bound: a session the job has not touched for this long is closed even if the source is quiet.
    ttl_seconds: float = 86400.0

    def validate(self, key: str) -> None:
        _check(
            f"{key}.idle_timeout_seconds",
            self.idle_timeout_seconds > 0,
            f"must be > 0, got {self.idle_timeout_seconds}",
        )
        _check(f"{key}.max_open", self.max_open >= 1, f"must be >= 1, got {self.max_open}")
        _check(
            f"{key}.ttl_seconds",
            self.ttl_seconds >= self.idle_timeout_seconds,
            f"must be >= sessions.idle_timeout_seconds ({self.idle_timeout_seconds:g}), got {self.ttl_seconds:g}",
        )


@dataclass(frozen=True)
class ModelConfig:
    window: int = 10
    top_g: int = 9
    # None = auto: FLOOR_FACTOR x the share label smoothing gives a key with no evidence (label_smoothing /
    # vocabulary size), so the floor follows the vocabulary (how it was chosen: BENCHMARKS.md).
    min_probability: float | None = None
    layers: int = 2
    hidden: int = 64
    embedding: int = 32
    dropout: float = 0.0
    epochs: int = 30
    batch_size: int = 512
    learning_rate: float = 0.002
    label_smoothing: float = 0.003
    patience: int = 3
    validation_fraction: float = 0.1
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dir: str = "models"
    cache_size: int = 100000
    # CPU threads for torch (0 = auto: torch's default, one per core, for training; one for detection). On a
    # host whose cores other services use, 1 avoids OpenMP threads spinning against each other.
    threads: int = 0
    # Accept the first occurrence of a step its workflow runs concurrently with one already in the window
    # (workflow.concurrency_mask): the order of concurrent steps is not an anomaly.
    concurrency: bool = True

    FLOOR_FACTOR = 2.2

    def floor(self, vocab_size: int) -> float:
        """The probability floor in effect for a model over `vocab_size` key ids."""
        if self.min_probability is not None:
            return self.min_probability
        return self.FLOOR_FACTOR * self.label_smoothing / vocab_size

    def validate(self, key: str) -> None:
        for name in ("window", "top_g", "layers", "hidden", "embedding", "epochs", "batch_size", "patience"):
            v = getattr(self, name)
            _check(f"{key}.{name}", v >= 1, f"must be >= 1, got {v}")
        if self.min_probability is not None:
            _check(
                f"{key}.min_probability",
                0.0 <= self.min_probability < 1.0,
                f"must be in [0, 1), got {self.min_probability}",
            )
        _check(f"{key}.dropout", 0.0 <= self.dropout < 1.0, f"must be in [0, 1), got {self.dropout}")
        _check(f"{key}.threads", self.threads >= 0, f"must be >= 0, got {self.threads}")
        _check(
            f"{key}.label_smoothing",
            0.0 <= self.label_smoothing < 1.0,
            f"must be in [0, 1), got {self.label_smoothing}",
        )
        _check(f"{key}.learning_rate", self.learning_rate > 0, f"must be > 0, got {self.learning_rate}")
        _check(
            f"{key}.validation_fraction",
            0.0 <= self.validation_fraction < 0.5,
            f"must be in [0, 0.5), got {self.validation_fraction}",
        )
        _check(f"{key}.cache_size", self.cache_size >= 0, f"must be >= 0, got {self.cache_size}")


@dataclass(frozen=True)
class ParamsConfig:
    """Settings of the parameter-value model (the `params` section of the configuration)."""

    enabled: bool = True
    window: int = 10  # h: how many earlier vectors of the same key predict the next one
    hidden: int = 32
    layers: int = 1
    epochs: int = 12
    batch_size: int = 256
    learning_rate: float = 0.005
    heldout_fraction: float = 0.25  # last share of each key's normal series: residual statistics only
    # Two-sided confidence per parameter vector (one event), split evenly over the vector's non-constant
    # dimensions (Bonferroni). Higher than the 0.999 one would pick per event: an alert is judged per task,
    # which has several events with a Gaussian time gap or duration (the measured trade-off: BENCHMARKS.md).
    confidence: float = 0.9998
    min_observations: int = 50  # fewer vectors than this: the key is not modelled (reported)
    min_error_std: float = 0.01  # floor of the error std, in normalised units
    seed: int = 42

    def validate(self, key: str) -> None:
        for name in ("window", "hidden", "layers", "epochs", "batch_size", "min_observations"):
            v = getattr(self, name)
            if v < 1:
                raise ConfigError(f"{key}.{name}: must be >= 1, got {v}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ConfigError(f"{key}.heldout_fraction: must be in (0, 1), got {self.heldout_fraction}")
        if not 0.5 < self.confidence < 1.0:
            raise ConfigError(f"{key}.confidence: must be in (0.5, 1), got {self.confidence}")
        if self.learning_rate <= 0 or self.min_error_std <= 0:
            raise ConfigError(f"{key}.learning_rate and {key}.min_error_std must be > 0")


# --- end params


@dataclass(frozen=True)
class FeedbackConfig:
    """The feedback job: responders' false positives fine-tune the key model (the `feedback` section)."""

    learning_rate: float = 0.001  # half of training's: nudge the weights, do not relearn
    max_steps: int = 300  # bound on fine-tuning steps per run
    replay_batch: int = 2048  # normal training windows mixed into every step (against forgetting)
    # Each marked (window -> key) pair counts as this many of those normal windows in every step.
    weight: float = 4.0
    # Fine-tuning goes on until each marked key has at least this probability after its window (not just
    # the top g): a margin that carries the correction to the similar windows nobody marked.
    target_probability: float = 0.05
    # Weight of the penalty on keys the parent rejects after a normal window that the update raises toward
    # acceptance (the missing or repeated steps the parent caught there).
    guard_weight: float = 0.1
    # A key the trained model rejects after a window is accepted by a feedback version only where feedback
    # raised its probability at least this many times (the detector's anchor; 0: off). Fine-tuning
    # reshuffles the far tail, and a missing or repeated step can slip into the top g without anyone marking it.
    anchor_ratio: float = 2.0
    replay_windows: int = 20000  # distinct normal training windows stored with each model version
    heldout_windows: int = 20000  # distinct held-out normal windows stored for the safety check
    # Absolute increase of the held-out false-alarm rate (share of normal windows flagged) beyond which an
    # update is rejected.
    tolerance: float = 0.002
    max_per_run: int = 1000  # feedback documents taken per run (the rest waits for the next run)
    # Windows the detection job scored, sampled into `<model.dir>/recent_windows.pt` (0: none kept): an
    # update that raises the alarm rate on them by more than `tolerance` is rejected.
    recent_windows: int = 10000
    seed: int = 42

    def validate(self, key: str) -> None:
        _check(f"{key}.learning_rate", self.learning_rate > 0, f"must be > 0, got {self.learning_rate}")
        for name in ("max_steps", "replay_batch", "replay_windows", "heldout_windows", "max_per_run"):
            v = getattr(self, name)
            _check(f"{key}.{name}", v >= 1, f"must be >= 1, got {v}")
        _check(f"{key}.weight", self.weight > 0, f"must be > 0, got {self.weight}")
        _check(f"{key}.guard_weight", self.guard_weight >= 0, f"must be >= 0, got {self.guard_weight}")
        _check(
            f"{key}.anchor_ratio",
            self.anchor_ratio == 0 or self.anchor_ratio >= 1,
            f"must be 0 (off) or >= 1, got {self.anchor_ratio}",
        )
        _check(
            f"{key}.target_probability",
            0.0 <= self.target_probability < 1.0,
            f"must be in [0, 1), got {self.target_probability}",
        )
        _check(f"{key}.tolerance", 0.0 <= self.tolerance < 1.0, f"must be in [0, 1), got {self.tolerance}")
        _check(f"{key}.recent_windows", self.recent_windows >= 0, f"must be >= 0, got {self.recent_windows}")


@dataclass(frozen=True)
class OutputConfig:
    anomalies_index: str = "deeplog-anomalies"
    runs_index: str = "deeplog-runs"
    workflows_index: str = "deeplog-workflows"
    state_index: str = "deeplog-state"
    # None: named after the anomalies index (`incidents`, `preview` below)
    incidents_index: str | None = None
    preview_index: str | None = None
    # None: 3600 when sessions come from `source.session_field` (an entity: a host, a user), else 0
    incident_bucket_seconds: int | None = None

    @property
    def incidents(self) -> str:
        """The incidents index: `incidents_index`, else the anomalies index's name with "incidents" for its
        last "anomalies" (`deeplog-anomalies` -> `deeplog-incidents`), else `incidents-` before it."""
        return self.incidents_index or _sibling(self.anomalies_index, "incidents")

    @property
    def preview(self) -> str:
        """Where `detect --preview` writes: `preview_index`, else named after the anomalies index as
        `incidents` is (`deeplog-preview`). Not matched by the anomalies index's pattern, so no rule, data
        view or incident sees a preview."""
        return self.preview_index or _sibling(self.anomalies_index, "preview")

    def validate(self, key: str) -> None:
        names = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name.endswith("_index")}
        for name, v in names.items():
            if v is None:
                continue
            _check(
                f"{key}.{name}",
                isinstance(v, str) and bool(re.fullmatch(r"[a-z0-9][a-z0-9._-]*", v)),
                f"must be a lowercase index name, got {v!r}",
            )
        for name, v in (("incidents_index", self.incidents), ("preview_index", self.preview)):
            # A name the anomalies template pattern (`NAME*`) matches would take the anomaly mapping and show
            # up wherever anomalies are searched (rules, the dashboard).
            _check(
                f"{key}.{name}",
                not v.startswith(self.anomalies_index),
                f"must not start with output.anomalies_index ({self.anomalies_index!r}), got {v!r}",
            )
        b = self.incident_bucket_seconds
        if b is not None:
            _check(
                f"{key}.incident_bucket_seconds",
                b >= 0,
                f"must be >= 0 (0: one incident per session), got {b}",
            )


def _sibling(anomalies_index: str, word: str) -> str:
    head, found, tail = anomalies_index.rpartition("anomalies")
    return f"{head}{word}{tail}" if found else f"{word}-{anomalies_index}"


@dataclass(frozen=True)
class ScheduleConfig:
    detect_interval_seconds: int = 60
    feedback_interval_seconds: int = 300
    retrain_cron: str | None = None
    retrain_lookback_days: int = 7
    misfire_grace_seconds: int = 30
    chunk_size: int = 20000
    lease_seconds: int = 600

    def validate(self, key: str) -> None:
        for name in (
            "detect_interval_seconds",
            "lease_seconds",
            "feedback_interval_seconds",
            "misfire_grace_seconds",
            "chunk_size",
            "retrain_lookback_days",
        ):
            v = getattr(self, name)
            _check(f"{key}.{name}", v >= 1, f"must be >= 1, got {v}")
        if self.retrain_cron is not None:
            parse_cron(self.retrain_cron, f"{key}.retrain_cron")


@dataclass(frozen=True)
class WorkersConfig:
    """One detection job shared by worker processes: the source split into `partitions` by the integer
    field `partition_field` (see `partitions`); `worker_id` names this process (None: `<hostname>:<pid>`)."""

    partitions: int = 1
    partition_field: str = "deeplog.partition"
    worker_id: str | None = None

    def validate(self, key: str) -> None:
        _check(f"{key}.partitions", 1 <= self.partitions <= 1024, f"must be 1 to 1024, got {self.partitions}")
        _check(f"{key}.partition_field", bool(self.partition_field.strip()), "must name a field")
        if self.worker_id is not None:
            ok = bool(re.fullmatch(r"[A-Za-z0-9_.:@-]{1,200}", self.worker_id))
            _check(
                f"{key}.worker_id",
                ok,
                f"must be 1 to 200 letters, digits or _.:@- (it names a document), got {self.worker_id!r}",
            )


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    file: str | None = None
    json: bool = False

    def validate(self, key: str) -> None:
        pass


@dataclass(frozen=True)
class HealthConfig:
    """The daemon's HTTP endpoint: `/healthz` and Prometheus `/metrics` (README "Health and metrics")."""

    # HOST:PORT; "" turns the endpoint off; port 0 picks a free port (the daemon logs the one it bound).
    listen: str = "127.0.0.1:9464"
    # /healthz fails when no detection run finished for this long; None: as `deeplog-siem check`, three
    # detection intervals, at least 10 minutes.
    max_age_seconds: int | None = None
    # /healthz fails once this many detection runs in a row have failed.
    max_failed_runs: int = 3

    def validate(self, key: str) -> None:
        parse_listen(self.listen, f"{key}.listen")
        if self.max_age_seconds is not None:
            _check(
                f"{key}.max_age_seconds",
                self.max_age_seconds >= 1,
                f"must be >= 1, got {self.max_age_seconds}",
            )
        _check(
            f"{key}.max_failed_runs", self.max_failed_runs >= 1, f"must be >= 1, got {self.max_failed_runs}"
        )


def parse_listen(value: str, key: str) -> tuple[str, int] | None:
    """`HOST:PORT` (an IPv6 host in brackets) -> (host, port); "" -> None (off); `ConfigError` naming `key`."""
    if value == "":
        return None
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    _check(
        key,
        bool(sep and host.strip() and port.isdigit()),
        f"must be HOST:PORT (or empty to turn it off), got {value!r}",
    )
    _check(key, " " not in host and ("[" not in host and "]" not in host), f"invalid host in {value!r}")
    _check(key, 0 <= int(port) <= 65535, f"port must be in 0..65535, got {port}")
    return host, int(port)


# Setup assets: retention policies and the Kibana saved-objects import.

_SIZE_RE = re.compile(r"\d+(b|kb|mb|gb|tb|pb)")
_AGE_RE = re.compile(r"\d+(d|h|m|s)")


@dataclass(frozen=True)
class RetentionConfig:
    """ILM (Elasticsearch) / ISM (OpenSearch) retention for the anomalies and runs indices; off by default.

    When a `*_days` value is set and the server supports lifecycle policies, `setup` bootstraps the index as a
    rollover alias (`NAME` -> `NAME-000001`) and installs a policy that rolls over and deletes old indices.
    """

    anomalies_days: int | None = None
    runs_days: int | None = None
    rollover_max_age: str = "7d"
    rollover_max_primary_shard_size: str = "50gb"

    @property
    def enabled(self) -> bool:
        return self.anomalies_days is not None or self.runs_days is not None

    def validate(self, key: str) -> None:
        for name in ("anomalies_days", "runs_days"):
            v = getattr(self, name)
            if v is not None:
                _check(f"{key}.{name}", v >= 1, f"must be >= 1 (or unset to keep forever), got {v}")
        _check(
            f"{key}.rollover_max_age",
            bool(_AGE_RE.fullmatch(self.rollover_max_age)),
            f"must be a time value such as 7d or 12h, got {self.rollover_max_age!r}",
        )
        _check(
            f"{key}.rollover_max_primary_shard_size",
            bool(_SIZE_RE.fullmatch(self.rollover_max_primary_shard_size)),
            f"must be a byte size such as 50gb, got {self.rollover_max_primary_shard_size!r}",
        )


@dataclass(frozen=True)
class KibanaConfig:
    """Where `setup` imports the saved objects (Kibana 7.10+ or OpenSearch Dashboards); optional.

    Without credentials here, the elasticsearch section's api_key or username/password are sent only to a
    Kibana URL with the same scheme, host and port as one of elasticsearch.hosts (the same server), or
    anywhere with `use_elasticsearch_credentials: true`; otherwise the import goes without credentials.
    """

    url: str | None = None
    api_key: str | None = None
    username: str | None = None
    password: str | None = None
    space: str | None = None
    ca_certs: str | None = None
    verify_certs: bool = True
    request_timeout: float = 30.0
    use_elasticsearch_credentials: bool = False
    allow_insecure_http: bool = False

    def validate(self, key: str) -> None:
        _check_credentials(key, self.api_key, self.username, self.password)
        if self.url is not None:
            _check_url(f"{key}.url", self.url)
            credentials = _credentials_name(key, self.api_key, self.username)
            _check_plain_http(f"{key}.url", self.url, key, credentials, self.allow_insecure_http)
        _check(f"{key}.request_timeout", self.request_timeout > 0, f"must be > 0, got {self.request_timeout}")
        if self.space is not None:
            _check(
                f"{key}.space",
                bool(re.fullmatch(r"[a-z0-9_-]+", self.space)),
                f"must be a Kibana space id (lowercase letters, digits, _ and -), got {self.space!r}",
            )
        if self.ca_certs is not None:
            _check(f"{key}.ca_certs", Path(self.ca_certs).is_file(), f"file not found: {self.ca_certs}")


# --- end setup assets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    elasticsearch: ElasticsearchConfig
    source: SourceConfig
    job: JobConfig = field(default_factory=JobConfig)
    templater: TemplaterConfig = field(default_factory=TemplaterConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    params: ParamsConfig = field(default_factory=ParamsConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    kibana: KibanaConfig = field(default_factory=KibanaConfig)
    health: HealthConfig = field(default_factory=HealthConfig)

    def validate(self, key: str = "") -> None:
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate(f.name)

    def replace(self, **sections: Any) -> Config:
        """A copy with whole sections replaced (used by the CLI and tests, e.g. a per-run output index)."""
        return dataclasses.replace(self, **sections)


# ---------------------------------------------------------------------------------------------- loading


def _expand_env(value: str, key: str) -> str:
    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{key}: environment variable {name} is not set")

    return _ENV_RE.sub(sub, value)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(tp, str(tp))


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, key)
    if value is None:
        raise ConfigError(f"{key}: must be {_type_name(tp)}, got null")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: must be {_type_name(tp)}, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: must be a list, got {type(value).__name__}")
        return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: must be a mapping, got {type(value).__name__}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key}: must be a string, got {type(value).__name__}")
        return _expand_env(str(value), key)
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - a bug in this module


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    dotted = (prefix + ".") if prefix else ""
    for k in data:
        if k not in fields:
            close = difflib.get_close_matches(str(k), fields, n=1)
            hint = f" (did you mean {dotted}{close[0]}?)" if close else ""
            raise ConfigError(f"{dotted}{k}: unknown key{hint}")
    kwargs = {}
    for name, f in fields.items():
        key = dotted + name
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key} is required")
    return cls(**kwargs)


def parse_config(data: Any) -> Config:
    """Build and validate a `Config` from an already-parsed YAML mapping."""
    if data is None:
        raise ConfigError("config: the file is empty")
    cfg = _build(Config, data, "")
    cfg.validate()
    model = data.get("model")
    if cfg.job.name != DEFAULT_JOB and not (isinstance(model, dict) and "dir" in model):
        # A named job's models stay apart from every other job's, whatever the other configurations say.
        cfg = cfg.replace(model=dataclasses.replace(cfg.model, dir=str(Path(cfg.model.dir) / cfg.job.name)))
    return cfg


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, expand and validate a YAML configuration file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config: file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config: cannot read {p}: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config: {p} is not valid YAML: {e}") from None
    return parse_config(data)


def example_config_text() -> str:
    """The commented example configuration shipped with the package."""
    return resources.files("deeplog_siem").joinpath("data/example-config.yml").read_text(encoding="utf-8")
