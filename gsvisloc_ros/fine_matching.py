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


def _peak_offset(left: float, centre: float, right: float) -> float:
    """Sub-sample position of a peak from three samples (parabola vertex), within [-0.5, 0.5]."""
    curvature = left - 2.0 * centre + right
    return 0.0 if curvature >= 0 else float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))


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
    mask [N]); a match is dropped when a patch leaves the image, its correlation peak is below
    ``min_score`` or lies on the search border.
    """
    cfg = config or FineMatchingConfig()
    ref, tgt = _grey(reference), _grey(target)
    half, radius = cfg.window // 2, cfg.radius
    ref_px = np.rint(np.asarray(reference_uv, dtype=np.float64))
    tgt_guess = np.asarray(target_uv, dtype=np.float64) + (ref_px - reference_uv)
    tgt_px = np.rint(tgt_guess)
    refined = tgt_guess.copy()
    keep = np.zeros(len(refined), dtype=bool)
    h_ref, w_ref = ref.shape
    h_tgt, w_tgt = tgt.shape
    reach = half + radius
    for i in range(len(refined)):
        ur, vr = int(ref_px[i, 0]), int(ref_px[i, 1])
        ut, vt = int(tgt_px[i, 0]), int(tgt_px[i, 1])
        if not (half <= ur < w_ref - half and half <= vr < h_ref - half):
            continue
        if not (reach <= ut < w_tgt - reach and reach <= vt < h_tgt - reach):
            continue
        template = ref[vr - half: vr + half + 1, ur - half: ur + half + 1]
        if template.std() < 1.0:
            continue  # flat patch: no position to find
        search = tgt[vt - reach: vt + reach + 1, ut - reach: ut + reach + 1]
        scores = cv2.matchTemplate(search, template, cv2.TM_CCOEFF_NORMED)
        row, col = np.unravel_index(int(np.argmax(scores)), scores.shape)
        best = float(scores[row, col])
        last = 2 * radius
        if best < cfg.min_score or row in (0, last) or col in (0, last):
            continue
        du = col - radius + _peak_offset(scores[row, col - 1], best, scores[row, col + 1])
        dv = row - radius + _peak_offset(scores[row - 1, col], best, scores[row + 1, col])
        refined[i] = (ut + du, vt + dv)
        keep[i] = True
    return ref_px, refined, keep
