"""What a fix is worth to a robot: the covariance published with it and a quality score.

ROS-free, shared by the node (:mod:`gsvisloc_ros.ros.node`) and bag replay
(:mod:`gsvisloc_ros.evaluation.replay`), so that ``evaluate-bag`` scores the covariance the node
publishes.

* :func:`published_covariance`: the localizer's 6x6 PnP covariance (:mod:`gsvisloc_ros.pose`
  convention) times ``covariance_scale``, or :data:`FALLBACK_COVARIANCE` when the geometry left it
  undefined. The PnP covariance only knows the reprojection noise of the inliers; the map's own
  error (landmark positions lifted from renders) is not in it, so it is optimistic.
  :data:`DEFAULT_COVARIANCE_SCALE` was measured with ``gsvisloc evaluate-bag`` (see
  :mod:`gsvisloc_ros.evaluation.consistency`) so that about 95 % of the errors lie inside the
  published 95 % ellipsoid.
* :func:`fix_quality`: one number in [0, 1] with the figures behind it (inliers, inlier ratio,
  RMSE, tracking -- from a prior -- or global), 0 when no pose is trusted. It is the smallest margin over the
  acceptance thresholds: 0 means "just passed one of them", 1 means "twice the inliers needed,
  every match an inlier, no reprojection error".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Published when the localizer accepted a pose whose covariance is undefined (degenerate
#: geometry): variances of 1 map unit^2 and 0.1 rad^2, i.e. "position roughly known".
FALLBACK_COVARIANCE = np.diag([1.0, 1.0, 1.0, 0.1, 0.1, 0.1])

#: Factor on the PnP covariance: the 95th percentile of NEES / 12.59 over 100 accepted poses (the demo
#: bag, a 20-frame plant bag, the plant and tarot query sets; benchmarks/covariance_consistency.py) was
#: 53; per set 51.5, 1430, 44 and 29 (README, "Covariance").
DEFAULT_COVARIANCE_SCALE = 55.0


def published_covariance(covariance, scale: float) -> np.ndarray:
    """The covariance published with a fix: ``covariance * scale``, the fallback when it is None."""
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"covariance scale must be positive and finite, got {scale}")
    base = FALLBACK_COVARIANCE if covariance is None else np.asarray(covariance, dtype=np.float64)
    return base * float(scale)


@dataclass(frozen=True)
class FixQuality:
    """The quality of the last frame's answer, as ``~/status`` carries it."""

    localized: bool  # a pose was published for the frame
    score: float  # [0, 1], 0 when not localized (see the module docstring)
    inliers: int
    inlier_ratio: float
    rmse_px: float
    from_prior: bool  # the pose was found from a prior (the track, a hint, the saved pose), not a global search

    @property
    def mode(self) -> str:
        return "tracking" if self.from_prior else "global"


#: :class:`~gsvisloc_ros.localizer.CoarseSource` values of a pose found from the prior.
FROM_PRIOR = ("prior", "prior views")


def fix_quality(result, trusted: bool, min_inliers: int, min_inlier_ratio: float, max_rmse_px: float) -> FixQuality:
    """The :class:`FixQuality` of a localization ``result`` (a LocalizationResult) under the thresholds;
    its mode is "tracking" when the pose started from the prior (the result's ``coarse_source``)."""
    inliers = int(result.num_inliers)
    ratio = inliers / result.num_matches if result.num_matches else 0.0
    rmse = float(result.reprojection_rmse_px)
    score = 0.0
    if trusted and result.success:
        margins = (
            min(1.0, max(0.0, (inliers - min_inliers) / max(min_inliers, 1))),
            max(0.0, (ratio - min_inlier_ratio) / (1.0 - min_inlier_ratio)) if min_inlier_ratio < 1 else 1.0,
            max(0.0, 1.0 - rmse / max_rmse_px) if np.isfinite(rmse) else 0.0,
        )
        score = float(min(margins))
    from_prior = getattr(result, "coarse_source", "") in FROM_PRIOR
    return FixQuality(bool(trusted and result.success), score, inliers, float(ratio), rmse, from_prior)
