"""Slow, obviously-correct reference renderer (numpy, float64).

It implements the image formation of :mod:`gsvisloc_ros.render` as literally as possible, to check
the fast kernels against: every Gaussian is projected with plain array maths, the Gaussians are
sorted front to back, and then composited one at a time over the pixels around it. Processing the
Gaussians one after the other over all pixels is the same as processing each pixel's Gaussians
front to back, because pixels do not interact. Only the constants of
:mod:`~gsvisloc_ros.render.formation` are shared with the fast backends.

It takes seconds (hundreds of thousands of pixels times about a hundred thousand Gaussians), and
is meant for tests and for the side-by-side benchmark only.
"""

from __future__ import annotations

import numpy as np

from ..camera import PinholeCamera
from ..gaussians import GaussianMap, sh_basis
from .formation import (
    ALPHA_MAX,
    ALPHA_MIN,
    LOWPASS_PX2,
    TRANSMITTANCE_MIN,
    finish_image,
    projection_clamp,
)


def quat_to_rotmat(q_wxyz: np.ndarray) -> np.ndarray:
    """Rotation matrices [N,3,3] of (w, x, y, z) quaternions [N,4] (normalised here)."""
    q = q_wxyz / np.linalg.norm(q_wxyz, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], axis=-1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], axis=-1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=-1),
        ],
        axis=1,
    )


def eval_sh(sh: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """RGB (before the +0.5 offset) of SH coefficients [N,K,3] seen along unit directions [N,3]."""
    degree = int(round(np.sqrt(sh.shape[1]))) - 1
    return np.einsum("nk,nkc->nc", sh_basis(dirs, degree), sh)


def project(gmap: GaussianMap, camera: PinholeCamera, T_camera_world: np.ndarray, near: float) -> dict:
    """Project every Gaussian: pixel centre, camera depth, 2D covariance, colour, visibility."""
    T = np.asarray(T_camera_world, dtype=np.float64)
    R, t = T[:3, :3], T[:3, 3]
    means = gmap.means.astype(np.float64)
    p = means @ R.T + t
    z = p[:, 2]
    visible = z > near
    zs = np.where(visible, z, 1.0)  # keeps the maths finite for culled Gaussians

    u = camera.fx * p[:, 0] / zs + camera.cx
    v = camera.fy * p[:, 1] / zs + camera.cy

    # 3D covariance in the camera frame: R (Rq S)(Rq S)^T R^T.
    M = quat_to_rotmat(gmap.quats.astype(np.float64)) * gmap.scales.astype(np.float64)[:, None, :]
    cov_world = M @ M.transpose(0, 2, 1)
    cov_cam = R @ cov_world @ R.T

    # Jacobian of the pinhole projection, at x/z and y/z clamped to 1.3x the image's half-extent.
    x_lo, x_hi, y_lo, y_hi = projection_clamp(camera)
    xz = np.clip(p[:, 0] / zs, x_lo, x_hi)
    yz = np.clip(p[:, 1] / zs, y_lo, y_hi)
    J = np.zeros((len(p), 2, 3))
    J[:, 0, 0] = camera.fx / zs
    J[:, 0, 2] = -camera.fx * xz / zs
    J[:, 1, 1] = camera.fy / zs
    J[:, 1, 2] = -camera.fy * yz / zs
    cov2d = J @ cov_cam @ J.transpose(0, 2, 1) + LOWPASS_PX2 * np.eye(2)

    campos = -R.T @ t
    dirs = means - campos
    dirs /= np.maximum(np.linalg.norm(dirs, axis=1, keepdims=True), 1e-12)
    colors = np.maximum(eval_sh(gmap.sh.astype(np.float64), dirs) + 0.5, 0.0)

    return {
        "uv": np.stack([u, v], axis=1),
        "z": z,
        "cov2d": cov2d,
        "conic": np.linalg.inv(cov2d),
        "colors": colors,
        "opacities": gmap.opacities.astype(np.float64),
        "visible": visible,
    }


def render(
    gmap: GaussianMap,
    camera: PinholeCamera,
    T_camera_world: np.ndarray,
    *,
    background=(0.0, 0.0, 0.0),
    near: float = 0.01,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render (rgb [H,W,3], depth [H,W], alpha [H,W]) as float32; see :func:`gsvisloc_ros.render.render`."""
    width, height = camera.size
    color = np.zeros((height, width, 3))
    depth_sum = np.zeros((height, width))
    trans = np.ones((height, width))
    done = np.zeros((height, width), dtype=bool)

    g = project(gmap, camera, T_camera_world, near)
    order = np.flatnonzero(g["visible"])
    order = order[np.argsort(g["z"][order], kind="stable")]
    for i in order:
        opacity = g["opacities"][i]
        if opacity < ALPHA_MIN:
            continue  # alpha <= opacity: it can never reach the threshold
        # All pixels where alpha >= ALPHA_MIN lie in the ellipse d^T conic d <= q_max, which lies in
        # a disc of radius sqrt(q_max * largest eigenvalue of cov2d); one pixel of margin on top.
        q_max = 2.0 * np.log(opacity / ALPHA_MIN)
        radius = np.sqrt(q_max * np.linalg.eigvalsh(g["cov2d"][i])[-1]) + 1.0
        u, v = g["uv"][i]
        x0, x1 = max(0, int(np.floor(u - radius))), min(width - 1, int(np.ceil(u + radius)))
        y0, y1 = max(0, int(np.floor(v - radius))), min(height - 1, int(np.ceil(v + radius)))
        if x0 > x1 or y0 > y1:
            continue
        box = np.s_[y0 : y1 + 1, x0 : x1 + 1]
        dx = np.arange(x0, x1 + 1)[None, :] - u  # pixel (i, j) is centred at (u, v) = (i, j)
        dy = np.arange(y0, y1 + 1)[:, None] - v
        (a, b), (_, c) = g["conic"][i]
        power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
        alpha = np.minimum(ALPHA_MAX, opacity * np.exp(power))
        active = ~done[box] & (power <= 0.0) & (alpha >= ALPHA_MIN)
        t_box = trans[box]
        t_next = t_box * (1.0 - alpha)
        finished = active & (t_next < TRANSMITTANCE_MIN)
        done[box] |= finished
        blend = active & ~finished
        weight = np.where(blend, alpha * t_box, 0.0)
        color[box] += weight[..., None] * g["colors"][i]
        depth_sum[box] += weight * g["z"][i]
        trans[box] = np.where(blend, t_next, t_box)
    return finish_image(color, depth_sum, trans, background)
