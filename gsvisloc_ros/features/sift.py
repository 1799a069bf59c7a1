"""OpenCV SIFT with RootSIFT descriptors: the hand-crafted second implementation of the 2D encoder.

RootSIFT (Arandjelovic & Zisserman, CVPR 2012): L1-normalise the SIFT histogram and take the
element-wise square root; the result has unit L2 norm and its dot product is the Hellinger kernel
of the original histograms, which matches better than the Euclidean distance of raw SIFT.

Keypoint positions: OpenCV's SIFT builds its first octave on the image upsampled 2x and reports
upsampled positions times 0.5. Under the pixel-centre convention the correct map is
``x / 2 - 0.25``, so raw OpenCV positions sit +0.25 px right/down of the feature; ``position_bias``
subtracts that (test/test_features.py measures it with a mirror test).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import MIN_IMAGE_SIDE, Features, check_image, to_gray


@dataclass(frozen=True)
class SiftConfig:
    """Settings of the SIFT encoder.

    Attributes:
        top_k: keep at most this many keypoints (highest response first); 0 keeps all.
        contrast_threshold: OpenCV's ``contrastThreshold`` (lower gives more keypoints).
        edge_threshold: OpenCV's ``edgeThreshold``.
        n_octave_layers: OpenCV's ``nOctaveLayers``.
        sigma: OpenCV's ``sigma`` of the base Gaussian.
        root_sift: return RootSIFT descriptors (else raw SIFT, L2-normalised).
        position_bias: subtracted from OpenCV's keypoint positions (see the module docstring).
    """

    top_k: int = 4096
    contrast_threshold: float = 0.02
    edge_threshold: float = 10.0
    n_octave_layers: int = 3
    sigma: float = 1.6
    root_sift: bool = True
    position_bias: float = 0.25

    def __post_init__(self) -> None:
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


class SiftEncoder:
    """OpenCV SIFT keypoints with RootSIFT (128-d, unit L2 norm) descriptors."""

    name = "sift"
    descriptor_dim = 128
    rotation_invariant = True  # each keypoint's descriptor is taken in its dominant gradient orientation

    def __init__(self, config: SiftConfig | None = None, device: str | None = None) -> None:
        import cv2

        self.config = config or SiftConfig()
        self.device = "cpu"  # OpenCV SIFT runs on the CPU; ``device`` is accepted for a uniform factory
        cfg = self.config
        self._sift = cv2.SIFT_create(
            nfeatures=cfg.top_k,
            nOctaveLayers=cfg.n_octave_layers,
            contrastThreshold=cfg.contrast_threshold,
            edgeThreshold=cfg.edge_threshold,
            sigma=cfg.sigma,
        )

    def extract(self, image: np.ndarray) -> Features:
        """Keypoints (u, v), RootSIFT descriptors, responses and keypoint sizes of one image."""
        image = check_image(image, MIN_IMAGE_SIDE)
        height, width = image.shape[:2]
        gray = np.ascontiguousarray(to_gray(image))
        keypoints, desc = self._sift.detectAndCompute(gray, None)
        if desc is None or len(keypoints) == 0:
            empty = np.zeros((0, self.descriptor_dim), np.float32)
            return Features(np.zeros((0, 2)), empty, np.zeros(0), (width, height), np.zeros(0))
        uv = np.array([kp.pt for kp in keypoints], dtype=np.float64) - self.config.position_bias
        response = np.array([kp.response for kp in keypoints], dtype=np.float32)
        size = np.array([kp.size for kp in keypoints], dtype=np.float32)
        desc = desc.astype(np.float32)
        if self.config.root_sift:
            desc /= np.maximum(desc.sum(axis=1, keepdims=True), 1e-12)  # SIFT entries are >= 0
            desc = np.sqrt(desc)
        desc /= np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
        order = np.argsort(-response, kind="stable")
        if self.config.top_k:
            order = order[: self.config.top_k]
        return Features(uv[order], desc[order], response[order], (width, height), size[order])
