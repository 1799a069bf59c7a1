"""Every parameter of the ``gsvisloc`` node, declared once: default, range or choices, description.

:data:`PARAMETERS` is the single table; :func:`declare` declares them on a node with
``ParameterDescriptor`` ranges (so ``ros2 param describe`` shows them) and a validation callback
(registered before declaration, so ``--params-file`` and ``-p`` values are checked too).
:func:`validate` gives the same clear messages without ROS. ``config/gsvisloc.yaml`` lists exactly
these names with these defaults (a test checks it).

Parameters marked *reload* change the map or its encoding: setting one at run time reloads the map
in the background (the old map keeps serving until the new one is ready).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np

from gsvisloc_ros.learned import SCENE_ENCODERS
from gsvisloc_ros.quality import DEFAULT_COVARIANCE_SCALE
from gsvisloc_ros.tracking import TrackingConfig

_TRACKING = TrackingConfig()

MODES = ("continuous", "on_demand")
DEVICES = ("auto", "cpu", "cuda")
ENCODERS = ("xfeat", "sift")
IDENTITY_MAP_TO_FRAME = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class Spec:
    """One parameter: its default (which also fixes its type), limits and meaning."""

    name: str
    default: object
    description: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    reload: bool = False  # changing it reloads the map


PARAMETERS: tuple[Spec, ...] = (
    Spec("map_path", "", "3DGS map file (.ply or .splat) to localize against; empty: none (ERROR diagnostic)",
         reload=True),
    Spec("device", "auto", "torch device of the encoder: auto (CUDA when present), cpu or cuda", choices=DEVICES,
         reload=True),
    Spec("encoder", "xfeat", "2D feature encoder: xfeat or sift", choices=ENCODERS, reload=True),
    Spec("scene_encoder", "lifted", "how the map is encoded: lifted (renders virtual views and lifts XFeat "
         "descriptors onto the Gaussians; a minute per 100k Gaussians on a CPU, the accurate one) or learned (the "
         "trained point network over the Gaussians; seconds; see the README for its figures)", choices=SCENE_ENCODERS,
         reload=True),
    Spec("learned_weights", "", "weights file of the learned matcher; empty: the packaged weights", reload=True),
    Spec("cache_dir", "", "directory of encoded-scene caches; empty: $GSVISLOC_CACHE_DIR or ~/.cache/gsvisloc",
         reload=True),
    Spec("map_to_frame", list(IDENTITY_MAP_TO_FRAME),
         "similarity placing the map file in map_frame: [x, y, z, qx, qy, qz, qw] or with a scale as 8th value; "
         "a map point p goes to s * R(q) * p + (x, y, z)", reload=True),
    Spec("upright", False, "the cameras are mounted level (no roll beyond ~15 deg; pitch up to 60 deg) and "
         "map_frame's z is up: an upright encoding, the query is not turned four ways (~4x cheaper features); "
         "false for tilted or hand-held cameras", reload=True),
    Spec("map_frame", "map", "frame of published poses, map cloud and path"),
    Spec("odom_frame", "odom", "odometry frame: TF map -> odom is published when odom -> camera is known; "
         "empty: never (map -> base or camera instead)"),
    Spec("base_frame", "base_link", "robot body frame: pose_with_covariance is of this frame when base -> camera "
         "is in TF"),
    Spec("camera_frame", "", "optical frame of the images; empty: the image header's frame_id (always used with "
         "several cameras)"),
    Spec("cameras", "", "camera namespaces, separated by spaces or commas (e.g. 'front rear'): each camera's "
         "<ns>/image and <ns>/camera_info are subscribed and localized in turn against the one map; empty: the "
         "node's own image and camera_info"),
    Spec("mode", "continuous", "continuous: localize frames as they come; on_demand: only the next frame after "
         "each ~/trigger_localization call", choices=MODES),
    Spec("max_rate", 0.0, "most localizations per second (Hz) of each camera; 0: as fast as the worker can",
         0.0, 1000.0),
    Spec("use_compressed", False, "subscribe image/compressed (sensor_msgs/CompressedImage) instead of image"),
    Spec("publish_tf", True, "publish TF (map -> odom, else map -> base or camera); off when e.g. an EKF owns it"),
    Spec("transform_tolerance", 1.0, "seconds map -> odom is post-dated by (as nav2 AMCL)", 0.0, 60.0),
    Spec("tf_republish_rate", 10.0, "Hz at which the last map -> odom is republished post-dated from now, so "
         "lookups between fixes succeed; 0: only on each accepted fix", 0.0, 100.0),
    Spec("track_timeout", _TRACKING.track_timeout,
         "seconds (image stamps) after an accepted pose during which the next frames are "
         "localized from it (tracking: ~4x faster than a global search; odom -> camera motion in TF is applied "
         "when known; a lost track falls back to the global search); 0: every frame is localized globally",
         0.0, 1e6),
    Spec("min_inliers", 40, "a pose needs at least this many PnP inliers", 4, 100000),
    Spec("min_inlier_ratio", 0.5, "a pose needs at least this fraction of its matches as inliers", 0.0, 1.0),
    Spec("max_rmse_px", 2.0, "a pose needs an inlier reprojection RMSE at most this (pixels)", 0.01, 100.0),
    Spec("min_inlier_coverage", 0.115, "a pose needs its inliers' convex hull to cover at least this fraction of "
         "the image (weak geometry otherwise); 0: no check", 0.0, 1.0),
    Spec("max_position_uncertainty", 0.0035, "a pose needs a position uncertainty from the inliers' geometry "
         "(1 px of noise at 640x480, at most 300 inliers counted) of at most this fraction of their depth; "
         "0: no check", 0.0, 1.0),
    Spec("max_rotation_uncertainty_deg", 0.2, "a pose needs a rotation uncertainty from the inliers' geometry "
         "of at most this (degrees); 0: no check", 0.0, 180.0),
    Spec("max_jump_translation", _TRACKING.max_jump_translation,
         "largest move (map_frame units) from the last accepted pose within "
         "max_jump_window that is accepted at once; 0: no translation check", 0.0, 1e6),
    Spec("max_jump_rotation_deg", _TRACKING.max_jump_rotation_deg,
         "largest turn (degrees) from the last accepted pose within "
         "max_jump_window that is accepted at once; 0: no rotation check", 0.0, 180.0),
    Spec("max_jump_window", _TRACKING.max_jump_window,
         "seconds (image stamps) after an accepted pose during which jumps are checked",
         0.0, 1e6),
    Spec("jump_confirmations", _TRACKING.jump_confirmations,
         "consecutive mutually consistent fixes that confirm a jump (1: accept jumps "
         "at once)", 1, 100),
    Spec("covariance_scale", DEFAULT_COVARIANCE_SCALE,
         "factor on the PnP covariance published with each pose (the PnP covariance ignores the map's own "
         "error); the default was measured with evaluate-bag so that ~95 % of errors lie in the 95 % ellipsoid",
         1e-6, 1e6),
    Spec("pose_file", "", "file the last trusted pose is written to on each fix and read from on start, as the "
         "prior of the first frame (when saved for the same map); empty: none"),
    Spec("map_cloud_max_points", 50000, "Gaussian centres published on ~/map_cloud (random subset); 0: none",
         0, 10_000_000),
)

BY_NAME: dict[str, Spec] = {spec.name: spec for spec in PARAMETERS}


def defaults() -> dict[str, object]:
    return {spec.name: spec.default for spec in PARAMETERS}


def _type_name(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    return "double array"


def validate(name: str, value) -> str:
    """Empty string when ``value`` is acceptable for parameter ``name``, else why not."""
    spec = BY_NAME.get(name)
    if spec is None:
        return f"unknown parameter {name!r}"
    expected = _type_name(spec.default)
    if expected == "double" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected == "double array":
        try:
            values = [float(v) for v in value]
        except (TypeError, ValueError):
            return f"{name} must be a list of 7 or 8 numbers, got {value!r}"
        return _validate_map_to_frame(values)
    if _type_name(value) != expected:
        return f"{name} must be a {expected}, got {value!r} ({_type_name(value)})"
    if spec.choices and value not in spec.choices:
        return f"{name} must be one of {', '.join(spec.choices)}; got {value!r}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} must be finite, got {value}"
    if spec.low is not None and not spec.low <= value <= spec.high:
        return f"{name} must be in [{spec.low:g}, {spec.high:g}], got {value}"
    if name == "cameras":
        return _validate_cameras(value)
    return ""


def _validate_map_to_frame(values: list[float]) -> str:
    if len(values) not in (7, 8):
        return f"map_to_frame must have 7 values [x, y, z, qx, qy, qz, qw] or 8 (with a scale), got {len(values)}"
    if not all(math.isfinite(v) for v in values):
        return f"map_to_frame must be finite, got {values}"
    if np.linalg.norm(values[3:7]) < 1e-6:
        return f"map_to_frame quaternion (qx, qy, qz, qw) must not be zero, got {values[3:7]}"
    if len(values) == 8 and not values[7] > 0:
        return f"map_to_frame scale (8th value) must be positive, got {values[7]}"
    return ""


def camera_names(value: str) -> list[str]:
    """The camera namespaces of a ``cameras`` value, in order, without repeats."""
    names = [n for n in value.replace(",", " ").split() if n]
    return list(dict.fromkeys(names))


def _validate_cameras(value: str) -> str:
    import re

    for name in camera_names(value):
        if not re.fullmatch(r"/?[A-Za-z_~][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*", name):
            return f"cameras: {name!r} is not a valid namespace (letters, digits, _ and /)"
    return ""


def map_to_frame_matrix(values) -> np.ndarray:
    """4x4 similarity ``[s R | t]`` of a valid ``map_to_frame`` value."""
    from scipy.spatial.transform import Rotation

    v = [float(x) for x in values]
    problem = _validate_map_to_frame(v)
    if problem:
        raise ValueError(problem)
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat(np.asarray(v[3:7]) / np.linalg.norm(v[3:7])).as_matrix() * (v[7] if len(v) == 8
                                                                                                else 1.0)
    T[:3, 3] = v[:3]
    return T


#: The parameters that set the localizer's acceptance thresholds.
ACCEPTANCE_PARAMETERS = ("min_inliers", "min_inlier_ratio", "max_rmse_px", "min_inlier_coverage",
                         "max_position_uncertainty", "max_rotation_uncertainty_deg")


@dataclass
class NodeParams:
    """A snapshot of the parameters as plain Python values (one attribute per entry of :data:`PARAMETERS`)."""

    map_path: str = ""
    device: str = "auto"
    encoder: str = "xfeat"
    scene_encoder: str = "lifted"
    learned_weights: str = ""
    cache_dir: str = ""
    map_to_frame: list = field(default_factory=lambda: list(IDENTITY_MAP_TO_FRAME))
    upright: bool = False
    map_frame: str = "map"
    odom_frame: str = "odom"
    base_frame: str = "base_link"
    camera_frame: str = ""
    cameras: str = ""
    mode: str = "continuous"
    max_rate: float = 0.0
    use_compressed: bool = False
    publish_tf: bool = True
    transform_tolerance: float = 1.0
    tf_republish_rate: float = 10.0
    track_timeout: float = _TRACKING.track_timeout
    min_inliers: int = 40
    min_inlier_ratio: float = 0.5
    max_rmse_px: float = 2.0
    min_inlier_coverage: float = 0.115
    max_position_uncertainty: float = 0.0035
    max_rotation_uncertainty_deg: float = 0.2
    max_jump_translation: float = _TRACKING.max_jump_translation
    max_jump_rotation_deg: float = _TRACKING.max_jump_rotation_deg
    max_jump_window: float = _TRACKING.max_jump_window
    jump_confirmations: int = _TRACKING.jump_confirmations
    covariance_scale: float = DEFAULT_COVARIANCE_SCALE
    pose_file: str = ""
    map_cloud_max_points: int = 50000

    def updated(self, changes: dict) -> NodeParams:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in changes.items():
            spec = BY_NAME[name]
            if isinstance(spec.default, float):
                value = float(value)
            elif isinstance(spec.default, list):
                value = [float(v) for v in value]
            values[name] = value
        return NodeParams(**values)

    def tracking(self) -> TrackingConfig:
        """The settings of the node's :class:`~gsvisloc_ros.tracking.Tracker`."""
        return TrackingConfig(**{name: getattr(self, name) for name in TRACKING})

    @property
    def map_transform(self) -> np.ndarray:
        return map_to_frame_matrix(self.map_to_frame)


