"""Pinhole cameras and SE(3) helpers: every pose convention of the project lives here.

Conventions (tested in test/test_camera.py):

* ``T_world_camera`` is a 4x4 camera-to-world transform; its last column is the camera centre.
  ``T_camera_world`` is its inverse, the usual ``[R|t]`` extrinsics.
* Camera axes are OpenCV's: x right, y down, z forward (= ROS optical frames, REP-103).
* The centre of pixel (i, j) is at (u, v) = (i, j), as in OpenCV and the INRIA rasterizer.
* Quaternions are (x, y, z, w) on the command line and in ROS messages; (w, x, y, z) inside
  INRIA PLY files and in :class:`~gsvisloc_ros.gaussians.GaussianMap`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation


@dataclass(frozen=True)
class PinholeCamera:
    """An undistorted pinhole camera with OpenCV axes and pixel-centre convention."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        values = (self.fx, self.fy, self.cx, self.cy)
        if not all(np.isfinite(v) for v in values):
            raise ValueError(f"camera intrinsics must be finite, got {values}")
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"focal lengths must be positive, got fx={self.fx}, fy={self.fy}")
        if int(self.width) != self.width or int(self.height) != self.height:
            raise ValueError(f"image size must be whole pixels, got {self.width}x{self.height}")
        if self.width < 1 or self.height < 1:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")

    @classmethod
    def from_K(cls, K: np.ndarray, width: int, height: int) -> PinholeCamera:
        K = np.asarray(K, dtype=np.float64).reshape(3, 3)
        return cls(float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), int(width), int(height))

    @classmethod
    def from_string(cls, intrinsics: str, size: str) -> PinholeCamera:
        """Parse ``"FX,FY,CX,CY"`` and ``"WxH"`` as given on the command line."""
        try:
            fx, fy, cx, cy = (float(v) for v in intrinsics.split(","))
        except ValueError:
            raise ValueError(f"intrinsics must be 'FX,FY,CX,CY', got {intrinsics!r}") from None
        width, height = parse_size(size)
        return cls(fx, fy, cx, cy, width, height)

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.width), int(self.height)

    def scaled(self, factor: float) -> PinholeCamera:
        """The same camera for an image resized by ``factor`` (pixel centres stay consistent)."""
        width = max(1, round(self.width * factor))
        height = max(1, round(self.height * factor))
        sx, sy = width / self.width, height / self.height
        return PinholeCamera(
            self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5, width, height
        )

    def project(self, points_camera: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project camera-frame points; returns (uv [N,2], depth [N])."""
        p = np.asarray(points_camera, dtype=np.float64).reshape(-1, 3)
        z = p[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = self.fx * p[:, 0] / z + self.cx
            v = self.fy * p[:, 1] / z + self.cy
        return np.stack([u, v], axis=1), z

    def backproject(self, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Camera-frame points for pixels ``uv`` [N,2] at z-depths ``depth`` [N]."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        z = np.asarray(depth, dtype=np.float64).reshape(-1)
        x = (uv[:, 0] - self.cx) / self.fx * z
        y = (uv[:, 1] - self.cy) / self.fy * z
        return np.stack([x, y, z], axis=1)

    def in_image(self, uv: np.ndarray, margin: float = 0.0) -> np.ndarray:
        uv = np.asarray(uv).reshape(-1, 2)
        return (
            (uv[:, 0] >= -0.5 + margin)
            & (uv[:, 0] < self.width - 0.5 - margin)
            & (uv[:, 1] >= -0.5 + margin)
            & (uv[:, 1] < self.height - 0.5 - margin)
        )


def parse_size(size: str) -> tuple[int, int]:
    """Parse ``"WxH"`` into (width, height)."""
    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must be 'WxH', got {size!r}") from None
    if width < 1 or height < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return width, height


def make_pose(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = np.asarray(R, dtype=np.float64).reshape(3, 3)
    T[:3, 3] = np.asarray(t, dtype=np.float64).reshape(3)
    return T


def invert_pose(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform."""
    T = np.asarray(T, dtype=np.float64)
    R, t = T[:3, :3], T[:3, 3]
    return make_pose(R.T, -R.T @ t)


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to points [N,3]."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    T = np.asarray(T, dtype=np.float64)
    return p @ T[:3, :3].T + T[:3, 3]


def quat_xyzw_to_matrix(q_xyzw) -> np.ndarray:
    q = np.asarray(q_xyzw, dtype=np.float64).reshape(4)
    if not np.all(np.isfinite(q)) or np.linalg.norm(q) < 1e-12:
        raise ValueError(f"quaternion must be finite and non-zero, got {q.tolist()}")
    return Rotation.from_quat(q).as_matrix()


def matrix_to_quat_xyzw(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w) with w >= 0 for a rotation matrix."""
    q = Rotation.from_matrix(np.asarray(R, dtype=np.float64).reshape(3, 3)).as_quat()
    return -q if q[3] < 0 else q


def pose_from_xyz_quat(values) -> np.ndarray:
    """4x4 pose from ``[tx, ty, tz, qx, qy, qz, qw]``."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size != 7:
        raise ValueError(f"a pose needs 7 numbers 'TX TY TZ QX QY QZ QW', got {v.size}")
    return make_pose(quat_xyzw_to_matrix(v[3:]), v[:3])


def pose_to_xyz_quat(T: np.ndarray) -> np.ndarray:
    """``[tx, ty, tz, qx, qy, qz, qw]`` of a 4x4 pose."""
    T = np.asarray(T, dtype=np.float64)
    return np.concatenate([T[:3, 3], matrix_to_quat_xyzw(T[:3, :3])])


def parse_pose(text: str) -> np.ndarray:
    """Parse ``"TX TY TZ QX QY QZ QW"`` (spaces or commas) into a 4x4 pose."""
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"pose must be 'TX TY TZ QX QY QZ QW', got {text!r}") from None
    return pose_from_xyz_quat(values)


