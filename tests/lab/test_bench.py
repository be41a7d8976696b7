"""The pipeline benchmark runs end to end at a small size and reports the figures its targets are stated in (no timing
assertion: the figures themselves live in BENCHMARKS.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ..conftest import real_cluster


def test_bench_pipeline_reports_every_figure_at_a_small_size():
    if real_cluster():
        pytest.skip("the benchmark starts its own embedded server")
    out = subprocess.run(
        [sys.executable, "-m", "deeplog_siem.cli", "bench", "pipeline", "--json", "--docs", "2000",
         "--rss-sizes", "1000,2000", "--train-sessions", "60", "--epochs", "1", "--repeat", "2"],
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["docs_read"] == 2000
    for k in ("job_docs_per_s", "read_docs_per_s", "own_read_docs_per_s", "peak_rss_mb_1k", "peak_rss_mb_2k",
              "read_docs_per_s_2k", "own_read_docs_per_s_2k"):  # fmt: skip
        assert r[k] > 0, k
    assert r["ratio"] == pytest.approx(r["job_docs_per_s"] / r["read_docs_per_s"], rel=0.01)
    assert r["ratio_own_read"] == pytest.approx(r["job_docs_per_s"] / r["own_read_docs_per_s"], rel=0.01)
    assert r["ratio_2k"] == pytest.approx(r["job_docs_per_s_2k"] / r["read_docs_per_s_2k"], rel=0.01)
    assert r["ratio_own_read_2k"] == pytest.approx(
        r["job_docs_per_s_2k"] / r["own_read_docs_per_s_2k"], rel=0.01
    )
    assert len(r["read_seconds"]) == len(r["own_read_seconds"]) == len(r["job_seconds"]) == 2
    assert min(r["ratio_median"], r["ratio"], r["ratio_own_read_median"]) > 0
    assert set(r["cpu_seconds"]) == {"read", "own_read", "job"}
    assert {"read", "template", "detect", "write"} <= set(r["job_stage_ms"])


def test_bench_anomalydocs_reports_each_mapping():
    if real_cluster():
        pytest.skip("the benchmark starts its own embedded server")
    out = subprocess.run(
        [sys.executable, "-m", "deeplog_siem.cli", "bench", "anomalydocs", "--json", "--docs", "40", "--repeat", "1",
         "--bulk", "10"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    r = json.loads(out.stdout.strip().splitlines()[-1])
    for name in ("shipped", "previous", "earlier"):
        assert r[f"server_ms_per_doc_{name}"] >= 0, name
    assert (r["docs"], r["bulk"]) == (40, 10)


def test_the_replayed_mix_keeps_the_asked_share_of_abnormal_sessions():
    from deeplog_lab.bench.pipeline import mix
    from deeplog_lab.replay import load_sample

    s = load_sample()
    assert mix(s.test, s.test_labels, None) == s.test
    kept = mix(s.test, s.test_labels, 0.03)
    bad = {tuple(q) for q, b in zip(s.test, s.test_labels, strict=True) if b}
    n_bad = sum(1 for q in kept if tuple(q) in bad)
    assert sum(1 for b in s.test_labels if not b) == len(kept) - n_bad  # every normal session stays
    assert abs(n_bad / len(kept) - 0.03) < 0.002


def test_bench_parsing_reports_grouping_accuracy_per_system_beside_drain3():
    from deeplog_lab.shared_data import shared_data_dir

    if not (shared_data_dir() / "loghub_2k" / "OpenSSH_2k.log").is_file():
        pytest.skip("needs the loghub samples in ../shared/data")
    out = subprocess.run(
        [sys.executable, "-m", "deeplog_siem.cli", "bench", "parsing", "--json", "--systems", "OpenSSH,HDFS"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(r["systems"]) == {"OpenSSH", "HDFS"}
    for k in ("mean_ga_raw", "mean_ga_content", "min_ga_raw", "min_ga_content", "drain3_mean_ga"):
        assert 0.0 <= r[k] <= 1.0, k
    assert r["systems"]["HDFS"]["ga_raw"] == 1.0
    assert r["systems"]["HDFS"]["format"] == "hdfs" and r["systems"]["OpenSSH"]["format"] == "syslog"
    assert r["min_ga_raw"] == min(v["ga_raw"] for v in r["systems"].values())
    assert r["mean_ga_content"] == pytest.approx(
        sum(v["ga_content"] for v in r["systems"].values()) / 2, abs=1e-4
    )
    assert r["lines_per_s"] > 0


def test_bench_scale_reports_each_pool_with_nothing_missing_or_repeated():
    if real_cluster():
        pytest.skip("the benchmark starts its own embedded server")
    out = subprocess.run(
        [sys.executable, "-m", "deeplog_siem.cli", "bench", "scale", "--json", "--docs", "1500",
         "--workers", "1,2", "--partitions", "4", "--chunk-size", "100", "--train-sessions", "60"],
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert [x["workers"] for x in r["runs"]] == [1, 2]
    for x in r["runs"]:
        assert x["docs_per_s"] > 0 and x["lease_requests"] >= 4
        assert x["docs_missing"] == x["docs_repeated"] == 0
        assert x["anomalies"] == x["anomalies_as_one_worker"]
    assert [x["killed_one"] for x in r["runs"]] == [False, True]
    assert (
        r["read_docs_per_s"] > 0 and r["partitioned_read_docs_per_s"] > 0 and r["one_process_docs_per_s"] > 0
    )
