"""Conversions between ROS messages and numpy (gsvisloc_ros/ros/messages.py); no DDS needed."""

from __future__ import annotations

import array

import cv2
import numpy as np
import pytest

pytest.importorskip("sensor_msgs")

from builtin_interfaces.msg import Time  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402

from gsvisloc_ros.camera import PinholeCamera, look_at  # noqa: E402
from gsvisloc_ros.ros import messages as M  # noqa: E402

CAMERA = PinholeCamera(400.0, 410.0, 319.5, 239.5, 640, 480)
RNG = np.random.default_rng(3)
RGB = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)


def _image(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> Image:
    pixels = np.ascontiguousarray(pixels)
    h, w = pixels.shape[:2]
    if pixels.dtype.itemsize > 1:
        pixels = pixels.astype(pixels.dtype.newbyteorder(">" if bigendian else "<"))
    rows = pixels.reshape(h, -1).view(np.uint8)
    rows = np.concatenate([rows, np.zeros((h, pad), np.uint8)], axis=1)
    return Image(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian), step=rows.shape[1],
                 data=array.array("B", rows.tobytes()))


@pytest.mark.parametrize("encoding,pixels", [
    ("rgb8", RGB),
    ("bgr8", RGB[:, :, ::-1]),
    ("8UC3", RGB[:, :, ::-1]),
    ("rgba8", np.dstack([RGB, np.full(RGB.shape[:2], 7, np.uint8)])),
    ("bgra8", np.dstack([RGB[:, :, ::-1], np.full(RGB.shape[:2], 7, np.uint8)])),
])
@pytest.mark.parametrize("pad", [0, 3])
def test_colour_encodings_become_rgb(encoding, pixels, pad):
    out = M.image_to_rgb(_image(pixels, encoding, pad))
    assert out.dtype == np.uint8 and out.shape == RGB.shape
    np.testing.assert_array_equal(out, RGB)


def test_grey_encodings():
    grey = RGB[:, :, 0]
    np.testing.assert_array_equal(M.image_to_rgb(_image(grey, "mono8", pad=2)), grey)
    np.testing.assert_array_equal(M.image_to_rgb(_image(grey, "8UC1")), grey)
    wide = (grey.astype(np.uint16) * 257)  # full 16-bit range: converted back exactly
    for bigendian in (False, True):
        np.testing.assert_array_equal(M.image_to_rgb(_image(wide, "mono16", pad=2, bigendian=bigendian)), grey)


@pytest.mark.parametrize("encoding,why", [
    ("16UC1", "depth"),
    ("32FC1", "depth"),
    ("nv21", "unsupported image encoding 'nv21'"),
    ("", "unsupported image encoding '(empty)'"),
])
def test_refused_encodings_say_why(encoding, why):
    with pytest.raises(M.ImageConversionError, match=why.replace("(", r"\(").replace(")", r"\)")):
        M.image_to_rgb(_image(np.zeros((4, 4), np.uint16 if "16" in encoding else np.uint8), encoding))


def test_malformed_images_are_refused():
    msg = _image(RGB, "rgb8")
    short = Image(height=6, width=5, encoding="rgb8", step=15, data=array.array("B", bytes(40)))
    with pytest.raises(M.ImageConversionError, match="needs"):
        M.image_to_rgb(short)
    msg.step = 10
    with pytest.raises(M.ImageConversionError, match="step"):
        M.image_to_rgb(msg)
    with pytest.raises(M.ImageConversionError, match="no pixels"):
        M.image_to_rgb(Image(height=0, width=5, encoding="rgb8", step=15))


def test_bayer_and_yuv_are_converted():
    colour = np.array([200, 100, 50], np.uint8)
    mosaic = np.zeros((8, 8), np.uint8)  # RGGB: R at (even, even), B at (odd, odd), G elsewhere
    mosaic[0::2, 0::2], mosaic[1::2, 1::2] = colour[0], colour[2]
    mosaic[0::2, 1::2] = mosaic[1::2, 0::2] = colour[1]
    out = M.image_to_rgb(_image(mosaic, "bayer_rggb8"))
    np.testing.assert_allclose(out[4, 4].astype(int), colour.astype(int), atol=2)
    grey = np.full((4, 8, 2), 128, np.uint8)  # Y = U = V = 128
    for encoding in ("yuv422", "yuv422_yuy2"):
        out = M.image_to_rgb(_image(grey, encoding))
        assert out.shape == (4, 8, 3) and np.all(np.abs(out.astype(int) - 128) <= 2)


