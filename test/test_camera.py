"""The conventions of camera.py: pixel centres, OpenCV axes, pose parsing, look_at."""

from __future__ import annotations

import numpy as np
import pytest

from gsvisloc_ros.camera import (
    PinholeCamera,
    invert_pose,
    look_at,
    parse_pose,
    pose_errors,
    pose_from_xyz_quat,
    pose_to_xyz_quat,
    transform_points,
)


def test_principal_point_projects_to_the_pixel_centre_convention():
    cam = PinholeCamera(500.0, 500.0, 319.5, 239.5, 640, 480)
    uv, z = cam.project(np.array([[0.0, 0.0, 2.0]]))
    assert uv[0].tolist() == [319.5, 239.5] and z[0] == 2.0
    # OpenCV axes: +x is right (larger u), +y is down (larger v).
    uv, _ = cam.project(np.array([[0.1, 0.2, 1.0]]))
    assert uv[0, 0] > 319.5 and uv[0, 1] > 239.5
    assert np.allclose(cam.backproject(uv, [1.0]), [[0.1, 0.2, 1.0]])


@pytest.mark.parametrize("bad", [(0, 500, 10, 10, 20, 20), (500, -1, 10, 10, 20, 20), (500, 500, 10, 10, 0, 20),
                                 (np.nan, 500, 10, 10, 20, 20)])
def test_invalid_intrinsics_are_refused(bad):
    with pytest.raises(ValueError):
        PinholeCamera(*bad)


def test_scaled_camera_keeps_pixel_centres_consistent():
    cam = PinholeCamera(500.0, 500.0, 319.5, 239.5, 640, 480)
    half = cam.scaled(0.5)
    assert half.size == (320, 240)
    assert (half.cx, half.cy) == (159.5, 119.5)  # the image centre stays the image centre


def test_pose_round_trip_and_inverse():
    rng = np.random.default_rng(0)
    for _ in range(10):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        values = np.concatenate([rng.normal(size=3), q])
        T = pose_from_xyz_quat(values)
        back = pose_to_xyz_quat(T)
        assert np.allclose(back[:3], values[:3])
        assert np.isclose(abs(back[3:] @ q), 1.0)  # same rotation (q and -q)
        assert np.allclose(T @ invert_pose(T), np.eye(4))


def test_parse_pose_accepts_spaces_and_commas_and_refuses_garbage():
    T = parse_pose("1 2 3, 0 0 0 1")
    assert np.allclose(T[:3, 3], [1, 2, 3]) and np.allclose(T[:3, :3], np.eye(3))
    for bad in ("1 2 3", "a b c d e f g", "0 0 0 0 0 0 0"):
        with pytest.raises(ValueError):
            parse_pose(bad)


def test_look_at_puts_the_target_on_the_optical_axis_with_up_at_the_top():
    eye, target = np.array([3.0, 1.0, 2.0]), np.array([0.0, 0.0, 0.5])
    T_world_camera = look_at(eye, target, up=(0, 0, 1))
    p_cam = transform_points(invert_pose(T_world_camera), [target, target + [0, 0, 0.3]])
    assert np.allclose(p_cam[0, :2], 0.0) and p_cam[0, 2] > 0
    assert p_cam[1, 1] < 0  # a point above the target appears higher in the image (smaller v)
    assert np.allclose(T_world_camera[:3, 3], eye)
    assert np.isclose(np.linalg.det(T_world_camera[:3, :3]), 1.0)


def test_pose_errors():
    T = pose_from_xyz_quat([0, 0, 0, 0, 0, 0, 1])
    R = pose_from_xyz_quat([0.3, 0, 0.4, 0, 0, np.sin(np.radians(5)), np.cos(np.radians(5))])
    dt, dr = pose_errors(R, T)
    assert dt == pytest.approx(0.5) and dr == pytest.approx(10.0)


def test_level_up_finds_the_up_of_level_cameras_in_a_ring_looking_down():
    from gsvisloc_ros.camera import level_up

    rng = np.random.default_rng(0)
    up = np.array([0.2, -0.9, 0.3]) / np.linalg.norm([0.2, -0.9, 0.3])
    side = np.cross(up, [1.0, 0.0, 0.0])
    side /= np.linalg.norm(side)
    other = np.cross(up, side)
    poses = []
    for a in np.linspace(0, np.pi, 12):  # half a ring 40 degrees above the object
        eye = 2.0 * (np.cos(a) * side + np.sin(a) * other) + 1.7 * up
        T = look_at(eye, np.zeros(3), up)
        roll = np.radians(rng.uniform(-3, 3))  # hand-held: a few degrees of roll
        T[:3, :3] = T[:3, :3] @ np.array([[np.cos(roll), -np.sin(roll), 0], [np.sin(roll), np.cos(roll), 0], [0, 0, 1]])
        poses.append(T)
    found, max_roll = level_up(poses)
    assert np.degrees(np.arccos(found @ up)) < 1.5
    assert 1.0 < max_roll < 4.0
    # Averaging the image-up axes of half a ring looking down gives a tilted axis; this does not.
    mean_up = -np.mean([T[:3, 1] for T in poses], axis=0)
    assert np.degrees(np.arccos(mean_up @ up / np.linalg.norm(mean_up))) > 10
    with pytest.raises(ValueError, match="parallel"):
        level_up([poses[0], poses[0]])
