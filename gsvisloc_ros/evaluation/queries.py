"""Query sets made from a map alone: rendered views away from the encoding's viewpoints, and negatives.

A benchmark needs images whose pose is known exactly. Without captured photos, the map itself
provides them: :func:`generate_queries` renders it from camera poses that are *not* the virtual
viewpoints the scene encoding was built from (:func:`gsvisloc_ros.scene.virtual_views`), so that
localizing them exercises retrieval, matching across viewpoint changes and refinement, and adds
photometric changes to about half of them so that they are not pixel-identical to what the map renders.

Positives (object layout: the map is seen from around it; ``up`` is the world's up direction):

* ``orbit``: around the map's robust centre at 0.8-1.2x the typical viewing distance, 5-45 degrees
  above the horizon, looking at the centre with some jitter, rolled by up to 5 degrees.
* ``close``: 0.5-0.8x the typical distance, -5 to 60 degrees elevation, looking at a point anywhere
  in the inner half of the map, then turned off it (yaw / pitch) and rolled by up to 20 degrees:
  closer, off-centre and partial views. Every third positive is one.
* ``inside`` (inside-out layout, rooms): from near the centre looking out, rolled by up to 20 degrees.

A candidate pose is rejected when its render shows mostly nothing (alpha coverage), has something
right in front of the lens, carries too little texture (OpenCV SIFT keypoints), or when it is
within both a distance and an angle of a virtual viewpoint (the localizer would see its own
encoding images again).

Negatives (images that do not show the map): renders of a procedural scene of another kind
(:func:`gsvisloc_ros.synthetic.make_scene`), cropped and upsampled procedural textures, and noise.

Everything is deterministic by ``seed``; query ``i`` depends only on (seed, i), so a larger set
starts with the queries of a smaller one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from gsvisloc_ros.camera import PinholeCamera, default_camera, invert_pose, look_at, turned
from gsvisloc_ros.evaluation.negatives import negative_image
from gsvisloc_ros.evaluation.perturbations import perturb
from gsvisloc_ros.gaussians import GaussianMap
from gsvisloc_ros.render import render
from gsvisloc_ros.scene import SceneConfig, SceneGeometry, analyse_geometry, virtual_views

log = logging.getLogger(__name__)

#: World up of maps reconstructed by COLMAP / INRIA 3DGS (the shared captures); synthetic scenes use +z.
DEFAULT_UP = (0.0, -1.0, 0.0)
#: Seed-sequence streams, so that positives, negatives and the other scene never share random numbers.
_POSITIVE, _NEGATIVE, _OTHER_SCENE = 1, 2, 3


@dataclass(frozen=True)
class QueryConfig:
    """How query poses are sampled and which candidates are kept.

    Distances are multiples of the map's typical viewing distance
    (:attr:`~gsvisloc_ros.scene.SceneGeometry.typical_distance`), angles are in degrees.

    Attributes:
        orbit_distance, close_distance: (min, max) camera-to-centre distance of orbit / close views.
        orbit_elevation, close_elevation: (min, max) elevation above the horizon (along ``up``).
        orbit_look_jitter: standard deviation of the look-at point around the centre (x radius).
        close_look_radius: close views look at a point in this ball around the centre (x outer radius).
        close_turn: (yaw, pitch) maximum turn of close views off their look-at point.
        orbit_roll, close_roll: maximum roll about the optical axis.
        close_every: every ``close_every``-th positive is a close view (0: none).
        min_coverage: (orbit, close) smallest fraction of pixels with alpha > 0.5.
        near_distance: depth (x typical distance) closer than which a pixel counts as "right in front".
        max_near_fraction: largest fraction of covered pixels that may be that close.
        min_keypoints: smallest number of OpenCV SIFT keypoints on the clean render.
        view_separation: (distance, angle): a candidate within both of a virtual viewpoint is rejected.
        perturbed_fraction: probability that a positive gets photometric perturbations.
        max_attempts: candidates tried per query before giving up on it (logged).
    """

    orbit_distance: tuple[float, float] = (0.8, 1.2)
    close_distance: tuple[float, float] = (0.5, 0.8)
    orbit_elevation: tuple[float, float] = (5.0, 45.0)
    close_elevation: tuple[float, float] = (-5.0, 60.0)
    orbit_look_jitter: float = 0.1
    close_look_radius: float = 0.5
    close_turn: tuple[float, float] = (12.0, 10.0)
    orbit_roll: float = 5.0
    close_roll: float = 20.0
    close_every: int = 3
    min_coverage: tuple[float, float] = (0.4, 0.3)
    near_distance: float = 0.1
    max_near_fraction: float = 0.02
    min_keypoints: int = 60
    view_separation: tuple[float, float] = (0.1, 10.0)
    perturbed_fraction: float = 0.5
    max_attempts: int = 60

    def __post_init__(self) -> None:
        for name in ("orbit_distance", "close_distance"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be 0 < min <= max, got {(lo, hi)}")
        if not 0 <= self.perturbed_fraction <= 1:
            raise ValueError(f"perturbed_fraction must be in [0, 1], got {self.perturbed_fraction}")
        if self.max_attempts < 1 or self.close_every < 0:
            raise ValueError("max_attempts must be >= 1 and close_every >= 0")


@dataclass
class Query:
    """One query image and what is known about it.

    ``T_world_camera`` and ``scene_scale`` (camera-to-scene-centre distance) are ``None`` for
    negatives. ``tags``: the category, then the perturbations applied (or ``"clean"``), then for
    negatives their source. ``info``: how the view was chosen (coverage, keypoints, the nearest
    virtual viewpoint, ...), JSON-ready.
    """

    name: str
    image: np.ndarray
    camera: PinholeCamera
    T_world_camera: np.ndarray | None
    scene_scale: float | None
    category: str  # "orbit", "close", "inside" or "negative"
    tags: tuple[str, ...] = ()
    perturbations: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    @property
    def positive(self) -> bool:
        """Whether the image shows the map (it has a ground-truth pose)."""
        return self.T_world_camera is not None

    def to_dict(self) -> dict:
        """JSON-ready description (without the image)."""
        c = self.camera
        return {
            "name": self.name,
            "category": self.category,
            "tags": list(self.tags),
            "camera": {"fx": c.fx, "fy": c.fy, "cx": c.cx, "cy": c.cy, "width": c.width, "height": c.height},
            "T_world_camera": None if self.T_world_camera is None else np.asarray(self.T_world_camera).tolist(),
            "scene_scale": self.scene_scale,
            "perturbations": self.perturbations,
            "info": self.info,
        }


# ------------------------------------------------------------------------ negatives and positives


def make_negative(index: int, seed: int, camera: PinholeCamera, other_scene: GaussianMap | None = None) -> Query:
    """Negative ``index``: a view of ``other_scene`` (every 5th starting at 0 and 2), a procedural
    texture (1 and 3) or noise (4), cycling with period 5."""
    rng = np.random.default_rng(np.random.SeedSequence((seed, _NEGATIVE, index)))
    kind = ("scene", "texture", "scene", "texture", "noise")[index % 5]
    if kind == "scene" and other_scene is None:
        kind = "texture"
    image = negative_image(kind, rng, camera, other_scene)
    return Query(f"n{index:03d}", image, camera, None, None, "negative", ("negative", kind), [], {"source": kind})


# ------------------------------------------------------------------------ positives


def _horizontal_basis(up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 0.0, 1.0])
    e1 = np.cross(up, a)
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(up, e1)


def sample_pose(
    category: str, index: int, rng: np.random.Generator, geometry: SceneGeometry, up: np.ndarray, config: QueryConfig
) -> tuple[np.ndarray, dict]:
    """A candidate T_world_camera of the given category and how it was drawn (JSON-ready)."""
    centre, typical = geometry.centre, geometry.typical_distance
    if category == "inside":
        eye = centre + 0.4 * geometry.radius * rng.uniform(-1, 1, 3)
        e1, e2 = _horizontal_basis(up)
        az, el = rng.uniform(0, 2 * np.pi), math.radians(rng.uniform(-20, 30))
        d = math.cos(el) * (math.cos(az) * e1 + math.sin(az) * e2) + math.sin(el) * up
        roll = rng.uniform(-config.close_roll, config.close_roll)
        return turned(look_at(eye, eye + d, up), roll), {"roll_deg": roll}
    close = category == "close"
    e1, e2 = _horizontal_basis(up)
    # Golden-angle azimuths spread any prefix of the queries around the map; jitter keeps them off a lattice.
    azimuth = math.radians((index * 137.50776 + rng.uniform(-15, 15)) % 360.0)
    elevation = math.radians(rng.uniform(*(config.close_elevation if close else config.orbit_elevation)))
    distance = typical * rng.uniform(*(config.close_distance if close else config.orbit_distance))
    direction = math.cos(elevation) * (math.cos(azimuth) * e1 + math.sin(azimuth) * e2) + math.sin(elevation) * up
    eye = centre + distance * direction
    if close:
        v = rng.normal(size=3)
        target = centre + config.close_look_radius * geometry.outer_radius * rng.uniform() ** (
            1 / 3
        ) * v / np.linalg.norm(v)
        yaw, pitch = (rng.uniform(-a, a) for a in config.close_turn)
        roll = rng.uniform(-config.close_roll, config.close_roll)
    else:
        target = centre + rng.normal(0.0, config.orbit_look_jitter * geometry.radius, 3)
        yaw = pitch = 0.0
        roll = rng.uniform(-config.orbit_roll, config.orbit_roll)
    if np.linalg.norm(target - eye) < 1e-6 * typical:
        target = centre
    T = turned(look_at(eye, target, up), roll, yaw, pitch)
    drawn = {
        "azimuth_deg": math.degrees(azimuth),
        "elevation_deg": math.degrees(elevation),
        "distance": distance / typical,
        "roll_deg": roll,
        "yaw_deg": yaw,
        "pitch_deg": pitch,
    }
    return T, {k: round(float(v), 4) for k, v in drawn.items()}


def nearest_view(T_world_camera: np.ndarray, view_poses: np.ndarray, typical_distance: float) -> tuple[float, float]:
    """(distance as a fraction of ``typical_distance``, optical-axis angle in degrees) to the virtual
    viewpoint nearest by position + direction (``distance + (1 - cos angle)``, roll ignored: the
    encoding covers rolls by rotating its images)."""
    if len(view_poses) == 0:
        return math.inf, 180.0
    distance = np.linalg.norm(view_poses[:, :3, 3] - T_world_camera[:3, 3], axis=1) / typical_distance
    cos = np.clip(view_poses[:, :3, 2] @ T_world_camera[:3, 2], -1.0, 1.0)
    i = int(np.argmin(distance + (1.0 - cos)))
    return float(distance[i]), float(np.degrees(np.arccos(cos[i])))


def too_close_to_a_view(
    T_world_camera: np.ndarray, view_poses: np.ndarray, typical_distance: float, separation: tuple[float, float]
) -> bool:
    """Whether some virtual viewpoint is within both ``separation`` = (distance x typical, degrees)."""
    if len(view_poses) == 0:
        return False
    distance = np.linalg.norm(view_poses[:, :3, 3] - T_world_camera[:3, 3], axis=1) / typical_distance
    angle = np.degrees(np.arccos(np.clip(view_poses[:, :3, 2] @ T_world_camera[:3, 2], -1.0, 1.0)))
    return bool(np.any((distance < separation[0]) & (angle < separation[1])))


def _sift_count(image: np.ndarray) -> int:
    import cv2

    return len(cv2.SIFT_create().detect(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), None))


def make_positive(
    index: int,
    seed: int,
    gmap: GaussianMap,
    camera: PinholeCamera,
    geometry: SceneGeometry,
    view_poses: np.ndarray,
    up: np.ndarray,
    config: QueryConfig,
) -> Query | None:
    """Positive ``index`` (or ``None`` when no candidate passed in ``config.max_attempts``)."""
    rng = np.random.default_rng(np.random.SeedSequence((seed, _POSITIVE, index)))
    if geometry.layout == "inside_out":
        category = "inside"
    else:
        close = config.close_every and index % config.close_every == config.close_every - 1
        category = "close" if close else "orbit"
    min_coverage = config.min_coverage[0 if category == "orbit" else 1]
    preview = camera.scaled(0.25)
    near = 0.01 * geometry.radius
    rejected = {"view": 0, "coverage": 0, "near": 0, "texture": 0}
    for _ in range(config.max_attempts):
        T, drawn = sample_pose(category, index, rng, geometry, up, config)
        if too_close_to_a_view(T, view_poses, geometry.typical_distance, config.view_separation):
            rejected["view"] += 1
            continue
        small = render(gmap, preview, invert_pose(T), near=near)
        covered = small.alpha > 0.5
        coverage = float(covered.mean())
        if coverage < min_coverage:
            rejected["coverage"] += 1
            continue
        close_pixels = covered & (small.depth < config.near_distance * geometry.typical_distance)
        if close_pixels.sum() > config.max_near_fraction * covered.sum():
            rejected["near"] += 1
            continue
        image = render(gmap, camera, invert_pose(T), near=near).rgb_u8
        keypoints = _sift_count(image)
        if keypoints < config.min_keypoints:
            rejected["texture"] += 1
            continue
        perturbations = []
        if rng.random() < config.perturbed_fraction:
            image, perturbations = perturb(image, rng)
        distance, angle = nearest_view(T, view_poses, geometry.typical_distance)
        tags = (category, *(p["type"] for p in perturbations)) if perturbations else (category, "clean")
        info = {
            **drawn,
            "alpha_coverage": round(coverage, 4),
            "sift_keypoints": keypoints,
            "nearest_view_distance": round(distance, 4),
            "nearest_view_angle_deg": round(angle, 3),
            "rejected_candidates": rejected,
        }
        scale = float(np.linalg.norm(T[:3, 3] - geometry.centre))
        return Query(f"q{index:03d}", image, camera, T, scale, category, tags, perturbations, info)
    log.warning(
        "query %d: no acceptable %s view in %d candidates (rejected: %s)",
        index,
        category,
        config.max_attempts,
        rejected,
    )
    return None


def generate_queries(
    gmap: GaussianMap,
    count: int,
    negatives: int = 0,
    *,
    camera: PinholeCamera | None = None,
    seed: int = 0,
    config: QueryConfig | None = None,
    scene_config: SceneConfig | None = None,
    geometry: SceneGeometry | None = None,
    view_poses: np.ndarray | None = None,
    up=DEFAULT_UP,
    negative_scene: GaussianMap | None = None,
    progress: bool = False,
) -> list[Query]:
    """``count`` positives of ``gmap`` and ``negatives`` negatives (in that order).

    Args:
        camera: query camera (default :func:`~gsvisloc_ros.camera.default_camera`, 640x480).
        seed: everything is deterministic by it.
        config: sampling and acceptance settings.
        scene_config: the encoding's settings; the geometry and the virtual viewpoints to stay away
            from are derived from it unless ``geometry`` / ``view_poses`` are given (e.g. from an
            :class:`~gsvisloc_ros.scene.EncodedScene`).
        up: the map's world up direction (COLMAP captures: -y; the synthetic scenes: +z).
        negative_scene: the scene negatives are rendered from (default: a procedural room).
    """
    from tqdm import tqdm

    if count < 0 or negatives < 0:
        raise ValueError(f"query counts must be >= 0, got {count} and {negatives}")
    camera = camera or default_camera()
    config = config or QueryConfig()
    scene_config = scene_config or SceneConfig()
    up = np.asarray(up, dtype=np.float64).reshape(3)
    if not np.linalg.norm(up) > 0:
        raise ValueError("up must be a non-zero vector")
    up = up / np.linalg.norm(up)
    geometry = geometry or analyse_geometry(gmap, scene_config)
    if view_poses is None:
        view_poses = np.asarray(virtual_views(gmap, geometry, scene_config))
    view_poses = np.asarray(view_poses, dtype=np.float64).reshape(-1, 4, 4)
    queries = []
    for i in tqdm(range(count), desc="rendering queries", unit="query", disable=not progress):
        q = make_positive(i, seed, gmap, camera, geometry, view_poses, up, config)
        if q is not None:
            queries.append(q)
    if negatives:
        if negative_scene is None:
            from gsvisloc_ros.synthetic import make_scene

            negative_scene = make_scene(
                "room", seed=int(np.random.SeedSequence((seed, _OTHER_SCENE)).generate_state(1)[0]), detail=1.0
            )
        for i in tqdm(range(negatives), desc="making negatives", unit="image", disable=not progress):
            queries.append(make_negative(i, seed, camera, negative_scene))
    return queries
