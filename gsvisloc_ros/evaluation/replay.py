"""Replay a bag's camera frames into the localizer and collect what it answered, frame by frame.

Two ways, with the same output (a list of :class:`FrameOutcome`):

* :func:`replay_direct`: each frame straight into a :class:`~gsvisloc_ros.localizer.Localizer`
  in this process, tracked and gated by the node's own policy (:class:`~gsvisloc_ros.tracking.Tracker`,
  odometry from the bag's TF), on one worker thread as in the node. Latency is the wall time of
  the tracked localization.
* :func:`replay_through_node`: each frame published with rclpy over DDS to the real ``gsvisloc``
  node (:mod:`gsvisloc_ros.ros.node`, run in this process so that discovery is immediate), its
  ``~/pose`` output collected. Frames are sent one at a time: the next only after the node
  answered (a pose, or a failure in its diagnostics) or a timeout, so the node never drops one.
  Latency is from publishing the image to receiving the answer.

Frames the bag cannot provide (corrupt message, unknown encoding, no camera info) are outcomes
too, with ``problem`` set: they are reported, not localized, and do not stop the replay.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from gsvisloc_ros.evaluation.bags import BagContents, read_frames
from gsvisloc_ros.quality import DEFAULT_COVARIANCE_SCALE, published_covariance
from gsvisloc_ros.tracking import Tracker, TrackingConfig

log = logging.getLogger(__name__)


@dataclass
class FrameOutcome:
    """What happened to one image of the bag."""

    index: int
    stamp_ns: int
    T_gt: np.ndarray | None = None  # true T_world_camera, when the bag has it
    usable: bool = True  # False: the bag could not provide the frame (``problem`` says why)
    problem: str = ""
    success: bool = False  # the localizer returned a pose
    T_est: np.ndarray | None = None
    failure_reason: str = ""
    latency_ms: float | None = None
    num_inliers: int = 0
    covariance: np.ndarray | None = None  # the 6x6 covariance published with T_est (None: not known)

    def to_dict(self) -> dict:
        def listed(T):
            return None if T is None else np.asarray(T, dtype=float).round(7).tolist()

        from gsvisloc_ros.evaluation.consistency import nees

        value = nees(self.T_est, self.T_gt, self.covariance) if self.success and self.T_gt is not None else np.nan
        return {"index": self.index, "stamp_ns": self.stamp_ns, "usable": self.usable, "problem": self.problem or None,
                "success": self.success, "failure_reason": self.failure_reason or None,
                "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 2),
                "num_inliers": self.num_inliers, "T_est": listed(self.T_est), "T_gt": listed(self.T_gt),
                "covariance": None if self.covariance is None else np.asarray(self.covariance, dtype=float).tolist(),
                "nees": None if not np.isfinite(value) else round(value, 4)}


def _unusable(frame) -> FrameOutcome:
    log.warning("frame %d (t=%.3f s) not evaluated: %s", frame.index, frame.stamp_ns * 1e-9, frame.problem)
    return FrameOutcome(frame.index, frame.stamp_ns, frame.T_gt, usable=False, problem=frame.problem)


def replay_direct(contents: BagContents, localizer, intrinsics=None, progress: bool = True,
                  tracking: TrackingConfig | None = None, odom_frame: str = "odom",
                  covariance_scale: float = DEFAULT_COVARIANCE_SCALE) -> list[FrameOutcome]:
    """Localize every frame of the bag with ``localizer`` (a :class:`~gsvisloc_ros.localizer.Localizer`)
    as the node does: through a :class:`~gsvisloc_ros.tracking.Tracker` (``tracking``: the node's
    defaults), with odometry from the bag's ``/tf`` and ``/tf_static`` (``odom_frame`` -> the
    image's frame at its stamp, else the latest, as the node looks it up). A pose the jump gate
    holds back is a failure, as it is through the node. Latency: the wall time of the tracked
    localization. Each pose carries the covariance the node would publish with it
    (:func:`~gsvisloc_ros.quality.published_covariance` with ``covariance_scale``)."""
    from concurrent.futures import ThreadPoolExecutor

    from gsvisloc_ros.evaluation.bags import TF, raw_messages, typestore
    from gsvisloc_ros.ros.compat import ShimBuffer, ShimTransformException

    tracker = Tracker(tracking)
    buffer = ShimBuffer()
    store = typestore()
    tf_topics = [t for t, (mt, _) in contents.topics.items() if mt == TF and t in ("/tf", "/tf_static")]
    transforms = raw_messages(contents.path, tf_topics) if tf_topics else []
    next_tf = 0

    def odometry(camera_frame: str, stamp_ns: int) -> np.ndarray | None:
        for when in (stamp_ns, 0):
            try:
                return buffer.matrix(odom_frame, camera_frame, when)
            except ShimTransformException:
                continue
        return None

    def timed(frame):
        camera_frame = frame.frame_id or frame.model.frame_id
        T_odom_camera = odometry(camera_frame, frame.stamp_ns) if odom_frame else None
        start = time.perf_counter()
        tracked = tracker.localize(localizer, frame.image, frame.camera, frame.stamp_ns / 1e9, camera_frame,
                                   T_odom_camera)
        return tracked, 1000.0 * (time.perf_counter() - start)

    outcomes: list[FrameOutcome] = []
    bar = tqdm(total=contents.image_count, desc="localizing frames", unit="frame", disable=not progress)
    # One worker thread localizes, as in the node. Measured here: with other processes competing
    # for the CPU, localize() called from the main thread ran up to 7x slower than from a worker
    # thread of the same process at the same time (torch's OpenMP pool; not seen on an idle machine).
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gsvisloc-replay") as worker:
            for frame in read_frames(contents, intrinsics):
                bar.update(1)
                while next_tf < len(transforms) and transforms[next_tf][0] <= frame.stamp_ns:
                    _, topic, msgtype, raw = transforms[next_tf]
                    store_transform = buffer.set_transform_static if topic == "/tf_static" else buffer.set_transform
                    for transform in store.deserialize_cdr(raw, msgtype).transforms:
                        try:
                            store_transform(transform)
                        except ShimTransformException as exc:
                            log.warning("ignored a transform: %s", exc)
                    next_tf += 1
                if frame.problem:
                    outcomes.append(_unusable(frame))
                    continue
                tracked, latency = worker.submit(timed, frame).result()
                result = tracked.result
                reason = (f"not localized: {result.failure_reason}{tracked.prior_note}" if not result.success
                          else "" if tracked.trusted else tracked.note)
                outcomes.append(FrameOutcome(frame.index, frame.stamp_ns, frame.T_gt, success=tracked.trusted,
                                             T_est=result.T_world_camera if tracked.trusted else None,
                                             failure_reason=reason, latency_ms=latency,
                                             num_inliers=result.num_inliers,
                                             covariance=(published_covariance(result.covariance, covariance_scale)
                                                         if tracked.trusted else None)))
                bar.set_postfix(localized=f"{sum(o.success for o in outcomes)}/{len(outcomes)}", refresh=False)
    finally:
        bar.close()
    return outcomes


def node_available() -> tuple[bool, str]:
    """(whether the ROS node can be used for replay, the reason when it cannot)."""
    from gsvisloc_ros.ros import local_environment

    local_environment()  # before rclpy is imported
    try:
        import rclpy  # noqa: F401
    except Exception as exc:  # the ROS wheels raise various errors when their libraries are missing
        return False, f"rclpy does not import ({type(exc).__name__}: {exc})"
    try:
        from gsvisloc_ros.ros import node  # noqa: F401
    except ImportError as exc:
        return False, f"the gsvisloc ROS node is not available yet ({exc})"
    return True, ""


def replay_through_node(contents: BagContents, localizer, intrinsics=None, progress: bool = True,
                        timeout_s: float = 120.0, domain_id: int | None = None) -> list[FrameOutcome]:
    """Replay the bag through the real ``gsvisloc`` node over DDS (see the module docstring).

    The node runs in this process with ``localizer`` (so the map is not encoded twice), in its
    own rclpy context; a replayer node publishes the bag's ``/tf`` and ``/tf_static``, a camera
    info and each image, then waits for the node's ``~/pose`` (or the failure in its diagnostics,
    which carry the image's stamp) before sending the next one.
    """
    ok, why = node_available()
    if not ok:
        raise RuntimeError(f"--through-node: {why}")
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from gsvisloc_ros.evaluation.bags import COMPRESSED, TF, raw_messages
    from gsvisloc_ros.ros.node import GsvislocNode

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id)
    nodes, executor = [], None
    try:
        compressed = contents.image_type == COMPRESSED
        node = GsvislocNode(
            "gsvisloc", localizer=localizer, context=context,
            parameter_overrides=[rclpy.parameter.Parameter("use_compressed", value=compressed),
                                 rclpy.parameter.Parameter("max_rate", value=0.0)])
        nodes.append(node)
        replayer = _Replayer(context, node, compressed)
        nodes.append(replayer.node)
        executor = SingleThreadedExecutor(context=context)
        for n in nodes:
            executor.add_node(n)
        replayer.wait_until_ready(executor, timeout_s)
        tf_topics = [t for t, (mt, _) in contents.topics.items() if mt == TF and t in ("/tf", "/tf_static")]
        transforms = raw_messages(contents.path, tf_topics) if tf_topics else []
        outcomes: list[FrameOutcome] = []
        bar = tqdm(total=contents.image_count, desc="replaying through the node", unit="frame", disable=not progress)
        next_tf = 0
        try:
            for frame in read_frames(contents, intrinsics, keep_raw=True):
                bar.update(1)
                while next_tf < len(transforms) and transforms[next_tf][0] <= frame.stamp_ns:
                    replayer.publish_transform(*transforms[next_tf][1:])
                    next_tf += 1
                if frame.problem:
                    outcomes.append(_unusable(frame))
                    continue
                outcomes.append(replayer.localize(executor, frame, timeout_s))
                bar.set_postfix(localized=f"{sum(o.success for o in outcomes)}/{len(outcomes)}", refresh=False)
        finally:
            bar.close()
        return outcomes
    finally:
        if executor is not None:
            executor.shutdown()
        for n in reversed(nodes):
            n.destroy_node()
        rclpy.try_shutdown(context=context)


class _Replayer:
    """The publishing side of :func:`replay_through_node`: one frame out, one answer back."""

    def __init__(self, context, target, compressed: bool) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseStamped
        from rclpy.node import Node
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image
        from tf2_msgs.msg import TFMessage

        self.node = Node("gsvisloc_bag_replay", context=context)
        self.target = target
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        image_topic = target.resolve_topic_name("image/compressed" if compressed else "image")
        self.image_pub = self.node.create_publisher(CompressedImage if compressed else Image, image_topic, reliable)
        self.info_pub = self.node.create_publisher(CameraInfo, target.resolve_topic_name("camera_info"), reliable)
        self.tf_pubs = {
            "/tf": self.node.create_publisher(TFMessage, "/tf", QoSProfile(depth=100)),
            "/tf_static": self.node.create_publisher(TFMessage, "/tf_static", QoSProfile(
                depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)),
        }
        self.poses: dict[int, object] = {}
        self.failures: dict[int, str] = {}
        self.state = ""
        self.camera_state = ""  # the node's view of the camera info, from its diagnostics
        self.pose_sub = self.node.create_subscription(PoseStamped, target.resolve_topic_name("~/pose"),
                                                      self._on_pose, 10)
        self.diag_sub = self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)

    @staticmethod
    def _ns(stamp) -> int:
        return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)

    def _on_pose(self, msg) -> None:
        self.poses[self._ns(msg.header.stamp)] = msg

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if not status.name.startswith(self.target.get_fully_qualified_name()):
                continue
            values = {kv.key: kv.value for kv in status.values}
            self.state = values.get("state", self.state)
            self.camera_state = values.get("camera_info", self.camera_state)
            if values.get("status_code") != "localized":
                self.failures[self._ns(msg.header.stamp)] = status.message

    def wait_until_ready(self, executor, timeout_s: float) -> None:
        """Until the node subscribes to our topics, we to its outputs, and its map is loaded."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
            matched = (self.image_pub.get_subscription_count() > 0 and self.info_pub.get_subscription_count() > 0
                       and self.pose_sub.get_publisher_count() > 0 and self.diag_sub.get_publisher_count() > 0)
            if matched and self.state == "ready":
                return
            if self.state == "error":
                raise RuntimeError(f"the gsvisloc node could not load the map: {self.failures or 'see its log'}")
        raise RuntimeError(f"the gsvisloc node was not ready within {timeout_s:.0f} s (state {self.state!r})")

    def publish_transform(self, topic: str, msgtype: str, raw: bytes) -> None:
        self.tf_pubs[topic].publish(raw)

    def _camera_info(self, frame):
        """The bag's own camera info message (serialized), or one made from ``--intrinsics``."""
        if frame.info_raw is not None:
            return frame.info_raw
        from gsvisloc_ros.ros.messages import camera_to_camera_info

        msg = camera_to_camera_info(frame.model.camera, frame.frame_id)
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(frame.stamp_ns, 1_000_000_000)
        return msg

    def localize(self, executor, frame, timeout_s: float) -> FrameOutcome:
        from gsvisloc_ros.ros.messages import pose_to_matrix

        stamp = frame.stamp_ns
        self.info_pub.publish(self._camera_info(frame))
        # The first camera info must reach the node before the image does (its diagnostics say so).
        first = self.camera_state in ("", "none yet")
        settle = time.monotonic() + (5.0 if first else 0.02)
        while time.monotonic() < settle:
            executor.spin_once(timeout_sec=0.01)
            if first and self.camera_state not in ("", "none yet"):
                break
        start = time.perf_counter()
        self.image_pub.publish(frame.raw)
        deadline = time.monotonic() + timeout_s
        failed_at = None
        while time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.01)
            if stamp in self.poses:
                latency = 1000.0 * (time.perf_counter() - start)
                msg = self.poses.pop(stamp)
                self.failures.pop(stamp, None)
                return FrameOutcome(frame.index, stamp, frame.T_gt, success=True, T_est=pose_to_matrix(msg.pose),
                                    latency_ms=latency)
            if stamp in self.failures and failed_at is None:
                failed_at = time.perf_counter()
            if failed_at is not None and time.perf_counter() - failed_at > 0.2:  # no pose follows a failure
                return FrameOutcome(frame.index, stamp, frame.T_gt, success=False,
                                    failure_reason=self.failures.pop(stamp),
                                    latency_ms=1000.0 * (failed_at - start))
        return FrameOutcome(frame.index, stamp, frame.T_gt, success=False,
                            failure_reason=f"no answer from the node within {timeout_s:.0f} s",
                            latency_ms=1000.0 * timeout_s)
