"""The Kibana saved-objects import, against a local HTTP endpoint that checks each request the way Kibana's
API requires (multipart `file` field holding ndjson, `kbn-xsrf` header, `overwrite` and space in the path,
auth) and replays Kibana's documented response shapes, per-object errors included."""

from __future__ import annotations

import base64
import email.parser
import email.policy
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from deeplog_siem import cli
from deeplog_siem.config import KibanaConfig
from deeplog_siem.errors import ConfigError, KibanaError
from deeplog_siem.kibana import KibanaClient, install_saved_objects, saved_objects
from deeplog_siem.setup_assets import run_setup

from .conftest import real_cluster


class FakeKibana:
    """Saved objects per space, an import API that validates like Kibana, and scripted failures."""

    def __init__(self, space: str | None = None, auth: str | None = None) -> None:
        self.space = space
        self.auth = auth  # the exact Authorization header required, or None
        self.store: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.import_errors: list[dict[str, Any]] = []  # per-object errors to replay on the next import
        self.status: int | None = None  # a whole-request HTTP error to replay
        self.with_success_results = True  # Kibana 7.10 answers without successResults
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                # A Kibana without the Security app: no detection engine routes (setup skips its rules).
                self._send(404, {"statusCode": 404, "error": "Not Found", "message": "Not Found"})

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                url = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                fake.requests.append(
                    {"path": url.path, "query": parse_qs(url.query), "headers": dict(self.headers)}
                )
                prefix = f"/s/{fake.space}" if fake.space else ""
                if fake.auth is not None and self.headers.get("authorization") != fake.auth:
                    return self._send(
                        401, {"statusCode": 401, "error": "Unauthorized", "message": "Unauthorized"}
                    )
                if "kbn-xsrf" not in self.headers:
                    return self._send(400, {"statusCode": 400, "error": "Bad Request",
                                            "message": "Request must contain a kbn-xsrf header."})  # fmt: skip
                if not url.path.startswith(prefix + "/api/saved_objects/"):
                    return self._send(404, {"statusCode": 404, "error": "Not Found", "message": "Not Found"})
                if fake.status is not None:
                    return self._send(fake.status, {"statusCode": fake.status, "error": "Error",
                                                    "message": "scripted failure"})  # fmt: skip
                op = url.path[len(prefix) + len("/api/saved_objects/") :]
                if op == "_bulk_get":
                    wanted = json.loads(body)
                    out = []
                    for w in wanted:
                        key = (w["type"], w["id"])
                        if key in fake.store:
                            out.append(fake.store[key])
                        else:
                            out.append({"id": w["id"], "type": w["type"], "error": {"statusCode": 404,
                                        "error": "Not Found", "message": f"Saved object [{key[0]}/{key[1]}] not found"}})  # fmt: skip
                    return self._send(200, {"saved_objects": out})
                if op == "_import":
                    return self._import(url, body)
                return self._send(404, {"statusCode": 404, "error": "Not Found", "message": "Not Found"})

            def _import(self, url, body: bytes) -> None:
                ctype = self.headers.get("content-type", "")
                if not ctype.startswith("multipart/form-data"):
                    return self._send(415, {"statusCode": 415, "error": "Unsupported Media Type",
                                            "message": "Unsupported Media Type"})  # fmt: skip
                msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                    f"content-type: {ctype}\r\n\r\n".encode() + body
                )
                parts = {p.get_param("name", header="content-disposition"): p for p in msg.iter_parts()}
                if "file" not in parts:
                    return self._send(400, {"statusCode": 400, "error": "Bad Request",
                                            "message": '[request body.file]: expected value of type [Stream]'})  # fmt: skip
                filename = parts["file"].get_filename()
                if not filename.endswith(".ndjson"):
                    return self._send(400, {"statusCode": 400, "error": "Bad Request",
                                            "message": f"Invalid file extension {filename}"})  # fmt: skip
                objects = [
                    json.loads(line) for line in parts["file"].get_content().splitlines() if line.strip()
                ]
                overwrite = parse_qs(url.query).get("overwrite") == ["true"]
                errors = list(fake.import_errors)
                fake.import_errors = []
                failed = {(e["type"], e["id"]) for e in errors}
                results = []
                for o in objects:
                    key = (o["type"], o["id"])
                    if key in failed:
                        continue
                    if key in fake.store and not overwrite:
                        errors.append({"id": o["id"], "type": o["type"], "title": o["attributes"].get("title"),
                                       "meta": {"title": o["attributes"].get("title")}, "error": {"type": "conflict"}})  # fmt: skip
                        continue
                    result = {
                        "type": o["type"],
                        "id": o["id"],
                        "meta": {"title": o["attributes"].get("title")},
                    }
                    if key in fake.store:
                        result["overwrite"] = True
                    fake.store[key] = {"id": o["id"], "type": o["type"], "attributes": o["attributes"],
                                       "references": o.get("references", []), "version": "WzEsMV0="}  # fmt: skip
                    results.append(result)
                answer: dict[str, Any] = {"success": not errors, "successCount": len(results)}
                if fake.with_success_results:
                    answer["successResults"] = results
                if errors:
                    answer["errors"] = errors
                return self._send(200, answer)

        return Handler

    def imports(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].endswith("/_import")]


