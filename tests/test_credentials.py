"""Credentials in a URL never reach a log line, an error message or command output.

Every path that prints a cluster or Kibana URL is driven with a URL that carries a user name, a password
and a query-string secret; what it prints must name the host and hide the rest.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from deeplog_siem import cli
from deeplog_siem.config import ElasticsearchConfig, KibanaConfig, parse_config
from deeplog_siem.errors import ConfigError, ConnectionFailed, KibanaError
from deeplog_siem.es import connect
from deeplog_siem.kibana import KibanaClient, saved_objects
from deeplog_siem.urls import has_userinfo, origin, redact, redact_text

from .conftest import closed_port, real_cluster

SECRETS = ("siem-user", "s3cret-pw", "t0ken-value")


def _with_credentials(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://siem-user:s3cret-pw@{rest.rstrip('/')}/?access_token=t0ken-value"


def _assert_hidden(text: str, host: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} printed in: {text}"
    assert f"***@{host}" in text, text


def test_redact_hides_user_information_and_query_values():
    assert redact("https://user:pass@host:9200") == "https://***@host:9200"
    assert redact("https://h:9200/p?api_key=k&x=1#frag") == "https://h:9200/p?api_key=***&x=***#***"
    # A raw '/' or '?' in a password must not move the boundary and show the rest of it.
    assert redact("https://u:pa/ss@h:1/x") == "https://***@h:1/x"
    assert redact("https://u:p?ss@h:1/x?y=a@b") == "https://***@h:1/x?y=***"
    assert redact("http://h:9200") == "http://h:9200" and redact("not a url") == "not a url"
    text = "cannot reach https://a:b@h1:9200, nor (http://c:d@h2/?t=1)."
    assert redact_text(text) == "cannot reach https://***@h1:9200, nor (http://***@h2/?t=***)."
    assert redact_text("with url: /x?token=abc (Caused by") == "with url: /x?token=*** (Caused by"
    assert has_userinfo("https://u:pa/ss@h:1") and not has_userinfo("https://h:1/a")
    assert origin("HTTPS://u:p@Host/x") == ("https", "host", 443) == origin("https://host:443")


def test_connected_log_line_hides_the_credentials(es_url, caplog):
    if real_cluster():
        pytest.skip("the embedded server accepts any credentials; a real cluster would refuse these")
    url = _with_credentials(es_url)
    with caplog.at_level(logging.INFO, logger="deeplog_siem.es"):
        clients = connect(ElasticsearchConfig(hosts=(url,), request_timeout=10, max_retries=0))
    clients.close()
    lines = [r.getMessage() for r in caplog.records if "connected to" in r.getMessage()]
    assert len(lines) == 1
    _assert_hidden(lines[0], es_url.partition("://")[2].rstrip("/"))


def test_connection_error_hides_the_credentials():
    url = _with_credentials(f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(ConnectionFailed) as err:
        connect(ElasticsearchConfig(hosts=(url,), request_timeout=2, max_retries=0))
    assert "cannot connect to" in str(err.value)
    _assert_hidden(str(err.value), "127.0.0.1")


def test_cli_connection_error_hides_the_credentials(tmp_path):
    url = _with_credentials(f"http://127.0.0.1:{closed_port()}")
    cfg = tmp_path / "c.yml"
    cfg.write_text(
        f"elasticsearch: {{hosts: ['{url}'], request_timeout: 2, max_retries: 0, allow_insecure_http: true}}\n"
        "source: {index: logs, session_regex: '(blk_-?\\d+)'}\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "deeplog_siem.cli", "detect", "--once", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    _assert_hidden(r.stdout + r.stderr, "127.0.0.1")


@pytest.mark.parametrize(
    "section,value,key",
    [
        (
            "elasticsearch",
            {"hosts": ["ftp://siem-user:s3cret-pw@es01:9200/?access_token=t0ken-value"]},
            "hosts[0]",
        ),
        (
            "elasticsearch",
            {"hosts": ["http://siem-user:s3cret-pw@es01:9200/?access_token=t0ken-value"]},
            "hosts[0]",
        ),
        ("kibana", {"url": "ftp://siem-user:s3cret-pw@es01:5601/?access_token=t0ken-value"}, "url"),
        ("kibana", {"url": "http://siem-user:s3cret-pw@es01:5601/?access_token=t0ken-value"}, "url"),
    ],
)
def test_config_check_hides_the_credentials(tmp_path, capsys, section, value, key):
    import yaml

    data = {
        "elasticsearch": {"hosts": ["https://es01:9200"]},
        "source": {"index": "logs", "session_field": "b"},
    }
    data[section] = value
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump(data))
    assert cli.main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{section}.{key}:" in err
    _assert_hidden(err, "es01")


def test_config_check_ok_line_names_no_url(tmp_path, capsys):
    path = tmp_path / "c.yml"
    path.write_text(
        "elasticsearch: {hosts: ['https://siem-user:s3cret-pw@es01:9200/?access_token=t0ken-value']}\n"
        "source: {index: logs, session_field: b}\n"
    )
    assert cli.main(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and not any(s in out for s in SECRETS)


def test_kibana_errors_hide_the_credentials():
    url = _with_credentials(f"https://127.0.0.1:{closed_port()}")
    client = KibanaClient(url, KibanaConfig(request_timeout=2))
    assert client.where == f"https://***@{url.split('@')[1].split('/')[0]}/?access_token=***"
    with pytest.raises(KibanaError) as err:
        client.import_objects(saved_objects())
    _assert_hidden(str(err.value), "127.0.0.1")


def test_plain_http_credentials_error_hides_them():
    with pytest.raises(ConfigError) as err:
        parse_config(
            {
                "elasticsearch": {
                    "hosts": ["http://siem-user:s3cret-pw@es01:9200/?access_token=t0ken-value"]
                },
                "source": {"index": "logs", "session_field": "b"},
            }
        )
    assert "elasticsearch.allow_insecure_http: true" in str(err.value)
    _assert_hidden(str(err.value), "es01")
