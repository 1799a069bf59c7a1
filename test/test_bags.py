"""Synthetic trajectories and bags: `gsvisloc make-bag` writes bags that rosbags reads back whole,
and the reader decodes every supported image encoding (or says why not)."""

from __future__ import annotations

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.interfaces import QosDurability

from gsvisloc_ros.camera import default_camera, invert_pose, pose_from_xyz_quat
from gsvisloc_ros.cli import main
from gsvisloc_ros.evaluation.bags import (
    COMPRESSED,
    IMAGE,
    TF,
    inspect_bag,
    offered_qos,
    read_frames,
    typestore,
)
from gsvisloc_ros.render import render
from gsvisloc_ros.ros.messages import CameraInfoError, ImageConversionError, camera_info_to_model, message_to_rgb
from gsvisloc_ros.synthetic import (
    Rig,
    default_map,
    make_trajectory,
    map_extent,
)
from gsvisloc_ros.synthetic.trajectories import R_BASE_OPTICAL

FRAMES = 4
UPSTREAM_TFMESSAGE_HASH = "RIHS01_e369d0f05a23ae52508854b66f6aa0437f3449d652e8cbf22d5abe85d020f087"


# ------------------------------------------------------------------ trajectories


@pytest.mark.parametrize("kind", ["orbit", "walk"])
def test_trajectories_are_deterministic_smooth_and_look_at_the_map(kind):
    gmap = default_map()
    a = make_trajectory(gmap, kind, frames=40, rate_hz=10.0, seed=3)
    b = make_trajectory(gmap, kind, frames=40, rate_hz=10.0, seed=3)
    c = make_trajectory(gmap, kind, frames=40, rate_hz=10.0, seed=4)
    assert np.array_equal(a.T_map_base, b.T_map_base) and np.array_equal(a.T_odom_base, b.T_odom_base)
    assert not np.allclose(a.T_map_base, c.T_map_base)
    assert np.allclose(a.stamps, np.arange(40) / 10.0)

    centre, radius, _ = map_extent(gmap)
    cams = a.T_map_camera
    steps = np.linalg.norm(np.diff(cams[:, :3, 3], axis=0), axis=1)
    assert steps.max() < 0.5 * radius and steps.max() < 3 * np.median(steps) + 1e-9  # smooth, no jumps
    to_centre = centre - cams[:, :3, 3]
    to_centre /= np.linalg.norm(to_centre, axis=1, keepdims=True)
    assert np.all(np.einsum("ij,ij->i", cams[:, :3, 2], to_centre) > 0.8)  # optical z towards the map
    assert np.all(cams[:, 2, 1] < 0)  # image-down points down in the map: no upside-down frames
    for T in cams:  # rotations stay rotations
        assert np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-9)


def test_the_rig_puts_the_optical_frame_on_the_base_per_rep103():
    rig = Rig(offset=(0.1, 0.0, 0.2), pitch_deg=0.0)
    T = rig.T_base_camera
    assert np.allclose(T[:3, 3], [0.1, 0.0, 0.2])
    # optical z = base x (forward), optical x = -base y (right), optical y = -base z (down)
    assert np.allclose(T[:3, :3], R_BASE_OPTICAL)
    assert np.allclose(T[:3, 2], [1, 0, 0]) and np.allclose(T[:3, 0], [0, -1, 0]) and np.allclose(T[:3, 1], [0, 0, -1])
    tilted = Rig(pitch_deg=30.0).T_base_camera
    assert tilted[2, 2] == pytest.approx(-np.sin(np.radians(30.0)))  # a positive pitch looks down


