"""Workflow models: loops, concurrency and interleaved tasks recognised; the generator's task graphs
recovered; diagnosis; storage and renderings; anomalies and workflow documents fit the strict mappings."""

from __future__ import annotations

import json
import random
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from deeplog_siem import cli
from deeplog_siem.config import Config, parse_config
from deeplog_siem.vocab import EOS, UNK
from deeplog_siem.workflow import END, START, WorkflowModel, diagnose, render_dot, render_text
from deeplog_siem.workflow_mining import mine_workflows
from deeplog_siem.workflow_picture import TAKEN_COLOUR, render_svg
from tests.conftest import config_data

SVG = "{http://www.w3.org/2000/svg}"

A, B, C, D, E = 3, 4, 5, 6, 7
X, Y, Z = 10, 11, 12
NAMES = {k: f"event {k} <*>" for k in range(3, 20)}


def kinds(wm: WorkflowModel) -> dict[tuple[int, int], str]:
    return {(e.source, e.target): e.kind for w in wm.workflows for e in w.edges}


def test_loop_is_a_back_edge():
    rng = random.Random(1)
    wm = mine_workflows([[A] + [B, C] * rng.randint(1, 4) + [D] for _ in range(60)], NAMES)
    assert len(wm.workflows) == 1
    k = kinds(wm)
    assert k[(C, B)] == "loop"  # back to a state already visited
    assert k[(B, C)] == "sequential" and k[(A, B)] == "sequential"
    assert k[(C, D)] == "branch"  # the loop's exit
    assert not wm.workflows[0].concurrent


def test_concurrent_pair():
    rng = random.Random(2)
    wm = mine_workflows([[A, *rng.sample([B, C], 2), D] for _ in range(60)], NAMES)
    w = wm.workflows[0]
    assert w.concurrent == [[B, C]]
    k = kinds(wm)
    assert k[(A, B)] == k[(A, C)] == k[(B, C)] == k[(C, B)] == "concurrent"
    assert (B, B) not in k and (C, C) not in k
    assert not any(kind == "loop" for kind in k.values())


def interleaved(rng: random.Random) -> list[int]:
    """Task 1 (A B C D) and/or task 2 (X Y Z) in one sequence, their events randomly interleaved."""
    tasks = [t for t in ([A, B, C, D], [X, Y, Z]) if rng.random() < 0.7] or [[X, Y, Z]]
    pos = [0] * len(tasks)
    out = []
    while any(p < len(t) for p, t in zip(pos, tasks, strict=True)):
        j = rng.choice([j for j, (p, t) in enumerate(zip(pos, tasks, strict=True)) if p < len(t)])
        out.append(tasks[j][pos[j]])
        pos[j] += 1
    return out


def test_two_interleaved_tasks_are_separated():
    rng = random.Random(3)
    seqs = [interleaved(rng) for _ in range(120)]
    wm = mine_workflows(seqs, NAMES)
    cores = sorted(sorted(w.core) for w in wm.workflows)
    assert cores == [[A, B, C, D], [X, Y, Z]]
    edges = {(e.source, e.target) for w in wm.workflows for e in w.edges if START not in (e.source, e.target)}
    assert edges == {(A, B), (B, C), (C, D), (X, Y), (Y, Z), (D, END), (Z, END)}
    # The task level: either task may come first or alone.
    names = {tuple(sorted(w.core)): w.name for w in wm.workflows}
    t1, t2 = names[(A, B, C, D)], names[(X, Y, Z)]
    assert wm.transitions[f"START>{t1}"] > 0 and wm.transitions[f"{t2}>{t1}"] > 0


def timed_sessions(n: int, seed: int) -> tuple[list[list[int]], list[list[float]]]:
    """A X B (X -> B takes ~2 s) or C X D (X -> D ~0.1 s): the step after X depends on the key before it."""
    rng = random.Random(seed)
    seqs, times = [], []
    for _ in range(n):
        first, last, gap = (A, B, 2.0) if rng.random() < 0.5 else (C, D, 0.1)
        seqs.append([first, X, last, E])
        t0 = rng.uniform(0, 1000)
        times.append([t0, t0 + 0.5, t0 + 0.5 + gap * rng.uniform(0.9, 1.1), t0 + 3])
    return seqs, times


