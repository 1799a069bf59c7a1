"""Conversions between ROS messages and the numpy types of the localization core.

Decoding (images, camera infos) reads only the messages' fields and imports no ROS package, so
the same functions serve the node (rclpy messages) and bag evaluation (``rosbags`` messages);
building messages needs the message packages, not rclpy.

Images (``sensor_msgs/Image`` and ``CompressedImage``) become uint8 RGB or grey arrays, the input
:meth:`Localizer.localize <gsvisloc_ros.localizer.Localizer.localize>` takes:

============================  ==========================================================
encoding                      what happens
============================  ==========================================================
rgb8, bgr8, rgba8, bgra8      colour (alpha dropped)
8UC3 / 8UC4                   taken as bgr8 / bgra8 (OpenCV's order, as cv_bridge does)
mono8, 8UC1                   grey
mono16                        grey, converted to 8 bit: ``v * 255 / 65535`` (as cv_bridge)
16UC1, 32FC1, other depth     **refused**: depth images, not camera images
bayer_{rggb,bggr,gbrg,grbg}8  demosaiced (OpenCV)
yuv422 (UYVY), yuv422_yuy2    converted (OpenCV)
anything else                 **refused** with the list of supported encodings
============================  ==========================================================

Compressed images: JPEG and PNG (``format`` as written by image_transport, e.g.
``"rgb8; jpeg compressed bgr8"``, or just ``"jpeg"``); ``compressedDepth`` is refused.

Every problem is an :class:`ImageConversionError` or :class:`CameraInfoError` (both
``ValueError``) whose message says what is wrong; nothing here crashes on a malformed message.

Camera models: :func:`camera_info_to_model` checks ``K`` (finite, positive focal lengths, not all
zeros), the image size, binning and ROI, and the distortion model. Distortion is removed from
the **image** (:meth:`CameraModel.undistort`, OpenCV remap with maps cached per CameraInfo) into
the pinhole camera ``K``: the localizer extracts its own keypoints, so undistorting the image is
what keeps the core unaware of distortion. ``R`` (stereo rectification) is deliberately not
applied, so poses stay those of the image's own optical frame.

Poses: 4x4 ``T_parent_child`` matrices <-> ``Pose`` / ``Transform``; covariances 6x6 <-> the
36 row-major floats of ``PoseWithCovariance`` (convention of :mod:`gsvisloc_ros.pose`: centre
in world units, then rotation about the world axes), and their re-expression for another frame
rigidly attached to the camera (:func:`covariance_for_attached_frame`).
"""

from __future__ import annotations

import array
import threading
from dataclasses import dataclass, field

import numpy as np

from gsvisloc_ros.camera import PinholeCamera, make_pose, matrix_to_quat_xyzw, quat_xyzw_to_matrix

# ----------------------------------------------------------------------------- errors


class ImageConversionError(ValueError):
    """An image message that cannot be turned into an RGB or grey array (the message says why)."""


class CameraInfoError(ValueError):
    """A CameraInfo message that does not describe a usable camera (the message says why)."""


# ----------------------------------------------------------------------------- images

#: encoding -> (numpy dtype, channels, how to reach RGB/grey)
_ENCODINGS: dict[str, tuple[str, int, str]] = {
    "rgb8": ("u1", 3, "rgb"),
    "bgr8": ("u1", 3, "bgr"),
    "rgba8": ("u1", 4, "rgba"),
    "bgra8": ("u1", 4, "bgra"),
    "8uc3": ("u1", 3, "bgr"),
    "8uc4": ("u1", 4, "bgra"),
    "mono8": ("u1", 1, "grey"),
    "8uc1": ("u1", 1, "grey"),
    "mono16": ("u2", 1, "grey16"),
    "bayer_rggb8": ("u1", 1, "bayer_rggb"),
    "bayer_bggr8": ("u1", 1, "bayer_bggr"),
    "bayer_gbrg8": ("u1", 1, "bayer_gbrg"),
    "bayer_grbg8": ("u1", 1, "bayer_grbg"),
    "yuv422": ("u1", 2, "uyvy"),
    "uyvy": ("u1", 2, "uyvy"),
    "yuv422_yuy2": ("u1", 2, "yuyv"),
    "yuyv": ("u1", 2, "yuyv"),
}
#: Encodings refused on purpose, with the reason.
_REFUSED = {
    "16uc1": "16UC1 is a depth encoding (millimetres), not a camera image",
    "32fc1": "32FC1 is a depth encoding (metres), not a camera image",
    "16sc1": "16SC1 is not a camera image encoding",
}
SUPPORTED_ENCODINGS = tuple(sorted(_ENCODINGS))


