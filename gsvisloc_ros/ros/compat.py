"""Stand-ins for ROS packages that are not installable everywhere: ``tf2_ros`` when it imports, else
this module's own TF classes behind the same interface. (``cv_bridge`` needs none: images are
decoded by :mod:`gsvisloc_ros.ros.messages`.)

Public names (the ones the node uses): :data:`Buffer`, :data:`TransformListener`,
:data:`TransformBroadcaster`, :data:`StaticTransformBroadcaster` and the exceptions
:data:`TransformException`, :data:`LookupException`, :data:`ConnectivityException`,
:data:`ExtrapolationException`. :data:`USING_TF2_ROS` says which implementation they are.

The local implementation (``Shim*`` classes, always importable so they can be tested anywhere)
follows tf2_ros:

* QoS: ``/tf`` reliable, volatile, depth 100; ``/tf_static`` reliable, transient-local, with
  depth 1 for the broadcaster, which republishes its *whole* set of static transforms on every
  ``sendTransform`` (a late joiner gets them all in one message), and depth 100 for listeners.
* :class:`ShimBuffer` keeps ``cache_time`` (10 s) of history per frame, interpolates translation
  linearly and rotation by slerp, and refuses to extrapolate beyond the buffered interval with an
  :class:`ExtrapolationException` naming the requested time, the data interval and the frames.
  A frame with a single sample is valid only at that sample's time (as in tf2). Time zero means
  "the latest time every transform on the chain has". Chains of any length through the common
  ancestor of the two frames; static transforms are valid at all times.
* ``lookup_transform(target, source, time, timeout)`` returns ``T_target_source``: it maps points
  in ``source`` into ``target`` (``header.frame_id = target``, ``child_frame_id = source``).
"""

from __future__ import annotations

import bisect
import threading
import time as _time

import numpy as np

from gsvisloc_ros.camera import invert_pose, make_pose
from gsvisloc_ros.ros.messages import make_transform_stamped, transform_to_matrix

try:  # a real ROS install
    import tf2_ros as _tf2_ros  # type: ignore[import-not-found]
except ImportError:
    _tf2_ros = None

USING_TF2_ROS = _tf2_ros is not None


def _base(name: str) -> type:
    """tf2_ros's exception of that name when present, so one ``except`` catches both implementations."""
    return getattr(_tf2_ros, name, Exception) if _tf2_ros is not None else Exception


class ShimTransformException(_base("TransformException")):
    """Base of every TF lookup error of the local implementation."""


class ShimLookupException(ShimTransformException, _base("LookupException")):
    """A frame is not known to the buffer."""


class ShimConnectivityException(ShimTransformException, _base("ConnectivityException")):
    """The two frames are not in the same tree."""


class ShimExtrapolationException(ShimTransformException, _base("ExtrapolationException")):
    """The requested time is outside the buffered interval of some transform on the chain."""


class ShimInvalidArgumentException(ShimTransformException, _base("InvalidArgumentException")):
    """A transform that cannot be stored (empty or equal frame names, non-finite values)."""


class ShimTimeoutException(ShimTransformException, _base("TimeoutException")):
    """Reserved for tf2_ros compatibility (lookups that time out raise the underlying reason)."""


# --------------------------------------------------------------------------- QoS (as tf2_ros)


