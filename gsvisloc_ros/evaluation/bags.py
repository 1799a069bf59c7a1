"""Reading ROS 2 bags for evaluation: camera frames, their camera and ground truth, out of any bag.

Reading (:func:`inspect_bag`, :func:`read_frames`) uses the pure-Python ``rosbags`` library, so it
needs no ROS installation; bags are sqlite3 or mcap, as ``ros2 bag record`` writes them. Writing
synthetic bags: :mod:`gsvisloc_ros.evaluation.bag_writer`.

Topics of a synthetic bag (frame ids from :class:`~gsvisloc_ros.synthetic.trajectories.Rig`):

* ``/camera/image_raw`` (``sensor_msgs/msg/Image``): rgb8 renders of the map; with ``compressed``
  ``/camera/image_raw/compressed`` (``sensor_msgs/msg/CompressedImage``, JPEG) instead;
* ``/camera/camera_info`` (``sensor_msgs/msg/CameraInfo``): pinhole, no distortion;
* ``/tf`` (``tf2_msgs/msg/TFMessage``): ``odom -> base_link``, the drifting odometry;
* ``/tf_static`` (``tf2_msgs/msg/TFMessage``): ``base_link -> camera_optical_frame``, recorded
  with the transient-local offered QoS of a static broadcaster;
* ``/ground_truth/camera_pose`` (``geometry_msgs/msg/PoseStamped``): the true pose of the
  optical frame in ``map`` (T_world_camera), one per image with the image's stamp.

Reading finds the image and camera-info topics by message type when they are not named, decodes
images and camera infos with the node's own rules (:func:`~gsvisloc_ros.ros.messages.message_to_rgb`,
:func:`~gsvisloc_ros.ros.messages.camera_info_to_model`: the same pixels and intrinsics whether a
bag is replayed straight into the localizer or through the node), undistorts them the same way,
and reports every frame it cannot use with the reason instead of stopping.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gsvisloc_ros.camera import PinholeCamera, pose_from_xyz_quat
from gsvisloc_ros.ros.messages import CameraModel, camera_info_to_model, message_to_rgb

log = logging.getLogger(__name__)

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
TF = "tf2_msgs/msg/TFMessage"
POSE_STAMPED = "geometry_msgs/msg/PoseStamped"
POSE_WITH_COV = "geometry_msgs/msg/PoseWithCovarianceStamped"
ODOMETRY = "nav_msgs/msg/Odometry"
TRANSFORM_STAMPED = "geometry_msgs/msg/TransformStamped"
GT_TYPES = (POSE_STAMPED, POSE_WITH_COV, ODOMETRY, TRANSFORM_STAMPED)

DEFAULT_TOPICS = {
    "image": "/camera/image_raw",
    "compressed": "/camera/image_raw/compressed",
    "camera_info": "/camera/camera_info",
    "tf": "/tf",
    "tf_static": "/tf_static",
    "ground_truth": "/ground_truth/camera_pose",
}

# tf2_msgs/msg/TFMessage as defined upstream, for typestores that do not carry tf2_msgs.
TFMESSAGE_MSG = "geometry_msgs/TransformStamped[] transforms\n"


def typestore():
    """The ROS 2 Jazzy typestore of ``rosbags``, with ``tf2_msgs/msg/TFMessage`` registered if missing."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    if TF not in store.fielddefs:
        store.register(get_types_from_msg(TFMESSAGE_MSG, TF))
    return store


def pose_from_message(msg, msgtype: str) -> np.ndarray:
    """4x4 pose of a PoseStamped, PoseWithCovarianceStamped, Odometry or TransformStamped."""
    if msgtype == TRANSFORM_STAMPED:
        t, q = msg.transform.translation, msg.transform.rotation
    else:
        pose = msg.pose.pose if msgtype in (POSE_WITH_COV, ODOMETRY) else msg.pose
        t, q = pose.position, pose.orientation
    return pose_from_xyz_quat([t.x, t.y, t.z, q.x, q.y, q.z, q.w])


def stamp_ns(msg) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


