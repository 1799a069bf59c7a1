"""Does the published covariance describe the real error? NEES and the 95 % ellipsoid share.

For a frame with an estimate ``T_est``, its 6x6 covariance ``C`` (the convention of
:mod:`gsvisloc_ros.pose`: the camera centre moves by ``t``, the camera turns by the rotation vector
``r`` about the world axes, ``T(delta) = [Exp(r) R | c + t]``) and the truth ``T_gt``, the error is
``e = (c_est - c_gt, Log(R_est R_gt^T))`` and the *normalised estimation error squared* is
``NEES = e^T C^-1 e``. When ``C`` is right, NEES follows a chi-square law with 6 degrees of
freedom: its mean is 6 and 95 % of the frames have ``NEES <= 12.59`` (their error lies inside the
95 % ellipsoid of ``C``). A mean far above 6 means an optimistic covariance, which an EKF such as
robot_localization would over-trust (or reject by its Mahalanobis gate); far below, a pessimistic
one, whose fixes are under-used.

:func:`consistency` gives these figures over frames, and the scale of the covariance that would
put 95 % of them inside their ellipsoid (the node's ``covariance_scale`` multiplies ``C``; a
scale ``s`` divides every NEES by ``s``).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation
from scipy.stats import chi2

#: Degrees of freedom of a pose error (3 of position, 3 of orientation).
DOF = 6
#: The share of frames a consistent covariance puts inside its ellipsoid.
TARGET_SHARE = 0.95
#: NEES bound of the 95 % ellipsoid with 6 degrees of freedom (12.59).
NEES_95 = float(chi2.ppf(TARGET_SHARE, DOF))


def pose_error_vector(T_est, T_gt) -> np.ndarray:
    """``(c_est - c_gt, Log(R_est R_gt^T))``: the error of ``T_est`` in the covariance's convention."""
    T_est, T_gt = np.asarray(T_est, dtype=np.float64), np.asarray(T_gt, dtype=np.float64)
    dr = Rotation.from_matrix(T_est[:3, :3] @ T_gt[:3, :3].T).as_rotvec()
    return np.concatenate([T_est[:3, 3] - T_gt[:3, 3], dr])


def nees(T_est, T_gt, covariance) -> float:
    """``e^T C^-1 e`` of one estimate; NaN when ``covariance`` is missing or not positive definite."""
    if covariance is None:
        return float("nan")
    C = np.asarray(covariance, dtype=np.float64)
    if C.shape != (DOF, DOF) or not np.all(np.isfinite(C)):
        return float("nan")
    e = pose_error_vector(T_est, T_gt)
    try:
        L = np.linalg.cholesky(0.5 * (C + C.T))
    except np.linalg.LinAlgError:
        return float("nan")
    z = np.linalg.solve(L, e)
    return float(z @ z)


def consistency(values) -> dict | None:
    """Figures of a set of per-frame NEES values (computed with the covariance as published).

    Returns None when no frame has one; else a JSON-ready dict:

    * ``frames``: frames with a NEES;
    * ``mean_nees``, ``median_nees``: 6 for a consistent covariance;
    * ``share_within_95``: the share of frames with ``NEES <= 12.59`` (0.95 for a consistent one);
    * ``scale_for_95``: the factor on the covariance that would make that share 95 % (the 95th
      percentile of NEES over 12.59): above 1, the covariance is optimistic by that much.
    """
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if not len(v):
        return None
    return {
        "frames": int(len(v)),
        "mean_nees": float(np.mean(v)),
        "median_nees": float(np.median(v)),
        "share_within_95": float(np.mean(v <= NEES_95)),
        "scale_for_95": float(np.quantile(v, TARGET_SHARE) / NEES_95),
        "nees_95_bound": NEES_95,
    }