#: The parameters that are :class:`~gsvisloc_ros.tracking.TrackingConfig` fields.
TRACKING = frozenset(f.name for f in fields(TrackingConfig))


def _descriptor(spec: Spec):
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

    types = {"bool": ParameterType.PARAMETER_BOOL, "integer": ParameterType.PARAMETER_INTEGER,
             "double": ParameterType.PARAMETER_DOUBLE, "string": ParameterType.PARAMETER_STRING,
             "double array": ParameterType.PARAMETER_DOUBLE_ARRAY}
    descriptor = ParameterDescriptor(name=spec.name, type=types[_type_name(spec.default)],
                                     description=spec.description + (" [changing it reloads the map]"
                                                                      if spec.reload else ""))
    if spec.choices:
        descriptor.additional_constraints = "one of: " + ", ".join(spec.choices)
    if spec.name == "map_to_frame":
        descriptor.additional_constraints = "7 or 8 finite values, non-zero quaternion, positive scale"
    if spec.low is not None:
        if isinstance(spec.default, int) and not isinstance(spec.default, bool):
            descriptor.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)]
        else:
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(spec.low),
                                                                  to_value=float(spec.high), step=0.0)]
    return descriptor


def declare(node, on_change=None) -> NodeParams:
    """Declare every parameter on ``node`` and return their values.

    A validation callback is added first, so invalid overrides raise
    ``rclpy.exceptions.InvalidParameterValueException`` with the reason at declaration, and invalid
    run-time sets are refused with the reason. ``on_change(changes: dict)`` is called with the
    accepted changes (after validation, before they are stored).
    """
    from rcl_interfaces.msg import SetParametersResult

    declared = set()

    def check(parameters) -> SetParametersResult:
        problems = [validate(p.name, p.value) for p in parameters if p.name in BY_NAME]
        problems = [p for p in problems if p]
        if problems:
            return SetParametersResult(successful=False, reason="; ".join(problems))
        changes = {p.name: p.value for p in parameters if p.name in BY_NAME and p.name in declared}
        if changes and on_change is not None:
            on_change(changes)
        return SetParametersResult(successful=True, reason="")

    node.add_on_set_parameters_callback(check)
    for spec in PARAMETERS:
        node.declare_parameter(spec.name, spec.default, _descriptor(spec))
        declared.add(spec.name)
    return NodeParams().updated({spec.name: node.get_parameter(spec.name).value for spec in PARAMETERS})
