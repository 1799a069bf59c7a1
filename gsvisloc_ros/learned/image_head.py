"""The 2D encoder: a small trainable head on the frozen XFeat backbone's 1/8-resolution map and
the colours of its cells.

XFeat (frozen, its packaged weights) gives a unit-norm 64-d descriptor per 8x8 cell. XFeat is
trained to ignore colour, yet colour is most of what a Gaussian carries (its DC colour), so each
cell also gets 15 colour values (:func:`colour_cells`): the mean of the cell and of its four 4x4
quarters, after the image's colours are normalised (each channel to zero mean and unit spread
over the image, so exposure and white balance matter less). The head (two 3x3 convolutions and a
1x1 projection) turns the 79 channels into ``d_model`` for the attention. The backbone never
trains, so training data can hold the cells of its renders once (:func:`image_cells`), and at use
the query costs one XFeat pass at the matcher's working size.

Cell (row r, column c) of the map stands for pixel (8c + 3.5, 8r + 3.5) of the image it came from
(:mod:`gsvisloc_ros.features.xfeat`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .config import LearnedConfig

XFEAT_DIM = 64
COLOUR_DIM = 15
CELL_DIM = XFEAT_DIM + COLOUR_DIM
STRIDE = 8
CELL_OFFSET = (STRIDE - 1) / 2.0


def image_cells(encoder, image: np.ndarray) -> np.ndarray:
    """What the image head reads of ``image``: [h, w, 79] float32, XFeat (:func:`xfeat_cells`) then
    colour (:func:`colour_cells`)."""
    return np.concatenate([xfeat_cells(encoder, image), colour_cells(image)], axis=-1)


def colour_cells(image: np.ndarray) -> np.ndarray:
    """[h, w, 15] float32 colour of each 8x8 cell of an RGB ``image`` (h, w = ceil(side / 8)): the
    cell's mean and its four 4x4 quarters' means, of the image normalised per channel (zero mean,
    unit standard deviation over the image; the border is padded by repetition)."""
    rgb = np.asarray(image, np.float32)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    rgb = rgb[..., :3] / 255.0
    rgb = (rgb - rgb.mean(axis=(0, 1))) / (rgb.std(axis=(0, 1)) + 0.05)
    height, width = rgb.shape[:2]
    h, w = -(-height // STRIDE), -(-width // STRIDE)
    rgb = np.pad(rgb, ((0, h * STRIDE - height), (0, w * STRIDE - width), (0, 0)), mode="edge")
    half = STRIDE // 2
    quarters = rgb.reshape(h, 2, half, w, 2, half, 3).mean(axis=(2, 5))  # [h, 2, w, 2, 3]
    quarters = quarters.transpose(0, 2, 1, 3, 4).reshape(h, w, 12)
    means = quarters.reshape(h, w, 4, 3).mean(axis=2)
    return np.ascontiguousarray(np.concatenate([means, quarters], axis=-1), dtype=np.float32)


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
    """Cells [B, h, w, 79] (:func:`image_cells`) -> patch descriptors [B, h * w, d_model]."""

    def __init__(self, config: LearnedConfig) -> None:
        super().__init__()
        d = config.d_model
        self.net = nn.Sequential(
            nn.Conv2d(CELL_DIM, d, 3, padding=1), nn.LeakyReLU(0.1),
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
