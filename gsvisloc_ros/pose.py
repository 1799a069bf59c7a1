"""Camera pose from 3D-2D matches: PnP + LO-RANSAC, nonlinear refinement, covariance, acceptance.

* :func:`estimate_pose` runs poselib's LO-RANSAC (P3P minimal solver, local optimisation, robust
  bundle refinement on the inliers); OpenCV's USAC (MAGSAC++) + Levenberg-Marquardt refinement is
  the fallback when poselib is missing or fails, and can be chosen explicitly.
* Pixel convention: poselib's ``PINHOLE`` model projects ``u = fx * x / z + cx`` with no half-pixel
  shift, the same as :class:`~gsvisloc_ros.camera.PinholeCamera`, so ``cx, cy`` are passed unchanged
  (test/test_pose.py checks noise-free data gives errors ~1e-9, i.e. no half-pixel bias).
* Covariance: 6x6, order ``(tx, ty, tz, rx, ry, rz)``, of the *camera-to-world* pose perturbed in the
  world frame::

      T_world_camera(delta) = [ Exp([rx, ry, rz]) @ R_world_camera  |  c + [tx, ty, tz] ]

  i.e. the camera centre ``c`` moves by ``(tx, ty, tz)`` in world units and the camera rotates by the
  small rotation vector ``(rx, ry, rz)`` (radians) about the world axes through the camera centre --
  the convention of ROS ``geometry_msgs/PoseWithCovariance`` for a pose given in the world frame.
  It is ``sigma^2 (J^T J)^-1`` with J the Jacobian of the inlier reprojection residuals (pixels) with
  respect to delta, and ``sigma^2 = sum(r^2) / (2 n - 6)`` over the n inliers.
* Geometry (:func:`pose_geometry`): how firmly the inliers pin the pose down, whatever their fit.
  Inliers that fit well can still leave the pose loose: all on one small patch, they fit a family
  of poses (and on a symmetric object, a wrong one). The measures are the inliers' convex hull as a
  fraction of the image, and the pose uncertainty for a fixed noise (1 px at 640x480, scaled with
  the image diagonal) with at most ``max_independent`` inliers counted, so that many matches on
  one patch do not pass for many independent constraints: position as a fraction of the inliers'
  median depth, rotation in degrees. The measured residuals do not enter: a self-consistent wrong
  pose fits its inliers as tightly as a right one.
* :class:`PoseAcceptance` decides whether an estimate is good enough to publish and says why not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .camera import PinholeCamera, invert_pose, make_pose

BACKENDS = ("auto", "poselib", "opencv")


@dataclass(frozen=True)
class PnPConfig:
    """Settings of :func:`estimate_pose`.

    Attributes:
        backend: ``"poselib"``, ``"opencv"`` or ``"auto"`` (poselib, OpenCV if poselib is missing or fails).
        max_reproj_error: RANSAC inlier threshold in pixels; also the final inlier test.
        min_iterations, max_iterations: RANSAC iteration bounds.
        success_prob: RANSAC confidence used to stop early.
        loss: robust loss of poselib's refinement: ``"cauchy"``, ``"huber"``, ``"truncated"`` or ``"trivial"``.
        loss_scale: scale of the robust loss in pixels; ``None`` = half of ``max_reproj_error``.
        min_points: fewer valid correspondences (or final inliers) than this gives a failed estimate.
        compute_covariance: compute the 6x6 pose covariance of a successful estimate.
        seed: random seed of RANSAC (results are reproducible).
    """

    backend: str = "auto"
    max_reproj_error: float = 4.0
    min_iterations: int = 100
    max_iterations: int = 10000
    success_prob: float = 0.9999
    loss: str = "cauchy"
    loss_scale: float | None = None
    min_points: int = 6
    compute_covariance: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.max_reproj_error <= 0:
            raise ValueError(f"max_reproj_error must be positive, got {self.max_reproj_error}")
        if self.min_points < 4:
            raise ValueError(f"min_points must be >= 4 (PnP needs 3 points plus one to verify), got {self.min_points}")
        if self.loss.lower() not in ("cauchy", "huber", "truncated", "trivial"):
            raise ValueError(f"loss must be cauchy, huber, truncated or trivial, got {self.loss!r}")


@dataclass(frozen=True)
class PoseGeometry:
    """How firmly the inliers of an estimate pin its pose down (see the module docstring).

    Attributes:
        coverage: area of the inliers' convex hull as a fraction of the image.
        position_uncertainty: standard deviation of the camera centre (largest axis) for the fixed
            noise, as a fraction of the inliers' median depth.
        rotation_uncertainty_deg: standard deviation of the rotation (largest axis) in degrees.
    """

    coverage: float
    position_uncertainty: float
    rotation_uncertainty_deg: float

    def to_dict(self) -> dict:
        """JSON-ready (``None`` for an unbounded uncertainty)."""
        def finite(x: float) -> float | None:
            return float(x) if np.isfinite(x) else None

        return {"coverage": self.coverage, "position_uncertainty": finite(self.position_uncertainty),
                "rotation_uncertainty_deg": finite(self.rotation_uncertainty_deg)}


#: Noise of the geometry measures, in pixels per pixel of image diagonal (1 px at 640x480).
GEOMETRY_NOISE = 1.0 / 800.0


def pose_geometry(points3d: np.ndarray, points2d: np.ndarray, camera: PinholeCamera, T_world_camera: np.ndarray,
                  max_independent: int = 300) -> PoseGeometry:
    """:class:`PoseGeometry` of inlier correspondences at ``T_world_camera`` (unbounded when degenerate)."""
    from scipy.spatial import ConvexHull, QhullError

    points3d = np.asarray(points3d, dtype=np.float64).reshape(-1, 3)
    points2d = np.asarray(points2d, dtype=np.float64).reshape(-1, 2)
    n = len(points3d)
    loose = PoseGeometry(0.0, float("inf"), float("inf"))
    if n < 4:
        return loose
    try:
        coverage = float(ConvexHull(points2d).volume) / (camera.width * camera.height)
    except (QhullError, ValueError):  # collinear or coincident pixels
        coverage = 0.0
    sigma = GEOMETRY_NOISE * float(np.hypot(camera.width, camera.height))
    J = reprojection_jacobian(points3d, camera, T_world_camera)
    info = (J.T @ J) * (min(n, max_independent) / n) / sigma**2
    try:
        cov = np.linalg.inv(info)
    except np.linalg.LinAlgError:
        return PoseGeometry(coverage, float("inf"), float("inf"))
    T = np.asarray(T_world_camera, dtype=np.float64)
    depth = float(np.median((points3d - T[:3, 3]) @ T[:3, 2]))
    position = float(np.sqrt(max(np.linalg.eigvalsh(0.5 * (cov[:3, :3] + cov[:3, :3].T))[-1], 0.0)))
    rotation = float(np.sqrt(max(np.linalg.eigvalsh(0.5 * (cov[3:, 3:] + cov[3:, 3:].T))[-1], 0.0)))
    if not (depth > 0 and np.isfinite(position) and np.isfinite(rotation)):
        return PoseGeometry(coverage, float("inf"), float("inf"))
    return PoseGeometry(coverage, position / depth, float(np.degrees(rotation)))


@dataclass
class PoseEstimate:
    """Result of :func:`estimate_pose`; ``success`` False means ``message`` says why.

    Attributes:
        success: a pose was found with at least ``min_points`` inliers.
        T_world_camera: 4x4 camera-to-world pose, or ``None`` on failure.
        inliers: [N] bool mask over the input correspondences.
        num_inliers: ``inliers.sum()``.
        num_matches: N, the number of input correspondences.
        rmse_px: root-mean-square reprojection error of the inliers in pixels (inf on failure).
        covariance: 6x6 covariance of the pose (see the module docstring), or ``None``.
        backend: which solver produced the pose.
        message: why it failed, or an empty string.
        points3d, points2d: the inlier correspondences ([K, 3] world points, [K, 2] pixels).
        geometry: how firmly the inliers pin the pose down (:func:`pose_geometry`), or ``None``.
    """

    success: bool
    T_world_camera: np.ndarray | None
    inliers: np.ndarray
    num_inliers: int
    num_matches: int
    rmse_px: float
    covariance: np.ndarray | None = None
    backend: str = ""
    message: str = ""
    points3d: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    points2d: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    geometry: PoseGeometry | None = None

    @property
    def inlier_ratio(self) -> float:
        return self.num_inliers / self.num_matches if self.num_matches else 0.0

    @property
    def position_std(self) -> np.ndarray | None:
        """Standard deviation of the camera centre along world x, y, z (map units)."""
        return None if self.covariance is None else np.sqrt(np.diag(self.covariance)[:3])

    @property
    def rotation_std_deg(self) -> np.ndarray | None:
        """Standard deviation of the rotation about world x, y, z, in degrees."""
        return None if self.covariance is None else np.degrees(np.sqrt(np.diag(self.covariance)[3:]))


def _failed(n: int, message: str, backend: str = "") -> PoseEstimate:
    return PoseEstimate(False, None, np.zeros(n, dtype=bool), 0, n, float("inf"), None, backend, message)


def reprojection_errors(
    points3d: np.ndarray, points2d: np.ndarray, camera: PinholeCamera, T_world_camera: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(pixel error [N], depth [N]) of world points projected by a camera at ``T_world_camera``."""
    T_cw = invert_pose(T_world_camera)
    pc = np.asarray(points3d, dtype=np.float64) @ T_cw[:3, :3].T + T_cw[:3, 3]
    uv, depth = camera.project(pc)
    return np.linalg.norm(uv - np.asarray(points2d, dtype=np.float64), axis=1), depth