@pytest.fixture
def kibana() -> Iterator[FakeKibana]:
    k = FakeKibana(space="soc")
    k.thread.start()
    yield k
    k.server.shutdown()
    k.server.server_close()


def test_import_request_is_what_kibana_requires(kibana, make_config):
    cfg = make_config(kibana={"space": "soc", "api_key": "c2VjcmV0", "allow_insecure_http": True})
    kibana.auth = "ApiKey c2VjcmV0"
    steps = install_saved_objects(cfg, kibana.url)
    objects = saved_objects(cfg)
    assert [s.action for s in steps] == ["imported"] * len(objects)
    assert all("space soc" in s.detail for s in steps)
    (req,) = kibana.imports()
    assert req["path"] == "/s/soc/api/saved_objects/_import"
    assert req["query"] == {"overwrite": ["true"]}
    assert req["headers"]["kbn-xsrf"] and req["headers"]["osd-xsrf"]  # Kibana and OpenSearch Dashboards
    assert set(kibana.store) == {(o["type"], o["id"]) for o in objects}
    titles = {k[1]: v["attributes"]["title"] for k, v in kibana.store.items() if k[0] == "index-pattern"}
    assert titles["deeplog-anomalies"] == cfg.output.anomalies_index + "*"


def test_second_install_changes_nothing(kibana, make_config):
    cfg = make_config(kibana={"space": "soc"})
    install_saved_objects(cfg, kibana.url)
    steps = install_saved_objects(cfg, kibana.url)
    assert {s.action for s in steps} == {"unchanged"}
    assert len(kibana.imports()) == 1  # the second run only looked (_bulk_get)


def test_a_changed_object_is_reimported_and_dry_run_only_reports(kibana, make_config):
    cfg = make_config(kibana={"space": "soc"})
    install_saved_objects(cfg, kibana.url)
    key = ("visualization", "deeplog-vis-top-templates")
    kibana.store[key]["attributes"]["description"] = "edited by someone"
    del kibana.store[("dashboard", "deeplog-anomaly-investigation")]
    dry = {s.name: s.action for s in install_saved_objects(cfg, kibana.url, dry_run=True)}
    assert dry["visualization/deeplog-vis-top-templates"] == "would update"
    assert dry["dashboard/deeplog-anomaly-investigation"] == "would create"
    assert dry["index-pattern/deeplog-anomalies"] == "unchanged"
    assert len(kibana.imports()) == 1
    steps = install_saved_objects(cfg, kibana.url)
    assert {s.action for s in steps} == {"imported"} and len(kibana.imports()) == 2
    assert kibana.store[key]["attributes"]["description"].endswith(")")  # the marker is back


def test_per_object_errors_are_reported(kibana, make_config):
    cfg = make_config(kibana={"space": "soc"})
    kibana.import_errors = [
        {"id": "deeplog-anomaly-investigation", "type": "dashboard", "title": "DeepLog anomaly investigation",
         "meta": {"title": "DeepLog anomaly investigation", "icon": "dashboardApp"},
         "error": {"type": "missing_references", "references": [{"type": "visualization", "id": "nope"}]}},
        {"id": "deeplog-vis-job-runs", "type": "visualization", "title": "x", "error": {"type": "conflict"}},
        {"id": "deeplog-runs-search", "type": "search", "error": {"type": "unsupported_type"}},
        {"id": "deeplog-runs", "type": "index-pattern",
         "error": {"type": "unknown", "message": "mapper_parsing_exception", "statusCode": 400}},
    ]  # fmt: skip
    steps = install_saved_objects(cfg, kibana.url)
    failed = {s.name: s.detail for s in steps if s.action == "failed"}
    assert failed == {
        "dashboard/deeplog-anomaly-investigation": "missing_references: references objects that do not exist: "
        "visualization/nope",
        "visualization/deeplog-vis-job-runs": "conflict: an object with this id already exists (conflict; setup "
        "imports with overwrite=true)",
        "search/deeplog-runs-search": "unsupported_type: this Kibana does not know the object type",
        "index-pattern/deeplog-runs": "unknown: mapper_parsing_exception (HTTP 400)",
    }
    assert sum(s.action == "imported" for s in steps) == len(saved_objects(cfg)) - 4