def dynamic_qos(depth: int = 100):
    """``/tf``: reliable, volatile, keep last ``depth`` (tf2_ros DynamicBroadcasterQoS / DynamicListenerQoS)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def static_broadcaster_qos(depth: int = 1):
    """``/tf_static`` publisher: reliable, transient-local, depth 1 (tf2_ros StaticBroadcasterQoS)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def static_listener_qos(depth: int = 100):
    """``/tf_static`` subscriber: reliable, transient-local, depth 100 (tf2_ros StaticListenerQoS)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


# --------------------------------------------------------------------------- time helpers


def to_nanoseconds(t) -> int:
    """Nanoseconds of an rclpy Time/Duration, a builtin_interfaces Time message, a number of seconds or None (0)."""
    if t is None:
        return 0
    if hasattr(t, "nanoseconds"):  # rclpy Time or Duration
        return int(t.nanoseconds)
    if hasattr(t, "sec") and hasattr(t, "nanosec"):
        return int(t.sec) * 1_000_000_000 + int(t.nanosec)
    if isinstance(t, (int, float, np.integer, np.floating)):
        return int(round(float(t) * 1e9))
    raise TypeError(f"expected a time, got {type(t).__name__}")


def _stamp(ns: int):
    """A builtin_interfaces Time message."""
    from builtin_interfaces.msg import Time

    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def _seconds(ns: int) -> str:
    return f"{ns / 1e9:.6f}"


# --------------------------------------------------------------------------- the buffer


def _slerp(q0: np.ndarray, q1: np.ndarray, s: float) -> np.ndarray:
    """Spherical interpolation of unit quaternions (x, y, z, w), shortest path."""
    d = float(q0 @ q1)
    if d < 0.0:
        q1, d = -q1, -d
    if d > 0.9995:  # nearly equal: normalised lerp is exact to rounding
        q = q0 + s * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(np.clip(d, -1.0, 1.0))
    q = (np.sin((1.0 - s) * theta) * q0 + np.sin(s * theta) * q1) / np.sin(theta)
    return q / np.linalg.norm(q)


def _quat_to_matrix(q: np.ndarray) -> np.ndarray:
    x, y, z, w = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


class _TimeCache:
    """The history of one child frame: sorted samples (ns, translation, unit quaternion x y z w)."""

    def __init__(self, parent: str) -> None:
        self.parent = parent
        self.stamps: list[int] = []
        self.values: list[tuple[np.ndarray, np.ndarray]] = []

    def insert(self, ns: int, t: np.ndarray, q: np.ndarray, max_age_ns: int) -> None:
        i = bisect.bisect_left(self.stamps, ns)
        if i < len(self.stamps) and self.stamps[i] == ns:
            self.values[i] = (t, q)
        else:
            self.stamps.insert(i, ns)
            self.values.insert(i, (t, q))
        cut = bisect.bisect_left(self.stamps, self.stamps[-1] - max_age_ns)
        if cut:
            del self.stamps[:cut], self.values[:cut]

    @property
    def latest(self) -> int:
        return self.stamps[-1]

    def at(self, ns: int, child: str) -> np.ndarray:
        """``T_parent_child`` at ``ns`` (0: the latest), interpolated; raises when it would extrapolate."""
        stamps = self.stamps
        if ns == 0:
            ns = stamps[-1]
        if len(stamps) == 1:
            if ns != stamps[0]:
                raise ShimExtrapolationException(
                    f"Lookup would require extrapolation at time {_seconds(ns)}, but only time {_seconds(stamps[0])} "
                    f"is in the buffer, when looking up transform from frame [{child}] to frame [{self.parent}]")
            t, q = self.values[0]
            return make_pose(_quat_to_matrix(q), t)
        if ns > stamps[-1]:
            raise ShimExtrapolationException(
                f"Lookup would require extrapolation into the future. Requested time {_seconds(ns)} but the latest "
                f"data is at time {_seconds(stamps[-1])}, when looking up transform from frame [{child}] to frame "
                f"[{self.parent}]")
        if ns < stamps[0]:
            raise ShimExtrapolationException(
                f"Lookup would require extrapolation into the past. Requested time {_seconds(ns)} but the earliest "
                f"data is at time {_seconds(stamps[0])}, when looking up transform from frame [{child}] to frame "
                f"[{self.parent}]")
        i = bisect.bisect_left(stamps, ns)
        if stamps[i] == ns:
            t, q = self.values[i]
            return make_pose(_quat_to_matrix(q), t)
        (t0, q0), (t1, q1) = self.values[i - 1], self.values[i]
        s = (ns - stamps[i - 1]) / (stamps[i] - stamps[i - 1])
        return make_pose(_quat_to_matrix(_slerp(q0, q1, s)), t0 + s * (t1 - t0))


def _parse_transform(transform) -> tuple[str, str, int, np.ndarray, np.ndarray]:
    parent = transform.header.frame_id.lstrip("/")
    child = transform.child_frame_id.lstrip("/")
    if not parent or not child:
        raise ShimInvalidArgumentException(f"transform with an empty frame name: parent {parent!r}, child {child!r}")
    if parent == child:
        raise ShimInvalidArgumentException(f"transform from frame {child!r} to itself")
    tr, rot = transform.transform.translation, transform.transform.rotation
    t = np.array([tr.x, tr.y, tr.z], dtype=np.float64)
    q = np.array([rot.x, rot.y, rot.z, rot.w], dtype=np.float64)
    norm = np.linalg.norm(q)
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(q))) or norm < 1e-9:
        raise ShimInvalidArgumentException(f"transform {parent} -> {child} is not finite or has a zero quaternion")
    return parent, child, to_nanoseconds(transform.header.stamp), t, q / norm


class ShimBuffer:
    """A TF buffer with the lookup interface of ``tf2_ros.Buffer`` (see the module docstring)."""

    def __init__(self, cache_time=None, node=None) -> None:
        self._max_age_ns = to_nanoseconds(cache_time) if cache_time is not None else 10_000_000_000
        self._dynamic: dict[str, _TimeCache] = {}
        self._static: dict[str, tuple[str, np.ndarray]] = {}
        self._condition = threading.Condition()
        self._node = node

    # ------------------------------------------------------------- filling

    def set_transform(self, transform, authority: str = "") -> bool:
        parent, child, ns, t, q = _parse_transform(transform)
        with self._condition:
            self._static.pop(child, None)
            cache = self._dynamic.get(child)
            if cache is None or cache.parent != parent:  # a new frame, or it was re-parented: start over
                cache = self._dynamic[child] = _TimeCache(parent)
            cache.insert(ns, t, q, self._max_age_ns)
            self._condition.notify_all()
        return True

    def set_transform_static(self, transform, authority: str = "") -> bool:
        parent, child, _, t, q = _parse_transform(transform)
        with self._condition:
            self._dynamic.pop(child, None)
            self._static[child] = (parent, make_pose(_quat_to_matrix(q), t))
            self._condition.notify_all()
        return True

    def clear(self) -> None:
        with self._condition:
            self._dynamic.clear()
            self._static.clear()

    # ------------------------------------------------------------- queries

    def _known(self, frame: str) -> bool:
        if frame in self._dynamic or frame in self._static:
            return True
        return any(c.parent == frame for c in self._dynamic.values()) or any(
            p == frame for p, _ in self._static.values())

    def _parent(self, frame: str) -> tuple[str, object] | None:
        if frame in self._static:
            return self._static[frame][0], self._static[frame][1]
        if frame in self._dynamic:
            return self._dynamic[frame].parent, self._dynamic[frame]
        return None

    def _chain(self, frame: str) -> list[tuple[str, str, object]]:
        """Edges (child, parent, static matrix or time cache) from ``frame`` up to its root."""
        edges, seen = [], {frame}
        while (link := self._parent(frame)) is not None:
            parent, edge = link
            if parent in seen:
                raise ShimLookupException(f"the TF tree has a loop through frame [{parent}]")
            edges.append((frame, parent, edge))
            seen.add(parent)
            frame = parent
        return edges

    def _lookup(self, target: str, source: str, ns: int) -> tuple[np.ndarray, int]:
        target, source = target.lstrip("/"), source.lstrip("/")
        if not target or not source:
            raise ShimInvalidArgumentException("frame names must not be empty")
        for frame in (target, source):
            if not self._known(frame):
                raise ShimLookupException(f'"{frame}" passed to lookupTransform argument '
                                          f'{"target_frame" if frame == target else "source_frame"} does not exist.')
        if target == source:
            return np.eye(4), ns
        up_source, up_target = self._chain(source), self._chain(target)
        frames_target = [target] + [p for _, p, _ in up_target]
        frames_source = [source] + [p for _, p, _ in up_source]
        common = next((f for f in frames_source if f in frames_target), None)
        if common is None:
            raise ShimConnectivityException(
                f"Could not find a connection between '{target}' and '{source}' because they are not part of the "
                f"same tree. Tf has two or more unconnected trees.")
        edges_source = up_source[: frames_source.index(common)]
        edges_target = up_target[: frames_target.index(common)]
        caches = [e for _, _, e in edges_source + edges_target if isinstance(e, _TimeCache)]
        if ns == 0 and caches:
            ns = min(c.latest for c in caches)

        def to_common(edges) -> np.ndarray:
            T = np.eye(4)
            for child, _, edge in edges:  # child -> parent, walking up
                T = (edge.at(ns, child) if isinstance(edge, _TimeCache) else edge) @ T
            return T

        return invert_pose(to_common(edges_target)) @ to_common(edges_source), ns

    def _wait(self, attempt, timeout):
        deadline = _time.monotonic() + max(0.0, to_nanoseconds(timeout) / 1e9)
        with self._condition:
            while True:
                try:
                    return attempt()
                except ShimTransformException:
                    remaining = deadline - _time.monotonic()
                    if remaining <= 0:
                        raise
                    self._condition.wait(min(remaining, 0.05))

    def matrix(self, target_frame: str, source_frame: str, ns: int = 0) -> np.ndarray:
        """``T_target_source`` at ``ns`` nanoseconds (0: latest common), without waiting; needs no ROS."""
        with self._condition:
            return self._lookup(target_frame, source_frame, int(ns))[0]

    def lookup_transform(self, target_frame: str, source_frame: str, time, timeout=None):
        """``TransformStamped`` of ``source_frame`` in ``target_frame`` at ``time`` (0: latest common)."""
        T, ns = self._wait(lambda: self._lookup(target_frame, source_frame, to_nanoseconds(time)), timeout)
        return make_transform_stamped(T, target_frame, source_frame, _stamp(ns))

    def lookup_transform_full(self, target_frame: str, target_time, source_frame: str, source_time,
                              fixed_frame: str, timeout=None):
        """``source_frame`` at ``source_time`` seen from ``target_frame`` at ``target_time`` through ``fixed_frame``."""
        def attempt():
            T_fixed_source, _ = self._lookup(fixed_frame, source_frame, to_nanoseconds(source_time))
            T_target_fixed, ns = self._lookup(target_frame, fixed_frame, to_nanoseconds(target_time))
            return T_target_fixed @ T_fixed_source, ns

        T, ns = self._wait(attempt, timeout)
        return make_transform_stamped(T, target_frame, source_frame, _stamp(ns))

    def can_transform(self, target_frame: str, source_frame: str, time, timeout=None, return_debug_tuple=False):
        try:
            self._wait(lambda: self._lookup(target_frame, source_frame, to_nanoseconds(time)), timeout)
            return (True, "") if return_debug_tuple else True
        except ShimTransformException as exc:
            return (False, str(exc)) if return_debug_tuple else False

    def all_frames_as_yaml(self) -> str:
        with self._condition:
            lines = [f"{c}: {{parent: '{p}', static: true}}" for c, (p, _) in sorted(self._static.items())]
            lines += [f"{c}: {{parent: '{k.parent}', static: false, oldest: {_seconds(k.stamps[0])}, "
                      f"latest: {_seconds(k.latest)}}}" for c, k in sorted(self._dynamic.items())]
        return "\n".join(lines)

    def all_frames_as_string(self) -> str:
        return self.all_frames_as_yaml()


# --------------------------------------------------------------------------- listener and broadcasters


class ShimTransformListener:
    """Fills a buffer from ``/tf`` and ``/tf_static``; the node's executor runs the callbacks."""

    def __init__(self, buffer, node, *, spin_thread: bool = False, qos=None, static_qos=None) -> None:
        from tf2_msgs.msg import TFMessage

        if spin_thread:
            raise ValueError("the local TransformListener runs on the node's executor: pass spin_thread=False")
        self.buffer = buffer
        self.node = node
        self.tf_sub = node.create_subscription(TFMessage, "/tf", self.callback, qos or dynamic_qos())
        self.tf_static_sub = node.create_subscription(TFMessage, "/tf_static", self.static_callback,
                                                      static_qos or static_listener_qos())

    def _store(self, msg, store) -> None:
        for transform in msg.transforms:
            try:
                store(transform, "default_authority")
            except ShimTransformException as exc:
                self.node.get_logger().warning(f"ignored a transform: {exc}", throttle_duration_sec=5.0)

    def callback(self, msg) -> None:
        self._store(msg, self.buffer.set_transform)

    def static_callback(self, msg) -> None:
        self._store(msg, self.buffer.set_transform_static)

    def unregister(self) -> None:
        self.node.destroy_subscription(self.tf_sub)
        self.node.destroy_subscription(self.tf_static_sub)


