"""The privileges the README grants match the requests the commands make.

Each command runs through the CLI against each strict persona (Elasticsearch, OpenSearch) in front of the
embedded server, which records every request; every recorded request must have an entry in
`deeplog_siem.privileges`, be declared for its command and index there, and need no privilege the README's
table withholds from that command.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from deeplog_lab.personas import Call, PersonaProxy
from deeplog_lab.replay import EPOCH, index_lines, load_sample, render
from deeplog_siem import privileges as P
from deeplog_siem.cli import main
from deeplog_siem.config import parse_config
from deeplog_siem.scheduler import build_scheduler

from .conftest import PERSONAS, REPO, config_data

README = (REPO / "README.md").read_text(encoding="utf-8")


@dataclass
class Scenario:
    flavour: str
    calls: dict[str, list[Call]]
    indices: dict[str, str]  # index name -> target (source, anomalies, ...)


@pytest.fixture(scope="module", params=PERSONAS, ids=PERSONAS)
def scenario(
    request: pytest.FixtureRequest,
    personas: dict[str, PersonaProxy],
    es_section: dict,
    clients,
    tmp_path_factory,
) -> Iterator[Scenario]:
    """setup, train, detect, feedback mark/apply, model and workflow commands, each recorded apart."""
    persona = personas[request.param]
    tmp = tmp_path_factory.mktemp("privileges")
    prefix = f"p{uuid.uuid4().hex[:10]}"
    model = {"epochs": 2, "patience": 1, "threads": 1, "device": "cpu"}
    section = {**es_section, "hosts": [persona.url]}
    files: dict[str, Path] = {}
    indices: dict[str, str] = {}
    # Retention (a lifecycle API, rollover aliases) gets indices of its own, used by setup alone.
    for name, extra in (("plain", {}), ("retention", {"retention": {"anomalies_days": 30}})):
        data = config_data(section, f"{prefix}{name[0]}", tmp / "models", model=model, **extra)
        files[name] = tmp / f"{name}.yml"
        files[name].write_text(yaml.safe_dump(data), encoding="utf-8")
        c = parse_config(data)
        o = c.output
        indices |= {
            c.source.index: "source",
            o.anomalies_index: "anomalies",
            o.runs_index: "runs",
            o.workflows_index: "workflows",
            o.state_index: "state",
            o.incidents: "incidents",
        }
        if name == "plain":
            cfg = c
    out = cfg.output
    sample = load_sample()
    calls: dict[str, list[Call]] = {}

    def run(command: str, *argv: str, config: str = "plain") -> None:
        with persona.recording() as made:
            rc = main([*command.split(), *argv, "-c", str(files[config])])
        assert rc == 0, f"{command} exited {rc}"
        calls.setdefault(command, []).extend(made)

    try:
        run("setup", config="retention")
        run("setup")
        index_lines(clients, cfg.source.index, render(sample.train[:60], seed=11), run="train")
        clients.es.indices.refresh(index=cfg.source.index)
        run("train")
        later = render(sample.test[:40], seed=3, start=EPOCH + timedelta(days=1))
        index_lines(clients, cfg.source.index, later, run="test")
        clients.es.indices.refresh(index=cfg.source.index)
        run("detect", "--once")
        clients.es.indices.refresh(index=out.anomalies_index)
        hit = clients.es.search(index=out.anomalies_index, size=1)["hits"]["hits"]
        assert hit, "detection found no anomaly to give feedback on"
        run("feedback mark", hit[0]["_id"], "--false-positive")
        run("feedback apply")
        run("setup")  # again, now with a model version: publishes its workflows
        versions = [p.name for p in (tmp / "models").iterdir() if p.is_dir() and p.name[0].isdigit()]
        run("model list")
        run("model restore", versions[0])
        run("workflow list")
        run("workflow show", "w1")
        diagnosed = clients.es.search(
            index=out.anomalies_index, size=1, query={"exists": {"field": "deeplog.workflow.name"}}
        )["hits"]["hits"]
        assert diagnosed, "detection found no anomaly with a workflow diagnosis"
        with persona.recording() as made:
            rc = main(["workflow", "show", "--anomaly", diagnosed[0]["_id"], "-c", str(files["plain"])])
        assert rc == 0, f"workflow show --anomaly exited {rc}"
        calls["workflow show --anomaly"] = list(made)
        yield Scenario(persona.flavour, calls, indices)
    finally:
        clients.es.options(ignore_status=404).indices.delete(index=f"{prefix}*", expand_wildcards="all")


def _target(scenario: Scenario, index: str) -> str | None:
    if index in scenario.indices:
        return scenario.indices[index]
    # A rollover index of an output alias: NAME-000001.
    m = re.fullmatch(r"(.+)-\d{6}", index)
    return scenario.indices.get(m.group(1)) if m else None


def _needs(scenario: Scenario, command: str) -> list[tuple[str, str, Call]]:
    """(scope, privilege, call) for every recorded call of `command`; fails on a call the table lacks or a
    use the command does not declare."""
    declared = P.COMMANDS[command]
    out = []
    for call in scenario.calls[command]:
        found = P.match(call.method, call.path)
        assert found is not None, (
            f"{command}: {call.method} {call.path} has no entry in deeplog_siem.privileges"
        )
        ep, params = found
        assert scenario.flavour in ep.flavours, (
            f"{command}: {call.method} {call.path} is not an {scenario.flavour} API"
        )
        if ep.scope == "cluster":
            scopes = [None]
        elif "index" in params:
            target = _target(scenario, params["index"])
            assert target, f"{command}: {call.method} {call.path} targets an index the job does not use"
            scopes = [target]
        else:
            # _bulk and point-in-time requests name their indices in the body: the command's declaration says.
            scopes = [u.target for u in declared if u.endpoint == ep.name]
        for scope in scopes:
            assert any(u.endpoint == ep.name and u.target == scope for u in declared), (
                f"{command}: {call.method} {call.path} ({ep.name} on {scope or 'the cluster'}) is not declared "
                "for the command in deeplog_siem.privileges.COMMANDS"
            )
            out.append((scope or "cluster", ep.privilege, call))
    return out


RECORDED = ("setup", "train", "detect", "feedback mark", "feedback apply", "workflow show --anomaly")
OFFLINE = ("model list", "model restore", "workflow list", "workflow show")


@pytest.mark.parametrize("command", RECORDED)
def test_every_request_is_in_the_table_and_declared_for_its_command(scenario, command):
    assert scenario.calls[command], f"{command} made no request"
    assert _needs(scenario, command)


@pytest.mark.parametrize("command", RECORDED)
def test_every_unconditional_use_is_made(scenario, command):
    seen = {P.match(c.method, c.path)[0].name for c in scenario.calls[command]}
    missing = [u for u in P.COMMANDS[command] if not u.when and u.endpoint not in seen]
    assert not missing, f"{command}: declared but never requested: {missing}"


@pytest.mark.parametrize("command", OFFLINE)
def test_model_and_workflow_commands_make_no_request(scenario, command):
    assert scenario.calls[command] == []
    assert P.required(command) == {}


def _readme_grants() -> dict[str, dict[str, set[str]]]:
    """command -> scope -> privileges, from the README's privileges table."""
    lines = README.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("| command | cluster |"))
    header = lines[at]
    rows = []
    for line in lines[at + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line)
    scopes = [c.strip().removesuffix(" index") for c in header.strip("|").split("|")][1:]
    out: dict[str, dict[str, set[str]]] = {}
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        command = cells[0].strip("`")
        out[command] = {s: set(re.findall(r"`([a-z_]+)`", c)) for s, c in zip(scopes, cells[1:], strict=True)}
    return out


