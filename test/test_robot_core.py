"""The ROS-free pieces of the robot-grade node: camera scheduling, the saved last pose, the fix quality,
the published covariance and its consistency figures."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from gsvisloc_ros import last_pose
from gsvisloc_ros.evaluation.consistency import NEES_95, consistency, nees, pose_error_vector
from gsvisloc_ros.quality import FALLBACK_COVARIANCE, fix_quality, published_covariance
from gsvisloc_ros.scheduling import FrameSlots


def _pose(rotvec=(0.0, 0.0, 0.0), t=(0.0, 0.0, 0.0)) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    T[:3, 3] = t
    return T


# ------------------------------------------------------------------------------ scheduling


def test_newest_frame_per_camera_taken_in_turn():
    slots = FrameSlots()
    assert slots.take() is None and not slots.pending()
    assert not slots.put("front", 1)
    assert slots.put("front", 2)  # replaced before it was taken: the caller counts a drop
    slots.put("rear", 10)
    slots.put("front", 3)
    assert slots.take() == ("front", 3)  # the newest of front
    slots.put("front", 4)
    assert slots.take() == ("rear", 10)  # rear's turn, although front has a newer frame
    assert slots.take() == ("front", 4)
    assert slots.take() is None
    # A fast camera cannot starve a slow one: rear gets every other turn while it has frames.
    order = []
    for i in range(6):
        slots.put("front", i)
        if i % 2 == 0:
            slots.put("rear", i)
        order.append(slots.take()[0])
    assert order.count("rear") == 3
    slots.put("rear", 1)
    slots.forget("rear")
    assert not slots.pending("rear") and slots.take() is None
    slots.put("front", 9)
    assert slots.clear() == 1 and len(slots) == 0


# ------------------------------------------------------------------------------ the saved last pose


def _saved(**changes) -> last_pose.SavedPose:
    values = dict(stamp=12.5, map_path="/maps/lab.ply", map_to_frame=(0, 0, 0, 0, 0, 0, 1), map_frame="map",
                  camera_frame="front_optical", T_map_camera=_pose((0.1, 0.2, 0.3), (1, 2, 3)),
                  base_frame="base_link", T_map_base=_pose((0, 0, 0.5), (1, 2, 0)))
    values.update(changes)
    return last_pose.SavedPose(**values)


def test_the_last_pose_round_trips_through_its_file(tmp_path):
    path = tmp_path / "state" / "last_pose.json"
    saved = _saved()
    last_pose.save(path, saved)
    assert json.loads(path.read_text())["version"] == 1
    back = last_pose.load(path)
    np.testing.assert_allclose(back.T_map_camera, saved.T_map_camera)
    np.testing.assert_allclose(back.T_map_base, saved.T_map_base)
    assert back.camera_frame == "front_optical" and back.stamp == 12.5
    assert back.same_map("/maps/lab.ply", [0, 0, 0, 0, 0, 0, 1]) and not back.same_map("/maps/other.ply",
                                                                                          [0, 0, 0, 0, 0, 0, 1])
    assert not back.same_map("/maps/lab.ply", [1, 0, 0, 0, 0, 0, 1])
    assert [p.name for p in path.parent.iterdir()] == ["last_pose.json"]  # no temporary file left
    # Without a base pose it still saves and loads.
    last_pose.save(path, _saved(T_map_base=None, base_frame=""))
    assert last_pose.load(path).T_map_base is None


def test_the_prior_is_the_saved_camera_or_the_saved_base_moved_to_another_camera():
    saved = _saved()
    np.testing.assert_allclose(saved.prior_for("front_optical", None), saved.T_map_camera)
    T_base_rear = _pose((0, 0, np.pi), (-0.2, 0, 0.3))
    np.testing.assert_allclose(saved.prior_for("rear_optical", T_base_rear), saved.T_map_base @ T_base_rear)
    assert saved.prior_for("rear_optical", None) is None
    assert _saved(T_map_base=None).prior_for("rear_optical", T_base_rear) is None


@pytest.mark.parametrize("content,why", [
    ("{not json", "is not JSON"),
    ('{"version": 7}', "is not a saved pose of version 1"),
    ('{"version": 1, "stamp": 1}', "misses or garbles a field"),
    ("[1, 2]", "is not a saved pose"),
])
def test_a_damaged_pose_file_is_refused_with_the_reason(tmp_path, content, why):
    path = tmp_path / "last_pose.json"
    path.write_text(content)
    with pytest.raises(last_pose.LastPoseError, match=why):
        last_pose.load(path)


def test_a_saved_pose_that_is_not_rigid_is_refused(tmp_path):
    data = _saved().to_dict()
    data["T_map_camera"][0][0] = 3.0
    path = tmp_path / "last_pose.json"
    path.write_text(json.dumps(data))
    with pytest.raises(last_pose.LastPoseError, match="T_map_camera is not a rigid transform"):
        last_pose.load(path)
    with pytest.raises(FileNotFoundError):
        last_pose.load(tmp_path / "missing.json")


# ------------------------------------------------------------------------------ quality and covariance


def _result(success=True, inliers=200, matches=250, rmse=0.5, source="prior"):
    return SimpleNamespace(success=success, num_inliers=inliers, num_matches=matches, reprojection_rmse_px=rmse,
                           coarse_source=source)


def test_the_quality_score_is_the_smallest_margin_over_the_thresholds():
    limits = dict(min_inliers=40, min_inlier_ratio=0.5, max_rmse_px=2.0)
    q = fix_quality(_result(), trusted=True, **limits)
    assert q.localized and q.mode == "tracking" and q.inliers == 200 and q.inlier_ratio == pytest.approx(0.8)
    assert q.score == pytest.approx(min(1.0, 0.6, 0.75))  # inliers saturate; the ratio is the weakest
    weak = fix_quality(_result(inliers=44, matches=50, source="views"), trusted=True, **limits)
    assert weak.mode == "global" and weak.score == pytest.approx(0.1)  # just above min_inliers
    assert fix_quality(_result(), trusted=False, **limits).score == 0.0  # held back: no pose
    failed = fix_quality(_result(success=False, inliers=3, matches=0, rmse=float("inf")), False, **limits)
    assert not failed.localized and failed.score == 0.0 and failed.inlier_ratio == 0.0


def test_the_published_covariance_is_scaled_and_never_missing():
    C = np.diag([1e-6, 2e-6, 3e-6, 1e-5, 1e-5, 1e-5])
    np.testing.assert_allclose(published_covariance(C, 40.0), 40.0 * C)
    np.testing.assert_allclose(published_covariance(None, 2.0), 2.0 * FALLBACK_COVARIANCE)
    with pytest.raises(ValueError, match="positive"):
        published_covariance(C, 0.0)


# ------------------------------------------------------------------------------ consistency


def test_the_error_vector_follows_the_covariance_convention():
    T_gt = _pose((0.3, -0.2, 0.1), (1.0, 2.0, 3.0))
    r, t = np.array([0.01, -0.02, 0.005]), np.array([0.1, 0.0, -0.05])
    T_est = np.eye(4)
    T_est[:3, :3] = Rotation.from_rotvec(r).as_matrix() @ T_gt[:3, :3]  # turned about the world axes
    T_est[:3, 3] = T_gt[:3, 3] + t
    np.testing.assert_allclose(pose_error_vector(T_est, T_gt), np.concatenate([t, r]), atol=1e-12)


def test_errors_drawn_from_the_covariance_give_a_95_percent_share_and_a_scale_of_one():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(6, 6))
    C = A @ A.T * 1e-4 + np.eye(6) * 1e-6
    T_gt = _pose((0.1, 0.2, 0.3), (1, 1, 1))
    values = []
    for e in rng.multivariate_normal(np.zeros(6), C, size=4000):
        T_est = np.eye(4)
        T_est[:3, :3] = Rotation.from_rotvec(e[3:]).as_matrix() @ T_gt[:3, :3]
        T_est[:3, 3] = T_gt[:3, 3] + e[:3]
        values.append(nees(T_est, T_gt, C))
    figures = consistency(values)
    assert figures["frames"] == 4000 and figures["nees_95_bound"] == pytest.approx(12.59, abs=0.01)
    assert figures["mean_nees"] == pytest.approx(6.0, rel=0.05)
    assert figures["share_within_95"] == pytest.approx(0.95, abs=0.01)
    assert figures["scale_for_95"] == pytest.approx(1.0, abs=0.05)
    # A covariance 10x too small: every NEES 10x larger, and the figures say so.
    optimistic = consistency([10.0 * v for v in values])
    assert optimistic["scale_for_95"] == pytest.approx(10.0, rel=0.05) and optimistic["share_within_95"] < 0.5
    assert np.mean(np.asarray(values) <= NEES_95) == pytest.approx(figures["share_within_95"])


def test_missing_or_broken_covariances_give_no_figure():
    T = _pose()
    assert np.isnan(nees(T, T, None)) and np.isnan(nees(T, T, np.zeros((6, 6))))
    assert np.isnan(nees(T, T, np.full((6, 6), np.nan)))
    assert consistency([float("nan"), None]) is None
