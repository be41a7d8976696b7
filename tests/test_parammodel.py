"""Parameter-value model: held-out thresholds, constant dimensions, gap-only keys, batched scoring, save/load."""

from __future__ import annotations

import math
import random

import pytest
import torch

from deeplog_siem import atomic
from deeplog_siem.config import ParamsConfig
from deeplog_siem.errors import ArtifactError
from deeplog_siem.parammodel import ParameterModel
from deeplog_siem.sessions import SharedLevel

CFG = ParamsConfig(window=4, hidden=8, epochs=3, min_observations=30, heldout_fraction=0.25)


def _series(n: int, seed: int = 0) -> list[tuple[float, ...]]:
    rng = random.Random(seed)
    # (time gap, a constant "total memory", a noisy size)
    return [(math.exp(rng.gauss(1.0, 0.2)), 64172.0, 100 + rng.gauss(0, 5)) for _ in range(n)]


def test_threshold_comes_from_heldout_residuals_not_training_ones() -> None:
    # Training part quiet, held-out part noisy: a threshold from training residuals would be narrow.
    rng = random.Random(1)
    quiet = [(1.0 + rng.gauss(0, 0.01),) for _ in range(300)]
    noisy = [(1.0 + rng.gauss(0, 0.3),) for _ in range(100)]
    pm, report = ParameterModel.fit({5: quiet + noisy}, CFG)
    km = pm.models[5]
    assert (km.n_train, km.n_heldout) == (300, 100)
    z = km.norm.forward(torch.tensor(quiet + noisy, dtype=torch.float64))
    with torch.no_grad():
        from deeplog_siem.parammodel import _windows

        pred, _ = km.model(_windows(z, CFG.window))
    train_std = float((z[:300] - pred[:300]).std())
    held_std = float((z[300:] - pred[300:]).std(unbiased=False))
    assert km.err_std[0] == pytest.approx(held_std, rel=1e-4)
    assert km.err_std[0] > 5 * train_std
    assert report.modelled[5]["heldout"] == 100


def test_constant_dimension_does_not_divide_by_zero_and_change_is_flagged() -> None:
    pm, report = ParameterModel.fit({3: _series(200)}, CFG)
    km = pm.models[3]
    assert km.norm.constant == [False, True, False]
    assert all(math.isfinite(s) and s > 0 for s in km.norm.std + km.err_std)
    hist = [_series(4, seed=9)]
    ok = pm.score([3], hist, [_series(1, seed=10)[0]])
    changed = pm.score([3], hist, [(2.7, 128344.0, 100.0)])
    assert torch.isfinite(ok.error).all() and torch.isfinite(changed.error).all()
    assert not ok.anomalous[0]
    assert changed.anomalous[0] and changed.dims[0] == [1]
    assert report.modelled[3]["constant_dims"] == [1]


def test_gap_only_keys_are_modelled_rare_and_mismatched_keys_skipped_and_counted() -> None:
    rng = random.Random(2)
    gap_only = [(math.exp(rng.gauss(0.0, 0.2)),) for _ in range(200)]
    pm, report = ParameterModel.fit({3: gap_only, 4: _series(10)}, CFG)
    assert 3 in pm.models and pm.models[3].model.args.dim == 1
    assert 4 in report.not_modelled and "min_observations" in report.not_modelled[4]
    s = pm.score(
        [3, 4, 3, 99], [gap_only[:4], [], [(1.0, 2.0)], []], [(1.0,), (1.0, 2.0, 3.0), (1.0, 2.0), (0.0,)]
    )
    assert s.modelled.tolist() == [True, False, False, False]
    assert pm.skipped == {"not_modelled": 2, "dim_mismatch": 1}
    slow = pm.score([3], [gap_only[-4:]], [(5.0,)])  # five times the usual ~1 s
    assert slow.anomalous[0] and slow.dims[0] == [0] and slow.observed[0] == [5.0]
    assert slow.low[0][0] < slow.predicted[0][0] < slow.high[0][0] < 5.0


def test_batched_scoring_equals_one_by_one_and_save_load_roundtrip(tmp_path) -> None:
    pm, _ = ParameterModel.fit({3: _series(200, 1), 4: [(v[0],) for v in _series(200, 2)]}, CFG)
    keys = [3, 4, 3, 4]
    hists = [_series(2, 5), [(1.0,)], _series(4, 6), []]
    vecs = [_series(1, 7)[0], (2.0,), _series(1, 8)[0], (0.5,)]
    batch = pm.score(keys, hists, vecs)
    for i in range(4):
        one = pm.score([keys[i]], [hists[i]], [vecs[i]])
        assert float(one.error[0]) == pytest.approx(float(batch.error[i]), abs=1e-5)
    path = pm.save(tmp_path / "params.pt", meta={"run": "t"})
    again = ParameterModel.load(path)
    assert torch.allclose(again.score(keys, hists, vecs).error, batch.error)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ArtifactError):
        ParameterModel.load(path)


