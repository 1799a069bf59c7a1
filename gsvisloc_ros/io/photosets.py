"""Posed photo sets: the photos a map is fitted to, with their cameras and poses.

Three layouts are read, all into a :class:`PhotoSet` in this project's conventions
(``T_world_camera`` camera-to-world, OpenCV camera axes, the centre of pixel (i, j) at (i, j)):

* a COLMAP model, binary or text (``cameras``, ``images``, ``points3D``) in ``SET/sparse/0/`` or
  ``SET/sparse/``, photos in ``SET/images/``. Camera models SIMPLE_PINHOLE, PINHOLE,
  SIMPLE_RADIAL, RADIAL and OPENCV; the distorted ones are undistorted to the same pinhole when the
  photos are loaded. COLMAP puts the centre of the top-left pixel at (0.5, 0.5): cx, cy lose 0.5.
  ``images`` holds world-to-camera poses (qw qx qy qz tx ty tz).
* an instant-ngp / nerfstudio ``transforms.json``: camera-to-world matrices with OpenGL camera axes
  (x right, y up, z backwards), intrinsics global or per frame (``fl_x``/``camera_angle_x``,
  ``cx``, ``cy``, ``w``, ``h``, ``k1 k2 k3 p1 p2``); its principal point follows COLMAP's pixel
  convention (the converters copy it), so it loses 0.5 too.
* a Middlebury multi-view ``*_par.txt`` (``name K[9] R[9] t[3]``, projection ``K [R|t]``), whose
  pixel centres are already at integer coordinates.

A COLMAP model is preferred when a folder holds several layouts, because it has the SfM points
that initialise a fit. Every problem is a :class:`PhotoSetError` that says what is wrong.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..camera import PinholeCamera, invert_pose, make_pose

# COLMAP camera models: id -> (name, number of parameters). Only the first five are supported;
# the others are listed so that the error can name them.
COLMAP_MODELS = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
}
SUPPORTED_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
# OpenGL camera axes (x right, y up, z backwards) -> OpenCV's (x right, y down, z forwards).
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


class PhotoSetError(ValueError):
    """A photo set that cannot be used, with the reason."""


@dataclass(frozen=True)
class Photo:
    """One posed photo: file, pinhole camera (after undistortion), OpenCV distortion, pose."""

    name: str
    path: Path
    camera: PinholeCamera
    T_world_camera: np.ndarray
    distortion: tuple[float, ...] | None = None  # OpenCV (k1, k2, p1, p2[, k3]); None: none


@dataclass
class PhotoSet:
    """Posed photos (sorted by name) and, when the layout has them, SfM points with colours."""

    photos: list[Photo]
    kind: str  # "colmap", "transforms" or "middlebury"
    source: Path
    points: np.ndarray | None = None  # [P, 3] world frame
    point_colors: np.ndarray | None = None  # [P, 3] uint8

    def __len__(self) -> int:
        return len(self.photos)


# --------------------------------------------------------------------------------------------
# Finding and reading a layout
# --------------------------------------------------------------------------------------------


def colmap_model_dir(root: Path) -> Path | None:
    """The folder of the COLMAP model under ``root`` (``sparse/0``, ``sparse`` or ``root`` itself)."""
    for d in (root / "sparse" / "0", root / "sparse", root):
        if any((d / f"cameras.{ext}").is_file() for ext in ("bin", "txt")):
            return d
    return None


def load_photo_set(path: str | Path) -> PhotoSet:
    """Read the photo set in folder ``path`` (or the ``transforms.json`` / ``*_par.txt`` file itself)."""
    path = Path(path)
    if not path.exists():
        raise PhotoSetError(f"{path} does not exist")
    if path.is_file():
        if path.suffix == ".json":
            photo_set = read_transforms(path)
        elif path.name.endswith("_par.txt"):
            photo_set = read_middlebury(path)
        else:
            raise PhotoSetError(f"{path}: not a transforms.json or a Middlebury *_par.txt; give the photo set's folder")
    else:
        model = colmap_model_dir(path)
        pars = sorted(path.glob("*_par.txt"))
        if model is not None:
            photo_set = read_colmap(model, path / "images")
        elif (path / "transforms.json").is_file():
            photo_set = read_transforms(path / "transforms.json")
        elif pars:
            photo_set = read_middlebury(pars[0])
        else:
            raise PhotoSetError(
                f"{path}: no photo set found (looked for a COLMAP model in sparse/0/ or sparse/, "
                "a transforms.json and a Middlebury *_par.txt)"
            )
    check_photo_set(photo_set)
    return photo_set


def check_photo_set(photo_set: PhotoSet) -> None:
    """Raise :class:`PhotoSetError` unless every photo exists, every pose is finite, and there are two."""
    if len(photo_set) < 2:
        raise PhotoSetError(f"{photo_set.source}: {len(photo_set)} posed photo(s); fitting a map needs at least 2")
    for photo in photo_set.photos:
        T = photo.T_world_camera
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise PhotoSetError(f"{photo_set.source}: the pose of {photo.name} is not finite")
        if abs(np.linalg.det(T[:3, :3]) - 1.0) > 1e-3:
            raise PhotoSetError(f"{photo_set.source}: the pose of {photo.name} is not a rotation")
        if not photo.path.is_file():
            raise PhotoSetError(f"{photo_set.source}: the photo {photo.name} is missing ({photo.path})")


def _camera(model: str, width: int, height: int, params, where: str) -> tuple[PinholeCamera, tuple | None]:
    """Pinhole camera (COLMAP pixel convention converted) and OpenCV distortion of a COLMAP camera."""
    p = [float(x) for x in params]
    if model == "SIMPLE_PINHOLE":
        (f, cx, cy), dist = p, None
        fx = fy = f
    elif model == "PINHOLE":
        (fx, fy, cx, cy), dist = p, None
    elif model == "SIMPLE_RADIAL":
        f, cx, cy, k = p
        fx = fy = f
        dist = (k, 0.0, 0.0, 0.0)
    elif model == "RADIAL":
        f, cx, cy, k1, k2 = p
        fx = fy = f
        dist = (k1, k2, 0.0, 0.0)
    elif model == "OPENCV":
        fx, fy, cx, cy, *dist = p
        dist = tuple(dist)
    else:
        supported = ", ".join(SUPPORTED_MODELS)
        raise PhotoSetError(f"{where}: camera model {model} is not supported (supported: {supported})")
    if dist is not None and not any(dist):
        dist = None
    try:
        camera = PinholeCamera(fx, fy, cx - 0.5, cy - 0.5, int(width), int(height))
    except ValueError as exc:
        raise PhotoSetError(f"{where}: {exc}") from None
    return camera, dist


def _pose_from_colmap(qvec, tvec) -> np.ndarray:
    """T_world_camera of COLMAP's world-to-camera (qw, qx, qy, qz), t."""
    w, x, y, z = (float(v) for v in qvec)
    n = math.sqrt(w * w + x * x + y * y + z * z)
    if not n > 0 or not math.isfinite(n):
        return np.full((4, 4), np.nan)
    w, x, y, z = w / n, x / n, y / n, z / n
    R = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )
    return invert_pose(make_pose(R, np.asarray(tvec, dtype=np.float64)))


