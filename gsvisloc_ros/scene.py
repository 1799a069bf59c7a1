"""Scene encoding: a 3DGS map -> landmarks carrying 2D-encoder descriptors (training-free).

The map is rendered from virtual viewpoints chosen from its own geometry; the 2D encoder runs on
every render; each keypoint is lifted to 3D with the rendered depth; the lifted observations are
fused into landmarks (one per voxel of space and image roll), each with the mean of its
descriptors. Landmarks are what query keypoints are matched against.

Roll: learned 2D descriptors are not rotation invariant and a map carries no gravity direction.
Quarter turns of an image are exact (``np.rot90``), so the four in-plane rotations are split
between the scene and the query: each render is encoded at ``rolls`` of them (landmarks remember
their roll bucket) and the localizer turns the query by the rest. The default encodes one and
turns the query four ways: the same coverage of rolls, at a quarter of the encoder runs per view,
which buys twice the views. Any query roll is within 45 degrees of one combination.

Encoding costs tens of seconds on a CPU; the result is cached on disk, keyed by the map's
content hash and everything that changes it: the settings, the encoder, the render backend and
the kind of device the encoder runs on (see :func:`load_or_encode`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.ndimage import maximum_filter, minimum_filter
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from gsvisloc_ros.camera import PinholeCamera, invert_pose, look_at, transform_points
from gsvisloc_ros.gaussians import GaussianMap
from gsvisloc_ros.render import choose_backend, render
from gsvisloc_ros.retrieval import nearest_words, train_vocabulary

log = logging.getLogger(__name__)

#: Bump when the encoding changes in a way that invalidates caches.
ENCODING_VERSION = 5
LAYOUTS = ("auto", "object", "inside_out")


@dataclass(frozen=True)
class SceneConfig:
    """How a map is encoded into landmarks.

    Attributes:
        min_opacity: Gaussians below this opacity are ignored when analysing the geometry.
        layout: ``"object"`` (cameras around the map, looking in), ``"inside_out"`` (cameras near
            the centre, looking out: rooms, buildings) or ``"auto"`` (probed, see :func:`probe_layout`).
        view_directions: viewing directions per distance (object) or per position (inside-out).
        distance_factors: camera distances as multiples of the typical viewing distance.
        close_aims: object layout: every camera closer than the typical distance also looks this many
            ways off the centre, evenly around its axis (close-ups rarely look at the centre of the
            object, and XFeat matches a close-up only from within ~20 degrees of its viewpoint).
            Measured on the two shared captures (640x480 close-up queries, own generator, 20 per
            map; 60 directions, 4 rolls, retrieval by a global image descriptor): 0 -> 10/20 and
            15/20 localized, 3 -> 14/20 and 17/20; encoding 2.3x longer. With 120 directions and
            vote retrieval (the defaults): 19/20 and 19/20.
        aim_tilt_deg: how far off the centre those views look (about the virtual camera's half field
            of view, so that the centre view's edge is the aimed view's centre).
        image_size: (width, height) of the virtual renders.
        focal_factor: focal length of the virtual camera as a multiple of its width.
        rolls: quarter turns encoded per render (1, 2 or 4); the query is turned by the other
            ``4 // rolls`` (a query turn costs one encoder run per query, a scene roll one per view).
        keypoints_per_view: encoder keypoints kept per render and roll.
        min_alpha: keypoints are lifted only where the render is at least this opaque.
        max_depth_step: keypoints are not lifted where the depth in their 3x3 neighbourhood varies by
            more than this fraction (silhouettes, where the depth is ambiguous).
        landmarks_per_roll: target landmark count per roll bucket (sets the fusing voxel size).
        vocabulary_words: visual words of the retrieval's inverted file (more words: fewer stored
            descriptors searched per query descriptor, more nearest neighbours filed under another word).
        up: the map's up direction (map coordinates) for an upright encoding, ``None`` for the
            general one. Upright: every virtual view is rendered level (image-up along ``up``, as a
            robot's level-mounted camera sees), views steeper than ``max_pitch_deg`` are left out,
            and the localizer does not turn the query (:attr:`rolls` must be 1): about 4x fewer
            encoder runs per query. For cameras that are not level (hand-held, tilted), keep ``None``.
        max_pitch_deg: upright encodings (and inside-out maps with an ``up``): the steepest view,
            up or down from the horizon.
        min_clearance: inside-out maps: a virtual camera needs this much free space (a fraction of
            the map's radius) in front of it, and its position this much around it on average: a
            position inside an object or behind a wall sees surfaces right in front of it.
    """

    min_opacity: float = 0.5
    layout: str = "auto"
    view_directions: int = 120
    distance_factors: tuple[float, ...] = (0.5, 0.8, 1.3)
    close_aims: int = 3
    aim_tilt_deg: float = 30.0
    image_size: tuple[int, int] = (512, 384)
    focal_factor: float = 0.8
    rolls: int = 1
    keypoints_per_view: int = 1024
    min_alpha: float = 0.95
    max_depth_step: float = 0.05
    landmarks_per_roll: int = 30000
    vocabulary_words: int = 256
    up: tuple[float, float, float] | None = None
    max_pitch_deg: float = 60.0
    min_clearance: float = 0.08

    def __post_init__(self) -> None:
        if self.up is not None:
            up = np.asarray(self.up, dtype=float).reshape(-1)
            if up.shape != (3,) or not np.all(np.isfinite(up)) or np.linalg.norm(up) == 0:
                raise ValueError(f"up must be three finite numbers, not all 0, or None; got {self.up!r}")
            object.__setattr__(self, "up", tuple(float(v) for v in up / np.linalg.norm(up)))
            if self.rolls != 1:
                raise ValueError(f"an upright encoding (up given) renders level views: rolls must be 1, "
                                 f"got {self.rolls}")
        if not 0 < self.max_pitch_deg <= 90 or not 0 <= self.min_clearance < 1:
            raise ValueError(f"max_pitch_deg must be in (0, 90] and min_clearance in [0, 1), got "
                             f"{self.max_pitch_deg}, {self.min_clearance}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.rolls not in (1, 2, 4):
            raise ValueError(f"rolls must be 1, 2 or 4, got {self.rolls}")
        if self.close_aims < 0 or not 0 < self.aim_tilt_deg < 90:
            raise ValueError(f"close_aims must be >= 0 and aim_tilt_deg in (0, 90), got {self.close_aims}, "
                             f"{self.aim_tilt_deg}")
        if self.view_directions < 1 or not self.distance_factors:
            raise ValueError("view_directions and distance_factors must not be empty")
        if any(f <= 0 for f in self.distance_factors):
            raise ValueError(f"distance_factors must be positive, got {self.distance_factors}")
        if not 0 <= self.min_opacity < 1:
            raise ValueError(f"min_opacity must be in [0, 1), got {self.min_opacity}")
        if self.landmarks_per_roll < 100 or self.keypoints_per_view < 16:
            raise ValueError("landmarks_per_roll must be >= 100 and keypoints_per_view >= 16")

    def key(self, encoder_name: str, backend: str, device: str) -> str:
        """A short hash of everything that changes the encoding: these settings, the encoder, the
        concrete render backend (``"cpu"``, ``"cuda"``, ...) and the encoder's device kind
        (``"cpu"`` or ``"cuda"``): renders and descriptors differ slightly between them."""
        if backend not in ("cpu", "cuda", "reference") or device not in ("cpu", "cuda"):
            raise ValueError(f"the key needs a concrete backend and device kind, got {backend!r}, {device!r}")
        text = json.dumps({"v": ENCODING_VERSION, "encoder": encoder_name, "backend": backend, "device": device,
                           **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class SceneGeometry:
    """Where the map is and how it should be looked at."""

    centre: np.ndarray  # robust centre (median of opaque Gaussians)
    radius: float  # 50th percentile of the opaque Gaussians' distance to the centre
    outer_radius: float  # 90th percentile
    layout: str  # "object" (seen from around it) or "inside_out" (seen from within)
    typical_distance: float  # camera-to-centre distance at which half the map fills a view

    def to_dict(self) -> dict:
        return {**asdict(self), "centre": np.asarray(self.centre).tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> SceneGeometry:
        return cls(np.asarray(d["centre"], dtype=np.float64), float(d["radius"]), float(d["outer_radius"]),
                   str(d["layout"]), float(d["typical_distance"]))


ARRAYS = ("points", "descriptors", "view_poses", "image_view", "image_roll", "image_start", "obs_points",
          "obs_descriptors", "obs_words", "vocabulary")


@dataclass
class EncodedScene:
    """What localization needs of one map, computed once.

    * Landmarks: 3D points with unit-norm fused descriptors (fused per roll of the renders).
    * Virtual images (one per virtual view and roll): their pose and their lifted keypoints
      (observations, stored image by image: rows ``image_start[i]:image_start[i+1]``), each filed
      under a visual word for retrieval.
    """

    points: np.ndarray  # [L, 3] float32 landmark positions, map frame
    descriptors: np.ndarray  # [L, D] float32, unit norm
    view_poses: np.ndarray  # [V, 4, 4] T_world_camera of the virtual views
    image_view: np.ndarray  # [I] int32, view of each virtual image
    image_roll: np.ndarray  # [I] int8, quarter turns of each virtual image
    image_start: np.ndarray  # [I + 1] int64, first observation row of each image
    obs_points: np.ndarray  # [M, 3] float32, lifted keypoints in the map frame
    obs_descriptors: np.ndarray  # [M, D] float16
    obs_words: np.ndarray  # [M] int16, nearest visual word of each (the retrieval's inverted file)
    vocabulary: np.ndarray  # [K, D] float32 visual words
    geometry: SceneGeometry
    camera: PinholeCamera  # the virtual camera
    map_hash: str
    encoder: str
    config_key: str
    stats: dict = field(default_factory=dict)
    from_cache: bool = field(default=False, compare=False)  # set by load_or_encode, never stored

    def __len__(self) -> int:
        return len(self.points)

    def summary(self) -> str:
        """What the encoding holds, in a few words (for reports)."""
        return f"{len(self.view_poses)} virtual views, {len(self.points)} landmarks"

    def image_observations(self, image: int) -> slice:
        return slice(int(self.image_start[image]), int(self.image_start[image + 1]))

    def save(self, path: str | os.PathLike) -> None:
        c = self.camera
        meta = {"geometry": self.geometry.to_dict(), "map_hash": self.map_hash, "encoder": self.encoder,
                "config_key": self.config_key, "stats": self.stats, "version": ENCODING_VERSION,
                "camera": [c.fx, c.fy, c.cx, c.cy, c.width, c.height]}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, meta=np.array(json.dumps(meta)), **{name: getattr(self, name) for name in ARRAYS})
        os.replace(tmp, path)  # never leave a half-written cache behind

    @classmethod
    def load(cls, path: str | os.PathLike) -> EncodedScene:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("version") != ENCODING_VERSION:
                raise ValueError(f"{path}: encoded with version {meta.get('version')}, need {ENCODING_VERSION}")
            arrays = {name: z[name] for name in ARRAYS}
        fx, fy, cx, cy, w, h = meta["camera"]
        return cls(**arrays, geometry=SceneGeometry.from_dict(meta["geometry"]),
                   camera=PinholeCamera(fx, fy, cx, cy, int(w), int(h)), map_hash=meta["map_hash"],
                   encoder=meta["encoder"], config_key=meta["config_key"], stats=meta.get("stats", {}))


def virtual_camera(config: SceneConfig) -> PinholeCamera:
    width, height = config.image_size
    f = config.focal_factor * width
    return PinholeCamera(f, f, (width - 1) / 2, (height - 1) / 2, width, height)


def analyse_geometry(gmap: GaussianMap, config: SceneConfig, backend: str = "auto") -> SceneGeometry:
    """Robust centre and radii of the opaque Gaussians, and the viewing distance (``backend``: the
    render backend of the layout probe)."""
    opaque = gmap.means[gmap.opacities >= config.min_opacity]
    if len(opaque) < 10:
        raise ValueError(
            f"the map has {len(opaque)} Gaussians with opacity >= {config.min_opacity}: nothing to localize against"
        )
    centre = np.median(opaque, axis=0).astype(np.float64)
    r = np.linalg.norm(opaque - centre, axis=1)
    r10, r50, r90 = np.percentile(r, [10, 50, 90])
    if r90 <= 0:
        raise ValueError("the map's opaque Gaussians all sit at one point")
    half_fov = np.arctan2(config.image_size[1] / 2, config.focal_factor * config.image_size[0])
    layout = config.layout if config.layout != "auto" else probe_layout(gmap, centre, r50, backend)
    typical = r50 / np.sin(half_fov) if layout == "object" else r50
    return SceneGeometry(centre, float(r50), float(r90), layout, float(typical))


def probe_layout(gmap: GaussianMap, centre: np.ndarray, radius: float, backend: str = "auto") -> str:
    """``"inside_out"`` when the centre is free space surrounded by surfaces, else ``"object"``.

    Six 90-degree views from the centre: in a room every side is covered and the surfaces are a
    good part of the map's radius away; at the centre of an object capture the object itself (or
    the table it stands on) is right there, within a few percent of the radius.
    """
    looks = _six_ways(gmap, centre, 0.01 * radius, backend)
    coverage = [covered for covered, _ in looks]
    depth = [np.median(d) / radius if len(d) else 0.0 for _, d in looks]
    return "inside_out" if min(coverage) > 0.5 and np.median(depth) > 0.3 else "object"


#: A 90-degree, 32x32 look: enough to tell what surrounds a point and how far it is.
_PROBE = PinholeCamera(16.0, 16.0, 15.5, 15.5, 32, 32)


def _glance(gmap: GaussianMap, T: np.ndarray, near: float, backend: str) -> tuple[float, np.ndarray]:
    """(fraction of the look that is opaque, the depths there) from ``T_world_camera``."""
    result = render(gmap, _PROBE, invert_pose(T), near=near, backend=backend)
    covered = result.alpha > 0.5
    return float(covered.mean()), result.depth[covered]


def _six_ways(gmap: GaussianMap, position: np.ndarray, near: float, backend: str) -> list[tuple[float, np.ndarray]]:
    """:func:`_glance` from ``position`` along +-x, +-y and +-z: everything around it."""
    return [_glance(gmap, look_at(position, position + d, _up_for(d)), near, backend)
            for d in np.vstack([np.eye(3), -np.eye(3)])]


def fibonacci_directions(count: int) -> np.ndarray:
    """``count`` unit vectors spread evenly over the sphere."""
    k = np.arange(count) + 0.5
    z = 1 - 2 * k / count
    phi = np.pi * (1 + 5**0.5) * k
    s = np.sqrt(1 - z * z)
    return np.stack([s * np.cos(phi), s * np.sin(phi), z], axis=1)


def _up_for(direction: np.ndarray, up=None) -> np.ndarray:
    """The image-up of a view along ``direction``: the map's ``up`` when given (a level view), else
    any vector not parallel to ``direction`` (the roll is covered by the roll buckets)."""
    if up is not None and abs(direction @ np.asarray(up)) < 0.999:
        return np.asarray(up, dtype=float)
    z = np.array([0.0, 0.0, 1.0])
    return z if abs(direction @ z) < 0.9 else np.array([1.0, 0.0, 0.0])


def _level_enough(directions: np.ndarray, config: SceneConfig) -> np.ndarray:
    """The viewing directions within ``max_pitch_deg`` of the horizon (all of them without an ``up``)."""
    if config.up is None:
        return directions
    pitch = np.degrees(np.arcsin(np.clip(directions @ np.asarray(config.up), -1.0, 1.0)))
    return directions[np.abs(pitch) <= config.max_pitch_deg + 1e-9]


def virtual_views(gmap: GaussianMap, geometry: SceneGeometry, config: SceneConfig,
                  backend: str = "auto") -> list[np.ndarray]:
    """T_world_camera of the virtual viewpoints that cover the map.

    Object layout: cameras on spheres around the centre, looking at it. A camera whose view is
    blocked close in front (it stands behind a backdrop) is pulled in towards the centre until its
    view is clear (or kept as a close-up of what blocks it after three tries). Cameras closer than
    the typical distance also look ``close_aims`` ways off the centre (views that show little of
    the map are dropped).
    Inside-out layout: :func:`inside_out_views`.
    With ``config.up`` (upright), every view is level and none is steeper than ``max_pitch_deg``.
    """
    directions = fibonacci_directions(config.view_directions)
    if geometry.layout == "inside_out":
        return inside_out_views(gmap, geometry, config, directions, backend)
    probe = PinholeCamera(60.0, 60.0, 39.5, 29.5, 80, 60)
    near = 0.01 * geometry.radius
    views = []
    for factor in config.distance_factors:
        for d in _level_enough(directions, config):
            distance = factor * geometry.typical_distance
            for _ in range(4):
                T = look_at(geometry.centre + distance * d, geometry.centre, _up_for(-d, config.up))
                depth = render(gmap, probe, invert_pose(T), near=near, backend=backend).depth
                if np.mean((depth > 0) & (depth < 0.35 * distance)) < 0.3:
                    break
                distance *= 0.7
            # A view still blocked after being pulled in is kept: it is a close-up of what blocks it
            # (leaves of a plant, say), which close-up queries need.
            views.append(T)
            if factor < 1.0:
                views += _aimed_off_centre(gmap, T, config, probe, near, backend)
    return views


def inside_out_views(gmap: GaussianMap, geometry: SceneGeometry, config: SceneConfig, directions: np.ndarray,
                     backend: str = "auto") -> list[np.ndarray]:
    """Views from where a camera can be inside a room, looking out.

    Candidate positions: the centre and six positions on each of the shells at ``0.3 *
    distance_factors`` of the map's radius around it (flattened towards the horizontal plane when
    ``up`` is known: cameras move over a floor more than up and down). A position is kept only in
    free space: seen from it, the surfaces in six directions are on average at least
    ``min_clearance`` radii away (inside furniture or a wall they are right there) and every one of
    the six directions is covered (behind a wall, or outside the map, half the world is empty). From
    each kept position, every direction whose own probe shows no surface closer than
    ``min_clearance`` (a view into a wall shows a blur) becomes a view.
    """
    r = geometry.radius
    up = None if config.up is None else np.asarray(config.up)
    shell = fibonacci_directions(6)
    if up is not None:  # mostly horizontal moves: squash the shell's vertical part to a third
        shell = shell - (2.0 / 3.0) * np.outer(shell @ up, up)
    positions = [geometry.centre] + [geometry.centre + 0.3 * factor * r * d
                                     for factor in config.distance_factors for d in shell]
    near = 0.01 * r
    level = _level_enough(directions, config)
    views, dropped = [], 0
    for p in positions:
        depths = [np.median(d) if covered > 0.5 else np.nan for covered, d in _six_ways(gmap, p, near, backend)]
        if not np.all(np.isfinite(depths)) or np.mean(depths) < config.min_clearance * r * 2:
            dropped += 1
            continue
        for d in level:
            T = look_at(p, p + d, _up_for(d, up))
            covered, depth = _glance(gmap, T, near, backend)
            if covered > 0.3 and np.percentile(depth, 10) >= config.min_clearance * r:
                views.append(T)
    log.info("inside-out views: %d positions in free space (%d of %d dropped), %d views", len(positions) - dropped,
             dropped, len(positions), len(views))
    if not views:
        raise ValueError("no virtual camera position inside the map is in free space: "
                         "is it a room (layout inside_out)?")
    return views


def _aimed_off_centre(gmap: GaussianMap, T: np.ndarray, config: SceneConfig, probe: PinholeCamera,
                      near: float, backend: str) -> list[np.ndarray]:
    """Views from the position of ``T`` turned ``aim_tilt_deg`` away from its axis, evenly around it."""
    views = []
    tilt = np.radians(config.aim_tilt_deg)
    for j in range(config.close_aims):
        phi = 2 * np.pi * j / config.close_aims
        axis = np.cos(phi) * T[:3, 0] + np.sin(phi) * T[:3, 1]  # turn about an axis across the view
        turned = T.copy()
        turned[:3, :3] = Rotation.from_rotvec(tilt * axis).as_matrix() @ T[:3, :3]
        if config.up is not None:  # upright: level again, and no steeper than the others
            if len(_level_enough(turned[None, :3, 2], config)) == 0:
                continue
            turned = look_at(T[:3, 3], T[:3, 3] + turned[:3, 2], _up_for(turned[:3, 2], config.up))
        if np.mean(render(gmap, probe, invert_pose(turned), near=near, backend=backend).alpha > 0.5) > 0.2:
            views.append(turned)
    return views


def rotate_keypoints_back(uv: np.ndarray, quarter_turns: int, width: int, height: int) -> np.ndarray:
    """Positions in the original image of keypoints found in ``np.rot90(image, quarter_turns)``.

    ``width`` and ``height`` are those of the original image; pixel centres at integers.
    """
    u, v = uv[:, 0], uv[:, 1]
    k = quarter_turns % 4
    if k == 0:
        return uv.copy()
    if k == 1:
        return np.stack([width - 1 - v, u], axis=1)
    if k == 2:
        return np.stack([width - 1 - u, height - 1 - v], axis=1)
    return np.stack([v, height - 1 - u], axis=1)


def lift_keypoints(uv: np.ndarray, depth: np.ndarray, alpha: np.ndarray, camera: PinholeCamera,
                   T_world_camera: np.ndarray, min_alpha: float, max_depth_step: float):
    """3D map points of keypoints on a rendered view; returns (points [K,3], kept mask [N])."""
    h, w = depth.shape
    col = np.clip(np.rint(uv[:, 0]).astype(int), 0, w - 1)
    row = np.clip(np.rint(uv[:, 1]).astype(int), 0, h - 1)
    near = np.where(depth > 0, depth, np.inf)
    lo = minimum_filter(near, size=3)
    hi = maximum_filter(np.where(depth > 0, depth, 0.0), size=3)
    z = _bilinear(depth, uv)
    keep = (alpha[row, col] >= min_alpha) & np.isfinite(lo[row, col]) & (z > 0)
    keep &= (hi[row, col] - lo[row, col]) <= max_depth_step * np.maximum(z, 1e-9)
    points = transform_points(T_world_camera, camera.backproject(uv[keep], z[keep]))
    return points, keep


def _bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    h, w = image.shape
    u = np.clip(uv[:, 0], 0, w - 1.000001)
    v = np.clip(uv[:, 1], 0, h - 1.000001)
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    fu, fv = u - u0, v - v0
    top = image[v0, u0] * (1 - fu) + image[v0, u0 + 1] * fu
    bottom = image[v0 + 1, u0] * (1 - fu) + image[v0 + 1, u0 + 1] * fu
    return top * (1 - fv) + bottom * fv


def fuse_landmarks(points: np.ndarray, descriptors: np.ndarray, target: int) -> tuple[np.ndarray, ...]:
    """Fuse observations into about ``target`` landmarks on a voxel grid.

    The voxel size is searched so that the number of occupied voxels is close to ``target``;
    each landmark is the mean position and the renormalised mean descriptor of its voxel.
    Returns (points [L,3], descriptors [L,D], observation counts [L], voxel size).
    """
    if len(points) == 0:
        return np.zeros((0, 3), np.float32), np.zeros((0, descriptors.shape[1]), np.float32), \
            np.zeros(0, np.int32), 0.0
    lo_p = points.min(axis=0)
    span = float(np.max(points.max(axis=0) - lo_p)) + 1e-9

    def voxel_keys(size: float) -> np.ndarray:
        q = np.floor((points - lo_p) / size).astype(np.int64)
        return (q[:, 0] * 2097152 + q[:, 1]) * 2097152 + q[:, 2]

    small, large = span / 2_000_000, span
    for _ in range(40):  # bisect in log space: more voxels when smaller
        size = np.sqrt(small * large)
        if len(np.unique(voxel_keys(size))) > target:
            small = size
        else:
            large = size
        if large / small < 1.02:
            break
    size = large
    _, inverse, counts = np.unique(voxel_keys(size), return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    fused_points = np.add.reduceat(points[order].astype(np.float64), starts, axis=0) / counts[:, None]
    fused = np.add.reduceat(descriptors[order].astype(np.float64), starts, axis=0)
    fused /= np.maximum(np.linalg.norm(fused, axis=1, keepdims=True), 1e-12)
    return fused_points.astype(np.float32), fused.astype(np.float32), counts.astype(np.int32), float(size)


def encode_scene(gmap: GaussianMap, encoder, config: SceneConfig | None = None, progress: bool = True,
                 backend: str = "auto") -> EncodedScene:
    """Encode ``gmap`` into landmarks with ``encoder``, rendering with ``backend`` (see the module docstring)."""
    config = config or SceneConfig()
    backend = choose_backend(backend)[0]  # one concrete backend for every render, and for the key
    start = time.perf_counter()
    geometry = analyse_geometry(gmap, config, backend)
    camera = virtual_camera(config)
    views = virtual_views(gmap, geometry, config, backend)
    log.info("encoding %d Gaussians (%s layout) from %d virtual views x %d rolls",
             len(gmap), geometry.layout, len(views), config.rolls)
    obs_points, obs_desc, image_view, image_roll, counts = [], [], [], [], []
    turns = [0, 1, 2, 3][:: 4 // config.rolls]
    width, height = camera.size
    for view, T in enumerate(tqdm(views, desc="encoding views", unit="view", disable=not progress)):
        result = render(gmap, camera, invert_pose(T), near=0.01 * geometry.radius, backend=backend)
        uv, desc = [], []
        for k in turns:
            features = encoder.extract(np.ascontiguousarray(np.rot90(result.rgb_u8, k)))
            order = np.argsort(-features.scores)[: config.keypoints_per_view]
            uv.append(rotate_keypoints_back(features.keypoints[order], k, width, height))
            desc.append(features.descriptors[order])
        # One lift for all rolls: they share the render's depth.
        points, keep = lift_keypoints(np.concatenate(uv), result.depth, result.alpha, camera, T,
                                      config.min_alpha, config.max_depth_step)
        bounds = np.cumsum([0] + [len(u) for u in uv])
        lifted = np.cumsum(np.concatenate([[0], keep]))[bounds]  # lifted rows before each roll
        for i, k in enumerate(turns):
            kept = keep[bounds[i]:bounds[i + 1]]
            obs_points.append(points[lifted[i]:lifted[i + 1]].astype(np.float32))
            obs_desc.append(desc[i][kept])
            image_view.append(view)
            image_roll.append(k)
            counts.append(int(kept.sum()))
    P, D = np.concatenate(obs_points), np.concatenate(obs_desc)
    if len(P) < 64:
        raise ValueError(f"only {len(P)} keypoints could be lifted from the virtual views: "
                         "is the map empty, transparent or without texture?")
    R = np.repeat(np.asarray(image_roll, np.int8), counts)
    parts = [fuse_landmarks(P[R == k], D[R == k], config.landmarks_per_roll) for k in turns]
    vocabulary = train_vocabulary(D, words=config.vocabulary_words)
    seconds = time.perf_counter() - start
    stats = {"views": len(views), "observations": int(len(P)), "landmarks": int(sum(len(p[0]) for p in parts)),
             "voxel_size": float(np.mean([p[3] for p in parts])), "seconds": round(seconds, 2)}
    log.info("encoded %d observations into %d landmarks in %.1f s", len(P), stats["landmarks"], seconds)
    return EncodedScene(
        points=np.concatenate([p[0] for p in parts]),
        descriptors=np.concatenate([p[1] for p in parts]),
        view_poses=np.asarray(views),
        image_view=np.asarray(image_view, np.int32),
        image_roll=np.asarray(image_roll, np.int8),
        image_start=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        obs_points=P, obs_descriptors=D.astype(np.float16),
        obs_words=nearest_words(D, vocabulary).astype(np.int16),
        vocabulary=vocabulary, geometry=geometry, camera=camera,
        map_hash=gmap.content_hash, encoder=encoder.name, config_key=encoding_key(config, encoder, backend),
        stats=stats,
    )


def default_cache_dir() -> Path:
    """``$GSVISLOC_CACHE_DIR``, else ``$XDG_CACHE_HOME/gsvisloc``, else ``~/.cache/gsvisloc``."""
    if os.environ.get("GSVISLOC_CACHE_DIR"):
        return Path(os.environ["GSVISLOC_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gsvisloc"


def device_kind(encoder) -> str:
    """``"cpu"`` or ``"cuda"``: where ``encoder`` runs (its ``device``; one without runs on the CPU)."""
    return str(getattr(encoder, "device", "cpu")).split(":")[0]


def encoding_key(config: SceneConfig, encoder, backend: str) -> str:
    """The cache key of encoding with ``encoder`` and the concrete render ``backend``."""
    return config.key(encoder.name, backend, device_kind(encoder))


def cache_path(gmap: GaussianMap, encoder, config: SceneConfig, cache_dir: Path | None = None,
               backend: str = "auto") -> Path:
    """Where the encoding of ``gmap`` with ``encoder``, ``config`` and render ``backend`` is cached."""
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = encoding_key(config, encoder, choose_backend(backend)[0])
    return directory / f"scene-{gmap.content_hash[:20]}-{key}.npz"


def load_or_encode(gmap: GaussianMap, encoder, config: SceneConfig | None = None,
                   cache_dir: Path | None = None, progress: bool = True, backend: str = "auto") -> EncodedScene:
    """The encoded scene from the cache when it is there and valid, else encode and cache it
    (``from_cache`` says which), rendering with ``backend``.

    A cache directory that cannot be written only costs the cache (logged), never the result.
    """
    config = config or SceneConfig()
    backend, why = choose_backend(backend)
    log.info("scene encoding: render backend %s (%s); %s encoder on %s", backend, why, encoder.name,
             device_kind(encoder))
    path = cache_path(gmap, encoder, config, cache_dir, backend)
    if path.is_file():
        try:
            scene = EncodedScene.load(path)
            if scene.map_hash == gmap.content_hash and scene.config_key == encoding_key(config, encoder, backend):
                log.info("loaded encoded scene from %s (%d landmarks)", path, len(scene))
                scene.from_cache = True
                return scene
            log.warning("cache %s does not belong to this map and settings: re-encoding", path)
        except Exception as exc:  # a corrupt or foreign cache file must not stop localization
            log.warning("cannot read cache %s (%s): re-encoding", path, exc)
    scene = encode_scene(gmap, encoder, config, progress=progress, backend=backend)
    try:
        scene.save(path)
        log.info("cached encoded scene at %s", path)
    except OSError as exc:
        log.warning("cannot write cache %s: %s", path, exc)
    return scene
