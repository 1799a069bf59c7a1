"""The image formation every backend implements, in numbers.

Standard 3D Gaussian Splatting (Kerbl et al. 2023, the official INRIA rasterizer):

* A Gaussian's camera-frame covariance ``R Rq S S Rq^T R^T`` is projected with the Jacobian of the
  pinhole projection (EWA splatting), evaluated at x/z, y/z clamped to ``FOV_CLAMP`` times the
  image's half-extent; ``LOWPASS_PX2`` px^2 is added to the diagonal of the 2D covariance.
* The centre of pixel (i, j) is at (u, v) = (i, j); at offset d from the projected mean a Gaussian
  has ``alpha = min(ALPHA_MAX, opacity * exp(-0.5 d^T cov2d^-1 d))``; contributions below
  ``ALPHA_MIN`` are skipped.
* Each pixel blends its Gaussians front to back by camera depth z of their means; it stops before
  a Gaussian that would bring the transmittance below ``TRANSMITTANCE_MIN``.
* Colour is the spherical-harmonics evaluation along the ray from the camera centre to the mean,
  plus 0.5, clamped at 0. Gaussians with z <= ``near`` are culled.

Outputs: ``rgb = sum(w_i c_i) + T * background`` clipped to [0, 1], ``alpha = 1 - T``, and the
*expected depth normalised by alpha*, ``depth = sum(w_i z_i) / sum(w_i)`` with ``w_i = alpha_i T_i``
(the weighted mean camera z of what the pixel sees; ``sum(w_i) = alpha``), set to 0 where nothing
was drawn. One deliberate difference from the INRIA code: a Gaussian reaches every pixel where its
alpha passes the threshold (its exact footprint), not the pixels of the 16x16 tiles its 3-sigma
square happens to touch, so the result does not depend on a tile grid.
"""

from __future__ import annotations

import numpy as np

from ..gaussians import SH_C1, SH_C2, SH_C3  # noqa: F401 - the formation uses the map's SH basis

ALPHA_MAX = 0.99
ALPHA_MIN = 1.0 / 255.0
TRANSMITTANCE_MIN = 1e-4
LOWPASS_PX2 = 0.3
FOV_CLAMP = 1.3
# Scene units. INRIA culls at z <= 0.2, which assumes scenes tens of units across; maps here can be
# about one unit tall and are viewed from 0.1-0.2 units, so the default is 0.01 (also gsplat's).
DEFAULT_NEAR = 0.01
# Every drawn pixel has alpha >= ALPHA_MIN; below this nothing was drawn and depth is 0.
DEPTH_MIN_ALPHA = 1e-3


def projection_clamp(camera) -> tuple[float, float, float, float]:
    """(x_lo, x_hi, y_lo, y_hi): the bounds of x/z and y/z at which the EWA Jacobian is evaluated,
    the image's extent (pixel edges) widened by ``FOV_CLAMP - 1`` of its half-extent on each side."""
    tan_x = 0.5 * camera.width / camera.fx
    tan_y = 0.5 * camera.height / camera.fy
    return (
        -(camera.cx + 0.5) / camera.fx - (FOV_CLAMP - 1.0) * tan_x,
        (camera.width - 0.5 - camera.cx) / camera.fx + (FOV_CLAMP - 1.0) * tan_x,
        -(camera.cy + 0.5) / camera.fy - (FOV_CLAMP - 1.0) * tan_y,
        (camera.height - 0.5 - camera.cy) / camera.fy + (FOV_CLAMP - 1.0) * tan_y,
    )



def finish_image(
    color: np.ndarray, depth_sum: np.ndarray, trans: np.ndarray, background
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rgb, depth, alpha) float32 from the blended colour, weighted depth sum and transmittance."""
    bg = np.asarray(background, dtype=np.float64).reshape(3)
    alpha = 1.0 - trans
    rgb = np.clip(color + trans[..., None] * bg, 0.0, 1.0)
    drawn = alpha >= DEPTH_MIN_ALPHA
    depth = np.where(drawn, depth_sum / np.where(drawn, alpha, 1.0), 0.0)
    return rgb.astype(np.float32), depth.astype(np.float32), alpha.astype(np.float32)
