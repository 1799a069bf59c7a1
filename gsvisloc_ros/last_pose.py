"""The last trusted pose on disk: written on each accepted fix, read on start as the first prior.

As RTAB-Map restarts from its last saved pose, a robot that was switched off where it stood
localizes its first frame from where it was (a tracking-mode localization, faster and surer than a
global search). The file is JSON (``version`` 1)::

    {"version": 1, "stamp": 12.5, "map": {"path": "/maps/lab.ply", "to_frame": [x, y, z, qx, qy, qz, qw]},
     "map_frame": "map", "camera_frame": "front_optical", "T_map_camera": [[...4x4...]],
     "base_frame": "base_link", "T_map_base": [[...4x4...]] or null}

It is written to a temporary file beside it and renamed, so a crash never leaves half a file.
A pose saved for another map (path or ``map_to_frame``) is not used. ROS-free.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VERSION = 1


class LastPoseError(ValueError):
    """The file cannot be read as a saved pose (the message says why)."""


@dataclass(frozen=True)
class SavedPose:
    """A trusted pose as saved: the camera's, and the base's when base -> camera was known."""

    stamp: float
    map_path: str
    map_to_frame: tuple[float, ...]
    map_frame: str
    camera_frame: str
    T_map_camera: np.ndarray
    base_frame: str = ""
    T_map_base: np.ndarray | None = None

    def to_dict(self) -> dict:
        return {"version": VERSION, "stamp": float(self.stamp),
                "map": {"path": self.map_path, "to_frame": [float(v) for v in self.map_to_frame]},
                "map_frame": self.map_frame, "camera_frame": self.camera_frame,
                "T_map_camera": np.asarray(self.T_map_camera, dtype=float).tolist(),
                "base_frame": self.base_frame,
                "T_map_base": None if self.T_map_base is None else np.asarray(self.T_map_base, dtype=float).tolist()}

    def same_map(self, map_path: str, map_to_frame) -> bool:
        return self.map_path == map_path and np.allclose(self.map_to_frame, [float(v) for v in map_to_frame])

    def prior_for(self, camera_frame: str, T_base_camera: np.ndarray | None) -> np.ndarray | None:
        """The pose of ``camera_frame`` in the map from this saved pose: the saved camera pose when it is
        that camera, else the saved base pose moved by ``T_base_camera``; None when neither applies."""
        if camera_frame == self.camera_frame:
            return np.array(self.T_map_camera)
        if self.T_map_base is not None and T_base_camera is not None:
            return self.T_map_base @ T_base_camera
        return None


def _pose(value, what: str) -> np.ndarray:
    try:
        T = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise LastPoseError(f"{what} is not a 4x4 matrix of numbers") from None
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise LastPoseError(f"{what} is not a finite 4x4 matrix")
    R = T[:3, :3]
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-5) or np.linalg.det(R) < 0 or not np.allclose(T[3], [0, 0, 0, 1]):
        raise LastPoseError(f"{what} is not a rigid transform")
    return T


def save(path: str | Path, pose: SavedPose) -> None:
    """Write ``pose`` to ``path`` atomically (the folder is created when missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(pose.to_dict(), f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path) -> SavedPose:
    """The pose saved at ``path``; :class:`LastPoseError` (or FileNotFoundError) says why not."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise LastPoseError(f"{path} is not JSON ({exc})") from None
    except UnicodeDecodeError:
        raise LastPoseError(f"{path} is not a text file") from None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise LastPoseError(f"{path} is not a saved pose of version {VERSION}")
    try:
        base = data.get("T_map_base")
        return SavedPose(stamp=float(data["stamp"]), map_path=str(data["map"]["path"]),
                         map_to_frame=tuple(float(v) for v in data["map"]["to_frame"]),
                         map_frame=str(data["map_frame"]), camera_frame=str(data["camera_frame"]),
                         T_map_camera=_pose(data["T_map_camera"], "T_map_camera"),
                         base_frame=str(data.get("base_frame") or ""),
                         T_map_base=None if base is None else _pose(base, "T_map_base"))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, LastPoseError):
            raise
        raise LastPoseError(f"{path} misses or garbles a field ({type(exc).__name__}: {exc})") from None
