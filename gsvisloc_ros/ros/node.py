"""The ``gsvisloc`` node: camera images in, the camera's pose in the 3DGS map out.

Interfaces (names relative to the node; remap ``image`` and ``camera_info``):

=================================  ======================================  =====================================
topic / service                    type                                    notes
=================================  ======================================  =====================================
``image`` (``image/compressed``)   sensor_msgs/Image (CompressedImage)     sensor-data QoS; compressed when
                                                                           ``use_compressed``
``camera_info``                    sensor_msgs/CameraInfo                  K and distortion (the image is
                                                                           undistorted before localization)
``/initialpose``                   geometry_msgs/PoseWithCovarianceStamped a hint of ``base_frame``: the prior of
                                                                           the next localization
``~/pose``                         geometry_msgs/PoseStamped               the camera optical frame in
                                                                           ``map_frame``
``~/pose_with_covariance``         geometry_msgs/PoseWithCovarianceStamped ``base_frame`` when base -> camera is
                                                                           in TF, else the camera; reliable,
                                                                           transient-local, depth 1
``~/path``                         nav_msgs/Path                           accepted poses (same frame as above)
``~/map_cloud``                    sensor_msgs/PointCloud2                 Gaussian centres with rgb,
                                                                           transient-local
``~/rendered``                     sensor_msgs/Image                       the map rendered at the accepted pose
                                                                           (only when subscribed)
``/diagnostics``                   diagnostic_msgs/DiagnosticArray         status (``status_code``: a key of
                                                                           :data:`STATUS_CODES`), latency,
                                                                           inliers, drops, last failure
``/tf``                            tf2_msgs/TFMessage                      map -> odom (post-dated), else
                                                                           map -> base or camera
``~/trigger_localization``         std_srvs/Trigger                        ``on_demand``: localize the next frame
=================================  ======================================  =====================================

Every output about a frame carries that image's stamp (map -> odom: the stamp plus
``transform_tolerance``). Parameters: :mod:`gsvisloc_ros.ros.params`.

Work model: subscription callbacks never block. The newest frame waits in a slot of one; a frame
replaced before the worker took it is dropped and counted. One worker thread converts, undistorts
and localizes; the map loads in its own thread, so the node comes up at once and reports
"loading" in the diagnostics. Within ``track_timeout`` of an accepted fix, frames are localized from
it (moved by odometry when odom -> camera is in TF) and a pose is published only when the
localizer accepted it and the jump gate let it through: both decided by
:class:`~gsvisloc_ros.tracking.Tracker`, the policy bag replay shares.
Bad input never stops the node: the reason goes to the diagnostics.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from dataclasses import dataclass

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

from gsvisloc_ros.camera import invert_pose
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
from gsvisloc_ros.tracking import Tracker

#: Rotation from a REP-103 body frame (x forward, z up) to an optical frame (z forward, y down):
#: used for an /initialpose hint when base -> camera is not in TF (camera at the base, looking ahead).
R_BODY_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
#: Accepted poses kept on ~/path.
PATH_LENGTH = 1000
#: Covariance published when the localizer accepted a pose whose covariance is undefined
#: (degenerate geometry): variances of 1 map unit^2 and 0.1 rad^2, i.e. "position roughly known".
FALLBACK_COVARIANCE = np.diag([1.0, 1.0, 1.0, 0.1, 0.1, 0.1])

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR
#: The ``status_code`` value of the diagnostics (machine-readable; the message says it in words):
#: the node's state, or what happened to the last frame.
STATUS_CODES = ("starting", "loading", "ready", "map_error", "no_map", "internal_error", "bad_image",
                "no_camera_info", "bad_camera_info", "bad_input", "not_localized", "weak_geometry", "jump_rejected",
                "localized")


@dataclass
class _Frame:
    msg: object
    received: float  # time.monotonic() at arrival


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
        self.last_localize_ms = float("nan")
        self.last_latency_ms = float("nan")
        self.last_inliers = 0
        self.last_rmse_px = float("nan")
        self.last_failure = ""
        self.last_tracked = False


class GsvislocNode(Node):
    """The ROS 2 shell around :class:`~gsvisloc_ros.localizer.Localizer` (see the module docstring).

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
        super().__init__(node_name, **kwargs)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stop = False
        self._slot: _Frame | None = None
        self._armed = False  # on_demand: localize the next frame
        self._bypass_rate = False
        self._last_enqueued = -float("inf")
        self._stats = _Stats()
        self._camera = None  # CameraModel, or a str saying why camera_info is unusable
        self._camera_key = None
        self._initialpose = None
        self._last_map_odom: tuple[np.ndarray, str] | None = None
        self._path = Path()
        self._level, self._message, self._code = OK, "starting", "starting"
        self._map_state = "loading"
        self._map_info = ""
        self._tf_note = ""
        self._generation = 0
        self._injected_localizer = localizer
        self._injected_map = gaussian_map
        self._base_config = localizer_config
        self._raw_localizer = None
        self._localizer = None  # the raw one with the node's acceptance thresholds

        self._params = P.declare(self, on_change=self._on_parameters)
        self._tracker = Tracker(self._params.tracking())

        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._pose_pub = self.create_publisher(PoseStamped, "~/pose", 10)
        self._pose_cov_pub = self.create_publisher(PoseWithCovarianceStamped, "~/pose_with_covariance", latched)
        self._path_pub = self.create_publisher(Path, "~/path", 1)
        self._cloud_pub = self.create_publisher(PointCloud2, "~/map_cloud", latched)
        self._rendered_pub = self.create_publisher(Image, "~/rendered", 1)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._tf_buffer = Buffer(node=self)
        self._tf_listener = TransformListener(self._tf_buffer, self)
        self._tf_broadcaster = TransformBroadcaster(self)

        self._image_sub = None
        self._subscribe_images()
        self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, qos_profile_sensor_data)
        self.create_subscription(PoseWithCovarianceStamped, "/initialpose", self._on_initialpose, 1)
        self.create_service(Trigger, "~/trigger_localization", self._on_trigger)
        self.create_timer(1.0, self._publish_diagnostics)
        self._tf_timer = None
        self._make_tf_timer()

        self._worker = threading.Thread(target=self._work, name="gsvisloc-worker", daemon=True)
        self._worker.start()
        self._set_status(OK, "loading", "loading map")
        self._start_loading()
        self._publish_diagnostics()  # "loading" at once, before the map is there

    # ================================================================= parameters

    def _on_parameters(self, changes: dict) -> None:
        """Apply validated run-time changes (called from the set-parameters callback)."""
        with self._lock:
            self._params = self._params.updated(changes)
        p = self._params
        if P.TRACKING & set(changes):
            self._tracker.configure(p.tracking())
        if set(P.ACCEPTANCE_PARAMETERS) & set(changes) and self._raw_localizer is not None:
            self._localizer = self._with_thresholds(self._raw_localizer, p)
        if "use_compressed" in changes:
            self._subscribe_images()
        if "tf_republish_rate" in changes:
            self._make_tf_timer()
        if "map_cloud_max_points" in changes and self._raw_localizer is not None:
            self._publish_map_cloud(self._raw_localizer.map, p)
        if any(P.BY_NAME[name].reload for name in changes):
            self._start_loading()

    def _subscribe_images(self) -> None:
        if self._image_sub is not None:
            self.destroy_subscription(self._image_sub)
        if self._params.use_compressed:
            self._image_sub = self.create_subscription(CompressedImage, "image/compressed", self._on_image,
                                                       qos_profile_sensor_data)
        else:
            self._image_sub = self.create_subscription(Image, "image", self._on_image, qos_profile_sensor_data)

    def _make_tf_timer(self) -> None:
        if self._tf_timer is not None:
            self.destroy_timer(self._tf_timer)
            self._tf_timer = None
        if self._params.tf_republish_rate > 0:
            self._tf_timer = self.create_timer(1.0 / self._params.tf_republish_rate, self._republish_map_odom)

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
        with self._lock:
            self._generation += 1
            generation = self._generation
            self._map_state = "loading"
        self._tracker.reset()  # poses in the old map are no prior in the new one
        threading.Thread(target=self._load, args=(generation, self._params), name="gsvisloc-loader",
                         daemon=True).start()

    def _load(self, generation: int, p: P.NodeParams) -> None:
        from gsvisloc_ros.localizer import Localizer, LocalizerConfig

        start = time.monotonic()
        if self._injected_localizer is not None:
            localizer, source = self._injected_localizer, "a Localizer given to the node"
            if not np.allclose(p.map_transform, np.eye(4)):
                self.get_logger().warning("map_to_frame is ignored: the node was given a built Localizer")
        else:
            source = p.map_path if self._injected_map is None else "a map given to the node"
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
                                             device=p.device, cache_dir=p.cache_dir or None)
                localizer = Localizer(gmap, config, progress=False)
            except Exception as exc:  # noqa: BLE001 - any failure is reported, the node keeps running
                with self._lock:
                    if generation != self._generation or self._stop:
                        return
                    self._map_state, self._raw_localizer, self._localizer = "error", None, None
                self._map_info = source
                self._fail(ERROR, "map_error", f"cannot load map {source}: {exc}", count=False)
                self.get_logger().error(f"cannot load map {source}: {exc}")
                return
        with self._wake:
            if generation != self._generation or self._stop:
                return
            self._raw_localizer = localizer
            self._localizer = self._with_thresholds(localizer, self._params)
            self._map_state = "ready"
            self._map_info = f"{source} ({len(localizer.map)} Gaussians)"
            self._tracker.reset()
            self._path.poses = []
            self._wake.notify_all()
        self._set_status(OK, "ready", f"map ready: {self._map_info}, loaded in {time.monotonic() - start:.1f} s")
        self.get_logger().info(f"map ready: {self._map_info}")
        self._publish_map_cloud(localizer.map, p)
        self._publish_diagnostics()

    def _publish_map_cloud(self, gmap, p: P.NodeParams) -> None:
        if p.map_cloud_max_points <= 0 or self._stop:
            return
        try:
            opaque = gmap.filter_opacity(0.3)
            cloud = (opaque if len(opaque) else gmap).subsample(p.map_cloud_max_points)
            self._cloud_pub.publish(make_point_cloud(cloud.means, cloud.colors, p.map_frame,
                                                     self.get_clock().now().to_msg()))
        except Exception as exc:  # noqa: BLE001 - a visualisation aid must not stop the node
            self.get_logger().warning(f"map cloud not published: {exc}")

    # ================================================================= callbacks (never block)

    def _on_image(self, msg) -> None:
        now = time.monotonic()
        with self._wake:
            self._stats.received += 1
            p = self._params
            if p.mode == "on_demand":
                if not self._armed:
                    self._stats.ignored += 1
                    return
                self._armed = False
            elif not self._bypass_rate and p.max_rate > 0 and now - self._last_enqueued < 1.0 / p.max_rate:
                self._stats.throttled += 1
                return
            self._bypass_rate = False
            self._last_enqueued = now
            if self._slot is not None:
                self._stats.dropped_stale += 1
            self._slot = _Frame(msg, now)
            self._wake.notify_all()

    def _on_camera_info(self, msg: CameraInfo) -> None:
        key = (tuple(msg.k), tuple(msg.d), msg.distortion_model, msg.width, msg.height, msg.binning_x,
               msg.binning_y, msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height, msg.header.frame_id)
        if key == self._camera_key:
            return
        try:
            camera = camera_info_to_model(msg)
        except CameraInfoError as exc:
            camera = str(exc)
            self.get_logger().error(f"bad camera_info: {exc}", throttle_duration_sec=10.0)
        except Exception as exc:  # noqa: BLE001 - malformed message
            camera = f"unreadable camera_info: {exc}"
        self._camera, self._camera_key = camera, key

    def _on_initialpose(self, msg: PoseWithCovarianceStamped) -> None:
        with self._lock:
            self._initialpose = msg
        self._tracker.reset()
        self.get_logger().info(f"initial pose received in frame {msg.header.frame_id!r}: prior of the next "
                               "localization")

    def _on_trigger(self, request, response):
        with self._wake:
            if self._map_state == "error":
                response.success, response.message = False, f"no map: {self._message}"
                return response
            if self._params.mode == "on_demand":
                self._armed = True
                response.message = "the next frame will be localized"
            else:
                self._bypass_rate = True
                response.message = "localizing continuously; the next frame skips the max_rate limit"
            if self._map_state == "loading":
                response.message += " (once the map has loaded)"
        response.success = True
        return response

    # ================================================================= the worker

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._stop and (self._slot is None or (self._map_state == "loading"
                                                                  and self._localizer is None)):
                    self._wake.wait(0.5)
                if self._stop:
                    return
                frame, self._slot = self._slot, None
                localizer = self._localizer
            try:
                if localizer is None:
                    self._stats.dropped_no_map += 1
                    self._fail(ERROR, "no_map", f"frame dropped: no map ({self._message})", count=False,
                               stamp=frame.msg.header.stamp)
                    continue
                self._process(frame, localizer)
            except Exception as exc:  # noqa: BLE001 - never let one frame stop the worker
                self._fail(ERROR, "internal_error", f"internal error on a frame: {type(exc).__name__}: {exc}",
                           stamp=getattr(frame.msg.header, "stamp", None))
                self.get_logger().error(f"internal error on a frame: {exc!r}")

    def _process(self, frame: _Frame, localizer) -> None:
        msg, p = frame.msg, self._params
        stamp = msg.header.stamp
        try:
            image = message_to_rgb(msg)
        except ImageConversionError as exc:
            return self._fail(ERROR, "bad_image", f"bad image: {exc}", stamp=stamp)
        model = self._camera
        if model is None:
            topic = self.resolve_topic_name("camera_info")
            return self._fail(WARN, "no_camera_info", f"no camera_info received yet on {topic}", stamp=stamp)
        if isinstance(model, str):
            return self._fail(ERROR, "bad_camera_info", f"bad camera_info: {model}", stamp=stamp)
        h, w = image.shape[:2]
        if (w, h) != model.camera.size:
            return self._fail(ERROR, "bad_input", f"bad input: the image is {w}x{h} but camera_info is for "
                                     f"{model.camera.width}x{model.camera.height}", stamp=stamp)
        camera_frame = p.camera_frame or msg.header.frame_id or model.frame_id
        if not camera_frame:
            return self._fail(ERROR, "bad_input", "bad input: the image has no frame_id and camera_frame is not set",
                              stamp=stamp)
        image = model.undistort(image)
        prior, prior_note = self._take_prior(camera_frame, p)
        T_odom_camera = self._lookup(p.odom_frame, camera_frame, stamp) if p.odom_frame else None

        start = time.monotonic()
        tracked = self._tracker.localize(localizer, image, model.camera, Time.from_msg(stamp).nanoseconds / 1e9,
                                         camera_frame, T_odom_camera, prior, prior_note)
        result, prior_note = tracked.result, tracked.prior_note
        self._stats.localized += 1
        self._stats.last_tracked = tracked.from_track
        self._stats.last_localize_ms = 1000.0 * (time.monotonic() - start)
        self._stats.last_inliers = int(result.num_inliers)
        self._stats.last_rmse_px = float(result.reprojection_rmse_px)
        if not result.success:
            self._stats.not_localized += 1
            code = "weak_geometry" if result.weak_geometry else "not_localized"
            return self._fail(WARN, code, f"not localized: {result.failure_reason}{prior_note}", stamp=stamp,
                              count=False)
        if not tracked.trusted:
            self._stats.jumps_rejected += 1
            return self._fail(WARN, "jump_rejected", tracked.note, stamp=stamp, count=False)
        T_map_camera = np.asarray(result.T_world_camera, dtype=float)
        self._publish_fix(T_map_camera, result, camera_frame, stamp, model, p, localizer)
        self._stats.accepted += 1
        self._stats.last_latency_ms = 1000.0 * (time.monotonic() - frame.received)
        note = tracked.note
        self._set_status(OK, "localized",
                         f"localized: {result.num_inliers} inliers, rmse {result.reprojection_rmse_px:.2f} px"
                         + (f"; {note}" if note else "") + prior_note + (f"; {self._tf_note}" if self._tf_note else ""))
        self._publish_diagnostics(stamp)

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
        """The camera pose in map_frame from a pending /initialpose (consumed), and a note about it."""
        with self._lock:
            msg, self._initialpose = self._initialpose, None
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

    def _publish_fix(self, T_map_camera, result, camera_frame: str, stamp, model, p: P.NodeParams, localizer) -> None:
        pose = PoseStamped()
        pose.header.stamp, pose.header.frame_id = stamp, p.map_frame
        pose.pose = matrix_to_pose(T_map_camera)
        self._pose_pub.publish(pose)

        covariance = result.covariance if result.covariance is not None else FALLBACK_COVARIANCE
        covariance = np.asarray(covariance, dtype=float) * p.covariance_scale
        T_camera_base = None
        if p.base_frame and p.base_frame != camera_frame:
            T_camera_base = self._lookup(camera_frame, p.base_frame, stamp)
        if T_camera_base is not None:
            T_out = T_map_camera @ T_camera_base
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
            last = self._last_map_odom
        if last is None or not p.publish_tf:
            return
        stamp = (self.get_clock().now() + Duration(seconds=p.transform_tolerance)).to_msg()
        self._tf_broadcaster.sendTransform(make_transform_stamped(last[0], p.map_frame, last[1], stamp))

    # ================================================================= diagnostics

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

    def _publish_diagnostics(self, stamp=None) -> None:
        if self._stop:
            return
        try:
            self._diag_pub.publish(self._diagnostics(stamp))
        except Exception:  # noqa: BLE001 - the node is being destroyed by another thread
            pass

    def _diagnostics(self, stamp=None) -> DiagnosticArray:
        s, p = self._stats, self._params
        level, message = self._level, self._message
        if self._map_state == "error":
            level = ERROR
        status = DiagnosticStatus(level=level, name=f"{self.get_fully_qualified_name()}: localization",
                                  message=message, hardware_id=p.map_path or "gsvisloc")
        camera = self._camera
        values = {
            "status_code": self._code,
            "state": self._map_state,
            "map": self._map_info,
            "mode": p.mode,
            "camera_info": ("none yet" if camera is None else f"bad: {camera}" if isinstance(camera, str)
                            else f"{camera.camera.width}x{camera.camera.height}, distortion {camera.distortion_model}"),
            "last_localize_ms": f"{s.last_localize_ms:.1f}",
            "last_latency_ms": f"{s.last_latency_ms:.1f}",
            "last_inliers": str(s.last_inliers),
            "last_rmse_px": f"{s.last_rmse_px:.3f}",
            "last_tracked": str(s.last_tracked).lower(),
            "frames_received": str(s.received),
            "frames_localized": str(s.localized),
            "frames_accepted": str(s.accepted),
            "frames_not_localized": str(s.not_localized),
            "frames_dropped": str(s.dropped_stale + s.dropped_no_map),
            "frames_dropped_stale": str(s.dropped_stale),
            "frames_dropped_no_map": str(s.dropped_no_map),
            "frames_throttled": str(s.throttled),
            "frames_ignored_on_demand": str(s.ignored),
            "frames_bad_input": str(s.bad_input),
            "jumps_rejected": str(s.jumps_rejected),
            "last_failure": s.last_failure,
            "tf": self._tf_note or ("off" if not p.publish_tf else "ok"),
        }
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array = DiagnosticArray()
        array.header.stamp = stamp if stamp is not None else self.get_clock().now().to_msg()
        array.status = [status]
        return array

    # ================================================================= life cycle

    def destroy_node(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        if self._worker.is_alive() and threading.current_thread() is not self._worker:
            self._worker.join(timeout=30.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Console script ``gsvisloc_node``: run the node until Ctrl-C or shutdown."""
    from rclpy.exceptions import ParameterException
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    rclpy.init(args=args)
    try:
        node = GsvislocNode()
    except (ParameterException, ValueError, TypeError) as exc:
        print(f"gsvisloc_node: invalid parameter: {exc}", file=sys.stderr)
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


if __name__ == "__main__":
    sys.exit(main())
