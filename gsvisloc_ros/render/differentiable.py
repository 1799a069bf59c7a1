"""Differentiable rendering on the CPU: torch for the projection, numba for the rasterization.

:func:`render_torch` renders Gaussians given by their *trainable* parameters (means, log-scales,
unnormalised (w, x, y, z) quaternions, opacity logits, SH coefficients) as a torch image whose
gradients reach every parameter and, through ``pose_delta``, the camera pose:

* the projection (EWA splatting, SH colours; :mod:`~gsvisloc_ros.render.formation`) is written
  in vectorised torch, so autograd carries the 2D gradients back to 3D and to the pose;
* the rasterization is :func:`~gsvisloc_ros.render.backward.rasterize` and its hand-written
  backward, joined to autograd by :class:`_Rasterize`.

The camera pose is a 6-vector ``xi = (rho, phi)`` in se(3) (translation part first), a left
perturbation of the extrinsics: ``T_camera_world = exp(xi^) @ T_camera_world_0``.

The torch twin of :mod:`~gsvisloc_ros.render.reference`, written pixel by pixel
(:func:`gsvisloc_ros.render.reference_torch.render_reference_torch`), is the oracle the tests
compare these gradients with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..camera import PinholeCamera
from ..gaussians import SH_C0, SH_C1, SH_C2, SH_C3
from . import backward
from .formation import DEFAULT_NEAR, LOWPASS_PX2, projection_clamp


def se3_hat(xi: torch.Tensor) -> torch.Tensor:
    """The 4x4 matrix of the twist ``xi = (rho, phi)``."""
    rho, phi = xi[:3], xi[3:]
    zero = torch.zeros((), dtype=xi.dtype)
    W = torch.stack(
        [
            torch.stack([zero, -phi[2], phi[1]]),
            torch.stack([phi[2], zero, -phi[0]]),
            torch.stack([-phi[1], phi[0], zero]),
        ]
    )
    top = torch.cat([W, rho[:, None]], dim=1)
    return torch.cat([top, torch.zeros((1, 4), dtype=xi.dtype)], dim=0)


def perturbed_extrinsics(T_camera_world, pose_delta: torch.Tensor | None, dtype) -> torch.Tensor:
    """``exp(xi^) @ T_camera_world`` as a torch 4x4 (no perturbation when ``pose_delta`` is None)."""
    T0 = torch.as_tensor(np.asarray(T_camera_world, dtype=np.float64), dtype=dtype)
    if pose_delta is None:
        return T0
    return torch.linalg.matrix_exp(se3_hat(pose_delta.to(dtype))) @ T0


def sh_colors(sh: torch.Tensor, dirs: torch.Tensor, degree: int) -> torch.Tensor:
    """RGB [N, 3] of SH coefficients [N, K, 3] (only the first ``degree`` bands used) along unit ``dirs``.

    The basis [N, (degree + 1)^2] is stacked and contracted with the coefficients in one product:
    indexing ``sh[:, k]`` per term would cost a full-size zero tensor per term in the backward.
    """
    x, y, z = dirs.unbind(1)
    columns = [torch.full_like(x, SH_C0)]
    if degree > 0:
        columns += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree > 1:
        xx, yy, zz = x * x, y * y, z * z
        columns += [
            SH_C2[0] * x * y, SH_C2[1] * y * z, SH_C2[2] * (2 * zz - xx - yy), SH_C2[3] * x * z,
            SH_C2[4] * (xx - yy),
        ]  # fmt: skip
    if degree > 2:
        columns += [
            SH_C3[0] * y * (3 * xx - yy), SH_C3[1] * x * y * z, SH_C3[2] * y * (4 * zz - xx - yy),
            SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), SH_C3[4] * x * (4 * zz - xx - yy), SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3 * yy),
        ]  # fmt: skip
    basis = torch.stack(columns, dim=1)
    color = (basis[:, :, None] * sh[:, : len(columns)]).sum(1)  # einsum's batched matmul is slower here
    return torch.clamp(color + 0.5, min=0.0)


def quat_rotations(quats: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [N, 3, 3] of unnormalised (w, x, y, z) quaternions."""
    q = quats / torch.linalg.norm(quats, dim=1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=1,
    ).reshape(-1, 3, 3)  # fmt: skip


@dataclass
class Projection:
    """Per-Gaussian 2D quantities of one view (torch, differentiable)."""

    uv: torch.Tensor  # [N, 2]
    conic: torch.Tensor  # [N, 3]: a, b, c of the inverse 2D covariance
    opacity: torch.Tensor  # [N]
    color: torch.Tensor  # [N, 3]
    depth: torch.Tensor  # [N], camera z; culled Gaussians have depth 0