@dataclass
class Frame:
    """One image of the bag, ready for the localizer, or the reason it cannot be used."""

    index: int
    stamp_ns: int
    image: np.ndarray | None = None
    camera: PinholeCamera | None = None
    T_gt: np.ndarray | None = None  # true T_world_camera (map <- optical frame), when the bag has it
    problem: str = ""  # why the frame cannot be evaluated ("" when it can)
    raw: bytes | None = None  # the serialized message (for replay through a node)
    msgtype: str = ""
    model: CameraModel | None = None  # the camera model, distortion included
    info_raw: bytes | None = None  # the serialized camera info used, when from the bag (with keep_raw)
    frame_id: str = ""


@dataclass
class BagContents:
    """The topics chosen to evaluate a bag, and what is in it."""

    path: Path
    image_topic: str
    image_type: str
    camera_info_topic: str | None
    gt_topic: str | None
    gt_type: str | None
    image_count: int
    topics: dict  # every topic -> (type, count)
    notes: list = field(default_factory=list)  # things the user should know (choices made, topics missing)


def _open_reader(path: Path):
    from rosbags.highlevel import AnyReader

    if not path.exists():
        raise FileNotFoundError(f"no bag at {path}")
    target = path
    if path.is_file() and path.suffix in (".db3", ".mcap") and not (path.parent / "metadata.yaml").exists():
        raise ValueError(f"{path}: a ROS 2 bag is a directory with metadata.yaml; this file has none beside it")
    if path.is_file() and path.suffix in (".db3", ".mcap"):
        target = path.parent
    try:
        reader = AnyReader([target], default_typestore=typestore())
        reader.open()
    except Exception as exc:
        raise ValueError(f"cannot open {path} as a ROS 2 bag: {exc}") from None
    return reader


def _namespace(topic: str) -> str:
    """``/camera/image_raw/compressed`` -> ``/camera``."""
    parts = topic.rstrip("/").split("/")
    if parts[-1] in ("compressed", "theora", "compressedDepth"):
        parts = parts[:-1]
    return "/".join(parts[:-1])


def inspect_bag(path: str | Path, image_topic: str | None = None, camera_info_topic: str | None = None,
                gt_topic: str | None = None) -> BagContents:
    """Choose the topics to evaluate (by message type where not given) and list the bag's content."""
    path = Path(path)
    reader = _open_reader(path)
    try:
        topics = {name: (info.msgtype, info.msgcount) for name, info in reader.topics.items()}
    finally:
        reader.close()
    notes: list[str] = []

    def of_type(*types):
        return sorted((t for t, (mt, n) in topics.items() if mt in types and n > 0), key=lambda t: -topics[t][1])

    if image_topic:
        if image_topic not in topics:
            raise ValueError(f"{path} has no topic {image_topic!r}; its image topics: "
                             f"{', '.join(of_type(IMAGE, COMPRESSED)) or 'none'}")
        if topics[image_topic][0] not in (IMAGE, COMPRESSED):
            raise ValueError(f"{image_topic} carries {topics[image_topic][0]}, not {IMAGE} or {COMPRESSED}")
    else:
        candidates = of_type(IMAGE) + of_type(COMPRESSED)  # raw first: no compression loss
        if not candidates:
            raise ValueError(f"{path} has no {IMAGE} or {COMPRESSED} topic with messages; its topics: "
                             + ", ".join(f"{t} ({mt})" for t, (mt, _) in sorted(topics.items())))
        infos = {_namespace(t) for t in of_type(CAMERA_INFO)}
        paired = [t for t in candidates if _namespace(t) in infos]
        image_topic = (paired or candidates)[0]
        if len(candidates) > 1:
            notes.append(f"several image topics ({', '.join(candidates)}): evaluating {image_topic} "
                         "(choose with --image-topic)")
    if camera_info_topic:
        if camera_info_topic not in topics:
            raise ValueError(f"{path} has no topic {camera_info_topic!r}; its camera_info topics: "
                             f"{', '.join(of_type(CAMERA_INFO)) or 'none'}")
    else:
        infos = of_type(CAMERA_INFO)
        same = [t for t in infos if _namespace(t) == _namespace(image_topic)]
        camera_info_topic = (same or infos or [None])[0]
        if camera_info_topic is None:
            notes.append(f"no {CAMERA_INFO} topic: the intrinsics must come from --intrinsics")
        elif not same:
            notes.append(f"no camera_info beside {image_topic}: using {camera_info_topic}")
    if gt_topic:
        if gt_topic not in topics:
            raise ValueError(f"{path} has no ground-truth topic {gt_topic!r}; pose topics: "
                             f"{', '.join(of_type(*GT_TYPES)) or 'none'}")
        if topics[gt_topic][0] not in GT_TYPES:
            raise ValueError(f"{gt_topic} carries {topics[gt_topic][0]}; ground truth must be one of "
                             f"{', '.join(GT_TYPES)}")
    elif DEFAULT_TOPICS["ground_truth"] in topics and topics[DEFAULT_TOPICS["ground_truth"]][0] in GT_TYPES:
        gt_topic = DEFAULT_TOPICS["ground_truth"]
    else:
        notes.append(f"no ground truth ({DEFAULT_TOPICS['ground_truth']} absent; name one with --gt-topic): "
                     "only the localized fraction and latency can be measured")
        gt_topic = None
    return BagContents(path, image_topic, topics[image_topic][0], camera_info_topic, gt_topic,
                       topics[gt_topic][0] if gt_topic else None, topics[image_topic][1], topics, notes)