def test_odometry_drifts_away_from_the_truth_but_follows_its_motion():
    traj = make_trajectory(default_map(), "orbit", frames=60, seed=1)
    assert np.allclose(traj.T_odom_base[0], np.eye(4))
    T_map_odom = traj.T_map_odom
    assert np.allclose(T_map_odom[0], traj.T_map_base[0])  # odometry starts where the robot is
    drift = np.linalg.norm(T_map_odom[:, :3, 3] - T_map_odom[0, :3, 3], axis=1)
    assert drift[-1] > 1e-3 and drift[-1] > drift[5]  # it accumulates
    # One step of odometry is close to one step of truth.
    true_step = invert_pose(traj.T_map_base[10]) @ traj.T_map_base[11]
    odom_step = invert_pose(traj.T_odom_base[10]) @ traj.T_odom_base[11]
    assert np.linalg.norm(true_step[:3, 3] - odom_step[:3, 3]) < 0.1 * np.linalg.norm(true_step[:3, 3]) + 0.01


def test_default_map_is_made_once_and_deterministic():
    a = default_map()
    assert a is default_map() and len(a) > 10000
    assert a.source == "synthetic:tabletop:0"


# ------------------------------------------------------------------ make-bag


@pytest.fixture(scope="module")
def trajectory():
    return make_trajectory(default_map(), "orbit", frames=FRAMES, rate_hz=10.0, seed=0)


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "compressed"])
def test_make_bag_writes_every_topic_rosbags_can_read(tmp_path, storage, compressed, trajectory, capsys):
    bag = tmp_path / "bag"
    args = ["make-bag", "--map", "default", "--out", str(bag), "--frames", str(FRAMES), "--size", "160x120",
            "--storage", storage] + (["--compressed"] if compressed else [])
    assert main(args) == 0
    assert "wrote 4 frames" in capsys.readouterr().out
    image_topic = "/camera/image_raw/compressed" if compressed else "/camera/image_raw"
    expected = {image_topic: (COMPRESSED if compressed else IMAGE, FRAMES),
                "/camera/camera_info": ("sensor_msgs/msg/CameraInfo", FRAMES),
                "/tf": (TF, FRAMES), "/tf_static": (TF, 1),
                "/ground_truth/camera_pose": ("geometry_msgs/msg/PoseStamped", FRAMES)}
    with AnyReader([bag]) as reader:  # an independent reader: the bag's own type definitions
        assert {t: (i.msgtype, i.msgcount) for t, i in reader.topics.items()} == expected
        messages = {}
        for connection, timestamp, raw in reader.messages():
            messages.setdefault(connection.topic, []).append((timestamp, reader.deserialize(raw, connection.msgtype)))
    assert (bag / "metadata.yaml").is_file()
    assert any(p.suffix == (".mcap" if storage == "mcap" else ".db3") for p in bag.iterdir())

    camera = default_camera(160, 120)
    stamps = [t for t, _ in messages[image_topic]]
    assert stamps == sorted(stamps) and np.allclose(np.diff(stamps), 1e8)  # 10 Hz, bag time = header stamps
    for (t, image), (_, info), (_, tf), (_, gt), T_true, T_odom in zip(
            messages[image_topic], messages["/camera/camera_info"], messages["/tf"],
            messages["/ground_truth/camera_pose"], trajectory.T_map_camera, trajectory.T_odom_base, strict=True):
        for msg in (image, info, gt):
            assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == t
        assert image.header.frame_id == info.header.frame_id == "camera_optical_frame"
        pixels = message_to_rgb(image)
        assert pixels.shape == (120, 160, 3)
        expected_pixels = render(default_map(), camera, invert_pose(T_true)).rgb_u8
        if compressed:
            assert image.format.endswith("jpeg compressed bgr8")
            assert np.abs(pixels.astype(int) - expected_pixels).mean() < 6  # JPEG loss only
        else:
            assert image.encoding == "rgb8" and image.step == 3 * 160
            assert np.array_equal(pixels, expected_pixels)
        assert (info.width, info.height) == (160, 120)
        assert np.allclose(np.asarray(info.k).reshape(3, 3), camera.K)
        assert gt.header.frame_id == "map"
        p, q = gt.pose.position, gt.pose.orientation
        assert np.allclose(pose_from_xyz_quat([p.x, p.y, p.z, q.x, q.y, q.z, q.w]), T_true, atol=1e-9)
        (transform,) = tf.transforms
        assert (transform.header.frame_id, transform.child_frame_id) == ("odom", "base_link")
        tr, rq = transform.transform.translation, transform.transform.rotation
        assert np.allclose(pose_from_xyz_quat([tr.x, tr.y, tr.z, rq.x, rq.y, rq.z, rq.w]), T_odom, atol=1e-9)
    (_, static), = messages["/tf_static"]
    (transform,) = static.transforms
    assert (transform.header.frame_id, transform.child_frame_id) == ("base_link", "camera_optical_frame")
    tr, rq = transform.transform.translation, transform.transform.rotation
    assert np.allclose(pose_from_xyz_quat([tr.x, tr.y, tr.z, rq.x, rq.y, rq.z, rq.w]), trajectory.T_base_camera)
    # Camera = base composed with the static extrinsic: the bag's tf tree is consistent with its truth.
    assert np.allclose(trajectory.T_map_base @ trajectory.T_base_camera, trajectory.T_map_camera)

    qos = offered_qos(bag)
    assert qos["/tf_static"][0].durability == QosDurability.TRANSIENT_LOCAL and qos["/tf_static"][0].depth == 1
    assert qos["/tf"][0].durability == QosDurability.VOLATILE