def reprojection_jacobian(points3d: np.ndarray, camera: PinholeCamera, T_world_camera: np.ndarray) -> np.ndarray:
    """Jacobian [2N, 6] of the projections (u0, v0, u1, v1, ...) w.r.t. the world-frame perturbation.

    The perturbation is ``delta = (tx, ty, tz, rx, ry, rz)`` with
    ``T(delta) = [Exp(r) R_wc | c + t]`` (see the module docstring).
    """
    R_wc = np.asarray(T_world_camera, dtype=np.float64)[:3, :3]
    c = np.asarray(T_world_camera, dtype=np.float64)[:3, 3]
    v = np.asarray(points3d, dtype=np.float64).reshape(-1, 3) - c  # world-frame ray from the centre
    p = v @ R_wc  # camera-frame points, R_wc^T v
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    n = len(p)
    # d(u, v)/d(p_camera)
    d_proj = np.zeros((n, 2, 3))
    d_proj[:, 0, 0] = camera.fx / z
    d_proj[:, 0, 2] = -camera.fx * x / z**2
    d_proj[:, 1, 1] = camera.fy / z
    d_proj[:, 1, 2] = -camera.fy * y / z**2
    # p(delta) = R_wc^T Exp(-r) (v - t): dp/dt = -R_wc^T, dp/dr = R_wc^T [v]_x
    d_t = np.broadcast_to(-R_wc.T, (n, 3, 3))
    skew = np.zeros((n, 3, 3))
    skew[:, 0, 1], skew[:, 0, 2] = -v[:, 2], v[:, 1]
    skew[:, 1, 0], skew[:, 1, 2] = v[:, 2], -v[:, 0]
    skew[:, 2, 0], skew[:, 2, 1] = -v[:, 1], v[:, 0]
    d_r = R_wc.T[None] @ skew
    J = np.concatenate([d_proj @ d_t, d_proj @ d_r], axis=2)  # [n, 2, 6]
    return J.reshape(2 * n, 6)