def test_save_is_durable_and_a_failed_save_keeps_the_old_model(tmp_path, monkeypatch) -> None:
    pm, _ = ParameterModel.fit({3: _series(120, 1)}, CFG)
    synced: list[int] = []
    real_fsync = atomic.os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    path = pm.save(tmp_path / "params.pt")
    assert synced  # the data reaches the disk before the rename makes it the model
    before = path.read_bytes()

    def broken_save(obj, f) -> None:
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        pm.save(path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["params.pt"]


def test_transition_keys_roundtrip_and_a_level_beyond_training_is_followed(tmp_path) -> None:
    # Gaps around 1 s in training; later the host is three times slower for a while: the prediction follows
    # the recent level (history median), so 3 s is normal then and 15 s is still flagged.
    rng = random.Random(4)
    series = [(math.exp(rng.gauss(0.0, 0.2)),) for _ in range(300)]
    pm, report = ParameterModel.fit({(11, 12): series}, CFG)
    assert "[11, 12]" in report.to_dict()["modelled"]
    pm = ParameterModel.load(pm.save(tmp_path / "p.pt"))
    busy = [(3.0 * math.exp(rng.gauss(0.0, 0.2)),) for _ in range(CFG.window)]
    s = pm.score([(11, 12), (11, 12), (3, 12)], [busy, busy, busy], [(3.1,), (15.0,), (3.1,)])
    assert s.anomalous.tolist() == [False, True, False]
    assert s.modelled.tolist() == [True, True, False]  # (3, 12): another transition, not modelled
    assert 2.0 < s.predicted[0][0] < 4.5 and s.threshold[0] > 3.0


def test_confidence_is_per_vector_split_over_its_non_constant_dimensions() -> None:
    from statistics import NormalDist

    from deeplog_siem.parammodel import split_dims, z_bound

    assert z_bound(0.999, 1) == pytest.approx(NormalDist().inv_cdf(0.9995))  # 3.29: DeepLog's 99.9%
    assert z_bound(0.999, 2) == pytest.approx(NormalDist().inv_cdf(1 - 0.001 / 4))  # each dim 99.95%
    assert split_dims([True, False, False]) == 2 and split_dims([True]) == 1
    from deeplog_siem.parammodel import effective_dims

    g = torch.Generator().manual_seed(0)
    e = torch.randn(400, 1, generator=g, dtype=torch.float64)
    # A gap and a logged duration that are the same number count once; independent errors twice.
    assert effective_dims(torch.cat([e, e, torch.zeros_like(e)], 1), [False, False, True]) == 1.0
    near = torch.cat([e, e + 0.1 * torch.randn(400, 1, generator=g, dtype=torch.float64)], 1)
    assert effective_dims(near, [False, False]) < 1.05
    indep = effective_dims(torch.randn(400, 2, generator=g, dtype=torch.float64), [False, False])
    assert indep == pytest.approx(2.0, abs=0.02)
    cfg = ParamsConfig(window=4, hidden=8, epochs=3, min_observations=30, confidence=0.999)
    pm, _ = ParameterModel.fit({3: _series(200), 4: [(v[0],) for v in _series(200, 1)]}, cfg)
    s = pm.score([3, 4], [_series(4, 5), [(v[0],) for v in _series(4, 6)]], [_series(1, 7)[0], (2.7,)])
    # Key 3: (gap, constant, size): two dimensions share the budget; key 4: the gap alone.
    assert s.threshold == [pytest.approx(z_bound(0.999, 2), abs=0.01), pytest.approx(z_bound(0.999, 1))]


def test_shared_load_level_is_learnt_from_all_series_and_saved(tmp_path) -> None:
    # Two steps whose durations follow one drifting host load, and a bookkeeping series that does not.
    rng = random.Random(6)
    series: dict[tuple[int, int], list[tuple[float, ...]]] = {(1, 2): [], (2, 3): [], (3, 4): []}
    times: dict[tuple[int, int], list[float]] = {k: [] for k in series}
    load, t = 0.0, 0.0
    for _ in range(1500):
        t += 2.0
        load = 0.995 * load + 0.03 * rng.gauss(0, 1)
        k = rng.choice(list(series))
        gap = 0.002 + 0.001 * rng.random() if k == (3, 4) else math.exp(load + 0.2 * rng.gauss(0, 1))
        series[k].append((gap,))
        times[k].append(t)
    cfg = ParamsConfig(window=4, hidden=8, epochs=3, min_observations=30)
    pm, report = ParameterModel.fit(series, cfg, times)
    assert pm.level_series == {(1, 2), (2, 3)}
    assert "level_coef" in report.to_dict()["modelled"]["[1, 2]"]
    again = ParameterModel.load(pm.save(tmp_path / "p.pt"))
    assert again.level_series == pm.level_series
    # A host three times busier: the level follows it from the other series' recent gaps.
    state = SharedLevel()
    busy = [((1, 2) if i % 2 else (2, 3), (3.0 * math.exp(0.2 * rng.gauss(0, 1)),)) for i in range(60)]
    lv = again.levels([k for k, _ in busy], [v for _, v in busy], [t + i for i in range(60)], state)
    assert lv[0] == 0.0 and 0.7 < lv[-1] < 1.5  # log 3 = 1.1
    hist = [v for k, v in busy if k == (1, 2)][-4:]
    s = again.score([(1, 2), (1, 2)], [hist, hist], [(3.0,), (15.0,)], [lv[-1], lv[-1]])
    assert s.anomalous.tolist() == [False, True]
    assert SharedLevel.from_list(state.to_list()).to_list() == state.to_list()
