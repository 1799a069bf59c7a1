"""The test side of the node tests: a peer node that feeds the ``gsvisloc`` node and collects its outputs.

:class:`Harness` runs the node under test (plain or managed) and a peer node in one process and one
executor (nodes in one process match at once over Fast DDS), spun in a background thread.
"""

from __future__ import annotations

import array
import threading
import time

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from nav_msgs.msg import Path
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage

from gsvisloc_ros.camera import PinholeCamera
from gsvisloc_ros.ros import compat as T
from gsvisloc_ros.ros import messages as M
from gsvisloc_ros.ros.node import GsvislocNode

CAMERA = PinholeCamera(400.0, 400.0, 319.5, 239.5, 640, 480)
CAMERA_FRAME = "camera_optical"
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def _stamp(seconds: float):
    return Time(nanoseconds=int(round(seconds * 1e9))).to_msg()


def _seconds(stamp) -> float:
    return Time.from_msg(stamp).nanoseconds / 1e9


def _values(status: DiagnosticStatus) -> dict:
    return {kv.key: kv.value for kv in status.values}


class Harness:
    """The node under test and a peer node, spun by one executor in a background thread."""

    def __init__(self, overrides: dict | None = None, node_type=GsvislocNode, **node_kwargs) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.peer = rclpy.create_node("test_peer", context=self.context)
        self.lock = threading.Lock()
        self.got = {name: [] for name in ("pose", "pose_cov", "path", "cloud", "rendered", "diag", "tf", "status")}
        self.arrival: dict[float, float] = {}  # pose stamp -> monotonic arrival time
        subscriptions = [
            (PoseStamped, "/gsvisloc/pose", "pose", 10),
            (PoseWithCovarianceStamped, "/gsvisloc/pose_with_covariance", "pose_cov", LATCHED),
            (Path, "/gsvisloc/path", "path", 10),
            (PointCloud2, "/gsvisloc/map_cloud", "cloud", LATCHED),
            (Image, "/gsvisloc/rendered", "rendered", 10),
            (DiagnosticArray, "/diagnostics", "diag", 100),
            (TFMessage, "/tf", "tf", 100),
            (DiagnosticArray, "/gsvisloc/status", "status", 100),
        ]
        for msg_type, topic, key, qos in subscriptions:
            self.peer.create_subscription(msg_type, topic, self._collector(key), qos)
        self.image_pub = self.peer.create_publisher(Image, "/image", 10)
        self.info_pub = self.peer.create_publisher(CameraInfo, "/camera_info", 10)
        self.camera_pubs = {"": (self.image_pub, self.info_pub)}
        self.initialpose_pub = self.peer.create_publisher(PoseWithCovarianceStamped, "/initialpose", 1)
        self.tf_broadcaster = T.ShimTransformBroadcaster(self.peer)
        self.static_broadcaster = T.ShimStaticTransformBroadcaster(self.peer)
        self.buffer = T.ShimBuffer()
        self.listener = T.ShimTransformListener(self.buffer, self.peer)
        params = [Parameter(k, value=v) for k, v in (overrides or {}).items()]
        self.node = node_type(context=self.context, parameter_overrides=params, **node_kwargs)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.peer)
        self._running = True
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _collector(self, key):
        def store(msg):
            with self.lock:
                if key == "pose":
                    self.arrival[_seconds(msg.header.stamp)] = time.monotonic()
                self.got[key].append(msg)
        return store

    def _spin(self) -> None:
        while self._running:
            self.executor.spin_once(timeout_sec=0.02)

    def messages(self, key: str) -> list:
        with self.lock:
            return list(self.got[key])

    def statuses(self) -> list[tuple[float, DiagnosticStatus]]:
        return [(_seconds(a.header.stamp), s) for a in self.messages("diag") for s in a.status
                if s.name.startswith("/gsvisloc")]

    def wait(self, condition, timeout: float = 120.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last diagnostics: "
                             f"{[s.message for _, s in self.statuses()[-3:]]}")

    def status_for(self, stamp: float, timeout: float = 120.0) -> DiagnosticStatus:
        """The diagnostics published about the frame stamped ``stamp``."""
        return self.wait(lambda: next((s for t, s in reversed(self.statuses()) if abs(t - stamp) < 1e-6), None),
                         timeout, f"diagnostics about the frame at {stamp}")

    def send(self, image: np.ndarray, stamp: float, camera: PinholeCamera | None = CAMERA, encoding: str = "rgb8",
             frame: str = CAMERA_FRAME, info: CameraInfo | None = None, camera_ns: str = "") -> float:
        """Publish camera info and image (of the camera ``camera_ns``: its ``/<ns>/image`` topics)."""
        if camera_ns not in self.camera_pubs:
            self.camera_pubs[camera_ns] = (self.peer.create_publisher(Image, f"/{camera_ns}/image", 10),
                                           self.peer.create_publisher(CameraInfo, f"/{camera_ns}/camera_info", 10))
            self.wait(lambda: all(p.get_subscription_count() > 0 for p in self.camera_pubs[camera_ns]), 10,
                      f"the node to subscribe the camera {camera_ns}")
        image_pub, info_pub = self.camera_pubs[camera_ns]
        header = Header(stamp=_stamp(stamp), frame_id=frame)
        if info is not None:
            info.header = header
            info_pub.publish(info)
        elif camera is not None:
            info_pub.publish(M.camera_to_camera_info(camera, frame, header=header))
        if encoding in ("rgb8", "bgr8", "mono8") and image.dtype == np.uint8:
            msg = M.rgb_to_image(image, encoding, header)
        else:  # raw bytes labelled with any encoding, to test refusals
            data = np.ascontiguousarray(image)
            msg = Image(header=header, height=data.shape[0], width=data.shape[1], encoding=encoding,
                        step=data.strides[0], data=array.array("B", data.tobytes()))
        image_pub.publish(msg)
        return stamp

    def send_until_pose(self, image, first_stamp=100.0, period=0.25, timeout=150.0, before_each=None):
        """Send the same image with new stamps until a pose comes back; returns it."""
        stamp, deadline = first_stamp, time.monotonic() + timeout
        while time.monotonic() < deadline:
            if before_each is not None:
                before_each(stamp)
            self.send(image, stamp)
            end = time.monotonic() + period
            while time.monotonic() < end:
                if self.messages("pose"):
                    return self.messages("pose")[0]
                time.sleep(0.02)
            stamp += period
        raise AssertionError(f"no pose within {timeout} s; diagnostics: {[s.message for _, s in self.statuses()[-3:]]}")

    def close(self) -> None:
        """Stop spinning and destroy both nodes (again: nothing)."""
        if not self._running:
            return
        self._running = False
        self._thread.join(timeout=5.0)
        self.executor.shutdown()
        self.node.destroy_node()
        self.peer.destroy_node()
        rclpy.shutdown(context=self.context)