def _privileges_section() -> str:
    start = README.index("Create a user or API key")
    return README[start : README.index("\n## ", start)]


@pytest.mark.parametrize("command", RECORDED)
def test_readme_grants_each_command_what_its_requests_need(scenario, command):
    assert "| command | cluster |" in README, "README has no privileges table per command"
    grants = _readme_grants().get(command, {})
    missing = sorted(
        {
            f"`{priv}` on {scope} (for {call.method} {call.path.split('?')[0]})"
            for scope, priv, call in _needs(scenario, command)
            if priv not in grants.get(scope, set())
        }
    )
    assert not missing, f"README does not grant {command}: {missing}"


def test_readme_names_every_privilege_the_requests_need(scenario):
    """Whatever the section's layout: each privilege a recorded request needs, and its OpenSearch equivalent,
    is named in it."""
    section = _privileges_section()
    missing = sorted(
        {
            f"{name} needed by {command}: {call.method} {call.path.split('?')[0]}"
            for command in RECORDED
            for _, priv, call in _needs(scenario, command)
            for name in (f"`{priv}`", f"`{P.OPENSEARCH[priv]}`")
            if name not in section
        }
    )
    assert not missing, f"README's privileges section lacks {missing}"


def test_readme_table_is_the_rendered_table():
    assert P.render_markdown() in README


def test_run_is_detection_feedback_and_retraining(make_config):
    cfg = make_config(schedule={"retrain_cron": "0 3 * * *"})
    sched = build_scheduler(cfg, None, threading.Event())  # type: ignore[arg-type] - never started
    assert {j.id for j in sched.get_jobs()} == {"detect", "feedback", "retrain"}
    run = set(P.COMMANDS["run"])
    for command in ("detect", "feedback apply", "train"):
        assert set(P.COMMANDS[command]) <= run, command


def test_the_table_matches_the_paths_it_documents():
    assert P.match("POST", "/deeplog-anomalies/_refresh")[0].privilege == "maintenance"
    assert P.match("GET", "/deeplog-state/_doc/detect")[0].name == "document get"
    assert P.match("PUT", "/_bulk")[0].name == "bulk"
    assert P.match("GET", "/_cat/indices") is None
    for uses in P.COMMANDS.values():
        for use in uses:
            assert P.endpoints(use.endpoint), use
            assert (use.target is None) == (P.endpoints(use.endpoint)[0].scope == "cluster"), use


def test_config_privileges_prints_the_table(capsys):
    assert main(["config", "privileges"]) == 0
    assert capsys.readouterr().out == P.render_markdown()


def test_setup_with_retention_calls_its_flavours_lifecycle_api(scenario):
    names = {P.match(c.method, c.path)[0].name for c in scenario.calls["setup"]}
    want = {"ILM status", "ILM policy put"} if scenario.flavour == "elasticsearch" else {"ISM policy put"}
    assert want <= names, sorted(names)
    pit = [
        c.path for c in scenario.calls["train"] if P.match(c.method, c.path)[0].name == "point in time open"
    ]
    assert pit and all(
        p.endswith("/_pit" if scenario.flavour == "elasticsearch" else "/point_in_time") for p in pit
    )
