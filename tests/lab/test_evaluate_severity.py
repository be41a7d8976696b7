"""Severity in the evaluations: `evaluate --json` counts the flagged sessions by their highest severity, with
the same calibration whether the model is trained or loaded; `evaluate-params` counts tasks by severity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deeplog_lab.evaluate_params import run as run_params
from deeplog_lab.keyseq import HDFS_DIR
from deeplog_siem.calibration import KeyCalibration
from deeplog_siem.cli import main
from deeplog_siem.model import load_checkpoint
from deeplog_siem.risk import SEVERITIES

BANDS = list(SEVERITIES)


def need(name: str) -> Path:
    p = HDFS_DIR / name
    if not p.is_file():
        pytest.skip(f"real data not found at {p} (tests expect ../shared/data beside the checkout)")
    return p


def test_evaluate_counts_flagged_sessions_by_their_highest_severity(tmp_path: Path, capsys) -> None:
    args = ["--train", str(need("hdfs_train")), "--normal", str(need("hdfs_test_normal_dev"))]
    args += ["--abnormal", str(need("hdfs_test_abnormal_dev")), "--limit", "1200", "--device", "cpu"]
    model = tmp_path / "key.pt"
    assert main(["evaluate", *args, "--epochs", "8", "--save", str(model), "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    sev = r["severity"]
    assert set(sev) == set(BANDS) and all(set(v) == {"fp", "tp"} for v in sev.values())
    assert sum(v["fp"] for v in sev.values()) == r["fp"]
    assert sum(v["tp"] for v in sev.values()) == r["abnormal_sessions"] - r["fn"]
    upper = r["severity_high_or_critical"]
    assert upper["tp"] == sev["high"]["tp"] + sev["critical"]["tp"]
    assert upper["fp"] == sev["high"]["fp"] + sev["critical"]["fp"]
    assert 0.0 <= upper["precision_paper"] <= 1.0 and 0.0 <= upper["share_of_found"] <= 1.0
    assert r["risk_calibration"] == "validation"
    # The saved model carries its calibration: loading it gives the same bands.
    _, _, header = load_checkpoint(model)
    assert KeyCalibration.from_meta(header["meta"]) is not None
    assert main(["evaluate", *args, "--model", str(model), "--json"]) == 0
    r2 = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r2["severity"] == sev


def test_evaluate_params_counts_tasks_by_their_highest_severity() -> None:
    r = run_params(0, n_train=800, n_test=1200, progress=lambda m: None)
    sev = r["severity"]
    assert set(sev) == {"normal", "2x", "3x", "5x"}
    assert all(set(v) == set(BANDS) for v in sev.values())
    assert sum(sev["normal"].values()) == r["fp_tasks"]
    for k in ("2x", "3x", "5x"):
        recalled = round(r[f"recall_{k}"] * r[f"slowed_tasks_{k}"])
        assert sum(sev[k].values()) == recalled
        upper = sev[k]["high"] + sev[k]["critical"]
        assert r[f"high_or_critical_{k}"] == pytest.approx(upper / r[f"slowed_tasks_{k}"])
    n_upper = sev["normal"]["high"] + sev["normal"]["critical"]
    assert r["normal_high_or_critical_rate"] == pytest.approx(n_upper / r["normal_tasks"])
