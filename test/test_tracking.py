"""The tracking policy and jump gate of a camera stream, without ROS (the node and bag replay share them)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gsvisloc_ros.camera import invert_pose
from gsvisloc_ros.tracking import JumpGate, Tracker, TrackingConfig


def _at(x: float, yaw_deg: float = 0.0) -> np.ndarray:
    T = np.eye(4)
    c, s = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
    T[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    T[0, 3] = x
    return T


def test_jump_gate_holds_back_jumps_until_confirmed():
    gate = JumpGate(max_translation=1.0, max_rotation_deg=30.0, window=5.0, confirmations=2)
    assert gate.check(_at(0.0), 0.0)[0]  # the first pose
    assert gate.check(_at(0.5), 1.0)[0]  # a plausible move
    ok, why = gate.check(_at(5.0), 2.0)
    assert not ok and "jump rejected" in why and "1/2" in why
    ok, why = gate.check(_at(9.0), 3.0)  # jumps, but not consistent with the held one
    assert not ok and "1/2" in why
    ok, why = gate.check(_at(9.1), 4.0)  # consistent: confirmed
    assert ok and "confirmed" in why
    assert not gate.check(_at(9.1, 90.0), 5.0)[0]  # turning too far is a jump too
    assert gate.check(_at(9.2), 5.5)[0]  # back near the last accepted pose: held jump forgotten
    assert gate.check(_at(50.0), 20.0)[0]  # beyond the window: anything goes
    gate.reset()
    assert gate.check(_at(-50.0), 21.0)[0]
    assert JumpGate(1.0, 30.0, 5.0, 1).check(_at(0.0), 0.0)[0]
    off = JumpGate(0.0, 0.0, 5.0, 3)
    assert off.check(_at(0.0), 0.0)[0] and off.check(_at(100.0, 170.0), 0.1)[0]


def test_a_trusted_pose_is_the_prior_of_the_next_frames_until_track_timeout():
    tracker = Tracker(TrackingConfig(track_timeout=2.0))
    assert tracker.prior(10.0, "cam") == (None, "")  # nothing trusted yet: a global search
    assert tracker.admit(_at(0.0), 10.0, "cam") == (True, "")
    prior, note = tracker.prior(11.0, "cam")
    assert np.array_equal(prior, _at(0.0)) and "tracking from the last pose" in note
    assert tracker.prior(11.0, "other_cam") == (None, "")  # a track belongs to one camera frame
    assert tracker.prior(12.5, "cam") == (None, "")  # beyond track_timeout
    tracker.admit(_at(0.1), 12.0, "cam")
    assert np.array_equal(tracker.prior(12.5, "cam")[0], _at(0.1))  # the latest trusted pose
    tracker.reset()
    assert tracker.prior(12.5, "cam") == (None, "")
    tracker.configure(TrackingConfig(track_timeout=0.0))
    tracker.admit(_at(0.2), 13.0, "cam")
    assert tracker.prior(13.0, "cam") == (None, "")  # 0: no tracking


def test_the_prior_is_moved_by_odometry_when_known_then_and_now():
    tracker = Tracker()
    T_odom_then, T_odom_now = _at(1.0), _at(1.5, 10.0)
    tracker.admit(_at(3.0), 0.0, "cam", T_odom_camera=T_odom_then)
    prior, note = tracker.prior(0.5, "cam", T_odom_now)
    np.testing.assert_allclose(prior, _at(3.0) @ invert_pose(T_odom_then) @ T_odom_now)
    assert "odometry" in note
    assert np.array_equal(tracker.prior(0.5, "cam")[0], _at(3.0))  # no odometry now: the last pose


def test_a_jump_is_not_trusted_and_does_not_move_the_track():
    tracker = Tracker(TrackingConfig(max_jump_translation=1.0, jump_confirmations=2))
    tracker.admit(_at(0.0), 0.0, "cam")
    trusted, note = tracker.admit(_at(5.0), 0.5, "cam")
    assert not trusted and "jump rejected" in note
    assert np.array_equal(tracker.prior(0.6, "cam")[0], _at(0.0))
    tracker.configure(TrackingConfig(max_jump_translation=10.0))
    assert tracker.admit(_at(5.0), 0.7, "cam")[0]
    assert np.array_equal(tracker.prior(0.8, "cam")[0], _at(5.0))


@pytest.mark.parametrize("changes", [{"track_timeout": -1.0}, {"max_jump_window": float("nan")},
                                     {"jump_confirmations": 0}])
def test_bad_settings_are_refused(changes):
    with pytest.raises(ValueError):
        TrackingConfig(**changes)
