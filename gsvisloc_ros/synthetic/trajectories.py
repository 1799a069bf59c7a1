"""Camera trajectories around and through a map, for synthetic bags; deterministic by seed.

A trajectory is a sequence of true ``base_link`` poses in the ``map`` frame, a fixed extrinsic
``base_link -> camera_optical_frame`` (:class:`Rig`) and the drifting odometry a robot would
report (``odom -> base_link``). Frames follow REP-103/105: ``base_link`` is x forward, y left,
z up; the optical frame is OpenCV's (x right, y down, z forward); ``map`` has +z up.

Two kinds (:data:`TRAJECTORY_KINDS`), both smooth (a few low-frequency harmonics) and sized from
the map's robust centre and extent (:func:`map_extent`):

* ``orbit``: one turn around the centre at a gently varying radius and height, looking at a
  target that wanders near the centre (object-centric maps); in a map seen from inside (a room)
  the camera circles near the centre looking outwards.
* ``walk``: a wandering path through the space around the centre (or inside the room), moving
  forwards, its gaze a smooth blend of the walking direction and the centre.

Odometry integrates the true motion between frames with a random-walk error per step
(translation proportional to the step, plus heading and tilt noise), so ``odom -> base_link``
drifts away from the truth as a real wheel or visual odometry would; the ``map -> odom``
transform that would correct it is what a localizer estimates.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from gsvisloc_ros.camera import invert_pose, look_at, make_pose
from gsvisloc_ros.gaussians import GaussianMap
from gsvisloc_ros.scene import SceneConfig

TRAJECTORY_KINDS = ("orbit", "walk")

#: Optical axes (x right, y down, z forward) expressed in REP-103 body axes (x forward, y left, z up).
R_BASE_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


@dataclass(frozen=True)
class Rig:
    """Where the camera sits on the robot.

    Attributes:
        offset: camera position in ``base_link`` (metres; x forward, y left, z up).
        pitch_deg: downward tilt of the camera about the base's y axis.
        base_frame, odom_frame, map_frame, camera_frame: the frame ids written to the bag.
    """

    offset: tuple[float, float, float] = (0.1, 0.0, 0.2)
    pitch_deg: float = 20.0
    base_frame: str = "base_link"
    odom_frame: str = "odom"
    map_frame: str = "map"
    camera_frame: str = "camera_optical_frame"

    @property
    def T_base_camera(self) -> np.ndarray:
        """The fixed extrinsic ``base_link -> camera_optical_frame`` (pose of the camera in the base)."""
        pitch = Rotation.from_euler("y", self.pitch_deg, degrees=True).as_matrix()
        return make_pose(pitch @ R_BASE_OPTICAL, self.offset)


@dataclass(frozen=True)
class OdometryNoise:
    """Random-walk odometry error per step (1-sigma).

    Attributes:
        translation: fraction of each step's length (scale error and side slip).
        translation_floor: metres added per step, so a standing robot drifts slowly too.
        yaw_deg: heading error per step.
        tilt_deg: roll and pitch error per step.
    """

    translation: float = 0.03
    translation_floor: float = 0.001
    yaw_deg: float = 0.3
    tilt_deg: float = 0.05


@dataclass
class Trajectory:
    """Timed true poses of a robot and its camera, with the odometry it would report."""

    stamps: np.ndarray  # [N] seconds since the start
    T_map_base: np.ndarray  # [N, 4, 4] true base_link poses
    T_odom_base: np.ndarray  # [N, 4, 4] odometry (drifting)
    rig: Rig = field(default_factory=Rig)
    kind: str = ""

    def __len__(self) -> int:
        return len(self.stamps)

    @property
    def T_base_camera(self) -> np.ndarray:
        return self.rig.T_base_camera

    @property
    def T_map_camera(self) -> np.ndarray:
        """[N, 4, 4] true T_world_camera of the optical frame (what a localizer estimates)."""
        return self.T_map_base @ self.T_base_camera

    @property
    def T_map_odom(self) -> np.ndarray:
        """[N, 4, 4] the ``map -> odom`` correction that makes odometry agree with the truth."""
        return self.T_map_base @ np.linalg.inv(self.T_odom_base)


def map_extent(gmap: GaussianMap, min_opacity: float = 0.5) -> tuple[np.ndarray, float, float]:
    """(robust centre, median radius, 90th-percentile radius) of the map's opaque Gaussians."""
    means = gmap.means[gmap.opacities >= min_opacity]
    if len(means) < 10:
        means = gmap.means
    if len(means) == 0:
        raise ValueError("the map is empty: no trajectory can be placed around it")
    centre = np.median(means, axis=0).astype(np.float64)
    r = np.linalg.norm(means - centre, axis=1)
    r50, r90 = (float(x) for x in np.percentile(r, [50, 90]))
    if not r90 > 0:
        raise ValueError("the map's Gaussians all sit at one point: no trajectory can be placed around it")
    return centre, max(r50, 1e-6), r90


