"""Pose-error metrics of a localization run (pure numpy).

Conventions (the project's, see ``camera.py``): poses are 4x4 ``T_world_camera`` (camera-to-world);
the last column is the camera centre in map units.

* Translation error: distance between the estimated and the true camera centre (map units).
* Rotation error: angle of ``R_est R_gt^T`` in degrees.
* Scale of a frame (:class:`ErrorScale`): maps come in arbitrary units, so translation errors are
  also given as a fraction (or percentage) of a scale. Around an object it is the distance from
  the frame's true camera centre to the scene centre. Inside a room a camera can stand near the
  centre, where that distance goes to zero, so inside-out maps use the map's extent instead: the
  median distance of its opaque Gaussians to the centre, the same for every frame.
* Recall at a threshold: fraction of the frames *with ground truth* whose estimate is accepted and
  within it, with strict ``<`` on both errors; a frame that was not localized is a miss.
* Wrong accepted: accepted estimates that are outside the loosest threshold (relative when scales
  are known, else absolute), plus any pose accepted on a frame without ground truth (a negative:
  an image that does not show the map). These are what a robot would act on and regret.

Example::

    t, r = pose_error(T_est, T_gt)
    summary = summarise([t], [r], scales=[scene_scale(T_gt, centre)], latencies_ms=[812.0])
    summary["recall"]["2pct_2deg"]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gsvisloc_ros.camera import rotation_error_deg

#: (fraction of the scene scale, degrees): recall thresholds for scenes in arbitrary units.
RELATIVE_THRESHOLDS: tuple[tuple[float, float], ...] = ((0.01, 1.0), (0.02, 2.0), (0.05, 5.0))
#: (map units taken as metres, degrees): the usual absolute thresholds (7-Scenes style).
ABSOLUTE_THRESHOLDS: tuple[tuple[float, float], ...] = ((0.05, 5.0), (0.10, 5.0))
#: Latency percentiles reported by :func:`summarise`.
LATENCY_PERCENTILES: tuple[int, ...] = (50, 90, 99)


def _pose(T) -> np.ndarray:
    a = np.asarray(T, dtype=np.float64)
    if a.shape == (3, 4):
        a = np.vstack([a, [0.0, 0.0, 0.0, 1.0]])
    if a.shape != (4, 4):
        raise ValueError(f"a pose must be a 4x4 (or 3x4) matrix, got shape {a.shape}")
    return a


def translation_error(T_est, T_gt) -> float:
    """Distance between the camera centres of two ``T_world_camera`` (map units)."""
    return float(np.linalg.norm(_pose(T_est)[:3, 3] - _pose(T_gt)[:3, 3]))


def pose_error(T_est, T_gt) -> tuple[float, float]:
    """(translation error in map units, rotation error in degrees) of two ``T_world_camera``."""
    return translation_error(T_est, T_gt), rotation_error_deg(_pose(T_est), _pose(T_gt))


def scene_scale(T_world_camera, centre) -> float:
    """Distance from the camera centre to the scene centre: the per-frame scale of relative errors."""
    return float(np.linalg.norm(_pose(T_world_camera)[:3, 3] - np.asarray(centre, dtype=np.float64).reshape(3)))


@dataclass(frozen=True)
class ErrorScale:
    """What relative translation errors are a fraction of (see the module docstring).

    ``extent`` ``None``: each frame's distance to ``centre`` (maps seen from around them);
    a number: that extent for every frame (inside-out maps: rooms, buildings).
    """

    centre: tuple[float, float, float]
    extent: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "centre", tuple(float(v) for v in np.asarray(self.centre).reshape(3)))
        if self.extent is not None and not (math.isfinite(self.extent) and self.extent > 0):
            raise ValueError(f"the map extent must be a positive number, got {self.extent}")

    @classmethod
    def for_geometry(cls, geometry) -> ErrorScale:
        """The scale for a map's :class:`~gsvisloc_ros.scene.SceneGeometry`: its extent when it is
        seen from within (``layout == "inside_out"``), else the distance to its centre."""
        return cls(geometry.centre, geometry.radius if geometry.layout == "inside_out" else None)

    def of(self, T_world_camera) -> float:
        """The scale of a frame whose true pose is ``T_world_camera``."""
        return self.extent if self.extent is not None else scene_scale(T_world_camera, self.centre)

    @property
    def name(self) -> str:
        return "map extent" if self.extent is not None else "distance to the map centre"

    def describe(self) -> str:
        """One sentence for reports."""
        if self.extent is not None:
            return (f"map extent (median distance of the opaque Gaussians to the map centre, the map is seen "
                    f"from within): {self.extent:.4g} map units for every frame")
        return "distance of each frame's true camera to the map's robust centre"

    def to_dict(self) -> dict:
        return {"name": self.name, "centre": list(self.centre), "extent": self.extent}


def as_error_scale(scale_or_centre) -> ErrorScale:
    """An :class:`ErrorScale`, or a centre (3 numbers) taken as distance-to-centre scale."""
    return scale_or_centre if isinstance(scale_or_centre, ErrorScale) else ErrorScale(scale_or_centre)


def threshold_key(translation: float, rotation_deg: float, relative: bool) -> str:
    """Name of a recall threshold: ``"2pct_2deg"`` (relative) or ``"10cm_5deg"`` (absolute)."""
    t = f"{translation * 100:g}"
    return f"{t}pct_{rotation_deg:g}deg" if relative else f"{t}cm_{rotation_deg:g}deg"


def _column(values, n: int, name: str, fill: float) -> np.ndarray:
    """Per-frame floats; ``None`` (or a missing column) becomes ``fill``."""
    if values is None:
        return np.full(n, fill)
    out = np.array([fill if v is None else v for v in values], dtype=np.float64)
    if out.shape != (n,):
        raise ValueError(f"{name} has {out.size} values for {n} frames")
    return out


def _flags(values, n: int, name: str, default: np.ndarray) -> np.ndarray:
    if values is None:
        return default
    out = np.asarray(values, dtype=bool).reshape(-1)
    if out.shape != (n,):
        raise ValueError(f"{name} has {out.size} values for {n} frames")
    return out


def _median(values: np.ndarray) -> float | None:
    return float(np.median(values)) if len(values) else None


def summarise(
    translation_errors: Sequence[float | None],
    rotation_errors_deg: Sequence[float | None],
    scales: Sequence[float | None] | None = None,
    accepted: Sequence[bool] | None = None,
    has_ground_truth: Sequence[bool] | None = None,
    latencies_ms: Sequence[float] | None = None,
    relative_thresholds: Sequence[tuple[float, float]] = RELATIVE_THRESHOLDS,
    absolute_thresholds: Sequence[tuple[float, float]] = ABSOLUTE_THRESHOLDS,
) -> dict:
    """Summary of one localization run, one entry per frame in every argument.

    Args:
        translation_errors: map units; ``None``, NaN or inf where there is no estimate (or no
            ground truth).
        rotation_errors_deg: degrees, the same.
        scales: per-frame scene scale (:func:`scene_scale`); ``None`` for no relative metrics.
        accepted: whether the localizer returned the pose as a success; default: the frames with
            finite errors.
        has_ground_truth: False for negatives (images that do not show the map); default: all True.
        latencies_ms: wall time per frame (every frame, negatives included).
        relative_thresholds: (fraction of the scale, degrees) pairs for ``recall``.
        absolute_thresholds: (map units, degrees) pairs for ``recall``.

    Returns a JSON-ready dict (``None`` where a value is undefined, e.g. medians of no frames):
    ``frames``, ``positives``, ``negatives``, ``localized_fraction`` (accepted with finite errors,
    over positives), ``median_translation``, ``median_translation_pct_scale``,
    ``median_rotation_deg`` (over localized positives), the same three with ``_all`` counting
    failures as infinite (``None`` when that median is infinite), ``recall`` {key: fraction of
    positives} with keys from :func:`threshold_key`, ``wrong_accepted`` (count),
    ``wrong_accepted_positives``, ``accepted_negatives``, ``wrong_threshold`` (the key it used) and
    ``latency_ms`` {"p50", "p90", "p99", "mean"}.
    """
    n = len(translation_errors)
    t = _column(translation_errors, n, "translation_errors", np.inf)
    r = _column(rotation_errors_deg, n, "rotation_errors_deg", np.inf)
    s = _column(scales, n, "scales", np.nan)
    finite = np.isfinite(t) & np.isfinite(r)
    acc = _flags(accepted, n, "accepted", finite)
    positive = _flags(has_ground_truth, n, "has_ground_truth", np.ones(n, dtype=bool))
    have_scale = scales is not None and bool(np.all(np.isfinite(s[positive]) & (s[positive] > 0)))

    localized = positive & acc & finite
    t_pos = np.where(localized, t, np.inf)[positive]
    r_pos = np.where(localized, r, np.inf)[positive]
    with np.errstate(divide="ignore", invalid="ignore"):
        rel_pos = t_pos / s[positive] if have_scale else np.full(len(t_pos), np.nan)
    loc_pos = localized[positive]
    n_pos = int(positive.sum())

    def median_all(values: np.ndarray) -> float | None:
        m = _median(values)
        return m if m is not None and math.isfinite(m) else None

    recall: dict[str, float | None] = {}
    for ft, fr in relative_thresholds:
        hit = (rel_pos < ft) & (r_pos < fr)
        recall[threshold_key(ft, fr, True)] = float(hit.mean()) if n_pos and have_scale else None
    for at, ar in absolute_thresholds:
        hit = (t_pos < at) & (r_pos < ar)
        recall[threshold_key(at, ar, False)] = float(hit.mean()) if n_pos else None

    # The loosest threshold: relative when every positive has a scale, else absolute.
    if have_scale and relative_thresholds:
        ft, fr = max(relative_thresholds)
        good = (rel_pos < ft) & (r_pos < fr)
        wrong_key = threshold_key(ft, fr, True)
    elif absolute_thresholds:
        at, ar = max(absolute_thresholds)
        good = (t_pos < at) & (r_pos < ar)
        wrong_key = threshold_key(at, ar, False)
    else:
        good, wrong_key = np.ones(n_pos, dtype=bool), None
    wrong_positives = int(np.sum(acc[positive] & ~good))  # accepted without finite errors counts too
    accepted_negatives = int(np.sum(acc & ~positive))

    latency = None
    if latencies_ms is not None:
        lat = np.asarray(latencies_ms, dtype=np.float64).reshape(-1)
        if lat.shape != (n,):
            raise ValueError(f"latencies_ms has {lat.size} values for {n} frames")
        if n:
            p = np.percentile(lat, LATENCY_PERCENTILES)
            latency = {f"p{q}": float(v) for q, v in zip(LATENCY_PERCENTILES, p, strict=True)}
            latency["mean"] = float(lat.mean())

    return {
        "frames": n,
        "positives": n_pos,
        "negatives": n - n_pos,
        "localized_fraction": float(loc_pos.mean()) if n_pos else None,
        "median_translation": _median(t_pos[loc_pos]),
        "median_translation_pct_scale": _median(100.0 * rel_pos[loc_pos]) if have_scale else None,
        "median_rotation_deg": _median(r_pos[loc_pos]),
        "median_translation_all": median_all(t_pos),
        "median_translation_pct_scale_all": median_all(100.0 * rel_pos) if have_scale else None,
        "median_rotation_deg_all": median_all(r_pos),
        "recall": recall,
        "wrong_accepted": wrong_positives + accepted_negatives,
        "wrong_accepted_positives": wrong_positives,
        "accepted_negatives": accepted_negatives,
        "wrong_threshold": wrong_key,
        "latency_ms": latency,
    }


def error_cdf(errors: Sequence[float | None], grid: Sequence[float]) -> np.ndarray:
    """Fraction of ``errors`` strictly below each value of ``grid`` (``None``/NaN/inf never are)."""
    e = np.array([np.inf if v is None else v for v in errors], dtype=np.float64)
    e = np.where(np.isnan(e), np.inf, e)
    g = np.asarray(grid, dtype=np.float64)
    if len(e) == 0:
        return np.zeros(len(g))
    return (e[None, :] < g[:, None]).mean(axis=1)
