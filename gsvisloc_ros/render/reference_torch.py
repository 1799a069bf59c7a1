"""The reference renderer (:mod:`~gsvisloc_ros.render.reference`) in torch, for autograd: a gradient oracle.

Same image formation, written as literally: project every Gaussian with plain matrix algebra
(3D covariance ``Rq S S Rq^T``, camera covariance ``R Sigma R^T``, ``J Sigma J^T``, ``inv`` of the
2D covariance, SH through :func:`~gsvisloc_ros.gaussians.sh_basis`'s formulas), sort them by depth,
and blend them one at a time over *every* pixel of the image. Autograd then gives the exact
gradients of that formation with respect to every parameter and the se(3) pose. It is slow
(every Gaussian times every pixel) and meant for tests on tiny scenes only.
"""

from __future__ import annotations

import numpy as np
import torch

from ..camera import PinholeCamera
from ..gaussians import SH_C0, SH_C1, SH_C2, SH_C3
from .formation import ALPHA_MAX, ALPHA_MIN, DEFAULT_NEAR, LOWPASS_PX2, TRANSMITTANCE_MIN, projection_clamp


def _expm_se3(xi: torch.Tensor) -> torch.Tensor:
    """exp of the twist (rho, phi) by the matrix exponential of its 4x4 hat matrix."""
    hat = torch.zeros((4, 4), dtype=xi.dtype)
    hat[0, 1], hat[0, 2], hat[1, 2] = -xi[5], xi[4], -xi[3]
    hat[1, 0], hat[2, 0], hat[2, 1] = xi[5], -xi[4], xi[3]
    hat[:3, 3] = xi[:3]
    return torch.linalg.matrix_exp(hat)


def _sh_basis(d: torch.Tensor, degree: int) -> torch.Tensor:
    x, y, z = d[:, 0], d[:, 1], d[:, 2]
    columns = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        columns += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        columns += [SH_C2[0] * x * y, SH_C2[1] * y * z, SH_C2[2] * (2.0 * zz - xx - yy), SH_C2[3] * x * z,
                    SH_C2[4] * (xx - yy)]  # fmt: skip
    if degree >= 3:
        columns += [
            SH_C3[0] * y * (3.0 * xx - yy), SH_C3[1] * x * y * z, SH_C3[2] * y * (4.0 * zz - xx - yy),
            SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy), SH_C3[4] * x * (4.0 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy), SH_C3[6] * x * (xx - 3.0 * yy),
        ]  # fmt: skip
    return torch.stack(columns, dim=1)


def render_reference_torch(
    means, log_scales, quats, opacity_logits, sh, sh_degree: int, camera: PinholeCamera, T_camera_world, *,
    pose_delta: torch.Tensor | None = None, background=(0.0, 0.0, 0.0), near: float = DEFAULT_NEAR,
) -> torch.Tensor:  # fmt: skip
    """RGB [H, W, 3] in [0, 1]; same arguments as :func:`~gsvisloc_ros.render.differentiable.render_torch`."""
    dtype = means.dtype
    T = torch.as_tensor(np.asarray(T_camera_world, dtype=np.float64), dtype=dtype)
    if pose_delta is not None:
        T = _expm_se3(pose_delta.to(dtype)) @ T
    R, t = T[:3, :3], T[:3, 3]
    width, height = camera.size

    q = quats / torch.linalg.norm(quats, dim=1, keepdim=True)
    w, x, y, z = q.T
    Rq = torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], dim=-1),
            torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], dim=-1),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], dim=-1),
        ],
        dim=1,
    )
    S = torch.diag_embed(torch.exp(log_scales))
    cov_world = Rq @ S @ S @ Rq.transpose(1, 2)
    cov_cam = R @ cov_world @ R.T

    p = means @ R.T + t
    pz = p[:, 2]
    x_lo, x_hi, y_lo, y_hi = projection_clamp(camera)
    campos = -R.T @ t
    opacities = torch.sigmoid(opacity_logits)
    basis_degree = sh_degree

    color = torch.zeros((height, width, 3), dtype=dtype)
    trans = torch.ones((height, width), dtype=dtype)
    done = torch.zeros((height, width), dtype=torch.bool)
    px = torch.arange(width, dtype=dtype)[None, :]
    py = torch.arange(height, dtype=dtype)[:, None]
    for i in torch.argsort(pz.detach(), stable=True).tolist():
        if not pz[i] > near or opacities[i] < ALPHA_MIN:
            continue
        zi = pz[i]
        u = camera.fx * p[i, 0] / zi + camera.cx
        v = camera.fy * p[i, 1] / zi + camera.cy
        xz = torch.clamp(p[i, 0] / zi, x_lo, x_hi)
        yz = torch.clamp(p[i, 1] / zi, y_lo, y_hi)
        J = torch.stack(
            [
                torch.stack([camera.fx / zi, torch.zeros_like(zi), -camera.fx * xz / zi]),
                torch.stack([torch.zeros_like(zi), camera.fy / zi, -camera.fy * yz / zi]),
            ]
        )
        cov2d = J @ cov_cam[i] @ J.T + LOWPASS_PX2 * torch.eye(2, dtype=dtype)
        conic = torch.linalg.inv(cov2d)
        d = means[i] - campos
        d = d / torch.linalg.norm(d)
        rgb = torch.clamp(_sh_basis(d[None], basis_degree)[0] @ sh[i, : (basis_degree + 1) ** 2] + 0.5, min=0.0)

        dx, dy = px - u, py - v
        power = -0.5 * (conic[0, 0] * dx * dx + conic[1, 1] * dy * dy) - conic[0, 1] * dx * dy
        alpha = torch.clamp(opacities[i] * torch.exp(power), max=ALPHA_MAX)
        active = ~done & (power <= 0.0) & (alpha >= ALPHA_MIN)
        t_next = trans * (1.0 - alpha)
        finished = active & (t_next < TRANSMITTANCE_MIN)
        done = done | finished
        blend = active & ~finished
        weight = torch.where(blend, alpha * trans, torch.zeros_like(alpha))
        color = color + weight[..., None] * rgb
        trans = torch.where(blend, t_next, trans)
    bg = torch.as_tensor(np.asarray(background, dtype=np.float64), dtype=dtype)
    return torch.clamp(color + trans[..., None] * bg, 0.0, 1.0)
