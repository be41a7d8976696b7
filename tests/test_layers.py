"""Layers: the runtime (deeplog_siem) never imports the lab (deeplog_lab), and cheap commands stay cheap.

The import contract lives in setup.cfg ([importlinter]) and runs in `make lint`; these tests run it over
the real tree, show on a copy that a forbidden import breaks it, and check in fresh interpreters which
modules `config check` and `--help` load and what a lab command says when the lab is not installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deeplog_siem.config import example_config_text

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    exe = str(exe) if exe.is_file() else shutil.which("lint-imports")
    assert exe, "lint-imports not found: install the dev extra (pip install -e '.[dev]')"
    env = {**os.environ, "PYTHONPATH": str(root / "plugin")}
    return subprocess.run(
        [exe, "--no-cache", "--no-logo", str(root / "setup.cfg")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_contract_holds():
    r = _lint_imports(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 kept, 0 broken" in r.stdout


def test_import_contract_breaks_on_a_runtime_import_of_the_lab(tmp_path):
    shutil.copytree(ROOT / "plugin", tmp_path / "plugin", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.cfg", tmp_path / "setup.cfg")
    errors = tmp_path / "plugin" / "deeplog_siem" / "errors.py"
    errors.write_text(errors.read_text() + "\nimport deeplog_lab.replay  # noqa: E402,F401\n")
    r = _lint_imports(tmp_path)
    assert r.returncode != 0, r.stdout
    assert "BROKEN" in r.stdout and "deeplog_siem.errors -> deeplog_lab.replay" in r.stdout, r.stdout


def _fresh(code: str, *args: str) -> tuple[dict, str]:
    """Run `code` in a fresh interpreter: the JSON object it prints last, and its stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "plugin")}
    r = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


# The CLI's main in a fresh interpreter, then the torch and lab modules it loaded.
_LOADED = """
import json, sys
from deeplog_siem.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as e:
    rc = e.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "deeplog_lab"))
print(json.dumps({"rc": rc, "heavy": heavy}))
"""


def test_config_check_loads_neither_torch_nor_the_lab(tmp_path):
    cfg = tmp_path / "c.yml"
    cfg.write_text(example_config_text())
    assert _fresh(_LOADED, "config", "check", str(cfg))[0] == {"rc": 0, "heavy": []}


def test_help_loads_neither_torch_nor_the_lab():
    assert _fresh(_LOADED, "--help")[0] == {"rc": 0, "heavy": []}


def test_a_lab_command_loads_the_lab():
    # The counterpart of the two tests above: the same probe does see the lab when a lab command is built.
    out, _ = _fresh(_LOADED, "generate", "--help")
    assert out["rc"] == 0 and "deeplog_lab.commands" in out["heavy"]


# As above, with the lab made unimportable the way a runtime-only install would have it.
_WITHOUT_LAB = """
import json, sys
sys.modules["deeplog_lab"] = None
from deeplog_siem.cli import build_parser, main
rc = main(sys.argv[1:])
names = sorted(next(a for a in build_parser()._actions if a.dest == "command").choices)
print(json.dumps({"rc": rc, "commands": names}))
"""


@pytest.mark.parametrize(
    "argv",
    [["evaluate", "--limit", "3"], ["bench", "keymodel", "--json"], ["workflow", "hdfs", "--anomalies", "1"]],
    ids=["evaluate", "bench", "workflow-hdfs"],
)
def test_lab_command_without_the_lab_is_a_clear_error(argv):
    out, err = _fresh(_WITHOUT_LAB, *argv)
    assert out["rc"] == 2
    command = " ".join(argv[:2] if argv[0] == "workflow" else argv[:1])
    assert f"error: `deeplog-siem {command}` is a lab command" in err
    assert "the deeplog_lab package is not installed" in err
    assert {"evaluate", "bench", "demo", "config", "workflow"} <= set(out["commands"])


def test_full_and_lazy_parsers_agree_on_every_command():
    from deeplog_siem.cli import build_parser
    from deeplog_siem.commands import COMMANDS

    full = next(a for a in build_parser()._actions if a.dest == "command")
    lazy = next(a for a in build_parser([])._actions if a.dest == "command")
    assert list(lazy.choices) == [c.name for c in COMMANDS]
    assert set(full.choices) == set(lazy.choices)
    helps = {a.dest: a.help for a in full._choices_actions}
    assert helps == {a.dest: a.help for a in lazy._choices_actions}


def test_the_full_parser_builds_every_command_of_the_table():
    # A table entry whose module does not register it would parse as a bare placeholder (no handler).
    from deeplog_siem.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    placeholders = [name for name, p in sub.choices.items() if p.get_default("placeholder")]
    assert placeholders == []
    assert all(p.get_default("func") or p._subparsers for p in sub.choices.values())


def test_help_lists_commands_in_the_table_order_whatever_argv_names(capsys):
    from deeplog_siem.cli import main
    from deeplog_siem.commands import COMMANDS

    orders = []
    for argv in (["--help"], ["-h", "train"], ["--help", "config"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        at = {c.name: re.search(rf"^    {re.escape(c.name)}(\s|$)", out, re.M).start() for c in COMMANDS}
        orders.append(sorted(at, key=at.__getitem__))
    assert orders[0] == orders[1] == orders[2]


def test_no_top_level_or_group_option_takes_a_value():
    # The lazy parser reads argv's command words as the words that do not start with "-": true only while
    # no option above a command's own parser takes a value.
    from deeplog_siem.cli import build_parser

    parser = build_parser()
    groups = [parser]
    for p in next(a for a in parser._actions if a.dest == "command").choices.values():
        groups += [p] if p._subparsers else []
    for g in groups:
        for a in g._actions:
            assert not a.option_strings or a.nargs == 0, (g.prog, a.option_strings)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["train", "-c", "config"], ("train", "config")),
        (["--debug", "config", "check", "F"], ("config", "check", "F")),
        (["detect", "--config=config", "--once"], ("detect",)),
        (["workflow", "list", "-c", "hdfs"], ("workflow", "list", "hdfs")),
    ],
)
def test_argv_names_its_command_first(argv, words):
    from deeplog_siem.commands import Wanted

    wanted = Wanted.from_argv(argv)
    assert wanted.words == words
    assert wanted.wants(words[0]) and not wanted.wants("setup")
