"""Configuration: the shipped example is valid, and every broken file fails with its dotted key."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deeplog_siem.config import example_config_text, load_config, parse_config
from deeplog_siem.errors import ConfigError

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "config").glob("*.yml"))


def _expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: REGEX'"
    return first[len("# expect: ") :]


def test_example_config_is_valid(tmp_path, monkeypatch):
    monkeypatch.delenv("DEEPLOG_ES_URL", raising=False)
    p = tmp_path / "c.yml"
    p.write_text(example_config_text())
    cfg = load_config(p)
    assert cfg.elasticsearch.hosts == ("http://localhost:9200",)
    assert (cfg.model.window, cfg.model.top_g, cfg.model.layers, cfg.model.hidden) == (10, 9, 2, 64)


def test_env_expansion_for_secrets(monkeypatch):
    monkeypatch.setenv("DEEPLOG_TEST_SECRET", "s3cr3t")
    cfg = parse_config(
        {
            "elasticsearch": {
                "hosts": ["https://es:9200"],
                "username": "u",
                "password": "${DEEPLOG_TEST_SECRET}",
            },
            "source": {"index": "logs", "session_field": "block"},
        }
    )
    assert cfg.elasticsearch.password == "s3cr3t"
    with pytest.raises(dataclasses.FrozenInstanceError):  # runtime state never lives in config
        cfg.model.window = 3  # type: ignore[misc]


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_broken_config_names_the_key(path, monkeypatch):
    monkeypatch.delenv("DEEPLOG_TEST_UNSET_SECRET", raising=False)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert re.search(_expected(path), str(err.value)), str(err.value)


def test_config_check_cli(tmp_path):
    broken = Path(__file__).parent / "fixtures" / "config" / "bad_window.yml"
    r = subprocess.run(
        [sys.executable, "-m", "deeplog_siem.cli", "config", "check", str(broken)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "model.window: must be >= 1, got 0" in r.stderr
    assert "Traceback" not in r.stderr
    good = tmp_path / "ok.yml"
    good.write_text(example_config_text())
    r = subprocess.run(
        [sys.executable, "-m", "deeplog_siem.cli", "config", "check", str(good)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout


@pytest.mark.parametrize(
    "section,credentials,sent",
    [
        ("elasticsearch", {"username": "u", "password": "p"}, "elasticsearch.username/password"),
        ("elasticsearch", {"api_key": "k"}, "elasticsearch.api_key"),
        ("elasticsearch", {"hosts": ["http://u:p@es:9200"]}, "the URL's user name and password"),
        ("kibana", {"url": "http://kb:5601", "username": "u", "password": "p"}, "kibana.username/password"),
        ("kibana", {"url": "http://kb:5601", "api_key": "k"}, "kibana.api_key"),
        ("kibana", {"url": "http://u:p@kb:5601"}, "the URL's user name and password"),
    ],
)
def test_credentials_over_plain_http_are_refused_unless_allowed(section, credentials, sent):
    key = "elasticsearch.hosts[0]" if section == "elasticsearch" else "kibana.url"
    base = {"elasticsearch": {"hosts": ["http://es:9200"]}, "source": {"index": "logs", "session_field": "b"}}
    data = {**base, section: {**base.get(section, {}), **credentials}}
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    message = str(err.value)
    assert message.startswith(f"{key}: {sent} would be sent unencrypted"), message
    assert f"{section}.allow_insecure_http: true" in message and "https://" in message
    allowed = {**data, section: {**data[section], "allow_insecure_http": True}}
    assert getattr(parse_config(allowed), section).allow_insecure_http is True
    secure = {k: v for k, v in credentials.items() if k not in ("hosts", "url")}
    url = {"elasticsearch": {"hosts": ["https://es:9200"]}, "kibana": {"url": "https://kb:5601"}}[section]
    assert parse_config({**base, section: {**base.get(section, {}), **url, **secure}})