def pose_covariance(
    points3d: np.ndarray, points2d: np.ndarray, camera: PinholeCamera, T_world_camera: np.ndarray
) -> np.ndarray | None:
    """``sigma^2 (J^T J)^-1`` over the given (inlier) correspondences; ``None`` if degenerate or n < 4."""
    points3d = np.asarray(points3d, dtype=np.float64).reshape(-1, 3)
    n = len(points3d)
    if n < 4:
        return None
    T_cw = invert_pose(T_world_camera)
    uv, _ = camera.project(points3d @ T_cw[:3, :3].T + T_cw[:3, 3])
    residuals = (uv - np.asarray(points2d, dtype=np.float64).reshape(-1, 2)).ravel()
    sigma2 = float(residuals @ residuals) / (2 * n - 6)
    J = reprojection_jacobian(points3d, camera, T_world_camera)
    info = J.T @ J
    try:
        np.linalg.cholesky(info)
        if np.linalg.cond(info) > 1e14:
            return None
        cov = np.linalg.inv(info) * sigma2
    except np.linalg.LinAlgError:
        return None
    return 0.5 * (cov + cov.T)


def _rotation_to_quat_wxyz(R: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(R).as_quat()
    return np.array([w, x, y, z])


def _solve_poselib(p3d, p2d, camera: PinholeCamera, cfg: PnPConfig, T_init):
    import poselib

    cam = {"model": "PINHOLE", "width": int(camera.width), "height": int(camera.height),
           "params": [camera.fx, camera.fy, camera.cx, camera.cy]}  # fmt: skip
    ransac = {
        "max_reproj_error": float(cfg.max_reproj_error),
        "min_iterations": int(cfg.min_iterations),
        "max_iterations": int(cfg.max_iterations),
        "success_prob": float(cfg.success_prob),
        "seed": int(cfg.seed),
    }
    scale = cfg.loss_scale if cfg.loss_scale is not None else 0.5 * cfg.max_reproj_error
    bundle = {"loss_type": cfg.loss.upper(), "loss_scale": float(scale)}
    init = None
    if T_init is not None:
        T_cw = invert_pose(T_init)
        init = poselib.CameraPose()
        init.q = _rotation_to_quat_wxyz(T_cw[:3, :3])
        init.t = T_cw[:3, 3]
    pose, info = poselib.estimate_absolute_pose(p2d, p3d, cam, ransac, bundle, init)
    if int(info.get("num_inliers", 0)) < 3:
        raise RuntimeError(f"poselib found {info.get('num_inliers', 0)} inliers")
    return invert_pose(make_pose(pose.R, pose.t)), np.asarray(info["inliers"], dtype=bool)


def _solve_opencv(p3d, p2d, camera: PinholeCamera, cfg: PnPConfig, T_init):
    import cv2

    K = camera.K
    ok, rvec, tvec, inl = cv2.solvePnPRansac(
        p3d, p2d, K, None,
        iterationsCount=int(cfg.max_iterations),
        reprojectionError=float(cfg.max_reproj_error),
        confidence=float(cfg.success_prob),
        flags=cv2.USAC_MAGSAC,
    )  # fmt: skip
    if not ok or inl is None or len(inl) < 4:
        raise RuntimeError("OpenCV USAC found no pose")
    mask = np.zeros(len(p3d), dtype=bool)
    mask[np.asarray(inl).ravel()] = True
    rvec, tvec = cv2.solvePnPRefineLM(p3d[mask], p2d[mask], K, None, rvec, tvec)
    R, _ = cv2.Rodrigues(rvec)
    return invert_pose(make_pose(R, tvec.ravel())), mask


def _refine_least_squares(p3d, p2d, camera: PinholeCamera, T_world_camera, iterations: int = 10):
    """Gauss-Newton on the squared reprojection error (used on the final inliers)."""
    from scipy.spatial.transform import Rotation

    T = np.array(T_world_camera, dtype=np.float64)
    for _ in range(iterations):
        T_cw = invert_pose(T)
        uv, _ = camera.project(p3d @ T_cw[:3, :3].T + T_cw[:3, 3])
        r = (uv - p2d).ravel()
        J = reprojection_jacobian(p3d, camera, T)
        try:
            step = -np.linalg.solve(J.T @ J, J.T @ r)
        except np.linalg.LinAlgError:
            break
        T[:3, 3] += step[:3]
        T[:3, :3] = Rotation.from_rotvec(step[3:]).as_matrix() @ T[:3, :3]
        if np.linalg.norm(step) < 1e-12 * (1.0 + np.linalg.norm(T[:3, 3])):
            break
    return T


def estimate_pose(
    points3d: np.ndarray,
    points2d: np.ndarray,
    camera: PinholeCamera,
    config: PnPConfig | None = None,
    T_world_camera_init: np.ndarray | None = None,
) -> PoseEstimate:
    """Camera pose from world points [N, 3] observed at pixels [N, 2] (pixel-centre convention).

    Non-finite correspondences are ignored (never inliers). Too few points or no consensus gives a
    :class:`PoseEstimate` with ``success=False`` and a message; only malformed input raises.

    Args:
        points3d: [N, 3] world (map) coordinates.
        points2d: [N, 2] pixel coordinates (u, v) in ``camera``'s image.
        camera: the pinhole intrinsics of the query image.
        config: solver settings; defaults when ``None``.
        T_world_camera_init: optional prior camera-to-world pose, tried as an extra RANSAC hypothesis
            (poselib backend).

    Raises:
        ValueError: if the arrays do not have shapes [N, 3] and [N, 2] with the same N.
    """
    cfg = config or PnPConfig()
    p3d = np.asarray(points3d, dtype=np.float64)
    p2d = np.asarray(points2d, dtype=np.float64)
    if p3d.ndim != 2 or p3d.shape[1] != 3 or p2d.ndim != 2 or p2d.shape[1] != 2 or len(p3d) != len(p2d):
        raise ValueError(f"need points3d [N,3] and points2d [N,2] with the same N, got {p3d.shape} and {p2d.shape}")
    n = len(p3d)
    valid = np.isfinite(p3d).all(axis=1) & np.isfinite(p2d).all(axis=1)
    idx = np.nonzero(valid)[0]
    if len(idx) < cfg.min_points:
        return _failed(n, f"too few valid correspondences: {len(idx)} < {cfg.min_points}")
    q3d, q2d = np.ascontiguousarray(p3d[idx]), np.ascontiguousarray(p2d[idx])

    backends = {"auto": ("poselib", "opencv"), "poselib": ("poselib",), "opencv": ("opencv",)}[cfg.backend]
    solvers = {"poselib": _solve_poselib, "opencv": _solve_opencv}
    errors = []
    T = None
    used = ""
    for name in backends:
        try:
            T, _ = solvers[name](q3d, q2d, camera, cfg, T_world_camera_init)
            used = name
            break
        except ImportError as exc:
            errors.append(f"{name} unavailable ({exc})")
        except (RuntimeError, ValueError) as exc:  # no consensus, or the solver refused the input
            errors.append(f"{name}: {exc}")
    if T is None:
        return _failed(n, "no pose: " + "; ".join(errors))

    # Final inliers from the refined pose, then a plain least-squares polish on them.
    err, depth = reprojection_errors(q3d, q2d, camera, T)
    inl = (depth > 0) & (err < cfg.max_reproj_error)
    if inl.sum() >= cfg.min_points:
        T = _refine_least_squares(q3d[inl], q2d[inl], camera, T)
        err, depth = reprojection_errors(q3d, q2d, camera, T)
        inl = (depth > 0) & (err < cfg.max_reproj_error)
    inliers = np.zeros(n, dtype=bool)
    inliers[idx[inl]] = True
    num = int(inl.sum())
    if num < cfg.min_points:
        est = _failed(n, f"too few inliers: {num} < {cfg.min_points}", used)
        est.inliers = inliers
        est.num_inliers = num
        return est
    rmse = float(np.sqrt(np.mean(err[inl] ** 2)))
    cov = pose_covariance(q3d[inl], q2d[inl], camera, T) if cfg.compute_covariance else None
    message = "" if cov is not None or not cfg.compute_covariance else "covariance undefined (degenerate geometry)"
    geometry = pose_geometry(q3d[inl], q2d[inl], camera, T)
    return PoseEstimate(True, T, inliers, num, n, rmse, cov, used, message, q3d[inl], q2d[inl], geometry)


@dataclass(frozen=True)
class PoseAcceptance:
    """When is an estimate good enough to publish?

    The first three thresholds judge how well the inliers fit; the geometry thresholds judge how
    firmly they pin the pose down (:class:`PoseGeometry`): a pose refused by one of those is
    refused for "weak geometry". ``None`` turns a geometry test off.

    The geometry defaults lie between the measures of right and wrong estimates of 840 global
    searches (``benchmarks/wrong_poses.py`` on the plant and tarot captures and two procedural
    scenes: trajectories, close-ups without any minimum of texture, negatives). The estimates
    within (5 % of the scene scale, 5 deg) that passed the other tests had coverage >= 0.118,
    position uncertainty <= 0.0025 and rotation uncertainty <= 0.134 deg; every estimate outside
    (5-170 deg off) had coverage <= 0.08 or position uncertainty >= 0.0056 and rotation
    uncertainty >= 0.3 deg, and the plant close-up accepted 10 deg off before these tests had
    coverage 0.074, position uncertainty 0.0044, rotation uncertainty 0.24 deg. Coverage is the
    test that separates them, with a thin margin: after the encoding changed, one estimate 5.6 deg
    off had coverage 0.104 and right ones went down to 0.118, hence 0.115. The uncertainties are
    the backstop for inliers spread into a few distant clusters. Flat patches are the weakest: a
    poster filling 14 % of the image measures ~0.0047 (refused), 28 % ~0.0024 (accepted).

    Attributes:
        min_inliers: minimum number of inliers.
        min_inlier_ratio: minimum fraction of the matches that are inliers.
        max_rmse_px: maximum inlier reprojection RMSE in pixels.
        min_coverage: minimum area of the inliers' convex hull, as a fraction of the image.
        max_position_uncertainty: maximum position uncertainty, as a fraction of the inliers' depth.
        max_rotation_uncertainty_deg: maximum rotation uncertainty in degrees.
    """

    min_inliers: int = 30
    min_inlier_ratio: float = 0.2
    max_rmse_px: float = 3.0
    min_coverage: float | None = 0.115
    max_position_uncertainty: float | None = 0.0035
    max_rotation_uncertainty_deg: float | None = 0.2

    def check(self, estimate: PoseEstimate) -> tuple[bool, str]:
        """``(ok, reason)``; the reason lists every failed test, or is ``"ok"``."""
        if not estimate.success:
            return False, f"no pose: {estimate.message}" if estimate.message else "no pose"
        reasons = []
        if estimate.num_inliers < self.min_inliers:
            reasons.append(f"too few inliers: {estimate.num_inliers} < {self.min_inliers}")
        if estimate.inlier_ratio < self.min_inlier_ratio:
            reasons.append(f"inlier ratio too low: {estimate.inlier_ratio:.2f} < {self.min_inlier_ratio:.2f}")
        if not estimate.rmse_px <= self.max_rmse_px:
            reasons.append(f"reprojection RMSE too high: {estimate.rmse_px:.2f} px > {self.max_rmse_px:.2f} px")
        reasons += self._geometry_reasons(estimate.geometry)
        return (not reasons), ("; ".join(reasons) if reasons else "ok")

    def weak_geometry(self, estimate: PoseEstimate) -> bool:
        """Whether the geometry tests refuse ``estimate`` (a pose that was found)."""
        return estimate.success and bool(self._geometry_reasons(estimate.geometry))

    def _geometry_reasons(self, g: PoseGeometry | None) -> list[str]:
        tests = (self.min_coverage, self.max_position_uncertainty, self.max_rotation_uncertainty_deg)
        if all(t is None for t in tests):
            return []
        if g is None:
            return ["weak geometry: not measured"]
        reasons = []
        if self.min_coverage is not None and not g.coverage >= self.min_coverage:
            reasons.append(f"inliers cover {100 * g.coverage:.1f} % of the image < {100 * self.min_coverage:.1f} %")
        if self.max_position_uncertainty is not None and not g.position_uncertainty <= self.max_position_uncertainty:
            reasons.append(f"position uncertainty {100 * g.position_uncertainty:.2f} % of the depth > "
                           f"{100 * self.max_position_uncertainty:.2f} %")
        if self.max_rotation_uncertainty_deg is not None and not (
                g.rotation_uncertainty_deg <= self.max_rotation_uncertainty_deg):
            reasons.append(f"rotation uncertainty {g.rotation_uncertainty_deg:.2f} deg > "
                           f"{self.max_rotation_uncertainty_deg:.2f} deg")
        return [f"weak geometry: {r}" for r in reasons]
