"""Feedback that cannot poison the model (real server): anyone who can give a verdict can write every field of
an anomaly document, so the feedback job learns only from what the detection job sealed.

- Forged documents of every kind the strict mapping accepts (types, sizes, paths, extreme numbers, forged
  windows, keys, series, model versions and seals), marked false positives: `feedback apply` never raises,
  every document gets a status, nothing forged is published, every published threshold scale is finite and
  capped, and no file outside `model.dir` is opened.
- A forged parameter anomaly (error 3e38, threshold 1e-30) widens nothing; a forged window or actual key
  teaches nothing; a document without a seal is invalid with the reason.
- Extreme values under the job's own seal are refused beyond the widening caps, never published uncapped.
- The seal key is created once, owner-only, and kept when another job created it first.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import stat
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import BadRequestError
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

from deeplog_siem import paramfeedback, seal
from deeplog_siem.anomaly import (
    Details,
    EventRef,
    KeyVerdict,
    ParamVerdict,
    SessionEvent,
    key_anomaly,
    parameter_anomaly,
)
from deeplog_siem.artifacts import KEYMODEL, PARAM_FEEDBACK, PARAMMODEL, ModelStore
from deeplog_siem.config import Config, parse_config
from deeplog_siem.es import Clients
from deeplog_siem.feedback import APPLIED, INVALID, UNSUPPORTED, apply_feedback, lineage_of
from deeplog_siem.model import load_checkpoint

from . import _synthetic as syn
from .conftest import config_data
from .test_feedback_untrusted import MODEL, _context, _published

STATUSES = {APPLIED, INVALID, UNSUPPORTED}

# Paths the job opens while it runs, recorded by an audit hook (one per process: hooks cannot be removed).
_opened: list[str] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _opened is not None and isinstance(args[0], (str, bytes, os.PathLike)):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


class Installation:
    """One trained model version, a place outside `model.dir` the job must never read, and the cluster."""

    def __init__(self, clients: Clients, cfg: Config, outside: Path) -> None:
        self.clients, self.cfg, self.outside = clients, cfg, outside
        self.store = ModelStore(cfg.model.dir)
        self.version = _published(clients, cfg)
        # The job widens thresholds only for a version with a parameter model.
        (self.store.dir / self.version / PARAMMODEL).write_bytes(b"")
        self.secret = seal.key(cfg.model.dir)
        ctx = _context(cfg, self.version)
        event = EventRef("logs", "doc-1", "2008-11-09T20:36:15.000Z", "line", "h1")
        window = [syn.A, syn.B, syn.C, syn.D, syn.E]
        built = key_anomaly(
            ctx, SessionEvent(event, "s1", len(window), window), KeyVerdict("log_key", syn.G, 0.001, 5, [])
        )
        self.key_doc = _source(built)
        pv = ParamVerdict(
            key=syn.B,
            dims=[0],
            observed=[5.0],
            predicted=[1.0],
            low=[0.5],
            high=[1.5],
            error=5.0,
            threshold=3.29,
        )
        self.param_doc = _source(parameter_anomaly(ctx, SessionEvent(event, "s1", 1, [syn.A]), pv))

    def post(self, docs: dict[str, dict[str, Any]]) -> None:
        for doc_id, src in docs.items():
            self.clients.es.index(index=self.cfg.output.anomalies_index, id=doc_id, document=src)
        self.clients.es.indices.refresh(index=self.cfg.output.anomalies_index)

    def deeplog(self, doc_id: str) -> dict[str, Any]:
        return self.clients.es.get(index=self.cfg.output.anomalies_index, id=doc_id)["_source"]["deeplog"]

    def apply(self) -> tuple[Any, list[str]]:
        """One feedback run -> its summary and the paths it opened."""
        global _opened
        _opened = []
        try:
            summary = apply_feedback(self.cfg, self.clients)
        finally:
            opened, _opened = _opened, None
        return summary, opened

    def reset(self, doc_ids: list[str]) -> None:
        for doc_id in doc_ids:
            self.clients.es.options(ignore_status=404).delete(
                index=self.cfg.output.anomalies_index, id=doc_id, refresh=True
            )
        self.store.publish(self.version)
        # Each example starts from the trained version alone, so a failure does not spill into the next.
        for v in self.store.versions():
            if v != self.version:
                shutil.rmtree(self.store.dir / v)

    def check_published(self) -> None:
        """Every version: threshold scales finite and capped, no key-model feedback."""
        for v in self.store.versions():
            for series, scale in paramfeedback.load(self.store.dir / v).items():
                assert math.isfinite(scale) and 1.0 <= scale <= paramfeedback.MAX_SCALE, (v, series, scale)
            _, _, header = load_checkpoint(self.store.dir / v / KEYMODEL)
            lin = lineage_of(header["meta"])
            assert lin is None or lin.get("kind") == "parameter", (v, lin)

    def check_contained(self, opened: list[str]) -> None:
        root = self.store.dir.resolve()
        for p in opened:
            path = Path(p).resolve()
            assert not path.is_relative_to(self.outside.resolve()), f"opened {p} outside model.dir"
            if path.name in (PARAM_FEEDBACK, KEYMODEL, PARAMMODEL):
                assert path.is_relative_to(root), f"opened {p} outside model.dir"


def _source(action: dict[str, Any]) -> dict[str, Any]:
    src = {k: v for k, v in action.items() if not k.startswith("_")}
    src["deeplog"]["feedback"] = "false_positive"
    return src


@pytest.fixture(scope="module")
def inst(
    clients: Clients, es_section: dict, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Installation]:
    """Trained once per module: every example starts from the same current version."""
    root = tmp_path_factory.mktemp("hostile")
    prefix = f"t{uuid.uuid4().hex[:10]}"
    cfg = parse_config(config_data(es_section, prefix, root / "models", model=MODEL))
    outside = root / "outside"
    outside.mkdir()
    # What a forged model version would point the job at: scales that switch a series off, a fake model.
    paramfeedback.save(outside, {(syn.A, syn.B): 1e30})
    (outside / KEYMODEL).write_bytes(b"not a model")
    yield Installation(clients, cfg, outside)
    clients.es.options(ignore_status=404).indices.delete(index=f"{prefix}*", expand_wildcards="all")


# ------------------------------------------------------------------------------------------- strategies

INT32 = st.integers(-(2**31), 2**31 - 1)
WORDS = st.text(max_size=40)
IDS = st.one_of(
    INT32,
    st.sampled_from([syn.A, syn.B, syn.G, 0, 1, 2, 3, 10**6, -5]),
    st.text(alphabet="0123456789-", min_size=1, max_size=6),
)
TEMPLATES = st.sampled_from(["event A <*>", "event B <*>", "event G <*>", "<UNK>", "", "x" * 300])
NUMBERS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from([3e38, -3e38, 1e-30, 1e-38, 0.0, -0.0, -1.0, 1e10, 4.0, 5.0, 3.29]),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "5"]),
)


def _versions(outside: Path, model_dir: Path) -> st.SearchStrategy[str]:
    up = Path(*[".."] * len(model_dir.resolve().parts))
    return st.one_of(
        st.sampled_from(
            [
                str(outside),
                str(up / outside.relative_to("/")),
                "..",
                ".",
                "",
                ".seal_key",
                "v" * 300,
                "a/b",
                "a\\b",
                "a\x00b",
                "20991231T000000-abcdef",
            ]
        ),
        WORDS,
    )


def _forgeries(inst: Installation) -> st.SearchStrategy[dict[str, Any]]:
    """(field path -> forged value) for the fields feedback learns from, and a seal mode."""
    fields = {
        ("window", "key_ids"): st.one_of(IDS, st.lists(IDS, max_size=8), st.just([])),
        ("window", "templates"): st.one_of(TEMPLATES, st.lists(TEMPLATES, max_size=8)),
        ("key", "id"): IDS,
        ("key", "template"): TEMPLATES,
        ("anomaly_type",): st.one_of(
            st.sampled_from(["log_key", "session_end", "parameter", "unseen_key"]), WORDS
        ),
        ("model_version",): _versions(inst.outside, inst.store.dir),
        ("parameter", "error"): NUMBERS,
        ("parameter", "threshold"): NUMBERS,
        ("source", "id"): WORDS,
    }
    return st.fixed_dictionaries(
        {
            "kind": st.sampled_from(["key", "parameter"]),
            "fields": st.lists(st.sampled_from(list(fields)), unique=True, max_size=4).flatmap(
                lambda keys: st.tuples(*[st.tuples(st.just(k), fields[k]) for k in keys])
            ),
            # keep: the job's seal over the original values; real: the job's seal over the forged values (the
            # job's own extreme values: parameter documents only).
            "seal": st.sampled_from(["keep", "drop", "junk", "other", "real"]),
            "junk": WORDS,
        }
    )


def _forged(inst: Installation, spec: dict[str, Any]) -> dict[str, Any]:
    src = copy.deepcopy(inst.key_doc if spec["kind"] == "key" else inst.param_doc)
    d = src["deeplog"]
    for path, value in spec["fields"]:
        target = d
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = value
    mode = spec["seal"]
    if mode == "drop":
        del d["seal"]
    elif mode == "junk":
        d["seal"] = spec["junk"]
    elif mode in ("other", "real"):
        try:
            learned = Details.from_source(src).learned()
        except Exception:  # noqa: BLE001 - a malformed forgery keeps the seal it has
            return src
        d["seal"] = seal.sign(inst.secret if mode == "real" else os.urandom(32), learned)
    return src


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_forged_documents_never_raise_and_never_poison_the_model(inst, data):
    specs = data.draw(st.lists(_forgeries(inst), min_size=1, max_size=4), label="documents")
    docs: dict[str, dict[str, Any]] = {}
    trusted: set[str] = set()
    for spec in specs:
        forged_type = dict(spec["fields"]).get(("anomaly_type",), "parameter")
        if spec["seal"] == "real" and (spec["kind"] == "key" or forged_type != "parameter"):
            # The job's seal over a key-model verdict is a genuine false positive, not a forgery: it seals its
            # extreme values only on parameter documents.
            spec["seal"] = "other"
        src = _forged(inst, spec)
        original = inst.key_doc if spec["kind"] == "key" else inst.param_doc
        if spec["seal"] == "keep":
            try:
                same = Details.from_source(src).learned() == Details.from_source(original).learned()
            except Exception:  # noqa: BLE001 - malformed: certainly not the original
                same = False
            assume(not same)
        doc_id = uuid.uuid4().hex
        docs[doc_id] = src
        if spec["seal"] == "real":
            trusted.add(doc_id)
    note(repr(docs))
    try:
        inst.post(docs)
    except BadRequestError:
        inst.reset(list(docs))
        assume(False)  # not a document the mapping accepts
    try:
        summary, opened = inst.apply()
        assert summary.status == "ok", summary.error
        for doc_id in docs:
            d = inst.deeplog(doc_id)
            assert d.get("feedback_status") in STATUSES, (doc_id, d.get("feedback_status"))
            if doc_id not in trusted:
                assert d["feedback_status"] != APPLIED, (doc_id, d)
            if d["feedback_status"] != APPLIED:
                assert d.get("feedback_error"), d
        inst.check_published()
        inst.check_contained(opened)
    finally:
        inst.reset(list(docs))


# ------------------------------------------------------------------------------------------- examples


def test_a_forged_parameter_error_widens_nothing(inst):
    src = copy.deepcopy(inst.param_doc)
    src["deeplog"]["parameter"].update(error=3e38, threshold=1e-30)
    inst.post({"forged-param": src})
    try:
        summary, _ = inst.apply()
        assert summary.status == "ok", summary.error
        assert dict(summary.feedback) == {"found": 1, INVALID: 1}
        assert inst.store.current()[0] == inst.version
        d = inst.deeplog("forged-param")
        assert d["feedback_status"] == INVALID
        assert "learned fields do not match the job's seal" in d["feedback_error"]
    finally:
        inst.reset(["forged-param"])


def test_a_forged_window_or_actual_key_teaches_nothing(inst):
    window = copy.deepcopy(inst.key_doc)
    window["deeplog"]["window"] = {"key_ids": [syn.A, syn.B], "templates": ["event A <*>", "event B <*>"]}
    actual = copy.deepcopy(inst.key_doc)
    actual["deeplog"]["key"].update(id=syn.F, template="event F <*>")
    unsealed = copy.deepcopy(inst.key_doc)
    del unsealed["deeplog"]["seal"]
    docs = {"window": window, "actual": actual, "unsealed": unsealed}
    inst.post(docs)
    try:
        summary, _ = inst.apply()
        assert summary.status == "ok", summary.error
        assert dict(summary.feedback) == {"found": 3, INVALID: 3}
        assert inst.store.current()[0] == inst.version
        for doc_id in ("window", "actual"):
            assert "learned fields do not match the job's seal" in inst.deeplog(doc_id)["feedback_error"]
        assert inst.deeplog("unsealed")["feedback_error"].startswith("deeplog.seal: missing")
    finally:
        inst.reset(list(docs))


@pytest.mark.parametrize(
    ("error", "threshold", "why"),
    [
        (3e38, 1e-30, "more than the 10 one mark may"),
        (100.0, 3.29, "more than the 10 one mark may"),
        (5.0, 0.0, "deeplog.parameter.threshold: 0.0 is not a usable bound"),
    ],
)
def test_extreme_values_under_the_jobs_seal_are_refused_not_published(inst, error, threshold, why):
    src = copy.deepcopy(inst.param_doc)
    src["deeplog"]["parameter"].update(error=error, threshold=threshold)
    src["deeplog"]["seal"] = Details.from_source(src).sealed(inst.secret).seal
    inst.post({"extreme": src})
    try:
        summary, _ = inst.apply()
        assert summary.status == "ok", summary.error
        d = inst.deeplog("extreme")
        assert d["feedback_status"] == INVALID and why in d["feedback_error"], d
        assert inst.store.current()[0] == inst.version
    finally:
        inst.reset(["extreme"])


def test_marks_add_up_to_at_most_the_absolute_cap(inst):
    """Each mark within the per-mark factor, but together beyond MAX_SCALE: the last one is refused."""
    docs = []
    for i in range(3):
        src = copy.deepcopy(inst.param_doc)
        # The threshold the current version applies: the model's, widened by the marks so far.
        threshold = 3.29 * 9.0**i
        src["deeplog"]["parameter"].update(error=round(threshold * 8.5, 4), threshold=round(threshold, 4))
        src["deeplog"]["model_version"] = inst.store.current()[0]
        src["deeplog"]["seal"] = Details.from_source(src).sealed(inst.secret).seal
        doc_id = f"mark-{i}"
        docs.append(doc_id)
        inst.post({doc_id: src})
        summary, _ = inst.apply()
        assert summary.status == "ok", summary.error
    try:
        assert [inst.deeplog(d)["feedback_status"] for d in docs] == [APPLIED, APPLIED, INVALID]
        assert "more than the 100 feedback may widen it" in inst.deeplog(docs[2])["feedback_error"]
        inst.check_published()
    finally:
        inst.reset(docs)


def test_malformed_learned_fields_get_a_status_and_the_others_go_on(inst):
    scalar = copy.deepcopy(inst.key_doc)
    scalar["deeplog"]["window"]["key_ids"] = 5
    long_version = copy.deepcopy(inst.param_doc)
    long_version["deeplog"]["model_version"] = "v" * 300
    docs = {"scalar": scalar, "long": long_version, "genuine": copy.deepcopy(inst.param_doc)}
    inst.post(docs)
    try:
        summary, _ = inst.apply()
        assert summary.status == "ok", summary.error
        assert inst.deeplog("scalar")["feedback_status"] == UNSUPPORTED
        assert "deeplog.window.key_ids: expected a list" in inst.deeplog("scalar")["feedback_error"]
        assert inst.deeplog("long")["feedback_status"] == INVALID
        assert inst.deeplog("long")["feedback_error"].startswith("deeplog.model_version: 300 characters")
        assert inst.deeplog("genuine")["feedback_status"] == APPLIED
        inst.check_published()
    finally:
        inst.reset(list(docs))


def test_the_seal_key_is_created_once_and_owner_only(tmp_path):
    first = seal.key(tmp_path)
    assert len(first) == seal.KEY_BYTES and seal.key(tmp_path) == first
    assert stat.S_IMODE((tmp_path / seal.KEY_FILE).stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [seal.KEY_FILE]  # nothing staged left behind
    fields = {"window": [[3, 4], ["a", "b"]]}
    signed = seal.sign(first, fields)
    assert seal.check(first, fields, signed) is None
    assert "do not match" in seal.check(first, {"window": [[3, 5], ["a", "b"]]}, signed)
    assert "another installation" in seal.check(os.urandom(32), fields, signed)
    assert "not a seal the job writes" in seal.check(first, fields, "é:" + signed)