def test_compressed_png_and_jpeg():
    big = cv2.resize(RGB, (64, 48), interpolation=cv2.INTER_NEAREST)
    png = M.rgb_to_compressed(big, "png")
    assert "png" in png.format
    np.testing.assert_array_equal(M.compressed_to_rgb(png), big)
    smooth = np.dstack([*np.meshgrid(np.arange(64) * 3, np.arange(48) * 4), np.full((48, 64), 90)]).astype(np.uint8)
    jpeg = M.rgb_to_compressed(smooth, "jpeg", quality=95)
    assert np.abs(M.compressed_to_rgb(jpeg).astype(int) - smooth).mean() < 3
    grey = M.compressed_to_rgb(M.rgb_to_compressed(big[:, :, 0], "png"))
    np.testing.assert_array_equal(grey, big[:, :, 0])
    assert M.message_to_rgb(png).shape == big.shape  # dispatch on the message type


@pytest.mark.parametrize("fmt,data,why", [
    ("16UC1; compressedDepth png", b"\x89PNG", "depth"),
    ("jpeg", b"", "no data"),
    ("jpeg", b"not an image at all", "cannot decode"),
])
def test_bad_compressed_images_are_refused(fmt, data, why):
    with pytest.raises(M.ImageConversionError, match=why):
        M.compressed_to_rgb(CompressedImage(format=fmt, data=array.array("B", data)))


# ------------------------------------------------------------------------------ camera_info


def test_camera_info_gives_the_pinhole_camera():
    model = M.camera_info_to_model(M.camera_to_camera_info(CAMERA, "cam"))
    assert model.camera == CAMERA and not model.distorted and model.frame_id == "cam"
    image = RGB
    assert model.undistort(image) is image  # nothing to undo: no copy


@pytest.mark.parametrize("change,why", [
    (lambda m: setattr(m, "k", [0.0] * 9), "all zeros"),
    (lambda m: setattr(m, "k", [float("nan")] + list(m.k)[1:]), "not finite"),
    (lambda m: setattr(m, "k", [-5.0] + list(m.k)[1:]), "non-positive focal"),
    (lambda m: setattr(m, "width", 0), "no image size"),
    (lambda m: (setattr(m, "distortion_model", "fancy"), setattr(m, "d", [0.1, 0, 0, 0, 0])), "not supported"),
    (lambda m: setattr(m, "d", [0.1, 0.0, 0.0]), "takes"),
    (lambda m: setattr(m, "d", [float("inf")] * 5), "not finite"),
])
def test_bad_camera_info_is_refused_with_the_reason(change, why):
    msg = M.camera_to_camera_info(CAMERA, "cam")
    change(msg)
    with pytest.raises(M.CameraInfoError, match=why):
        M.camera_info_to_model(msg)


def test_zero_distortion_of_any_model_means_none():
    msg = M.camera_to_camera_info(CAMERA, "cam", D=[0.0] * 8, model="rational_polynomial")
    assert M.camera_info_to_model(msg).distortion_model == "none"


def test_binning_and_roi_change_the_intrinsics():
    msg = M.camera_to_camera_info(CAMERA)
    msg.binning_x = msg.binning_y = 2
    cam = M.camera_info_to_model(msg).camera
    assert (cam.width, cam.height, cam.fx, cam.fy) == (320, 240, 200.0, 205.0)
    assert cam.scaled(2.0).cx == pytest.approx(CAMERA.cx)  # pixel-centre convention kept
    msg = M.camera_to_camera_info(CAMERA)
    msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height = 100, 50, 320, 240
    cam = M.camera_info_to_model(msg).camera
    assert (cam.width, cam.height, cam.cx, cam.cy) == (320, 240, 219.5, 189.5)


@pytest.mark.parametrize("model,D", [
    ("plumb_bob", [-0.25, 0.08, 0.001, -0.0005, 0.0]),
    ("rational_polynomial", [-0.2, 0.05, 0.0, 0.0, 0.0, 0.02, 0.0, 0.0]),
    ("equidistant", [0.05, -0.01, 0.002, 0.0]),
])
def test_undistortion_moves_a_distorted_dot_to_its_pinhole_position(model, D):
    K = CAMERA.K
    target = np.array([520.0, 400.0])  # where the dot is in the undistorted (pinhole) image
    ray = np.array([[(target[0] - K[0, 2]) / K[0, 0], (target[1] - K[1, 2]) / K[1, 1], 1.0]])
    if model == "equidistant":
        seen = cv2.fisheye.projectPoints(ray[None], np.zeros(3), np.zeros(3), K, np.array(D))[0].reshape(2)
    else:
        seen = cv2.projectPoints(ray, np.zeros(3), np.zeros(3), K, np.array(D))[0].reshape(2)
    assert np.linalg.norm(seen - target) > 5  # the distortion matters here
    image = np.zeros((480, 640), np.uint8)
    cv2.circle(image, (int(round(seen[0] * 16)), int(round(seen[1] * 16))), 4 * 16, 255, -1, cv2.LINE_AA, shift=4)
    msg = M.camera_to_camera_info(CAMERA, "cam", D=D, model=model)
    out = M.camera_info_to_model(msg).undistort(image)
    ys, xs = np.nonzero(out > 128)
    assert np.linalg.norm([xs.mean() - target[0], ys.mean() - target[1]]) < 1.0


