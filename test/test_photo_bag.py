"""``gsvisloc make-bag --photos``: a posed photo set written as a bag that evaluate-bag reads back."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from gsvisloc_ros.camera import PinholeCamera, invert_pose, look_at
from gsvisloc_ros.cli import main
from gsvisloc_ros.evaluation.bags import inspect_bag, read_frames
from gsvisloc_ros.io.photosets import load_photo, load_photo_set
from gsvisloc_ros.render import render
from gsvisloc_ros.synthetic import make_scene

CAMERA = PinholeCamera(150.0, 152.0, 79.5, 59.5, 160, 120)
DISTORTION = {"k1": -0.12, "k2": 0.03, "p1": 0.001, "p2": -0.0005}


@pytest.fixture(scope="module")
def photo_set(tmp_path_factory):
    """Three renders of the tabletop saved as photos, with a transforms.json that gives a distortion."""
    root = tmp_path_factory.mktemp("photos")
    (root / "images").mkdir()
    gmap = make_scene("tabletop", seed=3, detail=0.5)
    gl = np.diag([1.0, -1.0, -1.0, 1.0])  # transforms.json stores OpenGL camera axes
    frames, poses = [], []
    for i, eye in enumerate([(0.9, 0.5, 0.6), (-0.7, 0.6, 0.4), (0.2, -0.9, 0.7)]):
        T = look_at(eye, (0.0, 0.0, 0.1), up=(0, 0, 1))
        rgb = render(gmap, CAMERA, invert_pose(T)).rgb_u8
        cv2.imwrite(str(root / "images" / f"{i:04d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        frames.append({"file_path": f"images/{i:04d}.png", "transform_matrix": (T @ gl).tolist()})
        poses.append(T)
    (root / "transforms.json").write_text(json.dumps({
        "fl_x": CAMERA.fx, "fl_y": CAMERA.fy, "cx": CAMERA.cx + 0.5, "cy": CAMERA.cy + 0.5,
        "w": CAMERA.width, "h": CAMERA.height, **DISTORTION, "frames": frames}))  # fmt: skip
    return root, poses


def test_photos_become_a_bag_with_their_distortion_and_poses(photo_set, tmp_path, capsys):
    root, poses = photo_set
    assert main(["make-bag", "--photos", str(root), "--out", str(tmp_path / "bag"), "--rate", "2"]) == 0
    assert "wrote 3 frames (photos of" in capsys.readouterr().out
    contents = inspect_bag(tmp_path / "bag")
    assert contents.image_count == 3 and contents.gt_topic == "/ground_truth/camera_pose"
    frames = list(read_frames(contents, keep_raw=True))
    photos = load_photo_set(root).photos
    for frame, photo, T in zip(frames, photos, poses, strict=True):
        assert not frame.problem, frame.problem
        np.testing.assert_allclose(frame.T_gt, T, atol=1e-6)
        assert frame.model.distortion_model == "plumb_bob"
        np.testing.assert_allclose(frame.model.D[:4], list(DISTORTION.values()))
        np.testing.assert_allclose(frame.camera.K, photo.camera.K)
        # The bag's decoder undistorts the photo as the photo set's reader does.
        _, expected = load_photo(photo)
        diff = np.abs(frame.image.astype(float) - np.round(expected * 255))
        assert np.percentile(diff, 99) <= 2 and diff.mean() < 0.5
    assert (frames[1].stamp_ns - frames[0].stamp_ns) == 500_000_000  # --rate 2


def test_a_bad_photo_set_is_a_clear_error_and_leaves_no_bag(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["make-bag", "--photos", str(tmp_path / "empty"), "--out", str(tmp_path / "bag")]) != 0
    assert capsys.readouterr().err.strip()
    assert not (tmp_path / "bag").exists()
