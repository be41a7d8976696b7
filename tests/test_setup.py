"""`deeplog-siem setup` against the real (embedded or DEEPLOG_TEST_ES_URL) server: installs what the server
supports, says what it skipped, and a second run changes nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml

from deeplog_siem import cli
from deeplog_siem.setup_assets import KINDS, detect_lifecycle, index_templates, run_setup

from .conftest import real_cluster


@pytest.fixture
def drop_templates(clients, prefix) -> Iterator[None]:
    """The prefix fixture deletes the test's indices; this deletes its index templates and pipelines."""
    yield
    es = clients.es.options(ignore_status=404)
    for kind in KINDS:
        es.perform_request(
            "DELETE", f"/_index_template/{prefix}-{kind}", headers={"accept": "application/json"}
        )


def _by(report, component: str) -> dict[str, str]:
    return {s.name: s.action for s in report.steps if s.component == component}


def test_setup_installs_skips_what_is_unsupported_and_is_idempotent(
    clients, make_config, prefix, drop_templates
):
    cfg = make_config()
    first = run_setup(clients, cfg)
    assert not first.failed, [s.line() for s in first.failed]
    names = [f"{prefix}-{k}" for k in KINDS]
    assert _by(first, "index template") == dict.fromkeys(names, "created")
    assert _by(first, "index") == dict.fromkeys(names, "created")
    skipped = {s.component: s.detail for s in first.skipped}
    assert "retention is off" in skipped["lifecycle policy"]
    assert "no Kibana URL" in skipped["saved object"]
    if not clients.has_ingest:
        assert "has no ingest pipelines" in skipped["ingest pipeline"]
    for name in names:
        assert clients.es.indices.exists(index=name)
        meta = clients.es.indices.get_mapping(index=name)[name]["mappings"]["_meta"]
        assert meta == index_templates(cfg)[name]["template"]["mappings"]["_meta"]

    second = run_setup(clients, cfg)
    assert second.changed == [] and not second.failed
    assert set(_by(second, "index template").values()) == {"unchanged"}
    assert set(_by(second, "index").values()) == {"unchanged"}
    assert second.summary().startswith("setup: nothing changed")


def test_dry_run_writes_nothing(clients, make_config, prefix, drop_templates):
    cfg = make_config()
    report = run_setup(clients, cfg, dry_run=True)
    assert {s.action for s in report.steps if s.component in ("index", "index template")} == {"would create"}
    for kind in KINDS:
        assert not clients.es.indices.exists(index=f"{prefix}-{kind}")
        r = clients.es.options(ignore_status=404).perform_request(
            "GET", f"/_index_template/{prefix}-{kind}", headers={"accept": "application/json"}
        )
        assert r.meta.status == 404
    assert report.summary().startswith("setup: dry run")


def test_setup_brings_an_outdated_index_mapping_up_to_date(clients, make_config, prefix, drop_templates):
    cfg = make_config()
    old = {"mappings": {"_meta": {"managed_by": "deeplog-siem", "mapping_hash": "old"}, "properties": {
        "@timestamp": {"type": "date"}}}}  # fmt: skip
    clients.es.perform_request(
        "PUT",
        f"/{prefix}-anomalies",
        body=old,
        headers={"accept": "application/json", "content-type": "application/json"},
    )
    report = run_setup(clients, cfg)
    assert _by(report, "index")[f"{prefix}-anomalies"] == "updated"
    props = clients.es.indices.get_mapping(index=f"{prefix}-anomalies")[f"{prefix}-anomalies"]["mappings"]
    assert props["properties"]["deeplog"]["dynamic"] == "strict"
    assert run_setup(clients, cfg).changed == []


def test_conflicting_mapping_is_reported_not_hidden(clients, make_config, prefix, drop_templates):
    cfg = make_config()
    clients.es.perform_request(
        "PUT",
        f"/{prefix}-runs",
        body={"mappings": {"properties": {"deeplog": {"properties": {"run": {"properties": {
            "docs_read": {"type": "keyword"}}}}}}}},
        headers={"accept": "application/json", "content-type": "application/json"},
    )  # fmt: skip
    report = run_setup(clients, cfg)
    (failed,) = report.failed
    assert failed.name == f"{prefix}-runs" and "reindex" in failed.detail
    assert report.summary().startswith("setup: 1 step(s) FAILED")


def test_retention_is_skipped_with_the_reason_where_unsupported(clients, make_config, prefix, drop_templates):
    cfg = make_config(retention={"anomalies_days": 30})
    lifecycle = detect_lifecycle(clients)
    if lifecycle is not None:
        pytest.skip(f"this server supports {lifecycle.upper()}; the skip path needs one without it")
    report = run_setup(clients, cfg)
    (step,) = [s for s in report.steps if s.component == "lifecycle policy"]
    assert step.action == "skipped" and step.name == f"{prefix}-anomalies-retention"
    api = "ISM" if clients.flavour == "opensearch" else "ILM"
    assert api in step.detail
    # without a lifecycle the index stays a plain index (no rollover alias to confuse the sink)
    assert _by(report, "index")[f"{prefix}-anomalies"] == "created"


def test_cli_setup_twice_and_dry_run(clients, make_config, prefix, drop_templates, tmp_path, capsys):
    if real_cluster():
        pytest.skip("CLI run uses the embedded server's plain config")
    cfg = make_config()
    path = tmp_path / "c.yml"
    data = {
        "elasticsearch": {"hosts": list(cfg.elasticsearch.hosts)},
        "source": {"index": cfg.source.index, "session_regex": cfg.source.session_regex},
        "output": {k: v for k, v in vars(cfg.output).items()},
    }
    path.write_text(yaml.safe_dump(data))
    assert cli.main(["setup", "--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing is written" in out and f"would create  index {prefix}-anomalies" in out
    assert cli.main(["setup", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"created  index template {prefix}-anomalies" in out and "skipped" in out
    assert cli.main(["setup", "--config", str(path), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "setup: nothing changed" in lines[-2]
    assert '"created"' not in lines[-1] and '"unchanged"' in lines[-1]