def _smooth(rng: np.random.Generator, s: np.ndarray, harmonics: int = 3, closed: bool = True) -> np.ndarray:
    """A smooth random function of s in [0, 1] with values in about [-1, 1] (sum of low harmonics)."""
    out = np.zeros_like(s)
    for k in range(1, harmonics + 1):
        amplitude = rng.normal() / k
        phase = rng.uniform(0, 2 * np.pi)
        frequency = k if closed else k * rng.uniform(0.4, 0.9)
        out += amplitude * np.sin(2 * np.pi * frequency * s + phase)
    return out / max(1.0, np.abs(out).max())


def _camera_path(kind: str, layout: str, centre: np.ndarray, radius: float, frames: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(camera positions [N, 3], gaze targets [N, 3]) of the trajectory.

    A walk is laid out on a fine grid and resampled at equal distances along the path: a steady
    walking speed.
    """
    if kind == "orbit":
        return _path_shape(kind, layout, centre, radius, np.linspace(0.0, 1.0, frames, endpoint=False), rng)
    eye, target = _path_shape(kind, layout, centre, radius, np.linspace(0.0, 1.0, 16 * frames), rng)
    along = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(eye, axis=0), axis=1))])
    at = np.linspace(0.0, along[-1], frames)
    return tuple(np.stack([np.interp(at, along, p[:, k]) for k in range(3)], axis=1) for p in (eye, target))


def _path_shape(kind: str, layout: str, centre: np.ndarray, radius: float, s: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(positions, gaze targets) at path parameters ``s`` in [0, 1]."""
    start = rng.uniform(0, 2 * np.pi)
    if layout == "inside_out":
        if kind == "orbit":
            angle = start + 2 * np.pi * s
            ring = 0.25 * radius * (1 + 0.2 * _smooth(rng, s))
            eye = centre + np.stack([ring * np.cos(angle), ring * np.sin(angle), 0.1 * radius * _smooth(rng, s)], 1)
            outwards = np.stack([np.cos(angle), np.sin(angle), 0.15 * _smooth(rng, s)], 1)
            return eye, eye + radius * outwards
        # Wander inside, looking where it goes with a little head turning.
        x, y = 0.35 * radius * _smooth(rng, s, closed=False), 0.35 * radius * _smooth(rng, s, closed=False)
        eye = centre + np.stack([x, y, 0.1 * radius * _smooth(rng, s, closed=False)], 1)
        heading = np.unwrap(np.arctan2(np.gradient(y), np.gradient(x))) + 0.5 * _smooth(rng, s, closed=False)
        gaze = np.stack([np.cos(heading), np.sin(heading), 0.15 * _smooth(rng, s, closed=False)], 1)
        return eye, eye + radius * gaze
    # Object-centric: outside the object, looking in.
    if kind == "orbit":
        angle = start + 2 * np.pi * s
        ring = 1.9 * radius * (1 + 0.12 * _smooth(rng, s))
        height = 1.1 * radius * (1 + 0.15 * _smooth(rng, s))
        wander = 0.15 * radius * np.stack([_smooth(rng, s), _smooth(rng, s), 0.5 * _smooth(rng, s)], 1)
    else:
        angle = start + 0.6 * np.pi * s + 0.25 * np.pi * _smooth(rng, s, closed=False)
        ring = 1.9 * radius * (1 + 0.25 * _smooth(rng, s, closed=False))
        height = 1.0 * radius * (1 + 0.3 * _smooth(rng, s, closed=False))
        wander = 0.25 * radius * np.stack([_smooth(rng, s, closed=False), _smooth(rng, s, closed=False),
                                           0.5 * _smooth(rng, s, closed=False)], 1)
    eye = centre + np.stack([ring * np.cos(angle), ring * np.sin(angle), height], 1)
    return eye, centre + wander


def _drifting_odometry(T_map_base: np.ndarray, noise: OdometryNoise, rng: np.random.Generator) -> np.ndarray:
    """Integrate the true relative motion with a random-walk error; odometry starts at the identity."""
    odom = [np.eye(4)]
    for previous, current in zip(T_map_base[:-1], T_map_base[1:], strict=True):
        step = invert_pose(previous) @ current
        length = float(np.linalg.norm(step[:3, 3]))
        sigma_t = noise.translation * length + noise.translation_floor
        error = make_pose(
            Rotation.from_euler("xyz", rng.normal(0, 1, 3) * [noise.tilt_deg, noise.tilt_deg, noise.yaw_deg],
                                degrees=True).as_matrix(),
            rng.normal(0, sigma_t, 3) * [1.0, 1.0, 0.3],
        )
        odom.append(odom[-1] @ step @ error)
    return np.asarray(odom)


def make_trajectory(gmap: GaussianMap, kind: str = "orbit", frames: int = 50, rate_hz: float = 10.0,
                    seed: int = 0, rig: Rig | None = None, noise: OdometryNoise | None = None,
                    layout: str = "auto") -> Trajectory:
    """A camera trajectory of ``frames`` poses at ``rate_hz`` around or through ``gmap``.

    ``layout``: ``"object"`` (look in from outside), ``"inside_out"`` (look out from inside) or
    ``"auto"`` (probed from the map with :func:`gsvisloc_ros.scene.probe_layout`).
    """
    if kind not in TRAJECTORY_KINDS:
        raise ValueError(f"unknown trajectory {kind!r}; choose one of {', '.join(TRAJECTORY_KINDS)}")
    if frames < 2:
        raise ValueError(f"a trajectory needs at least 2 frames, got {frames}")
    if not rate_hz > 0:
        raise ValueError(f"the rate must be positive, got {rate_hz}")
    rig = rig or Rig()
    rng = np.random.default_rng(seed)
    centre, radius, _ = map_extent(gmap)
    if layout == "auto":
        from gsvisloc_ros.scene import probe_layout

        layout = probe_layout(gmap, centre, radius)
    eye, target = _camera_path(kind, layout, centre, radius, frames, rng)
    T_map_camera = np.stack([look_at(e, t, up=(0.0, 0.0, 1.0)) for e, t in zip(eye, target, strict=True)])
    T_map_base = T_map_camera @ invert_pose(rig.T_base_camera)
    T_odom_base = _drifting_odometry(T_map_base, noise or OdometryNoise(), rng)
    return Trajectory(np.arange(frames) / rate_hz, T_map_base, T_odom_base, rig, kind)


# ------------------------------------------------------------------ the embedded default map

#: The word that names the embedded default map on the command line (``--map default``).
DEFAULT_MAP_NAME = "default"

#: How the default map is encoded (see the README's demo section for the measurements behind it).
DEFAULT_MAP_SCENE = SceneConfig()


@functools.lru_cache(maxsize=1)
def default_map() -> GaussianMap:
    """The embedded default map: ``make_scene("tabletop", seed=0)``, made on first use (about 2 s).

    Deterministic (the same content hash on every machine, so its scene encoding is cached once);
    the same object is returned on later calls: do not modify it.
    """
    from gsvisloc_ros.synthetic.scenes import make_scene

    return make_scene("tabletop", seed=0)
