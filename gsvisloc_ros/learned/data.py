"""Training data: renders of maps with ground-truth region-patch matches from the known pose and depth.

For one map (:func:`make_training_map`): its point hierarchy (the regions), then ``count`` views
drawn like the benchmark's queries (:func:`gsvisloc_ros.evaluation.queries.sample_pose`: orbit
and close views, or inside views for rooms) but rolled by up to ``max_roll`` degrees, rendered at
the matcher's working size and, for about half of them, photometrically perturbed (gamma,
brightness/contrast, blur, noise, JPEG). Each view keeps the frozen XFeat map of its image and
its ground truth (:func:`ground_truth`). Everything is deterministic by ``seed``.

Ground truth: a region matches the patch its centre projects into when it is in front of the
camera, inside the image, the render is opaque there and the rendered depth agrees with the
region's depth within one region cell (the region is on the visible surface, not behind it).

Each map also carries its point descriptors' targets (:func:`~.distillation.point_targets`), from
its lifted scene (:func:`gsvisloc_ros.scene.load_or_encode`, default settings, cached).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gsvisloc_ros.camera import PinholeCamera, default_camera, invert_pose, transform_points
from gsvisloc_ros.evaluation.perturbations import perturb
from gsvisloc_ros.evaluation.queries import QueryConfig, sample_pose
from gsvisloc_ros.gaussians import GaussianMap
from gsvisloc_ros.render import render
from gsvisloc_ros.scene import SceneConfig, SceneGeometry, analyse_geometry, load_or_encode

from .config import LearnedConfig
from .distillation import point_targets
from .gaussian_encoder import PointHierarchy, build_hierarchy
from .image_head import STRIDE, image_cells

log = logging.getLogger(__name__)

#: Bump when what training data holds changes (2: cells carry colour; 3: point targets), so old caches are not read.
DATA_VERSION = 3

#: Real captures (world up -y, COLMAP convention) known by name, found in the folder named by the
#: environment variable ``GSVISLOC_SPLATS`` (the package reads no data folder of its own accord).
REAL_MAPS = {"plant": "plant.ply", "tarot": "tarot_cards.ply"}


def load_named_map(name: str, splats: Path | None = None) -> tuple[GaussianMap, tuple[float, float, float]]:
    """A map by name and its world up: ``plant``, ``tarot`` (real captures in ``splats`` or
    ``$GSVISLOC_SPLATS``), ``KIND:SEED`` (procedural: tabletop, room, poster; up +z) or a path to a
    map file (up -y)."""
    import os

    from gsvisloc_ros.io import load_map
    from gsvisloc_ros.synthetic import make_scene

    if name in REAL_MAPS:
        folder = splats or os.environ.get("GSVISLOC_SPLATS")
        if not folder:
            raise ValueError(f"{name!r} names a real capture: set GSVISLOC_SPLATS to the folder holding "
                             f"{REAL_MAPS[name]}, or give the map's path")
        return load_map(Path(folder) / REAL_MAPS[name]), (0.0, -1.0, 0.0)
    if ":" in name:
        kind, seed = name.split(":", 1)
        detail = 1.0
        if "@" in seed:
            seed, detail = seed.split("@")
        return make_scene(kind, int(seed), float(detail)), (0.0, 0.0, 1.0)
    return load_map(name), (0.0, -1.0, 0.0)


def training_camera(config: LearnedConfig) -> PinholeCamera:
    """The package's default camera (640x480, 63 degrees wide) at the matcher's working size."""
    return default_camera().scaled(config.image_side / 640)


@dataclass
class TrainingMap:
    """One map's hierarchy and its training views."""

    name: str
    hierarchy: PointHierarchy
    cells: np.ndarray  # [V, h, w, 79] float16 image cells (frozen XFeat + colour, image_head.image_cells)
    pairs: list[np.ndarray]  # per view [M, 2] int32 (region, patch)
    poses: np.ndarray  # [V, 4, 4] T_world_camera
    targets: np.ndarray  # [N0, 64] float32 point descriptor targets (distillation.point_targets)
    taught: np.ndarray  # [N0] bool, the Gaussians with a target

    def save(self, path: Path) -> None:
        counts = np.array([len(p) for p in self.pairs])
        np.savez(path, cells=self.cells, pairs=np.concatenate(self.pairs) if len(self.pairs) else np.zeros((0, 2)),
                 counts=counts, poses=self.poses, targets=self.targets.astype(np.float16), taught=self.taught)

    @classmethod
    def load(cls, path: Path, name: str, hierarchy: PointHierarchy) -> TrainingMap:
        with np.load(path, allow_pickle=False) as z:
            starts = np.concatenate([[0], np.cumsum(z["counts"])])
            pairs = [z["pairs"][a:b].astype(np.int32) for a, b in zip(starts[:-1], starts[1:], strict=True)]
            return cls(name, hierarchy, z["cells"], pairs, z["poses"], z["targets"].astype(np.float32), z["taught"])


