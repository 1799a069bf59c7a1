"""Render a :class:`~gsvisloc_ros.gaussians.GaussianMap` from a pinhole camera.

One entry point, :func:`render`, and three backends implementing the same image formation
(documented in :mod:`gsvisloc_ros.render.formation`):

* ``"cpu"``: fast numba rasterizer (:mod:`.cpu`); prepares each map once and caches it.
* ``"cuda"``: gsplat on a CUDA device (:mod:`.cuda`), when torch sees a GPU and gsplat imports.
* ``"reference"``: slow, obviously-correct numpy implementation (:mod:`.reference`), for tests.

``"auto"`` picks ``"cuda"`` when available, else ``"cpu"``.

Example::

    result = render(gmap, PinholeCamera(525, 525, 319.5, 239.5, 640, 480), invert_pose(T_world_camera))
    result.rgb, result.depth, result.alpha
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..camera import PinholeCamera
from ..gaussians import GaussianMap
from .formation import DEFAULT_NEAR

BACKENDS = ("auto", "cpu", "cuda", "reference")

__all__ = [
    "BACKENDS",
    "DEFAULT_NEAR",
    "BackendUnavailableError",
    "RenderResult",
    "available_backends",
    "backend_for_device",
    "cuda_available",
    "render",
    "resolve_backend",
]


class BackendUnavailableError(RuntimeError):
    """The requested render backend cannot run on this machine."""


@dataclass
class RenderResult:
    """One rendered view.

    * ``rgb``: float32 [H, W, 3] in [0, 1], composited over the background.
    * ``depth``: float32 [H, W], camera z (not ray length) in map units: the expected depth
      normalised by alpha, ``sum(w_i z_i) / sum(w_i)``; 0 where nothing was drawn. Faint pixels
      (a lone translucent floater) have a depth too: mask with ``alpha`` (e.g. > 0.5) for surfaces.
    * ``alpha``: float32 [H, W], accumulated opacity ``1 - T`` in [0, 1].
    * ``backend``: the backend that made it (``"cpu"``, ``"cuda"`` or ``"reference"``).
    """

    rgb: np.ndarray
    depth: np.ndarray
    alpha: np.ndarray
    backend: str

    @property
    def rgb_u8(self) -> np.ndarray:
        """``rgb`` as uint8 [H, W, 3] (rounded)."""
        return np.clip(np.rint(self.rgb * 255.0), 0, 255).astype(np.uint8)


def cuda_available() -> tuple[bool, str]:
    """(whether the cuda backend can run, the reason when it cannot)."""
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if not torch.cuda.is_available():
        return False, "torch sees no CUDA device"
    try:
        import gsplat  # noqa: F401
    except Exception as exc:  # gsplat raises various errors when its extension cannot build
        return False, f"gsplat does not import ({type(exc).__name__}: {exc})"
    return True, ""


def available_backends() -> list[str]:
    """The concrete backends that can run here."""
    return ["cpu", "reference"] + (["cuda"] if cuda_available()[0] else [])


def resolve_backend(backend: str = "auto") -> str:
    """The concrete backend ``backend`` means here; raises if it cannot run."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown render backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "auto":
        return "cuda" if cuda_available()[0] else "cpu"
    if backend == "cuda":
        ok, reason = cuda_available()
        if not ok:
            raise BackendUnavailableError(f"render backend 'cuda' is not available: {reason}; use 'cpu'")
    return backend


def backend_for_device(device: str) -> str:
    """The render backend of a torch device setting: ``"cpu"`` renders on the CPU, ``"cuda"``
    (or ``"cuda:N"``) with gsplat, ``"auto"`` where :func:`resolve_backend` picks."""
    device = str(device)
    if device in ("auto", "cpu"):
        return device
    if device == "cuda" or device.startswith("cuda:"):
        return "cuda"
    raise ValueError(f"unknown device {device!r}: use auto, cpu or cuda")


def render(
    gmap: GaussianMap,
    camera: PinholeCamera,
    T_camera_world: np.ndarray,
    *,
    backend: str = "auto",
    background=(0.0, 0.0, 0.0),
    near: float = DEFAULT_NEAR,
) -> RenderResult:
    """Render ``gmap`` seen by ``camera`` with extrinsics ``T_camera_world`` (world-to-camera, 4x4).

    ``background`` is an RGB triple in [0, 1] seen through the transmittance left at each pixel;
    Gaussians whose mean has camera z <= ``near`` (map units) are culled. Pass
    ``invert_pose(T_world_camera)`` for a camera-to-world pose.
    """
    T = np.asarray(T_camera_world, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise ValueError(f"T_camera_world must be a finite 4x4 matrix, got shape {T.shape}")
    bg = tuple(float(c) for c in np.asarray(background, dtype=np.float64).reshape(-1))
    if len(bg) != 3:
        raise ValueError(f"background must be an RGB triple, got {background!r}")
    if not near > 0:
        raise ValueError(f"near must be positive, got {near}")
    name = resolve_backend(backend)
    if name == "cpu":
        from . import cpu as module
    elif name == "cuda":
        from . import cuda as module
    else:
        from . import reference as module
    rgb, depth, alpha = module.render(gmap, camera, T, background=bg, near=float(near))
    return RenderResult(rgb=rgb, depth=depth, alpha=alpha, backend=name)
