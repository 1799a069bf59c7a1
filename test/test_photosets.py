"""Photo-set readers: COLMAP (bin and txt), transforms.json, Middlebury; conventions and errors."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from gsvisloc_ros.camera import invert_pose, look_at
from gsvisloc_ros.io.photosets import (
    PhotoSetError,
    load_photo,
    load_photo_set,
    read_colmap,
    read_transforms,
)

MODEL_IDS = {"SIMPLE_PINHOLE": 0, "PINHOLE": 1, "SIMPLE_RADIAL": 2, "RADIAL": 3, "OPENCV": 4, "FOV": 7}


def colmap_quat_t(T_world_camera: np.ndarray) -> tuple[list[float], list[float]]:
    """COLMAP's (qw, qx, qy, qz), t of the world-to-camera transform."""
    from scipy.spatial.transform import Rotation

    T = invert_pose(T_world_camera)
    x, y, z, w = Rotation.from_matrix(T[:3, :3]).as_quat()
    return [float(v) for v in (w, x, y, z)], [float(v) for v in T[:3, 3]]


def write_colmap(folder: Path, cameras: dict, images: list, points: np.ndarray, binary: bool, colors=None) -> Path:
    """A COLMAP model in ``folder/sparse/0`` (cameras: id -> (model, w, h, params); images: (name, T_wc, cam)).

    Points are coloured ``colors`` [P, 3] (uint8), else (10, 20, 30).
    """
    colors = np.broadcast_to(np.array([10, 20, 30]) if colors is None else colors, (len(points), 3))
    model = folder / "sparse" / "0"
    model.mkdir(parents=True, exist_ok=True)
    if binary:
        with open(model / "cameras.bin", "wb") as f:
            f.write(struct.pack("<Q", len(cameras)))
            for cid, (name, w, h, params) in cameras.items():
                f.write(struct.pack("<iiQQ", cid, MODEL_IDS[name], w, h) + struct.pack(f"<{len(params)}d", *params))
        with open(model / "images.bin", "wb") as f:
            f.write(struct.pack("<Q", len(images)))
            for i, (name, T, cid) in enumerate(images):
                q, t = colmap_quat_t(T)
                f.write(struct.pack("<idddddddi", i + 1, *q, *t, cid) + name.encode() + b"\x00")
                f.write(struct.pack("<Q", 1) + struct.pack("<ddq", 1.0, 2.0, -1))
        with open(model / "points3D.bin", "wb") as f:
            f.write(struct.pack("<Q", len(points)))
            for i, p in enumerate(points):
                rgb = (int(c) for c in colors[i])
                f.write(struct.pack("<QdddBBBdQ", i + 1, *p, *rgb, 0.5, 1) + struct.pack("<ii", 1, 0))
    else:
        lines = [f"{cid} {name} {w} {h} " + " ".join(map(str, params)) for cid, (name, w, h, params) in cameras.items()]
        (model / "cameras.txt").write_text("# cameras\n" + "\n".join(lines) + "\n")
        lines = []
        for i, (name, T, cid) in enumerate(images):
            q, t = colmap_quat_t(T)
            lines += [f"{i + 1} " + " ".join(map(repr, q + t)) + f" {cid} {name}", "1.0 2.0 -1"]
        (model / "images.txt").write_text("# images\n" + "\n".join(lines) + "\n")
        lines = [f"{i + 1} {p[0]:.17g} {p[1]:.17g} {p[2]:.17g} {c[0]} {c[1]} {c[2]} 0.5 1 0"
                 for i, (p, c) in enumerate(zip(points, colors, strict=True))]
        (model / "points3D.txt").write_text("\n".join(lines) + "\n")
    return model


