"""The value merge: templates that differ at one position only, where that position takes many forms, become
one template with `<*>` there; the keys folded away lead to the survivor, in memory and in the saved state."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deeplog_lab.bench.parsing import systems
from deeplog_lab.shared_data import shared_data_dir
from deeplog_siem.config import TemplaterConfig
from deeplog_siem.runner import TrainingSet
from deeplog_siem.templater import Templater
from deeplog_siem.vocab import UNK

OPENSSH = next((s for s in systems(shared_data_dir()) if s.system == "OpenSSH"), None)
if OPENSSH is None:
    pytest.skip(
        f"real data not found at {shared_data_dir()} (tests expect ../shared/data beside the checkout)",
        allow_module_level=True,
    )
_INVALID = re.compile(r"^Failed (\w+) for invalid user (\S+) from ")
# A short message: one user name in it is more than Drain's share of differing tokens allows.
_SHORT = re.compile(r"^Invalid user (\S+) from ")


def _learn(lines: list[str]) -> tuple[Templater, list[int]]:
    t = Templater(TemplaterConfig(format="none"))
    keys = [t.canonical(ev.key) for ev in t.parse_many(lines, learn=True) if ev is not None]
    return t, keys


def test_user_names_share_a_key_and_the_event_word_beside_them_does_not() -> None:
    t, keys = _learn(OPENSSH.content)
    by_method: dict[str, set[int]] = {}
    users: dict[str, set[str]] = {}
    for line, key in zip(OPENSSH.content, keys, strict=True):
        m = _INVALID.match(line)
        if m:
            by_method.setdefault(m.group(1), set()).add(key)
            users.setdefault(m.group(1), set()).add(m.group(2))
    assert len(users["password"]) >= 10 and len(users["none"]) >= 2
    # One key per authentication method, whatever the user name: the method names the event.
    assert len(by_method["password"]) == 1 and len(by_method["none"]) == 1
    assert by_method["password"] != by_method["none"]
    assert t.stats["templates_merged"] > 0


def test_a_merged_template_takes_new_values_when_learning_and_when_matching(tmp_path: Path) -> None:
    lines = [ln for ln in OPENSSH.content if _SHORT.match(ln)]
    t, keys = _learn(lines)
    (key,) = set(keys)
    fresh = lines[0].replace(_SHORT.match(lines[0]).group(1), "somebodynew")  # type: ignore[union-attr]
    t.save(tmp_path)
    loaded = Templater.load(tmp_path, TemplaterConfig(format="none"))
    assert loaded.aliases == t.aliases and loaded.aliases
    assert loaded.parse(fresh, learn=False).key == key  # type: ignore[union-attr]
    assert loaded.parse(fresh.replace("somebodynew", "another"), learn=True).key == key  # type: ignore[union-attr]
    assert loaded.state_dict()["aliases"] == t.state_dict()["aliases"]
    assert loaded.parse("Invalid user", learn=False).key == UNK  # type: ignore[union-attr]


def test_keys_a_model_was_trained_on_are_never_folded_together(tmp_path: Path) -> None:
    lines = [ln for ln in OPENSSH.content if _SHORT.match(ln)]
    users = list(dict.fromkeys(_SHORT.match(ln).group(1) for ln in lines))  # type: ignore[union-attr]
    # Trained on two user names only: two keys, not yet a value.
    first = [ln for ln in lines if _SHORT.match(ln).group(1) in users[:2]]  # type: ignore[union-attr]
    t, keys = _learn(first)
    trained = set(keys)
    assert len(trained) == 2 and not t.aliases
    t.save(tmp_path)
    # Learning at detection meets more user names: both trained keys stay what they were.
    loaded = Templater.load(tmp_path, TemplaterConfig(format="none"))
    later = [loaded.canonical(ev.key) for ev in loaded.parse_many(lines, learn=True) if ev is not None]
    assert not trained & set(loaded.aliases)
    for line, key in zip(lines, later, strict=True):
        if line in first:
            assert key in trained


def test_training_reads_the_keys_it_collected_through_the_merges() -> None:
    lines = [ln for ln in OPENSSH.content if _SHORT.match(ln)]
    t = Templater(TemplaterConfig(format="none"))
    data = TrainingSet(with_params=True)
    for i, ev in enumerate(t.parse_many(lines, learn=True)):
        assert ev is not None
        data.sessions["s"].append(ev.key)
        data.series[(0, ev.key)].append((float(i),))
        data.series_times[(0, ev.key)].append(float(i))
    assert len(set(data.sessions["s"])) > 1 and t.aliases  # keys handed out before the merge
    data.rekey(t.aliases)
    (key,) = set(data.sessions["s"])
    assert key == t.parse(lines[0], learn=False).key  # type: ignore[union-attr]
    assert list(data.series) == [(0, key)]
    assert data.series_times[(0, key)] == sorted(data.series_times[(0, key)])
    assert [v[0] for v in data.series[(0, key)]] == data.series_times[(0, key)]


def test_values_of_another_kind_at_a_position_keep_the_event_s_key() -> None:
    """Android prints one flag field in decimal or in hexadecimal (`diff=0`, `diff=c8`): `<NUM>` or `<HEX>`
    at a position is still a value there, so every such line keeps its event's key."""
    android = next(s for s in systems(shared_data_dir()) if s.system == "Android")
    lines = [ln for ln in android.content if ln.startswith("setSystemUiVisibility ")]
    t, keys = _learn(lines)
    assert len(lines) >= 100 and len(set(keys)) == 1
    assert any("=c" in ln for ln in lines)  # hexadecimal values with letters are among them
