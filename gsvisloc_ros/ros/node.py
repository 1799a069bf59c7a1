"""The ``gsvisloc`` node: camera images in, the robot's pose in the 3DGS map out.

Two variants share every line of behaviour (:class:`GsvislocCore`): :class:`GsvislocNode`
(console script ``gsvisloc_node``) starts working at once; the managed one,
:class:`~gsvisloc_ros.ros.lifecycle.GsvislocLifecycleNode` (``gsvisloc_lifecycle_node``), waits for
a lifecycle manager: configure (parameters read, map loaded and encoded in the background),
activate (subscriptions live, outputs published), deactivate (nothing published, map and state
kept), cleanup, shutdown.

Interfaces (names relative to the node; remap ``image`` and ``camera_info``):

=================================  ======================================  =====================================
topic / service                    type                                    notes
=================================  ======================================  =====================================
``image`` (``image/compressed``)   sensor_msgs/Image (CompressedImage)     sensor-data QoS; compressed when
                                                                           ``use_compressed``; with ``cameras``
                                                                           set, ``<camera>/image`` for each
``camera_info``                    sensor_msgs/CameraInfo                  K and distortion (the image is
                                                                           undistorted before localization);
                                                                           ``<camera>/camera_info`` likewise
``/initialpose``                   geometry_msgs/PoseWithCovarianceStamped a hint of ``base_frame``: the newest
                                                                           frame is localized from it at once
``~/pose``                         geometry_msgs/PoseStamped               the optical frame of the camera that
                                                                           localized, in ``map_frame``
``~/pose_with_covariance``         geometry_msgs/PoseWithCovarianceStamped ``base_frame`` when base -> camera is
                                                                           in TF, else the camera; reliable,
                                                                           transient-local, depth 1
``~/path``                         nav_msgs/Path                           accepted poses (same frame as above)
``~/map_cloud``                    sensor_msgs/PointCloud2                 Gaussian centres with rgb,
                                                                           transient-local; again on a new map
``~/rendered``                     sensor_msgs/Image                       the map rendered at the accepted pose
                                                                           (only when subscribed)
``~/status``                       diagnostic_msgs/DiagnosticArray         per frame and at 1 Hz: quality score,
                                                                           inliers, inlier ratio, RMSE, seconds
                                                                           since the last fix, tracking/global
``/diagnostics``                   diagnostic_msgs/DiagnosticArray         status (``status_code``: a key of
                                                                           :data:`STATUS_CODES`), latency,
                                                                           inliers, drops, last failure
``/tf``                            tf2_msgs/TFMessage                      map -> odom (post-dated), else
                                                                           map -> base or camera
``~/trigger_localization``         std_srvs/Trigger                        ``on_demand``: localize the next frame
``~/relocalize``                   std_srvs/Trigger                        forget the track: a global search on
                                                                           the newest frame, at once
=================================  ======================================  =====================================

Every output about a frame carries that image's stamp (map -> odom: the stamp plus
``transform_tolerance``). Parameters: :mod:`gsvisloc_ros.ros.params`.

Work model: subscription callbacks never block. The newest frame of each camera waits in a slot
of one (:class:`~gsvisloc_ros.scheduling.FrameSlots`); a frame replaced before the worker took it
is dropped and counted; cameras take turns. One worker thread converts, undistorts and localizes
against the one map in memory; the map loads in its own thread, so the node comes up at once and
reports "loading" in the diagnostics. Setting ``map_path`` (or ``map_to_frame``) loads the new map
the same way while the old one keeps serving, then swaps (tracks and jump gates reset; a pose
computed on the old map is not published after the swap); a map that fails to load leaves the old
one in service. Each camera is tracked on its own: within ``track_timeout`` of its accepted fix,
its frames are localized from it (moved by odometry when odom -> camera is in TF) and a pose is
published only when the localizer accepted it and the jump gate let it through: both decided by
:class:`~gsvisloc_ros.tracking.Tracker`, the policy bag replay shares. Bad input never stops the
node: the reason goes to the diagnostics.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from nav_msgs.msg import Path
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from gsvisloc_ros import last_pose
from gsvisloc_ros.camera import invert_pose
from gsvisloc_ros.quality import FALLBACK_COVARIANCE, fix_quality, published_covariance
from gsvisloc_ros.ros import params as P
from gsvisloc_ros.ros.compat import (
    Buffer,
    TransformBroadcaster,
    TransformException,
    TransformListener,
    lookup_matrix,
)
from gsvisloc_ros.ros.messages import (
    CameraInfoError,
    ImageConversionError,
    camera_info_to_model,
    covariance_for_attached_frame,
    covariance_to_msg,
    make_point_cloud,
    make_transform_stamped,
    matrix_to_pose,
    message_to_rgb,
    pose_to_matrix,
    rgb_to_image,
)
from gsvisloc_ros.scheduling import FrameSlots
from gsvisloc_ros.tracking import Tracker

__all__ = ["FALLBACK_COVARIANCE", "GsvislocCore", "GsvislocNode", "R_BODY_OPTICAL", "STATUS_CODES", "main"]

#: Rotation from a REP-103 body frame (x forward, z up) to an optical frame (z forward, y down):
#: used for an /initialpose hint when base -> camera is not in TF (camera at the base, looking ahead).
R_BODY_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
#: Accepted poses kept on ~/path.
PATH_LENGTH = 1000

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR
#: The ``status_code`` value of the diagnostics (machine-readable; the message says it in words):
#: the node's state, or what happened to the last frame.
STATUS_CODES = ("starting", "loading", "ready", "map_error", "no_map", "internal_error", "bad_image",
                "no_camera_info", "bad_camera_info", "bad_input", "not_localized", "weak_geometry", "jump_rejected",
                "map_switched", "localized")


@dataclass
class _Frame:
    msg: object
    received: float  # time.monotonic() at arrival


@dataclass
class _Camera:
    """One camera stream: its topics, calibration, track and throttling state."""

    name: str  # its namespace ("" for the node's own image and camera_info)
    image_sub: object = None
    info_sub: object = None
    model: object = None  # CameraModel, or a str saying why camera_info is unusable
    model_key: tuple | None = None
    tracker: Tracker = field(default_factory=Tracker)
    armed: bool = False  # on_demand: localize the next frame
    bypass_rate: bool = False
    last_enqueued: float = -float("inf")
    newest: _Frame | None = None  # the last frame received (for requests made while the robot stands still)

    def topic(self, leaf: str) -> str:
        return f"{self.name.rstrip('/')}/{leaf}" if self.name else leaf


class _Stats:
    """Counters for the diagnostics (written by callbacks and the worker; ints are atomic enough)."""

    def __init__(self) -> None:
        self.received = 0
        self.dropped_stale = 0
        self.throttled = 0
        self.ignored = 0
        self.dropped_no_map = 0
        self.localized = 0
        self.accepted = 0
        self.not_localized = 0
        self.jumps_rejected = 0
        self.bad_input = 0
        self.dropped_map_switch = 0
        self.last_localize_ms = float("nan")
        self.last_latency_ms = float("nan")
        self.last_inliers = 0
        self.last_rmse_px = float("nan")
        self.last_failure = ""
        self.last_tracked = False
        self.last_quality = None  # FixQuality of the last frame localized
        self.last_camera = ""
        self.last_fix_stamp: Time | None = None  # image stamp of the last published pose


class GsvislocCore:
    """The behaviour of the ``gsvisloc`` node, mixed into ``rclpy.node.Node`` (:class:`GsvislocNode`)
    or ``rclpy.lifecycle.LifecycleNode`` (the managed variant). Its life in four steps:

    * :meth:`_init_core` (construction): state, parameters declared and validated;
    * :meth:`_open` (configure): publishers, services, TF, timers, the worker, map loading;
    * :meth:`_enable` / :meth:`_disable` (activate / deactivate): subscriptions, and whether anything
      about the localization is published (``/diagnostics`` goes on while inactive: the node's
      health is visible before it is activated);
    * :meth:`_close` (cleanup, shutdown, destruction): the worker stopped, everything destroyed, the map
      released.
    """

    def _init_core(self, localizer=None, gaussian_map=None, localizer_config=None) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        # Held while a fix is published, and while the map is swapped or the node deactivated (taken
        # before _lock): a pose computed on a map is never published after that map was replaced.
        self._output_lock = threading.Lock()
        self._stop = True  # not open
        self._active = False
        self._slots = FrameSlots()
        self._cameras: dict[str, _Camera] = {}
        self._stats = _Stats()
        self._initialpose = None
        self._saved = None  # last_pose.SavedPose: the prior of the first frame, once
        self._pose_file_note = ""
        self._last_map_odom: tuple[np.ndarray, str] | None = None
        self._path = Path()
        self._level, self._message, self._code = OK, "starting", "starting"
        self._map_state = "loading"
        self._map_info = ""
        self._map_error = ""  # why the last map load failed ("" after a success)
        self._pending_map = ""  # the map being loaded while another serves
        self._map_epoch = 0  # counts maps put into service
        self._map_id: tuple[str, tuple] = ("", ())  # (map_path, map_to_frame) of the map in service
        self._tf_note = ""
        self._generation = 0
        self._injected_localizer = localizer
        self._injected_map = gaussian_map
        self._base_config = localizer_config
        self._raw_localizer = None
        self._localizer = None  # the raw one with the node's acceptance thresholds
        self._entities: list[tuple[str, object]] = []  # (kind, handle) created by _open, destroyed by _close
        self._tf_timer = None
        self._worker = None
        self._params = P.declare(self, on_change=self._on_parameters)

    # ================================================================= life cycle

    def _open(self) -> None:
        """Publishers, services, TF, timers, the worker thread; start loading the map."""
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        with self._lock:
            self._stop = False
        self._pose_pub = self._make("publisher", PoseStamped, "~/pose", 10)
        self._pose_cov_pub = self._make("publisher", PoseWithCovarianceStamped, "~/pose_with_covariance", latched)
        self._path_pub = self._make("publisher", Path, "~/path", 1)
        self._cloud_pub = self._make("publisher", PointCloud2, "~/map_cloud", latched)
        self._rendered_pub = self._make("publisher", Image, "~/rendered", 1)
        self._status_pub = self._make("publisher", DiagnosticArray, "~/status", 10)
        self._diag_pub = self._make("publisher", DiagnosticArray, "/diagnostics", 10)
        self._make("service", Trigger, "~/trigger_localization", self._on_trigger)
        self._make("service", Trigger, "~/relocalize", self._on_relocalize)
        self._entities.append(("timer", self.create_timer(1.0, self._on_timer)))
        self._tf_buffer = Buffer(node=self)
        self._tf_listener = TransformListener(self._tf_buffer, self)
        self._tf_broadcaster = TransformBroadcaster(self)
        self._make_tf_timer()
        self._path = Path()
        self._worker = threading.Thread(target=self._work, name="gsvisloc-worker", daemon=True)
        self._worker.start()
        self._set_status(OK, "loading", "loading map")
        self._start_loading()
        self._publish_diagnostics()  # "loading" at once, before the map is there

    def _make(self, kind: str, *args):
        handle = (self.create_publisher if kind == "publisher" else self.create_service)(*args)
        self._entities.append((kind, handle))
        return handle

    def _enable(self) -> None:
        """Subscriptions live, outputs published (the map cloud again, for late joiners)."""
        self._subscribe_cameras()
        self._initialpose_sub = self.create_subscription(PoseWithCovarianceStamped, "/initialpose",
                                                         self._on_initialpose, 1)
        with self._lock:
            self._active = True
            localizer = self._raw_localizer
        if localizer is not None:
            self._publish_map_cloud(localizer.map, self._params)

    def _disable(self) -> None:
        """No subscription, nothing published; the map, tracks and counters are kept."""
        with self._output_lock, self._lock:
            self._active = False
            self._last_map_odom = None
            self._slots.clear()
        for camera in list(self._cameras.values()):
            self._unsubscribe(camera)  # the stream's calibration and track are kept
        if getattr(self, "_initialpose_sub", None) is not None:
            self.destroy_subscription(self._initialpose_sub)
            self._initialpose_sub = None

    def _close(self) -> None:
        """Stop the worker, destroy what :meth:`_open` made, release the map."""
        self._disable()
        with self._wake:
            was_open = not self._stop
            self._stop = True
            self._generation += 1  # a load in progress is discarded
            self._wake.notify_all()
        if not was_open:
            return
        if self._worker is not None and self._worker.is_alive() and threading.current_thread() is not self._worker:
            self._worker.join(timeout=30.0)
        self._worker = None
        if self._tf_timer is not None:
            self.destroy_timer(self._tf_timer)
            self._tf_timer = None
        try:
            self._tf_listener.unregister()
            self.destroy_publisher(self._tf_broadcaster.pub_tf)
        except Exception:  # noqa: BLE001 - a tf2_ros without these handles: they go with the node
            pass
        for kind, handle in reversed(self._entities):
            {"publisher": self.destroy_publisher, "service": self.destroy_service,
             "timer": self.destroy_timer}[kind](handle)
        self._entities = []
        with self._lock:
            self._raw_localizer = self._localizer = None
            self._map_state, self._map_info, self._pending_map = "loading", "", ""
        for camera in self._cameras.values():
            camera.tracker.reset()

    def destroy_node(self) -> None:
        self._close()
        super().destroy_node()

    # ================================================================= parameters

    def _on_parameters(self, changes: dict) -> None:
        """Apply validated run-time changes (called from the set-parameters callback)."""
        with self._lock:
            self._params = self._params.updated(changes)
            is_open, active = not self._stop, self._active
        p = self._params
        if P.TRACKING & set(changes):
            for camera in list(self._cameras.values()):
                camera.tracker.configure(p.tracking())
        if set(P.ACCEPTANCE_PARAMETERS) & set(changes) and self._raw_localizer is not None:
            self._localizer = self._with_thresholds(self._raw_localizer, p)
        if active and {"use_compressed", "cameras"} & set(changes):
            self._subscribe_cameras()
        if is_open and "tf_republish_rate" in changes:
            self._make_tf_timer()
        if active and "map_cloud_max_points" in changes and self._raw_localizer is not None:
            self._publish_map_cloud(self._raw_localizer.map, p)
        if is_open and any(P.BY_NAME[name].reload for name in changes):
            self._start_loading()

    def _subscribe_cameras(self) -> None:
        """One stream per entry of ``cameras`` (or the node's own ``image``), each with its camera_info."""
        names = P.camera_names(self._params.cameras) or [""]
        for name in [n for n in self._cameras if n not in names]:
            self._unsubscribe(self._cameras.pop(name))
        for name in names:
            camera = self._cameras.get(name) or _Camera(name, tracker=Tracker(self._params.tracking()))
            self._unsubscribe(camera)
            if self._params.use_compressed:
                camera.image_sub = self.create_subscription(
                    CompressedImage, camera.topic("image/compressed"),
                    lambda msg, c=camera: self._on_image(c, msg), qos_profile_sensor_data)
            else:
                camera.image_sub = self.create_subscription(Image, camera.topic("image"),
                                                            lambda msg, c=camera: self._on_image(c, msg),
                                                            qos_profile_sensor_data)
            camera.info_sub = self.create_subscription(CameraInfo, camera.topic("camera_info"),
                                                       lambda msg, c=camera: self._on_camera_info(c, msg),
                                                       qos_profile_sensor_data)
            self._cameras[name] = camera

    def _unsubscribe(self, camera: _Camera) -> None:
        for attr in ("image_sub", "info_sub"):
            if getattr(camera, attr) is not None:
                self.destroy_subscription(getattr(camera, attr))
                setattr(camera, attr, None)
        with self._lock:
            self._slots.forget(camera.name)

    @property
    def _camera(self):
        """The calibration of the first camera (None before its camera_info, a str when unusable)."""
        first = next(iter(self._cameras.values()), None)
        return None if first is None else first.model

    def _make_tf_timer(self) -> None:
        if self._tf_timer is not None:
            self.destroy_timer(self._tf_timer)
            self._tf_timer = None
        if self._params.tf_republish_rate > 0:
            self._tf_timer = self.create_timer(1.0 / self._params.tf_republish_rate, self._republish_map_odom)

    def _reset_tracks(self) -> None:
        for camera in list(self._cameras.values()):
            camera.tracker.reset()

    # ================================================================= map loading

    @staticmethod
    def _with_thresholds(localizer, p: P.NodeParams):
        """A variant of ``localizer`` (sharing its encoded scene) with the parameters' acceptance thresholds."""
        acceptance = dataclasses.replace(
            localizer.config.acceptance, min_inliers=p.min_inliers, min_inlier_ratio=p.min_inlier_ratio,
            max_rmse_px=p.max_rmse_px, min_coverage=p.min_inlier_coverage or None,
            max_position_uncertainty=p.max_position_uncertainty or None,
            max_rotation_uncertainty_deg=p.max_rotation_uncertainty_deg or None)
        return localizer.variant(acceptance=acceptance)

    def _start_loading(self) -> None:
        """Load the map of the current parameters in a thread; the map in service (if any) keeps serving."""
        with self._lock:
            self._generation += 1
            generation = self._generation
            if self._localizer is None:
                self._map_state = "loading"
            p = self._params
            self._pending_map = p.map_path or "a map given to the node"
        threading.Thread(target=self._load, args=(generation, p), name="gsvisloc-loader", daemon=True).start()

    def _load(self, generation: int, p: P.NodeParams) -> None:
        from gsvisloc_ros.localizer import Localizer, LocalizerConfig

        start = time.monotonic()
        if self._injected_localizer is not None:
            localizer, source = self._injected_localizer, "a Localizer given to the node"
            if not np.allclose(p.map_transform, np.eye(4)):
                self.get_logger().warning("map_to_frame is ignored: the node was given a built Localizer")
        else:
            source = p.map_path if self._injected_map is None else "a map given to the node"
            if self._localizer is None:
                self._set_status(OK, "loading", f"loading map {source}")
            try:
                if self._injected_map is not None:
                    gmap = self._injected_map
                elif not p.map_path:
                    raise ValueError("map_path is empty: set it to a 3DGS map (.ply or .splat)")
                else:
                    from gsvisloc_ros.io import load_map

                    gmap = load_map(p.map_path)
                if not np.allclose(p.map_transform, np.eye(4)):
                    gmap = gmap.transform(p.map_transform)
                config = dataclasses.replace(self._base_config or LocalizerConfig(), encoder=p.encoder,
                                             device=p.device, cache_dir=p.cache_dir or None,
                                             scene_encoder=p.scene_encoder,
                                             learned_weights=p.learned_weights or None)
                if p.upright:  # the map is in map_frame now, whose z is up (REP 103)
                    config = dataclasses.replace(config, scene=dataclasses.replace(config.scene, up=(0.0, 0.0, 1.0)))
                localizer = Localizer(gmap, config, progress=False)
            except Exception as exc:  # noqa: BLE001 - any failure is reported, the node keeps running
                with self._lock:
                    if generation != self._generation or self._stop:
                        return
                    self._pending_map = ""
                    serving = self._localizer is not None
                    if not serving:
                        self._map_state, self._map_info = "error", source
                    self._map_error = f"cannot load map {source}: {exc}" + (
                        f"; still localizing on {self._map_info}" if serving else "")
                self._fail(ERROR, "map_error", self._map_error, count=False)
                self.get_logger().error(self._map_error)
                self._publish_diagnostics()
                return
        with self._output_lock, self._wake:
            if generation != self._generation or self._stop:
                return
            switched = self._localizer is not None
            self._map_id = (p.map_path, tuple(p.map_to_frame))
            self._raw_localizer = localizer
            self._localizer = self._with_thresholds(localizer, self._params)
            self._map_epoch += 1
            self._map_state = "ready"
            self._map_info = f"{source} ({len(localizer.map)} Gaussians)"
            self._map_error = self._pending_map = ""
            self._last_map_odom = None  # an odom placement in the old map is no placement in the new one
            self._path.poses = []
            self._reset_tracks()  # poses in the old map are no prior in the new one
            self._wake.notify_all()
        self._read_saved_pose(p)
        verb = "switched to map" if switched else "map ready:"
        self._set_status(OK, "ready", f"{verb} {self._map_info}, loaded in {time.monotonic() - start:.1f} s")
        self.get_logger().info(f"{verb} {self._map_info}")
        self._publish_map_cloud(localizer.map, p)
        self._publish_diagnostics()

    def _read_saved_pose(self, p: P.NodeParams) -> None:
        """The pose saved in ``pose_file`` becomes the prior of the next frame (when it is of this map)."""
        self._saved = None
        if not p.pose_file:
            self._pose_file_note = "off"
            return
        try:
            saved = last_pose.load(p.pose_file)
        except FileNotFoundError:
            self._pose_file_note = f"no saved pose yet in {p.pose_file}"
            return
        except (last_pose.LastPoseError, OSError) as exc:
            self._pose_file_note = f"saved pose not used: {exc}"
            self.get_logger().warning(self._pose_file_note)
            return
        map_path, map_to_frame = self._map_id
        if not saved.same_map(map_path, map_to_frame) or saved.map_frame != p.map_frame:
            self._pose_file_note = (f"saved pose not used: it is of map {saved.map_path!r} in {saved.map_frame!r}, "
                                    f"not {map_path!r} in {p.map_frame!r}")
            return
        self._saved = saved
        self._pose_file_note = f"saved pose read from {p.pose_file}: the prior of the first frame"

    def _publish_map_cloud(self, gmap, p: P.NodeParams) -> None:
        if p.map_cloud_max_points <= 0 or self._stop or not self._active:
            return
        try:
            opaque = gmap.filter_opacity(0.3)
            cloud = (opaque if len(opaque) else gmap).subsample(p.map_cloud_max_points)
            self._cloud_pub.publish(make_point_cloud(cloud.means, cloud.colors, p.map_frame,
                                                     self.get_clock().now().to_msg()))
        except Exception as exc:  # noqa: BLE001 - a visualisation aid must not stop the node
            self.get_logger().warning(f"map cloud not published: {exc}")

    # ================================================================= callbacks (never block)

    def _on_image(self, camera: _Camera, msg) -> None:
        now = time.monotonic()
        with self._wake:
            self._stats.received += 1
            p = self._params
            frame = _Frame(msg, now)
            camera.newest = frame
            if p.mode == "on_demand":
                if not camera.armed:
                    self._stats.ignored += 1
                    return
                camera.armed = False
            elif not camera.bypass_rate and p.max_rate > 0 and now - camera.last_enqueued < 1.0 / p.max_rate:
                self._stats.throttled += 1
                return
            camera.bypass_rate = False
            camera.last_enqueued = now
            if self._slots.put(camera.name, frame):
                self._stats.dropped_stale += 1
            self._wake.notify_all()

    def _on_camera_info(self, camera: _Camera, msg: CameraInfo) -> None:
        key = (tuple(msg.k), tuple(msg.d), msg.distortion_model, msg.width, msg.height, msg.binning_x,
               msg.binning_y, msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height, msg.header.frame_id)
        if key == camera.model_key:
            return
        try:
            model = camera_info_to_model(msg)
        except CameraInfoError as exc:
            model = str(exc)
            self.get_logger().error(f"bad camera_info: {exc}", throttle_duration_sec=10.0)
        except Exception as exc:  # noqa: BLE001 - malformed message
            model = f"unreadable camera_info: {exc}"
        camera.model, camera.model_key = model, key

    def _request_now(self) -> str:
        """Localize soon: each camera's next frame skips on_demand and max_rate, and the newest frame
        received is localized at once when none waits (the robot may be standing still). Returns a note."""
        with self._wake:
            for camera in self._cameras.values():
                camera.armed = camera.bypass_rate = True
            newest = max((c for c in self._cameras.values() if c.newest is not None),
                         key=lambda c: c.newest.received, default=None)
            if newest is None or self._slots.pending():
                return "the next frame will be localized"
            newest.armed = newest.bypass_rate = False
            self._slots.put(newest.name, _Frame(newest.newest.msg, time.monotonic()))
            self._wake.notify_all()
            return "the newest frame is localized now"

    def _on_initialpose(self, msg: PoseWithCovarianceStamped) -> None:
        with self._lock:
            self._initialpose = msg
            self._saved = None
        self._reset_tracks()
        how = self._request_now()
        self.get_logger().info(f"initial pose received in frame {msg.header.frame_id!r}: the prior of the next "
                               f"localization ({how})")

    def _on_trigger(self, request, response):
        with self._wake:
            if self._map_state == "error":
                response.success, response.message = False, f"no map: {self._message}"
                return response
            if self._params.mode == "on_demand":
                for camera in self._cameras.values():
                    camera.armed = True
                response.message = "the next frame will be localized"
            else:
                for camera in self._cameras.values():
                    camera.bypass_rate = True
                response.message = "localizing continuously; the next frame skips the max_rate limit"
            if self._map_state == "loading":
                response.message += " (once the map has loaded)"
        response.success = True
        return response

    def _on_relocalize(self, request, response):
        """Forget the tracks (and a pending hint): the next localization is a global search."""
        with self._lock:
            state, self._initialpose, self._saved = self._map_state, None, None
        if state == "error":
            response.success, response.message = False, f"no map: {self._message}"
            return response
        self._reset_tracks()
        if not self._active:
            response.success, response.message = False, "the node is not active: no frame to localize"
            return response
        response.success = True
        response.message = f"track forgotten; {self._request_now()} by a global search" + (
            " (once the map has loaded)" if state == "loading" else "")
        return response

    # ================================================================= the worker

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._stop and (not self._slots.pending() or (self._map_state == "loading"
                                                                        and self._localizer is None)):
                    self._wake.wait(0.5)
                if self._stop:
                    return
                name, frame = self._slots.take()
                camera = self._cameras.get(name)
                localizer, epoch = self._localizer, self._map_epoch
            if camera is None:  # unsubscribed meanwhile
                continue
            try:
                if localizer is None:
                    self._stats.dropped_no_map += 1
                    self._fail(ERROR, "no_map", f"frame dropped: no map ({self._message})", count=False,
                               stamp=frame.msg.header.stamp)
                    continue
                self._process(camera, frame, localizer, epoch)
            except Exception as exc:  # noqa: BLE001 - never let one frame stop the worker
                self._fail(ERROR, "internal_error", f"internal error on a frame: {type(exc).__name__}: {exc}",
                           stamp=getattr(frame.msg.header, "stamp", None))
                self.get_logger().error(f"internal error on a frame: {exc!r}")

    def _process(self, camera: _Camera, frame: _Frame, localizer, epoch: int) -> None:
        msg, p = frame.msg, self._params
        stamp = msg.header.stamp
        try:
            image = message_to_rgb(msg)
        except ImageConversionError as exc:
            return self._fail(ERROR, "bad_image", f"bad image: {exc}", stamp=stamp)
        model = camera.model
        if model is None:
            topic = self.resolve_topic_name(camera.topic("camera_info"))
            return self._fail(WARN, "no_camera_info", f"no camera_info received yet on {topic}", stamp=stamp)
        if isinstance(model, str):
            return self._fail(ERROR, "bad_camera_info", f"bad camera_info: {model}", stamp=stamp)
        h, w = image.shape[:2]
        if (w, h) != model.camera.size:
            return self._fail(ERROR, "bad_input", f"bad input: the image is {w}x{h} but camera_info is for "
                                     f"{model.camera.width}x{model.camera.height}", stamp=stamp)
        camera_frame = (p.camera_frame if len(self._cameras) == 1 else "") or msg.header.frame_id or model.frame_id
        if not camera_frame:
            return self._fail(ERROR, "bad_input", "bad input: the image has no frame_id and camera_frame is not set",
                              stamp=stamp)
        image = model.undistort(image)
        prior, prior_note = self._take_prior(camera_frame, p)
        T_odom_camera = self._lookup(p.odom_frame, camera_frame, stamp) if p.odom_frame else None

        start = time.monotonic()
        tracked = camera.tracker.localize(localizer, image, model.camera, Time.from_msg(stamp).nanoseconds / 1e9,
                                          camera_frame, T_odom_camera, prior, prior_note)
        result, prior_note = tracked.result, tracked.prior_note
        s = self._stats
        s.localized += 1
        s.last_tracked = tracked.from_track
        s.last_camera = camera.name
        s.last_localize_ms = 1000.0 * (time.monotonic() - start)
        s.last_inliers = int(result.num_inliers)
        s.last_rmse_px = float(result.reprojection_rmse_px)
        s.last_quality = fix_quality(result, tracked.trusted, p.min_inliers, p.min_inlier_ratio, p.max_rmse_px)
        with self._output_lock:
            self._conclude(camera, frame, tracked, epoch, camera_frame, model, p, localizer)
        self._publish_status(stamp)

    def _conclude(self, camera: _Camera, frame: _Frame, tracked, epoch: int, camera_frame: str, model,
                  p: P.NodeParams, localizer) -> None:
        """Publish the answer to a localized frame, or say why there is none (under the output lock)."""
        s, result, prior_note, stamp = self._stats, tracked.result, tracked.prior_note, frame.msg.header.stamp
        with self._lock:
            active, map_id = self._active and not self._stop, self._map_id
            switched = epoch != self._map_epoch
        if not active:  # deactivated while this frame was localized: nothing is published
            return
        if switched:  # the map was replaced while this frame was localized on the old one
            camera.tracker.reset()  # its track would be of the old map
            s.dropped_map_switch += 1
            s.last_quality = dataclasses.replace(s.last_quality, localized=False, score=0.0)
            return self._fail(WARN, "map_switched", "frame dropped: the map was switched while it was localized",
                              stamp=stamp, count=False)
        if not result.success:
            s.not_localized += 1
            code = "weak_geometry" if result.weak_geometry else "not_localized"
            return self._fail(WARN, code, f"not localized: {result.failure_reason}{prior_note}", stamp=stamp,
                              count=False)
        if not tracked.trusted:
            s.jumps_rejected += 1
            return self._fail(WARN, "jump_rejected", tracked.note, stamp=stamp, count=False)
        T_map_camera = np.asarray(result.T_world_camera, dtype=float)
        T_map_base = self._publish_fix(T_map_camera, result, camera_frame, stamp, model, p, localizer)
        s.accepted += 1
        s.last_fix_stamp = Time.from_msg(stamp)
        s.last_latency_ms = 1000.0 * (time.monotonic() - frame.received)
        self._save_pose(T_map_camera, T_map_base, camera_frame, stamp, p, map_id)
        note = tracked.note
        self._set_status(OK, "localized",
                         f"localized: {result.num_inliers} inliers, rmse {result.reprojection_rmse_px:.2f} px"
                         + (f" ({camera.name})" if camera.name else "")
                         + (f"; {note}" if note else "") + prior_note + (f"; {self._tf_note}" if self._tf_note else ""))
        self._publish_diagnostics(stamp)

    def _save_pose(self, T_map_camera, T_map_base, camera_frame: str, stamp, p: P.NodeParams,
                   map_id: tuple[str, tuple]) -> None:
        """Write the fix to ``pose_file``, with the map it is in (``map_id``: the one in service)."""
        if not p.pose_file:
            return
        try:
            last_pose.save(p.pose_file, last_pose.SavedPose(
                stamp=Time.from_msg(stamp).nanoseconds / 1e9, map_path=map_id[0],
                map_to_frame=tuple(map_id[1]), map_frame=p.map_frame, camera_frame=camera_frame,
                T_map_camera=T_map_camera, base_frame=p.base_frame if T_map_base is not None else "",
                T_map_base=T_map_base))
            self._pose_file_note = f"last pose written to {p.pose_file}"
        except OSError as exc:
            self._pose_file_note = f"cannot write {p.pose_file}: {exc}"
            self.get_logger().warning(self._pose_file_note, throttle_duration_sec=10.0)

    # ================================================================= outputs

    def _lookup(self, target: str, source: str, stamp, timeout: float = 0.0) -> np.ndarray | None:
        """``T_target_source`` at ``stamp``, else the latest, else None."""
        if target == source:
            return np.eye(4)
        for when in (stamp, None):
            try:
                return lookup_matrix(self._tf_buffer, target, source, when, timeout if when is not None else 0.0)
            except TransformException:
                continue
            except Exception:  # noqa: BLE001 - a malformed transform in the buffer
                return None
        return None

    def _take_prior(self, camera_frame: str, p: P.NodeParams) -> tuple[np.ndarray | None, str]:
        """The camera pose in map_frame from a pending /initialpose, else from the saved last pose
        (either consumed), and a note about it."""
        with self._lock:
            msg, self._initialpose = self._initialpose, None
            saved = self._saved if msg is None else None
            self._saved = None
        if saved is not None:
            T_base_camera = self._lookup(saved.base_frame, camera_frame, None) if saved.base_frame else None
            prior = saved.prior_for(camera_frame, T_base_camera)
            if prior is None:
                return None, f" (saved pose not used: it is of {saved.camera_frame}, and {saved.base_frame or 'base'}" \
                             f" -> {camera_frame} is not in TF)"
            return prior, " (last saved pose used as prior)"
        if msg is None:
            return None, ""
        try:
            T_frame_base = pose_to_matrix(msg.pose.pose)
        except ValueError as exc:
            return None, f" (initialpose ignored: {exc})"
        frame = msg.header.frame_id.lstrip("/") or p.map_frame
        T_map_frame = self._lookup(p.map_frame, frame, None)
        if T_map_frame is None:
            return None, f" (initialpose ignored: no transform {p.map_frame} -> {frame})"
        T_map_base = T_map_frame @ T_frame_base
        T_base_camera = self._lookup(p.base_frame, camera_frame, None) if p.base_frame else None
        if T_base_camera is None:
            T_base_camera = np.eye(4)
            T_base_camera[:3, :3] = R_BODY_OPTICAL
            return T_map_base @ T_base_camera, " (initialpose used as prior, camera assumed at the base looking ahead)"
        return T_map_base @ T_base_camera, " (initialpose used as prior)"

    def _publish_fix(self, T_map_camera, result, camera_frame: str, stamp, model, p: P.NodeParams,
                     localizer) -> np.ndarray | None:
        """Publish an accepted pose (pose, pose with covariance, path, TF, render); returns T_map_base
        when base -> camera is known."""
        pose = PoseStamped()
        pose.header.stamp, pose.header.frame_id = stamp, p.map_frame
        pose.pose = matrix_to_pose(T_map_camera)
        self._pose_pub.publish(pose)

        covariance = published_covariance(result.covariance, p.covariance_scale)
        T_camera_base = None
        if p.base_frame and p.base_frame != camera_frame:
            T_camera_base = self._lookup(camera_frame, p.base_frame, stamp)
        elif p.base_frame:
            T_camera_base = np.eye(4)
        T_map_base = None
        if T_camera_base is not None:
            T_out = T_map_base = T_map_camera @ T_camera_base
            covariance = covariance_for_attached_frame(covariance, T_map_camera, T_camera_base)
        else:
            T_out = T_map_camera
        with_cov = PoseWithCovarianceStamped()
        with_cov.header = pose.header
        with_cov.pose.pose = matrix_to_pose(T_out)
        with_cov.pose.covariance = covariance_to_msg(covariance)
        self._pose_cov_pub.publish(with_cov)

        self._path.header = pose.header
        self._path.poses = (self._path.poses + [PoseStamped(header=pose.header, pose=with_cov.pose.pose)])[
            -PATH_LENGTH:]
        self._path_pub.publish(self._path)

        if p.publish_tf:
            self._publish_tf(T_map_camera, camera_frame, stamp, p)
        if self._rendered_pub.get_subscription_count() > 0:
            from gsvisloc_ros.render import render

            rendered = render(localizer.map, model.camera, invert_pose(T_map_camera), backend=localizer.backend).rgb_u8
            self._rendered_pub.publish(rgb_to_image(rendered, "rgb8", Header(stamp=stamp, frame_id=camera_frame)))
        return T_map_base
    def _publish_tf(self, T_map_camera: np.ndarray, camera_frame: str, stamp, p: P.NodeParams) -> None:
        self._tf_note = ""
        odom = p.odom_frame
        if odom and odom not in (camera_frame, p.map_frame) and self._tf_buffer.can_transform(odom, camera_frame,
                                                                                               Time()):
            try:
                T_odom_camera = lookup_matrix(self._tf_buffer, odom, camera_frame, stamp, 0.2)
            except TransformException as exc:
                self._tf_note = f"map -> {odom} not published: no {odom} -> {camera_frame} at the image stamp ({exc})"
                return
            T_map_odom = T_map_camera @ invert_pose(T_odom_camera)
            with self._lock:
                self._last_map_odom = (T_map_odom, odom)
            post_dated = (Time.from_msg(stamp) + Duration(seconds=p.transform_tolerance)).to_msg()
            self._tf_broadcaster.sendTransform(make_transform_stamped(T_map_odom, p.map_frame, odom, post_dated))
            return
        with self._lock:
            self._last_map_odom = None
        T_camera_base = None
        if p.base_frame and p.base_frame != camera_frame:
            T_camera_base = self._lookup(camera_frame, p.base_frame, stamp)
        if T_camera_base is not None:
            child, T = p.base_frame, T_map_camera @ T_camera_base
        else:
            child, T = camera_frame, T_map_camera
        self._tf_broadcaster.sendTransform(make_transform_stamped(T, p.map_frame, child, stamp))

    def _republish_map_odom(self) -> None:
        p = self._params
        with self._lock:
            last = self._last_map_odom if self._active else None
        if last is None or not p.publish_tf:
            return
        stamp = (self.get_clock().now() + Duration(seconds=p.transform_tolerance)).to_msg()
        self._tf_broadcaster.sendTransform(make_transform_stamped(last[0], p.map_frame, last[1], stamp))

    # ================================================================= diagnostics and status

    def _set_status(self, level, code: str, message: str) -> None:
        """The current status: its level, its :data:`STATUS_CODES` entry and the sentence for people."""
        self._level, self._code, self._message = level, code, message

    def _fail(self, level, code: str, reason: str, stamp=None, count: bool = True) -> None:
        if count:
            self._stats.bad_input += 1
        self._stats.last_failure = reason
        self._set_status(level, code, reason)
        if stamp is not None:
            self._publish_diagnostics(stamp)

    def _on_timer(self) -> None:
        self._publish_diagnostics()
        self._publish_status()

    def _publish_diagnostics(self, stamp=None) -> None:
        """/diagnostics (while configured, active or not): the node's state and the last frame's fate."""
        self._publish_report(lambda: self._diag_pub, self._diagnostics, stamp, need_active=False)

    def _publish_status(self, stamp=None) -> None:
        """~/status (while active): after each frame the localizer answered (its stamp), and at 1 Hz (now)."""
        self._publish_report(lambda: self._status_pub, self._status, stamp, need_active=True)

    def _publish_report(self, publisher, make, stamp, need_active: bool) -> None:
        if self._stop or (need_active and not self._active):
            return
        try:
            publisher().publish(make(stamp))
        except Exception:  # noqa: BLE001 - the node is being destroyed by another thread
            pass

    def _since_fix(self, stamp=None) -> float:
        """Seconds from the last published pose's image stamp to ``stamp`` (now when None); inf if none."""
        last = self._stats.last_fix_stamp
        if last is None:
            return float("inf")
        now = Time.from_msg(stamp) if stamp is not None else self.get_clock().now()
        return (now.nanoseconds - last.nanoseconds) / 1e9

    def _quality_values(self, stamp=None) -> dict:
        q = self._stats.last_quality
        since = self._since_fix(stamp)
        values = {
            "quality": "0.000" if q is None else f"{q.score:.3f}",
            "localized": "false" if q is None else str(q.localized).lower(),
            "localization_mode": "none" if q is None else q.mode,
            "inliers": "0" if q is None else str(q.inliers),
            "inlier_ratio": "0.000" if q is None else f"{q.inlier_ratio:.3f}",
            "rmse_px": "nan" if q is None else f"{q.rmse_px:.3f}",
            "seconds_since_fix": "inf" if not np.isfinite(since) else f"{since:.3f}",
        }
        if len(self._cameras) > 1:
            values["camera"] = self._stats.last_camera
        return values

    def _status(self, stamp=None) -> DiagnosticArray:
        """~/status: what a robot acts on (see :class:`~gsvisloc_ros.quality.FixQuality`); the level is OK
        when the frame gave a pose, WARN when it did not, ERROR without a map."""
        q = self._stats.last_quality
        level = ERROR if self._localizer is None else WARN if q is not None and not q.localized else OK
        status = DiagnosticStatus(level=level, name=f"{self.get_fully_qualified_name()}: status",
                                  message=self._message, hardware_id=self._params.map_path or "gsvisloc")
        status.values = [KeyValue(key=k, value=v) for k, v in
                         {"status_code": self._code, **self._quality_values(stamp)}.items()]
        array = DiagnosticArray()
        array.header.stamp = stamp if stamp is not None else self.get_clock().now().to_msg()
        array.status = [status]
        return array

    def _camera_description(self) -> str:
        def one(model):
            return ("none yet" if model is None else f"bad: {model}" if isinstance(model, str)
                    else f"{model.camera.width}x{model.camera.height}, distortion {model.distortion_model}")

        cameras = list(self._cameras.values())
        if len(cameras) <= 1:
            return one(cameras[0].model if cameras else None)
        return "; ".join(f"{c.name}: {one(c.model)}" for c in cameras)

    def _diagnostics(self, stamp=None) -> DiagnosticArray:
        s, p = self._stats, self._params
        level, message = self._level, self._message
        if self._map_state == "error":
            level = ERROR
        status = DiagnosticStatus(level=level, name=f"{self.get_fully_qualified_name()}: localization",
                                  message=message, hardware_id=p.map_path or "gsvisloc")
        values = {
            "status_code": self._code,
            "state": self._map_state,
            "active": str(self._active).lower(),
            "map": self._map_info,
            "map_loading": self._pending_map,
            "map_error": self._map_error,
            "mode": p.mode,
            "cameras": ", ".join(c.name or "(image)" for c in self._cameras.values()),
            "camera_info": self._camera_description(),
            "last_localize_ms": f"{s.last_localize_ms:.1f}",
            "last_latency_ms": f"{s.last_latency_ms:.1f}",
            "last_inliers": str(s.last_inliers),
            "last_rmse_px": f"{s.last_rmse_px:.3f}",
            "last_tracked": str(s.last_tracked).lower(),
            **self._quality_values(stamp),
            "frames_received": str(s.received),
            "frames_localized": str(s.localized),
            "frames_accepted": str(s.accepted),
            "frames_not_localized": str(s.not_localized),
            "frames_dropped": str(s.dropped_stale + s.dropped_no_map),
            "frames_dropped_stale": str(s.dropped_stale),
            "frames_dropped_no_map": str(s.dropped_no_map),
            "frames_dropped_map_switch": str(s.dropped_map_switch),
            "frames_throttled": str(s.throttled),
            "frames_ignored_on_demand": str(s.ignored),
            "frames_bad_input": str(s.bad_input),
            "jumps_rejected": str(s.jumps_rejected),
            "last_failure": s.last_failure,
            "pose_file": self._pose_file_note or ("off" if not p.pose_file else ""),
            "tf": self._tf_note or ("off" if not p.publish_tf else "ok"),
        }
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array = DiagnosticArray()
        array.header.stamp = stamp if stamp is not None else self.get_clock().now().to_msg()
        array.status = [status]
        return array


class GsvislocNode(GsvislocCore, Node):
    """The ``gsvisloc`` node, working from construction on (see the module docstring).

    Args:
        node_name: the node's name.
        localizer: an already built Localizer to use instead of loading ``map_path`` (tests,
            embedding); its acceptance thresholds are overridden by the node's parameters on a
            :meth:`~gsvisloc_ros.localizer.Localizer.variant`, the object passed in is not modified.
        gaussian_map: a map to encode instead of reading ``map_path`` (``map_to_frame`` applies).
        localizer_config: the LocalizerConfig to start from (``encoder``, ``device``, ``cache_dir``
            and the acceptance thresholds come from the parameters).
        **kwargs: passed to ``rclpy.node.Node`` (``namespace``, ``context``, ``parameter_overrides``, ...).
    """

    def __init__(self, node_name: str = "gsvisloc", *, localizer=None, gaussian_map=None, localizer_config=None,
                 **kwargs) -> None:
        Node.__init__(self, node_name, **kwargs)
        self._init_core(localizer, gaussian_map, localizer_config)
        self._open()
        self._enable()


def spin(node_type, args: list[str] | None, script: str) -> int:
    """Run a node of ``node_type`` until Ctrl-C or shutdown (the body of the console scripts)."""
    from rclpy.exceptions import ParameterException
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    rclpy.init(args=args)
    try:
        node = node_type()
    except (ParameterException, ValueError, TypeError) as exc:
        print(f"{script}: invalid parameter: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def main(args: list[str] | None = None) -> int:
    """Console script ``gsvisloc_node``: run the node until Ctrl-C or shutdown."""
    return spin(GsvislocNode, args, "gsvisloc_node")


if __name__ == "__main__":
    sys.exit(main())
