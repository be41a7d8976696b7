"""Log-key model: training on a synthetic workflow, checkpoints that round-trip and refuse damage."""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import pytest
import torch

from deeplog_siem import model as model_mod
from deeplog_siem.config import ModelConfig
from deeplog_siem.detector import KeyDetector, build_windows
from deeplog_siem.errors import ArtifactError, ConfigError
from deeplog_siem.model import (
    KeyLSTM,
    KeyModelArgs,
    fingerprint,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
    train_key_model,
)
from deeplog_siem.timefmt import epoch_seconds
from deeplog_siem.vocab import EOS, UNK, Vocabulary

from ._synthetic import A, B, C, D, E, F, sessions, vocabulary

TINY = ModelConfig(
    window=4, top_g=2, layers=1, hidden=16, embedding=8, epochs=60, batch_size=16,
    learning_rate=0.01, patience=60, validation_fraction=0.2, seed=7, device="cpu",
)  # fmt: skip


@pytest.fixture(scope="module")
def trained() -> tuple[KeyLSTM, Vocabulary, list[list[int]]]:
    train = sessions(300)
    vocab = vocabulary()
    vocab.add("a template the workflow never uses")
    model, report = train_key_model(train, len(vocab), TINY)
    assert report.val_sessions == 60 and report.train_sessions == 240
    assert report.unique_windows < report.train_windows  # repeated windows are trained once, weighted
    assert report.val_loss is not None and report.val_loss < 0.6
    return model, vocab, train


def test_forward_shapes_and_loss() -> None:
    m = KeyLSTM(KeyModelArgs(vocab_size=12, window=5, embedding=4, layers=2, hidden=8))
    keys = torch.randint(0, 12, (7, 5))
    logits, loss = m(keys)
    assert logits.shape == (7, 12) and loss is None
    targets = torch.randint(0, 12, (7,))
    _, loss = m(keys, targets)
    _, weighted = m(keys, targets, torch.ones(7))
    assert loss is not None and weighted is not None and torch.allclose(loss, weighted)


def test_learns_workflow_and_flags_deviations(trained) -> None:
    model, vocab, _ = trained
    det = KeyDetector(model, top_g=2)
    normal = sessions(200, seed=1)
    w = build_windows(normal, model.args.window)
    s = det.score(w)
    assert not s.anomalous.any(), "normal sessions of the workflow must pass with g=2"
    unused = len(vocab) - 1
    deviations = {
        "unknown line": [A, B, C, D, UNK, E, F],
        "never-seen key": [A, B, C, D, unused, E, F],
        "skipped step": [A, B, C, E, F],
        "order swapped": [A, C, B, D, E, F],
        "truncated": [A, B, C],
    }
    w = build_windows(list(deviations.values()), model.args.window)
    s = det.score(w)
    for i, name in enumerate(deviations):
        sel = w.session == i
        # The deviating event is the least likely one of its session, and the model finds it implausible.
        worst = int(s.prob[sel].argmin())
        assert s.prob[sel][worst] < 0.05, name
        if name in ("unknown line", "never-seen key"):
            assert s.anomalous[sel][worst], name
            assert int(w.position[sel][worst]) == 4
    unk = (w.session == 0) & (w.targets == UNK)
    assert s.unseen[unk].all() and int(s.unseen.sum()) == 1
    # The unknown line is left out of the history: the events after it are judged as if it were absent.
    after = (w.session == 0) & (w.position > 4)
    assert not s.anomalous[after].any()
    # Every event of every session has a verdict, and the end of the session is one too.
    assert w.targets[w.session == 4].tolist() == [A, B, C, EOS]


def test_training_is_reproducible() -> None:
    cfg = dataclasses.replace(TINY, epochs=3)
    data = sessions(50)
    m1, r1 = train_key_model(data, 10, cfg)
    m2, r2 = train_key_model(data, 10, cfg)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert r1.fingerprint == r2.fingerprint == fingerprint(data)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="cuda"):
            resolve_device("cuda")