def test_make_bag_refuses_to_overwrite_and_rejects_bad_options(tmp_path, capsys):
    bag = tmp_path / "bag"
    bag.mkdir()
    (bag / "notes.txt").write_text("mine")
    assert main(["make-bag", "--map", "default", "--out", str(bag), "--frames", "2"]) == 2
    assert "exists already" in capsys.readouterr().err
    assert main(["make-bag", "--map", "default", "--out", str(bag), "--frames", "2", "--force"]) == 2
    assert "not a bag" in capsys.readouterr().err
    assert main(["make-bag", "--map", "default", "--out", str(tmp_path / "b2"), "--frames", "1"]) == 2
    assert "--frames" in capsys.readouterr().err
    assert main(["make-bag", "--map", str(tmp_path / "missing.ply"), "--out", str(tmp_path / "b3")]) == 2
    assert "missing.ply" in capsys.readouterr().err
    assert not (tmp_path / "b2").exists() and not (tmp_path / "b3").exists()


def test_tf2_msgs_is_registered_with_the_upstream_hash():
    store = typestore()
    assert TF in store.fielddefs
    assert store.hash_rihs01(TF) == UPSTREAM_TFMESSAGE_HASH


# ------------------------------------------------------------------ decoding images


class _Msg:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def _raw(pixels: np.ndarray, encoding: str, pad: int = 0):
    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1)
    step = rows.shape[1] + pad
    data = np.zeros((h, step), np.uint8)
    data[:, : rows.shape[1]] = rows
    return _Msg(encoding=encoding, height=h, width=w, step=step, is_bigendian=0, data=data.reshape(-1))


@pytest.fixture(scope="module")
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "8UC3"])
def test_colour_encodings_decode_to_rgb(rgb, encoding):
    alpha = np.full(rgb.shape[:2] + (1,), 200, np.uint8)
    stored = {"rgb8": rgb, "bgr8": rgb[..., ::-1], "8UC3": rgb[..., ::-1],
              "rgba8": np.concatenate([rgb, alpha], 2), "bgra8": np.concatenate([rgb[..., ::-1], alpha], 2)}[encoding]
    out = message_to_rgb(_raw(np.ascontiguousarray(stored), encoding, pad=6))
    assert out.dtype == np.uint8 and np.array_equal(out, rgb)


def test_grey_and_16_bit_encodings(rgb):
    grey = rgb[..., 0].copy()
    assert np.array_equal(message_to_rgb(_raw(grey, "mono8", pad=2)), grey)
    wide = (grey.astype(np.uint16) * 256 + 7).astype("<u2")
    msg = _Msg(encoding="mono16", height=12, width=10, step=20, is_bigendian=0, data=wide.view(np.uint8).reshape(-1))
    assert np.array_equal(message_to_rgb(msg), np.rint(wide * (255.0 / 65535.0)).astype(np.uint8))  # scaled