def test_history_grows_where_one_key_is_ambiguous_and_diagnosis():
    seqs, times = timed_sessions(80, 4)
    wm = mine_workflows(seqs, NAMES, times=times)
    w = wm.workflows[0]
    assert {e.target for e in w.successors(X)} == {B, D}
    assert w.contexts[f"{A},{X}"] == str(B) and w.contexts[f"{C},{X}"] == str(D)
    e = w.edge(X, B)
    assert 1.8 <= e.median_gap_s <= 2.2 and e.median_gap_s <= e.p90_gap_s

    # After A X the workflow expects B only; D there is a divergence at X.
    d = diagnose(wm, [A, X], D)
    f = d.fields()
    assert f["name"] == w.name and f["path"] == ["K3", "K10"] and f["diverged_at"] == "K10"
    assert f["expected_next"] == ["K4"] and f["expected_templates"] == [NAMES[B]]
    assert "diverged" in f["summary"] and "K10" in f["summary"]

    # A slow step: B after A X took 9 s where it takes ~2 s.
    slow = diagnose(wm, [A, X], B, gap_s=9.0).fields()
    assert slow["step_allowed"] and slow["slow_step"]["slow"] and slow["slow_step"]["ratio"] > 4
    assert "took 9 s" in slow["summary"]
    assert not diagnose(wm, [A, X], B, gap_s=2.0).fields()["slow_step"]["slow"]

    # An unseen key and a key no workflow knows after keys no workflow knows: a reason, no path.
    assert diagnose(wm, [A, X], UNK).fields()["reason"] == "unseen_key"
    assert diagnose(wm, [17, 18], 19).fields()["reason"] == "no_workflow"
    # A session that ends early: diverged where it stopped.
    end = diagnose(wm, [A, X, B], EOS).fields()
    assert end["diverged_at"] == "K4" and end["expected_next"] == ["K7"]


def test_model_round_trips_and_renders(tmp_path):
    seqs, times = timed_sessions(40, 5)
    wm = mine_workflows(seqs, NAMES, times=times)
    wm.save(tmp_path)
    again = WorkflowModel.load(tmp_path)
    assert again.to_dict() == wm.to_dict()
    w = again.workflows[0]
    text = render_text(w)
    assert "K10 event 10" in text and "-> K4" in text
    dot = render_dot(w)
    assert dot.startswith('digraph "w1"') and "K10 -> K4" in dot
    svg = ET.fromstring(render_svg(w))
    assert svg.tag.endswith("svg") and len(svg.findall(f".//{SVG}g[@class='node']")) == len(w.nodes) + 2