# ------------------------------------------------------------------------------ poses and covariances


def test_pose_and_transform_round_trips():
    T = look_at((1.0, -2.0, 0.5), (0.0, 0.3, 0.1), up=(0, 0, 1))
    np.testing.assert_allclose(M.pose_to_matrix(M.matrix_to_pose(T)), T, atol=1e-12)
    np.testing.assert_allclose(M.transform_to_matrix(M.matrix_to_transform(T)), T, atol=1e-12)
    stamped = M.make_transform_stamped(T, "map", "cam", Time(sec=3, nanosec=5))
    assert (stamped.header.frame_id, stamped.child_frame_id, stamped.header.stamp.sec) == ("map", "cam", 3)
    np.testing.assert_allclose(M.transform_to_matrix(stamped), T, atol=1e-12)
    pose = M.matrix_to_pose(T)
    pose.orientation.x = pose.orientation.y = pose.orientation.z = pose.orientation.w = 0.0
    with pytest.raises(ValueError, match="orientation"):
        M.pose_to_matrix(pose)


def test_covariance_is_36_values_row_major():
    cov = np.arange(36.0).reshape(6, 6)
    values = M.covariance_to_msg(cov)
    assert len(values) == 36 and values[6 * 2 + 4] == cov[2, 4]
    np.testing.assert_array_equal(M.covariance_from_msg(values), cov)
    with pytest.raises(ValueError):
        M.covariance_to_msg(np.eye(5))


def _so3_log(R: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(R).as_rotvec()


def test_covariance_of_an_attached_frame_matches_finite_differences():
    from scipy.spatial.transform import Rotation

    T_wc = look_at((1.0, -2.0, 0.5), (0.0, 0.3, 0.1), up=(0, 0, 1))
    T_cb = np.eye(4)
    T_cb[:3, :3] = Rotation.from_euler("xyz", [-90, 0, -90], degrees=True).as_matrix()
    T_cb[:3, 3] = [0.1, 0.3, -0.4]
    T_wb = T_wc @ T_cb
    eps = 1e-6
    J = np.zeros((6, 6))
    for k in range(6):  # perturb the camera in the world-frame convention of gsvisloc_ros.pose
        d = np.zeros(6)
        d[k] = eps
        T = T_wc.copy()
        T[:3, :3] = Rotation.from_rotvec(d[3:]).as_matrix() @ T_wc[:3, :3]
        T[:3, 3] += d[:3]
        T_b = T @ T_cb
        J[:3, k] = (T_b[:3, 3] - T_wb[:3, 3]) / eps
        J[3:, k] = _so3_log(T_b[:3, :3] @ T_wb[:3, :3].T) / eps
    A = RNG.normal(size=(6, 6))
    cov = A @ A.T
    np.testing.assert_allclose(M.covariance_for_attached_frame(cov, T_wc, T_cb), J @ cov @ J.T, rtol=1e-5, atol=1e-6)


def test_point_cloud_round_trip():
    points = RNG.normal(size=(50, 3)).astype(np.float32)
    colours = RNG.random((50, 3))
    msg = M.make_point_cloud(points, colours, "map", Time(sec=1))
    assert [f.name for f in msg.fields] == ["x", "y", "z", "rgb"] and msg.point_step == 16
    xyz, rgb = M.point_cloud_to_arrays(msg)
    np.testing.assert_array_equal(xyz, points)
    np.testing.assert_array_equal(rgb, np.rint(colours * 255).astype(np.uint8))


def test_camera_info_round_trip_of_a_message():
    msg = CameraInfo()
    msg.width, msg.height = 640, 480
    msg.k = [400.0, 0.0, 319.5, 0.0, 410.0, 239.5, 0.0, 0.0, 1.0]
    assert M.camera_info_to_model(msg).camera == CAMERA
