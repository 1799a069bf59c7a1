"""GaussianMap: a set of 3D Gaussians, the map every other stage reads.

All values are *activated*: linear scales, opacities in [0, 1], unit quaternions (w, x, y, z).
Colour is stored as spherical-harmonics coefficients ``sh`` of shape [N, (deg+1)^2, 3] with the
INRIA convention (``colour = 0.5 + SH_C0 * sh[:, 0] + ...``, evaluated along the direction from
the camera to the Gaussian).

Operations return new maps and never modify the map they are called on:

* selection: :meth:`GaussianMap.subset`, :meth:`~GaussianMap.filter_opacity`,
  :meth:`~GaussianMap.subsample`, :meth:`~GaussianMap.voxel_downsample`;
* hygiene: :meth:`~GaussianMap.validate`, :meth:`~GaussianMap.clean`;
* extent: :meth:`~GaussianMap.bounds`, :meth:`~GaussianMap.robust_bounds`,
  :meth:`~GaussianMap.robust_centre`, :meth:`~GaussianMap.robust_extent`,
  :meth:`~GaussianMap.robust_radius`;
* geometry: :meth:`~GaussianMap.covariances`, :meth:`~GaussianMap.transform` (rigid or
  similarity, with exact rotation of the SH coefficients of every degree).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

logger = logging.getLogger(__name__)

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)
MAX_SH_DEGREE = 3


# --------------------------------------------------------------------------------------------
# Spherical harmonics and quaternions (w, x, y, z)
# --------------------------------------------------------------------------------------------


def sh_basis(dirs: np.ndarray, degree: int) -> np.ndarray:
    """Real SH basis of the INRIA rasterizer at unit directions ``dirs`` [N,3]: [N, (degree+1)^2]."""
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"SH degree must be 0..{MAX_SH_DEGREE}, got {degree}")
    d = np.asarray(dirs, dtype=np.float64).reshape(-1, 3)
    x, y, z = d[:, 0], d[:, 1], d[:, 2]
    columns = [np.full_like(x, SH_C0)]
    if degree >= 1:
        columns += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        columns += [
            SH_C2[0] * x * y,
            SH_C2[1] * y * z,
            SH_C2[2] * (2.0 * zz - xx - yy),
            SH_C2[3] * x * z,
            SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        columns += [
            SH_C3[0] * y * (3.0 * xx - yy),
            SH_C3[1] * x * y * z,
            SH_C3[2] * y * (4.0 * zz - xx - yy),
            SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            SH_C3[4] * x * (4.0 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3.0 * yy),
        ]
    return np.stack(columns, axis=1)


def _fibonacci_sphere(count: int) -> np.ndarray:
    """``count`` well-spread unit vectors [count, 3]."""
    i = np.arange(count) + 0.5
    z = 1.0 - 2.0 * i / count
    r = np.sqrt(1.0 - z * z)
    phi = np.pi * (1.0 + np.sqrt(5.0)) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def sh_rotation_matrix(R: np.ndarray, degree: int) -> np.ndarray:
    """Block-diagonal [K, K] matrix M with ``sh_rotated = M @ sh`` for a world rotation ``R``.

    The rotated coefficients describe the rotated colour function, f'(d) = f(R^T d). Each degree
    is a (2l+1)-dimensional space closed under rotation, so fitting the block by least squares on
    well-spread sample directions is exact up to rounding (and uses the very basis of
    :func:`sh_basis`, so no sign convention can go wrong).
    """
    R = np.asarray(R, dtype=np.float64).reshape(3, 3)
    k = (degree + 1) ** 2
    dirs = _fibonacci_sphere(64)
    A = sh_basis(dirs, degree)
    B = sh_basis(dirs @ R, degree)  # rows: basis at R^T d
    M = np.zeros((k, k))
    M[0, 0] = 1.0
    for level in range(1, degree + 1):
        idx = slice(level * level, (level + 1) ** 2)
        M[idx, idx] = np.linalg.lstsq(A[:, idx], B[:, idx], rcond=None)[0]
    return M


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product ``a * b`` of (w, x, y, z) quaternions, broadcasting over leading axes."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


def quats_to_matrices(quats: np.ndarray) -> np.ndarray:
    """Rotation matrices [N,3,3] of (w, x, y, z) quaternions [N,4] (normalised here)."""
    q = np.asarray(quats, dtype=np.float64).reshape(-1, 4)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], axis=1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], axis=1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=1),
        ],
        axis=1,
    )


def matrices_to_quats(R: np.ndarray) -> np.ndarray:
    """Unit (w, x, y, z) quaternions [N,4] with w >= 0 of rotation matrices [N,3,3]."""
    q_xyzw = Rotation.from_matrix(np.asarray(R, dtype=np.float64).reshape(-1, 3, 3)).as_quat()
    q = np.concatenate([q_xyzw[:, 3:], q_xyzw[:, :3]], axis=1)
    return np.where(q[:, :1] < 0, -q, q)


def decompose_similarity(T: np.ndarray, tol: float = 1e-5) -> tuple[float, np.ndarray, np.ndarray]:
    """(s, R, t) of a 4x4 similarity ``[[s R, t], [0, 1]]`` (s > 0, R a proper rotation)."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise ValueError(f"a transform must be a finite 4x4 matrix, got shape {T.shape}")
    if not np.allclose(T[3], [0.0, 0.0, 0.0, 1.0], atol=tol):
        raise ValueError(f"the last row of a similarity transform must be [0, 0, 0, 1], got {T[3].tolist()}")
    A = T[:3, :3]
    det = float(np.linalg.det(A))
    if det <= 0.0:
        raise ValueError(f"transform must preserve handedness (det > 0), got det = {det:.6g}")
    s = det ** (1.0 / 3.0)
    R = A / s
    if not np.allclose(R.T @ R, np.eye(3), atol=tol):
        raise ValueError("transform is not a similarity (it shears or scales axes differently)")
    return s, R, T[:3, 3].copy()


