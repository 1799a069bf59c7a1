"""Image retrieval among the virtual views: nearest-neighbour votes through an inverted file.

The vocabulary is spherical k-means on the map's own keypoint descriptors, so nothing is learned
beyond the map. Every stored descriptor is filed under its nearest visual word; a query
descriptor searches only its own word's file for its nearest stored descriptor and votes for the
virtual image that descriptor came from. The images with the most votes are the candidates that
matching and PnP then verify.
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


def nearest_words(descriptors: np.ndarray, vocabulary: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Index of the most similar visual word of every descriptor [N] (int64)."""
    c = torch.as_tensor(np.asarray(vocabulary, dtype=np.float32))
    words = [(torch.as_tensor(np.asarray(descriptors[a:a + chunk], dtype=np.float32)) @ c.T).argmax(dim=1)
             for a in range(0, len(descriptors), chunk)]
    return torch.cat(words).numpy() if words else np.zeros(0, np.int64)


class InvertedFile:
    """The keypoint descriptors of every virtual image, filed by visual word, for nearest-neighbour votes.

    Each query descriptor looks for its nearest stored descriptor among those of its own visual
    word and votes for the image that descriptor came from. Unlike a global descriptor of the whole
    image (e.g. VLAD), a vote counts only close agreements of single keypoints, so an image that
    shares a small part of the query (a close-up) can still rank near the top. Measured on six
    plant close-ups: the virtual image with the most correct matches ranked 220th-1900th by VLAD,
    8th-80th by votes (one in six found by neither).
    """

    def __init__(self, descriptors: np.ndarray, image_start: np.ndarray, vocabulary: np.ndarray,
                 words: np.ndarray | None = None) -> None:
        """``words``: the nearest word of every descriptor when already known (it is stored with the scene)."""
        self.vocabulary = np.asarray(vocabulary, dtype=np.float32)
        words = nearest_words(descriptors, self.vocabulary) if words is None else np.asarray(words)
        order = np.argsort(words, kind="stable")
        counts = np.diff(np.asarray(image_start))
        self.images = len(counts)
        self._image = np.repeat(np.arange(self.images, dtype=np.int64), counts)[order]
        self._descriptors = torch.as_tensor(np.asarray(descriptors, dtype=np.float32)[order])
        self._starts = np.searchsorted(words[order], np.arange(len(self.vocabulary) + 1))

    def votes(self, queries: list[np.ndarray], min_similarity: float) -> np.ndarray:
        """Votes [I, len(queries)]: for each image and each set of query descriptors, the descriptors
        whose nearest stored descriptor of the same visual word (cosine at least ``min_similarity``)
        belongs to that image. All sets are searched together, one matrix product per word."""
        votes = np.zeros((self.images, len(queries)), np.int64)
        sets = [np.asarray(q, dtype=np.float32).reshape(-1, self.vocabulary.shape[1]) for q in queries]
        if not sum(len(q) for q in sets):
            return votes
        query = np.concatenate(sets)
        owner = np.repeat(np.arange(len(sets)), [len(q) for q in sets])
        words = nearest_words(query, self.vocabulary)
        query = torch.as_tensor(query)
        with torch.inference_mode():
            for word in np.unique(words):
                start, end = self._starts[word], self._starts[word + 1]
                if start == end:
                    continue
                mine = np.nonzero(words == word)[0]
                best, nearest = (query[mine] @ self._descriptors[start:end].T).max(dim=1)
                hit = (best >= min_similarity).numpy()
                np.add.at(votes, (self._image[nearest.numpy()[hit] + start], owner[mine[hit]]), 1)
        return votes
