"""Fine matching recovers sub-pixel shifts that keypoint detectors round away."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from gsvisloc_ros.camera import PinholeCamera, invert_pose, look_at
from gsvisloc_ros.fine_matching import FineMatchingConfig, refine_matches
from gsvisloc_ros.render import render
from gsvisloc_ros.synthetic import make_scene


@pytest.fixture(scope="module")
def textured_image():
    gmap = make_scene("tabletop", seed=4, detail=0.7)
    camera = PinholeCamera(500, 500, 319.5, 239.5, 640, 480)
    return render(gmap, camera, invert_pose(look_at((0.9, 0.4, 0.7), (0, 0, 0.1), (0, 0, 1)))).rgb_u8


@pytest.mark.parametrize("shift", [(0.3, 0.2), (-1.4, 0.6), (2.5, -2.2)])
def test_a_known_shift_is_measured_to_a_fraction_of_a_pixel(textured_image, shift):
    moved = cv2.warpAffine(textured_image, np.array([[1, 0, shift[0]], [0, 1, shift[1]]], float), (640, 480),
                           flags=cv2.INTER_CUBIC)
    grey = cv2.cvtColor(textured_image, cv2.COLOR_RGB2GRAY)
    points = cv2.goodFeaturesToTrack(grey, 300, 0.01, 8).reshape(-1, 2)
    # Start from the detector's guess: the same pixel in both images (the bias fine matching removes).
    ref, target, keep = refine_matches(textured_image, points, moved, points)
    assert keep.mean() > 0.8
    error = target[keep] - (ref[keep] + shift)
    # Single points err by a few tenths of a pixel on the synthetic textures' sharp edges (the
    # parabola fit locks towards whole pixels), but without a common bias, which is what matters.
    assert np.median(np.linalg.norm(error, axis=1)) < 0.35
    assert np.all(np.abs(error.mean(axis=0)) < 0.1)


def test_flat_patches_and_borders_are_dropped():
    flat = np.full((100, 100, 3), 128, np.uint8)
    points = np.array([[50.0, 50.0], [1.0, 1.0]])
    _, _, keep = refine_matches(flat, points, flat, points)
    assert not keep.any()


def test_config_is_validated():
    with pytest.raises(ValueError):
        FineMatchingConfig(window=10)
    with pytest.raises(ValueError):
        FineMatchingConfig(radius=0)
