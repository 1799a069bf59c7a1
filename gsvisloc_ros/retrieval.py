"""Image retrieval among the virtual views: VLAD over local descriptors, vocabulary per map.

Each virtual view (at each roll) is summarised by a VLAD vector: the residuals of its local
descriptors to their nearest visual word, summed per word, intra-normalised, power-normalised and
L2-normalised. The vocabulary is k-means on the map's own descriptors, so nothing is learned
beyond the map. Retrieval picks the few views that look most like the query, and with them its
roll; matching and PnP then run against those views only.
"""

from __future__ import annotations

import numpy as np
import torch


def train_vocabulary(descriptors: np.ndarray, words: int = 64, iterations: int = 15, sample: int = 50000,
                     seed: int = 0) -> np.ndarray:
    """k-means (spherical) centroids [words, D] of unit-norm descriptors, deterministic by seed."""
    rng = np.random.default_rng(seed)
    d = np.asarray(descriptors, dtype=np.float32)
    if len(d) < words:
        raise ValueError(f"need at least {words} descriptors to train a vocabulary, got {len(d)}")
    if len(d) > sample:
        d = d[rng.choice(len(d), sample, replace=False)]
    x = torch.from_numpy(np.ascontiguousarray(d))
    centroids = x[torch.from_numpy(rng.choice(len(x), words, replace=False))].clone()
    for _ in range(iterations):
        assign = (x @ centroids.T).argmax(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=words)
        empty = counts == 0
        sums[empty] = x[torch.from_numpy(rng.choice(len(x), int(empty.sum()), replace=False))]
        centroids = torch.nn.functional.normalize(sums, dim=1)
    return centroids.numpy()


def vlad(descriptors: np.ndarray, vocabulary: np.ndarray) -> np.ndarray:
    """The normalised VLAD vector [words * D] of one image's descriptors [N, D]."""
    words, dim = vocabulary.shape
    if len(descriptors) == 0:
        return np.zeros(words * dim, np.float32)
    x = torch.as_tensor(np.asarray(descriptors, dtype=np.float32))
    c = torch.as_tensor(vocabulary)
    assign = (x @ c.T).argmax(dim=1)
    residuals = torch.zeros_like(c).index_add_(0, assign, x - c[assign])
    residuals = torch.nn.functional.normalize(residuals, dim=1)  # intra-normalisation
    v = residuals.flatten()
    v = torch.sign(v) * torch.sqrt(v.abs())
    return torch.nn.functional.normalize(v, dim=0).numpy()


def rank(query_vlad: np.ndarray, database: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine similarities of the ``top_k`` database rows most similar to the query."""
    scores = np.asarray(database, dtype=np.float32) @ np.asarray(query_vlad, dtype=np.float32)
    top_k = min(top_k, len(scores))
    best = np.argpartition(-scores, top_k - 1)[:top_k]
    best = best[np.argsort(-scores[best])]
    return best, scores[best]
