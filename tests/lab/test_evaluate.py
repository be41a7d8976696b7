"""evaluate: the HDFS protocol on real DeepLog key files, through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deeplog_lab.evaluate import PAPER_ABNORMAL, PAPER_NORMAL, paper_scale
from deeplog_lab.keyseq import HDFS_DIR, hdfs_key_to_id, hdfs_vocabulary, read_key_sessions, to_ids
from deeplog_siem.cli import main
from deeplog_siem.errors import DataError
from deeplog_siem.vocab import NUM_RESERVED, UNK


def need(name: str) -> Path:
    p = HDFS_DIR / name
    if not p.is_file():
        pytest.skip(f"real data not found at {p} (tests expect ../shared/data beside the checkout)")
    return p


def test_read_key_sessions(tmp_path: Path) -> None:
    p = tmp_path / "keys"
    p.write_text("5 5 22 \n\n11 9\n")
    assert read_key_sessions(p) == [[5, 5, 22], [], [11, 9]]
    p.write_text("5 5 22 \n11 x 9\n")
    with pytest.raises(DataError, match=r"keys:2: not a sequence of integer keys"):
        read_key_sessions(p)
    p.write_text("5 0\n")
    with pytest.raises(DataError, match=r"keys:1: keys must be >= 1"):
        read_key_sessions(p)
    with pytest.raises(DataError, match="file not found"):
        read_key_sessions(tmp_path / "missing")


def test_hdfs_vocabulary_and_mapping() -> None:
    vocab = hdfs_vocabulary()
    assert hdfs_key_to_id(1) == NUM_RESERVED
    assert "Receiving block" in vocab.template(hdfs_key_to_id(5))
    assert "PacketResponder <*> for block <*> terminating" in vocab.template(hdfs_key_to_id(11))
    ids, unknown = to_ids([[5, 99, 22]], len(vocab))
    assert ids == [[hdfs_key_to_id(5), UNK, hdfs_key_to_id(22)]] and unknown == 1
    # The packaged copy is the shared data's file (the package must not need ../shared at runtime).
    shared = HDFS_DIR / "HDFS_templates.csv"
    if shared.is_file():
        assert hdfs_vocabulary(shared).templates == vocab.templates


def test_paper_scale_matches_paper_figures() -> None:
    # The paper's FP 833 and FN 619 give its precision 0.95, recall 0.96, F1 0.96.
    r = paper_scale(833 / PAPER_NORMAL, 1 - 619 / PAPER_ABNORMAL)
    assert round(r["precision_paper"], 2) == 0.95 and round(r["recall_paper"], 2) == 0.96
    assert round(r["f1_paper"], 2) == 0.96


@pytest.mark.slow
def test_evaluate_cli_json_on_real_slice(tmp_path: Path, capsys) -> None:
    """Train on a slice of hdfs_train, save, then evaluate the saved model on slices of the dev files."""
    args = ["--train", str(need("hdfs_train")), "--normal", str(need("hdfs_test_normal_dev"))]
    args += ["--abnormal", str(need("hdfs_test_abnormal_dev")), "--limit", "1500", "--device", "cpu"]
    model = tmp_path / "key.pt"
    assert main(["evaluate", *args, "--epochs", "12", "--save", str(model), "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("protocol: ") for line in out)
    r = json.loads(out[-1])
    for k in (
        "fp",
        "fn",
        "fp_rate",
        "recall",
        "precision_paper",
        "f1_paper",
        "normal_sessions",
        "abnormal_sessions",
    ):
        assert k in r, k
    assert r["normal_sessions"] == r["abnormal_sessions"] == 1500
    assert r["fp"] + (r["normal_sessions"] - r["fp"]) == 1500 and 0 <= r["fn"] <= 1500
    # A model trained on normal sessions passes nearly all normal ones and catches most abnormal ones.
    assert r["fp_rate"] < 0.02 and r["recall"] > 0.5
    assert model.is_file()
    # Loading the saved model instead of training gives the same figures.
    assert main(["evaluate", *args, "--model", str(model), "--json"]) == 0
    r2 = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (r2["fp"], r2["fn"]) == (r["fp"], r["fn"]) and r2["train_seconds"] is None


def test_evaluate_cli_errors(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad"
    bad.write_text("1 2 x\n")
    assert main(["evaluate", "--train", str(bad), "--normal", str(bad), "--abnormal", str(bad)]) == 2
    assert "bad:1: not a sequence of integer keys" in capsys.readouterr().err
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    good = tmp_path / "good"
    good.write_text("5 5 22 \n")
    assert main(["evaluate", "--model", str(broken), "--normal", str(good), "--abnormal", str(good)]) == 2
    assert "broken.pt: not a readable model checkpoint" in capsys.readouterr().err
    assert main(["evaluate", "--window", "0", "--normal", str(bad), "--abnormal", str(bad)]) == 2
    assert "model.window: must be >= 1" in capsys.readouterr().err


def test_bench_keymodel_reports_every_figure(tmp_path: Path) -> None:
    """bench keymodel on the real dev files with a small saved model (the default run trains on all of
    hdfs_train): every figure is there, (a) computed each distinct window once, the medians are the runs'."""
    need("hdfs_test_normal_dev")
    model = tmp_path / "m.pt"
    assert main(["evaluate", "--train", str(need("hdfs_train")), "--normal", str(need("hdfs_test_normal_dev")),
                 "--abnormal", str(need("hdfs_test_abnormal_dev")), "--limit", "200", "--epochs", "1",
                 "--hidden", "16", "--device", "cpu", "--save", str(model)]) == 0  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "deeplog_siem.cli", "bench", "keymodel", "--json", "--model", str(model),
         "--device", "cpu", "--repeat", "3", "--naive-sample", "100"],
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["cache_hits"] + r["cache_misses"] <= r["windows"] and r["cache_misses"] == r["unique_windows"]
    for k in (
        "cached_windows_per_s",
        "unique_windows_per_s",
        "anchored_unique_windows_per_s",
        "naive_windows_per_s",
    ):
        assert len(r[k + "_runs"]) == 3 and r[k] == sorted(r[k + "_runs"])[1], k
    assert r["speedup_unique_vs_naive"] == pytest.approx(
        r["unique_windows_per_s"] / r["naive_windows_per_s"], abs=0.1
    )
    assert r["train_seconds"] is None and r["naive_windows"] == 100 and r["chunk_rows"] == 256
    # At a production vocabulary size (window ids beyond one int64), with an untrained model.
    out = subprocess.run(
        [sys.executable, "-m", "deeplog_siem.cli", "bench", "keymodel", "--json", "--vocab-size", "100",
         "--device", "cpu", "--repeat", "1", "--naive-sample", "10"],
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert (
        r["vocab_size"] == 100 and r["cache_misses"] == r["unique_windows"] and r["cached_windows_per_s"] > 0
    )


def test_keyacc_fps_lists_each_models_false_positives(tmp_path: Path, capsys) -> None:
    """The false-positive analysis flags, per model, the sessions `evaluate` counts as FP; `--misses`
    groups the sessions it counts as FN."""
    from deeplog_lab.bench import keyacc_fps

    need("hdfs_test_normal_dev")
    model = tmp_path / "m.pt"
    assert main(["evaluate", "--train", str(need("hdfs_train")), "--normal", str(need("hdfs_test_normal_dev")),
                 "--abnormal", str(need("hdfs_test_abnormal_dev")), "--epochs", "3", "--hidden", "16",
                 "--device", "cpu", "--save", str(model), "--json"]) == 0  # fmt: skip
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    fp = figures["fp"]
    keyacc_fps.main([str(model), f"{model}:0.9999"])
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["fp"] == {str(model): fp, f"{model}:0.9999": 3500}  # that floor rejects every session
    assert {s["models"] for s in r["sessions"]} <= {1, 2} and len(r["sessions"]) == 3500
    assert sum(s["models"] == 2 for s in r["sessions"]) == fp
    # --misses: the same FN as evaluate, every missed session in exactly one group; a floor of 0.9999
    # misses nothing. Plain top-9 (floor 0) lets this three-epoch model miss some.
    assert main(["evaluate", "--model", str(model), "--train", str(need("hdfs_train")), "--min-probability", "0",
                 "--device", "cpu", "--json"]) == 0  # fmt: skip
    fn = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["fn"]
    keyacc_fps.main(["--misses", f"{model}:0", f"{model}:0.9999"])
    m = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["fn"]
    assert m[f"{model}:0"]["fn"] == fn > 0
    assert sum(g["sessions"] for g in m[f"{model}:0"]["groups"]) == fn
    assert all(" -> " in g["transition"] for g in m[f"{model}:0"]["groups"])
    assert m[f"{model}:0.9999"] == {"fn": 0, "groups": []}


def test_keyacc_session_scores_every_dev_session(capsys) -> None:
    """The whole-session alternative trains and reports FP/FN for each floor, non-decreasing FP with it."""
    from deeplog_lab.bench import keyacc_session

    need("hdfs_test_abnormal_dev")
    keyacc_session.main(["--epochs", "1", "--batch", "64"])
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = [r[f"floor_{f}"] for f in keyacc_session.FLOORS]
    assert all(0 <= x["fp"] <= 3500 and 0 <= x["fn"] <= 8419 for x in rows)
    assert [x["fp"] for x in rows] == sorted(x["fp"] for x in rows)  # a higher floor flags more
    assert [x["fn"] for x in rows] == sorted((x["fn"] for x in rows), reverse=True)
    assert r["epochs_run"] == 1 and r["distinct_train_sessions"] > 500
