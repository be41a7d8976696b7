"""`deeplog-siem preview` on a real sample indexed in the embedded server, and `templater.format: auto` from
training (where the choice is made and recorded) to detection (where it is read back)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from deeplog_lab.shared_data import shared_data_dir
from deeplog_siem import sink
from deeplog_siem.artifacts import TEMPLATER, ModelStore
from deeplog_siem.cli import main
from deeplog_siem.config import load_config
from deeplog_siem.logfile import LogFile
from deeplog_siem.runner import Detection, train
from deeplog_siem.templater import STATE_FILE

from .conftest import config_data

SAMPLE = shared_data_dir() / "loghub_2k" / "OpenSSH_2k.log"
SMALL_MODEL = {"epochs": 2, "hidden": 16, "embedding": 8, "layers": 1, "device": "cpu", "window": 5}


pytestmark = pytest.mark.skipif(not SAMPLE.is_file(), reason="needs the loghub samples in ../shared/data")


def _setup(es_section: dict, clients, prefix: str, tmp_path: Path, **sections: dict) -> Path:
    index = f"{prefix}-ssh"
    sink.write(clients, LogFile(SAMPLE).documents(index=index), op="create", refresh=True)
    data = config_data(
        es_section,
        prefix,
        tmp_path / "models",
        source={"index": index, "session_regex": r"sshd\[(\d+)\]", "query_delay_seconds": 0},
        **{"templater": {"format": "auto"}, **sections},
    )
    path = tmp_path / "deeplog.yml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_preview_reports_format_templates_sessions_and_suggestions_and_writes_nothing(
    es_section, clients, prefix, tmp_path, capsys
):
    cfg_file = _setup(es_section, clients, prefix, tmp_path)
    before = set(clients.es.indices.get(index=f"{prefix}*"))
    assert main(["preview", "-c", str(cfg_file), "--size", "500", "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["docs"] == 500
    assert (r["format"], r["configured_format"], r["header_share"]) == ("syslog", "auto", 1.0)
    assert sum(t["count"] for t in r["templates"]) == 500 and r["num_templates"] == len(r["templates"])
    counts = [t["count"] for t in r["templates"]]
    assert counts == sorted(counts, reverse=True)
    assert any(t["template"].startswith("Failed password for") for t in r["templates"])
    # Every OpenSSH line names its sshd process: all documents are in a session.
    assert r["no_session_share"] == 0.0 and r["sessions"] > 10
    assert 1 <= r["session_lengths"]["min"] <= r["session_lengths"]["median"] <= r["session_lengths"]["max"]
    assert any(s["setting"] == "templater.format: syslog" for s in r["suggestions"])
    # Read-only: no index created, no model written.
    assert set(clients.es.indices.get(index=f"{prefix}*")) == before
    assert not (tmp_path / "models").exists()

    assert main(["preview", "-c", str(cfg_file), "--size", "300"]) == 0
    text = capsys.readouterr().out
    assert "format: syslog (auto), header matched 100.0% of the messages" in text
    assert "documents with no session: 0.0%" in text


def test_preview_suggests_a_session_setting_when_most_documents_have_none(
    es_section, clients, prefix, tmp_path, capsys
):
    cfg_file = _setup(es_section, clients, prefix, tmp_path)
    data = yaml.safe_load(cfg_file.read_text(encoding="utf-8"))
    data["source"]["session_regex"] = r"session (\d+) of"
    data["templater"]["format"] = "log4j"
    cfg_file.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert main(["preview", "-c", str(cfg_file), "--size", "200", "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["no_session_share"] == 1.0 and r["sessions"] == 0
    settings = [s["setting"] for s in r["suggestions"]]
    assert "source.session_regex / source.session_field" in settings
    assert "templater.format: auto" in settings  # the log4j header matches none of these lines
    assert main(["preview", "-c", str(cfg_file), "--size", "0"]) == 2


def test_auto_is_chosen_when_training_recorded_in_the_model_and_used_by_detection(
    es_section, clients, prefix, tmp_path, capsys
):
    cfg_file = _setup(es_section, clients, prefix, tmp_path, model=SMALL_MODEL, params={"enabled": False})
    cfg = load_config(cfg_file)
    t = train(cfg, clients)
    assert t.format == "syslog" and t.templates > 5
    _, path = ModelStore(cfg.model.dir).current()
    saved = json.loads((path / TEMPLATER / STATE_FILE).read_text(encoding="utf-8"))
    assert saved["state"]["settings"]["format"] == "syslog"
    # The configuration still says auto: detection uses what training chose, not a new guess.
    det = Detection.load(cfg)
    assert det.templater.settings.format == "syslog"
    ev = det.templater.parse("Dec 10 09:12:37 LabSZ sshd[24494]: Failed password for root from 1.2.3.4 port 22 ssh2",
                             learn=False)  # fmt: skip
    assert ev is not None and ev.template.startswith("Failed password for")
    assert main(["train", "-c", str(cfg_file)]) == 0
    assert "templates (format syslog)" in capsys.readouterr().out
