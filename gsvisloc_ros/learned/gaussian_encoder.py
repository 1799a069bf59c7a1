"""The 3D encoder: a KPConv-style point network over the Gaussians themselves.

Input: up to ``max_gaussians`` Gaussians (opacity >= ``sample_opacity``), each a point (its mean)
carrying 11 features: opacity, DC colour (RGB), rotation (unit quaternion, w >= 0) and log-scale relative to the
finest cell. Positions enter only as offsets between neighbours (translation invariant), in units
of the map's radius, so maps of any unit size look alike.

The hierarchy (:func:`build_hierarchy`, numpy + scipy, computed once per map and deterministic):
three grid-subsampled levels (cell means of the points in each occupied voxel); every point
convolution gathers its ``neighbours`` nearest input points within ``kernel_radius`` cells.
The network (:class:`GaussianEncoder`): a per-Gaussian MLP, then a point convolution per level
(0 -> 0, 0 -> 1, 1 -> 1, 1 -> 2, 2 -> 2); the last level's points are the coarse *regions*. A
decoder gives every sampled Gaussian a unit-norm descriptor in XFeat's space from its own
features and those of its nearest level-1 point and region (the *point descriptors*, matched
against a query's XFeat keypoints like the lifted encoder's landmarks);
with ``d_model``-channel descriptors.

Point convolution (after KPConv, Thomas et al. 2019, rigid kernels): fixed kernel points x_k in the
unit ball; a neighbour at normalised offset d contributes its features with weight
max(0, 1 - |d - x_k| / sigma) to kernel point k; a linear map of the concatenated per-kernel-point
sums (averaged over the valid neighbours) gives the output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import nn

from gsvisloc_ros.gaussians import GaussianMap

from .config import LearnedConfig

#: Per-Gaussian input features: opacity (1), colour (3), quaternion (4), log-scale (3).
INPUT_FEATURES = 11
#: Size of the point descriptors: XFeat's, so that they match a query's XFeat keypoints.
POINT_DIM = 64


def kernel_points() -> np.ndarray:
    """15 fixed kernel points: the centre, 6 along the axes and 8 along the diagonals, at 0.66."""
    axes = np.vstack([np.eye(3), -np.eye(3)])
    diagonals = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float) / np.sqrt(3)
    return np.vstack([np.zeros((1, 3)), 0.66 * axes, 0.66 * diagonals]).astype(np.float32)


@dataclass
class Neighbourhood:
    """Input neighbours of each output point of one point convolution."""

    index: np.ndarray  # [Nout, k] int64 rows of the input level
    offset: np.ndarray  # [Nout, k, 3] float32 (input - output) / radius
    valid: np.ndarray  # [Nout, k] bool, within the radius


@dataclass
class PointHierarchy:
    """The sampled Gaussians of one map, their levels and the neighbourhoods of every convolution.

    Positions are in map units; ``centre`` and ``radius`` normalise them for the network.
    """

    features: np.ndarray  # [N0, 11] float32
    levels: list[np.ndarray]  # [N_l, 3] float32 points of each level, level 0 first (the Gaussians)
    convs: dict[str, Neighbourhood]  # "00", "01", "11", "12", "22"
    centre: np.ndarray  # [3]
    radius: float
    parents: list[np.ndarray]  # [N0] int64 nearest level-1 and nearest level-2 point of each Gaussian

    @property
    def regions(self) -> np.ndarray:
        """Positions [R, 3] of the coarse regions (the last level), map units."""
        return self.levels[-1]


def gaussian_features(gmap: GaussianMap, cell: float) -> np.ndarray:
    """The 11 input features of every Gaussian of ``gmap`` ([N, 11] float32); ``cell``: the
    finest grid size in map units (scales are taken relative to it)."""
    quats = gmap.quats / np.maximum(np.linalg.norm(gmap.quats, axis=1, keepdims=True), 1e-12)
    quats = quats * np.where(quats[:, :1] < 0, -1.0, 1.0)
    log_scale = np.clip(np.log(np.maximum(gmap.scales, 1e-12) / cell), -6.0, 6.0) / 3.0
    return np.hstack([gmap.opacities[:, None] * 2 - 1, gmap.colors * 2 - 1, quats, log_scale]).astype(np.float32)


def grid_subsample(points: np.ndarray, size: float) -> np.ndarray:
    """The mean point of each occupied cell of a grid of ``size`` (deterministic order)."""
    cells = np.floor(points.astype(np.float64) / size).astype(np.int64)
    _, inverse, counts = np.unique(cells, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    sums = np.zeros((len(counts), 3))
    np.add.at(sums, inverse, points.astype(np.float64))
    return (sums / counts[:, None]).astype(np.float32)


def neighbourhood(source: np.ndarray, target: np.ndarray, k: int, radius: float) -> Neighbourhood:
    """The ``k`` nearest ``source`` points of each ``target`` point, those beyond ``radius`` invalid."""
    k = min(k, len(source))
    distance, index = cKDTree(source).query(target, k=k)
    distance, index = distance.reshape(len(target), k), index.reshape(len(target), k)
    offset = (source[index] - target[:, None, :]) / radius
    return Neighbourhood(index.astype(np.int64), offset.astype(np.float32), distance <= radius)


def sample_gaussians(gmap: GaussianMap, config: LearnedConfig) -> GaussianMap:
    """The Gaussians at or above ``sample_opacity``, at most ``max_gaussians`` of them (uniform, seeded)."""
    opaque = gmap.filter_opacity(config.sample_opacity)
    if len(opaque) < 10:
        raise ValueError(f"the map has {len(opaque)} Gaussians with opacity >= {config.sample_opacity}: "
                         "nothing to encode")
    return opaque.subsample(config.max_gaussians, seed=config.seed)


def build_hierarchy(gmap: GaussianMap, config: LearnedConfig, centre: np.ndarray, radius: float) -> PointHierarchy:
    """Sample the Gaussians of ``gmap`` and build the levels and neighbourhoods of the network.

    ``centre``, ``radius``: the map's robust centre and radius (:func:`gsvisloc_ros.scene.analyse_geometry`).
    """
    sampled = sample_gaussians(gmap, config)
    cells = [v * radius for v in config.voxels]
    level0 = sampled.means.astype(np.float32)
    levels = [level0, grid_subsample(level0, cells[1]), grid_subsample(level0, cells[2])]
    k, r = config.neighbours, config.kernel_radius
    convs = {
        "00": neighbourhood(levels[0], levels[0], k, r * cells[0]),
        "01": neighbourhood(levels[0], levels[1], k, r * cells[0]),
        "11": neighbourhood(levels[1], levels[1], k, r * cells[1]),
        "12": neighbourhood(levels[1], levels[2], k, r * cells[1]),
        "22": neighbourhood(levels[2], levels[2], k, r * cells[2]),
    }
    parents = [cKDTree(level).query(level0)[1].astype(np.int64) for level in levels[1:]]
    return PointHierarchy(gaussian_features(sampled, cells[0]), levels, convs, np.asarray(centre, np.float64),
                          float(radius), parents)


class PointConv(nn.Module):
    """One rigid-kernel point convolution (see the module docstring), with LayerNorm and LeakyReLU."""

    def __init__(self, channels_in: int, channels_out: int, sigma: float = 0.5) -> None:
        super().__init__()
        self.register_buffer("kernel", torch.from_numpy(kernel_points()), persistent=False)
        self.sigma = sigma
        self.linear = nn.Linear(len(self.kernel) * channels_in, channels_out)
        self.norm = nn.LayerNorm(channels_out)
        self.residual = channels_in == channels_out

    def forward(self, features: torch.Tensor, nb: dict[str, torch.Tensor], same_level: bool) -> torch.Tensor:
        valid = nb["valid"].to(features.dtype)  # [N, k]
        gathered = features[nb["index"]] * valid[..., None]  # [N, k, C]
        distance = torch.cdist(nb["offset"], self.kernel[None].expand(len(nb["offset"]), -1, -1))  # [N, k, K]
        weight = torch.relu(1.0 - distance / self.sigma)
        summed = torch.einsum("nkq,nkc->nqc", weight, gathered) / valid.sum(1).clamp(min=1.0)[:, None, None]
        out = nn.functional.leaky_relu(self.norm(self.linear(summed.flatten(1))), 0.1)
        if self.residual and same_level:
            out = out + features
        return out


class GaussianEncoder(nn.Module):
    """Gaussians (a :class:`PointHierarchy`) -> region descriptors [R, d_model] and point
    descriptors [N0, 64] (unit norm)."""

    def __init__(self, config: LearnedConfig) -> None:
        super().__init__()
        w0, w1, w2 = config.widths
        self.embed = nn.Sequential(nn.Linear(INPUT_FEATURES, w0), nn.LeakyReLU(0.1), nn.Linear(w0, w0))
        self.conv00 = PointConv(w0, w0)
        self.conv01 = PointConv(w0, w1)
        self.conv11 = PointConv(w1, w1)
        self.conv12 = PointConv(w1, w2)
        self.conv22 = PointConv(w2, w2)
        self.out = nn.Linear(w2, config.d_model)
        self.decoder = nn.Sequential(nn.Linear(w0 + w1 + w2, 2 * POINT_DIM), nn.LeakyReLU(0.1),
                                     nn.Linear(2 * POINT_DIM, POINT_DIM))

    def forward(self, tensors: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(region descriptors, point descriptors) of ``tensors`` (:func:`hierarchy_tensors`)."""
        x0 = self.conv00(self.embed(tensors["features"]), tensors["00"], True)
        x1 = self.conv11(self.conv01(x0, tensors["01"], False), tensors["11"], True)
        x2 = self.conv22(self.conv12(x1, tensors["12"], False), tensors["22"], True)
        points = self.decoder(torch.cat([x0, x1[tensors["parent1"]], x2[tensors["parent2"]]], dim=1))
        return self.out(x2), nn.functional.normalize(points, dim=1)


