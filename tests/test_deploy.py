"""The deployment files in plugin/deploy: the systemd unit, the Containerfile and the StatefulSet name real
commands and flags of the CLI and the endpoint's default port and path; none of them ships in the wheel."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from setuptools import find_packages

from deeplog_siem.config import HealthConfig, parse_listen

from .conftest import REPO

DEPLOY = REPO / "plugin" / "deploy"
UNIT = DEPLOY / "deeplog-siem@.service"
CONTAINERFILE = DEPLOY / "Containerfile"
STATEFULSET = DEPLOY / "statefulset.yaml"
CLI = Path(sys.executable).with_name("deeplog-siem")
_, DEFAULT_PORT = parse_listen(HealthConfig().listen, "health.listen") or ("", 0)
DOCKERFILE_INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


def cli_flags(command: str) -> set[str]:
    """The options `deeplog-siem COMMAND --help` lists."""
    done = subprocess.run([str(CLI), command, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", done.stdout))


def check_command_line(argv: list[str]) -> None:
    """`argv` (after the program) is a real command of the CLI with options it has, each given a value."""
    command, *rest = argv
    flags = cli_flags(command)
    for word in rest:
        if word.startswith("-"):
            assert word in flags, f"deeplog-siem {command} has no option {word}"
    assert "--config" in rest or "-c" in rest


def unit() -> configparser.ConfigParser:
    # systemd repeats keys (Environment=): later values do not replace earlier ones there, but parsing
    # strictly here would refuse the file.
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    return parser


def test_the_systemd_unit_runs_the_daemon_supervised_and_hardened():
    u = unit()
    assert {"Unit", "Service", "Install"} <= set(u.sections())
    s = u["Service"]
    assert s["Restart"] == "on-failure"
    assert s["KillSignal"] == "SIGTERM"
    assert int(s["TimeoutStopSec"]) >= 120, "long enough for a detection run to finish its chunk"
    assert s["User"] and s["User"] != "root"
    assert s["NoNewPrivileges"] == "yes" and s["PrivateTmp"] == "yes"
    assert s["ProtectSystem"] == "strict"
    assert s["ReadWritePaths"] == "/var/lib/deeplog-siem" == s["WorkingDirectory"]
    assert "MemoryDenyWriteExecute" not in s, "torch generates code at run time"
    argv = shlex.split(s["ExecStart"])
    assert Path(argv[0]).name == "deeplog-siem"
    assert argv[1:4] == ["run", "--config", "/etc/deeplog-siem/%i.yml"]
    check_command_line(argv[1:])
    # The listen address comes from the environment, by default the endpoint's default port.
    listen = argv[argv.index("--listen") + 1]
    assert listen == "${DEEPLOG_LISTEN}"
    text = UNIT.read_text(encoding="utf-8")
    assert f"Environment=DEEPLOG_LISTEN=127.0.0.1:{DEFAULT_PORT}" in text
    assert "Environment=DEEPLOG_WORKER_ID=%i" in text
    assert u["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_analyze_verifies_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here")
    # An instance of the template, starting the CLI of this environment (verify checks it is executable).
    instance = tmp_path / "deeplog-siem@worker1.service"
    instance.write_text(UNIT.read_text(encoding="utf-8").replace("/usr/local/bin/deeplog-siem", str(CLI)))
    done = subprocess.run([analyze, "verify", str(instance)], capture_output=True, text=True, timeout=120)
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith(str(instance))]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr


def instructions() -> list[tuple[str, str]]:
    """The Containerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in CONTAINERFILE.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word, rest.strip()))
        pending = ""
    assert not pending, "the Containerfile ends inside a continued line"
    return out


def test_the_containerfile_builds_a_non_root_image_of_the_cli():
    ins = instructions()
    assert all(word in DOCKERFILE_INSTRUCTIONS for word, _ in ins), [w for w, _ in ins]
    assert ins[0] == ("FROM", "python:3.11-slim")
    runs = " ".join(arg for word, arg in ins if word == "RUN")
    assert "torch==2.13.0" in runs and "--index-url https://download.pytorch.org/whl/cpu" in runs
    users = [arg for word, arg in ins if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert [arg for word, arg in ins if word == "EXPOSE"] == [str(DEFAULT_PORT)]
    (health,) = [arg for word, arg in ins if word == "HEALTHCHECK"]
    assert f"127.0.0.1:{DEFAULT_PORT}/healthz" in health
    (entrypoint,) = [json.loads(arg) for word, arg in ins if word == "ENTRYPOINT"]
    (cmd,) = [json.loads(arg) for word, arg in ins if word == "CMD"]
    assert entrypoint == ["deeplog-siem"]
    assert cmd[0] == "run"
    check_command_line(cmd)
    assert cmd[cmd.index("--listen") + 1] == f"0.0.0.0:{DEFAULT_PORT}"
    # Everything it copies exists in the repository, whose root is the build context, and every link in
    # it (the package's assets link to folders at the top) points into what is copied too.
    copied = [REPO / src for word, arg in ins if word == "COPY" for src in arg.split()[:-1]]
    assert all(p.exists() for p in copied), copied
    for top in copied:
        for link in (p for p in top.rglob("*") if p.is_symlink()):
            target = link.resolve()
            assert any(target.is_relative_to(c.resolve()) for c in copied), (
                f"{link} -> {target} is not copied"
            )


def test_hadolint_passes_the_containerfile():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed here")
    done = subprocess.run([hadolint, str(CONTAINERFILE)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_statefulset_probes_the_endpoint_and_names_each_worker_by_its_pod():
    docs = [d for d in yaml.safe_load_all(STATEFULSET.read_text(encoding="utf-8")) if d]
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    assert sts["apiVersion"] == "apps/v1" and sts["spec"]["replicas"] >= 1
    pod = sts["spec"]["template"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(DEFAULT_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"
    (container,) = pod["spec"]["containers"]
    check_command_line(container["args"])
    assert container["args"][container["args"].index("--listen") + 1] == f"0.0.0.0:{DEFAULT_PORT}"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": DEFAULT_PORT}, probe
    env = {e["name"]: e for e in container["env"]}
    assert env["DEEPLOG_WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 120
    # Feedback and retraining publish into model.dir on whichever worker runs them: every pod must mount the
    # same volume there, not one of its own.
    (models,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/var/lib/deeplog-siem"]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == models["name"]]
    claim = volume["persistentVolumeClaim"]["claimName"]
    (pvc,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == claim]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    assert not sts["spec"].get("volumeClaimTemplates")


def test_the_deployment_files_are_not_packaged():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg", encoding="utf-8")
    find = cfg["options.packages.find"]
    include = find["include"].split()
    packages = find_packages(where=str(REPO / find["where"]), include=include)
    assert packages and not [p for p in packages if "deploy" in p]
    assert not (DEPLOY / "__init__.py").exists()
