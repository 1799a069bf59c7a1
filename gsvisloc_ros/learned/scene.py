"""The learned scene encoding of a map: coarse regions with descriptors, from the Gaussians alone.

No rendering (but for the layout probe of :func:`~gsvisloc_ros.scene.analyse_geometry`, six 32x32
renders): sample the Gaussians, build the point hierarchy, run the 3D encoder once. It gives the
sampled Gaussians' point descriptors (matched against a query's XFeat keypoints) and the coarse
regions' descriptors (matched against its patches by the attention and dual softmax). The
result is cached like the lifted scene, keyed by the map's content hash, the weights' SHA-256 and
the settings.

:class:`LearnedScene` offers what the localizer reads of a scene outside the coarse stage
(``geometry``, ``from_cache``, ``stats``, ``len``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gsvisloc_ros.gaussians import GaussianMap
from gsvisloc_ros.render import choose_backend
from gsvisloc_ros.scene import SceneConfig, SceneGeometry, analyse_geometry, default_cache_dir

from .gaussian_encoder import build_hierarchy, hierarchy_tensors
from .model import LearnedMatcher, weights_hash

log = logging.getLogger(__name__)

#: Bump when the learned encoding changes in a way that invalidates caches.
LEARNED_ENCODING_VERSION = 2


@dataclass
class LearnedScene:
    """The sampled Gaussians of one map with their point descriptors, and its regions with their
    (pre-attention) descriptors."""

    points: np.ndarray  # [N, 3] float32 sampled Gaussians' positions, map frame
    descriptors: np.ndarray  # [N, 64] float32 unit-norm point descriptors
    regions: np.ndarray  # [R, 3] float32 region positions, map frame
    region_descriptors: np.ndarray  # [R, d] float32 3D-encoder output
    geometry: SceneGeometry
    map_hash: str
    encoder: str
    config_key: str
    stats: dict = field(default_factory=dict)
    from_cache: bool = field(default=False, compare=False)

    def __len__(self) -> int:
        return len(self.points)

    def summary(self) -> str:
        """What the encoding holds, in a few words (for reports)."""
        return f"learned: {len(self.points)} points, {len(self.regions)} regions"

    def normalised_points(self) -> np.ndarray:
        """Region positions relative to the map's centre, in map radii (what the network sees)."""
        return ((self.regions - self.geometry.centre) / self.geometry.radius).astype(np.float32)

    def save(self, path: str | os.PathLike) -> None:
        meta = {"geometry": self.geometry.to_dict(), "map_hash": self.map_hash, "encoder": self.encoder,
                "config_key": self.config_key, "stats": self.stats, "version": LEARNED_ENCODING_VERSION}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, meta=np.array(json.dumps(meta)), points=self.points, descriptors=self.descriptors,
                 regions=self.regions, region_descriptors=self.region_descriptors)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LearnedScene:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("version") != LEARNED_ENCODING_VERSION:
                raise ValueError(f"{path}: learned encoding version {meta.get('version')}, "
                                 f"need {LEARNED_ENCODING_VERSION}")
            arrays = [z[k] for k in ("points", "descriptors", "regions", "region_descriptors")]
        return cls(*arrays, SceneGeometry.from_dict(meta["geometry"]), meta["map_hash"], meta["encoder"],
                   meta["config_key"], meta.get("stats", {}))


def learned_key(model: LearnedMatcher, weights_sha256: str, scene_config: SceneConfig, backend: str) -> str:
    """A short hash of everything that changes the learned encoding: the weights, the network's
    settings, the geometry settings, the concrete render backend of the layout probe and the
    device kind the network runs on."""
    backend = choose_backend(backend)[0]
    device = next(model.parameters()).device.type
    text = json.dumps({"v": LEARNED_ENCODING_VERSION, "weights": weights_sha256, "model": model.config.to_dict(),
                       "device": device,
                       "geometry": {"min_opacity": scene_config.min_opacity, "layout": scene_config.layout,
                                    "image_size": list(scene_config.image_size),
                                    "focal_factor": scene_config.focal_factor}, "backend": backend}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_learned(gmap: GaussianMap, model: LearnedMatcher, key: str, scene_config: SceneConfig | None = None,
                   backend: str = "auto") -> LearnedScene:
    """Encode ``gmap`` with the 3D encoder of ``model`` (no cache)."""
    scene_config = scene_config or SceneConfig()
    backend = choose_backend(backend)[0]
    start = time.perf_counter()
    geometry = analyse_geometry(gmap, scene_config, backend)
    hierarchy = build_hierarchy(gmap, model.config, geometry.centre, geometry.radius)
    device = next(model.parameters()).device
    with torch.inference_mode():
        regions, points = model.encode_scene(hierarchy_tensors(hierarchy, device))
    seconds = time.perf_counter() - start
    stats = {"gaussians_encoded": len(hierarchy.levels[0]), "regions": len(hierarchy.regions),
             "seconds": round(seconds, 2)}
    log.info("learned encoding: %d Gaussians -> %d regions in %.2f s", len(hierarchy.levels[0]),
             len(hierarchy.regions), seconds)
    return LearnedScene(hierarchy.levels[0].astype(np.float32), points.float().cpu().numpy(),
                        hierarchy.regions.astype(np.float32), regions.float().cpu().numpy(), geometry,
                        gmap.content_hash, "learned", key, stats)


def learned_cache_path(gmap: GaussianMap, key: str, cache_dir: Path | None = None) -> Path:
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return directory / f"learned-{gmap.content_hash[:20]}-{key}.npz"


def load_or_encode_learned(gmap: GaussianMap, model: LearnedMatcher, weights_path: str | Path,
                           scene_config: SceneConfig | None = None, cache_dir: Path | None = None,
                           backend: str = "cpu") -> LearnedScene:
    """The learned encoding of ``gmap`` from the cache when valid, else encoded and cached."""
    scene_config = scene_config or SceneConfig()
    key = learned_key(model, weights_hash(weights_path), scene_config, backend)
    path = learned_cache_path(gmap, key, cache_dir)
    if path.is_file():
        try:
            scene = LearnedScene.load(path)
            if scene.map_hash == gmap.content_hash and scene.config_key == key:
                scene.from_cache = True
                return scene
        except Exception as exc:  # a corrupt cache must not stop localization
            log.warning("cannot read cache %s (%s): re-encoding", path, exc)
    scene = encode_learned(gmap, model, key, scene_config, backend)
    try:
        scene.save(path)
    except OSError as exc:
        log.warning("cannot write cache %s: %s", path, exc)
    return scene