class ShimTransformBroadcaster:
    """Publishes transforms on ``/tf`` (reliable, volatile, depth 100)."""

    def __init__(self, node, qos=None) -> None:
        from tf2_msgs.msg import TFMessage

        self._message = TFMessage
        self.pub_tf = node.create_publisher(TFMessage, "/tf", qos if qos is not None else dynamic_qos())

    def sendTransform(self, transform) -> None:  # noqa: N802 - the tf2_ros name
        transforms = list(transform) if isinstance(transform, (list, tuple)) else [transform]
        self.pub_tf.publish(self._message(transforms=transforms))


class ShimStaticTransformBroadcaster:
    """Publishes static transforms on ``/tf_static`` (transient-local, depth 1), always the whole set."""

    def __init__(self, node, qos=None) -> None:
        from tf2_msgs.msg import TFMessage

        self._message = TFMessage
        self._net: dict[str, object] = {}
        self.pub_tf = node.create_publisher(TFMessage, "/tf_static",
                                            qos if qos is not None else static_broadcaster_qos())

    def sendTransform(self, transform) -> None:  # noqa: N802 - the tf2_ros name
        for t in list(transform) if isinstance(transform, (list, tuple)) else [transform]:
            self._net[t.child_frame_id] = t
        self.pub_tf.publish(self._message(transforms=list(self._net.values())))


