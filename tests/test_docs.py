"""Docs for every setting and command: the README names each configuration key and each CLI command."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from deeplog_siem.cli import build_parser
from deeplog_siem.config import Config

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _keys(cls: type, prefix: str = "") -> list[str]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += _keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def test_every_configuration_key_is_documented():
    keys = _keys(Config)
    assert len(keys) > 50
    # A row may document several keys of one section: `section.a`, `section.b`.
    missing = [k for k in keys if f"`{k}`" not in README]
    assert not missing, f"README configuration reference lacks: {missing}"


def test_every_command_is_documented_and_helped():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        assert f"deeplog-siem {name}" in README, name
        assert p.format_help().strip(), name
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help text"
