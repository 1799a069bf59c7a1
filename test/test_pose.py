"""PnP + RANSAC, refinement, covariance and acceptance on synthetic scenes with a known pose."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from gsvisloc_ros.camera import PinholeCamera, invert_pose, look_at, pose_errors, transform_points
from gsvisloc_ros.pose import (
    PnPConfig,
    PoseAcceptance,
    PoseEstimate,
    PoseGeometry,
    estimate_pose,
    pose_covariance,
    pose_geometry,
    reprojection_jacobian,
)

# Non-integer principal point: a half-pixel convention slip would show up as a pose error.
CAMERA = PinholeCamera(fx=500.0, fy=510.0, cx=319.3, cy=241.7, width=640, height=480)
BACKENDS = ["poselib", "opencv"]


def make_scene(n: int, noise_px: float, outlier_ratio: float, seed: int = 0):
    """(T_world_camera, points3d [n,3], points2d [n,2], is_inlier [n]) seen by CAMERA."""
    rng = np.random.default_rng(seed)
    T = look_at(rng.normal(size=3) * 0.5 + [0.0, 0.0, -4.0], rng.normal(size=3) * 0.1)
    points = rng.uniform(-1.5, 1.5, (n * 4, 3))
    uv, z = CAMERA.project(transform_points(invert_pose(T), points))
    keep = CAMERA.in_image(uv) & (z > 0.1)
    points, uv = points[keep][:n], uv[keep][:n]
    assert len(points) == n
    uv = uv + rng.normal(scale=noise_px, size=uv.shape) if noise_px > 0 else uv
    inlier = np.ones(n, dtype=bool)
    k = int(round(outlier_ratio * n))
    uv[:k] = rng.uniform([-0.5, -0.5], [639.5, 479.5], (k, 2))
    inlier[:k] = False
    return T, points, uv, inlier


@pytest.mark.parametrize("backend", BACKENDS)
def test_recovers_pose_with_noise_and_outliers(backend):
    T, X, uv, truth = make_scene(500, noise_px=0.5, outlier_ratio=0.4, seed=1)
    est = estimate_pose(X, uv, CAMERA, PnPConfig(backend=backend))
    assert est.success and est.backend == backend, est.message
    dt, dr = pose_errors(est.T_world_camera, T)
    assert dt < 0.01 and dr < 0.1, (dt, dr)  # scene ~4 units away
    # Inliers: nearly all true inliers found, and the few outliers within 4 px are all that slip in.
    assert (est.inliers & truth).sum() >= 0.97 * truth.sum()
    assert (est.inliers & ~truth).sum() <= 5
    assert est.num_inliers == est.inliers.sum() and est.num_matches == 500
    assert 0.3 < est.rmse_px < 1.0  # 0.5 px noise per axis -> ~0.7 px RMS
    assert est.inlier_ratio == pytest.approx(est.num_inliers / 500)


@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_free_data_has_no_half_pixel_bias(backend):
    T, X, uv, _ = make_scene(200, noise_px=0.0, outlier_ratio=0.0, seed=2)
    est = estimate_pose(X, uv, CAMERA, PnPConfig(backend=backend))
    dt, dr = pose_errors(est.T_world_camera, T)
    assert dt < 1e-6 and dr < 1e-6, (dt, dr)
    assert est.rmse_px < 1e-6
    # The same data shifted by half a pixel is clearly detectable, so the check above has teeth.
    shifted = estimate_pose(X, uv + 0.5, CAMERA, PnPConfig(backend=backend))
    assert pose_errors(shifted.T_world_camera, T)[1] > 1e-3


def test_opencv_is_the_fallback_when_poselib_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "poselib", None)  # import poselib -> ImportError
    T, X, uv, _ = make_scene(300, noise_px=0.5, outlier_ratio=0.3, seed=3)
    est = estimate_pose(X, uv, CAMERA, PnPConfig(backend="auto"))
    assert est.success and est.backend == "opencv"
    assert pose_errors(est.T_world_camera, T)[0] < 0.02


def test_initial_pose_is_accepted():
    T, X, uv, _ = make_scene(300, noise_px=0.5, outlier_ratio=0.5, seed=4)
    est = estimate_pose(X, uv, CAMERA, T_world_camera_init=T)
    assert est.success and pose_errors(est.T_world_camera, T)[0] < 0.02


def test_jacobian_matches_finite_differences():
    T, X, _, _ = make_scene(50, 0.0, 0.0, seed=5)
    J = reprojection_jacobian(X, CAMERA, T)
    uv0, _ = CAMERA.project(transform_points(invert_pose(T), X))
    h = 1e-6
    for k in range(6):
        delta = np.zeros(6)
        delta[k] = h
        Tp = T.copy()
        Tp[:3, 3] += delta[:3]  # camera centre moves in the world frame
        Tp[:3, :3] = Rotation.from_rotvec(delta[3:]).as_matrix() @ T[:3, :3]  # rotation about world axes
        uvp, _ = CAMERA.project(transform_points(invert_pose(Tp), X))
        np.testing.assert_allclose(J[:, k], ((uvp - uv0) / h).ravel(), rtol=1e-4, atol=1e-3)


def _translation_std(n: int, noise: float, seed: int) -> float:
    T, X, uv, _ = make_scene(n, noise, 0.0, seed)
    est = estimate_pose(X, uv, CAMERA)
    cov = est.covariance
    assert cov is not None and cov.shape == (6, 6)
    np.testing.assert_allclose(cov, cov.T, atol=1e-15)
    assert np.all(np.linalg.eigvalsh(cov) > 0)
    return float(np.sqrt(np.trace(cov[:3, :3])))


def test_covariance_is_spd_and_shrinks_with_points_and_grows_with_noise():
    few = np.median([_translation_std(100, 0.5, s) for s in range(3)])
    many = np.median([_translation_std(1600, 0.5, s) for s in range(3)])
    assert 2.5 < few / many < 6.0  # ~sqrt(16) = 4
    quiet = np.median([_translation_std(400, 0.25, s) for s in range(3)])
    loud = np.median([_translation_std(400, 2.0, s) for s in range(3)])
    assert 5.0 < loud / quiet < 12.0  # ~8


def test_covariance_predicts_the_spread_of_estimates():
    rng = np.random.default_rng(6)
    T, X, uv0, _ = make_scene(150, 0.0, 0.0, seed=6)
    deltas, predicted = [], []
    for _ in range(150):
        est = estimate_pose(X, uv0 + rng.normal(scale=1.0, size=uv0.shape), CAMERA, PnPConfig(loss="trivial"))
        Te = est.T_world_camera
        rot = Rotation.from_matrix(Te[:3, :3] @ T[:3, :3].T).as_rotvec()
        deltas.append(np.concatenate([Te[:3, 3] - T[:3, 3], rot]))
        predicted.append(est.covariance)
    empirical = np.std(np.array(deltas), axis=0)
    model = np.sqrt(np.diag(np.mean(predicted, axis=0)))
    np.testing.assert_allclose(empirical, model, rtol=0.3)


def test_pose_covariance_needs_four_points():
    T, X, uv, _ = make_scene(10, 0.5, 0.0)
    assert pose_covariance(X[:3], uv[:3], CAMERA, T) is None
    assert pose_covariance(X, uv, CAMERA, T).shape == (6, 6)


@pytest.mark.parametrize("n", [0, 3, 5])
def test_too_few_points_is_a_failed_estimate(n):
    T, X, uv, _ = make_scene(10, 0.5, 0.0)
    est = estimate_pose(X[:n], uv[:n], CAMERA)
    assert not est.success and est.T_world_camera is None
    assert "too few" in est.message
    assert est.inliers.shape == (n,) and est.num_inliers == 0
    ok, reason = PoseAcceptance().check(est)
    assert not ok and "too few" in reason


def test_non_finite_correspondences_are_ignored():
    T, X, uv, _ = make_scene(100, 0.3, 0.0, seed=7)
    X[:10] = np.nan
    uv[10:20] = np.inf
    est = estimate_pose(X, uv, CAMERA)
    assert est.success and not est.inliers[:20].any() and est.inliers[20:].sum() >= 75
    assert pose_errors(est.T_world_camera, T)[0] < 0.05


def test_random_correspondences_are_rejected():
    rng = np.random.default_rng(8)
    X = rng.uniform(-1, 1, (200, 3)) + [0, 0, 4]
    uv = rng.uniform([0, 0], [640, 480], (200, 2))
    est = estimate_pose(X, uv, CAMERA)
    ok, reason = PoseAcceptance().check(est)
    assert not ok and reason != "ok"


def test_malformed_input_raises():
    with pytest.raises(ValueError, match="same N"):
        estimate_pose(np.zeros((5, 3)), np.zeros((4, 2)), CAMERA)
    with pytest.raises(ValueError, match=r"\[N,3\]"):
        estimate_pose(np.zeros((5, 2)), np.zeros((5, 2)), CAMERA)
    with pytest.raises(ValueError):
        PnPConfig(backend="magic")
    with pytest.raises(ValueError):
        PnPConfig(min_points=3)


FIRM = PoseGeometry(coverage=0.5, position_uncertainty=0.001, rotation_uncertainty_deg=0.05)


def _estimate(num_inliers=100, num_matches=200, rmse=1.0, covariance=None, geometry=FIRM) -> PoseEstimate:
    inliers = np.zeros(num_matches, dtype=bool)
    inliers[:num_inliers] = True
    return PoseEstimate(True, np.eye(4), inliers, num_inliers, num_matches, rmse, covariance, "poselib",
                        geometry=geometry)


def test_acceptance_reasons():
    accept = PoseAcceptance(min_inliers=30, min_inlier_ratio=0.2, max_rmse_px=3.0)
    assert accept.check(_estimate()) == (True, "ok")
    ok, reason = accept.check(_estimate(num_inliers=20, num_matches=50))
    assert not ok and reason == "too few inliers: 20 < 30"
    ok, reason = accept.check(_estimate(num_inliers=40, num_matches=400))
    assert not ok and reason.startswith("inlier ratio too low: 0.10")
    ok, reason = accept.check(_estimate(rmse=4.5))
    assert not ok and reason == "reprojection RMSE too high: 4.50 px > 3.00 px"
    ok, reason = accept.check(_estimate(num_inliers=10, num_matches=100, rmse=float("nan")))
    assert not ok and reason.count(";") == 2  # all three failures listed
    failed = estimate_pose(np.zeros((2, 3)), np.zeros((2, 2)), CAMERA)
    ok, reason = accept.check(failed)
    assert not ok and reason.startswith("no pose: too few valid correspondences")


def _patch_scene(n: int, window_px: float, depths=(3.5, 4.5), seed: int = 0):
    """(T, points3d, points2d) of n points seen inside a window_px square at the image centre, at
    depths drawn from ``depths`` (exact projections)."""
    rng = np.random.default_rng(seed)
    T = look_at([0.0, 0.0, -4.0], [0.0, 0.0, 0.0])
    uv = np.array([CAMERA.cx, CAMERA.cy]) + rng.uniform(-window_px / 2, window_px / 2, (n, 2))
    depth = rng.uniform(*depths, n)
    rays = np.stack([(uv[:, 0] - CAMERA.cx) / CAMERA.fx, (uv[:, 1] - CAMERA.cy) / CAMERA.fy, np.ones(n)], axis=1)
    return T, transform_points(T, rays * depth[:, None]), uv


def test_inliers_spread_over_the_image_pin_the_pose_down():
    T, X, uv = _patch_scene(300, window_px=460)
    g = pose_geometry(X, uv, CAMERA, T)
    assert 0.6 < g.coverage < 0.75  # a 460 px square in a 640x480 image
    assert g.position_uncertainty < 0.002 and g.rotation_uncertainty_deg < 0.1
    ok, reason = PoseAcceptance().check(_estimate(geometry=g))
    assert ok, reason


def test_inliers_on_a_small_flat_patch_are_weak_geometry_however_many():
    """A poster seen from afar: every inlier on one small, flat patch."""
    T, X, uv = _patch_scene(300, window_px=460, depths=(4.0, 4.0))
    firm = pose_geometry(X, uv, CAMERA, T)
    T, X, uv = _patch_scene(300, window_px=100, depths=(4.0, 4.0))
    weak = pose_geometry(X, uv, CAMERA, T)
    assert weak.coverage < 0.035
    # The uncertainty grows as the patch shrinks: the tilt / sideways-shift ambiguity.
    assert weak.position_uncertainty > 10 * firm.position_uncertainty
    assert weak.rotation_uncertainty_deg > 10 * firm.rotation_uncertainty_deg
    # Ten times as many matches on the same patch do not make it firm: at most 300 count.
    T, X, uv = _patch_scene(3000, window_px=100, depths=(4.0, 4.0))
    many = pose_geometry(X, uv, CAMERA, T)
    assert many.position_uncertainty == pytest.approx(weak.position_uncertainty, rel=0.3)
    ok, reason = PoseAcceptance().check(_estimate(num_inliers=3000, num_matches=3000, geometry=many))
    assert not ok and reason.startswith("weak geometry: inliers cover"), reason
    assert "position uncertainty" in reason and "rotation uncertainty" in reason


def test_degenerate_inliers_have_unbounded_uncertainty():
    T, X, uv = _patch_scene(3, window_px=100)
    assert pose_geometry(X, uv, CAMERA, T) == PoseGeometry(0.0, float("inf"), float("inf"))
    line = np.stack([np.linspace(100, 500, 20), np.full(20, 240.0)], axis=1)
    T, X, _ = _patch_scene(20, window_px=100)
    assert pose_geometry(X, line, CAMERA, T).coverage == 0.0  # collinear pixels span no area
    assert PoseGeometry(0.1, float("inf"), 1.0).to_dict()["position_uncertainty"] is None  # JSON-safe


def test_each_geometry_test_can_be_turned_off():
    weak = PoseGeometry(coverage=0.02, position_uncertainty=0.05, rotation_uncertainty_deg=3.0)
    off = PoseAcceptance(min_coverage=None, max_position_uncertainty=None, max_rotation_uncertainty_deg=None)
    assert off.check(_estimate(geometry=weak)) == (True, "ok")
    assert off.check(_estimate(geometry=None)) == (True, "ok")
    ok, reason = PoseAcceptance(min_coverage=None, max_rotation_uncertainty_deg=None).check(_estimate(geometry=weak))
    assert not ok and reason.startswith("weak geometry: position uncertainty 5.00 % of the depth")
    ok, reason = PoseAcceptance().check(_estimate(geometry=None))
    assert not ok and reason == "weak geometry: not measured"


def test_estimates_carry_their_inliers_and_geometry():
    T, X, uv, truth = make_scene(300, noise_px=0.5, outlier_ratio=0.3, seed=4)
    est = estimate_pose(X, uv, CAMERA)
    assert est.success and len(est.points3d) == len(est.points2d) == est.num_inliers
    np.testing.assert_array_equal(est.points3d, X[est.inliers])
    assert est.geometry == pose_geometry(X[est.inliers], uv[est.inliers], CAMERA, est.T_world_camera)