def read_colmap(model_dir: str | Path, image_dir: str | Path) -> PhotoSet:
    """Read a COLMAP model (binary if ``cameras.bin`` exists, else text) with photos in ``image_dir``."""
    model_dir, image_dir = Path(model_dir), Path(image_dir)
    binary = (model_dir / "cameras.bin").is_file()
    ext = "bin" if binary else "txt"
    for name in ("cameras", "images"):
        if not (model_dir / f"{name}.{ext}").is_file():
            raise PhotoSetError(f"{model_dir}: the COLMAP model has no {name}.{ext}")
    try:
        if binary:
            cameras, images, points = _read_colmap_bin(model_dir)
        else:
            cameras, images, points = _read_colmap_txt(model_dir)
    except (struct.error, ValueError, IndexError, UnicodeDecodeError) as exc:
        if isinstance(exc, PhotoSetError):
            raise
        raise PhotoSetError(f"{model_dir}: the COLMAP model is unreadable ({type(exc).__name__}: {exc})") from None
    if not images:
        raise PhotoSetError(f"{model_dir}: the COLMAP model has no images")
    photos = []
    converted: dict[int, tuple] = {}
    for name, qvec, tvec, camera_id in images:
        if camera_id not in cameras:
            raise PhotoSetError(f"{model_dir}: image {name} refers to camera {camera_id}, which is not in the model")
        if camera_id not in converted:
            converted[camera_id] = _camera(*cameras[camera_id], where=f"{model_dir} camera {camera_id}")
        camera, dist = converted[camera_id]
        photos.append(Photo(name, image_dir / name, camera, _pose_from_colmap(qvec, tvec), dist))
    photos.sort(key=lambda p: p.name)
    xyz, rgb = points
    return PhotoSet(photos, "colmap", model_dir, xyz if len(xyz) else None, rgb if len(rgb) else None)


