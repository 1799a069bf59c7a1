"""3DGS ``.ply`` files: the INRIA layout and the variants other tools write.

The INRIA layout (``gaussian-splatting``'s ``save_ply``) is one ``vertex`` element of float32:
``x y z nx ny nz f_dc_0..2 f_rest_0..(3*(K-1)-1) opacity scale_0..2 rot_0..3`` where opacity is
a logit, scales are logs, ``rot`` is an unnormalised (w, x, y, z) quaternion and ``f_rest`` is
channel-major (the K-1 higher coefficients of R, then of G, then of B). Properties are found by
name, so their order and any extra ones do not matter. Variants handled:

* nerfstudio ``ns-export gaussian-splat``: INRIA order with zero normals; with
  ``--ply-color-mode rgb`` it writes uchar ``red green blue`` instead of ``f_dc``/``f_rest``.
* gsplat ``export_splats(format="ply")``: no normals; ``format="ply_compressed"`` writes the
  PlayCanvas compressed layout below.
* Brush / converters: other property orders (e.g. scales before colour), no ``f_rest``.
* Mip-Splatting: an extra ``filter_3D`` property, applied here as Mip-Splatting renders it
  (scales widened by the filter, opacity reduced to keep the integral).
* PlayCanvas/SuperSplat compressed PLY: ``chunk`` element (per-256-Gaussian bounds), ``vertex``
  with ``packed_position/rotation/scale/color`` and optional ``sh`` element of uchar.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
from plyfile import PlyData
from scipy.special import expit

from gsvisloc_ros.gaussians import SH_C0, GaussianMap
from gsvisloc_ros.io import MapFormatError

logger = logging.getLogger(__name__)

POSITION = ("x", "y", "z")
SCALES = ("scale_0", "scale_1", "scale_2")
ROTATION = ("rot_0", "rot_1", "rot_2", "rot_3")
F_DC = ("f_dc_0", "f_dc_1", "f_dc_2")
RGB = ("red", "green", "blue")
PACKED = ("packed_position", "packed_rotation", "packed_scale", "packed_color")
CHUNK_SIZE = 256
_F_REST = re.compile(r"f_rest_(\d+)$")
_FLOAT32_TINY = float(np.finfo(np.float32).tiny)
_FLOAT32_BELOW_ONE = float(np.nextafter(np.float32(1.0), np.float32(0.0)))


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_ply(path: str | os.PathLike) -> GaussianMap:
    """Read a 3DGS ``.ply`` (any layout listed in the module docstring), as stored: not cleaned."""
    plydata = _read_plydata(path)
    names = [element.name for element in plydata.elements]
    if "vertex" not in names:
        raise MapFormatError(path, f"no 'vertex' element (elements: {', '.join(names) or 'none'})")
    vertex = plydata["vertex"].data
    if len(vertex) == 0:
        raise MapFormatError(path, "empty map: the vertex element has 0 entries")
    fields = vertex.dtype.names or ()
    if "chunk" in names and all(name in fields for name in PACKED):
        return _read_compressed(plydata, path)
    return _read_gaussians(vertex, path)


def _read_plydata(path: str | os.PathLike) -> PlyData:
    """Parse the file with plyfile, turning any parse failure into a MapFormatError."""
    try:  # a memory map is ~100x faster than plyfile's stream reader; values are copied out at once
        return PlyData.read(str(path), mmap="c")
    except MemoryError:
        raise
    except Exception as exc:  # plyfile raises several types; none should reach the user raw
        problem = str(exc)
        if "end-of-file" in problem:
            problem = f"truncated data ({problem})"
        raise MapFormatError(path, f"unreadable PLY: {problem}") from exc


def _columns(data: np.ndarray, names: tuple[str, ...] | list[str]) -> np.ndarray:
    """The named fields of a structured array as a float64 [N, len(names)] array."""
    return np.stack([np.asarray(data[name], dtype=np.float64) for name in names], axis=1)


def _require(path, fields: tuple[str, ...], needed: tuple[str, ...]) -> None:
    """Raise a MapFormatError listing every missing property, with a hint for point clouds."""
    missing = [name for name in needed if name not in fields]
    if not missing:
        return
    hint = ""
    if all(name in fields for name in POSITION) and not any(name in fields for name in SCALES + ROTATION):
        hint = "; this looks like a plain point cloud, not a 3D Gaussian Splatting map"
    elif "scale_0" in fields and "scale_1" in fields and "scale_2" not in fields:
        hint = "; two scales per Gaussian is a 2D Gaussian Splatting (surfel) map, which is not supported"
    shown = ", ".join(fields[:20]) + (", ..." if len(fields) > 20 else "")
    raise MapFormatError(path, f"missing vertex properties {', '.join(missing)} (found: {shown}){hint}")


def _read_gaussians(vertex: np.ndarray, path) -> GaussianMap:
    """Activated Gaussians from an uncompressed vertex element."""
    fields = vertex.dtype.names
    has_rgb = "f_dc_0" not in fields and all(name in fields for name in RGB)
    _require(path, fields, POSITION + ("opacity",) + SCALES + ROTATION + (() if has_rgb else F_DC))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        quats = _columns(vertex, ROTATION)
        norms = np.linalg.norm(quats, axis=1, keepdims=True)
        quats = np.where(norms > 0, quats / np.where(norms > 0, norms, 1.0), 0.0)  # zero stays zero: clean() drops it
        scales = np.exp(_columns(vertex, SCALES))
        opacities = expit(np.asarray(vertex["opacity"], dtype=np.float64))
        sh = _rgb_as_sh(vertex, path) if has_rgb else _read_sh(vertex, path)
        if "filter_3D" in fields:
            scales, opacities = _apply_3d_filter(scales, opacities, np.asarray(vertex["filter_3D"], np.float64))
            logger.info("%s: applied the Mip-Splatting 3D filter (filter_3D)", path)
        return GaussianMap(_columns(vertex, POSITION), quats, scales, opacities, sh, source=str(path))


def _read_sh(vertex: np.ndarray, path) -> np.ndarray:
    """SH [N, K, 3] from ``f_dc_*`` and the channel-major ``f_rest_*``."""
    rest = sorted((int(m.group(1)), name) for name in vertex.dtype.names if (m := _F_REST.match(name)))
    count = len(rest)
    if [index for index, _ in rest] != list(range(count)):
        raise MapFormatError(path, f"f_rest_* properties are not numbered 0..{count - 1} without gaps")
    per_channel = count // 3 + 1
    if count % 3 or per_channel not in (1, 4, 9, 16):
        raise MapFormatError(
            path, f"{count} f_rest_* properties do not make SH of degree 0-3 (expected 0, 9, 24 or 45)"
        )
    dc = _columns(vertex, F_DC)
    sh = np.empty((len(vertex), per_channel, 3))
    sh[:, 0, :] = dc
    if count:
        sh[:, 1:, :] = _columns(vertex, [name for _, name in rest]).reshape(-1, 3, per_channel - 1).transpose(0, 2, 1)
    return sh


def _rgb_as_sh(vertex: np.ndarray, path) -> np.ndarray:
    """Degree-0 SH [N, 1, 3] from ``red green blue`` (integers scaled by their maximum, floats in [0, 1])."""
    rgb = _columns(vertex, RGB)
    dtype = vertex.dtype["red"]
    if dtype.kind in "ui":
        rgb /= float(np.iinfo(dtype).max)
    logger.info("%s: no f_dc_* properties; colours taken from red/green/blue (view-independent)", path)
    return ((rgb - 0.5) / SH_C0)[:, None, :]


def _apply_3d_filter(scales: np.ndarray, opacities: np.ndarray, filter_3d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mip-Splatting's 3D smoothing filter: widen each scale, keep the Gaussian's integral."""
    squared = scales**2
    widened = squared + (filter_3d**2)[:, None]
    ratio = np.prod(squared, axis=1) / np.prod(widened, axis=1)
    return np.sqrt(widened), opacities * np.sqrt(ratio)