def _supported_list() -> str:
    return ", ".join(SUPPORTED_ENCODINGS)


def _message_bytes(data) -> np.ndarray:
    """The uint8 payload of a message field (array.array, bytes, list) without copying when possible."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    if isinstance(data, list):
        return np.asarray(data, dtype=np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def image_to_array(msg) -> tuple[np.ndarray, str]:
    """The pixels of a ``sensor_msgs/Image`` as stored, and how to read them (``"rgb"``, ``"bgr"``, ...).

    Respects ``step`` (row padding) and ``is_bigendian``. Raises :class:`ImageConversionError`.
    """
    encoding = str(msg.encoding).strip()
    key = encoding.lower()
    if key in _REFUSED:
        raise ImageConversionError(f"image encoding {encoding!r} refused: {_REFUSED[key]}")
    if key not in _ENCODINGS:
        shown = encoding if encoding else "(empty)"
        raise ImageConversionError(f"unsupported image encoding {shown!r}; supported: {_supported_list()}")
    kind, channels, layout = _ENCODINGS[key]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height < 1 or width < 1:
        raise ImageConversionError(f"image has no pixels: {width}x{height}")
    itemsize = np.dtype(kind).itemsize
    row_bytes = width * channels * itemsize
    if step < row_bytes:
        raise ImageConversionError(f"image step {step} is smaller than a row of {width} {encoding} pixels "
                                   f"({row_bytes} bytes)")
    data = _message_bytes(msg.data)
    if data.size < step * (height - 1) + row_bytes:
        raise ImageConversionError(f"image data has {data.size} bytes, {width}x{height} {encoding} with step {step} "
                                   f"needs {step * (height - 1) + row_bytes}")
    if data.size < step * height:  # last row without its padding
        data = np.concatenate([data, np.zeros(step * height - data.size, np.uint8)])
    rows = data[: step * height].reshape(height, step)[:, :row_bytes]
    stored = np.dtype(kind).newbyteorder(">" if msg.is_bigendian else "<")
    pixels = np.ascontiguousarray(rows).view(stored).reshape(height, width, channels)
    if stored.itemsize > 1:
        pixels = pixels.astype(np.dtype(kind).newbyteorder("="))
    return (pixels[:, :, 0] if channels == 1 else pixels), layout


def _to_rgb_or_grey(pixels: np.ndarray, layout: str) -> np.ndarray:
    import cv2

    if layout in ("rgb", "grey"):
        return np.ascontiguousarray(pixels)
    if layout == "bgr":
        return np.ascontiguousarray(pixels[:, :, ::-1])
    if layout == "rgba":
        return np.ascontiguousarray(pixels[:, :, :3])
    if layout == "bgra":
        return np.ascontiguousarray(pixels[:, :, 2::-1])
    if layout == "grey16":
        return np.rint(pixels.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
    if layout.startswith("bayer_"):
        # OpenCV names Bayer patterns by the second row; cv_bridge's mapping: rggb -> BayerBG etc.
        code = {"bayer_rggb": cv2.COLOR_BayerBG2RGB, "bayer_bggr": cv2.COLOR_BayerRG2RGB,
                "bayer_gbrg": cv2.COLOR_BayerGR2RGB, "bayer_grbg": cv2.COLOR_BayerGB2RGB}[layout]
        return cv2.cvtColor(np.ascontiguousarray(pixels), code)
    if layout == "uyvy":
        return cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_YUV2RGB_UYVY)
    if layout == "yuyv":
        return cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_YUV2RGB_YUY2)
    raise ImageConversionError(f"no conversion for {layout!r}")  # pragma: no cover - table and code agree


def image_to_rgb(msg) -> np.ndarray:
    """``sensor_msgs/Image`` -> uint8 [H, W, 3] RGB, or uint8 [H, W] for grey encodings."""
    pixels, layout = image_to_array(msg)
    return _to_rgb_or_grey(pixels, layout)


def compressed_to_rgb(msg) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (JPEG/PNG) -> uint8 RGB or grey. Raises :class:`ImageConversionError`."""
    import cv2

    fmt = str(msg.format).strip()
    lowered = fmt.lower()
    if "compresseddepth" in lowered:
        raise ImageConversionError(f"compressed image format {fmt!r} refused: a compressed depth image, "
                                   "not a camera image")
    if lowered.startswith(("16uc1", "32fc1")):
        raise ImageConversionError(f"compressed image format {fmt!r} refused: a depth encoding, not a camera image")
    data = _message_bytes(msg.data)
    if data.size == 0:
        raise ImageConversionError("compressed image has no data")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageConversionError(f"cannot decode compressed image (format {fmt!r}, {data.size} bytes): "
                                   "expected JPEG or PNG")
    if image.dtype == np.uint16:
        image = np.rint(image.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageConversionError(f"compressed image decodes to {image.dtype}, expected 8 or 16 bit")
    if image.ndim == 2:
        return image
    if image.shape[2] == 1:
        return np.ascontiguousarray(image[:, :, 0])
    if image.shape[2] == 4:
        return np.ascontiguousarray(image[:, :, 2::-1])
    return np.ascontiguousarray(image[:, :, ::-1])


def rgb_to_image(image: np.ndarray, encoding: str = "rgb8", header=None):
    """uint8 RGB [H, W, 3] (or grey [H, W]) -> ``sensor_msgs/Image`` in ``encoding`` (rgb8, bgr8 or mono8)."""
    from sensor_msgs.msg import Image

    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ImageConversionError(f"expected a uint8 image, got {image.dtype}")
    if encoding == "mono8":
        if image.ndim == 3:
            image = np.rint(image[..., :3] @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    elif encoding in ("rgb8", "bgr8"):
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        image = image[:, :, :3] if encoding == "rgb8" else image[:, :, 2::-1]
    else:
        raise ImageConversionError(f"cannot write encoding {encoding!r}: use rgb8, bgr8 or mono8")
    image = np.ascontiguousarray(image)
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(image.strides[0])
    msg.data = array.array("B", image.tobytes())
    return msg


def rgb_to_compressed(image: np.ndarray, fmt: str = "jpeg", header=None, quality: int = 90):
    """uint8 RGB or grey -> ``sensor_msgs/CompressedImage`` (``fmt`` ``"jpeg"`` or ``"png"``)."""
    import cv2
    from sensor_msgs.msg import CompressedImage

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ImageConversionError(f"expected a uint8 RGB or grey image, got {image.dtype} {image.shape}")
    if fmt not in ("jpeg", "png"):
        raise ImageConversionError(f"compressed format must be 'jpeg' or 'png', got {fmt!r}")
    bgr = image if image.ndim == 2 else np.ascontiguousarray(image[:, :, 2::-1])
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else []
    ok, buf = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", bgr, params)
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
        raise ImageConversionError(f"OpenCV could not encode the image as {fmt}")
    msg = CompressedImage()
    if header is not None:
        msg.header = header
    source = "mono8" if image.ndim == 2 else "rgb8"
    msg.format = f"{source}; {fmt} compressed {'mono8' if image.ndim == 2 else 'bgr8'}"
    msg.data = array.array("B", buf.tobytes())
    return msg


def message_to_rgb(msg) -> np.ndarray:
    """An ``Image`` or ``CompressedImage`` as uint8 RGB or grey, by this module's rules.

    The one image decoder of the package: the node and bag evaluation both call it, with rclpy's
    or rosbags' messages (it reads only the messages' fields).
    """
    if hasattr(msg, "format") and not hasattr(msg, "encoding"):
        return compressed_to_rgb(msg)
    return image_to_rgb(msg)


# ----------------------------------------------------------------------------- camera models

DISTORTION_MODELS = ("plumb_bob", "rational_polynomial", "equidistant")


@dataclass
class CameraModel:
    """A camera from CameraInfo: the pinhole ``camera`` after undistortion, and its distortion.

    ``distortion_model`` is ``"none"`` when every coefficient is zero (nothing to undo).
    """

    camera: PinholeCamera
    distortion_model: str = "none"
    D: np.ndarray = field(default_factory=lambda: np.zeros(0))
    frame_id: str = ""
    _maps: tuple | None = field(default=None, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def distorted(self) -> bool:
        return self.distortion_model != "none"

    def undistort(self, image: np.ndarray) -> np.ndarray:
        """``image`` resampled into the pinhole ``camera`` (unchanged when there is no distortion)."""
        if not self.distorted:
            return image
        import cv2

        h, w = image.shape[:2]
        if (w, h) != self.camera.size:
            raise CameraInfoError(f"image is {w}x{h} but camera_info is for {self.camera.width}x{self.camera.height}")
        with self._lock:
            if self._maps is None:
                K, size = self.camera.K, self.camera.size
                if self.distortion_model == "equidistant":
                    self._maps = cv2.fisheye.initUndistortRectifyMap(K, self.D[:4], np.eye(3), K, size, cv2.CV_16SC2)
                else:
                    self._maps = cv2.initUndistortRectifyMap(K, self.D, np.eye(3), K, size, cv2.CV_16SC2)
            map1, map2 = self._maps
        return cv2.remap(image, map1, map2, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def camera_info_to_model(msg) -> CameraModel:
    """``sensor_msgs/CameraInfo`` -> :class:`CameraModel`, or :class:`CameraInfoError` saying what is wrong.

    Binning and ROI are folded into the intrinsics of the image actually received.
    """
    K = np.asarray(list(msg.k), dtype=np.float64)
    if K.size != 9:
        raise CameraInfoError(f"camera_info K has {K.size} values, expected 9")
    if not np.all(np.isfinite(K)):
        raise CameraInfoError(f"camera_info K is not finite: {K.tolist()}")
    if not np.any(K):
        raise CameraInfoError("camera_info K is all zeros (uncalibrated camera): calibrate it, or publish K")
    K = K.reshape(3, 3)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if fx <= 0 or fy <= 0:
        raise CameraInfoError(f"camera_info K has non-positive focal lengths fx={fx}, fy={fy}")
    width, height = int(msg.width), int(msg.height)
    if width < 1 or height < 1:
        raise CameraInfoError(f"camera_info has no image size ({width}x{height})")
    bx, by = max(1, int(msg.binning_x)), max(1, int(msg.binning_y))
    roi = msg.roi
    if int(roi.width) > 0 and int(roi.height) > 0 and (int(roi.width), int(roi.height)) != (width, height):
        cx, cy = cx - int(roi.x_offset), cy - int(roi.y_offset)
        width, height = int(roi.width), int(roi.height)
    if bx > 1 or by > 1:
        fx, fy = fx / bx, fy / by
        cx, cy = (cx + 0.5) / bx - 0.5, (cy + 0.5) / by - 0.5
        width, height = width // bx, height // by
    D = np.asarray(list(msg.d), dtype=np.float64)
    if not np.all(np.isfinite(D)):
        raise CameraInfoError(f"camera_info distortion D is not finite: {D.tolist()}")
    model = str(msg.distortion_model).strip()
    try:
        camera = PinholeCamera(float(fx), float(fy), float(cx), float(cy), width, height)
    except ValueError as exc:
        raise CameraInfoError(f"camera_info: {exc}") from None
    if D.size == 0 or not np.any(D):
        return CameraModel(camera, "none", np.zeros(0), str(msg.header.frame_id))
    if model not in DISTORTION_MODELS:
        raise CameraInfoError(f"camera_info distortion model {model!r} is not supported "
                              f"(supported: {', '.join(DISTORTION_MODELS)}); rectify the image first")
    sizes = (4,) if model == "equidistant" else (4, 5, 8, 12, 14)  # what OpenCV accepts
    if D.size not in sizes:
        raise CameraInfoError(f"camera_info distortion model {model!r} takes {' or '.join(map(str, sizes))} "
                              f"coefficients, got {D.size}")
    return CameraModel(camera, model, D, str(msg.header.frame_id))


def camera_to_camera_info(camera: PinholeCamera, frame_id: str = "", D=(), model: str = "plumb_bob", header=None):
    """A ``sensor_msgs/CameraInfo`` for a pinhole camera (P = [K | 0], R = I)."""
    from sensor_msgs.msg import CameraInfo

    msg = CameraInfo()
    if header is not None:
        msg.header = header
    msg.header.frame_id = frame_id or msg.header.frame_id
    msg.width, msg.height = camera.size
    msg.k = [float(v) for v in camera.K.ravel()]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [camera.fx, 0.0, camera.cx, 0.0, 0.0, camera.fy, camera.cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    msg.distortion_model = model
    msg.d = [float(v) for v in D] if len(D) else [0.0] * 5
    return msg


# ----------------------------------------------------------------------------- poses


def _quat_matrix(x, y, z, w) -> np.ndarray:
    try:
        return quat_xyzw_to_matrix([x, y, z, w])
    except ValueError as exc:
        raise ValueError(f"bad orientation: {exc}") from None


def pose_to_matrix(pose) -> np.ndarray:
    """``geometry_msgs/Pose`` -> 4x4 (quaternion normalised; zero or non-finite ones raise ValueError)."""
    p, q = pose.position, pose.orientation
    t = np.array([p.x, p.y, p.z], dtype=np.float64)
    if not np.all(np.isfinite(t)):
        raise ValueError(f"bad position: {t.tolist()}")
    return make_pose(_quat_matrix(q.x, q.y, q.z, q.w), t)


def matrix_to_pose(T: np.ndarray):
    """4x4 -> ``geometry_msgs/Pose`` (quaternion x, y, z, w with w >= 0)."""
    from geometry_msgs.msg import Pose

    T = np.asarray(T, dtype=np.float64)
    msg = Pose()
    msg.position.x, msg.position.y, msg.position.z = (float(v) for v in T[:3, 3])
    q = matrix_to_quat_xyzw(T[:3, :3])
    msg.orientation.x, msg.orientation.y, msg.orientation.z, msg.orientation.w = (float(v) for v in q)
    return msg


def transform_to_matrix(transform) -> np.ndarray:
    """``geometry_msgs/Transform`` (or a TransformStamped) -> 4x4 ``T_parent_child``."""
    transform = getattr(transform, "transform", transform)
    t, q = transform.translation, transform.rotation
    v = np.array([t.x, t.y, t.z], dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError(f"bad translation: {v.tolist()}")
    return make_pose(_quat_matrix(q.x, q.y, q.z, q.w), v)


def matrix_to_transform(T: np.ndarray):
    """4x4 ``T_parent_child`` -> ``geometry_msgs/Transform``."""
    from geometry_msgs.msg import Transform

    T = np.asarray(T, dtype=np.float64)
    msg = Transform()
    msg.translation.x, msg.translation.y, msg.translation.z = (float(v) for v in T[:3, 3])
    q = matrix_to_quat_xyzw(T[:3, :3])
    msg.rotation.x, msg.rotation.y, msg.rotation.z, msg.rotation.w = (float(v) for v in q)
    return msg


def make_transform_stamped(T: np.ndarray, parent: str, child: str, stamp):
    """A ``geometry_msgs/TransformStamped`` ``parent -> child`` at ``stamp`` (a builtin Time message)."""
    from geometry_msgs.msg import TransformStamped

    msg = TransformStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = parent
    msg.child_frame_id = child
    msg.transform = matrix_to_transform(T)
    return msg


def covariance_to_msg(cov: np.ndarray) -> list[float]:
    """6x6 -> the 36 row-major floats of ``PoseWithCovariance.covariance``."""
    cov = np.asarray(cov, dtype=np.float64)
    if cov.shape != (6, 6):
        raise ValueError(f"covariance must be 6x6, got {cov.shape}")
    return [float(v) for v in cov.reshape(36)]


def covariance_from_msg(values) -> np.ndarray:
    """The 36 row-major floats of a ``PoseWithCovariance`` -> 6x6."""
    cov = np.asarray(list(values), dtype=np.float64)
    if cov.size != 36:
        raise ValueError(f"a pose covariance has 36 values, got {cov.size}")
    return cov.reshape(6, 6)


def covariance_for_attached_frame(cov: np.ndarray, T_world_camera: np.ndarray,
                                  T_camera_frame: np.ndarray) -> np.ndarray:
    """Covariance of ``T_world_frame = T_world_camera @ T_camera_frame`` from that of ``T_world_camera``.

    Both in the convention of :mod:`gsvisloc_ros.pose` (world-frame perturbation: the centre moves by
    ``t``, the orientation turns by ``r`` about the world axes through the centre). A frame rigidly
    attached at world offset ``d = R_world_camera @ t_camera_frame`` from the camera centre moves by
    ``t + r x d = t - [d]x r`` and turns by the same ``r``:  ``J = [[I, -[d]x], [0, I]]``, ``J C J^T``.
    """
    d = np.asarray(T_world_camera, dtype=np.float64)[:3, :3] @ np.asarray(T_camera_frame, dtype=np.float64)[:3, 3]
    skew = np.array([[0.0, -d[2], d[1]], [d[2], 0.0, -d[0]], [-d[1], d[0], 0.0]])
    J = np.eye(6)
    J[:3, 3:] = -skew
    out = J @ np.asarray(cov, dtype=np.float64) @ J.T
    return 0.5 * (out + out.T)


# ----------------------------------------------------------------------------- point clouds


def make_point_cloud(points: np.ndarray, colors: np.ndarray | None, frame_id: str, stamp):
    """``sensor_msgs/PointCloud2`` with float32 x, y, z and (when ``colors`` [N,3] in [0,1]) packed ``rgb``.

    ``rgb`` is a float32 field holding 0x00RRGGBB, which RViz's "RGB8" colour transformer reads.
    """
    from sensor_msgs.msg import PointCloud2, PointField

    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, n in enumerate("xyz")]
    dtype = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        fields.append(PointField(name="rgb", offset=12, datatype=PointField.FLOAT32, count=1))
        dtype.append(("rgb", "<u4"))
    cloud = np.zeros(len(points), dtype=dtype)
    cloud["x"], cloud["y"], cloud["z"] = points[:, 0], points[:, 1], points[:, 2]
    if colors is not None:
        c = np.clip(np.rint(np.asarray(colors, dtype=np.float64).reshape(-1, 3) * 255.0), 0, 255).astype(np.uint32)
        cloud["rgb"] = (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]
    msg = PointCloud2()
    msg.header.frame_id = frame_id
    msg.header.stamp = stamp
    msg.height, msg.width = 1, len(points)
    msg.fields = fields
    msg.is_bigendian = False
    msg.point_step = cloud.dtype.itemsize
    msg.row_step = msg.point_step * len(points)
    msg.is_dense = True
    msg.data = array.array("B", cloud.tobytes())
    return msg


def point_cloud_to_arrays(msg) -> tuple[np.ndarray, np.ndarray | None]:
    """(points [N,3] float32, colours [N,3] uint8 or None) of a cloud written by :func:`make_point_cloud`."""
    names = {f.name: f.offset for f in msg.fields}
    n = int(msg.width) * int(msg.height)
    raw = _message_bytes(msg.data)[: n * int(msg.point_step)].reshape(n, int(msg.point_step))
    xyz = np.stack([raw[:, names[a]: names[a] + 4].copy().view("<f4")[:, 0] for a in "xyz"], axis=1)
    if "rgb" not in names:
        return xyz, None
    packed = raw[:, names["rgb"]: names["rgb"] + 4].copy().view("<u4")[:, 0]
    rgb = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], axis=1).astype(np.uint8)
    return xyz, rgb
