"""The ROS 2 foundation: real rclpy nodes exchanging messages over real DDS, and ament_index.

These tests are what shows that the set-up works without a ROS installation: the Jazzy wheels,
the locally built tf2_msgs (type hash equal to upstream), and the package's share/ directory.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")

from geometry_msgs.msg import PoseStamped, TransformStamped  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

# The RIHS01 type hash of upstream ROS 2 Jazzy tf2_msgs/msg/TFMessage: equal hashes mean real
# tf2_ros and RViz accept what we publish.
UPSTREAM_TFMESSAGE_HASH = "RIHS01_e369d0f05a23ae52508854b66f6aa0437f3449d652e8cbf22d5abe85d020f087"


def _exchange(context, msg_type, make_message, topic: str, timeout: float = 10.0):
    """Publish from one node to another over DDS until a message arrives; return it."""
    sender = rclpy.create_node("sender", context=context)
    receiver = rclpy.create_node("receiver", context=context)
    received = []
    receiver.create_subscription(msg_type, topic, received.append, 10)
    publisher = sender.create_publisher(msg_type, topic, 10)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(sender)
    executor.add_node(receiver)
    try:
        deadline = time.monotonic() + timeout
        while not received and time.monotonic() < deadline:
            publisher.publish(make_message(sender))
            executor.spin_once(timeout_sec=0.05)
        return received[0] if received else None
    finally:
        executor.shutdown()
        sender.destroy_node()
        receiver.destroy_node()


def test_pose_stamped_crosses_dds(ros_context):
    def make(node):
        msg = PoseStamped()
        msg.header.frame_id = "map"
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = 1.5, -2.0, 0.25
        msg.pose.orientation.z, msg.pose.orientation.w = 0.6, 0.8
        return msg

    msg = _exchange(ros_context, PoseStamped, make, "pose_check")
    assert msg is not None, "no PoseStamped arrived over DDS within 10 s"
    assert msg.header.frame_id == "map"
    assert (msg.pose.position.x, msg.pose.position.y, msg.pose.position.z) == (1.5, -2.0, 0.25)
    assert (msg.pose.orientation.z, msg.pose.orientation.w) == pytest.approx((0.6, 0.8))


def test_tf_message_crosses_dds(ros_context):
    def make(node):
        t = TransformStamped()
        t.header.frame_id = "map"
        t.child_frame_id = "odom"
        t.header.stamp = node.get_clock().now().to_msg()
        t.transform.translation.x = 3.0
        t.transform.rotation.w = 1.0
        return TFMessage(transforms=[t, t])

    msg = _exchange(ros_context, TFMessage, make, "tf_check")
    assert msg is not None, "no TFMessage arrived over DDS within 10 s"
    assert [t.child_frame_id for t in msg.transforms] == ["odom", "odom"]
    assert msg.transforms[0].transform.translation.x == 3.0


def test_tf2_msgs_is_wire_compatible_with_upstream():
    import tf2_msgs

    # The type description generated next to the interface holds the hash DDS peers compare.
    share = Path(tf2_msgs.__file__).resolve()
    candidates = [p / "share" / "tf2_msgs" / "msg" / "TFMessage.json" for p in share.parents]
    from ament_index_python.packages import get_package_share_directory

    try:
        candidates.insert(0, Path(get_package_share_directory("tf2_msgs")) / "msg" / "TFMessage.json")
    except Exception:  # noqa: BLE001 - a ROS install may lay tf2_msgs out differently
        pass
    description = next((p for p in candidates if p.is_file()), None)
    if description is None:
        pytest.skip("tf2_msgs type description not found in this installation")
    assert UPSTREAM_TFMESSAGE_HASH in description.read_text()


def test_package_share_found_through_ament_index():
    from ament_index_python.packages import get_package_share_directory

    share = Path(get_package_share_directory("gsvisloc_ros"))
    manifest = ET.parse(share / "package.xml").getroot()
    assert manifest.findtext("name") == "gsvisloc_ros"
    assert manifest.get("format") == "3"
    repo = Path(__file__).resolve().parents[1]
    for folder in ("launch", "config", "rviz"):
        for source in (repo / folder).glob("*"):
            installed = share / folder / source.name
            assert installed.is_file(), f"{folder}/{source.name} is not installed into {share}"
