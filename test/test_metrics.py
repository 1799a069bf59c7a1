"""Pose-error metrics: hand-computed cases, strict thresholds, negatives and empty input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from gsvisloc_ros.camera import make_pose
from gsvisloc_ros.evaluation import metrics
from gsvisloc_ros.evaluation.metrics import (
    error_cdf,
    pose_error,
    rotation_error_deg,
    scene_scale,
    summarise,
    threshold_key,
    translation_error,
)


def _rz(deg: float) -> np.ndarray:
    return Rotation.from_euler("z", deg, degrees=True).as_matrix()


def test_translation_error_is_the_distance_of_camera_centres():
    # Same centre, different rotation: no translation error, even though the [R|t] extrinsics differ.
    a, b = make_pose(_rz(40), [1, 2, 3]), make_pose(np.eye(3), [1, 2, 3])
    assert translation_error(a, b) == 0.0
    assert translation_error(make_pose(np.eye(3), [3, 4, 0]), np.eye(4)) == pytest.approx(5.0)
    assert translation_error(make_pose(np.eye(3), [3, 4, 0])[:3], np.eye(4)) == pytest.approx(5.0)  # 3x4 accepted


@pytest.mark.parametrize("est,gt,angle", [(30, 0, 30), (10, -20, 30), (-170, 10, 180), (179, -179, 2), (0, 0, 0)])
def test_rotation_error_is_the_angle_of_R_est_R_gt_T(est, gt, angle):
    assert rotation_error_deg(make_pose(_rz(est), [0, 0, 0]), make_pose(_rz(gt), [5, 5, 5])) == pytest.approx(
        angle, abs=1e-9
    )


def test_rotation_error_is_accurate_for_tiny_angles():
    tiny = 1e-7
    R = Rotation.from_rotvec(np.radians(tiny) * np.array([1.0, 2.0, 2.0]) / 3).as_matrix()
    assert rotation_error_deg(make_pose(R, [0, 0, 0]), np.eye(4)) == pytest.approx(tiny, rel=1e-6)


def test_rotation_error_of_a_general_pair():
    Ra = Rotation.from_euler("xyz", [10, 20, 30], degrees=True).as_matrix()
    Rb = Rotation.from_euler("xyz", [-5, 25, 31], degrees=True).as_matrix()
    expected = np.degrees(Rotation.from_matrix(Ra @ Rb.T).magnitude())
    t, r = pose_error(make_pose(Ra, [0, 0, 1]), make_pose(Rb, [0, 0, 0]))
    assert t == pytest.approx(1.0) and r == pytest.approx(expected)


def test_bad_pose_shape_is_refused():
    with pytest.raises(ValueError, match="4x4"):
        translation_error(np.eye(3), np.eye(4))


def test_scene_scale_is_the_camera_to_centre_distance():
    assert scene_scale(make_pose(_rz(30), [1, 2, 2]), [0, 0, 0]) == pytest.approx(3.0)
    assert scene_scale(make_pose(np.eye(3), [1, 1, 1]), np.array([1.0, 1.0, 5.0])) == pytest.approx(4.0)


def test_threshold_keys():
    assert [threshold_key(a, b, True) for a, b in metrics.RELATIVE_THRESHOLDS] == [
        "1pct_1deg",
        "2pct_2deg",
        "5pct_5deg",
    ]
    assert [threshold_key(a, b, False) for a, b in metrics.ABSOLUTE_THRESHOLDS] == ["5cm_5deg", "10cm_5deg"]


def test_summarise_hand_computed_run():
    # 4 positives (scale 2) and 2 negatives; frame 3 not localized; frame 2 accepted but 10% / 10 deg off.
    s = summarise(
        translation_errors=[0.01, 0.03, 0.2, None, None, None],
        rotation_errors_deg=[0.5, 1.5, 10.0, None, None, None],
        scales=[2.0, 2.0, 2.0, 2.0, None, None],
        accepted=[True, True, True, False, False, True],
        has_ground_truth=[True, True, True, True, False, False],
        latencies_ms=[100, 200, 300, 400, 500, 600],
    )
    assert (s["frames"], s["positives"], s["negatives"]) == (6, 4, 2)
    assert s["localized_fraction"] == pytest.approx(0.75)
    # Over localized frames: t (0.01, 0.03, 0.2), t% (0.5, 1.5, 10), rot (0.5, 1.5, 10).
    assert s["median_translation"] == pytest.approx(0.03)
    assert s["median_translation_pct_scale"] == pytest.approx(1.5)
    assert s["median_rotation_deg"] == pytest.approx(1.5)
    # With the failure as inf: medians of 4 values (middle two averaged).
    assert s["median_translation_all"] == pytest.approx(0.115)
    assert s["median_translation_pct_scale_all"] == pytest.approx(5.75)
    assert s["median_rotation_deg_all"] == pytest.approx(5.75)
    assert s["recall"] == pytest.approx(
        {"1pct_1deg": 0.25, "2pct_2deg": 0.5, "5pct_5deg": 0.5, "5cm_5deg": 0.5, "10cm_5deg": 0.5}
    )
    assert s["wrong_threshold"] == "5pct_5deg"
    assert (s["wrong_accepted_positives"], s["accepted_negatives"], s["wrong_accepted"]) == (1, 1, 2)
    # numpy's linear percentiles of 100..600: p50 = 350, p90 = 550, p99 = 595.
    assert s["latency_ms"] == pytest.approx({"p50": 350.0, "p90": 550.0, "p99": 595.0, "mean": 350.0})
    json.dumps(s, allow_nan=False)  # JSON-ready


def test_thresholds_are_strict_at_the_boundary():
    # Exactly on the thresholds (exact binary fractions of the scale): a miss; just inside: a hit.
    s = summarise([0.5, 0.5, 0.4999999, 0.0], [1.0, 0.999999, 0.999999, 5.0], scales=[50.0, 50.0, 50.0, 1.0])
    # Frame 0: t = 1% exactly -> miss; frame 1: t = 1% exactly -> miss; frame 2: hit; frame 3: rot = 5 exactly.
    assert s["recall"]["1pct_1deg"] == pytest.approx(0.25)
    assert s["recall"]["5pct_5deg"] == pytest.approx(0.75)
    a = summarise([0.05, 0.0499, 0.1, 0.0999], [1.0, 1.0, 1.0, 1.0])
    assert a["recall"]["5cm_5deg"] == pytest.approx(0.25)
    assert a["recall"]["10cm_5deg"] == pytest.approx(0.75)


def test_a_rejected_pose_is_a_miss_even_when_it_is_good():
    s = summarise([0.001], [0.01], scales=[1.0], accepted=[False])
    assert s["localized_fraction"] == 0.0 and s["recall"]["1pct_1deg"] == 0.0
    assert s["median_translation"] is None and s["median_translation_all"] is None
    assert s["wrong_accepted"] == 0


def test_without_scales_relative_metrics_are_undefined_and_absolute_ones_decide_wrong_poses():
    s = summarise([0.01, 0.5], [0.5, 0.5])
    assert s["recall"]["1pct_1deg"] is None and s["median_translation_pct_scale"] is None
    assert s["recall"]["10cm_5deg"] == pytest.approx(0.5)
    assert s["wrong_threshold"] == "10cm_5deg" and s["wrong_accepted"] == 1
    assert s["latency_ms"] is None


def test_only_negatives():
    s = summarise(
        [None, None], [None, None], accepted=[True, False], has_ground_truth=[False, False], latencies_ms=[10.0, 20.0]
    )
    assert s["positives"] == 0 and s["localized_fraction"] is None and s["median_rotation_deg"] is None
    assert all(v is None for v in s["recall"].values())
    assert s["wrong_accepted"] == 1 and s["latency_ms"]["p50"] == pytest.approx(15.0)


def test_empty_input():
    s = summarise([], [], scales=[], accepted=[], has_ground_truth=[], latencies_ms=[])
    assert (s["frames"], s["positives"], s["negatives"], s["wrong_accepted"]) == (0, 0, 0, 0)
    assert s["localized_fraction"] is None and s["median_translation"] is None and s["latency_ms"] is None
    assert all(v is None for v in s["recall"].values())
    json.dumps(s, allow_nan=False)


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="rotation_errors_deg"):
        summarise([0.1, 0.2], [1.0])
    with pytest.raises(ValueError, match="latencies_ms"):
        summarise([0.1], [1.0], latencies_ms=[1.0, 2.0])


def test_error_cdf_counts_strictly_below_and_failures_never():
    cdf = error_cdf([0.5, 1.0, None, float("nan"), float("inf")], [0.5, 1.0, 1.5, 1e9])
    assert cdf == pytest.approx([0.0, 0.2, 0.4, 0.4])
    assert error_cdf([], [1.0]).tolist() == [0.0]


def test_error_scale_is_the_distance_to_the_centre_around_objects_and_the_extent_in_rooms():
    from gsvisloc_ros.evaluation.metrics import ErrorScale, as_error_scale
    from gsvisloc_ros.scene import SceneGeometry

    near_centre = make_pose(np.eye(3), [0.01, 0.0, 0.0])
    around = ErrorScale.for_geometry(SceneGeometry(np.zeros(3), 2.0, 3.0, "object", 5.0))
    inside = ErrorScale.for_geometry(SceneGeometry(np.zeros(3), 2.0, 3.0, "inside_out", 2.0))
    assert around.of(near_centre) == pytest.approx(0.01) and around.name == "distance to the map centre"
    assert inside.of(near_centre) == 2.0 and inside.name == "map extent"
    assert "2 map units" in inside.describe()
    assert as_error_scale([1.0, 2.0, 3.0]) == ErrorScale((1.0, 2.0, 3.0))
    assert as_error_scale(inside) is inside
    with pytest.raises(ValueError, match="positive"):
        ErrorScale((0.0, 0.0, 0.0), 0.0)