def project(
    means, log_scales, quats, opacity_logits, sh, sh_degree: int, camera: PinholeCamera, T_camera_world, *,
    pose_delta: torch.Tensor | None = None, near: float = DEFAULT_NEAR,
) -> Projection:  # fmt: skip
    """Project trainable Gaussians into ``camera`` (see the module doc for ``pose_delta``)."""
    dtype = means.dtype
    T = perturbed_extrinsics(T_camera_world, pose_delta, dtype)
    R, t = T[:3, :3], T[:3, 3]
    px, py, z = (means @ R.T + t).unbind(1)
    visible = z.detach() > near
    zs = torch.where(visible, z, torch.ones_like(z))
    inv_z = 1.0 / zs
    u = camera.fx * px * inv_z + camera.cx
    v = camera.fy * py * inv_z + camera.cy

    x_lo, x_hi, y_lo, y_hi = projection_clamp(camera)
    tx = torch.clamp(px * inv_z, x_lo, x_hi)
    ty = torch.clamp(py * inv_z, y_lo, y_hi)
    # Rows of J R (J: the projection's Jacobian at the clamped point): cov2d = (J R) Sigma (J R)^T,
    # Sigma = M M^T with M = Rq diag(s), so cov2d = (J R M)(J R M)^T.
    row_a = (camera.fx * inv_z)[:, None] * (R[0][None, :] - tx[:, None] * R[2][None, :])
    row_b = (camera.fy * inv_z)[:, None] * (R[1][None, :] - ty[:, None] * R[2][None, :])
    M = quat_rotations(quats) * torch.exp(log_scales)[:, None, :]
    am = (row_a[:, :, None] * M).sum(1)
    bm = (row_b[:, :, None] * M).sum(1)
    sxx = (am * am).sum(1) + LOWPASS_PX2
    sxy = (am * bm).sum(1)
    syy = (bm * bm).sum(1) + LOWPASS_PX2
    det = sxx * syy - sxy * sxy
    conic = torch.stack([syy / det, -sxy / det, sxx / det], dim=1)

    if sh_degree > 0:
        campos = -R.T @ t
        dirs = means - campos
        dirs = dirs / torch.linalg.norm(dirs, dim=1, keepdim=True).clamp_min(1e-12)
    else:
        dirs = means  # unused by degree 0
    color = sh_colors(sh, dirs, sh_degree)
    depth = torch.where(visible, z, torch.zeros_like(z))
    return Projection(torch.stack([u, v], dim=1), conic, torch.sigmoid(opacity_logits), color, depth)


class _Rasterize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, uv, conic, opacity, color, depth, width, height, background):
        gauss2d = torch.cat([uv, conic, opacity[:, None], color], dim=1).detach().numpy()
        rgb, state = backward.rasterize(gauss2d, depth.detach().numpy(), width, height, background)
        ctx.state = state
        ctx.dtype = uv.dtype
        drawn = torch.zeros(len(gauss2d), dtype=torch.bool)
        drawn[torch.from_numpy(state.order).long()] = True
        ctx.mark_non_differentiable(drawn)
        return torch.from_numpy(rgb), drawn

    @staticmethod
    def backward(ctx, grad_rgb, _grad_drawn):
        grads = torch.from_numpy(backward.rasterize_backward(ctx.state, grad_rgb.detach().numpy())).to(ctx.dtype)
        ctx.state = None
        return grads[:, 0:2], grads[:, 2:5], grads[:, 5], grads[:, 6:9], None, None, None, None


def rasterize_torch(
    proj: Projection, width: int, height: int, background=(0.0, 0.0, 0.0)
) -> tuple[torch.Tensor, torch.Tensor]:
    """(blended colour [H, W, 3] float32, not clipped; bool [N]: drawn) of projected Gaussians.

    The colour is differentiable in ``proj``'s tensors; a Gaussian that is not drawn (culled, too
    faint, off the image) gets zero gradients.
    """
    return _Rasterize.apply(proj.uv, proj.conic, proj.opacity, proj.color, proj.depth, width, height, background)


def render_torch(
    means, log_scales, quats, opacity_logits, sh, sh_degree: int, camera: PinholeCamera, T_camera_world, *,
    pose_delta: torch.Tensor | None = None, background=(0.0, 0.0, 0.0), near: float = DEFAULT_NEAR,
) -> torch.Tensor:  # fmt: skip
    """RGB [H, W, 3] in [0, 1] (clipped like every renderer here), differentiable in every input tensor."""
    proj = project(
        means, log_scales, quats, opacity_logits, sh, sh_degree, camera, T_camera_world,
        pose_delta=pose_delta, near=near,
    )  # fmt: skip
    rgb, _ = rasterize_torch(proj, camera.width, camera.height, background)
    return torch.clamp(rgb, 0.0, 1.0)
