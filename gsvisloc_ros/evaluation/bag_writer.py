"""Writing ROS 2 bags: camera frames, TF and ground truth, and whole synthetic bags rendered from a map.

Written with the pure-Python ``rosbags`` library (no ROS installation needed), in sqlite3 or mcap
storage, as ``ros2 bag record`` writes them; they play back with ``ros2 bag play`` and read back
with :mod:`gsvisloc_ros.evaluation.bags` (topics and types: see there).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gsvisloc_ros.camera import PinholeCamera, matrix_to_quat_xyzw
from gsvisloc_ros.evaluation.bags import (
    CAMERA_INFO,
    COMPRESSED,
    DEFAULT_TOPICS,
    IMAGE,
    POSE_STAMPED,
    TF,
    TRANSFORM_STAMPED,
    typestore,
)

STORAGES = ("sqlite3", "mcap")

#: Start of synthetic bags' clocks (ns since the epoch): fixed so that bags are reproducible.
SYNTHETIC_START_NS = 1_700_000_000 * 1_000_000_000


def _qos(durability: str = "volatile", depth: int = 10, reliable: bool = True):
    """A recorded offered-QoS profile (as ``ros2 bag record`` stores it in the metadata)."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    infinite = QosTime(0x7FFFFFFF, 0xFFFFFFFF)  # rmw's "infinite" duration, as recorded by rosbag2
    return Qos(
        history=QosHistory.KEEP_LAST, depth=depth,
        reliability=QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
        durability=QosDurability.TRANSIENT_LOCAL if durability == "transient_local" else QosDurability.VOLATILE,
        deadline=infinite, lifespan=infinite, liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=infinite, avoid_ros_namespace_conventions=False,
    )


# ---------------------------------------------------------------------------------------- writing