def test_checkpoint_round_trip(trained, tmp_path: Path) -> None:
    model, vocab, train = trained
    meta = {"fingerprint": fingerprint(train), "metrics": {"val_loss": 0.1}, "templater": "state/drain3@v3"}
    path = save_checkpoint(tmp_path / "sub" / "key.pt", model, vocab, meta)
    assert sorted(p.name for p in path.parent.iterdir()) == ["key.pt"]  # no temporary file left behind
    loaded, v2, header = load_checkpoint(path)
    assert v2.templates == vocab.templates
    assert header["meta"] == meta and header["args"] == dataclasses.asdict(model.args)
    assert (
        header["package_version"]
        and header["format_version"] == model_mod.FORMAT_VERSION
        and header["created"].endswith("Z")  # the one timestamp form documents carry
        and epoch_seconds(header["created"]) is not None
    )
    keys = build_windows(sessions(20, seed=3), model.args.window).keys
    assert torch.equal(model(keys)[0], loaded(keys)[0])


def _saved(trained, tmp_path: Path) -> Path:
    model, vocab, _ = trained
    return save_checkpoint(tmp_path / "key.pt", model, vocab, {"templater": None})


def test_truncated_checkpoint_fails_cleanly(trained, tmp_path: Path) -> None:
    p = _saved(trained, tmp_path)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(ArtifactError, match="truncated or corrupted"):
        load_checkpoint(p)


def test_tampered_weights_fail_cleanly(trained, tmp_path: Path) -> None:
    p = _saved(trained, tmp_path)
    ck = torch.load(p, weights_only=True)
    ck["state"]["head.bias"][3] += 1.0
    torch.save(ck, p)
    with pytest.raises(ArtifactError, match="tampered"):
        load_checkpoint(p)


def test_tampered_bytes_fail_cleanly(trained, tmp_path: Path) -> None:
    p = _saved(trained, tmp_path)
    with zipfile.ZipFile(p) as z:
        name = max(z.namelist(), key=lambda n: z.getinfo(n).file_size)
    data = bytearray(p.read_bytes())
    at = data.find(name.encode()) + 200  # inside the largest stored tensor, past its local header
    data[at] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(ArtifactError):
        load_checkpoint(p)


def test_mismatched_checkpoint_fails_cleanly(trained, tmp_path: Path) -> None:
    p = _saved(trained, tmp_path)
    ck = torch.load(p, weights_only=True)
    ck["header"]["args"]["hidden"] = 32  # arguments no longer describe the weights
    ck["digest"] = model_mod._digest(ck["header"], ck["state"])
    torch.save(ck, p)
    with pytest.raises(ArtifactError, match="does not match its model arguments"):
        load_checkpoint(p)


def test_other_format_version_fails_with_its_origin(trained, tmp_path: Path, monkeypatch) -> None:
    p = _saved(trained, tmp_path)
    monkeypatch.setattr(model_mod, "FORMAT_VERSION", 99)
    monkeypatch.setattr(model_mod, "__version__", "9.9.9")
    with pytest.raises(ArtifactError, match=r"format version 1 was written by deeplog-siem 0\.\d+.*9\.9\.9"):
        load_checkpoint(p)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    p = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, p)
    with pytest.raises(ArtifactError, match="not a deeplog-siem key-model checkpoint"):
        load_checkpoint(p)
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ArtifactError):
        load_checkpoint(tmp_path / "text.pt")


def test_save_refuses_mismatched_vocabulary(trained, tmp_path: Path) -> None:
    model, _, _ = trained
    with pytest.raises(ArtifactError, match="vocabulary has"):
        save_checkpoint(tmp_path / "x.pt", model, Vocabulary(), {})
    assert not any(tmp_path.iterdir())


def test_model_threads_caps_torch_threads() -> None:
    import dataclasses

    import torch

    from deeplog_siem.config import ModelConfig
    from deeplog_siem.model import _DEFAULT_THREADS, train_key_model

    before = torch.get_num_threads()
    try:
        cfg = dataclasses.replace(ModelConfig(), threads=1, epochs=1, hidden=8, embedding=4, layers=1)
        train_key_model([[3, 4, 5, 3, 4, 5]] * 20, 6, cfg)
        assert torch.get_num_threads() == 1
        # 0 restores torch's own choice: the daemon detects (one thread) and retrains in one process.
        train_key_model([[3, 4, 5, 3, 4, 5]] * 20, 6, dataclasses.replace(cfg, threads=0))
        assert torch.get_num_threads() == _DEFAULT_THREADS
    finally:
        torch.set_num_threads(before)
