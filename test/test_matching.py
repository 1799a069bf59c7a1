"""Coarse matching against a brute-force reference, with known correspondences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gsvisloc_ros.matching import Matches, MatchingConfig, match_descriptors


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def reference(query, desc, cfg: MatchingConfig) -> set[tuple[int, int]]:
    """Dense numpy mutual nearest neighbours."""
    S = query @ desc.T
    rows = np.arange(len(query))
    a, b = S.argmax(1), S.argmax(0)
    keep = (b[a] == rows) & (S[rows, a] >= cfg.min_similarity)
    if cfg.ratio is not None:
        top2 = np.sort(S, axis=1)[:, -2:]
        d = np.sqrt(np.clip(2 - 2 * top2, 0, None))
        keep &= d[:, 1] <= cfg.ratio * d[:, 0]
    return {(int(q), int(lm)) for q, lm in zip(rows[keep], a[keep], strict=True)}


def as_set(m: Matches) -> set[tuple[int, int]]:
    return {(int(q), int(lm)) for q, lm in zip(m.query_idx, m.landmark_idx, strict=True)}


def known_correspondences(num_landmarks=2000, num_true=500, num_distractors=300, dim=64, noise=0.3, seed=0):
    """Landmark descriptors, queries = noisy copies of some of them + distractors, and the true pairs."""
    rng = np.random.default_rng(seed)
    desc = unit(rng.normal(size=(num_landmarks, dim)))
    picked = rng.choice(num_landmarks, num_true, replace=False)
    query = unit(desc[picked] + noise / np.sqrt(dim) * rng.normal(size=(len(picked), dim)))
    query = np.concatenate([query, unit(rng.normal(size=(num_distractors, dim)))])
    order = rng.permutation(len(query))
    inverse = np.argsort(order)
    truth = {(int(inverse[q]), int(lm)) for q, lm in enumerate(picked)}
    return query[order], desc, truth


@pytest.mark.parametrize(
    "cfg",
    [
        MatchingConfig(device="cpu"),
        MatchingConfig(device="cpu", ratio=0.9),
    ],
    ids=["mnn", "mnn-ratio"],
)
def test_known_correspondences_are_found(cfg):
    query, desc, truth = known_correspondences()
    m = match_descriptors(query, desc, cfg)
    found = as_set(m)
    assert len(found & truth) >= 0.95 * len(truth)
    assert len(found - truth) <= 0.01 * len(found)
    assert len(set(m.query_idx)) == len(m.query_idx) and len(set(m.landmark_idx)) == len(m.landmark_idx)
    assert np.all(np.diff(m.score) <= 0)  # sorted by decreasing score
    assert m.query_idx.dtype == np.int64 and m.landmark_idx.dtype == np.int64 and m.score.dtype == np.float32


@pytest.mark.parametrize("ratio", [None, 0.95])
def test_equals_brute_force_for_every_chunk_size(ratio):
    rng = np.random.default_rng(1)
    query = unit(rng.normal(size=(150, 16)))
    desc = unit(rng.normal(size=(250, 16)))
    kwargs = {"min_similarity": -1.0, "ratio": ratio}
    results = []
    for chunk in (1, 7, 64, 1_000_000):
        cfg = MatchingConfig(chunk_size=chunk, device="cpu", **kwargs)
        m = match_descriptors(query, desc, cfg)
        results.append((as_set(m), dict(zip(m.query_idx.tolist(), m.score.tolist(), strict=True))))
    expected = reference(query, desc, MatchingConfig(chunk_size=1, device="cpu", **kwargs))
    assert len(expected) > 20
    for found, scores in results:
        assert found == expected
        for q, s in results[-1][1].items():
            assert scores[q] == pytest.approx(s, rel=1e-5, abs=1e-6)


def test_landmarks_are_descriptor_rows():
    rng = np.random.default_rng(2)
    desc = unit(rng.normal(size=(300, 32)))
    query = desc[[5, 17, 200]]
    m = match_descriptors(query, desc, config=MatchingConfig(device="cpu"))
    assert as_set(m) == {(0, 5), (1, 17), (2, 200)}
    np.testing.assert_allclose(m.score, 1.0, atol=1e-6)


def test_ratio_test_drops_ambiguous_queries():
    rng = np.random.default_rng(3)
    a, b, c = unit(rng.normal(size=(3, 32)))
    landmarks = unit(np.stack([a, b, c]))
    # Query 0 sits between landmarks 0 and 1 (slightly nearer 0); query 1 is clearly landmark 2.
    query = unit(np.stack([0.52 * a + 0.48 * b, c + 0.05 * a]))
    plain = match_descriptors(query, landmarks, config=MatchingConfig(min_similarity=0.0, device="cpu"))
    assert as_set(plain) == {(0, 0), (1, 2)}
    strict = match_descriptors(query, landmarks, config=MatchingConfig(min_similarity=0.0, ratio=0.8, device="cpu"))
    assert as_set(strict) == {(1, 2)}


def test_min_similarity_filters():
    rng = np.random.default_rng(4)
    desc = unit(rng.normal(size=(50, 16)))
    query = unit(desc[:10] + 0.6 * rng.normal(size=(10, 16)))
    loose = match_descriptors(query, desc, config=MatchingConfig(min_similarity=-1.0, device="cpu"))
    tight = match_descriptors(query, desc, config=MatchingConfig(min_similarity=0.8, device="cpu"))
    assert len(tight.score) < len(loose.score)
    assert np.all(tight.score >= 0.8)


def test_torch_inputs_and_empty_inputs():
    rng = np.random.default_rng(5)
    desc = unit(rng.normal(size=(40, 8)))
    m = match_descriptors(torch.from_numpy(desc[:5]), torch.from_numpy(desc), config=MatchingConfig(device="cpu"))
    assert as_set(m) == {(i, i) for i in range(5)}
    for q, d in [(np.zeros((0, 8)), desc), (desc, np.zeros((0, 8)))]:
        empty = match_descriptors(q, d, config=MatchingConfig(device="cpu"))
        assert len(empty.query_idx) == len(empty.landmark_idx) == len(empty.score) == 0


def test_bad_inputs_raise():
    desc = unit(np.random.default_rng(6).normal(size=(10, 8)))
    with pytest.raises(ValueError, match="descriptor sizes differ"):
        match_descriptors(desc[:, :4], desc)
    with pytest.raises(ValueError, match="2-D"):
        match_descriptors(desc[0], desc)
    with pytest.raises(ValueError):
        MatchingConfig(ratio=1.5)
    with pytest.raises(ValueError):
        MatchingConfig(chunk_size=0)


def test_large_map_is_chunked():
    """100k landmarks: only blocks of chunk_size are ever scored at once."""
    rng = np.random.default_rng(7)
    desc = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(100_000, 64)).astype(np.float32)), dim=1)
    picks = np.array([3, 50_000, 99_999])
    query = desc[picks] + 0.01 * torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    m = match_descriptors(query, desc, config=MatchingConfig(chunk_size=4096, device="cpu"))
    assert as_set(m) == {(0, 3), (1, 50_000), (2, 99_999)}
