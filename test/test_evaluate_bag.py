"""`gsvisloc evaluate-bag`: metrics, report and plots from a bag, including bags it did not write
(damaged frames, unsupported encodings, no camera info, no ground truth)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer

import gsvisloc_ros.synthetic.trajectories as trajectories
from gsvisloc_ros.camera import default_camera, invert_pose, matrix_to_quat_xyzw
from gsvisloc_ros.cli import main
from gsvisloc_ros.evaluation.bags import typestore
from gsvisloc_ros.render import render
from gsvisloc_ros.scene import SceneConfig
from gsvisloc_ros.synthetic import default_map, make_trajectory

# A small encoding of the default map keeps the tests quick (the demo uses the real one); the
# cache directory is shared by every test module of the session.
TEST_SCENE = SceneConfig(view_directions=16, distance_factors=(0.9,), image_size=(320, 240), keypoints_per_view=512,
                         rolls=1)
SIZE = (320, 240)
METRIC_KEYS = {"frames", "localized_fraction", "median_translation", "median_translation_pct_scale",
               "median_rotation_deg", "recall", "wrong_accepted", "latency_ms"}
RECALL_KEYS = {"1pct_1deg", "2pct_2deg", "5pct_5deg", "5cm_5deg", "10cm_5deg"}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """The shared scene cache, with the default map encoded the quick way for this module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trajectories, "DEFAULT_MAP_SCENE", TEST_SCENE)
        yield str(tmp_path_factory.getbasetemp() / "gsvisloc-scene-cache")


@pytest.fixture(scope="module")
def good_bag(tmp_path_factory):
    bag = tmp_path_factory.mktemp("good") / "bag"
    # 0.1 Hz: frames far apart in time, each localized on its own (no tracking, no jump gate).
    assert main(["make-bag", "--map", "default", "--out", str(bag), "--frames", "6", "--size", "320x240",
                 "--rate", "0.1"]) == 0
    return bag


def _evaluate(bag, out, cache_dir, *extra):
    return main(["evaluate-bag", str(bag), "--map", "default", "--out", str(out), "--cache-dir", cache_dir,
                 "--no-progress", *extra])


def test_evaluate_bag_writes_metrics_report_and_plots(good_bag, cache_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert _evaluate(good_bag, out, cache_dir) == 0
    printed = capsys.readouterr().out
    assert "recall (2 % scale, 2 deg)" in printed and str(out / "report.md") in printed

    metrics = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics) and RECALL_KEYS <= set(metrics["recall"])
    assert {"p50", "p90", "p99"} <= set(metrics["latency_ms"])
    assert metrics["frames"] == metrics["evaluated"] == metrics["with_ground_truth"] == 6
    assert metrics["unusable"] == 0
    assert metrics["localized_fraction"] >= 5 / 6
    assert metrics["recall"]["2pct_2deg"] >= 5 / 6 and metrics["recall"]["10cm_5deg"] >= 5 / 6
    assert metrics["median_translation"] < 0.01 and metrics["median_rotation_deg"] < 0.5
    assert 0 < metrics["median_translation_pct_scale"] < 1.0
    assert metrics["wrong_accepted"] == 0
    assert 0 < metrics["latency_ms"]["p50"] <= metrics["latency_ms"]["p90"] <= metrics["latency_ms"]["p99"]
    assert 0.8 < metrics["mean_scene_scale"] < 2.0  # the orbit's distance to the table's centre (metres)
    assert metrics["context"]["mode"] == "localizer"
    assert metrics["context"]["image_topic"] == "/camera/image_raw"

    frames = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    assert len(frames) == 6 and all(f["usable"] for f in frames)
    # The covariance published with each pose, and how well it describes the error.
    from gsvisloc_ros.evaluation.consistency import nees
    from gsvisloc_ros.quality import DEFAULT_COVARIANCE_SCALE

    accepted = [f for f in frames if f["success"]]
    for f in accepted:
        assert np.all(np.linalg.eigvalsh(np.array(f["covariance"])) > 0)
        assert f["nees"] == pytest.approx(nees(np.array(f["T_est"]), np.array(f["T_gt"]), np.array(f["covariance"])),
                                          rel=1e-3, abs=1e-3)
    figures = metrics["covariance_consistency"]
    assert figures["frames"] == len(accepted) and figures["covariance_scale"] == DEFAULT_COVARIANCE_SCALE
    values = np.array([f["nees"] for f in accepted])
    assert figures["share_within_95"] == pytest.approx(np.mean(values <= 12.592), abs=1e-9)
    assert figures["mean_nees"] == pytest.approx(values.mean(), rel=1e-3)
    assert figures["covariance_scale_for_95"] == pytest.approx(DEFAULT_COVARIANCE_SCALE * figures["scale_for_95"])
    report = (out / "report.md").read_text()
    assert "recall (2 % scale, 2 deg)" in report and "errors in the 95 % ellipsoid" in report
    # Twice the covariance: every NEES halves.
    twice = tmp_path / "twice"
    assert _evaluate(good_bag, twice, cache_dir, "--covariance-scale", str(2 * DEFAULT_COVARIANCE_SCALE)) == 0
    halved = json.loads((twice / "metrics.json").read_text())["covariance_consistency"]
    assert halved["mean_nees"] == pytest.approx(figures["mean_nees"] / 2, rel=1e-3)
    assert _evaluate(good_bag, twice, cache_dir, "--covariance-scale", "0") == 2
    assert "--covariance-scale must be positive" in capsys.readouterr().err
    for name in ("trajectory_top", "errors_over_time", "error_cdf"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert f"({name}.png)" in report


# ------------------------------------------------------------------ bags written by someone else


def _header(store, stamp_ns: int, frame_id: str):
    t = store.types
    return t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9,
                                                                           nanosec=stamp_ns % 10**9),
                                    frame_id=frame_id)