class BagWriter:
    """Write camera frames, tf and ground truth into a new ROS 2 bag (a context manager).

    ``storage``: ``"sqlite3"`` or ``"mcap"``. ``compressed``: images as JPEG ``CompressedImage``
    on ``<image topic>/compressed`` instead of raw ``rgb8`` ``Image``.
    """

    def __init__(self, path: str | Path, storage: str = "sqlite3", compressed: bool = False,
                 topics: dict | None = None, jpeg_quality: int = 92) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        if storage not in STORAGES:
            raise ValueError(f"unknown storage {storage!r}; choose one of {', '.join(STORAGES)}")
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"{self.path} exists already: a bag is written to a new directory")
        self.store = typestore()
        self.types = self.store.types
        self.compressed = compressed
        self.jpeg_quality = jpeg_quality
        self.topics = {**DEFAULT_TOPICS, **(topics or {})}
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=9, storage_plugin=plugin)
        self._connections: dict[str, object] = {}
        self.counts: dict[str, int] = {}

    def __enter__(self) -> BagWriter:
        self._writer.open()
        image_topic = self.topics["compressed" if self.compressed else "image"]
        sensor = _qos(depth=10)
        for key, topic, msgtype, qos in (
            ("image", image_topic, COMPRESSED if self.compressed else IMAGE, sensor),
            ("camera_info", self.topics["camera_info"], CAMERA_INFO, sensor),
            ("tf_static", self.topics["tf_static"], TF, _qos("transient_local", depth=1)),
            ("tf", self.topics["tf"], TF, _qos(depth=100)),
            ("ground_truth", self.topics["ground_truth"], POSE_STAMPED, _qos(depth=10)),
        ):
            self._connections[key] = self._writer.add_connection(
                topic, msgtype, typestore=self.store, offered_qos_profiles=[qos])
            self.counts[topic] = 0
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._writer.close()

    # -- messages

    def _header(self, stamp_ns: int, frame_id: str):
        t = self.types
        return t["std_msgs/msg/Header"](
            stamp=t["builtin_interfaces/msg/Time"](sec=int(stamp_ns // 1_000_000_000),
                                                   nanosec=int(stamp_ns % 1_000_000_000)),
            frame_id=frame_id)

    def _transform(self, stamp_ns: int, parent: str, child: str, T: np.ndarray):
        t = self.types
        x, y, z = (float(v) for v in T[:3, 3])
        qx, qy, qz, qw = (float(v) for v in matrix_to_quat_xyzw(T[:3, :3]))
        return t[TRANSFORM_STAMPED](
            header=self._header(stamp_ns, parent), child_frame_id=child,
            transform=t["geometry_msgs/msg/Transform"](
                translation=t["geometry_msgs/msg/Vector3"](x=x, y=y, z=z),
                rotation=t["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw)))

    def _write(self, key: str, stamp_ns: int, msg) -> None:
        connection = self._connections[key]
        self._writer.write(connection, int(stamp_ns), self.store.serialize_cdr(msg, connection.msgtype))
        self.counts[connection.topic] += 1

    def write_static_transform(self, stamp_ns: int, parent: str, child: str, T_parent_child: np.ndarray) -> None:
        self._write("tf_static", stamp_ns,
                    self.types[TF](transforms=[self._transform(stamp_ns, parent, child, T_parent_child)]))

    def write_transform(self, stamp_ns: int, parent: str, child: str, T_parent_child: np.ndarray) -> None:
        self._write("tf", stamp_ns, self.types[TF](transforms=[self._transform(stamp_ns, parent, child,
                                                                                 T_parent_child)]))

    def write_image(self, stamp_ns: int, frame_id: str, rgb: np.ndarray) -> None:
        """An RGB uint8 image [H, W, 3] (raw ``rgb8``, or JPEG when the bag is ``compressed``)."""
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        header = self._header(stamp_ns, frame_id)
        if self.compressed:
            import cv2

            ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                    [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            if not ok:
                raise RuntimeError("OpenCV could not encode a JPEG")
            msg = self.types[COMPRESSED](header=header, format="rgb8; jpeg compressed bgr8",
                                         data=np.asarray(data, np.uint8).reshape(-1))
        else:
            h, w = rgb.shape[:2]
            msg = self.types[IMAGE](header=header, height=h, width=w, encoding="rgb8", is_bigendian=0,
                                    step=3 * w, data=rgb.reshape(-1))
        self._write("image", stamp_ns, msg)

    def write_camera_info(self, stamp_ns: int, frame_id: str, camera: PinholeCamera, distortion=None) -> None:
        """``camera``'s intrinsics and OpenCV ``distortion`` (k1, k2, p1, p2[, k3]; none: zeros) as plumb-bob."""
        t = self.types
        K = camera.K
        P = np.hstack([K, np.zeros((3, 1))])
        d = np.zeros(5)
        if distortion is not None:
            d[: len(distortion)] = np.asarray(distortion, dtype=np.float64)[:5]
        msg = t[CAMERA_INFO](
            header=self._header(stamp_ns, frame_id), height=camera.height, width=camera.width,
            distortion_model="plumb_bob", d=d, k=K.reshape(-1), r=np.eye(3).reshape(-1),
            p=P.reshape(-1), binning_x=0, binning_y=0,
            roi=t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
        self._write("camera_info", stamp_ns, msg)

    def write_pose(self, stamp_ns: int, frame_id: str, T: np.ndarray) -> None:
        t = self.types
        x, y, z = (float(v) for v in T[:3, 3])
        qx, qy, qz, qw = (float(v) for v in matrix_to_quat_xyzw(T[:3, :3]))
        msg = t[POSE_STAMPED](header=self._header(stamp_ns, frame_id), pose=t["geometry_msgs/msg/Pose"](
            position=t["geometry_msgs/msg/Point"](x=x, y=y, z=z),
            orientation=t["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw)))
        self._write("ground_truth", stamp_ns, msg)


@dataclass
class BagSummary:
    """What :func:`write_synthetic_bag` wrote."""

    path: Path
    storage: str
    frames: int
    counts: dict  # topic -> messages
    camera: PinholeCamera
    seconds: float

    def to_dict(self) -> dict:
        c = self.camera
        return {"path": str(self.path), "storage": self.storage, "frames": self.frames, "topics": self.counts,
                "camera": {"fx": c.fx, "fy": c.fy, "cx": c.cx, "cy": c.cy, "width": c.width, "height": c.height},
                "seconds": round(self.seconds, 2)}


def write_synthetic_bag(path: str | Path, gmap, trajectory, camera: PinholeCamera, storage: str = "sqlite3",
                        compressed: bool = False, progress: bool = True,
                        start_ns: int = SYNTHETIC_START_NS) -> BagSummary:
    """Render ``gmap`` along ``trajectory`` with ``camera`` and write every frame into a new bag.

    Per frame: the image, the camera info, ``odom -> base_link`` on ``/tf`` and the true optical
    frame pose in ``map``. Once, first: ``base_link -> camera_optical_frame`` on ``/tf_static``.
    """
    import time

    from tqdm import tqdm

    from gsvisloc_ros.camera import invert_pose
    from gsvisloc_ros.render import render

    start = time.perf_counter()
    rig = trajectory.rig
    stamps = start_ns + np.rint(np.asarray(trajectory.stamps) * 1e9).astype(np.int64)
    near = 0.01 * float(np.median(np.linalg.norm(gmap.means - np.median(gmap.means, axis=0), axis=1)) + 1e-9)
    path = Path(path)
    try:
        with BagWriter(path, storage, compressed) as bag:
            bag.write_static_transform(int(stamps[0]), rig.base_frame, rig.camera_frame, trajectory.T_base_camera)
            frames = zip(stamps, trajectory.T_map_camera, trajectory.T_odom_base, strict=True)
            for stamp, T_map_camera, T_odom_base in tqdm(frames, total=len(stamps), desc="rendering frames",
                                                          unit="frame", disable=not progress):
                image = render(gmap, camera, invert_pose(T_map_camera), near=near).rgb_u8
                bag.write_transform(int(stamp), rig.odom_frame, rig.base_frame, T_odom_base)
                bag.write_camera_info(int(stamp), rig.camera_frame, camera)
                bag.write_image(int(stamp), rig.camera_frame, image)
                bag.write_pose(int(stamp), rig.map_frame, T_map_camera)
    except BaseException:
        import shutil

        shutil.rmtree(path, ignore_errors=True)  # never leave half a bag behind
        raise
    return BagSummary(path, storage, len(stamps), dict(bag.counts), camera, time.perf_counter() - start)


def write_photo_bag(path: str | Path, photo_set, rate_hz: float = 1.0, storage: str = "sqlite3",
                    compressed: bool = False, progress: bool = True, start_ns: int = SYNTHETIC_START_NS,
                    frame_id: str = "camera_optical_frame") -> BagSummary:
    """Write the photos of a posed photo set (:func:`gsvisloc_ros.io.photosets.load_photo_set`), in
    name order at ``rate_hz``, into a new bag: each photo as it is on disk (distorted), its camera
    info with the distortion, and its pose as the ground truth. No ``/tf``: photos have no odometry."""
    import time

    import cv2
    from tqdm import tqdm

    if not rate_hz > 0:
        raise ValueError(f"the rate must be positive, got {rate_hz}")
    start = time.perf_counter()
    path = Path(path)
    photos = list(photo_set.photos)
    try:
        with BagWriter(path, storage, compressed) as bag:
            for i, photo in enumerate(tqdm(photos, desc="writing photos", unit="photo", disable=not progress)):
                bgr = cv2.imread(str(photo.path), cv2.IMREAD_COLOR)
                if bgr is None:
                    raise ValueError(f"cannot read the photo {photo.path}")
                if (bgr.shape[1], bgr.shape[0]) != photo.camera.size:
                    raise ValueError(f"the photo {photo.name} is {bgr.shape[1]}x{bgr.shape[0]} but its camera "
                                     f"says {photo.camera.width}x{photo.camera.height}")
                stamp = start_ns + int(round(i / rate_hz * 1e9))
                bag.write_camera_info(stamp, frame_id, photo.camera, photo.distortion)
                bag.write_image(stamp, frame_id, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                bag.write_pose(stamp, "map", photo.T_world_camera)
    except BaseException:
        import shutil

        shutil.rmtree(path, ignore_errors=True)  # never leave half a bag behind
        raise
    camera = photos[0].camera if photos else None
    return BagSummary(path, storage, len(photos), dict(bag.counts), camera, time.perf_counter() - start)
