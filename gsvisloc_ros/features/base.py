"""The 2D encoder interface: what every image feature extractor returns and accepts.

Conventions (the project's, see :mod:`gsvisloc_ros.camera`):

* Keypoints are ``(u, v)`` pixel coordinates of the *input* image; the centre of pixel (i, j) is at
  (u, v) = (i, j), so a keypoint exactly on the top-left pixel is (0, 0), not (0.5, 0.5).
* Descriptors are float32 rows of unit L2 norm, so a dot product is a cosine similarity.
* Images are ``uint8`` arrays, ``HxWx3`` RGB or ``HxW`` grey (``HxWx1`` is accepted as grey).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

#: Smallest image side any encoder accepts; below this no detector has room for a patch.
MIN_IMAGE_SIDE = 16


@dataclass
class Features:
    """Sparse keypoints with descriptors.

    Attributes:
        keypoints: [N, 2] float64 (u, v) in input-image pixels (pixel-centre convention).
        descriptors: [N, D] float32, every row of unit L2 norm.
        scores: [N] float32 detection scores, larger is better (encoder-specific scale).
        image_size: (width, height) of the image the keypoints live in.
        scales: optional [N] float32 keypoint size in pixels (SIFT); ``None`` when not meaningful.
    """

    keypoints: np.ndarray
    descriptors: np.ndarray
    scores: np.ndarray
    image_size: tuple[int, int]
    scales: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.keypoints = np.asarray(self.keypoints, dtype=np.float64).reshape(-1, 2)
        n = len(self.keypoints)
        self.descriptors = np.asarray(self.descriptors, dtype=np.float32)
        if self.descriptors.ndim != 2 or len(self.descriptors) != n:
            raise ValueError(f"descriptors must be [N={n}, D], got shape {self.descriptors.shape}")
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if len(self.scores) != n:
            raise ValueError(f"scores must be [N={n}], got {len(self.scores)}")
        if self.scales is not None:
            self.scales = np.asarray(self.scales, dtype=np.float32).reshape(-1)
            if len(self.scales) != n:
                raise ValueError(f"scales must be [N={n}], got {len(self.scales)}")
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))

    def __len__(self) -> int:
        return len(self.keypoints)

    @property
    def descriptor_dim(self) -> int:
        return int(self.descriptors.shape[1])

    def subset(self, index: np.ndarray) -> Features:
        """The features selected by a boolean mask or an index array."""
        index = np.asarray(index)
        return Features(
            self.keypoints[index],
            self.descriptors[index],
            self.scores[index],
            self.image_size,
            None if self.scales is None else self.scales[index],
        )


@dataclass
class DenseFeatures:
    """A coarse descriptor map and where each of its cells sits in the input image.

    Cell (row r, column c) maps to the pixel position
    ``u = scale[0] * c + offset[0]``, ``v = scale[1] * r + offset[1]`` of the input image (pixel-centre
    convention). For a stride-8 network on an unresized image, ``scale = (8, 8)`` and
    ``offset = (3.5, 3.5)``: the cell stands for the centre of the 8x8 pixel block it summarises.

    Attributes:
        descriptors: [Hc, Wc, D] float32, unit L2 norm along the last axis.
        scale: pixels per cell along (u, v).
        offset: pixel position (u, v) of cell (0, 0).
        image_size: (width, height) of the input image.
        reliability: optional [Hc, Wc] float32 confidence in [0, 1] per cell.
    """

    descriptors: np.ndarray
    scale: tuple[float, float]
    offset: tuple[float, float]
    image_size: tuple[int, int]
    reliability: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.descriptors = np.asarray(self.descriptors, dtype=np.float32)
        if self.descriptors.ndim != 3:
            raise ValueError(f"dense descriptors must be [Hc, Wc, D], got shape {self.descriptors.shape}")
        if self.reliability is not None:
            self.reliability = np.asarray(self.reliability, dtype=np.float32)
            if self.reliability.shape != self.descriptors.shape[:2]:
                raise ValueError(
                    f"reliability must be [Hc, Wc]={self.descriptors.shape[:2]}, got {self.reliability.shape}"
                )
        self.scale = (float(self.scale[0]), float(self.scale[1]))
        self.offset = (float(self.offset[0]), float(self.offset[1]))
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))

    @property
    def grid_size(self) -> tuple[int, int]:
        """(Wc, Hc): number of cells along u and v."""
        return int(self.descriptors.shape[1]), int(self.descriptors.shape[0])

    def cell_to_pixel(self, cells: np.ndarray) -> np.ndarray:
        """Pixel positions (u, v) [N, 2] of cells given as (column, row) [N, 2] (fractional allowed)."""
        cells = np.asarray(cells, dtype=np.float64).reshape(-1, 2)
        return cells * np.asarray(self.scale) + np.asarray(self.offset)

    def pixel_to_cell(self, uv: np.ndarray) -> np.ndarray:
        """Fractional cell coordinates (column, row) [N, 2] of pixel positions (u, v) [N, 2]."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        return (uv - np.asarray(self.offset)) / np.asarray(self.scale)

    def pixel_positions(self) -> np.ndarray:
        """Pixel position (u, v) of every cell, [Hc * Wc, 2] in row-major order (same as :meth:`flat`)."""
        wc, hc = self.grid_size
        cols, rows = np.meshgrid(np.arange(wc), np.arange(hc), indexing="xy")
        return self.cell_to_pixel(np.stack([cols.ravel(), rows.ravel()], axis=1))

    def flat(self) -> tuple[np.ndarray, np.ndarray]:
        """(pixel positions [K, 2], descriptors [K, D]) of all K = Hc * Wc cells, row-major."""
        return self.pixel_positions(), self.descriptors.reshape(-1, self.descriptors.shape[-1])