# --------------------------------------------------------------------------------------------
# The PlayCanvas / SuperSplat compressed PLY
# --------------------------------------------------------------------------------------------


def _unorm(bits: np.ndarray, shift: int, width: int) -> np.ndarray:
    """Unsigned ``width``-bit field at ``shift`` as a float in [0, 1]."""
    top = (1 << width) - 1
    return ((bits >> np.uint32(shift)) & np.uint32(top)).astype(np.float64) / top


def _lerp_chunks(
    chunks: np.ndarray, low: list[str], high: list[str], t: np.ndarray, chunk_of: np.ndarray
) -> np.ndarray:
    """Per-Gaussian ``low + t (high - low)`` with the bounds of each Gaussian's chunk."""
    lo = _columns(chunks, low)[chunk_of]
    hi = _columns(chunks, high)[chunk_of]
    return lo + t * (hi - lo)


def _unpack_rotation(bits: np.ndarray) -> np.ndarray:
    """(w, x, y, z) quaternions from the 2+10+10+10 'largest component dropped' packing."""
    largest = (bits >> np.uint32(30)).astype(np.int64)
    small = np.stack([_unorm(bits, shift, 10) for shift in (20, 10, 0)], axis=1)
    small = (small - 0.5) * np.sqrt(2.0)
    big = np.sqrt(np.clip(1.0 - np.sum(small**2, axis=1), 0.0, None))
    quats = np.empty((len(bits), 4))
    rows = np.arange(len(bits))
    quats[rows, largest] = big
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    quats[rows[:, None], others] = small
    return quats


