"""Packaging metadata: the Python versions the package claims are the ones its code runs on."""

from __future__ import annotations

import ast
import configparser
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Names that exist only from Python 3.11 on: module -> names imported from it or read as its attributes.
SINCE_3_11 = {
    "datetime": {"UTC"},
    "typing": {"Self", "LiteralString", "Never", "assert_never", "reveal_type", "TypeVarTuple", "Unpack"},
    "enum": {"StrEnum", "verify", "ReprEnum"},
    "asyncio": {"TaskGroup", "timeout"},
}
MODULES_3_11 = {"tomllib", "wsgiref.types"}
BUILTINS_3_11 = {"ExceptionGroup", "BaseExceptionGroup"}


def uses_3_11(source: str) -> list[str]:
    """What `source` uses that Python 3.10 lacks, as `line: what` entries."""
    found: list[str] = []
    aliases: dict[str, str] = {}  # local name -> module it stands for
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in MODULES_3_11:
                    found.append(f"{node.lineno}: import {a.name}")
                aliases[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module in MODULES_3_11:
                found.append(f"{node.lineno}: from {node.module} import ...")
            for a in node.names:
                if a.name in SINCE_3_11.get(node.module, ()):
                    found.append(f"{node.lineno}: from {node.module} import {a.name}")
        elif isinstance(node, ast.TryStar):
            found.append(f"{node.lineno}: except*")
        elif isinstance(node, ast.Name) and node.id in BUILTINS_3_11:
            found.append(f"{node.lineno}: {node.id}")
    # Attributes last: the imports above say which module a name stands for, wherever it is imported.
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            module = aliases.get(node.value.id)
            if module and node.attr in SINCE_3_11.get(module, ()):
                found.append(f"{node.lineno}: {module}.{node.attr}")
    return found


def lower_bound(python_requires: str) -> tuple[int, ...] | None:
    """The lowest Python version a `python_requires` specifier admits (None: no lower bound)."""
    bounds = []
    for spec in python_requires.split(","):
        m = re.fullmatch(r"\s*(>=|>|~=|==)\s*(\d+(?:\.\d+)*)(?:\.\*)?\s*", spec)
        if m:
            version = tuple(int(p) for p in m.group(2).split("."))
            # `>3.10` still admits 3.10.1; only the minor version matters for language features.
            bounds.append(version[:2] if m.group(1) != ">" else (*version[:2], 1))
    return max(bounds) if bounds else None


def test_the_scan_finds_each_kind_of_3_11_use():
    source = "\n".join(
        [
            "import datetime",
            "import datetime as dt",
            "from datetime import UTC",
            "import tomllib",
            "from typing import Self",
            "import enum",
            "x = datetime.UTC",
            "y = dt.UTC",
            "class E(enum.StrEnum): pass",
            "try:\n    pass\nexcept* ValueError:\n    pass",
            "raise ExceptionGroup('m', [ValueError()])",
        ]
    )
    found = " | ".join(uses_3_11(source))
    for what in (
        "from datetime import UTC",
        "import tomllib",
        "from typing import Self",
        "datetime.UTC",
        "enum.StrEnum",
        "except*",
        "ExceptionGroup",
    ):
        assert what in found, what
    assert uses_3_11("import datetime\nfrom datetime import timezone\nx = datetime.timezone.utc\n") == []


def test_lower_bound_of_python_requires():
    assert lower_bound(">=3.10") == (3, 10)
    assert lower_bound(">=3.11, <4") == (3, 11)
    assert lower_bound("~=3.12") == (3, 12)
    assert lower_bound("<4") is None


def test_python_requires_admits_no_version_the_code_cannot_run_on():
    uses = {
        str(p.relative_to(REPO)): found
        for p in sorted((REPO / "plugin").rglob("*.py"))
        if (found := uses_3_11(p.read_text(encoding="utf-8")))
    }
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg", encoding="utf-8")
    requires = cfg["options"]["python_requires"]
    bound = lower_bound(requires)
    if uses:
        first = next(iter(uses.items()))
        assert bound is not None and bound >= (3, 11), (
            f"python_requires {requires!r} admits Python before 3.11, but the code uses what 3.11 added "
            f"(e.g. {first[0]}: {first[1][0]})"
        )
    # The classifiers name no version below the requirement either.
    for line in cfg["metadata"]["classifiers"].split("\n"):
        m = re.fullmatch(r"\s*Programming Language :: Python :: (\d+)\.(\d+)\s*", line)
        if m and bound is not None:
            assert (int(m.group(1)), int(m.group(2))) >= bound, line


def test_the_readme_claims_the_required_python():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg", encoding="utf-8")
    bound = lower_bound(cfg["options"]["python_requires"])
    assert bound is not None
    claims = {tuple(int(p) for p in m.groups()) for m in re.finditer(r"Python (\d+)\.(\d+)\+", readme)}
    assert claims == {bound}, f"README claims Python {sorted(claims)}+, setup.cfg requires {bound}"