class _GroundTruth:
    """Poses by time, interpolated (lerp + slerp) between neighbours no further apart than ``max_gap_ns``."""

    def __init__(self, stamps: list[int], poses: list[np.ndarray], max_gap_ns: int = 500_000_000) -> None:
        order = np.argsort(stamps, kind="stable")
        self.stamps = np.asarray(stamps, dtype=np.int64)[order]
        self.poses = [poses[i] for i in order]
        self.max_gap_ns = max_gap_ns

    def at(self, t: int) -> np.ndarray | None:
        from scipy.spatial.transform import Rotation, Slerp

        if len(self.stamps) == 0:
            return None
        i = int(np.searchsorted(self.stamps, t))
        if i < len(self.stamps) and self.stamps[i] == t:
            return self.poses[i]
        if i == 0 or i == len(self.stamps):
            return None  # no extrapolation
        t0, t1 = int(self.stamps[i - 1]), int(self.stamps[i])
        if t1 - t0 > self.max_gap_ns:
            return None
        w = (t - t0) / (t1 - t0)
        A, B = self.poses[i - 1], self.poses[i]
        R = Slerp([0.0, 1.0], Rotation.from_matrix([A[:3, :3], B[:3, :3]]))([w]).as_matrix()[0]
        T = np.eye(4)
        T[:3, :3] = R
        T[:3, 3] = (1 - w) * A[:3, 3] + w * B[:3, 3]
        return T


