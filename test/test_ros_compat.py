"""The TF stand-in (gsvisloc_ros/ros/compat.py): buffer maths, QoS as tf2_ros, and interoperation over DDS."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("tf2_msgs")

from builtin_interfaces.msg import Time as TimeMsg  # noqa: E402
from rclpy.duration import Duration  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import DurabilityPolicy, ReliabilityPolicy  # noqa: E402
from rclpy.time import Time  # noqa: E402
from scipy.spatial.transform import Rotation  # noqa: E402

from gsvisloc_ros.ros import compat as T  # noqa: E402
from gsvisloc_ros.ros.messages import make_transform_stamped, transform_to_matrix  # noqa: E402


def _pose(xyz=(0.0, 0.0, 0.0), yaw_deg=0.0, roll_deg=0.0) -> np.ndarray:
    M = np.eye(4)
    M[:3, :3] = Rotation.from_euler("zyx", [yaw_deg, 0.0, roll_deg], degrees=True).as_matrix()
    M[:3, 3] = xyz
    return M


def _stamp(seconds: float) -> TimeMsg:
    return Time(nanoseconds=int(round(seconds * 1e9))).to_msg()


def _tf(M, parent, child, seconds):
    return make_transform_stamped(M, parent, child, _stamp(seconds))


def _lookup(buffer, target, source, seconds=0.0, timeout=0.0) -> np.ndarray:
    return T.lookup_matrix(buffer, target, source, Time(nanoseconds=int(seconds * 1e9)), timeout)


def test_public_names_are_tf2_ros_or_the_shim():
    if T.USING_TF2_ROS:
        import tf2_ros

        assert T.Buffer is tf2_ros.Buffer
    else:
        assert T.Buffer is T.ShimBuffer and T.TransformListener is T.ShimTransformListener
        assert T.TransformBroadcaster is T.ShimTransformBroadcaster
    assert issubclass(T.ShimExtrapolationException, T.TransformException)


def test_translation_is_interpolated_linearly_and_rotation_by_slerp():
    buffer = T.ShimBuffer()
    buffer.set_transform(_tf(_pose((0, 0, 0), 0), "odom", "base", 10.0), "test")
    buffer.set_transform(_tf(_pose((2, -4, 1), 90), "odom", "base", 12.0), "test")
    M = _lookup(buffer, "odom", "base", 10.5)
    np.testing.assert_allclose(M[:3, 3], [0.5, -1.0, 0.25], atol=1e-12)
    np.testing.assert_allclose(M[:3, :3], _pose(yaw_deg=22.5)[:3, :3], atol=1e-12)
    np.testing.assert_allclose(_lookup(buffer, "odom", "base", 12.0), _pose((2, -4, 1), 90), atol=1e-12)
    # time zero: the latest sample
    latest = buffer.lookup_transform("odom", "base", Time())
    assert Time.from_msg(latest.header.stamp).nanoseconds == 12_000_000_000
    assert (latest.header.frame_id, latest.child_frame_id) == ("odom", "base")


def test_slerp_takes_the_short_way_round():
    buffer = T.ShimBuffer()
    buffer.set_transform(_tf(_pose(yaw_deg=170), "a", "b", 1.0), "test")
    buffer.set_transform(_tf(_pose(yaw_deg=-170), "a", "b", 2.0), "test")
    yaw = Rotation.from_matrix(_lookup(buffer, "a", "b", 1.5)[:3, :3]).as_euler("zyx", degrees=True)[0]
    assert abs(abs(yaw) - 180.0) < 1e-9


def test_extrapolation_is_refused_with_a_clear_message():
    buffer = T.ShimBuffer()
    buffer.set_transform(_tf(_pose(), "odom", "base", 10.0), "test")
    with pytest.raises(T.ShimExtrapolationException, match="only time 10.0+ is in the buffer"):
        _lookup(buffer, "odom", "base", 10.5)  # one sample: valid only at its own time
    buffer.set_transform(_tf(_pose((1, 0, 0)), "odom", "base", 11.0), "test")
    with pytest.raises(T.ShimExtrapolationException, match="into the future.*11.5.*latest data is at time 11.0"):
        _lookup(buffer, "odom", "base", 11.5)
    with pytest.raises(T.ShimExtrapolationException, match=r"into the past.*\[base\] to frame \[odom\]"):
        _lookup(buffer, "odom", "base", 9.0)
    assert not buffer.can_transform("odom", "base", Time(seconds=11.5))
    ok, why = buffer.can_transform("odom", "base", Time(seconds=11.5), return_debug_tuple=True)
    assert not ok and "extrapolation" in why
    assert isinstance(pytest.raises(T.TransformException, _lookup, buffer, "odom", "base", 12.0).value,
                      T.ShimExtrapolationException)


def test_chains_through_the_common_ancestor_and_static_transforms():
    buffer = T.ShimBuffer()
    map_odom, base_cam, base_lidar = _pose((5, 1, 0), 30), _pose((0.2, 0, 0.5), -90, -90), _pose((0, 0, 0.3), 180)
    buffer.set_transform_static(_tf(map_odom, "map", "odom", 0.0), "test")
    buffer.set_transform_static(_tf(base_cam, "base", "camera", 0.0), "test")
    buffer.set_transform_static(_tf(base_lidar, "base", "lidar", 0.0), "test")
    buffer.set_transform(_tf(_pose((0, 0, 0), 0), "odom", "base", 1.0), "test")
    buffer.set_transform(_tf(_pose((1, 0, 0), 10), "odom", "base", 2.0), "test")
    odom_base = _lookup(buffer, "odom", "base", 1.5)
    # T_target_source maps source points into target
    np.testing.assert_allclose(_lookup(buffer, "map", "camera", 1.5), map_odom @ odom_base @ base_cam, atol=1e-12)
    np.testing.assert_allclose(_lookup(buffer, "camera", "map", 1.5),
                               np.linalg.inv(map_odom @ odom_base @ base_cam), atol=1e-12)
    np.testing.assert_allclose(_lookup(buffer, "lidar", "camera", 1.5), np.linalg.inv(base_lidar) @ base_cam,
                               atol=1e-12)
    np.testing.assert_allclose(_lookup(buffer, "lidar", "camera", 123.0), np.linalg.inv(base_lidar) @ base_cam,
                               atol=1e-12)  # statics only: any time
    np.testing.assert_allclose(_lookup(buffer, "camera", "camera", 5.0), np.eye(4))
    latest = buffer.lookup_transform("map", "camera", Time())
    assert Time.from_msg(latest.header.stamp).nanoseconds == 2_000_000_000
    with pytest.raises(T.ShimExtrapolationException):
        _lookup(buffer, "map", "camera", 3.0)  # a dynamic link on the chain has no data then
    buffer.set_transform(_tf(_pose(), "elsewhere", "thing", 1.0), "test")
    with pytest.raises(T.ShimConnectivityException, match="not part of the same tree"):
        _lookup(buffer, "map", "thing", 1.0)
    with pytest.raises(T.ShimLookupException, match="does not exist"):
        _lookup(buffer, "map", "nowhere", 1.0)


def test_lookup_transform_full_travels_in_time_through_a_fixed_frame():
    buffer = T.ShimBuffer()
    buffer.set_transform(_tf(_pose((0, 0, 0)), "odom", "base", 1.0), "test")
    buffer.set_transform(_tf(_pose((3, 0, 0)), "odom", "base", 2.0), "test")
    moved = buffer.lookup_transform_full("base", Time(seconds=2), "base", Time(seconds=1), "odom")
    np.testing.assert_allclose(transform_to_matrix(moved)[:3, 3], [-3, 0, 0], atol=1e-12)


def test_cache_time_drops_old_samples_and_reparenting_restarts_a_frame():
    buffer = T.ShimBuffer(cache_time=Duration(seconds=2))
    for s in range(10):
        buffer.set_transform(_tf(_pose((s, 0, 0)), "odom", "base", float(s)), "test")
    with pytest.raises(T.ShimExtrapolationException, match="into the past"):
        _lookup(buffer, "odom", "base", 6.0)
    np.testing.assert_allclose(_lookup(buffer, "odom", "base", 7.5)[:3, 3], [7.5, 0, 0])
    buffer.set_transform(_tf(_pose(), "map", "base", 20.0), "test")
    assert not buffer.can_transform("odom", "base", Time(seconds=9))


def test_invalid_transforms_are_refused():
    buffer = T.ShimBuffer()
    with pytest.raises(T.TransformException, match="to itself"):
        buffer.set_transform(_tf(np.eye(4), "a", "a", 1.0), "test")
    with pytest.raises(T.TransformException, match="empty"):
        buffer.set_transform(_tf(np.eye(4), "", "a", 1.0), "test")
    bad = _tf(np.eye(4), "a", "b", 1.0)
    bad.transform.rotation.w = 0.0
    with pytest.raises(T.TransformException, match="zero quaternion"):
        buffer.set_transform(bad, "test")


def test_lookup_waits_up_to_its_timeout():
    buffer = T.ShimBuffer()
    threading.Timer(0.2, lambda: buffer.set_transform(_tf(_pose((1, 2, 3)), "a", "b", 5.0), "test")).start()
    start = time.monotonic()
    np.testing.assert_allclose(_lookup(buffer, "a", "b", 5.0, timeout=5.0)[:3, 3], [1, 2, 3])
    assert time.monotonic() - start < 2.0
    start = time.monotonic()
    with pytest.raises(T.TransformException):
        _lookup(buffer, "a", "c", 5.0, timeout=0.3)
    assert 0.25 < time.monotonic() - start < 2.0


# ------------------------------------------------------------------------------ over DDS


def _spin_until(executor, condition, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        executor.spin_once(timeout_sec=0.02)
    return condition()


def test_qos_is_that_of_tf2_ros(ros_context):
    node = rclpy.create_node("qos_check", context=ros_context)
    try:
        T.ShimTransformBroadcaster(node)
        T.ShimStaticTransformBroadcaster(node)
        T.ShimTransformListener(T.ShimBuffer(), node)
        for topic, durability in (("/tf", DurabilityPolicy.VOLATILE), ("/tf_static", DurabilityPolicy.TRANSIENT_LOCAL)):
            infos = node.get_publishers_info_by_topic(topic) + node.get_subscriptions_info_by_topic(topic)
            assert len(infos) == 2, infos  # one publisher, one subscription
            for info in infos:
                assert info.qos_profile.reliability == ReliabilityPolicy.RELIABLE
                assert info.qos_profile.durability == durability
        assert T.dynamic_qos().depth == 100 and T.static_broadcaster_qos().depth == 1
        assert T.static_listener_qos().depth == 100
        assert T.static_broadcaster_qos().durability == DurabilityPolicy.TRANSIENT_LOCAL
    finally:
        node.destroy_node()


def test_two_nodes_exchange_dynamic_and_static_transforms(ros_context):
    """Broadcasters on one node, a listener on another; a late listener gets every static transform."""
    sender = rclpy.create_node("tf_sender", context=ros_context)
    receiver = rclpy.create_node("tf_receiver", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(sender)
    executor.add_node(receiver)
    try:
        static = T.ShimStaticTransformBroadcaster(sender)
        dynamic = T.ShimTransformBroadcaster(sender)
        # two separate static sends: the broadcaster republishes the whole set each time
        static.sendTransform(_tf(_pose((0.1, 0, 0.4), -90, -90), "base", "camera", 0.0))
        static.sendTransform([_tf(_pose((0, 0, 0.3)), "base", "lidar", 0.0)])
        executor.spin_once(timeout_sec=0.1)
        buffer = T.ShimBuffer()
        T.ShimTransformListener(buffer, receiver)  # joins after the static sends
        assert _spin_until(executor, lambda: buffer.can_transform("camera", "lidar", Time()))
        for s, x in ((1.0, 0.0), (2.0, 2.0)):
            dynamic.sendTransform(_tf(_pose((x, 0, 0)), "odom", "base", s))
        assert _spin_until(executor, lambda: buffer.can_transform("odom", "camera", Time(seconds=2)))
        M = _lookup(buffer, "odom", "camera", 1.25)
        np.testing.assert_allclose(M, _pose((0.5, 0, 0)) @ _pose((0.1, 0, 0.4), -90, -90), atol=1e-9)
        with pytest.raises(T.TransformException):
            _lookup(buffer, "odom", "camera", 2.5)
    finally:
        executor.shutdown()
        sender.destroy_node()
        receiver.destroy_node()
