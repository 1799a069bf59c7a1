"""Negative queries: images that do not show the map (a localizer must refuse them).

Three kinds: a view of a procedural scene of another kind, a cropped and upsampled procedural
texture, and blurred noise.
"""

from __future__ import annotations

import math

import numpy as np

from gsvisloc_ros.camera import PinholeCamera, invert_pose, look_at, turned
from gsvisloc_ros.gaussians import GaussianMap
from gsvisloc_ros.render import render


def procedural_texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A structured random image: multi-scale value noise, stripes and filled shapes.

    Rendered at twice the size and cropped to a quarter of it, then upsampled: what a camera close
    to an unknown textured surface would see.
    """
    import cv2

    big_w, big_h = 2 * width, 2 * height
    image = np.zeros((big_h, big_w, 3), np.float32)
    for cells in (4, 12, 40):
        grid = rng.uniform(-1, 1, (cells * big_h // big_w + 2, cells + 2, 3)).astype(np.float32)
        image += cv2.resize(grid, (big_w, big_h), interpolation=cv2.INTER_CUBIC) * (90.0 / math.sqrt(cells))
    image += rng.uniform(60, 190, 3).astype(np.float32)
    yy, xx = np.mgrid[0:big_h, 0:big_w]
    angle, period = rng.uniform(0, np.pi), rng.uniform(15, 60)
    stripes = np.mod((xx * np.cos(angle) + yy * np.sin(angle)) / period, 1.0) < 0.25
    image[stripes] = 0.6 * image[stripes] + 0.4 * rng.uniform(0, 255, 3)
    image = np.clip(image, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(300, 600))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, big_w)), int(rng.integers(0, big_h))
        size = int(rng.integers(3, 30))
        if rng.random() < 0.5:
            cv2.circle(image, (x, y), size, colour, -1, lineType=cv2.LINE_AA)
        else:
            cv2.rectangle(image, (x, y), (x + size, y + int(rng.integers(3, 30))), colour, -1)
    x0, y0 = int(rng.integers(0, big_w - width // 2)), int(rng.integers(0, big_h - height // 2))
    crop = image[y0 : y0 + height // 2, x0 : x0 + width // 2]
    return cv2.resize(crop, (width, height), interpolation=cv2.INTER_LINEAR)


def noise_image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Blurred uniform noise: corners everywhere, structure nowhere (a detector's worst case)."""
    import cv2

    noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), float(rng.uniform(0.7, 2.0)))


def _other_scene_view(scene: GaussianMap, camera: PinholeCamera, rng: np.random.Generator) -> np.ndarray:
    """A view from inside the procedural room (:func:`make_scene` ``"room"``, z up), any direction."""
    eye = rng.uniform([-0.8, -0.5, 0.9], [0.8, 0.5, 1.6])
    azimuth, elevation = rng.uniform(0, 2 * np.pi), np.radians(rng.uniform(-35, 25))
    d = np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)])
    T = turned(look_at(eye, eye + d, (0.0, 0.0, 1.0)), rng.uniform(-15, 15))
    return render(scene, camera, invert_pose(T), near=0.05).rgb_u8


def negative_image(kind: str, rng: np.random.Generator, camera: PinholeCamera,
                   other_scene: GaussianMap | None = None) -> np.ndarray:
    """An image of ``kind`` (``"scene"``: a view of ``other_scene``, ``"texture"`` or ``"noise"``)."""
    if kind == "scene":
        return _other_scene_view(other_scene, camera, rng)
    if kind == "texture":
        return procedural_texture(rng, camera.width, camera.height)
    if kind == "noise":
        return noise_image(rng, camera.width, camera.height)
    raise ValueError(f"unknown negative kind {kind!r}: scene, texture or noise")