def _group_sum(groups: np.ndarray, values: np.ndarray, count: int) -> np.ndarray:
    """Sum the rows of ``values`` [N, ...] per group id in ``groups`` [N]: [count, ...]."""
    flat = values.reshape(len(values), -1)
    out = np.stack([np.bincount(groups, weights=flat[:, j], minlength=count) for j in range(flat.shape[1])], axis=1)
    return out.reshape((count,) + values.shape[1:])


# --------------------------------------------------------------------------------------------
# The map
# --------------------------------------------------------------------------------------------


def _as_float32(name: str, value, shape: tuple[int, ...]) -> np.ndarray:
    """``value`` as a contiguous float32 array of ``shape`` (-1 allowed once), or a clear ValueError."""
    array = np.asarray(value, dtype=np.float32)
    try:
        return np.ascontiguousarray(array.reshape(shape))
    except ValueError:
        wanted = tuple("K" if s == -1 else s for s in shape)
        raise ValueError(f"{name} must have shape {wanted}, got {array.shape}") from None


@dataclass
class GaussianMap:
    """N 3D Gaussians with activated parameters (see the module docstring)."""

    means: np.ndarray  # [N, 3] float32
    quats: np.ndarray  # [N, 4] float32, unit, (w, x, y, z)
    scales: np.ndarray  # [N, 3] float32, linear
    opacities: np.ndarray  # [N] float32, in [0, 1]
    sh: np.ndarray  # [N, K, 3] float32, K = (degree + 1) ** 2
    source: str | None = None
    _hash: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.means = _as_float32("means", self.means, (-1, 3))
        n = len(self.means)
        self.quats = _as_float32("quats", self.quats, (n, 4))
        self.scales = _as_float32("scales", self.scales, (n, 3))
        self.opacities = _as_float32("opacities", self.opacities, (n,))
        sh = np.asarray(self.sh, dtype=np.float32)
        self.sh = _as_float32("sh", sh, sh.shape if sh.ndim == 3 and len(sh) == n else (n, -1, 3))
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
        """SHA-256 of the Gaussians' values (not of the file): equal maps hash equally.

        Cached on first use: treat a map as immutable once its hash has been asked for.
        """
        if self._hash is None:
            h = hashlib.sha256()
            for a in (self.means, self.quats, self.scales, self.opacities, self.sh):
                h.update(str(a.shape).encode())
                h.update(np.ascontiguousarray(a).tobytes())
            self._hash = h.hexdigest()
        return self._hash

    def _replace(self, **arrays: np.ndarray) -> GaussianMap:
        """A new map with some arrays replaced and the same source."""
        values = {name: getattr(self, name) for name in ("means", "quats", "scales", "opacities", "sh")}
        values.update(arrays)
        return GaussianMap(**values, source=self.source)

    # ---------------------------------------------------------------- selection

    def subset(self, index: np.ndarray) -> GaussianMap:
        """The Gaussians selected by a boolean mask or an index array."""
        return GaussianMap(
            self.means[index], self.quats[index], self.scales[index], self.opacities[index], self.sh[index],
            source=self.source,
        )

    def filter_opacity(self, min_opacity: float) -> GaussianMap:
        """The Gaussians with opacity >= ``min_opacity``."""
        return self.subset(self.opacities >= min_opacity)

    def subsample(self, max_count: int, seed: int = 0) -> GaussianMap:
        """At most ``max_count`` Gaussians drawn uniformly without replacement, in their original order.

        The same ``seed`` always picks the same Gaussians; a map with at most ``max_count``
        Gaussians is returned whole.
        """
        if max_count < 0:
            raise ValueError(f"max_count must be >= 0, got {max_count}")
        if len(self) <= max_count:
            return self.subset(slice(None))
        rng = np.random.default_rng(seed)
        return self.subset(np.sort(rng.choice(len(self), size=max_count, replace=False)))

    def voxel_ids(self, voxel_size: float) -> tuple[np.ndarray, int]:
        """(voxel id of each Gaussian [N], number of occupied voxels) on a grid anchored at the origin."""
        if not (np.isfinite(voxel_size) and voxel_size > 0):
            raise ValueError(f"voxel_size must be positive, got {voxel_size}")
        cells = np.floor(self.means.astype(np.float64) / voxel_size).astype(np.int64)
        _, inverse = np.unique(cells, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        return inverse, int(inverse.max()) + 1 if len(inverse) else 0

    def voxel_downsample(self, voxel_size: float, merge: bool = False) -> GaussianMap:
        """One Gaussian per occupied voxel of a grid with cell ``voxel_size`` anchored at the origin.

        ``merge=False`` keeps a representative: the most opaque Gaussian of each voxel (the
        earliest on ties), unchanged, in the original order. ``merge=True`` replaces each voxel's
        Gaussians by one moment-matched Gaussian: opacity-weighted mean, covariance and SH;
        opacity of the most opaque member. Output is in voxel order.
        """
        groups, count = self.voxel_ids(voxel_size)
        if count == 0:
            return self.subset(slice(None))
        order = np.lexsort((-self.opacities, groups))
        first = np.ones(len(order), dtype=bool)
        first[1:] = groups[order][1:] != groups[order][:-1]
        representatives = order[first]  # one per voxel, in voxel-id order
        if not merge:
            return self.subset(np.sort(representatives))
        return self._merge_groups(groups, count, representatives)

    def _merge_groups(self, groups: np.ndarray, count: int, representatives: np.ndarray) -> GaussianMap:
        """Moment-matched Gaussian per group (see :meth:`voxel_downsample`)."""
        w = np.maximum(self.opacities.astype(np.float64), 1e-6)
        total = np.bincount(groups, weights=w, minlength=count)
        means = _group_sum(groups, w[:, None] * self.means, count) / total[:, None]
        offsets = self.means - means[groups]
        second = self.covariances() + offsets[:, :, None] * offsets[:, None, :]
        cov = _group_sum(groups, w[:, None, None] * second, count) / total[:, None, None]
        eigenvalues, eigenvectors = np.linalg.eigh(0.5 * (cov + cov.transpose(0, 2, 1)))
        flip = np.linalg.det(eigenvectors) < 0
        eigenvectors[flip, :, 0] *= -1.0
        sh = _group_sum(groups, w[:, None, None] * self.sh, count) / total[:, None, None]
        return self._replace(
            means=means,
            quats=matrices_to_quats(eigenvectors),
            scales=np.sqrt(np.clip(eigenvalues, 0.0, None)),
            opacities=self.opacities[representatives],
            sh=sh,
        )

    # ---------------------------------------------------------------- hygiene

    def _problems(self) -> dict[str, np.ndarray]:
        """Boolean masks [N] of the Gaussians with each kind of problem."""
        finite = (
            np.isfinite(self.means).all(1)
            & np.isfinite(self.quats).all(1)
            & np.isfinite(self.scales).all(1)
            & np.isfinite(self.opacities)
            & np.isfinite(self.sh).all((1, 2))
        )
        with np.errstate(invalid="ignore"):
            zero_quat = finite & (np.linalg.norm(self.quats.astype(np.float64), axis=1) < 1e-12)
            negative_scale = finite & (self.scales < 0).any(1)
            bad_opacity = finite & ((self.opacities < 0) | (self.opacities > 1))
        return {
            "non-finite value": ~finite,
            "zero quaternion": zero_quat,
            "negative scale": negative_scale,
            "opacity outside [0, 1]": bad_opacity,
        }

    def validate(self) -> dict[str, int]:
        """How many Gaussians have each kind of problem; an empty dict means all are usable.

        Problems: a NaN or infinite value anywhere, a zero quaternion, a negative scale, an
        opacity outside [0, 1].
        """
        return {name: int(mask.sum()) for name, mask in self._problems().items() if mask.any()}

    def clean(self) -> GaussianMap:
        """The usable Gaussians (see :meth:`validate`) with unit quaternions; logs what was dropped."""
        problems = self._problems()
        bad = np.zeros(len(self), dtype=bool)
        for mask in problems.values():
            bad |= mask
        if bad.any():
            details = ", ".join(f"{int(m.sum())} {name}" for name, m in problems.items() if m.any())
            logger.warning("%s: dropped %d of %d Gaussians (%s)", self.source or "map", bad.sum(), len(self), details)
        kept = self.subset(~bad) if bad.any() else self
        q = kept.quats.astype(np.float64)
        return kept._replace(quats=q / np.linalg.norm(q, axis=1, keepdims=True))

    # ---------------------------------------------------------------- extent

    def _check_not_empty(self) -> None:
        if len(self) == 0:
            raise ValueError("the map has no Gaussians")

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(min, max) corners [3] of the axis-aligned box holding every mean."""
        self._check_not_empty()
        return self.means.min(0).astype(np.float64), self.means.max(0).astype(np.float64)

    def robust_bounds(self, percentile: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) per-axis percentiles ``percentile`` and ``100 - percentile`` of the means.

        Floaters (a few stray Gaussians far from the scene) move these only slightly.
        """
        self._check_not_empty()
        if not 0.0 <= percentile < 50.0:
            raise ValueError(f"percentile must be in [0, 50), got {percentile}")
        low, high = np.percentile(self.means.astype(np.float64), [percentile, 100.0 - percentile], axis=0)
        return low, high

    def robust_centre(self) -> np.ndarray:
        """Per-axis median of the means [3]: unmoved by up to half the Gaussians being outliers."""
        self._check_not_empty()
        return np.median(self.means.astype(np.float64), axis=0)

    def robust_extent(self, percentile: float = 1.0) -> np.ndarray:
        """Per-axis size [3] of :meth:`robust_bounds`."""
        low, high = self.robust_bounds(percentile)
        return high - low

    def robust_radius(self, percentile: float = 95.0) -> float:
        """Radius around :meth:`robust_centre` holding ``percentile`` % of the means."""
        distances = np.linalg.norm(self.means.astype(np.float64) - self.robust_centre(), axis=1)
        return float(np.percentile(distances, percentile))

    # ---------------------------------------------------------------- geometry

    def rotation_matrices(self) -> np.ndarray:
        """Each Gaussian's rotation [N,3,3] (float64)."""
        return quats_to_matrices(self.quats)

    def covariances(self) -> np.ndarray:
        """Each Gaussian's covariance R diag(s^2) R^T [N,3,3] (float64)."""
        R = self.rotation_matrices()
        RS = R * self.scales.astype(np.float64)[:, None, :]
        return RS @ RS.transpose(0, 2, 1)

    def view_colors(self, dirs: np.ndarray, clip: bool = True) -> np.ndarray:
        """RGB [N,3] seen along unit directions ``dirs`` ([N,3] or [3]) from the camera to each Gaussian."""
        d = np.broadcast_to(np.asarray(dirs, dtype=np.float64), (len(self), 3))
        rgb = 0.5 + np.einsum("nk,nkc->nc", sh_basis(d, self.sh_degree), self.sh.astype(np.float64))
        return np.clip(rgb, 0.0, 1.0) if clip else rgb

    def transform(self, T: np.ndarray) -> GaussianMap:
        """The map moved by a 4x4 rigid or similarity transform ``x -> s R x + t``.

        Means are moved, quaternions composed with R, scales multiplied by s and SH coefficients
        of every degree rotated exactly (:func:`sh_rotation_matrix`), so the map renders the same
        from a camera moved by the same transform. Reflections are refused.
        """
        s, R, t = decompose_similarity(T)
        means = s * (self.means.astype(np.float64) @ R.T) + t
        q_R = matrices_to_quats(R[None])[0]
        quats = quat_multiply(q_R, self.quats.astype(np.float64))
        quats /= np.linalg.norm(quats, axis=1, keepdims=True)
        sh = self.sh
        if self.sh_degree > 0:
            sh = np.einsum("ij,njc->nic", sh_rotation_matrix(R, self.sh_degree), self.sh.astype(np.float64))
        return self._replace(means=means, quats=quats, scales=self.scales.astype(np.float64) * s, sh=sh)