def _image(store, stamp_ns: int, pixels: np.ndarray, encoding: str):
    h, w = pixels.shape[:2]
    return store.types["sensor_msgs/msg/Image"](
        header=_header(store, stamp_ns, "cam"), height=h, width=w, encoding=encoding, is_bigendian=0,
        step=pixels.size // h, data=np.ascontiguousarray(pixels).reshape(-1))


def _camera_info(store, stamp_ns: int, camera):
    t = store.types
    K = camera.K
    return t["sensor_msgs/msg/CameraInfo"](
        header=_header(store, stamp_ns, "cam"), height=camera.height, width=camera.width,
        distortion_model="plumb_bob", d=np.zeros(5), k=K.reshape(-1), r=np.eye(3).reshape(-1),
        p=np.hstack([K, np.zeros((3, 1))]).reshape(-1), binning_x=0, binning_y=0,
        roi=t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def _pose(store, stamp_ns: int, T):
    t = store.types
    x, y, z = T[:3, 3]
    qx, qy, qz, qw = matrix_to_quat_xyzw(T[:3, :3])
    return t["geometry_msgs/msg/PoseStamped"](header=_header(store, stamp_ns, "map"), pose=t["geometry_msgs/msg/Pose"](
        position=t["geometry_msgs/msg/Point"](x=x, y=y, z=z),
        orientation=t["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw)))


def _foreign_bag(path, frames, camera_info: bool = True, ground_truth: bool = True):
    """A bag written with rosbags alone, as another tool would: topics of our own choosing.

    ``frames``: (encoding, pixels or None for a corrupt message) per image.
    """
    store = typestore()
    gmap = default_map()
    camera = default_camera(*SIZE)
    poses = make_trajectory(gmap, "orbit", frames=len(frames), seed=5).T_map_camera
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        images = writer.add_connection("/cam/color/image", "sensor_msgs/msg/Image", typestore=store)
        infos = writer.add_connection("/cam/color/camera_info", "sensor_msgs/msg/CameraInfo", typestore=store)
        truth = writer.add_connection("/vicon/cam", "geometry_msgs/msg/PoseStamped", typestore=store)
        for i, ((encoding, convert), T) in enumerate(zip(frames, poses, strict=True)):
            stamp = 1_000_000_000 * (100 + 10 * i)  # 10 s apart: each frame on its own (no track, no jump gate)
            rgb = render(gmap, camera, invert_pose(T)).rgb_u8
            if camera_info and i == len(frames) // 2:  # one camera info, after some of the images
                writer.write(infos, stamp, store.serialize_cdr(_camera_info(store, stamp, camera), infos.msgtype))
            if ground_truth:
                writer.write(truth, stamp, store.serialize_cdr(_pose(store, stamp, T), truth.msgtype))
            if convert is None:
                data = np.frombuffer(b"\x00\x01\x00\x00garbage", np.uint8)  # cut short: cannot be deserialized
            else:
                data = store.serialize_cdr(_image(store, stamp, convert(rgb), encoding), images.msgtype)
            writer.write(images, stamp, data)
    return path


def _rgba(rgb):
    return np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)


def test_damaged_frames_are_reported_and_the_others_evaluated(cache_dir, tmp_path, capsys):
    bag = _foreign_bag(tmp_path / "foreign", [
        ("rgb8", lambda rgb: rgb),
        ("bgr8", lambda rgb: rgb[..., ::-1]),
        ("rgb8", None),  # corrupt message
        ("weird8", lambda rgb: rgb[..., 0]),  # an encoding the reader does not know
        ("rgba8", _rgba),
    ])
    out = tmp_path / "eval"
    assert _evaluate(bag, out, cache_dir, "--gt-topic", "/vicon/cam") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["frames"] == 5 and metrics["unusable"] == 2 and metrics["evaluated"] == 3
    reasons = " | ".join(metrics["unusable_reasons"])
    assert "corrupt message" in reasons and "unsupported image encoding 'weird8'" in reasons
    assert metrics["localized_fraction"] == 1.0 and metrics["recall"]["2pct_2deg"] == 1.0
    assert metrics["context"]["image_topic"] == "/cam/color/image"  # found by type
    assert metrics["context"]["camera_info_topic"] == "/cam/color/camera_info"
    report = (out / "report.md").read_text()
    assert "Frames that could not be used (2)" in report and "weird8" in report
    frames = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    assert [f["usable"] for f in frames] == [True, True, False, False, True]


def test_a_bag_without_camera_info_or_ground_truth(cache_dir, tmp_path, capsys):
    bag = _foreign_bag(tmp_path / "bare", [("rgb8", lambda rgb: rgb)] * 2 + [("mono8", lambda rgb: rgb[..., 1])],
                       camera_info=False, ground_truth=False)
    assert _evaluate(bag, tmp_path / "refused", cache_dir) == 2
    error = capsys.readouterr().err
    assert "no sensor_msgs/msg/CameraInfo" in error and "--intrinsics" in error

    camera = default_camera(*SIZE)
    intrinsics = f"{camera.fx},{camera.fy},{camera.cx},{camera.cy}"
    out = tmp_path / "eval"
    assert _evaluate(bag, out, cache_dir, "--intrinsics", intrinsics) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["evaluated"] == 3 and metrics["with_ground_truth"] == 0
    assert metrics["localized_fraction"] >= 2 / 3
    assert all(v is None for v in metrics["recall"].values()) and metrics["median_translation"] is None
    assert any("no ground truth" in note for note in metrics["context"]["notes"])
    assert (out / "trajectory_top.png").is_file()


def test_unknown_topics_and_missing_bags_are_clear_errors(good_bag, cache_dir, tmp_path, capsys):
    assert _evaluate(tmp_path / "nowhere", tmp_path / "o1", cache_dir) == 2
    assert "no bag at" in capsys.readouterr().err
    assert _evaluate(good_bag, tmp_path / "o2", cache_dir, "--image-topic", "/nope") == 2
    assert "no topic '/nope'" in capsys.readouterr().err
    assert _evaluate(good_bag, tmp_path / "o3", cache_dir, "--gt-topic", "/camera/camera_info") == 2
    assert "ground truth must be one of" in capsys.readouterr().err


def _require_the_node() -> None:
    pytest.importorskip("rclpy")
    from gsvisloc_ros.evaluation.replay import node_available

    ok, why = node_available()
    if not ok:
        pytest.skip(why)


def test_replay_through_the_ros_node(cache_dir, tmp_path, capsys):
    _require_the_node()
    bag = tmp_path / "bag"
    # 0.1 Hz: frames far apart in time, so the node's jump gate does not hold back an orbit of 3 frames.
    assert main(["make-bag", "--map", "default", "--out", str(bag), "--frames", "3", "--size", "320x240",
                 "--rate", "0.1", "--compressed"]) == 0
    out = tmp_path / "eval"
    assert _evaluate(bag, out, cache_dir, "--through-node") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["context"]["mode"] == "node"
    assert metrics["frames"] == 3 and metrics["localized_fraction"] >= 2 / 3
    assert metrics["recall"]["2pct_2deg"] >= 2 / 3
    assert "through the gsvisloc ROS node" in (out / "report.md").read_text()


def test_straight_into_the_localizer_and_through_the_node_give_the_same_poses_and_decisions(cache_dir, tmp_path):
    """One product: replaying a walk at 10 Hz (tracked frames, odometry from the bag's TF, the jump
    gate) straight into the localizer and through the node gives the same outcome for every frame."""
    _require_the_node()
    bag = tmp_path / "bag"
    assert main(["make-bag", "--map", "default", "--out", str(bag), "--frames", "8", "--size", "320x240",
                 "--trajectory", "walk"]) == 0
    runs = {}
    for mode, extra in (("direct", ()), ("node", ("--through-node",))):
        assert _evaluate(bag, tmp_path / mode, cache_dir, *extra) == 0
        runs[mode] = [json.loads(line) for line in (tmp_path / mode / "frames.jsonl").read_text().splitlines()]
    direct, node = runs["direct"], runs["node"]
    assert [f["success"] for f in direct] == [f["success"] for f in node]
    assert sum(f["success"] for f in direct) >= 4
    for a, b in zip(direct, node, strict=True):
        if a["success"]:
            np.testing.assert_allclose(a["T_est"], b["T_est"], atol=1e-5)