if _tf2_ros is not None:
    Buffer = _tf2_ros.Buffer
    TransformListener = _tf2_ros.TransformListener
    TransformBroadcaster = _tf2_ros.TransformBroadcaster
    StaticTransformBroadcaster = _tf2_ros.StaticTransformBroadcaster
    TransformException = _tf2_ros.TransformException
    LookupException = _tf2_ros.LookupException
    ConnectivityException = _tf2_ros.ConnectivityException
    ExtrapolationException = _tf2_ros.ExtrapolationException
else:
    Buffer = ShimBuffer
    TransformListener = ShimTransformListener
    TransformBroadcaster = ShimTransformBroadcaster
    StaticTransformBroadcaster = ShimStaticTransformBroadcaster
    TransformException = ShimTransformException
    LookupException = ShimLookupException
    ConnectivityException = ShimConnectivityException
    ExtrapolationException = ShimExtrapolationException


def lookup_matrix(buffer, target: str, source: str, time=None, timeout=None) -> np.ndarray:
    """``T_target_source`` as a 4x4 from either implementation's ``lookup_transform``."""
    from rclpy.duration import Duration
    from rclpy.time import Time

    stamp = Time(nanoseconds=to_nanoseconds(time))
    wait = Duration(nanoseconds=to_nanoseconds(timeout))
    return transform_to_matrix(buffer.lookup_transform(target, source, stamp, wait))


__all__ = [
    "USING_TF2_ROS", "Buffer", "ConnectivityException", "ExtrapolationException", "LookupException",
    "ShimBuffer", "ShimStaticTransformBroadcaster", "ShimTransformBroadcaster", "ShimTransformListener",
    "StaticTransformBroadcaster", "TransformBroadcaster", "TransformException", "TransformListener",
    "dynamic_qos", "lookup_matrix", "static_broadcaster_qos", "static_listener_qos", "to_nanoseconds",
]
