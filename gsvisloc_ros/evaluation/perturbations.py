"""Photometric changes of a rendered query, so that it is not pixel-identical to what the map renders.

Each function takes and returns a uint8 RGB image; :func:`perturb` draws a random combination.
"""

from __future__ import annotations

import numpy as np


def adjust_gamma(image: np.ndarray, gamma: float) -> np.ndarray:
    """``255 (x / 255) ** gamma``: gamma > 1 darkens the mid-tones, < 1 brightens them."""
    x = image.astype(np.float32) / 255.0
    return np.clip(np.rint(255.0 * np.power(x, gamma)), 0, 255).astype(np.uint8)


def adjust_brightness_contrast(image: np.ndarray, brightness: float, contrast: float) -> np.ndarray:
    """``(x - 127.5) * contrast + 127.5 + brightness`` (grey levels), clipped."""
    x = (image.astype(np.float32) - 127.5) * contrast + 127.5 + brightness
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with standard deviation ``sigma`` pixels (defocus, motion-free)."""
    import cv2

    return cv2.GaussianBlur(image, (0, 0), sigmaX=float(sigma), sigmaY=float(sigma))


def gaussian_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise of ``sigma`` grey levels per pixel and channel (sensor noise)."""
    x = image.astype(np.float32) + rng.normal(0.0, sigma, image.shape).astype(np.float32)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip at ``quality`` (OpenCV; RGB in and out)."""
    import cv2

    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV could not encode the image as JPEG")
    return cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1].copy()


def perturb(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """Random photometric changes, at least one, applied in a fixed order (as a camera would).

    Each is drawn with its own probability: gamma 0.7-1.4, brightness +-25 and contrast
    0.75-1.25, blur sigma 0.6-1.3 px, noise sigma 3-8 grey levels, JPEG quality 60-85.
    Returns the image and what was applied (``[{"type": ..., parameters}]``).
    """
    names = ("gamma", "brightness_contrast", "gaussian_blur", "gaussian_noise", "jpeg")
    chosen = rng.random(len(names)) < np.array([0.35, 0.55, 0.35, 0.5, 0.6])
    if not chosen.any():
        chosen[rng.integers(len(names))] = True
    applied = []
    for name, use in zip(names, chosen, strict=True):
        if not use:
            continue
        if name == "gamma":
            p = {"gamma": round(float(rng.uniform(0.7, 1.4)), 4)}
            image = adjust_gamma(image, **p)
        elif name == "brightness_contrast":
            p = {
                "brightness": round(float(rng.uniform(-25, 25)), 2),
                "contrast": round(float(rng.uniform(0.75, 1.25)), 4),
            }
            image = adjust_brightness_contrast(image, **p)
        elif name == "gaussian_blur":
            p = {"sigma": round(float(rng.uniform(0.6, 1.3)), 3)}
            image = gaussian_blur(image, **p)
        elif name == "gaussian_noise":
            p = {"sigma": round(float(rng.uniform(3.0, 8.0)), 3)}
            image = gaussian_noise(image, p["sigma"], rng)
        else:
            p = {"quality": int(rng.integers(60, 86))}
            image = jpeg(image, **p)
        applied.append({"type": name, **p})
    return image, applied