def read_frames(contents: BagContents, intrinsics: tuple[float, float, float, float] | None = None,
                keep_raw: bool = False) -> Iterator[Frame]:
    """The image frames of a bag with their camera and ground truth, in bag order.

    Camera info and ground truth are read first (small), then images are decoded one by one.
    Each image uses the camera info closest in time (they rarely change); ``intrinsics``
    (fx, fy, cx, cy) replace the bag's, at each image's size. A frame that cannot be used comes
    with ``problem`` set and no image. ``keep_raw``: also keep the serialized image and camera
    info messages (for replay through the node).
    """
    reader = _open_reader(contents.path)
    try:
        by_topic = {c.topic: c for c in reader.connections}
        infos: list[tuple[int, CameraModel | str, bytes]] = []
        gt_stamps, gt_poses = [], []
        side = [by_topic[t] for t in (contents.camera_info_topic, contents.gt_topic) if t in by_topic]
        if intrinsics is None and contents.camera_info_topic is None:
            raise ValueError(f"{contents.path} has no camera_info for {contents.image_topic}: "
                             "give the intrinsics with --intrinsics FX,FY,CX,CY")
        for connection, timestamp, raw in (reader.messages(connections=side) if side else ()):
            try:
                msg = reader.deserialize(raw, connection.msgtype)
            except Exception as exc:
                log.warning("corrupt %s message at t=%d: %s", connection.topic, timestamp, exc)
                continue
            if connection.topic == contents.camera_info_topic:
                try:
                    infos.append((stamp_ns(msg), camera_info_to_model(msg), bytes(raw)))
                except ValueError as exc:
                    infos.append((stamp_ns(msg), str(exc), bytes(raw)))
            else:
                gt_stamps.append(stamp_ns(msg))
                gt_poses.append(pose_from_message(msg, connection.msgtype))
        if intrinsics is None and not infos:
            raise ValueError(f"{contents.path}: {contents.camera_info_topic} has no readable camera_info message; "
                             "give the intrinsics with --intrinsics FX,FY,CX,CY")
        info_stamps = np.asarray([s for s, _, _ in infos], dtype=np.int64)
        truth = _GroundTruth(gt_stamps, gt_poses)
        image_connections = [c for c in reader.connections if c.topic == contents.image_topic]
        for index, (connection, timestamp, raw) in enumerate(reader.messages(connections=image_connections)):
            frame = Frame(index, int(timestamp), raw=bytes(raw) if keep_raw else None, msgtype=connection.msgtype)
            try:
                msg = reader.deserialize(raw, connection.msgtype)
            except Exception as exc:
                frame.problem = f"corrupt message: cannot deserialize {connection.msgtype} ({exc})"
                yield frame
                continue
            frame.stamp_ns = stamp_ns(msg)
            frame.frame_id = str(msg.header.frame_id)
            frame.T_gt = truth.at(frame.stamp_ns)
            try:
                image = message_to_rgb(msg)
            except ValueError as exc:
                frame.problem = str(exc)
                yield frame
                continue
            h, w = image.shape[:2]
            info_raw = None
            if intrinsics is not None:
                model = CameraModel(PinholeCamera(*intrinsics, w, h), frame_id=frame.frame_id)
            else:
                _, model, info_raw = infos[int(np.argmin(np.abs(info_stamps - frame.stamp_ns)))]
                if isinstance(model, str):
                    frame.problem = f"unusable camera_info: {model}"
                    yield frame
                    continue
            if model.camera.size != (w, h):
                frame.problem = (f"the image is {w}x{h} but the camera_info is for "
                                 f"{model.camera.width}x{model.camera.height}")
                yield frame
                continue
            frame.image = model.undistort(image)
            frame.camera = model.camera
            frame.model = model
            if keep_raw:
                frame.info_raw = info_raw
            yield frame
    finally:
        reader.close()


def read_topic(path: str | Path, topic: str) -> Iterator[tuple[int, str, object]]:
    """(bag time ns, message type, message) of every message on ``topic`` (for tests and tools)."""
    reader = _open_reader(Path(path))
    try:
        connections = [c for c in reader.connections if c.topic == topic]
        for connection, timestamp, raw in reader.messages(connections=connections):
            yield timestamp, connection.msgtype, reader.deserialize(raw, connection.msgtype)
    finally:
        reader.close()


def offered_qos(path: str | Path) -> dict[str, list]:
    """topic -> the offered QoS profiles recorded in the bag's metadata."""
    reader = _open_reader(Path(path))
    try:
        return {c.topic: list(getattr(c.ext, "offered_qos_profiles", []) or []) for c in reader.connections}
    finally:
        reader.close()



def raw_messages(path: str | Path, topics) -> list[tuple[int, str, str, bytes]]:
    """(bag time ns, topic, message type, serialized CDR) of the messages on ``topics``, in bag order."""
    reader = _open_reader(Path(path))
    try:
        connections = [c for c in reader.connections if c.topic in set(topics)]
        if not connections:
            return []
        return [(int(t), c.topic, c.msgtype, bytes(raw)) for c, t, raw in reader.messages(connections=connections)]
    finally:
        reader.close()
