"""Fine matching: sub-pixel positions of coarse matches by local normalised cross-correlation.

Keypoint detectors place keypoints at positions tied to their own grid (XFeat's move by about a
pixel when the image shifts by a fraction of its 8-pixel stride), so two images taken from almost
the same pose get matched keypoints at almost the same pixels whatever the true shift between
them. That bias pulls every render-and-match refinement towards the pose it rendered from.

Here each match is re-measured: a small patch around the keypoint in the reference image (the
render, where the keypoint's 3D point is exact) is searched for in the target image (the query)
around the coarse match, by zero-normalised cross-correlation (insensitive to gain, offset and
so to most exposure changes), with a parabola fit of the correlation peak for sub-pixel precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from gsvisloc_ros.jit import jit


@dataclass(frozen=True)
class FineMatchingConfig:
    """Settings of :func:`refine_matches`.

    Attributes:
        window: side of the correlated patch in pixels (odd).
        radius: how far (pixels) from the coarse position the peak is searched.
        min_score: matches whose correlation peak is lower are dropped.
    """

    window: int = 11
    radius: int = 4
    min_score: float = 0.8

    def __post_init__(self) -> None:
        if self.window < 3 or self.window % 2 == 0:
            raise ValueError(f"window must be an odd number >= 3, got {self.window}")
        if self.radius < 1:
            raise ValueError(f"radius must be >= 1, got {self.radius}")


def _grey(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(image, dtype=np.float32)


@jit(fastmath=True)
def _search(ref, tgt, ref_px, tgt_px, half, radius, min_score):  # pragma: no cover (compiled)
    """ZNCC of each reference patch over its search window; (sub-pixel offset [N, 2], found [N])."""
    n = ref_px.shape[0]
    offsets = np.zeros((n, 2), np.float64)
    found = np.zeros(n, np.bool_)
    side = 2 * half + 1
    count = side * side
    span = 2 * radius + 1
    h_ref, w_ref = ref.shape
    h_tgt, w_tgt = tgt.shape
    reach = half + radius
    scores = np.empty((span, span), np.float64)
    template = np.empty((side, side), np.float64)
    for i in range(n):
        ur, vr = ref_px[i, 0], ref_px[i, 1]
        ut, vt = tgt_px[i, 0], tgt_px[i, 1]
        if not (half <= ur < w_ref - half and half <= vr < h_ref - half):
            continue
        if not (reach <= ut < w_tgt - reach and reach <= vt < h_tgt - reach):
            continue
        mean = 0.0
        for r in range(side):
            for c in range(side):
                template[r, c] = ref[vr - half + r, ur - half + c]
                mean += template[r, c]
        mean /= count
        energy = 0.0
        for r in range(side):
            for c in range(side):
                template[r, c] -= mean
                energy += template[r, c] * template[r, c]
        if energy < count:  # standard deviation below one grey level: a flat patch has no position
            continue
        best, best_r, best_c = -2.0, 0, 0
        for dr in range(span):
            for dc in range(span):
                top, left = vt - reach + dr, ut - reach + dc
                total = 0.0
                square = 0.0
                cross = 0.0
                for r in range(side):
                    for c in range(side):
                        x = tgt[top + r, left + c]
                        total += x
                        square += x * x
                        cross += x * template[r, c]
                variance = square - total * total / count
                score = cross / np.sqrt(energy * variance) if variance > 1e-6 else 0.0
                scores[dr, dc] = score
                if score > best:
                    best, best_r, best_c = score, dr, dc
        last = span - 1
        if best < min_score or best_r == 0 or best_r == last or best_c == 0 or best_c == last:
            continue
        offsets[i, 0] = best_c - radius + _peak_offset(scores[best_r, best_c - 1], best, scores[best_r, best_c + 1])
        offsets[i, 1] = best_r - radius + _peak_offset(scores[best_r - 1, best_c], best, scores[best_r + 1, best_c])
        found[i] = True
    return offsets, found


@jit(inline="always")
def _peak_offset(left, centre, right):  # pragma: no cover (compiled)
    """Sub-sample position of a peak from three samples (parabola vertex), within [-0.5, 0.5]."""
    curvature = left - 2.0 * centre + right
    if curvature >= 0:
        return 0.0
    return min(0.5, max(-0.5, 0.5 * (left - right) / curvature))


def refine_matches(
    reference: np.ndarray,
    reference_uv: np.ndarray,
    target: np.ndarray,
    target_uv: np.ndarray,
    config: FineMatchingConfig | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sub-pixel correspondences for the matches ``reference_uv[i] <-> target_uv[i]``.

    Patches are cut at whole pixels (no interpolation, which would blur the two images
    differently): each reference point moves to its nearest pixel centre, and the target position
    of that pixel is measured. Returns (reference pixels [N, 2], target positions [N, 2], kept
    mask [N]); a match is dropped when a patch leaves the image or is flat (standard deviation
    below one grey level), or its correlation peak is below ``min_score`` or lies on the search
    border.
    """
    cfg = config or FineMatchingConfig()
    reference_uv = np.asarray(reference_uv, dtype=np.float64).reshape(-1, 2)
    ref_px = np.rint(reference_uv)
    tgt_guess = np.asarray(target_uv, dtype=np.float64).reshape(-1, 2) + (ref_px - reference_uv)
    tgt_px = np.rint(tgt_guess)
    offsets, keep = _search(_grey(reference), _grey(target), ref_px.astype(np.int64), tgt_px.astype(np.int64),
                            cfg.window // 2, cfg.radius, float(cfg.min_score))
    refined = np.where(keep[:, None], tgt_px + offsets, tgt_guess)
    return ref_px, refined, keep
