"""CUDA backend: a thin wrapper around ``gsplat.rasterization``.

gsplat implements the same image formation (classic mode, 0.3 px^2 low-pass via ``eps2d``) with
two convention differences handled here: it samples pixel i at i + 0.5, so the principal point
is shifted by +0.5; and its ``"RGB+ED"`` mode returns colour without background plus the
expected depth normalised by alpha, so the background is composited here as ``rgb + (1 - alpha) bg``.
Its footprints are 3-sigma tile-binned (INRIA-like) rather than exact, a difference far below
one grey level. Only imported when the backend is selected; needs torch with CUDA and gsplat.
"""

from __future__ import annotations

import numpy as np

from ..camera import PinholeCamera
from ..gaussians import GaussianMap
from .formation import DEPTH_MIN_ALPHA

_device_maps: dict[str, tuple] = {}


def _map_tensors(gmap: GaussianMap, device):
    """The map's tensors on ``device``, uploaded once per map content (the last map only)."""
    import torch

    key = f"{gmap.content_hash}:{device}"
    if key not in _device_maps:
        _device_maps.clear()
        _device_maps[key] = tuple(
            torch.from_numpy(np.ascontiguousarray(a)).to(device)
            for a in (gmap.means, gmap.quats, gmap.scales, gmap.opacities, gmap.sh)
        )
    return _device_maps[key]


def render(
    gmap: GaussianMap,
    camera: PinholeCamera,
    T_camera_world: np.ndarray,
    *,
    background=(0.0, 0.0, 0.0),
    near: float = 0.01,
    device: str = "cuda",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render (rgb [H,W,3], depth [H,W], alpha [H,W]) as float32; see :func:`gsvisloc_ros.render.render`.

    ``device`` is the torch device gsplat runs on (always CUDA in use; tests pass a fake gsplat).
    """
    import torch
    from gsplat import rasterization

    device = torch.device(device)
    means, quats, scales, opacities, sh = _map_tensors(gmap, device)
    K = camera.K.copy()
    K[0, 2] += 0.5
    K[1, 2] += 0.5
    width, height = camera.size
    with torch.no_grad():
        colors, alphas, _ = rasterization(
            means,
            quats,
            scales,
            opacities,
            sh,
            viewmats=torch.as_tensor(T_camera_world, dtype=torch.float32, device=device)[None],
            Ks=torch.as_tensor(K, dtype=torch.float32, device=device)[None],
            width=width,
            height=height,
            near_plane=near,
            eps2d=0.3,
            sh_degree=gmap.sh_degree,
            render_mode="RGB+ED",
            rasterize_mode="classic",
            packed=False,
        )
    colors = colors[0].cpu().numpy().astype(np.float64)
    alpha = alphas[0, ..., 0].cpu().numpy().astype(np.float64)
    bg = np.asarray(background, dtype=np.float64).reshape(3)
    rgb = np.clip(colors[..., :3] + (1.0 - alpha)[..., None] * bg, 0.0, 1.0)
    depth = np.where(alpha >= DEPTH_MIN_ALPHA, colors[..., 3], 0.0)
    return rgb.astype(np.float32), depth.astype(np.float32), alpha.astype(np.float32)
