"""Coarse 3D-2D matching: landmark descriptors against query-image descriptors on a torch device.

A landmark may carry several descriptors (seen from different virtual views); its similarity to a
query descriptor is the best cosine similarity over its descriptors. Two matchers:

* ``"mnn"``: mutual nearest neighbours at the landmark level, with a minimum cosine similarity and
  an optional Lowe ratio test against the second-best *other* landmark (ratio of descriptor
  distances ``sqrt(2 - 2 s)``).
* ``"dual_softmax"`` (LoFTR family): ``P = softmax_rows(S / T) * softmax_cols(S / T)``; a pair is
  kept when it is the maximum of its row and of its column and ``P > threshold``.

The score matrix is never held whole: landmarks are processed in blocks of ``chunk_size``
descriptors, so M = 100k landmarks x N = 4k queries needs about ``N * chunk_size * 4`` bytes at a time.
The result does not depend on the chunk size (tested).

:func:`frustum_filter` keeps the landmarks a camera at a prior pose can see (tracking mode).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .camera import PinholeCamera, invert_pose, transform_points
from .features.base import resolve_device

MATCHERS = ("mnn", "dual_softmax")


@dataclass
class MatchingConfig:
    """Settings of :func:`match_descriptors`.

    Attributes:
        method: ``"mnn"`` (mutual nearest neighbours) or ``"dual_softmax"``.
        min_similarity: minimum cosine similarity of a match (both methods); -1 disables it.
        ratio: Lowe ratio test for ``"mnn"``: keep a match when its descriptor distance is below
            ``ratio`` times the distance to the second-best landmark; ``None`` disables it.
        temperature: dual-softmax temperature on cosine similarities. LoFTR's 0.1 suits features
            that went through attention layers; on raw XFeat or RootSIFT cosines (all in 0.7-1.0)
            a softmax at 0.1 is nearly flat and no pair reaches the threshold (measured on two
            Middlebury views: 0 matches at 0.1, 1 at 0.05, ~700 at 0.02 with 89% epipolar-consistent).
        threshold: minimum dual-softmax probability of a match.
        chunk_size: landmark descriptors scored per block (memory ~ N * chunk_size * 4 bytes). On a
            CPU, blocks that stay in cache are fastest (20k x 4k, one thread: 340 ms CPU at 1024,
            450 ms at 8192; dual-softmax 690 vs 1090 ms); on a GPU larger blocks (16k+) suit better.
        device: torch device (``"auto"`` = CUDA when available, else CPU).
    """

    method: str = "mnn"
    min_similarity: float = 0.7
    ratio: float | None = None
    temperature: float = 0.02
    threshold: float = 0.2
    chunk_size: int = 1024
    device: str | None = "auto"

    def __post_init__(self) -> None:
        if self.method not in MATCHERS:
            raise ValueError(f"method must be one of {MATCHERS}, got {self.method!r}")
        if self.ratio is not None and not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")


class Matches(NamedTuple):
    """Matches sorted by decreasing score; unpacks as ``(query_idx, landmark_idx, score)``.

    ``landmark_idx`` holds landmark ids (the values of ``descriptor_landmark``, or descriptor rows when
    it was not given); ``score`` is the cosine similarity (``"mnn"``) or the probability (``"dual_softmax"``).
    """

    query_idx: np.ndarray
    landmark_idx: np.ndarray
    score: np.ndarray


@dataclass
class _Bucket:
    """Landmarks with the same padded number of descriptors ``k``; ``index`` [L, k] rows into the descriptors."""

    k: int
    landmark_ids: np.ndarray
    index: np.ndarray
    offset: int = 0  # position of the bucket's first landmark in the concatenated landmark order


def _empty_matches() -> Matches:
    return Matches(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))


def _buckets(num_descriptors: int, descriptor_landmark: np.ndarray | None) -> list[_Bucket]:
    """Group landmarks by descriptor count, padded to powers of two by repeating their own descriptors."""
    if descriptor_landmark is None:
        ids = np.arange(num_descriptors, dtype=np.int64)
        return [_Bucket(1, ids, ids[:, None])]
    ids = np.asarray(descriptor_landmark).reshape(-1)
    if len(ids) != num_descriptors:
        raise ValueError(f"descriptor_landmark must have one entry per descriptor ({num_descriptors}), got {len(ids)}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"descriptor_landmark must hold integers, got dtype {ids.dtype}")
    uniq, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    padded = 1 << np.ceil(np.log2(counts)).astype(np.int64)
    buckets = []
    offset = 0
    for k in np.unique(padded):
        sel = np.nonzero(padded == k)[0]
        slot = np.arange(k)[None, :] % counts[sel][:, None]  # cycle through the landmark's own descriptors
        index = order[starts[sel][:, None] + slot]
        buckets.append(_Bucket(int(k), uniq[sel].astype(np.int64), index, offset))
        offset += len(sel)
    return buckets


def _landmark_scores(query, descriptors, bucket: _Bucket, rows: slice | np.ndarray):
    """Cosine similarities [N, L'] of all queries with the bucket's landmarks ``rows`` (max over descriptors)."""
    import torch

    index = torch.as_tensor(bucket.index[rows].reshape(-1), device=descriptors.device)
    scores = query @ descriptors[index].T
    if bucket.k > 1:
        scores = scores.view(len(query), -1, bucket.k).amax(dim=-1)
    return scores


def match_descriptors(
    query_descriptors: Any,
    landmark_descriptors: Any,
    descriptor_landmark: np.ndarray | None = None,
    config: MatchingConfig | None = None,
) -> Matches:
    """Match query descriptors [N, D] to landmarks described by descriptors [M, D].

    Args:
        query_descriptors: [N, D] unit-norm descriptors of the query image (numpy or torch).
        landmark_descriptors: [M, D] unit-norm landmark descriptors (numpy or torch).
        descriptor_landmark: [M] integer landmark id of each descriptor row; ``None`` means one
            descriptor per landmark with id = row.
        config: matcher settings; defaults when ``None``.

    Returns:
        :class:`Matches` ``(query_idx, landmark_idx, score)``, each query and landmark at most once.
    """
    import torch

    cfg = config or MatchingConfig()
    device = resolve_device(cfg.device)
    query = torch.as_tensor(query_descriptors).to(device=device, dtype=torch.float32)
    descriptors = torch.as_tensor(landmark_descriptors).to(device=device, dtype=torch.float32)
    if query.ndim != 2 or descriptors.ndim != 2:
        raise ValueError(f"descriptors must be 2-D, got {tuple(query.shape)} and {tuple(descriptors.shape)}")
    if query.shape[1] != descriptors.shape[1]:
        raise ValueError(f"descriptor sizes differ: query D={query.shape[1]}, landmarks D={descriptors.shape[1]}")
    buckets = _buckets(len(descriptors), descriptor_landmark)
    if len(query) == 0 or len(descriptors) == 0:
        return _empty_matches()
    with torch.inference_mode():
        if cfg.method == "mnn":
            q_idx, pos, score = _mnn(query, descriptors, buckets, cfg)
        else:
            q_idx, pos, score = _dual_softmax(query, descriptors, buckets, cfg)
    landmark_order = np.concatenate([b.landmark_ids for b in buckets])
    q_idx, pos, score = q_idx.cpu().numpy(), pos.cpu().numpy(), score.float().cpu().numpy()
    order = np.argsort(-score, kind="stable")
    return Matches(q_idx[order].astype(np.int64), landmark_order[pos[order]], score[order])


def _chunks(bucket: _Bucket, chunk_size: int):
    step = max(1, chunk_size // bucket.k)
    for start in range(0, len(bucket.landmark_ids), step):
        yield slice(start, min(start + step, len(bucket.landmark_ids)))


def _mnn(query, descriptors, buckets: list[_Bucket], cfg: MatchingConfig):
    import torch

    n = len(query)
    num_landmarks = sum(len(b.landmark_ids) for b in buckets)
    neg = torch.full((n,), -torch.inf, device=query.device)
    best_val, second_val = neg.clone(), neg.clone()
    best_pos = torch.zeros(n, dtype=torch.long, device=query.device)
    col_max = torch.empty(num_landmarks, device=query.device)
    for bucket in buckets:
        for rows in _chunks(bucket, cfg.chunk_size):
            scores = _landmark_scores(query, descriptors, bucket, rows)
            first = bucket.offset + rows.start
            col_max[first : first + scores.shape[1]] = scores.amax(dim=0)
            if cfg.ratio is None:
                vals, idx = scores.max(dim=1)
                better = vals > best_val
                best_val = torch.where(better, vals, best_val)
                best_pos = torch.where(better, idx + first, best_pos)
            else:
                k = min(2, scores.shape[1])
                vals, idx = scores.topk(k, dim=1)
                if k == 1:
                    vals = torch.cat([vals, neg[:, None]], dim=1)
                    idx = torch.cat([idx, idx], dim=1)
                all_vals = torch.cat([best_val[:, None], second_val[:, None], vals], dim=1)
                all_pos = torch.cat([best_pos[:, None], best_pos[:, None], idx + first], dim=1)
                top_vals, top_idx = all_vals.topk(2, dim=1)
                best_val, second_val = top_vals[:, 0], top_vals[:, 1]
                best_pos = all_pos.gather(1, top_idx[:, :1])[:, 0]
    # A query's best landmark matches back when that landmark's best query has the same similarity.
    keep = (best_val >= col_max[best_pos]) & (best_val >= cfg.min_similarity)
    if cfg.ratio is not None:
        dist1 = torch.sqrt(torch.clamp(2.0 - 2.0 * best_val, min=0.0))
        dist2 = torch.sqrt(torch.clamp(2.0 - 2.0 * second_val, min=0.0))
        keep &= dist1 <= cfg.ratio * dist2
    q_idx = torch.nonzero(keep)[:, 0]
    return q_idx, best_pos[q_idx], best_val[q_idx]


def _dual_softmax(query, descriptors, buckets: list[_Bucket], cfg: MatchingConfig):
    import torch

    n = len(query)
    inv_t = 1.0 / cfg.temperature
    num_landmarks = sum(len(b.landmark_ids) for b in buckets)
    lse_query = torch.full((n,), -torch.inf, device=query.device)  # log-sum-exp over all landmarks
    lse_landmark = torch.empty(num_landmarks, device=query.device)  # log-sum-exp over all queries
    best_val = torch.full((n,), -torch.inf, device=query.device)  # max_l (2 S/T - lse_landmark)
    best_pos = torch.zeros(n, dtype=torch.long, device=query.device)
    best_logit = torch.zeros(n, device=query.device)
    for bucket in buckets:
        for rows in _chunks(bucket, cfg.chunk_size):
            logits = _landmark_scores(query, descriptors, bucket, rows).mul_(inv_t)
            first = bucket.offset + rows.start
            # One exp per block: logits <= 1/T (cosine <= 1), so exp(logits - 1/T) never overflows.
            work = torch.exp(logits - inv_t)
            col_sum, row_sum = work.sum(dim=0), work.sum(dim=1)
            col_lse = torch.log(col_sum).add_(inv_t)
            under = col_sum <= 0  # every query far below 1/T for this landmark: do it exactly
            if bool(under.any()):
                col_lse[under] = torch.logsumexp(logits[:, under], dim=0)
            lse_landmark[first : first + logits.shape[1]] = col_lse
            lse_query = torch.logaddexp(lse_query, torch.log(row_sum).add_(inv_t))
            # Row maximum of P only needs the column normaliser, which this block has in full.
            vals, idx = torch.sub(logits, 0.5 * col_lse[None, :], out=work).max(dim=1)
            vals = 2.0 * vals
            better = vals > best_val
            best_val = torch.where(better, vals, best_val)
            best_pos = torch.where(better, idx + first, best_pos)
            best_logit = torch.where(better, logits.gather(1, idx[:, None])[:, 0], best_logit)
    prob = torch.exp(best_val - lse_query)
    # Column check: is this query the maximum of P in its landmark's column? Only the (<= N)
    # candidate landmarks need their full column, now that the row normalisers are known.
    candidates, inverse = torch.unique(best_pos, return_inverse=True)
    col_best = torch.empty(len(candidates), device=query.device)
    cand_np = candidates.cpu().numpy()
    for bucket in buckets:
        inside = (cand_np >= bucket.offset) & (cand_np < bucket.offset + len(bucket.landmark_ids))
        if not inside.any():
            continue
        sel = np.nonzero(inside)[0]
        step = max(1, cfg.chunk_size // bucket.k)
        for start in range(0, len(sel), step):
            part = sel[start : start + step]
            logits = _landmark_scores(query, descriptors, bucket, cand_np[part] - bucket.offset) * inv_t
            col_best[torch.as_tensor(part, device=query.device)] = (2.0 * logits - lse_query[:, None]).amax(dim=0)
    # The column pass recomputes the same products in other blocks: allow for float rounding.
    own = 2.0 * best_logit - lse_query
    mutual = own >= col_best[inverse] - 1e-4 * (1.0 + col_best[inverse].abs())
    keep = mutual & torch.isfinite(lse_query) & (prob > cfg.threshold) & (best_logit / inv_t >= cfg.min_similarity)
    q_idx = torch.nonzero(keep)[:, 0]
    return q_idx, best_pos[q_idx], prob[q_idx]


def frustum_filter(
    points_world: np.ndarray,
    camera: PinholeCamera,
    T_world_camera_prior: np.ndarray,
    margin: float = 0.2,
    min_depth: float = 1e-6,
    max_depth: float = np.inf,
) -> np.ndarray:
    """Mask [M] of the points a camera at the prior pose can see, with a safety margin.

    Args:
        points_world: [M, 3] landmark positions in the world (map) frame.
        camera: intrinsics and image size.
        T_world_camera_prior: 4x4 camera-to-world prior pose.
        margin: how far outside the image a projection may fall, as a fraction of the image width
            (left/right) and height (top/bottom); 0 keeps exactly the image.
        min_depth, max_depth: accepted range of z-depth in the camera frame.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    points_camera = transform_points(invert_pose(T_world_camera_prior), points_world)
    uv, z = camera.project(points_camera)
    width, height = camera.size
    with np.errstate(invalid="ignore"):
        return (
            (z > min_depth)
            & (z < max_depth)
            & (uv[:, 0] >= -0.5 - margin * width)
            & (uv[:, 0] < width - 0.5 + margin * width)
            & (uv[:, 1] >= -0.5 - margin * height)
            & (uv[:, 1] < height - 0.5 + margin * height)
        )
