"""2D encoders: image -> keypoints + unit-norm descriptors (and, for XFeat, a dense 1/8 map).

``make_encoder("xfeat" | "sift", device)`` builds one; both satisfy :class:`FeatureEncoder`.
The implementations import torch / OpenCV lazily, so importing this package is cheap.
"""

from __future__ import annotations

from typing import Any

from .base import (
    MIN_IMAGE_SIDE,
    DenseFeatureEncoder,
    DenseFeatures,
    FeatureEncoder,
    Features,
    check_image,
    resolve_device,
    to_gray,
)

ENCODERS = ("xfeat", "sift")

__all__ = [
    "ENCODERS",
    "MIN_IMAGE_SIDE",
    "DenseFeatureEncoder",
    "DenseFeatures",
    "FeatureEncoder",
    "Features",
    "check_image",
    "make_encoder",
    "resolve_device",
    "to_gray",
]


def make_encoder(name: str, device: str | None = "auto", config: Any = None, **overrides: Any) -> FeatureEncoder:
    """Build a 2D encoder by name.

    Args:
        name: ``"xfeat"`` (learned, 64-d, has :meth:`dense`) or ``"sift"`` (RootSIFT, 128-d, CPU only).
        device: torch device for XFeat (``"auto"`` = CUDA when available, else CPU); ignored by SIFT.
        config: an :class:`~gsvisloc_ros.features.xfeat.XFeatConfig` or
            :class:`~gsvisloc_ros.features.sift.SiftConfig`; defaults when ``None``.
        **overrides: fields of the config to change, e.g. ``top_k=2048`` (both encoders have ``top_k``).
    """
    from dataclasses import replace

    key = str(name).lower()
    if key == "xfeat":
        from .xfeat import XFeatConfig, XFeatEncoder

        cfg = replace(config or XFeatConfig(), **overrides)
        return XFeatEncoder(cfg, device=device)
    if key == "sift":
        from .sift import SiftConfig, SiftEncoder

        cfg = replace(config or SiftConfig(), **overrides)
        return SiftEncoder(cfg, device=device)
    raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