def _read_colmap_bin(model_dir: Path):
    def read(f, fmt):
        size = struct.calcsize(fmt)
        data = f.read(size)
        if len(data) != size:
            raise ValueError(f"{f.name} ends early")
        return struct.unpack(fmt, data)

    cameras = {}
    with open(model_dir / "cameras.bin", "rb") as f:
        (count,) = read(f, "<Q")
        for _ in range(count):
            camera_id, model_id, width, height = read(f, "<iiQQ")
            if model_id not in COLMAP_MODELS:
                raise PhotoSetError(f"{model_dir}: camera {camera_id} has the unknown COLMAP model id {model_id}")
            model, n_params = COLMAP_MODELS[model_id]
            cameras[camera_id] = (model, width, height, read(f, f"<{n_params}d"))
    images = []
    with open(model_dir / "images.bin", "rb") as f:
        (count,) = read(f, "<Q")
        for _ in range(count):
            values = read(f, "<idddddddi")
            name = b""
            while (c := f.read(1)) not in (b"\x00", b""):
                name += c
            (n_points,) = read(f, "<Q")
            f.seek(24 * n_points, 1)  # x, y, point3D_id per 2D point: not needed
            images.append((name.decode("utf-8"), values[1:5], values[5:8], values[8]))
    xyz, rgb = [], []
    if (model_dir / "points3D.bin").is_file():
        with open(model_dir / "points3D.bin", "rb") as f:
            (count,) = read(f, "<Q")
            for _ in range(count):
                values = read(f, "<QdddBBBdQ")
                xyz.append(values[1:4])
                rgb.append(values[4:7])
                f.seek(8 * values[8], 1)  # track: (image_id, point2D_idx) pairs
    return cameras, images, _points(xyz, rgb)


def _points(xyz: list, rgb: list) -> tuple[np.ndarray, np.ndarray]:
    return np.array(xyz, dtype=np.float64).reshape(-1, 3), np.array(rgb, dtype=np.uint8).reshape(-1, 3)