def hierarchy_tensors(hierarchy: PointHierarchy, device: str | torch.device = "cpu") -> dict:
    """The hierarchy as torch tensors, in the form :meth:`GaussianEncoder.forward` takes."""
    tensors: dict = {"features": torch.from_numpy(hierarchy.features).to(device)}
    for name, nb in hierarchy.convs.items():
        tensors[name] = {"index": torch.from_numpy(nb.index).to(device),
                         "offset": torch.from_numpy(nb.offset).to(device),
                         "valid": torch.from_numpy(nb.valid).to(device)}
    tensors["parent1"] = torch.from_numpy(hierarchy.parents[0]).to(device)
    tensors["parent2"] = torch.from_numpy(hierarchy.parents[1]).to(device)
    regions = (hierarchy.regions - hierarchy.centre) / hierarchy.radius
    tensors["regions"] = torch.from_numpy(regions.astype(np.float32)).to(device)
    return tensors


def rotated_tensors(tensors: dict, rotation: np.ndarray) -> dict:
    """:func:`hierarchy_tensors` of the map turned by ``rotation`` (3x3) about its centre: offsets,
    region positions and the Gaussians' quaternions turn, everything else (neighbours) stays.
    A training augmentation: a map carries no fixed orientation, and the query's pose is unknown."""
    R = torch.as_tensor(rotation, dtype=torch.float32, device=tensors["features"].device)
    out = {name: ({**value, "offset": value["offset"] @ R.T} if isinstance(value, dict) else value)
           for name, value in tensors.items()}
    out["regions"] = tensors["regions"] @ R.T
    w, x, y, z = _matrix_to_wxyz(np.asarray(rotation, np.float64))
    a = tensors["features"][:, 4:8]
    q = torch.stack([
        w * a[:, 0] - x * a[:, 1] - y * a[:, 2] - z * a[:, 3],
        w * a[:, 1] + x * a[:, 0] + y * a[:, 3] - z * a[:, 2],
        w * a[:, 2] - x * a[:, 3] + y * a[:, 0] + z * a[:, 1],
        w * a[:, 3] + x * a[:, 2] - y * a[:, 1] + z * a[:, 0],
    ], dim=1)
    q = q * torch.where(q[:, :1] < 0, -1.0, 1.0)
    out["features"] = torch.cat([tensors["features"][:, :4], q, tensors["features"][:, 8:]], dim=1)
    return out


def _matrix_to_wxyz(R: np.ndarray) -> tuple[float, float, float, float]:
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(R).as_quat()
    return float(w), float(x), float(y), float(z)
