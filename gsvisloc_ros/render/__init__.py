"""Render a :class:`~gsvisloc_ros.gaussians.GaussianMap` from a pinhole camera.

One entry point, :func:`render`, and three backends implementing the same image formation
(documented in :mod:`gsvisloc_ros.render.formation`):

* ``"cpu"``: fast numba rasterizer (:mod:`.cpu`); prepares each map once and caches it.
* ``"cuda"``: gsplat on a CUDA device (:mod:`.cuda`), when :func:`cuda_available` says it renders.
* ``"reference"``: slow, obviously-correct numpy implementation (:mod:`.reference`), for tests.

``"auto"`` picks ``"cuda"`` when available, else ``"cpu"``. A view with no Gaussian in front of the
near plane (an empty map included) is the background on every backend, without calling a backend.

Example::

    result = render(gmap, PinholeCamera(525, 525, 319.5, 239.5, 640, 480), invert_pose(T_world_camera))
    result.rgb, result.depth, result.alpha
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np

from ..camera import PinholeCamera
from ..gaussians import GaussianMap
from .formation import DEFAULT_NEAR

BACKENDS = ("auto", "cpu", "cuda", "reference")

log = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "DEFAULT_NEAR",
    "BackendUnavailableError",
    "RenderResult",
    "available_backends",
    "backend_for_device",
    "choose_backend",
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


@functools.cache
def cuda_available() -> tuple[bool, str]:
    """(whether the cuda backend renders here, why not when it does not); computed once per process.

    Yes only when torch sees a CUDA device, gsplat's compiled extension is loaded (the PyPI wheel
    is pure Python: gsplat compiles its kernels when first imported, or sets the extension to None
    when it cannot) and a one-Gaussian render draws it. ``cuda_available.cache_clear()`` forgets it.
    """
    reason = _cuda_problem()
    if reason:
        log.info("render backend 'cuda' not used: %s", reason)
    return not reason, reason


def _cuda_problem() -> str:
    """Why the cuda backend cannot render here, or ""."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device (a CPU build of torch, or no GPU driver)"
    try:
        from gsplat.cuda import _backend as gsplat_backend  # compiles the kernels on first use
    except Exception as exc:  # gsplat raises various errors when its extension cannot build
        return f"gsplat does not import ({type(exc).__name__}: {exc}); see requirements/cuda.txt"
    if getattr(gsplat_backend, "_C", None) is None:
        return ("gsplat's CUDA extension is not loaded (no prebuilt kernels match this torch and they could not "
                "be compiled: is the CUDA toolkit's nvcc installed?)")
    from . import cuda

    try:
        cuda.check_render()
    except Exception as exc:
        return f"a one-Gaussian gsplat render failed ({type(exc).__name__}: {exc})"
    return ""


def available_backends() -> list[str]:
    """The concrete backends that can run here."""
    return ["cpu", "reference"] + (["cuda"] if cuda_available()[0] else [])


def choose_backend(backend: str = "auto") -> tuple[str, str]:
    """(the concrete backend ``backend`` means here, why); raises if it cannot run."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown render backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "auto":
        ok, reason = cuda_available()
        return ("cuda", "auto: gsplat renders on the GPU") if ok else ("cpu", f"auto: CUDA not used: {reason}")
    if backend == "cuda":
        ok, reason = cuda_available()
        if not ok:
            raise BackendUnavailableError(f"render backend 'cuda' is not available: {reason}; use 'cpu'")
    return backend, "asked for"


def resolve_backend(backend: str = "auto") -> str:
    """The concrete backend ``backend`` means here; raises if it cannot run."""
    return choose_backend(backend)[0]


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
    if not _anything_in_front(gmap, T, near):
        return _background(camera, bg, name)
    if name == "cpu":
        from . import cpu as module
    elif name == "cuda":
        from . import cuda as module
    else:
        from . import reference as module
    rgb, depth, alpha = module.render(gmap, camera, T, background=bg, near=float(near))
    return RenderResult(rgb=rgb, depth=depth, alpha=alpha, backend=name)


def _anything_in_front(gmap: GaussianMap, T_camera_world: np.ndarray, near: float) -> bool:
    """Whether some Gaussian mean lies beyond the near plane (the backends cull the others)."""
    if len(gmap) == 0:
        return False
    z = gmap.means @ T_camera_world[2, :3] + T_camera_world[2, 3]
    return bool(np.any(z > near))


def _background(camera: PinholeCamera, background: tuple, backend: str) -> RenderResult:
    """The view of nothing: the background, no depth, no alpha."""
    width, height = camera.size
    rgb = np.broadcast_to(np.asarray(background, dtype=np.float32), (height, width, 3)).copy()
    zeros = np.zeros((height, width), dtype=np.float32)
    return RenderResult(rgb=rgb, depth=zeros, alpha=zeros.copy(), backend=backend)