def look_at(eye, target, up=(0.0, -1.0, 0.0)) -> np.ndarray:
    """``T_world_camera`` of a camera at ``eye`` looking at ``target``; image-up is along ``up``.

    OpenCV axes: z towards the target, y down (away from ``up``), x right.
    """
    eye = np.asarray(eye, dtype=np.float64).reshape(3)
    target = np.asarray(target, dtype=np.float64).reshape(3)
    up = np.asarray(up, dtype=np.float64).reshape(3)
    z = target - eye
    if np.linalg.norm(z) < 1e-12:
        raise ValueError("look_at needs the eye and the target to differ")
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-9:  # looking along 'up': pick any perpendicular
        x = np.cross(z, np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 0.0, 1.0]))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return make_pose(np.stack([x, y, z], axis=1), eye)


def level_up(T_world_cameras) -> tuple[np.ndarray, float]:
    """The world's up direction from cameras that were held level, and their largest roll (degrees).

    A level camera's x axis is horizontal, so up is the direction most nearly perpendicular to
    every camera's x axis (the least eigenvector of their scatter), turned to the side the image-up
    axes (-y) lean to. Works for photographers, robots and rings of cameras looking down alike
    (averaging -y does not: part of a ring looking down averages to a tilted axis). Needs 2+ poses whose
    x axes are not all parallel.
    """
    poses = np.asarray(T_world_cameras, dtype=np.float64).reshape(-1, 4, 4)
    x, image_up = poses[:, :3, 0], -poses[:, :3, 1]
    if len(poses) < 2:
        raise ValueError("estimating the up direction needs at least 2 camera poses")
    values, vectors = np.linalg.eigh(x.T @ x)
    if values[1] < 1e-6 * len(poses):
        raise ValueError("every camera's x axis is parallel: the up direction is not determined")
    up = vectors[:, 0]
    if np.sum(image_up @ up) < 0:
        up = -up
    roll = np.degrees(np.arcsin(np.clip(np.abs(x @ up), 0.0, 1.0)))
    return up, float(roll.max())


def rotation_error_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Angle of ``R_a R_b^T`` in degrees, in [0, 180] (rotations or poses: their top-left 3x3).

    Computed with ``atan2`` of the skew and symmetric parts, so that it stays accurate for tiny
    angles (where ``arccos`` of the trace loses half the digits).
    """
    R = np.asarray(R_a, dtype=np.float64)[:3, :3] @ np.asarray(R_b, dtype=np.float64)[:3, :3].T
    sin = 0.5 * float(np.sqrt((R[2, 1] - R[1, 2]) ** 2 + (R[0, 2] - R[2, 0]) ** 2 + (R[1, 0] - R[0, 1]) ** 2))
    cos = 0.5 * (float(np.trace(R)) - 1.0)
    return float(np.degrees(np.arctan2(sin, cos)))


def default_camera(width: int = 640, height: int = 480) -> PinholeCamera:
    """The package's default pinhole camera: 525 px focal length per 640 px of width (63 degrees
    horizontal field of view), principal point at the image centre. Synthetic bags, generated
    query sets and benchmarks use it."""
    f = 525.0 * width / 640.0
    return PinholeCamera(f, f, (width - 1) / 2.0, (height - 1) / 2.0, width, height)


def pose_errors(T_est: np.ndarray, T_gt: np.ndarray) -> tuple[float, float]:
    """(translation error of camera centres, rotation error in degrees) of two T_world_camera."""
    T_est, T_gt = np.asarray(T_est), np.asarray(T_gt)
    return float(np.linalg.norm(T_est[:3, 3] - T_gt[:3, 3])), rotation_error_deg(T_est, T_gt)


def _rot(axis: int, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    R = np.eye(3)
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R


def turned(T: np.ndarray, roll_deg: float, yaw_deg: float = 0.0, pitch_deg: float = 0.0) -> np.ndarray:
    """``T`` (T_world_camera) turned in its own frame: yaw about y, pitch about x, then roll about the optical axis."""
    T = T.copy()
    T[:3, :3] = T[:3, :3] @ _rot(1, yaw_deg) @ _rot(0, pitch_deg) @ _rot(2, roll_deg)
    return T