def test_kibana_710_response_without_success_results(kibana, make_config):
    kibana.with_success_results = False
    steps = install_saved_objects(make_config(kibana={"space": "soc"}), kibana.url)
    assert {s.action for s in steps} == {"imported"}


@pytest.mark.parametrize(
    "status,match",
    [
        (401, r"refused the saved-objects lookup \(HTTP 401.*check kibana\.api_key"),
        (403, r"HTTP 403.*Saved Objects Management privilege"),
    ],
)
def test_refusals_name_the_url_and_the_fix(kibana, make_config, status, match):
    kibana.status = status
    with pytest.raises(KibanaError, match=match):
        install_saved_objects(make_config(kibana={"space": "soc"}), kibana.url)


def test_import_errors_when_bulk_get_is_unavailable_and_import_is_refused(kibana, make_config):
    kibana.status = 500
    with pytest.raises(KibanaError, match=r"refused the saved-objects import \(HTTP 500: scripted failure\)"):
        install_saved_objects(make_config(kibana={"space": "soc"}), kibana.url)


def test_wrong_space_and_missing_xsrf_are_explained(kibana):
    client = KibanaClient(kibana.url, KibanaConfig(space="other"))
    with pytest.raises(KibanaError, match=r"HTTP 404.*does the space 'other' exist"):
        client.import_objects(saved_objects())
    client = KibanaClient(kibana.url, KibanaConfig(space="soc"))
    del client.session.headers["kbn-xsrf"]
    with pytest.raises(KibanaError, match="must contain a kbn-xsrf header"):
        client.import_objects(saved_objects())


ES_CREDENTIALS = {"username": "elastic", "password": "pw", "allow_insecure_http": True}
ES_BASIC = "Basic " + base64.b64encode(b"elastic:pw").decode()


def _auth(request: dict[str, Any]) -> str | None:
    return next((v for k, v in request["headers"].items() if k.lower() == "authorization"), None)


def test_elasticsearch_credentials_are_not_sent_to_another_host(kibana, make_config, caplog):
    """The Kibana URL is another server than the cluster: it gets no elasticsearch credentials."""
    cfg = make_config(kibana={"space": "soc", "allow_insecure_http": True}, elasticsearch=ES_CREDENTIALS)
    with caplog.at_level(logging.WARNING, logger="deeplog_siem.kibana"):
        assert {s.action for s in install_saved_objects(cfg, kibana.url)} == {"imported"}
    assert kibana.requests and {_auth(r) for r in kibana.requests} == {None}
    assert "kibana.use_elasticsearch_credentials: true" in caplog.text


def test_elasticsearch_credentials_go_to_another_host_only_when_asked(kibana, make_config):
    cfg = make_config(
        kibana={"space": "soc", "use_elasticsearch_credentials": True, "allow_insecure_http": True},
        elasticsearch=ES_CREDENTIALS,
    )
    kibana.auth = ES_BASIC
    assert {s.action for s in install_saved_objects(cfg, kibana.url)} == {"imported"}
    assert {_auth(r) for r in kibana.requests} == {ES_BASIC}


def test_elasticsearch_credentials_go_to_the_same_server(kibana, make_config):
    """A Kibana URL with the scheme, host and port of an elasticsearch host reaches the same server."""
    es = {**ES_CREDENTIALS, "hosts": [kibana.url + "/"]}
    cfg = make_config(kibana={"space": "soc", "allow_insecure_http": True}, elasticsearch=es)
    kibana.auth = ES_BASIC
    assert {s.action for s in install_saved_objects(cfg, kibana.url)} == {"imported"}