def map_hierarchy(gmap: GaussianMap, config: LearnedConfig) -> tuple[SceneGeometry, PointHierarchy]:
    """The map's geometry (centre, radius) and its point hierarchy, as training builds them."""
    geometry = analyse_geometry(gmap, SceneConfig(min_opacity=config.min_opacity))
    return geometry, build_hierarchy(gmap, config, geometry.centre, geometry.radius)


def ground_truth(regions: np.ndarray, T_world_camera: np.ndarray, camera: PinholeCamera, depth: np.ndarray,
                 alpha: np.ndarray, tolerance: float) -> np.ndarray:
    """[M, 2] int32 (region, patch) pairs of one view (see the module docstring)."""
    uv, z = camera.project(transform_points(invert_pose(T_world_camera), regions))
    h, w = depth.shape
    col = np.rint(uv[:, 0]).astype(np.int64)
    row = np.rint(uv[:, 1]).astype(np.int64)
    inside = (z > 0) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    index = np.flatnonzero(inside)
    c, r = col[index], row[index]
    seen = (alpha[r, c] > 0.5) & (np.abs(depth[r, c] - z[index]) < tolerance)
    index = index[seen]
    pu = np.floor((uv[index, 0] + 0.5) / STRIDE).astype(np.int64)
    pv = np.floor((uv[index, 1] + 0.5) / STRIDE).astype(np.int64)
    columns = -(-w // STRIDE)
    return np.stack([index, pv * columns + pu], axis=1).astype(np.int32)


def sample_views(gmap: GaussianMap, geometry: SceneGeometry, up, count: int, seed: int, camera: PinholeCamera,
                 max_roll: float = 45.0, min_coverage: float = 0.3):
    """``count`` (T_world_camera, render, index) of views with enough of the map in them."""
    up = np.asarray(up, float) / np.linalg.norm(up)
    qconfig = replace(QueryConfig(), orbit_roll=max_roll, close_roll=max_roll)
    near = 0.01 * geometry.radius
    for i in range(count):
        rng = np.random.default_rng(np.random.SeedSequence((seed, 7, i)))
        category = "inside" if geometry.layout == "inside_out" else ("close" if i % 3 == 2 else "orbit")
        for _ in range(30):
            T, _ = sample_pose(category, i, rng, geometry, up, qconfig)
            result = render(gmap, camera, invert_pose(T), near=near)
            if np.mean(result.alpha > 0.5) >= min_coverage:
                break
        yield T, result, rng


def make_training_map(name: str, gmap: GaussianMap, up, encoder, config: LearnedConfig, count: int, seed: int = 0,
                      perturbed: float = 0.5, progress: bool = True, lifted_cache: Path | None = None,
                      teacher: SceneConfig | None = None) -> TrainingMap:
    """The hierarchy, ``count`` training views and point targets of one map (see the module
    docstring); ``teacher``: the settings of the lifted scene that teaches the point descriptors
    (default: the localizer's defaults)."""
    geometry, hierarchy = map_hierarchy(gmap, config)
    lifted = load_or_encode(gmap, encoder, teacher or SceneConfig(), cache_dir=lifted_cache, progress=progress)
    targets, taught = point_targets(hierarchy.levels[0], lifted.points, lifted.descriptors,
                                    config.voxels[0] * geometry.radius)
    camera = training_camera(config)
    tolerance = config.voxels[2] * geometry.radius
    cells, pairs, poses = [], [], []
    views = sample_views(gmap, geometry, up, count, seed, camera)
    for T, result, rng in tqdm(views, total=count, desc=f"views of {name}", unit="view", disable=not progress):
        image = result.rgb_u8
        if rng.random() < perturbed:
            image, _ = perturb(image, rng)
        cells.append(image_cells(encoder, image).astype(np.float16))
        pairs.append(ground_truth(hierarchy.regions, T, camera, result.depth, result.alpha, tolerance))
        poses.append(T)
    log.info("%s: %d regions, %d views, %.0f ground-truth matches per view, %d of %d Gaussians taught", name,
             len(hierarchy.regions), count, np.mean([len(p) for p in pairs]), taught.sum(), len(taught))
    return TrainingMap(name, hierarchy, np.stack(cells), pairs, np.asarray(poses), targets, taught)


def load_or_make_training_map(name: str, directory: Path, encoder, config: LearnedConfig, count: int, seed: int,
                              progress: bool = True, teacher: SceneConfig | None = None) -> TrainingMap:
    """:func:`make_training_map`, cached in ``directory`` (the lifted scenes in ``directory/lifted``;
    the hierarchy is rebuilt: it is deterministic)."""
    gmap, up = load_named_map(name)
    teacher = teacher or SceneConfig()
    key = f"v{DATA_VERSION}-{config.hierarchy_key()}-{teacher.key('xfeat', 'cpu', 'cpu')[:8]}"
    path = Path(directory) / f"{name.replace(':', '_').replace('/', '_')}-{count}-{seed}-{key}.npz"
    if path.is_file():
        return TrainingMap.load(path, name, map_hierarchy(gmap, config)[1])
    data = make_training_map(name, gmap, up, encoder, config, count, seed, progress=progress,
                             lifted_cache=Path(directory) / "lifted", teacher=teacher)
    path.parent.mkdir(parents=True, exist_ok=True)
    data.save(path)
    return data