def _photos(folder: Path, names, size=(32, 24)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        cv2.imwrite(str(folder / name), np.full((size[1], size[0], 3), 40 * i, np.uint8))


POSES = [look_at(eye, [0, 0, 0]) for eye in ([0.0, 0.0, -3.0], [1.0, -0.5, -2.5], [-1, 0.2, -2.8])]


@pytest.mark.parametrize("binary", [True, False])
def test_colmap_model_reads_poses_points_and_moves_the_pixel_centre(tmp_path, binary):
    cameras = {1: ("PINHOLE", 32, 24, [30.0, 31.0, 16.0, 12.0]), 2: ("SIMPLE_RADIAL", 32, 24, [29.0, 15.5, 12.5, 0.01])}
    names = ["b.png", "a.png", "c.png"]
    images = [(names[0], POSES[0], 1), (names[1], POSES[1], 2), (names[2], POSES[2], 1)]
    points = np.array([[0.1, 0.2, 0.3], [-0.5, 0.0, 1.0]])
    write_colmap(tmp_path, cameras, images, points, binary)
    _photos(tmp_path / "images", names)
    ps = load_photo_set(tmp_path)
    assert ps.kind == "colmap" and [p.name for p in ps.photos] == ["a.png", "b.png", "c.png"]
    by_name = {p.name: p for p in ps.photos}
    np.testing.assert_allclose(by_name["b.png"].T_world_camera, POSES[0], atol=1e-9)
    np.testing.assert_allclose(by_name["a.png"].T_world_camera, POSES[1], atol=1e-9)
    np.testing.assert_allclose(ps.points, points)
    assert ps.point_colors.tolist() == [[10, 20, 30]] * 2
    # COLMAP: pixel (0, 0) covers [0, 1]^2, centre 0.5; here the centre is 0: the same ray lands 0.5 lower.
    cam = by_name["b.png"].camera
    assert (cam.fx, cam.fy, cam.cx, cam.cy) == (30.0, 31.0, 15.5, 11.5)
    p_cam = np.array([[0.2, -0.1, 2.0]])
    u_colmap = 30.0 * 0.2 / 2.0 + 16.0
    assert cam.project(p_cam)[0][0, 0] == pytest.approx(u_colmap - 0.5)
    radial = by_name["a.png"]
    assert (radial.camera.fx, radial.camera.cx) == (29.0, 15.0) and radial.distortion == (0.01, 0.0, 0.0, 0.0)


def test_colmap_errors_are_clear(tmp_path):
    fov = {1: ("FOV", 32, 24, [30, 16, 12, 0.9, 0.1])}
    write_colmap(tmp_path / "fov", fov, [("a.png", POSES[0], 1)], np.zeros((0, 3)), True)
    _photos(tmp_path / "fov" / "images", ["a.png"])
    with pytest.raises(PhotoSetError, match="FOV is not supported"):
        load_photo_set(tmp_path / "fov")

    write_colmap(tmp_path / "empty", {1: ("PINHOLE", 32, 24, [30, 30, 16, 12])}, [], np.zeros((0, 3)), False)
    with pytest.raises(PhotoSetError, match="no images"):
        load_photo_set(tmp_path / "empty")

    cams = {1: ("PINHOLE", 32, 24, [30, 30, 16, 12])}
    write_colmap(tmp_path / "missing", cams, [("a.png", POSES[0], 1), ("b.png", POSES[1], 1)], np.zeros((0, 3)), False)
    _photos(tmp_path / "missing" / "images", ["a.png"])
    with pytest.raises(PhotoSetError, match="b.png is missing"):
        load_photo_set(tmp_path / "missing")

    write_colmap(tmp_path / "one", cams, [("a.png", POSES[0], 1)], np.zeros((0, 3)), False)
    _photos(tmp_path / "one" / "images", ["a.png"])
    with pytest.raises(PhotoSetError, match="at least 2"):
        load_photo_set(tmp_path / "one")

    nan_pose = POSES[1].copy()
    nan_pose[0, 3] = np.nan
    write_colmap(tmp_path / "nan", cams, [("a.png", POSES[0], 1), ("b.png", nan_pose, 1)], np.zeros((0, 3)), False)
    _photos(tmp_path / "nan" / "images", ["a.png", "b.png"])
    with pytest.raises(PhotoSetError, match="not finite"):
        load_photo_set(tmp_path / "nan")

    with pytest.raises(PhotoSetError, match="no photo set found"):
        load_photo_set(tmp_path / "nan" / "images")


def test_photo_of_another_size_than_its_camera_is_refused(tmp_path):
    cams = {1: ("PINHOLE", 32, 24, [30, 30, 16, 12])}
    write_colmap(tmp_path, cams, [("a.png", POSES[0], 1), ("b.png", POSES[1], 1)], np.zeros((0, 3)), False)
    _photos(tmp_path / "images", ["a.png", "b.png"], size=(40, 24))
    ps = load_photo_set(tmp_path)
    with pytest.raises(PhotoSetError, match="is 40x24 but its camera says 32x24"):
        load_photo(ps.photos[0])


def test_load_photo_shrinks_with_consistent_pixel_centres(tmp_path):
    cams = {1: ("PINHOLE", 32, 24, [30, 30, 16, 12])}
    write_colmap(tmp_path, cams, [("a.png", POSES[0], 1), ("b.png", POSES[1], 1)], np.zeros((0, 3)), False)
    _photos(tmp_path / "images", ["a.png", "b.png"])
    camera, image = load_photo(load_photo_set(tmp_path).photos[1], max_size=16)
    assert image.shape == (12, 16, 3) and image.dtype == np.float32
    assert (camera.fx, camera.cx) == (15.0, (15.5 + 0.5) / 2 - 0.5)


def test_transforms_json_opengl_axes_and_pixel_convention(tmp_path):
    _photos(tmp_path / "images", ["a.png", "b.png"])
    gl = np.diag([1.0, -1.0, -1.0, 1.0])
    frames = [
        {"file_path": "images/a", "transform_matrix": (POSES[0] @ gl).tolist()},
        {"file_path": "./images/b.png", "transform_matrix": (POSES[1] @ gl).tolist(), "fl_x": 28.0},
    ]
    (tmp_path / "transforms.json").write_text(json.dumps({"fl_x": 30.0, "fl_y": 31.0, "cx": 16.0, "cy": 12.0,
                                                          "w": 32, "h": 24, "frames": frames}))  # fmt: skip
    ps = load_photo_set(tmp_path)
    assert ps.kind == "transforms"
    np.testing.assert_allclose(ps.photos[0].T_world_camera, POSES[0], atol=1e-12)
    np.testing.assert_allclose(ps.photos[1].T_world_camera, POSES[1], atol=1e-12)
    assert (ps.photos[0].camera.cx, ps.photos[0].camera.cy) == (15.5, 11.5)
    assert ps.photos[1].camera.fx == 28.0 and ps.photos[0].distortion is None

    (tmp_path / "transforms.json").write_text(json.dumps({"camera_angle_x": 1.0, "is_fisheye": True, "frames": frames}))
    with pytest.raises(PhotoSetError, match="not supported"):
        read_transforms(tmp_path / "transforms.json")


def test_room_layouts_agree(shared_data):
    room = shared_data / "real" / "room"
    if not room.is_dir():
        pytest.skip(f"{room} is missing")
    binary = load_photo_set(room)
    text = read_colmap(room / "sparse_txt", room / "images")
    assert binary.kind == "colmap" and len(binary) == 35 and len(binary.points) == len(text.points)
    for a, b in zip(binary.photos, text.photos, strict=True):
        np.testing.assert_allclose(a.T_world_camera, b.T_world_camera, atol=1e-9)
    # transforms.json is the same model recentred and rescaled: relative rotations agree, and so
    # do the directions between camera centres.
    ngp = read_transforms(room / "transforms.json")
    for i, j in [(0, 10), (3, 30), (12, 20)]:
        rel_a = np.linalg.inv(binary.photos[i].T_world_camera) @ binary.photos[j].T_world_camera
        rel_b = np.linalg.inv(ngp.photos[i].T_world_camera) @ ngp.photos[j].T_world_camera
        np.testing.assert_allclose(rel_a[:3, :3], rel_b[:3, :3], atol=1e-6)
        np.testing.assert_allclose(rel_a[:3, 3] / np.linalg.norm(rel_a[:3, 3]),
                                   rel_b[:3, 3] / np.linalg.norm(rel_b[:3, 3]), atol=1e-6)  # fmt: skip
    assert binary.photos[0].camera.cx == pytest.approx(959.5738541657016 - 0.5)


def test_middlebury_temple_sees_its_bounding_box(shared_data):
    folder = shared_data / "middlebury" / "templeSparseRing"
    if not folder.is_dir():
        pytest.skip(f"{folder} is missing")
    ps = load_photo_set(folder)
    assert ps.kind == "middlebury" and len(ps) == 16
    centre = (np.array([-0.073568, 0.021728, -0.012445]) + np.array([0.028855, 0.181892, 0.062736])) / 2
    for photo in ps.photos:
        T = invert_pose(photo.T_world_camera)
        uv, z = photo.camera.project((T[:3, :3] @ centre + T[:3, 3])[None])
        assert z[0] > 0 and photo.camera.in_image(uv)[0]