def test_credentials_over_plain_http_are_refused_unless_allowed(kibana, make_config):
    cfg = make_config(
        kibana={"space": "soc", "use_elasticsearch_credentials": True}, elasticsearch=ES_CREDENTIALS
    )
    with pytest.raises(KibanaError, match=r"elasticsearch\.username/password would be sent unencrypted.*"
                       r"kibana\.allow_insecure_http: true"):  # fmt: skip
        install_saved_objects(cfg, kibana.url)
    assert kibana.requests == []  # refused before anything was sent
    with pytest.raises(ConfigError, match=r"^kibana\.url: kibana\.api_key would be sent unencrypted"):
        make_config(kibana={"url": kibana.url, "api_key": "c2VjcmV0"})
    with pytest.raises(
        KibanaError, match="the Kibana URL's user name and password would be sent unencrypted"
    ):
        install_saved_objects(make_config(kibana={"space": "soc"}), kibana.url.replace("://", "://u:p@"))
    assert kibana.requests == []


def test_setup_kibana_url_gets_no_elasticsearch_credentials(
    clients, kibana, make_config, prefix, tmp_path, es_url
):
    """`setup --kibana-url` pointing at another host: the listener records no Authorization header."""
    if real_cluster():
        pytest.skip("the embedded server accepts any credentials; a real cluster would refuse these")
    cfg = make_config()
    path = tmp_path / "c.yml"
    path.write_text(json.dumps({
        "elasticsearch": {"hosts": [es_url], **ES_CREDENTIALS},
        "source": {"index": cfg.source.index, "session_regex": cfg.source.session_regex},
        "output": dict(vars(cfg.output)), "kibana": {"space": "soc", "allow_insecure_http": True}}))  # fmt: skip
    try:
        assert cli.main(["setup", "--config", str(path), "--kibana-url", kibana.url]) == 0
    finally:
        es = clients.es.options(ignore_status=404)
        for kind in ("anomalies", "runs", "workflows", "state"):
            es.perform_request(
                "DELETE", f"/_index_template/{prefix}-{kind}",
                headers={"accept": "application/json"},
            )  # fmt: skip
    assert kibana.imports() and {_auth(r) for r in kibana.requests} == {None}


def test_unreachable_kibana():
    client = KibanaClient("http://127.0.0.1:9", KibanaConfig(request_timeout=2))
    with pytest.raises(KibanaError, match=r"cannot connect to Kibana at http://127\.0\.0\.1:9"):
        client.import_objects(saved_objects())


def test_setup_reports_saved_object_errors_and_exits_nonzero(
    clients, kibana, make_config, prefix, tmp_path, capsys
):
    cfg = make_config(kibana={"space": "soc"})
    try:
        report = run_setup(clients, cfg, kibana_url=kibana.url)
        assert not report.failed and sum(s.action == "imported" for s in report.steps) == len(
            saved_objects(cfg)
        )
        kibana.store.clear()
        kibana.import_errors = [{"id": "deeplog-vis-anomalies-by-host", "type": "visualization",
                                 "error": {"type": "missing_references",
                                           "references": [{"type": "index-pattern", "id": "deeplog-anomalies"}]}}]  # fmt: skip
        path = tmp_path / "c.yml"
        path.write_text(json.dumps({
            "elasticsearch": {"hosts": list(cfg.elasticsearch.hosts)},
            "source": {"index": cfg.source.index, "session_regex": cfg.source.session_regex},
            "output": dict(vars(cfg.output)), "kibana": {"space": "soc"}}))  # fmt: skip
        assert cli.main(["setup", "--config", str(path), "--kibana-url", kibana.url]) == 1
        out = capsys.readouterr().out
        assert "failed  saved object visualization/deeplog-vis-anomalies-by-host: missing_references" in out
        assert "setup: 1 step(s) FAILED" in out
    finally:
        es = clients.es.options(ignore_status=404)
        for kind in ("anomalies", "runs", "workflows", "state"):
            es.perform_request(
                "DELETE", f"/_index_template/{prefix}-{kind}", headers={"accept": "application/json"}
            )


def test_kibana_installer_does_not_depend_on_the_cluster_installer():
    """setup_assets runs the Kibana step; kibana must not import setup_assets back (an import cycle)."""
    probe = "import json, sys, deeplog_siem.kibana; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out)
    assert "deeplog_siem.kibana" in loaded and "deeplog_siem.setup_assets" not in loaded