def _read_compressed(plydata: PlyData, path) -> GaussianMap:
    """Activated Gaussians from a PlayCanvas/SuperSplat compressed PLY."""
    chunks = plydata["chunk"].data
    packed = plydata["vertex"].data
    n = len(packed)
    if len(chunks) * CHUNK_SIZE < n:
        raise MapFormatError(path, f"compressed PLY has {len(chunks)} chunks, too few for {n} Gaussians")
    _require(path, chunks.dtype.names, tuple(f"{m}_{a}" for m in ("min", "max") for a in "xyz"))
    chunk_of = np.arange(n) // CHUNK_SIZE
    bits = {name: np.asarray(packed[name]).astype(np.uint32) for name in PACKED}

    def unpack_111011(name: str) -> np.ndarray:
        b = bits[name]
        return np.stack([_unorm(b, 21, 11), _unorm(b, 11, 10), _unorm(b, 0, 11)], axis=1)

    position = unpack_111011("packed_position")
    means = _lerp_chunks(chunks, ["min_x", "min_y", "min_z"], ["max_x", "max_y", "max_z"], position, chunk_of)
    scale_lo = [f"min_scale_{a}" for a in "xyz"]
    scale_hi = [f"max_scale_{a}" for a in "xyz"]
    _require(path, chunks.dtype.names, tuple(scale_lo + scale_hi))
    scales = np.exp(_lerp_chunks(chunks, scale_lo, scale_hi, unpack_111011("packed_scale"), chunk_of))
    color = np.stack([_unorm(bits["packed_color"], shift, 8) for shift in (24, 16, 8)], axis=1)
    if "min_r" in chunks.dtype.names:  # newer files: colour quantised within per-chunk bounds
        color = _lerp_chunks(chunks, ["min_r", "min_g", "min_b"], ["max_r", "max_g", "max_b"], color, chunk_of)
    opacities = _unorm(bits["packed_color"], 0, 8)
    sh = ((color - 0.5) / SH_C0)[:, None, :]
    if "sh" in [element.name for element in plydata.elements]:
        sh = _read_compressed_sh(plydata["sh"].data, sh, path)
    return GaussianMap(means, _unpack_rotation(bits["packed_rotation"]), scales, opacities, sh, source=str(path))


def _read_compressed_sh(data: np.ndarray, dc: np.ndarray, path) -> np.ndarray:
    """SH [N, K, 3]: ``dc`` plus the uchar higher coefficients (channel-major, 8/256 steps in [-4, 4])."""
    if len(data) != len(dc):
        raise MapFormatError(path, f"the sh element has {len(data)} entries for {len(dc)} Gaussians")
    names = sorted(data.dtype.names, key=lambda name: int(re.sub(r"\D", "", name) or 0))
    count = len(names)
    per_channel = count // 3 + 1
    if count % 3 or per_channel not in (1, 4, 9, 16):
        raise MapFormatError(path, f"the sh element has {count} coefficients, not 9, 24 or 45")
    rest = ((_columns(data, names) + 0.5) / 256.0 - 0.5) * 8.0
    return np.concatenate([dc, rest.reshape(-1, 3, per_channel - 1).transpose(0, 2, 1)], axis=1)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def inria_property_names(sh_degree: int) -> list[str]:
    """Vertex properties of an INRIA ``.ply`` of SH degree ``sh_degree``, in file order."""
    rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return (
        list(POSITION) + ["nx", "ny", "nz"] + list(F_DC) + [f"f_rest_{i}" for i in range(rest)]
        + ["opacity"] + list(SCALES) + list(ROTATION)
    )


def inria_vertex_array(gmap: GaussianMap) -> np.ndarray:
    """The INRIA vertex records of ``gmap`` (stored, un-activated values) as a structured array."""
    names = inria_property_names(gmap.sh_degree)
    records = np.zeros(len(gmap), dtype=[(name, "<f4") for name in names])
    rest = gmap.sh[:, 1:, :].transpose(0, 2, 1).reshape(len(gmap), -1)
    opacity = np.clip(gmap.opacities.astype(np.float64), _FLOAT32_TINY, _FLOAT32_BELOW_ONE)
    log_scales = np.log(np.maximum(gmap.scales.astype(np.float64), _FLOAT32_TINY))
    blocks = [
        (POSITION, gmap.means),
        (F_DC, gmap.sh[:, 0, :]),
        ([f"f_rest_{i}" for i in range(rest.shape[1])], rest),
        (("opacity",), (np.log(opacity) - np.log1p(-opacity))[:, None]),
        (SCALES, log_scales),
        (ROTATION, gmap.quats),
    ]
    for block_names, block in blocks:
        for i, name in enumerate(block_names):
            records[name] = block[:, i]
    return records


def write_ply(gmap: GaussianMap, path: str | os.PathLike) -> None:
    """Write ``gmap`` as an INRIA ``.ply``: binary little endian, float32, zero normals.

    Opacities of exactly 0 or 1 are stored as the nearest finite logits and zero scales as the
    smallest float32, so the file has no infinities. Written beside ``path`` and renamed into
    place, so readers never see half a file.
    """
    path = Path(path)
    records = inria_vertex_array(gmap)
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(records)}"]
    header += [f"property float {name}" for name in records.dtype.names]
    header.append("end_header")
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(records.tobytes())
    os.replace(partial, path)