@runtime_checkable
class FeatureEncoder(Protocol):
    """A sparse 2D encoder: ``extract(image) -> Features``.

    ``rotation_invariant``: whether descriptors survive an in-plane rotation of the image (then the
    localizer does not turn query images to cover rolls).
    """

    name: str
    descriptor_dim: int
    rotation_invariant: bool

    def extract(self, image: np.ndarray) -> Features:
        """Keypoints, unit-norm descriptors and scores of one uint8 RGB (HxWx3) or grey (HxW) image."""
        ...


@runtime_checkable
class DenseFeatureEncoder(FeatureEncoder, Protocol):
    """A 2D encoder that also gives a coarse dense descriptor map."""

    def dense(self, image: np.ndarray) -> DenseFeatures:
        """The coarse descriptor map of one image, with the cell -> pixel mapping."""
        ...


def check_image(image: np.ndarray, min_side: int = MIN_IMAGE_SIDE) -> np.ndarray:
    """Validate an input image and return it as ``HxW`` or ``HxWx3`` uint8.

    Raises:
        ValueError: not a numpy array, not uint8, wrong number of dimensions or channels, or a side
            shorter than ``min_side`` pixels.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (0-255), got dtype {image.dtype}; convert it first")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3 RGB or HxW grey, got {image.shape[2]} channels (shape {image.shape})")
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be HxWx3 RGB or HxW grey, got shape {image.shape}")
    height, width = image.shape[:2]
    if height < min_side or width < min_side:
        raise ValueError(f"image must be at least {min_side}x{min_side} pixels, got {width}x{height}")
    return image


def to_gray(image: np.ndarray) -> np.ndarray:
    """Grey ``HxW`` uint8 of a checked image (RGB weights of ITU-R BT.601, as OpenCV)."""
    if image.ndim == 2:
        return image
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)


def resolve_device(device: str | None = "auto"):
    """A ``torch.device``: ``"auto"``/``None`` picks CUDA when available, else the CPU."""
    import torch

    if isinstance(device, torch.device):
        return device
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev
