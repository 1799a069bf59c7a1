"""GaussianMap: a set of 3D Gaussians, the map every other stage reads.

All values are *activated*: linear scales, opacities in [0, 1], unit quaternions (w, x, y, z).
Colour is stored as spherical-harmonics coefficients ``sh`` of shape [N, (deg+1)^2, 3] with the
INRIA convention (``colour = 0.5 + SH_C0 * sh[:, 0] + ...``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

SH_C0 = 0.28209479177387814


@dataclass
class GaussianMap:
    means: np.ndarray  # [N, 3] float32
    quats: np.ndarray  # [N, 4] float32, unit, (w, x, y, z)
    scales: np.ndarray  # [N, 3] float32, linear
    opacities: np.ndarray  # [N] float32, in [0, 1]
    sh: np.ndarray  # [N, K, 3] float32, K = (degree + 1) ** 2
    source: str | None = None
    _hash: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.means = np.ascontiguousarray(self.means, dtype=np.float32).reshape(-1, 3)
        n = len(self.means)
        self.quats = np.ascontiguousarray(self.quats, dtype=np.float32).reshape(n, 4)
        self.scales = np.ascontiguousarray(self.scales, dtype=np.float32).reshape(n, 3)
        self.opacities = np.ascontiguousarray(self.opacities, dtype=np.float32).reshape(n)
        self.sh = np.ascontiguousarray(self.sh, dtype=np.float32).reshape(n, -1, 3)
        k = self.sh.shape[1]
        if k not in (1, 4, 9, 16):
            raise ValueError(f"SH coefficients per channel must be 1, 4, 9 or 16, got {k}")

    def __len__(self) -> int:
        return len(self.means)

    @property
    def sh_degree(self) -> int:
        return int(round(np.sqrt(self.sh.shape[1]))) - 1

    @property
    def colors(self) -> np.ndarray:
        """View-independent RGB in [0, 1] from the DC term, [N, 3]."""
        return np.clip(0.5 + SH_C0 * self.sh[:, 0, :], 0.0, 1.0)

    @property
    def content_hash(self) -> str:
        """SHA-256 of the Gaussians' values (not of the file): equal maps hash equally."""
        if self._hash is None:
            h = hashlib.sha256()
            for a in (self.means, self.quats, self.scales, self.opacities, self.sh):
                h.update(str(a.shape).encode())
                h.update(np.ascontiguousarray(a).tobytes())
            self._hash = h.hexdigest()
        return self._hash

    def subset(self, index: np.ndarray) -> GaussianMap:
        """The Gaussians selected by a boolean mask or an index array."""
        return GaussianMap(
            self.means[index], self.quats[index], self.scales[index], self.opacities[index], self.sh[index],
            source=self.source,
        )
