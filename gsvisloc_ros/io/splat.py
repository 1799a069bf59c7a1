"""``.splat`` files: the 32-bytes-per-Gaussian layout of the antimatter15 web viewer.

Each record, little endian: position float32 x3, scale float32 x3 (linear), colour uint8 x4
(R, G, B as ``255 * (0.5 + SH_C0 * f_dc)`` clipped to [0, 255], A = 255 * opacity), rotation
uint8 x4 (w, x, y, z mapped from [-1, 1] to [0, 255] as ``q * 128 + 128``). There is no header,
so a file's size must be a multiple of 32, and only the DC colour survives (SH degree 0).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from gsvisloc_ros.gaussians import SH_C0, GaussianMap
from gsvisloc_ros.io import MapFormatError

logger = logging.getLogger(__name__)

SPLAT_RECORD = np.dtype([("position", "<f4", (3,)), ("scale", "<f4", (3,)), ("rgba", "u1", (4,)), ("rot", "u1", (4,))])
assert SPLAT_RECORD.itemsize == 32


def read_splat(path: str | os.PathLike) -> GaussianMap:
    """Read a ``.splat`` file as stored (not cleaned): colour becomes the SH DC term."""
    size = os.path.getsize(path)
    if size == 0:
        raise MapFormatError(path, "empty map: the file has 0 bytes")
    if size % SPLAT_RECORD.itemsize:
        raise MapFormatError(
            path,
            f"size {size} bytes is not a multiple of {SPLAT_RECORD.itemsize} (truncated, or not a .splat file)",
        )
    records = np.fromfile(path, dtype=SPLAT_RECORD)
    rgba = records["rgba"].astype(np.float64) / 255.0
    quats = (records["rot"].astype(np.float64) - 128.0) / 128.0
    norms = np.linalg.norm(quats, axis=1, keepdims=True)
    quats = np.where(norms > 0, quats / np.where(norms > 0, norms, 1.0), 0.0)  # zero stays zero: clean() drops it
    sh = ((rgba[:, :3] - 0.5) / SH_C0)[:, None, :]
    return GaussianMap(records["position"], quats, records["scale"], rgba[:, 3], sh, source=str(path))


def splat_records(gmap: GaussianMap) -> np.ndarray:
    """The ``.splat`` records of ``gmap`` (higher SH coefficients are dropped)."""
    records = np.zeros(len(gmap), dtype=SPLAT_RECORD)
    records["position"] = gmap.means
    records["scale"] = gmap.scales
    rgba = np.concatenate([gmap.colors, gmap.opacities[:, None]], axis=1)
    records["rgba"] = np.clip(np.round(rgba * 255.0), 0, 255).astype(np.uint8)
    q = gmap.quats.astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    records["rot"] = np.clip(np.round(q * 128.0 + 128.0), 0, 255).astype(np.uint8)
    return records


def write_splat(gmap: GaussianMap, path: str | os.PathLike) -> None:
    """Write ``gmap`` as a ``.splat`` file (lossy: 8-bit colour, opacity and rotation, SH degree 0)."""
    if gmap.sh_degree > 0:
        logger.warning("%s: .splat keeps only the DC colour; SH degree %d coefficients dropped", path, gmap.sh_degree)
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    splat_records(gmap).tofile(partial)
    os.replace(partial, path)