def test_compressed_png_and_jpeg(rgb):
    import cv2

    ok, png = cv2.imencode(".png", rgb[..., ::-1])
    out = message_to_rgb(_Msg(format="rgb8; png compressed bgr8", data=png.reshape(-1)))
    assert np.array_equal(out, rgb)
    smooth = np.repeat(np.repeat(rgb, 8, 0), 8, 1)
    ok, jpg = cv2.imencode(".jpg", smooth[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = message_to_rgb(_Msg(format="jpeg", data=jpg.reshape(-1)))
    assert out.shape == smooth.shape and np.abs(out.astype(int) - smooth).mean() < 12


def test_a_bags_camera_info_is_read_by_the_nodes_rules_binning_folded_in():
    t = typestore().types
    K = default_camera(160, 120).K
    msg = t["sensor_msgs/msg/CameraInfo"](
        header=t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id="cam"),
        height=120, width=160, distortion_model="plumb_bob", d=np.zeros(5), k=K.reshape(-1),
        r=np.eye(3).reshape(-1), p=np.hstack([K, np.zeros((3, 1))]).reshape(-1), binning_x=2, binning_y=2,
        roi=t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
    camera = camera_info_to_model(msg).camera
    assert camera.size == (80, 60) and camera.fx == pytest.approx(K[0, 0] / 2)
    msg.k = np.zeros(9)
    with pytest.raises(CameraInfoError, match="all zeros"):
        camera_info_to_model(msg)


@pytest.mark.parametrize("msg,words", [
    (_Msg(encoding="weird8", height=2, width=2, step=2, is_bigendian=0, data=np.zeros(4, np.uint8)),
     "unsupported image encoding 'weird8'"),
    (_Msg(encoding="32FC1", height=2, width=2, step=8, is_bigendian=0, data=np.zeros(16, np.uint8)),
     "depth encoding"),
    (_Msg(encoding="16UC1", height=2, width=2, step=4, is_bigendian=0, data=np.zeros(8, np.uint8)),
     "depth encoding"),
    (_Msg(encoding="rgb8", height=4, width=4, step=12, is_bigendian=0, data=np.zeros(20, np.uint8)),
     "image data has 20 bytes"),
    (_Msg(format="jpeg", data=np.frombuffer(b"\xff\xd8not a jpeg at all", np.uint8)),
     "cannot decode compressed image"),
    (_Msg(format="16UC1; compressedDepth png", data=np.zeros(10, np.uint8)), "depth"),
])
def test_images_that_cannot_be_used_say_why(msg, words):
    with pytest.raises(ImageConversionError, match=words):
        message_to_rgb(msg)


def test_reader_finds_topics_by_type_and_reads_frames(tmp_path):
    bag = tmp_path / "bag"
    assert main(["make-bag", "--map", "default", "--out", str(bag), "--frames", "3", "--size", "96x72",
                 "--storage", "mcap", "--compressed"]) == 0
    contents = inspect_bag(bag)
    assert (contents.image_topic, contents.camera_info_topic, contents.gt_topic) == (
        "/camera/image_raw/compressed", "/camera/camera_info", "/ground_truth/camera_pose")
    frames = list(read_frames(contents))
    assert [f.problem for f in frames] == ["", "", ""]
    assert all(f.image.shape == (72, 96, 3) and f.camera.size == (96, 72) and f.T_gt is not None for f in frames)
    with pytest.raises(ValueError, match="no topic '/nope'"):
        inspect_bag(bag, image_topic="/nope")
    with pytest.raises(ValueError, match="carries"):
        inspect_bag(bag, image_topic="/tf")
    with pytest.raises(FileNotFoundError):
        inspect_bag(tmp_path / "missing")
