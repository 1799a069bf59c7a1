"""CUDA backend: a thin wrapper around ``gsplat.rasterization`` (gsplat 1.5.3, pinned in requirements/cuda.txt).

Conventions bridged here: gsplat samples pixel i at i + 0.5, so the principal point is shifted by
+0.5; its ``"RGB+ED"`` mode returns colour without background plus the expected depth normalised
by alpha, so the background is composited here as ``rgb + (1 - alpha) bg``. Classic mode with
``eps2d=0.3`` is the same 0.3 px^2 low-pass as :mod:`.formation`.

Where gsplat's image formation differs from :mod:`.formation` (and from the cpu and reference
backends), measured against gsplat 1.5.3's sources:

* alpha is capped at 0.999 (ours: 0.99);
* a pixel stops compositing once the transmittance reaches ``T <= 1e-4`` (ours: ``T < 1e-4``);
* footprints are opacity-aware (not 3-sigma): the tiles a Gaussian is binned to come from the
  extent where ``opacity * exp(-q / 2)`` falls to 1/255, so the pixels it reaches are our exact
  footprint (alpha >= 1/255) up to the rounding of that extent.

With opacities near 1 the cap changes rgb and alpha by up to ~2 grey levels where few Gaussians
overlap; elsewhere the difference is far below one. :data:`CPU_TOLERANCE` bounds it for tests that
compare backends. Only imported when the backend is selected; needs torch with CUDA and gsplat.
"""

from __future__ import annotations

import numpy as np

from ..camera import PinholeCamera
from ..gaussians import GaussianMap
from .formation import DEPTH_MIN_ALPHA

#: Largest per-pixel difference from the cpu backend that the formation differences above allow
#: (rgb and alpha in [0, 1]; ~2 grey levels plus float32 noise), and the share of pixels allowed to
#: exceed it (edges of opacity-aware footprints).
CPU_TOLERANCE = 2.5 / 255.0
CPU_TOLERANCE_OUTLIERS = 0.002

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


def check_render(device: str = "cuda") -> None:
    """Render one Gaussian straight ahead and raise unless it is drawn (the availability probe)."""
    from ..camera import PinholeCamera

    camera = PinholeCamera(20.0, 20.0, 7.5, 7.5, 16, 16)
    one = GaussianMap(means=np.array([[0.0, 0.0, 2.0]]), quats=np.array([[1.0, 0.0, 0.0, 0.0]]),
                      scales=np.full((1, 3), 0.2), opacities=np.array([0.9]), sh=np.zeros((1, 1, 3)))
    rgb, depth, alpha = render(one, camera, np.eye(4), device=device)
    if not (np.all(np.isfinite(rgb)) and alpha[8, 8] > 0.5 and abs(depth[8, 8] - 2.0) < 0.01):
        raise RuntimeError(f"the test Gaussian was not drawn (alpha {alpha[8, 8]:.3f}, depth {depth[8, 8]:.3f})")