def test_cli_workflow_show_and_evaluate(tmp_path, capsys):
    seqs, times = timed_sessions(40, 6)
    mine_workflows(seqs, NAMES, times=times).save(tmp_path)
    assert cli.main(["workflow", "show", "w1", "--model-dir", str(tmp_path)]) == 0
    assert "workflow w1" in capsys.readouterr().out
    out = tmp_path / "w1.svg"
    assert (
        cli.main(
            ["workflow", "show", "w1", "--model-dir", str(tmp_path), "--format", "svg", "--output", str(out)]
        )
        == 0
    )
    ET.parse(out)
    dot = tmp_path / "w1.dot"
    assert (
        cli.main(
            ["workflow", "show", "w1", "--model-dir", str(tmp_path), "--format", "dot", "--output", str(dot)]
        )
        == 0
    )
    assert dot.read_text().startswith("digraph")
    with pytest.raises(SystemExit) as gone:  # PNG is no longer offered: an argparse usage error
        cli.main(["workflow", "show", "w1", "--model-dir", str(tmp_path), "--format", "png"])
    assert gone.value.code == 2
    assert "invalid choice: 'png'" in capsys.readouterr().err
    assert cli.main(["workflow", "show", "w9", "--model-dir", str(tmp_path)]) == 2  # unknown name: an error
    capsys.readouterr()
    assert cli.main(["evaluate-workflows", "--seed", "3", "--tasks", "300", "--no-key-model", "--json"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["seeds"] == [3] and last["edge_recall_min"] >= 0.95 and last["spurious_rate_max"] <= 0.05


@pytest.mark.parametrize("bad", [{}, {"format_version": 99}, {"format_version": 1, "workflows": "x"}])
def test_malformed_workflow_model_is_an_artifact_error(bad):
    from deeplog_siem.errors import ArtifactError

    with pytest.raises(ArtifactError):
        WorkflowModel.from_dict(bad)


def test_job_writes_workflows_and_every_anomaly_has_a_path_or_a_reason(clients, make_config, prefix):
    """Train on replayed real HDFS sessions: the workflows go to the model version and the workflows index;
    every anomaly the detection job writes says where its session left its workflow, or why none applies."""
    from datetime import timedelta

    from deeplog_lab.replay import EPOCH, index_lines, load_sample, render
    from deeplog_siem.artifacts import ModelStore
    from deeplog_siem.runner import publish_current_workflows, run_once, train
    from deeplog_siem.setup_assets import create_indices

    sample = load_sample()
    cfg = make_config(model={"epochs": 4, "hidden": 32, "threads": 1})
    create_indices(clients, cfg)  # strict mappings: the documents must fit them
    index_lines(clients, f"{prefix}-train", render(sample.train[:300], seed=21), run="train")
    t = train(cfg, clients, index=f"{prefix}-train")
    _, path = ModelStore(cfg.model.dir).current()
    wm = WorkflowModel.load(path)
    assert wm.key_model and wm.workflows

    clients.es.indices.refresh(index=cfg.output.workflows_index)
    docs = clients.es.search(index=cfg.output.workflows_index, size=100)["hits"]["hits"]
    assert sorted(d["_source"]["deeplog"]["workflow"]["name"] for d in docs) == sorted(
        w.name for w in wm.workflows
    )
    for d in docs:
        src = d["_source"]["deeplog"]
        assert src["model_version"] == t.version
        assert src["workflow"]["edges"] and src["workflow"]["nodes"] and src["workflow"]["templates"]

    # setup writes them again: same ids (model version + name), nothing duplicated.
    msg = publish_current_workflows(clients, cfg)
    assert f"{len(wm.workflows)} of model version {t.version}" in msg
    clients.es.indices.refresh(index=cfg.output.workflows_index)
    assert clients.es.count(index=cfg.output.workflows_index)["count"] == len(wm.workflows)

    index_lines(
        clients, cfg.source.index, render(sample.test[:120], seed=22, start=EPOCH + timedelta(days=1))
    )
    summary = run_once(cfg, clients, close_sessions=True)
    assert summary.status == "ok" and sum(summary.rejected.values()) == 0
    assert summary.anomalies_total > 0
    clients.es.indices.refresh(index=cfg.output.anomalies_index)
    hits = clients.es.search(index=cfg.output.anomalies_index, size=1000)["hits"]["hits"]
    assert len(hits) == summary.anomalies_total
    with_path = 0
    for h in hits:
        wf = h["_source"]["deeplog"]["workflow"]
        assert wf["summary"]
        if "reason" in wf:
            assert wf["reason"] in ("unseen_key", "no_workflow") and "name" not in wf
            if h["_source"]["deeplog"]["anomaly_type"] == "unseen_key":
                assert wf["reason"] == "unseen_key"
        else:
            with_path += 1
            assert wf["name"] in {w.name for w in wm.workflows}
            assert wf["diverged_at"] and wf["expected_next"] is not None
            assert len(wf["path"]) == len(wf["path_templates"])
    assert with_path > 0
    # Analysts can find the anomalies of one workflow.
    name = next(
        h["_source"]["deeplog"]["workflow"]["name"]
        for h in hits
        if "name" in h["_source"]["deeplog"]["workflow"]
    )
    n = clients.es.count(index=cfg.output.anomalies_index, query={"term": {"deeplog.workflow.name": name}})
    assert n["count"] >= 1


def test_concurrency_mask_accepts_only_the_first_occurrence_next_to_its_partner():
    import torch

    from deeplog_siem.workflow import concurrency_mask, concurrent_partners

    wm = mine_workflows([[A, B, C], [B, A, C]] * 30, NAMES)  # A and B in either order: concurrent
    partners = concurrent_partners(wm)
    assert partners.get(A) == frozenset({B}) and partners.get(B) == frozenset({A})
    pad = 0
    keys = torch.tensor(
        [
            [pad, pad, B],  # A after B, first A: accepted whatever the model thinks of the order
            [pad, A, B],  # A again: its partner is no excuse for a repeat
            [pad, pad, C],  # A after C only: no concurrent partner in the window
            [pad, pad, A],  # C after A: C has no partner
        ]
    )
    targets = torch.tensor([A, A, A, C])
    assert concurrency_mask(keys, targets, partners).tolist() == [True, False, False, False]
    assert not concurrency_mask(keys, targets, {}).any()


# ------------------------------------------------------------------------------------ the picture's layout


@pytest.fixture(scope="module")
def hdfs_workflows() -> WorkflowModel:
    """The workflows of the real HDFS training sessions (counts only: no key model, so every observed step
    stays and the side states START never reaches are there)."""
    from deeplog_lab.keyseq import HDFS_DIR, hdfs_vocabulary, read_key_sessions, to_ids

    vocab = hdfs_vocabulary(HDFS_DIR / "HDFS_templates.csv")
    train, _ = to_ids(read_key_sessions(HDFS_DIR / "hdfs_train"), len(vocab))
    return mine_workflows(train, vocab.templates)


def picture(
    svg_text: str,
) -> tuple[dict[str, tuple[float, float, float, float]], dict[tuple[str, str], ET.Element]]:
    """(state -> its box (x, y, w, h), (source, target) -> the edge's group) of a rendered SVG."""
    root = ET.fromstring(svg_text)
    boxes = {}
    for g in root.iter(f"{SVG}g"):
        if g.get("class") == "node":
            r = g.find(f"{SVG}rect")
            boxes[g.get("data-id")] = tuple(float(r.get(a)) for a in ("x", "y", "width", "height"))
    edges = {
        (g.get("data-source"), g.get("data-target")): g
        for g in root.iter(f"{SVG}g")
        if (g.get("class") or "").startswith("edge")
    }
    return boxes, edges


def overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def reachable(w, start: int = START) -> set[str]:
    from deeplog_siem.workflow import node_id

    seen, todo = {start}, [start]
    while todo:
        a = todo.pop()
        for e in w.successors(a):
            if e.target not in seen:
                seen.add(e.target)
                todo.append(e.target)
    return {node_id(k) for k in seen}


def test_hdfs_picture_layout_is_readable(hdfs_workflows):
    """On the real HDFS workflows: no two state boxes overlap; every edge has an arrowhead; self-loops are
    loops (curves that leave and come back), not zero-length lines; A -> B and B -> A are two lines; states
    START never reaches are set apart from the chain and flagged; labels show shares where counts crowd."""
    w1 = hdfs_workflows.get("w1")
    checked_pairs = 0
    for w in hdfs_workflows.workflows:
        boxes, edges = picture(render_svg(w))
        ids = sorted(boxes)
        assert len(ids) == len(w.nodes) + 2
        for i, a in enumerate(ids):
            for b in ids[i + 1 :]:
                assert not overlap(boxes[a], boxes[b]), (w.name, a, b)
        assert len(edges) == len(w.edges)
        for (a, b), g in edges.items():
            line, arrow = g.findall(f"{SVG}path")
            assert arrow.get("d").endswith("Z") and arrow.get("fill") != "none"  # a filled arrowhead
            d = line.get("d")
            points = [tuple(map(float, p.split(","))) for p in d.replace("M", "").replace("C", "").split()]
            if a == b:
                assert d.count("C") == 1 and len(set(points)) == 4  # a real curve ...
                xs = [p[0] for p in points]
                assert max(xs) - min(xs) > 20  # ... that leaves the box and comes back
            if (b, a) in edges and a != b:
                checked_pairs += 1
                assert d != edges[(b, a)].findall(f"{SVG}path")[0].get("d"), (a, b)
                back = [
                    tuple(map(float, p.split(",")))
                    for p in edges[(b, a)]
                    .findall(f"{SVG}path")[0]
                    .get("d")
                    .replace("M", "")
                    .replace("C", "")
                    .split()
                ]
                assert {points[0], points[-1]} != {back[0], back[-1]}, (a, b)  # not one line drawn twice
    assert checked_pairs >= 6  # K7/K24, K13/K11, K5/K6 both ways
    # Side states: w1 has states START never reaches (K8, K18, K20, K27 on HDFS): in their own column, to the
    # right of every reachable state, never between START and END, and flagged.
    svg = render_svg(w1)
    boxes, _ = picture(svg)
    side = set(boxes) - reachable(w1)
    assert side >= {"K8", "K18", "K20", "K27"}
    chain_right = max(boxes[k][0] + boxes[k][2] for k in boxes if k not in side)
    assert all(boxes[k][0] > chain_right for k in side)
    root = ET.fromstring(svg)
    flagged = {
        g.get("data-id")
        for g in root.iter(f"{SVG}g")
        if g.get("class") == "node" and g.find(f"{SVG}rect").get("stroke-dasharray")
    }
    assert flagged == side
    assert "not reached from start" in svg
    # 33 edges crowd: shares; w2's 8 edges: counts. A rare-edge threshold hides edges and says how many.
    labels = [g.find(f"{SVG}text").text for g in picture(svg)[1].values()]
    assert all(t.endswith("%") for t in labels)
    w2_labels = [g.find(f"{SVG}text").text for g in picture(render_svg(hdfs_workflows.get("w2")))[1].values()]
    assert all(t.replace(",", "").isdigit() for t in w2_labels)
    rare = sum(e.probability < 0.05 for e in w1.edges)
    _, shown = picture(render_svg(w1, min_share=0.05))
    assert (
        rare > 0
        and len(shown) == len(w1.edges) - rare
        and f"{rare} rare edges hidden" in render_svg(w1, min_share=0.05)
    )


def test_picture_labels_carry_the_median_gap():
    seqs, times = timed_sessions(40, 7)
    w = mine_workflows(seqs, NAMES, times=times).workflows[0]
    _, edges = picture(render_svg(w))
    gap = w.edge(X, B).median_gap_s
    assert edges[("K10", "K4")].find(f"{SVG}text").text == f"{w.edge(X, B).count:,} {gap:.2g}s"


# ------------------------------------------------------------------------- one anomaly on its workflow


@dataclass
class HdfsJob:
    """A model trained on replayed real HDFS sessions and a detection run over abnormal ones: the workflow
    and anomaly documents the product wrote to the embedded server."""

    config_file: Path
    config: Config
    anomalies: list[dict]  # hits with a workflow diagnosis (a diverged state), newest first


def run_hdfs_job(clients, es_section: dict, folder: Path, prefix: str) -> HdfsJob:
    from datetime import timedelta

    from deeplog_lab.replay import EPOCH, index_lines, load_sample, render
    from deeplog_siem.runner import run_once, train
    from deeplog_siem.setup_assets import create_indices

    data = config_data(es_section, prefix, folder / "models", model={"epochs": 4, "hidden": 32, "threads": 1})
    cfg = parse_config(data)
    config_file = folder / "deeplog.yml"
    config_file.write_text(yaml.safe_dump(data))
    sample = load_sample()
    create_indices(clients, cfg)
    index_lines(clients, f"{prefix}-train", render(sample.train[:300], seed=21), run="train")
    train(cfg, clients, index=f"{prefix}-train")
    index_lines(
        clients, cfg.source.index, render(sample.test[:120], seed=22, start=EPOCH + timedelta(days=1))
    )
    assert run_once(cfg, clients, close_sessions=True).status == "ok"
    for index in (cfg.output.anomalies_index, cfg.output.workflows_index):
        clients.es.indices.refresh(index=index)
    hits = clients.es.search(
        index=cfg.output.anomalies_index,
        query={"exists": {"field": "deeplog.workflow.diverged_at"}},
        sort=[{"@timestamp": "desc"}],
        size=1000,
    )["hits"]["hits"]
    return HdfsJob(config_file, cfg, hits)


@pytest.fixture(scope="module")
def hdfs_job(clients, es_section, tmp_path_factory) -> Iterator[HdfsJob]:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    yield run_hdfs_job(clients, es_section, tmp_path_factory.mktemp("hdfs-job"), prefix)
    clients.es.options(ignore_status=404).indices.delete(index=f"{prefix}*", expand_wildcards="all")


def test_workflow_show_anomaly_draws_its_path_divergence_expected_and_taken_steps(hdfs_job, tmp_path, capsys):
    """`workflow show --anomaly ID` on a real anomaly the detection job wrote: the workflow of the anomaly's
    model version, its path highlighted, the diverged state marked, the expected steps and the step taken
    drawn apart from each other."""
    hit = next(h for h in hdfs_job.anomalies if h["_source"]["deeplog"]["workflow"]["expected_next"])
    wf = hit["_source"]["deeplog"]["workflow"]
    out = tmp_path / "anomaly.svg"
    args = [
        "workflow",
        "show",
        "--anomaly",
        hit["_id"],
        "-c",
        str(hdfs_job.config_file),
        "--output",
        str(out),
    ]
    assert cli.main(args) == 0
    assert f"anomaly {hit['_id']} on workflow {wf['name']}" in capsys.readouterr().out
    svg = out.read_text()
    root = ET.fromstring(svg)
    boxes, edges = picture(svg)
    assert hit["_source"]["deeplog"]["model_version"] in root.find(f"{SVG}title").text
    # The diverged state: a thick red border and its caption.
    diverged = [g for g in root.iter(f"{SVG}g") if g.get("data-id") == wf["diverged_at"]]
    assert diverged and float(diverged[0].find(f"{SVG}rect").get("stroke-width")) >= 3
    (caption,) = [t for t in root.iter(f"{SVG}text") if t.get("class") == "diverged"]
    x, y, w, h = boxes[wf["diverged_at"]]
    assert caption.text == "diverged here" and x <= float(caption.get("x")) <= x + w
    # The expected steps: the edges from the diverged state to each expected state, in their own style; the
    # step taken in red (the workflow's edge when it has one: a step rare in its context).
    src = hit["_source"]["deeplog"]
    taken = "END" if src["anomaly_type"] == "session_end" else f"K{src['key']['id']}"
    expected = {(wf["diverged_at"], k) for k in wf["expected_next"] if k != taken}
    assert expected and all(edges[e].get("class") == "edge expected" for e in expected)
    assert {e for e, g in edges.items() if g.get("class") == "edge expected"} == expected
    taken_marks = [g for g in root.iter(f"{SVG}g") if g.get("class") in ("taken", "edge taken")]
    assert len(taken_marks) == 1 and TAKEN_COLOUR in ET.tostring(taken_marks[0], encoding="unicode")
    # The path's steps in the workflow are highlighted.
    steps = {(a, b) for a, b in zip(wf["path"], wf["path"][1:], strict=False) if (a, b) in edges}
    assert all(edges[s].get("class") in ("edge path", "edge expected", "edge taken") for s in steps)
    # A wrong id is an error that names it.
    assert cli.main(["workflow", "show", "--anomaly", "nope", "-c", str(hdfs_job.config_file)]) == 2
    assert "no anomaly document with id 'nope'" in capsys.readouterr().err


def test_anomaly_overlay_rejects_hostile_workflow_fields():
    """The anomaly's workflow fields come from the cluster: anything but state ids is refused by name."""
    from deeplog_siem.errors import DataError
    from deeplog_siem.workflow_picture import Overlay

    good = {"deeplog": {"model_version": "v1", "anomaly_type": "log_key", "key": {"id": 7}, "workflow": {
        "name": "w1", "path": ["K5"], "diverged_at": "K5", "expected_next": ["K6"], "summary": "s"}}}  # fmt: skip
    assert Overlay.from_anomaly(good).taken == "K7"
    for field_, value in (
        ("diverged_at", '"/><script>x</script>'),
        ("path", ["K1", "<b>"]),
        ("expected_next", "K6"),
    ):
        bad = json.loads(json.dumps(good))
        bad["deeplog"]["workflow"][field_] = value
        with pytest.raises(DataError, match=f"deeplog.workflow.{field_}"):
            Overlay.from_anomaly(bad)
    with pytest.raises(DataError, match="reason: unseen_key"):
        Overlay.from_anomaly({"deeplog": {"workflow": {"reason": "unseen_key", "summary": "s"}}})


def test_workflow_show_refuses_what_it_cannot_draw(tmp_path, capsys):
    seqs, times = timed_sessions(20, 8)
    mine_workflows(seqs, NAMES, times=times).save(tmp_path)
    for argv, message in (
        (["w1", "--min-share", "2"], "--min-share must be a share between 0 and 1, got 2.0"),
        ([], "give a workflow NAME"),
        (["--anomaly", "abc"], "give -c/--config FILE"),
        (["w1", "--anomaly", "abc"], "give a workflow NAME or --anomaly ID, not both"),
    ):
        assert cli.main(["workflow", "show", *argv, "--model-dir", str(tmp_path)]) == 2
        assert message in capsys.readouterr().err, argv
