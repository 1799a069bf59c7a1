"""Fast CPU rasterizer: numba kernels for the image formation of :mod:`~gsvisloc_ros.render.formation`.

Per frame:

1. ``_project``: camera-frame mean, EWA 2D covariance and its inverse, colour from the SH
   coefficients, and the exact footprint: the ellipse where alpha can reach ``ALPHA_MIN``
   (``d^T cov2d^-1 d <= 2 ln(255 opacity)``) and its pixel bounding box. Faint Gaussians get small
   footprints, which is much of the speed.
2. ``_depth_order`` (radix sort of the depths) and ``_gather`` put the visible Gaussians front to
   back; ``_bin`` lists, for every 16x16 tile, the Gaussians whose ellipse touches it (checked per
   tile row, so long diagonal ellipses do not claim their whole bounding box). The lists come out
   sorted because they are filled in depth order: no per-tile sort.
3. ``_composite`` (parallel over tiles): per tile, per Gaussian, per pixel row of the tile that
   the ellipse spans, the 16 pixels are blended branch-free in float32, which LLVM vectorises;
   a tile stops once all its pixels are saturated.

The map-side work that does not depend on the camera (3D covariances, dropping Gaussians too faint
to ever be drawn) is done once per map by :func:`prepare` and kept in a small cache keyed by the
map's content hash, because the localizer renders the same map many times. Kernels are compiled
on first use and cached on disk by numba (``cache=True``; ``NUMBA_CACHE_DIR`` moves the cache).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numba as nb
import numpy as np

from ..camera import PinholeCamera
from ..gaussians import SH_C0, GaussianMap
from ..jit import jit
from .formation import (
    ALPHA_MAX,
    ALPHA_MIN,
    DEPTH_MIN_ALPHA,
    LOWPASS_PX2,
    SH_C1,
    SH_C2,
    SH_C3,
    TRANSMITTANCE_MIN,
    projection_clamp,
)

TILE = 16
CACHE_SIZE = 4
# Per-Gaussian record written by _project (float32, 64 bytes).
P_U, P_V, P_A, P_B, P_C, P_PMIN, P_OPACITY, P_R, P_G, P_BL, P_Z, P_QMAX, P_EX, P_EY, P_DYX = range(15)
N_PARAMS = 16

_C2_0, _C2_1, _C2_2, _C2_3, _C2_4 = SH_C2
_C3_0, _C3_1, _C3_2, _C3_3, _C3_4, _C3_5, _C3_6 = SH_C3


@dataclass(frozen=True)
class PreparedMap:
    """Camera-independent arrays of a map, laid out for the kernels."""

    means: np.ndarray  # [M, 3] float64
    cov3d: np.ndarray  # [M, 6] float64: xx, xy, xz, yy, yz, zz (world frame)
    opacities: np.ndarray  # [M] float64, all >= ALPHA_MIN
    sh: np.ndarray  # [M, K, 3] float32
    sh_degree: int
    content_hash: str

    def __len__(self) -> int:
        return len(self.means)


_cache: OrderedDict[str, PreparedMap] = OrderedDict()
_cache_lock = threading.Lock()
_kernel_lock = threading.Lock()


def prepare(gmap: GaussianMap) -> PreparedMap:
    """The :class:`PreparedMap` of ``gmap``, computed once per map content and cached.

    The key is :attr:`GaussianMap.content_hash`, which the map computes once: a map whose arrays
    are modified in place after its first render must be rebuilt as a new ``GaussianMap``.
    """
    key = gmap.content_hash
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    keep = gmap.opacities >= ALPHA_MIN  # alpha <= opacity: the others are never drawn
    cov3d = _covariances(gmap.quats[keep], gmap.scales[keep])
    prepared = PreparedMap(
        means=np.ascontiguousarray(gmap.means[keep], dtype=np.float64),
        cov3d=np.ascontiguousarray(cov3d),
        opacities=np.ascontiguousarray(gmap.opacities[keep], dtype=np.float64),
        sh=np.ascontiguousarray(gmap.sh[keep], dtype=np.float32),
        sh_degree=gmap.sh_degree,
        content_hash=key,
    )
    with _cache_lock:
        _cache[key] = prepared
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return prepared


@jit()
def _covariances(quats, scales):
    """World-frame covariances (xx, xy, xz, yy, yz, zz) [N, 6] of (w, x, y, z) quaternions and scales."""
    n = quats.shape[0]
    cov = np.empty((n, 6), dtype=np.float64)
    m = np.empty((3, 3), dtype=np.float64)
    for i in range(n):
        w, x, y, z = np.float64(quats[i, 0]), np.float64(quats[i, 1]), np.float64(quats[i, 2]), np.float64(quats[i, 3])
        norm = math.sqrt(w * w + x * x + y * y + z * z)
        norm = 1.0 / max(norm, 1e-30)
        w, x, y, z = w * norm, x * norm, y * norm, z * norm
        sx, sy, sz = np.float64(scales[i, 0]), np.float64(scales[i, 1]), np.float64(scales[i, 2])
        # m = R diag(s): cov = m m^T
        m[0, 0], m[0, 1], m[0, 2] = (1 - 2 * (y * y + z * z)) * sx, 2 * (x * y - w * z) * sy, 2 * (x * z + w * y) * sz
        m[1, 0], m[1, 1], m[1, 2] = 2 * (x * y + w * z) * sx, (1 - 2 * (x * x + z * z)) * sy, 2 * (y * z - w * x) * sz
        m[2, 0], m[2, 1], m[2, 2] = 2 * (x * z - w * y) * sx, 2 * (y * z + w * x) * sy, (1 - 2 * (x * x + y * y)) * sz
        k = 0
        for a in range(3):
            for b in range(a, 3):
                cov[i, k] = m[a, 0] * m[b, 0] + m[a, 1] * m[b, 1] + m[a, 2] * m[b, 2]
                k += 1
    return cov


def clear_cache() -> None:
    """Forget every prepared map."""
    with _cache_lock:
        _cache.clear()


def render(
    gmap: GaussianMap | PreparedMap,
    camera: PinholeCamera,
    T_camera_world: np.ndarray,
    *,
    background=(0.0, 0.0, 0.0),
    near: float = 0.01,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render (rgb [H,W,3], depth [H,W], alpha [H,W]) as float32; see :func:`gsvisloc_ros.render.render`."""
    prep = gmap if isinstance(gmap, PreparedMap) else prepare(gmap)
    width, height = camera.size
    T = np.asarray(T_camera_world, dtype=np.float64)
    R = np.ascontiguousarray(T[:3, :3])
    t = np.ascontiguousarray(T[:3, 3])
    campos = -R.T @ t
    limits = np.array(projection_clamp(camera))
    intrinsics = np.array([camera.fx, camera.fy, camera.cx, camera.cy], dtype=np.float64)
    bg = np.asarray(background, dtype=np.float64).reshape(3)

    rgb = np.empty((height, width, 3), dtype=np.float32)
    depth = np.empty((height, width), dtype=np.float32)
    alpha = np.empty((height, width), dtype=np.float32)
    n = len(prep)
    params = np.empty((n, N_PARAMS), dtype=np.float32)
    rects = np.empty((n, 4), dtype=np.int32)
    tiles_x = (width + TILE - 1) // TILE
    tiles_y = (height + TILE - 1) // TILE
    with _kernel_lock:
        if n:
            _project(
                prep.means, prep.cov3d, prep.opacities, prep.sh, prep.sh_degree, R, t, campos, intrinsics,
                limits, width, height, float(near), params, rects,
            )  # fmt: skip
        order = _depth_order(params, rects)
        params, rects = _gather(params, rects, order)
        tile_start, tile_list = _bin(params, rects, tiles_x, tiles_y)
        # Only the compositing runs in parallel: the other steps take a few ms, less than waking
        # the worker threads costs on a busy machine. Tiles are handed out a few at a time as
        # threads free up, so uneven images and other processes' load do not leave a core idle.
        with nb.parallel_chunksize(max(1, tiles_x // 4)):
            _composite(params, tile_start, tile_list, width, height, tiles_x, bg, rgb, depth, alpha)
    return rgb, depth, alpha


@jit(inline="always")
def _sh_color(sh, i, c, degree, dx, dy, dz):
    """SH evaluation of channel ``c`` of Gaussian ``i`` along the unit direction (dx, dy, dz)."""
    result = SH_C0 * sh[i, 0, c]
    if degree > 0:
        result += SH_C1 * (-dy * sh[i, 1, c] + dz * sh[i, 2, c] - dx * sh[i, 3, c])
        if degree > 1:
            xx, yy, zz = dx * dx, dy * dy, dz * dz
            xy, yz, xz = dx * dy, dy * dz, dx * dz
            result += (
                _C2_0 * xy * sh[i, 4, c]
                + _C2_1 * yz * sh[i, 5, c]
                + _C2_2 * (2.0 * zz - xx - yy) * sh[i, 6, c]
                + _C2_3 * xz * sh[i, 7, c]
                + _C2_4 * (xx - yy) * sh[i, 8, c]
            )
            if degree > 2:
                result += (
                    _C3_0 * dy * (3.0 * xx - yy) * sh[i, 9, c]
                    + _C3_1 * xy * dz * sh[i, 10, c]
                    + _C3_2 * dy * (4.0 * zz - xx - yy) * sh[i, 11, c]
                    + _C3_3 * dz * (2.0 * zz - 3.0 * xx - 3.0 * yy) * sh[i, 12, c]
                    + _C3_4 * dx * (4.0 * zz - xx - yy) * sh[i, 13, c]
                    + _C3_5 * dz * (xx - yy) * sh[i, 14, c]
                    + _C3_6 * dx * (xx - 3.0 * yy) * sh[i, 15, c]
                )
    return max(result + 0.5, 0.0)


@jit()
def _project(means, cov3d, opacities, sh, degree, R, t, campos, intrinsics, limits, width, height, near, params, rects):
    fx, fy, cx, cy = intrinsics[0], intrinsics[1], intrinsics[2], intrinsics[3]
    for i in range(means.shape[0]):
        rects[i, 0] = 0
        rects[i, 1] = -1  # invisible unless set below
        mx, my, mz = means[i, 0], means[i, 1], means[i, 2]
        pz = R[2, 0] * mx + R[2, 1] * my + R[2, 2] * mz + t[2]
        if not pz > near:
            continue
        px = R[0, 0] * mx + R[0, 1] * my + R[0, 2] * mz + t[0]
        py = R[1, 0] * mx + R[1, 1] * my + R[1, 2] * mz + t[1]
        inv_z = 1.0 / pz
        u = fx * px * inv_z + cx
        v = fy * py * inv_z + cy
        tx = min(max(px * inv_z, limits[0]), limits[1])
        ty = min(max(py * inv_z, limits[2]), limits[3])
        # Rows of J @ R, J the projection's Jacobian at the clamped point: cov2d = (JR) cov3d (JR)^T.
        a0 = fx * inv_z * (R[0, 0] - tx * R[2, 0])
        a1 = fx * inv_z * (R[0, 1] - tx * R[2, 1])
        a2 = fx * inv_z * (R[0, 2] - tx * R[2, 2])
        b0 = fy * inv_z * (R[1, 0] - ty * R[2, 0])
        b1 = fy * inv_z * (R[1, 1] - ty * R[2, 1])
        b2 = fy * inv_z * (R[1, 2] - ty * R[2, 2])
        cxx, cxy, cxz = cov3d[i, 0], cov3d[i, 1], cov3d[i, 2]
        cyy, cyz, czz = cov3d[i, 3], cov3d[i, 4], cov3d[i, 5]
        ca0 = cxx * a0 + cxy * a1 + cxz * a2
        ca1 = cxy * a0 + cyy * a1 + cyz * a2
        ca2 = cxz * a0 + cyz * a1 + czz * a2
        cb0 = cxx * b0 + cxy * b1 + cxz * b2
        cb1 = cxy * b0 + cyy * b1 + cyz * b2
        cb2 = cxz * b0 + cyz * b1 + czz * b2
        sxx = a0 * ca0 + a1 * ca1 + a2 * ca2 + LOWPASS_PX2
        sxy = a0 * cb0 + a1 * cb1 + a2 * cb2
        syy = b0 * cb0 + b1 * cb1 + b2 * cb2 + LOWPASS_PX2
        det = sxx * syy - sxy * sxy
        if not det > 0.0:
            continue
        opacity = opacities[i]
        qmax = 2.0 * math.log(opacity / ALPHA_MIN)
        ex = math.sqrt(qmax * sxx)
        ey = math.sqrt(qmax * syy)
        x0 = max(0.0, math.ceil(u - ex))
        x1 = min(width - 1.0, math.floor(u + ex))
        y0 = max(0.0, math.ceil(v - ey))
        y1 = min(height - 1.0, math.floor(v + ey))
        if not (x0 <= x1 and y0 <= y1):
            continue
        if degree == 0:
            r = max(SH_C0 * sh[i, 0, 0] + 0.5, 0.0)
            g = max(SH_C0 * sh[i, 0, 1] + 0.5, 0.0)
            b = max(SH_C0 * sh[i, 0, 2] + 0.5, 0.0)
        else:
            dx, dy, dz = mx - campos[0], my - campos[1], mz - campos[2]
            norm = math.sqrt(dx * dx + dy * dy + dz * dz)
            norm = 1.0 / max(norm, 1e-12)
            dx, dy, dz = dx * norm, dy * norm, dz * norm
            r = _sh_color(sh, i, 0, degree, dx, dy, dz)
            g = _sh_color(sh, i, 1, degree, dx, dy, dz)
            b = _sh_color(sh, i, 2, degree, dx, dy, dz)
        params[i, P_U] = u
        params[i, P_V] = v
        params[i, P_A] = syy / det
        params[i, P_B] = -sxy / det
        params[i, P_C] = sxx / det
        params[i, P_PMIN] = -0.5 * qmax
        params[i, P_OPACITY] = opacity
        params[i, P_R] = r
        params[i, P_G] = g
        params[i, P_BL] = b
        params[i, P_Z] = pz
        params[i, P_QMAX] = qmax
        params[i, P_EX] = ex
        params[i, P_EY] = ey
        params[i, P_DYX] = sxy * math.sqrt(qmax / sxx)  # dy of the ellipse's right-most point
        params[i, 15] = 0.0
        rects[i, 0] = int(x0)
        rects[i, 1] = int(x1)
        rects[i, 2] = int(y0)
        rects[i, 3] = int(y1)


@jit(inline="always")
def _row_span(u, a, b, c, qmax, dy):
    """x-interval of the ellipse ``a dx^2 + 2 b dx dy + c dy^2 <= qmax`` on the row at offset dy."""
    disc = b * b * dy * dy - a * (c * dy * dy - qmax)
    if disc < 0.0:
        disc = 0.0
    half = math.sqrt(disc) / a
    centre = u - b * dy / a
    return centre - half, centre + half


@jit(inline="always")
def _band_span(params, i, y_lo, y_hi):
    """x-interval of Gaussian i's ellipse over the rows y_lo..y_hi (inside its bounding box)."""
    u, v = np.float64(params[i, P_U]), np.float64(params[i, P_V])
    a, b, c = np.float64(params[i, P_A]), np.float64(params[i, P_B]), np.float64(params[i, P_C])
    qmax, ex, dyx = np.float64(params[i, P_QMAX]), np.float64(params[i, P_EX]), np.float64(params[i, P_DYX])
    dy0, dy1 = y_lo - v, y_hi - v
    lo0, hi0 = _row_span(u, a, b, c, qmax, dy0)
    lo1, hi1 = _row_span(u, a, b, c, qmax, dy1)
    # The right boundary x(dy) is concave: its maximum over the band is the ellipse's right-most
    # point when that lies in the band, else an end; symmetrically for the left boundary.
    hi = u + ex if dy0 <= dyx <= dy1 else max(hi0, hi1)
    lo = u - ex if dy0 <= -dyx <= dy1 else min(lo0, lo1)
    return lo, hi


@jit()
def _depth_order(params, rects):
    """Indices of the visible Gaussians, front to back (stable: ties keep index order).

    An LSD radix sort of the float32 depths' bit patterns, which order like the depths since
    every visible depth is positive.
    """
    n = rects.shape[0]
    m = 0
    for i in range(n):
        if rects[i, 0] <= rects[i, 1]:
            m += 1
    order = np.empty(m, dtype=np.int32)
    z = np.empty(m, dtype=np.float32)
    m = 0
    for i in range(n):
        if rects[i, 0] <= rects[i, 1]:
            order[m] = i
            z[m] = params[i, P_Z]
            m += 1
    keys = z.view(np.uint32)
    order_tmp = np.empty_like(order)
    keys_tmp = np.empty_like(keys)
    for shift in (0, 11, 22):
        counts = np.zeros(2049, dtype=np.int64)
        for r in range(m):
            counts[((keys[r] >> shift) & 2047) + 1] += 1
        for d in range(2048):
            counts[d + 1] += counts[d]
        for r in range(m):
            d = (keys[r] >> shift) & 2047
            pos = counts[d]
            counts[d] = pos + 1
            order_tmp[pos] = order[r]
            keys_tmp[pos] = keys[r]
        order, order_tmp = order_tmp, order
        keys, keys_tmp = keys_tmp, keys
    return order


@jit(inline="always")
def _tile_columns(params, i, x0, x1, y0, y1, ty):
    """First and last tile column where Gaussian i's ellipse meets tile row ``ty`` (empty: last < first)."""
    if y0 // TILE == y1 // TILE:  # one tile row: the band holds the whole ellipse
        return x0 // TILE, x1 // TILE
    lo, hi = _band_span(params, i, max(y0, ty * TILE), min(y1, ty * TILE + TILE - 1))
    xa = int(max(x0, math.floor(lo)))
    xb = int(min(x1, math.ceil(hi)))
    if xa > xb:
        return 1, 0
    return xa // TILE, xb // TILE


@jit()
def _gather(params, rects, order):
    """The records of the Gaussians ``order``, in that order."""
    m = order.shape[0]
    params_out = np.empty((m, params.shape[1]), dtype=params.dtype)
    rects_out = np.empty((m, 4), dtype=rects.dtype)
    for r in range(m):
        i = order[r]
        for k in range(params.shape[1]):
            params_out[r, k] = params[i, k]
        for k in range(4):
            rects_out[r, k] = rects[i, k]
    return params_out, rects_out


@jit()
def _bin(params, rects, tiles_x, tiles_y):
    """Per-tile lists of indices of depth-sorted Gaussians, front to back: (start [tiles+1], indices).

    A counting sort: the lists stay sorted because the Gaussians are visited front to back. The
    counting pass keeps each Gaussian's tile-column span per tile row for the filling pass.
    """
    m = params.shape[0]
    n_tiles = tiles_x * tiles_y
    row_start = np.empty(m + 1, dtype=np.int64)  # spans of Gaussian i: row_start[i] .. row_start[i + 1] - 1
    row_start[0] = 0
    for i in range(m):
        row_start[i + 1] = row_start[i] + rects[i, 3] // TILE - rects[i, 2] // TILE + 1
    spans = np.empty((row_start[m], 2), dtype=np.int32)
    start = np.zeros(n_tiles + 1, dtype=np.int64)
    for i in range(m):
        x0, x1, y0, y1 = rects[i, 0], rects[i, 1], rects[i, 2], rects[i, 3]
        r = row_start[i]
        for ty in range(y0 // TILE, y1 // TILE + 1):
            first, last = _tile_columns(params, i, x0, x1, y0, y1, ty)
            spans[r, 0] = first
            spans[r, 1] = last
            r += 1
            for tx in range(first, last + 1):
                start[ty * tiles_x + tx + 1] += 1
    for tile in range(n_tiles):
        start[tile + 1] += start[tile]
    indices = np.empty(start[n_tiles], dtype=np.int32)
    cursor = start[:n_tiles].copy()
    for i in range(m):
        r = row_start[i]
        for ty in range(rects[i, 2] // TILE, rects[i, 3] // TILE + 1):
            for tx in range(spans[r, 0], spans[r, 1] + 1):
                tile = ty * tiles_x + tx
                indices[cursor[tile]] = i
                cursor[tile] += 1
            r += 1
    return start, indices


@jit(fastmath=True, inline="always")
def _exp_neg(x):
    """exp(x) for x in [-6, 0] in float32, branch-free so that pixel rows vectorise.

    exp(x / 16) by its degree-7 Taylor polynomial (truncation < 1e-8), squared four times;
    relative error about 1e-6, far below what an 8-bit image shows.
    """
    r = x * np.float32(1.0 / 16.0)
    p = np.float32(1.0 / 5040.0)
    p = p * r + np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    p = p * p
    p = p * p
    p = p * p
    return p * p


_F_ALPHA_MIN = np.float32(ALPHA_MIN)
_F_ALPHA_MAX = np.float32(ALPHA_MAX)
_F_T_MIN = np.float32(TRANSMITTANCE_MIN)
# Planes of the per-tile buffer (one array, constant offsets: the compiler sees they never overlap):
# transmittance (negative once the pixel is done), colour, depth sum.
_PIX = TILE * TILE
_B_T, _B_R, _B_G, _B_B, _B_Z = (k * _PIX for k in range(5))


@jit(parallel=True, fastmath=True)
def _composite(params, tile_start, tile_list, width, height, tiles_x, bg, rgb, depth, alpha_out):
    n_tiles = tile_start.shape[0] - 1
    for tile in nb.prange(n_tiles):
        buf = np.empty(5 * _PIX, dtype=np.float32)
        tx0 = (tile % tiles_x) * TILE
        ty0 = (tile // tiles_x) * TILE
        tx1 = min(tx0 + TILE, width) - 1
        ty1 = min(ty0 + TILE, height) - 1
        for r in range(TILE):
            for j in range(TILE):
                k = r * TILE + j
                buf[_B_T + k] = 1.0
                buf[_B_R + k] = 0.0
                buf[_B_G + k] = 0.0
                buf[_B_B + k] = 0.0
                buf[_B_Z + k] = 0.0
                if ty0 + r > ty1 or tx0 + j > tx1:  # beyond the image: never drawn
                    buf[_B_T + k] = -1.0
        touch = np.float32(0.0)
        last_kk = tile_start[tile + 1] - 1
        for kk in range(tile_start[tile], tile_start[tile + 1]):
            # Read the record two Gaussians ahead now, so that its cache lines arrive while this one
            # is drawn (a software prefetch; ``touch`` only keeps the loads from being optimised away).
            ahead = tile_list[min(kk + 2, last_kk)]
            touch += params[ahead, 0] + params[ahead, N_PARAMS - 1]
            p = params[tile_list[kk]]
            v64, ey = np.float64(p[P_V]), np.float64(p[P_EY])
            gy0 = int(max(ty0, math.ceil(v64 - ey)))
            gy1 = int(min(ty1, math.floor(v64 + ey)))
            u, v, a, b, c = p[P_U], p[P_V], p[P_A], p[P_B], p[P_C]
            pmin, opacity = p[P_PMIN], p[P_OPACITY]
            cr, cg, cb, z = p[P_R], p[P_G], p[P_BL], p[P_Z]
            for py in range(gy0, gy1 + 1):
                dy = np.float32(py) - v
                cdy = np.float32(-0.5) * c * dy * dy
                bdy = b * dy
                base = ((py - ty0) & (TILE - 1)) * TILE  # provably >= 0: lets the row vectorise
                # The whole 16-pixel row, branch-free: pixels outside the ellipse fail the tests.
                for j in range(TILE):
                    k = base + j
                    dx = np.float32(tx0 + j) - u
                    power = np.float32(-0.5) * a * dx * dx + cdy - bdy * dx
                    alpha = min(_F_ALPHA_MAX, opacity * _exp_neg(max(power, np.float32(-6.0))))
                    t_here = buf[_B_T + k]
                    ok = (
                        (power <= np.float32(0.0))
                        & (power >= pmin)
                        & (alpha >= _F_ALPHA_MIN)
                        & (t_here > np.float32(0.0))
                    )
                    t_next = t_here * (np.float32(1.0) - alpha)
                    blend = ok & (t_next >= _F_T_MIN)
                    finish = ok & (t_next < _F_T_MIN)
                    w = alpha * t_here if blend else np.float32(0.0)
                    buf[_B_R + k] += w * cr
                    buf[_B_G + k] += w * cg
                    buf[_B_B + k] += w * cb
                    buf[_B_Z + k] += w * z
                    # A finished pixel keeps its transmittance, negated to mark it done.
                    buf[_B_T + k] = t_next if blend else (-t_here if finish else t_here)
            if (kk - tile_start[tile]) % 8 == 7:  # every few Gaussians: stop once every pixel is done
                n_done = 0
                for k in range(_PIX):
                    n_done += 1 if buf[_B_T + k] < np.float32(0.0) else 0
                if n_done == _PIX:
                    break
        if touch == np.float32(-1.2345e30):
            buf[0] = touch
        for py in range(ty0, ty1 + 1):
            for px in range(tx0, tx1 + 1):
                k = (py - ty0) * TILE + px - tx0
                t_here = abs(np.float64(buf[_B_T + k]))
                rgb[py, px, 0] = min(1.0, max(0.0, buf[_B_R + k] + t_here * bg[0]))
                rgb[py, px, 1] = min(1.0, max(0.0, buf[_B_G + k] + t_here * bg[1]))
                rgb[py, px, 2] = min(1.0, max(0.0, buf[_B_B + k] + t_here * bg[2]))
                a_here = 1.0 - t_here
                alpha_out[py, px] = a_here
                depth[py, px] = buf[_B_Z + k] / a_here if a_here >= DEPTH_MIN_ALPHA else 0.0
