"""Differentiable rasterization: the numba forward that keeps what the backward needs, and the backward.

The image formation is the one of :mod:`~gsvisloc_ros.render.formation` and of the fast renderer
:mod:`~gsvisloc_ros.render.cpu`, whose sorting and tile binning are reused as they are. Input per
Gaussian: the projected 2D mean (u, v), the conic (a, b, c) = inverse 2D covariance, the opacity
and the RGB colour; output: the blended colour ``sum_i c_i alpha_i T_i + T bg`` per pixel (not yet
clipped to [0, 1]) and the final transmittance.

Forward (:func:`rasterize`) is :func:`cpu._composite` plus, per pixel, the final transmittance and
the position in the tile's list just after the last Gaussian that was blended.

Backward (:func:`rasterize_backward`, the standard 3DGS raster backward as in the INRIA and gsplat
kernels): per pixel, walk the contributors back to front, recover each one's transmittance by
dividing by (1 - alpha), keep the colour blended behind it, and accumulate dL/d(u, v, a, b, c,
opacity, rgb) per Gaussian. Tiles are dealt out, interleaved, to a fixed number of chunks that run
in parallel, each with its own gradient buffer (no atomics); the buffers are summed in a fixed
order, so results do not depend on the thread count or scheduling.

The chain from these 2D quantities to the 3D parameters and the camera pose is plain torch, in
:mod:`~gsvisloc_ros.render.differentiable`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba as nb
import numpy as np

from ..jit import jit
from .cpu import (
    _F_ALPHA_MAX,
    _F_ALPHA_MIN,
    _F_T_MIN,
    N_PARAMS,
    P_A,
    P_B,
    P_BL,
    P_C,
    P_DYX,
    P_EX,
    P_EY,
    P_G,
    P_OPACITY,
    P_PMIN,
    P_QMAX,
    P_R,
    P_U,
    P_V,
    P_Z,
    TILE,
    _bin,
    _depth_order,
    _exp_neg,
    _gather,
)
from .formation import ALPHA_MIN

CHUNKS = 8  # gradient buffers; tiles are dealt to them in turn
# Columns of the per-Gaussian 2D inputs and of their gradients.
G_U, G_V, G_A, G_B, G_C, G_OPACITY, G_R, G_G, G_BL = range(9)
N_GRAD = 9
_PIX = TILE * TILE


@dataclass
class RasterState:
    """What :func:`rasterize` keeps for :func:`rasterize_backward`."""

    params: np.ndarray  # [m, N_PARAMS] float32, the visible Gaussians front to back
    order: np.ndarray  # [m] int32: their indices in the input
    tile_start: np.ndarray
    tile_list: np.ndarray
    final_t: np.ndarray  # [H, W] float32
    last: np.ndarray  # [H, W] int64: tile-list position after the last blended Gaussian
    n: int
    width: int
    height: int
    tiles_x: int
    background: np.ndarray


@jit()
def _pack(gauss2d, depth, width, height, params, rects):
    """Kernel records (as :func:`cpu._project` writes them) of 2D Gaussians; invisible: rects[i, 1] = -1.

    ``gauss2d`` [n, 9]: u, v, conic a, b, c, opacity, r, g, b; ``depth`` [n]: camera z, <= 0 culled.
    """
    for i in range(gauss2d.shape[0]):
        rects[i, 0] = 0
        rects[i, 1] = -1
        opacity = gauss2d[i, G_OPACITY]
        z = depth[i]
        if not (z > 0.0 and opacity >= ALPHA_MIN):
            continue
        u, v = gauss2d[i, G_U], gauss2d[i, G_V]
        a, b, c = gauss2d[i, G_A], gauss2d[i, G_B], gauss2d[i, G_C]
        det = a * c - b * b
        if not (det > 0.0 and a > 0.0):
            continue
        sxx, sxy, syy = c / det, -b / det, a / det  # the 2D covariance
        qmax = 2.0 * math.log(opacity / ALPHA_MIN)
        ex = math.sqrt(qmax * sxx)
        ey = math.sqrt(qmax * syy)
        x0 = max(0.0, math.ceil(u - ex))
        x1 = min(width - 1.0, math.floor(u + ex))
        y0 = max(0.0, math.ceil(v - ey))
        y1 = min(height - 1.0, math.floor(v + ey))
        if not (x0 <= x1 and y0 <= y1):
            continue
        params[i, P_U] = u
        params[i, P_V] = v
        params[i, P_A] = a
        params[i, P_B] = b
        params[i, P_C] = c
        params[i, P_PMIN] = -0.5 * qmax
        params[i, P_OPACITY] = opacity
        params[i, P_R] = gauss2d[i, G_R]
        params[i, P_G] = gauss2d[i, G_G]
        params[i, P_BL] = gauss2d[i, G_BL]
        params[i, P_Z] = z
        params[i, P_QMAX] = qmax
        params[i, P_EX] = ex
        params[i, P_EY] = ey
        params[i, P_DYX] = sxy * math.sqrt(qmax / sxx)
        params[i, 15] = 0.0
        rects[i, 0] = int(x0)
        rects[i, 1] = int(x1)
        rects[i, 2] = int(y0)
        rects[i, 3] = int(y1)


def rasterize(
    gauss2d: np.ndarray, depth: np.ndarray, width: int, height: int, background
) -> tuple[np.ndarray, RasterState]:
    """(colour [H, W, 3] float32, unclipped, state for the backward) of 2D Gaussians; see the module doc."""
    gauss2d = np.ascontiguousarray(gauss2d, dtype=np.float32)
    depth = np.ascontiguousarray(depth, dtype=np.float32)
    n = len(gauss2d)
    params = np.empty((n, N_PARAMS), dtype=np.float32)
    rects = np.empty((n, 4), dtype=np.int32)
    if n:
        _pack(gauss2d, depth, width, height, params, rects)
    order = _depth_order(params, rects)
    params, rects = _gather(params, rects, order)
    tiles_x = (width + TILE - 1) // TILE
    tiles_y = (height + TILE - 1) // TILE
    tile_start, tile_list = _bin(params, rects, tiles_x, tiles_y)
    bg = np.asarray(background, dtype=np.float32).reshape(3)
    rgb = np.empty((height, width, 3), dtype=np.float32)
    final_t = np.empty((height, width), dtype=np.float32)
    last = np.empty((height, width), dtype=np.int64)
    with nb.parallel_chunksize(max(1, tiles_x // 4)):
        _composite_forward(params, tile_start, tile_list, width, height, tiles_x, bg, rgb, final_t, last)
    state = RasterState(params, order, tile_start, tile_list, final_t, last, n, width, height, tiles_x, bg)
    return rgb, state


@jit(parallel=True, fastmath=True)
def _composite_forward(params, tile_start, tile_list, width, height, tiles_x, bg, rgb, final_t, last):
    """:func:`cpu._composite` without depth, keeping the final transmittance and the last contributor."""
    n_tiles = tile_start.shape[0] - 1
    for tile in nb.prange(n_tiles):
        trans = np.empty(_PIX, dtype=np.float32)
        color = np.zeros((3, _PIX), dtype=np.float32)
        after = np.empty(_PIX, dtype=np.int64)
        tx0 = (tile % tiles_x) * TILE
        ty0 = (tile // tiles_x) * TILE
        tx1 = min(tx0 + TILE, width) - 1
        ty1 = min(ty0 + TILE, height) - 1
        first = tile_start[tile]
        for r in range(TILE):
            for j in range(TILE):
                k = r * TILE + j
                trans[k] = 1.0
                after[k] = first
                if ty0 + r > ty1 or tx0 + j > tx1:
                    trans[k] = -1.0
        for kk in range(first, tile_start[tile + 1]):
            p = params[tile_list[kk]]
            v64, ey = np.float64(p[P_V]), np.float64(p[P_EY])
            gy0 = int(max(ty0, math.ceil(v64 - ey)))
            gy1 = int(min(ty1, math.floor(v64 + ey)))
            u, v, a, b, c = p[P_U], p[P_V], p[P_A], p[P_B], p[P_C]
            pmin, opacity = p[P_PMIN], p[P_OPACITY]
            cr, cg, cb = p[P_R], p[P_G], p[P_BL]
            for py in range(gy0, gy1 + 1):
                dy = np.float32(py) - v
                cdy = np.float32(-0.5) * c * dy * dy
                bdy = b * dy
                base = ((py - ty0) & (TILE - 1)) * TILE
                for j in range(TILE):
                    k = base + j
                    dx = np.float32(tx0 + j) - u
                    power = np.float32(-0.5) * a * dx * dx + cdy - bdy * dx
                    alpha = min(_F_ALPHA_MAX, opacity * _exp_neg(max(power, np.float32(-6.0))))
                    t_here = trans[k]
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
                    color[0, k] += w * cr
                    color[1, k] += w * cg
                    color[2, k] += w * cb
                    after[k] = kk + 1 if blend else after[k]
                    trans[k] = t_next if blend else (-t_here if finish else t_here)
            if (kk - first) % 8 == 7:
                n_done = 0
                for k in range(_PIX):
                    n_done += 1 if trans[k] < np.float32(0.0) else 0
                if n_done == _PIX:
                    break
        for py in range(ty0, ty1 + 1):
            for px in range(tx0, tx1 + 1):
                k = (py - ty0) * TILE + px - tx0
                t_here = abs(trans[k])
                for ch in range(3):
                    rgb[py, px, ch] = color[ch, k] + t_here * bg[ch]
                final_t[py, px] = t_here
                last[py, px] = after[k]


def rasterize_backward(state: RasterState, grad_rgb: np.ndarray) -> np.ndarray:
    """dL/d(u, v, a, b, c, opacity, r, g, b) [n, 9] float32 of the inputs of :func:`rasterize`."""
    grad_rgb = np.ascontiguousarray(grad_rgb, dtype=np.float32)
    m = len(state.params)
    buffers = np.zeros((CHUNKS, m, N_GRAD), dtype=np.float32)
    if m:
        _composite_backward(
            state.params, state.tile_start, state.tile_list, state.width, state.height, state.tiles_x,
            state.background, state.final_t, state.last, grad_rgb, buffers,
        )  # fmt: skip
    grads = np.zeros((state.n, N_GRAD), dtype=np.float32)
    grads[state.order] = buffers.sum(axis=0)
    return grads


@jit(parallel=True, fastmath=True)
def _composite_backward(params, tile_start, tile_list, width, height, tiles_x, bg, final_t, last, grad_rgb, buffers):
    n_tiles = tile_start.shape[0] - 1
    for chunk in nb.prange(CHUNKS):
        out = buffers[chunk]
        trans = np.empty(_PIX, dtype=np.float32)
        behind = np.empty((3, _PIX), dtype=np.float32)  # colour blended behind the current Gaussian
        grad = np.empty((3, _PIX), dtype=np.float32)
        t_bg = np.empty(_PIX, dtype=np.float32)  # dL/dT_final = grad . bg, times T_final
        after = np.empty(_PIX, dtype=np.int64)
        for tile in range(chunk, n_tiles, CHUNKS):
            first = tile_start[tile]
            tx0 = (tile % tiles_x) * TILE
            ty0 = (tile // tiles_x) * TILE
            tx1 = min(tx0 + TILE, width) - 1
            ty1 = min(ty0 + TILE, height) - 1
            end = first
            for r in range(TILE):
                for j in range(TILE):
                    k = r * TILE + j
                    after[k] = first  # pixels beyond the image: nothing to walk back
                    trans[k] = 0.0
                    t_bg[k] = 0.0
                    for ch in range(3):
                        behind[ch, k] = 0.0
                        grad[ch, k] = 0.0
                    py, px = ty0 + r, tx0 + j
                    if py <= ty1 and px <= tx1:
                        after[k] = last[py, px]
                        end = max(end, after[k])
                        trans[k] = final_t[py, px]
                        for ch in range(3):
                            grad[ch, k] = grad_rgb[py, px, ch]
                        t_bg[k] = trans[k] * (grad[0, k] * bg[0] + grad[1, k] * bg[1] + grad[2, k] * bg[2])
            for kk in range(end - 1, first - 1, -1):
                g = tile_list[kk]
                p = params[g]
                v64, ey = np.float64(p[P_V]), np.float64(p[P_EY])
                gy0 = int(max(ty0, math.ceil(v64 - ey)))
                gy1 = int(min(ty1, math.floor(v64 + ey)))
                u, v, a, b, c = p[P_U], p[P_V], p[P_A], p[P_B], p[P_C]
                pmin, opacity = p[P_PMIN], p[P_OPACITY]
                cr, cg, cb = p[P_R], p[P_G], p[P_BL]
                du = dv = da = db = dc = dop = dr = dg = dbl = np.float32(0.0)
                for py in range(gy0, gy1 + 1):
                    dy = np.float32(py) - v
                    base = ((py - ty0) & (TILE - 1)) * TILE
                    # Branch-free over the 16 pixels of the row (so that it vectorises, as the
                    # forward does): pixels the Gaussian did not contribute to change nothing.
                    for j in range(TILE):
                        k = base + j
                        dx = np.float32(tx0 + j) - u
                        power = np.float32(-0.5) * (a * dx * dx + c * dy * dy) - b * dx * dy
                        gauss = _exp_neg(max(power, np.float32(-6.0)))
                        raw = opacity * gauss
                        alpha = min(_F_ALPHA_MAX, raw)
                        ok = (kk < after[k]) & (power <= np.float32(0.0)) & (power >= pmin) & (alpha >= _F_ALPHA_MIN)
                        inv = np.float32(1.0) / (np.float32(1.0) - alpha)
                        t_here = trans[k] * inv if ok else trans[k]  # transmittance in front of this Gaussian
                        trans[k] = t_here
                        w = alpha * t_here if ok else np.float32(0.0)
                        g0, g1, g2 = grad[0, k], grad[1, k], grad[2, k]
                        dr += w * g0
                        dg += w * g1
                        dbl += w * g2
                        d_alpha = t_here * (cr * g0 + cg * g1 + cb * g2) - (
                            behind[0, k] * g0 + behind[1, k] * g1 + behind[2, k] * g2 + t_bg[k]
                        ) * inv
                        behind[0, k] += w * cr
                        behind[1, k] += w * cg
                        behind[2, k] += w * cb
                        # Clamped alphas pass no gradient.
                        d_alpha = d_alpha if ok & (raw < _F_ALPHA_MAX) else np.float32(0.0)
                        dop += gauss * d_alpha
                        d_power = alpha * d_alpha
                        du += d_power * (a * dx + b * dy)
                        dv += d_power * (c * dy + b * dx)
                        da += np.float32(-0.5) * dx * dx * d_power
                        db += -dx * dy * d_power
                        dc += np.float32(-0.5) * dy * dy * d_power
                out[g, G_U] += du
                out[g, G_V] += dv
                out[g, G_A] += da
                out[g, G_B] += db
                out[g, G_C] += dc
                out[g, G_OPACITY] += dop
                out[g, G_R] += dr
                out[g, G_G] += dg
                out[g, G_BL] += dbl
