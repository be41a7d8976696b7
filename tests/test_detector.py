"""Windows and batched scoring: vectorised windows, context prefixes, cache- and batch-independent scores."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from deeplog_siem.detector import KeyDetector, KeyScores, Windows, build_windows
from deeplog_siem.model import KeyLSTM, KeyModelArgs
from deeplog_siem.vocab import EOS, PAD, UNK

from ._synthetic import sessions


def _reference_windows(seqs, h, context=None, add_eos=True):
    """The obvious per-window loop, to check the vectorised version against."""
    rows = []
    for i, s in enumerate(seqs):
        full = list(s) + ([EOS] if add_eos else [])
        for t, target in enumerate(full):
            hist = [k for k in s[:t] if k != UNK]
            window = ([PAD] * h + hist)[-h:]
            if t >= (context[i] if context else 0):
                rows.append((window, target, i, t))
    return rows


def _rows(w: Windows):
    return list(
        zip(w.keys.tolist(), w.targets.tolist(), w.session.tolist(), w.position.tolist(), strict=True)
    )


@pytest.mark.parametrize("h", [1, 3, 10])
def test_build_windows_matches_reference(h: int) -> None:
    rng = random.Random(h)
    seqs = [[rng.choice([UNK, 3, 4, 5, 6, 7]) for _ in range(rng.randint(0, 25))] for _ in range(40)]
    context = [rng.randint(0, len(s) + 1) for s in seqs]
    for ctx in (None, context):
        for eos in (True, False):
            w = build_windows(seqs, h, context=ctx, add_eos=eos)
            assert _rows(w) == [(list(a), b, c, d) for a, b, c, d in _reference_windows(seqs, h, ctx, eos)]
            assert w.keys.dtype == torch.long and w.keys.shape == (len(w), h)


def test_build_windows_edge_cases() -> None:
    assert len(build_windows([], 4)) == 0
    w = build_windows([[]], 3)
    assert _rows(w) == [([PAD, PAD, PAD], EOS, 0, 0)]
    w = build_windows([[3, 4], [5]], 2, add_eos=[False, True])
    assert _rows(w) == [([0, 0], 3, 0, 0), ([0, 3], 4, 0, 1), ([0, 0], 5, 1, 0), ([0, 5], EOS, 1, 1)]
    with pytest.raises(ValueError, match="one entry per session"):
        build_windows([[3]], 2, context=[0, 0])


def test_context_prefix_scores_only_new_events() -> None:
    """A session split across two runs gets exactly the verdicts of one run over the whole session."""
    torch.manual_seed(0)
    model = KeyLSTM(KeyModelArgs(vocab_size=10, window=4, embedding=4, layers=1, hidden=8))
    det = KeyDetector(model, top_g=3)
    whole = sessions(30, seed=5)
    first = [s[: len(s) // 2] for s in whole]
    # Run 1 sees the first halves (sessions still open); run 2 gets each session's last h keys as history.
    s1 = det.score(build_windows(first, 4, add_eos=False))
    carried = [f[-4:] for f in first]
    second = [c + s[len(f) :] for c, f, s in zip(carried, first, whole, strict=True)]
    w2 = build_windows(second, 4, context=[len(c) for c in carried])
    s2 = det.score(w2)
    full = det.score(build_windows(whole, 4))
    assert len(s1) + len(s2) == len(full)
    assert torch.equal(torch.cat([s1.rank, s2.rank]).sort().values, full.rank.sort().values)
    # Run 2 scored only the new events and the ends: positions start after the carried history.
    assert all(p >= len(carried[i]) for i, p in zip(w2.session.tolist(), w2.position.tolist(), strict=True))
    assert int((w2.targets == EOS).sum()) == len(whole)


def _assert_same(a: KeyScores, b: KeyScores) -> None:
    for f in ("rank", "prob", "topk_keys", "topk_probs", "anomalous", "unseen"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f


@pytest.fixture(scope="module")
def model() -> KeyLSTM:
    torch.manual_seed(1)
    return KeyLSTM(KeyModelArgs(vocab_size=12, window=5, embedding=8, layers=2, hidden=16)).eval()


def _part(w: Windows, i: int, n: int) -> Windows:
    return Windows(w.keys[i : i + n], w.targets[i : i + n], w.session[i : i + n], w.position[i : i + n])


def test_scores_identical_with_and_without_cache_and_across_batches(model: KeyLSTM) -> None:
    rng = random.Random(0)
    seqs = [[rng.choice([3, 4, 5, 6, 7, 8, UNK]) for _ in range(rng.randint(1, 30))] for _ in range(300)]
    w = build_windows(seqs, 5)
    ref = KeyDetector(model, 4, cache_size=0).score(w)
    fields = KeyScores.__dataclass_fields__
    for cache_size in (0, 40, 100_000):
        for batch in (1, 7, 97, 1000, len(w)):
            det = KeyDetector(model, 4, cache_size=cache_size, chunk_rows=64)
            for _ in range(2):  # the second pass is served from the cache where it is on
                parts = [det.score(_part(w, i, batch)) for i in range(0, len(w), batch)]
                _assert_same(ref, KeyScores(*(torch.cat([getattr(p, f) for p in parts]) for f in fields)))
            if cache_size:
                assert det.hits > 0 and len(det._slots) == min(cache_size, len(w.keys.unique(dim=0)))


def _one_pass_prob(model: KeyLSTM, w: Windows) -> torch.Tensor:
    """[N]: the actual key's probability from the model's own forward pass over whole windows."""
    with torch.no_grad():
        logits, _ = model(w.keys)
    logits[:, [PAD, UNK]] = float("-inf")
    return torch.softmax(logits, dim=1)[torch.arange(len(w)), w.targets]


def test_prefix_states_give_the_one_pass_distribution(model: KeyLSTM) -> None:
    """Windows run as a shared prefix state then the rest: the model's own one-pass distribution, the stored
    prefix states are the distinct prefixes, and a store emptied when full recomputes them the same."""
    rng = random.Random(1)
    seqs = [[rng.choice([3, 4, 5, 6, 7, 8]) for _ in range(rng.randint(1, 25))] for _ in range(200)]
    w = build_windows(seqs, 5)
    det = KeyDetector(model, 4, chunk_rows=64)
    assert det.prefix_depth == 2
    s = det.score(w)
    assert torch.allclose(s.prob, _one_pass_prob(model, w), rtol=1e-5, atol=1e-7)
    prefixes = {tuple(r) for r in w.keys[:, :2].tolist()}
    assert len(det._prefixes[0].slots) == len(prefixes) > 1
    # Fewer slots than prefixes: the store is emptied and refilled, the scores do not move.
    small = KeyDetector(model, 4, cache_size=len(prefixes) - 1, chunk_rows=64)
    for i in range(0, len(w), 50):
        _assert_same(small.score(_part(w, i, 50)), KeyDetector(model, 4, cache_size=0).score(_part(w, i, 50)))
    assert 0 < len(small._prefixes[0].slots) < len(prefixes)
    # Short windows run in one pass.
    assert KeyDetector(KeyLSTM(KeyModelArgs(vocab_size=12, window=3)), 4).prefix_depth == 0


def test_a_vocabulary_too_large_for_one_int64_per_window() -> None:
    """100 keys, windows of 10: a window's id no longer fits in an int64 (100**10 > 2**62), its prefix's
    does; ids stay exact, and scores are still the model's, with and without the caches."""
    torch.manual_seed(3)
    big = KeyLSTM(KeyModelArgs(vocab_size=100, window=10, embedding=8, layers=1, hidden=8)).eval()
    rng = random.Random(3)
    seqs = [[rng.randrange(3, 100) for _ in range(rng.randint(1, 30))] for _ in range(100)]
    w = build_windows(seqs, 10)
    det = KeyDetector(big, 5, chunk_rows=64)
    s = det.score(w)
    assert torch.allclose(s.prob, _one_pass_prob(big, w), rtol=1e-5, atol=1e-7)
    # Window ids are exact Python ints beyond int64, prefix ids int64; ids and rows agree with a plain unique.
    assert any(k >= 2**63 for k in det._slots) and all(0 <= k < 2**62 for k in det._prefixes[0].slots)
    uniq, inverse, ids = det._unique(w.keys)
    assert torch.equal(uniq[inverse], w.keys) and len(set(ids)) == len(ids) == len(w.keys.unique(dim=0))
    digits = [[k // 100**i % 100 for i in range(10)] for k in ids]
    assert digits == uniq.tolist()
    _assert_same(s, det.score(w))  # from the cache
    assert det.hits == len(det._slots) > 0
    _assert_same(s, KeyDetector(big, 5, cache_size=0, chunk_rows=64).score(w))


def test_score_semantics(model: KeyLSTM) -> None:
    w = build_windows([[3, 4, UNK, 5], [6, 7, 8]], 5)
    s = KeyDetector(model, 4).score(w)
    assert s.topk_keys.shape == (len(w), 4) and s.topk_probs.shape == (len(w), 4)
    # rank < g exactly when the actual key is one of the top-g candidates.
    in_topk = (s.topk_keys == w.targets[:, None]).any(1)
    assert torch.equal(in_topk, s.rank < 4)
    assert torch.equal(s.unseen, w.targets == UNK)
    assert torch.equal(s.anomalous, (s.rank >= 4) | s.unseen)
    assert not ((s.topk_keys == PAD) | (s.topk_keys == UNK)).any()  # never predicted
    assert (s.topk_probs[:, :-1] >= s.topk_probs[:, 1:]).all()
    # The probability of the actual key is the one in the candidate list where it is listed.
    hit = in_topk.nonzero().flatten()
    pos = (s.topk_keys[hit] == w.targets[hit, None]).float().argmax(1)
    assert torch.equal(s.topk_probs[hit, pos], s.prob[hit])
    assert len(KeyDetector(model, 4).score(build_windows([], 5))) == 0
    with pytest.raises(ValueError, match="windows of 5"):
        KeyDetector(model, 4).score(build_windows([[3]], 3))


def test_min_probability_floor(model: KeyLSTM) -> None:
    """The floor removes low-probability keys from the top-g candidates and changes nothing else."""
    w = build_windows([[3, 4, UNK, 5], [6, 7, 8], [9, 10, 11, 3]], 5)
    plain = KeyDetector(model, 4).score(w)
    # Just above the least likely accepted key: at least that event goes from accepted to flagged.
    floor = float(plain.prob[~plain.anomalous].min()) * 1.001
    s = KeyDetector(model, 4, min_probability=floor).score(w)
    for f in ("rank", "prob", "topk_keys", "topk_probs", "unseen"):
        assert torch.equal(getattr(s, f), getattr(plain, f)), f
    assert torch.equal(s.anomalous, plain.anomalous | (s.prob < floor))
    assert (s.anomalous & ~plain.anomalous).any()  # some top-g keys are flagged by the floor alone
    with pytest.raises(ValueError, match="min_probability"):
        KeyDetector(model, 4, min_probability=1.0)


def _shaken(model: KeyLSTM, scale: float, seed: int) -> KeyLSTM:
    """A copy of `model` whose output layer is perturbed: stands for a fine-tuned descendant."""
    child = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in child.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return child.eval()


def test_anchor_flags_what_the_trained_model_rejects_unless_its_probability_rose(model: KeyLSTM) -> None:
    """Under a feedback version the verdict is the version's, plus: a key the anchor (the trained model)
    rejects stays flagged unless the version gives it at least `anchor_ratio` x the anchor's probability.
    Checked against two plain detectors, one per model."""
    rng = random.Random(3)
    seqs = [[rng.choice(range(3, 12)) for _ in range(rng.randint(1, 25))] for _ in range(200)]
    w = build_windows(seqs, 5)
    child = _shaken(model, 0.3, seed=4)
    own = KeyDetector(child, 4).score(w)
    root = KeyDetector(model, 4).score(w)
    s = KeyDetector(child, 4, anchor=model, anchor_ratio=2.0).score(w)
    for f in ("rank", "prob", "topk_keys", "topk_probs", "unseen"):
        assert torch.equal(getattr(s, f), getattr(own, f)), f
    expected = own.anomalous | (root.anomalous & (own.prob < 2.0 * root.prob))
    assert torch.equal(s.anomalous, expected)
    assert torch.equal(s.anchored, s.anomalous & ~own.anomalous)
    assert torch.equal(s.anchor_prob, root.prob)
    # Not vacuous: some events the version alone accepts are kept flagged, and some the anchor rejected
    # are accepted because the version raised them enough.
    assert s.anchored.any()
    assert (root.anomalous & ~s.anomalous).any()
    # A higher ratio keeps more flagged; ratio 0 is no anchor; the anchor of a trained model is itself.
    higher = KeyDetector(child, 4, anchor=model, anchor_ratio=50.0).score(w)
    assert (higher.anomalous >= s.anomalous).all() and higher.anomalous.sum() > s.anomalous.sum()
    assert torch.equal(KeyDetector(child, 4, anchor=model, anchor_ratio=0).score(w).anomalous, own.anomalous)
    assert torch.equal(KeyDetector(model, 4, anchor=model).score(w).anomalous, root.anomalous)
    # Cached and batched scoring give the same anchored verdicts.
    det = KeyDetector(child, 4, cache_size=50, chunk_rows=64, anchor=model)
    for _ in range(2):
        parts = [det.score(_part(w, i, 97)) for i in range(0, len(w), 97)]
        assert torch.equal(torch.cat([p.anomalous for p in parts]), s.anomalous)
        assert torch.equal(torch.cat([p.anchored for p in parts]), s.anchored)
    other = KeyLSTM(KeyModelArgs(vocab_size=11, window=5, embedding=8, layers=1, hidden=8))
    with pytest.raises(ValueError, match="not the same lineage"):
        KeyDetector(child, 4, anchor=other)


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here: the GPU path runs where one is"
)
def test_cuda_scores_match_cpu(model: KeyLSTM) -> None:
    rng = random.Random(2)
    seqs = [[rng.choice([3, 4, 5, 6, 7, 8, UNK]) for _ in range(rng.randint(1, 25))] for _ in range(200)]
    w = build_windows(seqs, 5)
    cpu = KeyDetector(copy.deepcopy(model), 4, chunk_rows=64).score(w)
    det = KeyDetector(
        copy.deepcopy(model).cuda(), 4, device="cuda", chunk_rows=64, anchor=copy.deepcopy(model)
    )
    for _ in range(2):  # the second pass from the caches
        gpu = det.score(w)
        assert torch.equal(gpu.topk_keys, cpu.topk_keys) or torch.allclose(
            gpu.topk_probs, cpu.topk_probs, atol=1e-5
        )
        assert torch.allclose(gpu.prob, cpu.prob, atol=1e-5)
        assert torch.equal(gpu.unseen, cpu.unseen)
