"""The 2D encoder: a small trainable head on the frozen XFeat backbone's 1/8-resolution map.

XFeat (frozen, its packaged weights) gives a unit-norm 64-d descriptor per 8x8 cell; the head
(two 3x3 convolutions and a 1x1 projection) turns it into ``d_model`` channels for the attention.
The backbone never trains, so training data can hold the XFeat maps of its renders once
(:func:`xfeat_cells`), and at use the query costs one XFeat pass at the matcher's working size.

Cell (row r, column c) of the map stands for pixel (8c + 3.5, 8r + 3.5) of the image it came from
(:mod:`gsvisloc_ros.features.xfeat`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .config import LearnedConfig

XFEAT_DIM = 64
STRIDE = 8
CELL_OFFSET = (STRIDE - 1) / 2.0


def xfeat_cells(encoder, image: np.ndarray) -> np.ndarray:
    """The frozen XFeat descriptor map of ``image`` ([h, w, 64] float32, h, w = ceil(side / 8)).

    ``encoder``: an :class:`~gsvisloc_ros.features.xfeat.XFeatEncoder` (anything with ``dense``).
    """
    dense = encoder.dense(image)
    if tuple(dense.scale) != (STRIDE, STRIDE):
        raise ValueError(f"the encoder's dense map must have stride {STRIDE} at the image's size, got {dense.scale}")
    return np.ascontiguousarray(dense.descriptors, dtype=np.float32)


def cell_centres(height: int, width: int) -> np.ndarray:
    """Pixel positions (u, v) [h * w, 2] of the cells of an [h, w] map, row-major."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([STRIDE * cols.ravel() + CELL_OFFSET, STRIDE * rows.ravel() + CELL_OFFSET], axis=1)


class ImageHead(nn.Module):
    """XFeat cells [B, h, w, 64] -> patch descriptors [B, h * w, d_model]."""

    def __init__(self, config: LearnedConfig) -> None:
        super().__init__()
        d = config.d_model
        self.net = nn.Sequential(
            nn.Conv2d(XFEAT_DIM, d, 3, padding=1), nn.LeakyReLU(0.1),
            nn.Conv2d(d, d, 3, padding=1), nn.LeakyReLU(0.1),
            nn.Conv2d(d, d, 1),
        )

    def forward(self, cells: torch.Tensor) -> torch.Tensor:
        x = self.net(cells.permute(0, 3, 1, 2))
        return x.flatten(2).transpose(1, 2)


def patch_positions(height: int, width: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """Normalised positions [h * w, 2] of the cells of an [h, w] map, in [-1, 1] along the longer side."""
    uv = cell_centres(height, width).astype(np.float32)
    side = STRIDE * max(height, width)
    centre = np.array([STRIDE * width, STRIDE * height], np.float32) / 2
    return torch.from_numpy((uv - centre) / (side / 2)).to(device)