def _data_lines(path: Path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                yield line


def _read_colmap_txt(model_dir: Path):
    cameras = {}
    for line in _data_lines(model_dir / "cameras.txt"):
        fields = line.split()
        camera_id, model = int(fields[0]), fields[1]
        if model not in {name for name, _ in COLMAP_MODELS.values()}:
            raise PhotoSetError(f"{model_dir}: camera {camera_id} has the unknown COLMAP model {model}")
        cameras[camera_id] = (model, int(fields[2]), int(fields[3]), [float(v) for v in fields[4:]])
    images = []
    # Two lines per image; the second (2D points) may be empty, so read the raw lines.
    with open(model_dir / "images.txt", encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if not line.startswith("#")]
    i = 0
    while i < len(lines):
        fields = lines[i].split()
        if not fields:
            i += 1
            continue
        values = [float(v) for v in fields[1:8]]
        images.append((" ".join(fields[9:]), values[0:4], values[4:7], int(fields[8])))
        i += 2
    xyz, rgb = [], []
    if (model_dir / "points3D.txt").is_file():
        for line in _data_lines(model_dir / "points3D.txt"):
            fields = line.split()
            xyz.append([float(v) for v in fields[1:4]])
            rgb.append([int(v) for v in fields[4:7]])
    return cameras, images, _points(xyz, rgb)


def _frame_path(root: Path, file_path: str) -> Path:
    path = root / file_path
    if not path.suffix and not path.exists():  # the NeRF-synthetic sets leave out ".png"
        for ext in (".png", ".jpg", ".jpeg"):
            if path.with_suffix(ext).exists():
                return path.with_suffix(ext)
    return path


def read_transforms(path: str | Path) -> PhotoSet:
    """Read an instant-ngp / nerfstudio ``transforms.json``."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise PhotoSetError(f"{path}: not readable JSON ({exc})") from None
    frames = data.get("frames") if isinstance(data, dict) else None
    if not frames:
        raise PhotoSetError(f"{path}: no frames")
    photos = []
    for index, frame in enumerate(frames):
        where = f"{path} frame {index}"
        merged = {**data, **frame}
        if merged.get("is_fisheye") or str(merged.get("camera_model", "OPENCV")).upper() != "OPENCV":
            model = merged.get("camera_model", "fisheye")
            raise PhotoSetError(f"{where}: camera model {model} is not supported (OPENCV only)")
        if "file_path" not in frame or "transform_matrix" not in frame:
            raise PhotoSetError(f"{where}: needs file_path and transform_matrix")
        image_path = _frame_path(path.parent, frame["file_path"])
        try:
            width, height = int(merged["w"]), int(merged["h"])
        except KeyError:
            if not image_path.is_file():
                raise PhotoSetError(f"{where}: the photo {image_path} is missing") from None
            width, height = _image_size(image_path)
        try:
            if "fl_x" in merged:
                fx = float(merged["fl_x"])
            else:
                fx = 0.5 * width / math.tan(0.5 * float(merged["camera_angle_x"]))
            if "fl_y" in merged:
                fy = float(merged["fl_y"])
            elif "camera_angle_y" in merged:
                fy = 0.5 * height / math.tan(0.5 * float(merged["camera_angle_y"]))
            else:
                fy = fx
            cx = float(merged.get("cx", width / 2.0)) - 0.5
            cy = float(merged.get("cy", height / 2.0)) - 0.5
            camera = PinholeCamera(fx, fy, cx, cy, width, height)
            dist = tuple(float(merged.get(k, 0.0)) for k in ("k1", "k2", "p1", "p2", "k3"))
            T = np.asarray(frame["transform_matrix"], dtype=np.float64)
        except KeyError as exc:
            raise PhotoSetError(f"{where}: no focal length ({exc.args[0]} missing)") from None
        except (TypeError, ValueError) as exc:
            raise PhotoSetError(f"{where}: {exc}") from None
        if T.shape == (3, 4):
            T = np.vstack([T, [0.0, 0.0, 0.0, 1.0]])
        if T.shape != (4, 4):
            raise PhotoSetError(f"{where}: transform_matrix must be 4x4, got {list(T.shape)}")
        photos.append(Photo(image_path.name, image_path, camera, T @ GL_TO_CV, dist if any(dist) else None))
    photos.sort(key=lambda p: p.name)
    return PhotoSet(photos, "transforms", path)


def read_middlebury(path: str | Path) -> PhotoSet:
    """Read a Middlebury multi-view ``*_par.txt`` (photos beside it)."""
    path = Path(path)
    photos = []
    with open(path, encoding="utf-8") as f:
        lines = [line.split() for line in f if line.strip()]
    for fields in lines[1:]:  # the first line is the number of photos
        if len(fields) != 22:
            raise PhotoSetError(f"{path}: expected 'name k11..k33 r11..r33 t1 t2 t3' (22 fields), got {len(fields)}")
        name = fields[0]
        values = np.array([float(v) for v in fields[1:]])
        K, R, t = values[:9].reshape(3, 3), values[9:18].reshape(3, 3), values[18:21]
        image_path = path.parent / name
        if not image_path.is_file():
            raise PhotoSetError(f"{path}: the photo {name} is missing")
        width, height = _image_size(image_path)
        camera = PinholeCamera(float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), width, height)
        photos.append(Photo(name, image_path, camera, invert_pose(make_pose(R, t))))
    photos.sort(key=lambda p: p.name)
    return PhotoSet(photos, "middlebury", path)


def _image_size(path: Path) -> tuple[int, int]:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise PhotoSetError(f"cannot read the photo {path}")
    return image.shape[1], image.shape[0]


# --------------------------------------------------------------------------------------------
# Loading the photos
# --------------------------------------------------------------------------------------------


def fit_scale(camera: PinholeCamera, max_size: int | None) -> float:
    """The factor that brings the camera's larger side down to ``max_size`` (1 when it is smaller)."""
    if not max_size:
        return 1.0
    return min(1.0, max_size / max(camera.width, camera.height))


def load_photo(photo: Photo, max_size: int | None = None) -> tuple[PinholeCamera, np.ndarray]:
    """(camera, RGB float32 [H, W, 3] in [0, 1]) of a photo: undistorted, then shrunk to ``max_size``."""
    import cv2

    image = cv2.imread(str(photo.path), cv2.IMREAD_COLOR)
    if image is None:
        raise PhotoSetError(f"cannot read the photo {photo.path}")
    height, width = image.shape[:2]
    camera = photo.camera
    if (width, height) != camera.size:
        raise PhotoSetError(
            f"the photo {photo.name} is {width}x{height} but its camera says {camera.width}x{camera.height}"
        )
    if photo.distortion is not None:
        image = cv2.undistort(image, camera.K, np.asarray(photo.distortion, dtype=np.float64))
    scale = fit_scale(camera, max_size)
    if scale < 1.0:
        camera = camera.scaled(scale)
        image = cv2.resize(image, camera.size, interpolation=cv2.INTER_AREA)
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    return camera, rgb
