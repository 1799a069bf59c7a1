"""The robot-grade node over real DDS: lifecycle, relocalization requests, map switching, several
cameras, the saved last pose and ~/status.

The tabletop tests build one localizer per module (the reduced encoding of test_ros_node.py, in a
temporary cache); the shared-scene tests (plant, tarot) load the shared maps with the default
encoding, from the default cache when present, and skip when the shared data is absent.
"""

from __future__ import annotations

import json
import math
import time
from types import SimpleNamespace

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("tf2_msgs")
pytest.importorskip("lifecycle_msgs")

from geometry_msgs.msg import PoseWithCovarianceStamped  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rcl_interfaces.msg import Parameter as ParameterMsg  # noqa: E402
from rcl_interfaces.msg import ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from ros_harness import CAMERA, CAMERA_FRAME, _seconds, _stamp, _values  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from gsvisloc_ros import last_pose  # noqa: E402
from gsvisloc_ros.camera import invert_pose, look_at, pose_errors  # noqa: E402
from gsvisloc_ros.io import load_map, save_ply  # noqa: E402
from gsvisloc_ros.localizer import Localizer, LocalizerConfig  # noqa: E402
from gsvisloc_ros.render import render  # noqa: E402
from gsvisloc_ros.ros import messages as M  # noqa: E402
from gsvisloc_ros.ros.lifecycle import GsvislocLifecycleNode  # noqa: E402
from gsvisloc_ros.ros.node import R_BODY_OPTICAL  # noqa: E402
from gsvisloc_ros.scene import SceneConfig  # noqa: E402
from gsvisloc_ros.synthetic import make_scene, make_trajectory, map_extent  # noqa: E402

FAST = SceneConfig(view_directions=24, distance_factors=(0.7, 1.2), image_size=(384, 288), keypoints_per_view=512)
# Accuracy of the localizer on tabletop renders (test_localizer.py: 0.01 map units, 0.5 deg).
MAX_DT, MAX_DR = 0.01, 0.5


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("robot")
    ply = root / "tabletop.ply"
    save_ply(make_scene("tabletop", seed=7), ply)
    cache = root / "cache"
    localizer = Localizer(load_map(ply), LocalizerConfig(scene=FAST, cache_dir=str(cache)), progress=False)

    def view(eye, target=(0.0, 0.0, 0.1)):
        T_wc = look_at(np.asarray(eye, float), np.asarray(target, float), up=(0, 0, 1))
        return render(localizer.map, CAMERA, invert_pose(T_wc)).rgb_u8, T_wc

    image, T_true = view((0.9, 0.5, 0.6))
    return SimpleNamespace(localizer=localizer, ply=ply, cache=cache, view=view, image=image, T_true=T_true)


def _call(h, client, request, what: str, timeout: float = 30.0):
    assert client.wait_for_service(timeout_sec=10), f"no {what} service"
    future = client.call_async(request)
    return h.wait(lambda: future.result() if future.done() else None, timeout, what)


def _outputs(h) -> int:
    """Messages about the localization received so far (poses, path, TF from the node, status)."""
    tf = [t for m in h.messages("tf") for t in m.transforms if t.header.frame_id == "map"]
    return len(h.messages("pose")) + len(h.messages("pose_cov")) + len(h.messages("path")) + len(tf) + len(
        h.messages("status"))


def _stream(h, image, first: float, seconds: float, period: float = 0.1) -> float:
    stamp = first
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        h.send(image, stamp)
        stamp += period
        time.sleep(period)
    return stamp


# ------------------------------------------------------------------------------ lifecycle


def test_lifecycle_transitions_from_a_client_node(world, harness_factory):
    """unconfigured -> inactive -> active -> inactive -> finalized, driven over the standard services."""
    h = harness_factory({"map_path": str(world.ply), "cache_dir": str(world.cache), "device": "cpu",
                         "map_cloud_max_points": 300}, node_type=GsvislocLifecycleNode,
                        localizer_config=LocalizerConfig(scene=FAST))
    get_state = h.peer.create_client(GetState, "/gsvisloc/get_state")
    change_state = h.peer.create_client(ChangeState, "/gsvisloc/change_state")

    def state() -> str:
        return _call(h, get_state, GetState.Request(), "get_state").current_state.label

    def change(transition_id: int) -> None:
        response = _call(h, change_state, ChangeState.Request(transition=Transition(id=transition_id)),
                         f"transition {transition_id}", timeout=60)
        assert response.success, transition_id

    assert state() == "unconfigured"
    assert h.node._map_state == "loading" and h.node._raw_localizer is None  # nothing loaded yet

    change(Transition.TRANSITION_CONFIGURE)
    assert state() == "inactive"
    h.wait(lambda: any(_values(s)["state"] == "ready" for _, s in h.statuses()), 120, "the map to load")
    _stream(h, world.image, 10.0, 1.5)
    assert _outputs(h) == 0 and not h.messages("cloud"), "inactive: nothing published"

    change(Transition.TRANSITION_ACTIVATE)
    assert state() == "active"
    pose = h.send_until_pose(world.image, first_stamp=20.0)
    dt, dr = pose_errors(M.pose_to_matrix(pose.pose), world.T_true)
    assert dt < MAX_DT and dr < MAX_DR, (dt, dr)
    h.wait(lambda: h.messages("cloud"), 10, "the map cloud once active")
    h.wait(lambda: h.messages("status"), 10, "~/status once active")

    change(Transition.TRANSITION_DEACTIVATE)
    assert state() == "inactive"
    time.sleep(0.5)  # the answer to a frame in flight, if any
    with h.lock:
        for key in h.got:
            h.got[key].clear()
    _stream(h, world.image, 40.0, 1.5)
    assert _outputs(h) == 0, "deactivated: nothing published"
    assert h.node._raw_localizer is not None, "the map is kept while inactive"

    change(Transition.TRANSITION_INACTIVE_SHUTDOWN)
    assert state() == "finalized"
    assert h.node._raw_localizer is None and h.node._worker is None


def test_cleanup_releases_everything_and_a_second_configure_works(world, harness_factory):
    h = harness_factory({"map_cloud_max_points": 0}, node_type=GsvislocLifecycleNode, localizer=world.localizer)
    get_state = h.peer.create_client(GetState, "/gsvisloc/get_state")
    change_state = h.peer.create_client(ChangeState, "/gsvisloc/change_state")

    def change(transition_id: int, expected: str) -> None:
        response = _call(h, change_state, ChangeState.Request(transition=Transition(id=transition_id)),
                         f"transition {transition_id}", timeout=60)
        assert response.success, transition_id
        assert _call(h, get_state, GetState.Request(), "get_state").current_state.label == expected

    change(Transition.TRANSITION_CONFIGURE, "inactive")
    h.wait(lambda: h.node._raw_localizer is not None, 30, "the map")
    topics = ("/gsvisloc/pose", "/gsvisloc/pose_with_covariance", "/gsvisloc/status")
    h.wait(lambda: all(h.peer.count_publishers(t) == 1 for t in topics), 10, "the publishers of configure")
    change(Transition.TRANSITION_CLEANUP, "unconfigured")
    assert h.node._raw_localizer is None and h.node._worker is None
    h.wait(lambda: all(h.peer.count_publishers(t) == 0 for t in topics), 10, "the publishers to go")
    change(Transition.TRANSITION_CONFIGURE, "inactive")
    change(Transition.TRANSITION_ACTIVATE, "active")
    pose = h.send_until_pose(world.image)
    assert pose_errors(M.pose_to_matrix(pose.pose), world.T_true)[0] < MAX_DT
    change(Transition.TRANSITION_ACTIVE_SHUTDOWN, "finalized")


# ------------------------------------------------------------------------------ relocalization requests


def _shared_map_view(ply, frame: int = 3):
    """A render of a shared map from a pose of the orbit make-bag uses, and the map's scene scale there."""
    gmap = load_map(ply)
    trajectory = make_trajectory(gmap, "orbit", 8, 1.0)
    T_true = trajectory.T_map_camera[frame]
    image = render(gmap, CAMERA, invert_pose(T_true)).rgb_u8
    scale = float(np.linalg.norm(T_true[:3, 3] - map_extent(gmap)[0]))
    return image, T_true, scale


def _hint(T_map_camera: np.ndarray, scale: float) -> PoseWithCovarianceStamped:
    """An /initialpose of the base (camera at the base looking ahead) a little off the truth."""
    T_map_base = T_map_camera.copy()
    T_map_base[:3, :3] = T_map_camera[:3, :3] @ R_BODY_OPTICAL.T
    T_map_base[:3, 3] += np.array([0.02, -0.015, 0.01]) * scale
    turn = np.eye(4)
    c, s = math.cos(math.radians(3.0)), math.sin(math.radians(3.0))
    turn[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    msg = PoseWithCovarianceStamped(header=Header(frame_id="map"))
    msg.pose.pose = M.matrix_to_pose(T_map_base @ turn)
    return msg


def test_an_initialpose_localizes_the_standing_robot_at_once(plant_ply, harness_factory):
    """AMCL's no-motion update: one frame was received and ignored (on_demand, robot still); the hint
    makes the node localize that frame from it, at once, without any new image."""
    image, T_true, scale = _shared_map_view(plant_ply)
    h = harness_factory({"map_path": str(plant_ply), "mode": "on_demand", "device": "cpu",
                         "map_cloud_max_points": 0})
    h.wait(lambda: any(_values(s)["state"] == "ready" for _, s in h.statuses()), 300, "the plant map to load")
    h.send(image, 5.0)
    h.wait(lambda: int(_values(h.statuses()[-1][1])["frames_ignored_on_demand"]) == 1, 10, "the frame to arrive")
    assert not h.messages("pose")
    h.wait(lambda: h.initialpose_pub.get_subscription_count() > 0, 10, "the node to subscribe /initialpose")
    h.initialpose_pub.publish(_hint(T_true, scale))
    pose = h.wait(lambda: h.messages("pose"), 120, "the pose from the hint")[0]
    assert _seconds(pose.header.stamp) == 5.0  # the frame already received: no new image was sent
    dt, dr = pose_errors(M.pose_to_matrix(pose.pose), T_true)
    print(f"\n/initialpose on plant: error {100 * dt / scale:.3f} % of scale, {dr:.3f} deg")
    assert dt < 0.01 * scale and dr < 1.0, (dt / scale, dr)
    status = h.status_for(5.0)
    assert "initialpose used as prior" in status.message and _values(status)["localization_mode"] == "tracking"
    time.sleep(1.0)
    assert len(h.messages("pose")) == 1, "one hint, one pose"


def test_relocalize_forgets_the_track_and_searches_the_newest_frame(world, harness_factory):
    h = harness_factory({"track_timeout": 100.0, "map_cloud_max_points": 0}, localizer=world.localizer)
    first = _seconds(h.send_until_pose(world.image).header.stamp)
    time.sleep(1.0)
    tracked = h.send(world.image, first + 5.0)
    assert _values(h.status_for(tracked))["last_tracked"] == "true"
    h.wait(lambda: [m for m in h.messages("status") if _seconds(m.header.stamp) == tracked], 10, "~/status")
    status = next(m for m in h.messages("status") if _seconds(m.header.stamp) == tracked).status[0]
    values = _values(status)
    assert values["localized"] == "true" and values["localization_mode"] == "tracking"
    assert 0.0 < float(values["quality"]) <= 1.0 and int(values["inliers"]) >= 40
    assert 0.5 <= float(values["inlier_ratio"]) <= 1.0 and float(values["rmse_px"]) < 2.0
    assert float(values["seconds_since_fix"]) == 0.0  # this frame is the last fix

    client = h.peer.create_client(Trigger, "/gsvisloc/relocalize")
    count = len(h.messages("pose"))
    response = _call(h, client, Trigger.Request(), "relocalize")
    assert response.success and "global search" in response.message, response.message
    # The newest frame (already localized once) is localized again, now by a global search.
    h.wait(lambda: len(h.messages("pose")) > count, 60, "the relocalized pose")
    assert _seconds(h.messages("pose")[-1].header.stamp) == tracked  # no new image was sent
    status = h.wait(lambda: next((s for t, s in h.statuses() if t == tracked and _values(s)["last_tracked"] == "false"),
                                 None), 10, "the diagnostics of the global search")
    assert _values(status)["localization_mode"] == "global" and _values(status)["status_code"] == "localized"
    assert pose_errors(M.pose_to_matrix(h.messages("pose")[-1].pose), world.T_true)[0] < MAX_DT


# ------------------------------------------------------------------------------ map switching


def _set_parameter(h, name: str, value: str) -> object:
    client = h.peer.create_client(SetParameters, "/gsvisloc/set_parameters")
    request = SetParameters.Request(parameters=[ParameterMsg(name=name, value=ParameterValue(
        type=ParameterType.PARAMETER_STRING, string_value=value))])
    return _call(h, client, request, f"set {name}").results[0]


def test_switching_from_plant_to_tarot_while_images_flow(plant_ply, tarot_ply, harness_factory):
    plant_image, plant_T, plant_scale = _shared_map_view(plant_ply)
    tarot_image, tarot_T, tarot_scale = _shared_map_view(tarot_ply)
    h = harness_factory({"map_path": str(plant_ply), "device": "cpu", "map_cloud_max_points": 500,
                         "max_jump_translation": 0.0, "max_jump_rotation_deg": 0.0})
    h.wait(lambda: any(_values(s)["state"] == "ready" for _, s in h.statuses()), 300, "the plant map to load")
    sent: dict[float, tuple[str, float]] = {}  # stamp -> (which scene, monotonic send time)
    stamp, switched_at, swapped_at = 100.0, None, None

    def send_pair():
        nonlocal stamp
        for name, image in (("plant", plant_image), ("tarot", tarot_image)):
            stamp = round(stamp + 0.25, 3)
            sent[stamp] = (name, time.monotonic())
            h.send(image, stamp)
            time.sleep(0.25)

    def poses_of(name):
        return [p for p in h.messages("pose") if sent.get(round(_seconds(p.header.stamp), 3), ("",))[0] == name]

    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        send_pair()
        if switched_at is None and poses_of("plant"):
            result = _set_parameter(h, "map_path", str(tarot_ply))
            assert result.successful, result.reason
            switched_at = time.monotonic()
        if switched_at is not None and swapped_at is None and any(
                "tarot" in _values(s)["map"] for _, s in h.statuses()):
            swapped_at = time.monotonic()
        if swapped_at is not None and len(poses_of("tarot")) >= 2:
            break
    assert swapped_at is not None and len(poses_of("tarot")) >= 2, [s.message for _, s in h.statuses()[-3:]]

    poses = h.messages("pose")
    first_tarot = next(i for i, p in enumerate(poses) if p in poses_of("tarot"))
    assert all(p not in poses_of("plant") for p in poses[first_tarot:]), "a plant pose after the swap"
    for p in poses_of("plant"):
        assert sent[round(_seconds(p.header.stamp), 3)][1] < swapped_at, "a pose of the old map for a later image"
        dt, dr = pose_errors(M.pose_to_matrix(p.pose), plant_T)
        assert dt < 0.01 * plant_scale and dr < 1.0
    errors = [pose_errors(M.pose_to_matrix(p.pose), tarot_T) for p in poses_of("tarot")]
    print(f"\ntarot after the switch: {len(errors)} poses, worst {max(100 * e[0] / tarot_scale for e in errors):.3f} "
          f"% of scale, {max(e[1] for e in errors):.3f} deg")
    assert all(dt < 0.01 * tarot_scale and dr < 1.0 for dt, dr in errors), errors
    clouds = h.messages("cloud")
    assert len(clouds) >= 2, "the map cloud is republished"
    xyz, _ = M.point_cloud_to_arrays(clouds[-1])
    low, high = load_map(tarot_ply).bounds()
    assert np.all(xyz >= low - 1e-4) and np.all(xyz <= high + 1e-4)

    # A map that fails to load leaves tarot in service, and says why.
    result = _set_parameter(h, "map_path", "/nonexistent/map.ply")
    assert result.successful
    status = h.wait(lambda: next((s for _, s in reversed(h.statuses()) if _values(s)["map_error"]), None), 30,
                    "the map error")
    assert "/nonexistent/map.ply" in _values(status)["map_error"] and "still localizing on" in _values(status)[
        "map_error"]
    assert _values(status)["state"] == "ready" and "tarot" in _values(status)["map"]
    count = len(poses_of("tarot"))
    later = stamp + 10.0
    sent[later] = ("tarot", time.monotonic())
    h.send(tarot_image, later)
    h.wait(lambda: len(poses_of("tarot")) > count, 60, "a tarot pose after the failed switch")


# ------------------------------------------------------------------------------ several cameras


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024.0


def test_two_cameras_of_one_robot_give_the_same_base_pose(world, harness_factory):
    """A base with two rigid cameras (front, left); each camera's fix is published as the base pose
    (through base -> camera in TF) and drives the same map -> odom."""
    front, T_front = world.image, world.T_true
    left, T_left = world.view((0.4, 0.95, 0.55))
    T_base_front = np.eye(4)
    T_base_front[:3, :3] = R_BODY_OPTICAL
    T_base_front[:3, 3] = [0.2, 0.0, 0.3]
    T_map_base = T_front @ invert_pose(T_base_front)
    T_base_left = invert_pose(T_map_base) @ T_left
    T_odom_base = np.eye(4)
    T_odom_base[:3, 3] = [0.3, -0.1, 0.0]
    h = harness_factory({"cameras": "front, left", "map_cloud_max_points": 0, "tf_republish_rate": 0.0},
                        localizer=world.localizer)
    for T, child in ((T_base_front, "front_optical"), (T_base_left, "left_optical")):
        h.static_broadcaster.sendTransform(M.make_transform_stamped(T, "base_link", child, _stamp(0)))
    h.wait(lambda: any(_values(s)["state"] == "ready" for _, s in h.statuses()), 30, "the node to be ready")
    stamps = {"front": [], "left": []}
    cameras = {"front": (front, "front_optical"), "left": (left, "left_optical")}
    stamp, rss = 10.0, []
    for phase in (["front"], ["front", "left"]):  # the first camera alone (warm), then both
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            for name in phase:
                h.tf_broadcaster.sendTransform(M.make_transform_stamped(T_odom_base, "odom", "base_link",
                                                                        _stamp(stamp)))
                stamps[name].append(h.send(cameras[name][0], stamp, frame=cameras[name][1], camera_ns=name))
                stamp = round(stamp + 0.5, 3)
            time.sleep(0.5)
            got = {round(_seconds(m.header.stamp), 3) for m in h.messages("pose_cov")}
            if all(len(got & set(stamps[name])) >= 2 for name in phase):
                break
        rss.append(_rss_mb())
    by_camera = {name: [m for m in h.messages("pose_cov") if round(_seconds(m.header.stamp), 3) in set(s)]
                 for name, s in stamps.items()}
    assert all(len(v) >= 2 for v in by_camera.values()), {k: len(v) for k, v in by_camera.items()}
    base = {name: [M.pose_to_matrix(m.pose.pose) for m in msgs] for name, msgs in by_camera.items()}
    for name, poses in base.items():
        for T in poses:
            dt, dr = pose_errors(T, T_map_base)
            assert dt < MAX_DT and dr < MAX_DR, (name, dt, dr)
    dt, dr = pose_errors(base["front"][-1], base["left"][-1])
    print(f"\ntwo cameras: base poses agree within {dt * 1000:.2f} mm, {dr:.3f} deg; "
          f"RSS {rss[0]:.0f} MB with the first camera's frames, {rss[1]:.0f} MB after both cameras' frames")
    assert dt < MAX_DT and dr < MAX_DR
    assert all(m.header.frame_id == "map" for v in by_camera.values() for m in v)
    # Each camera's fix drives the same map -> odom.
    map_odom = {}
    for m in h.messages("tf"):
        for t in m.transforms:
            if t.header.frame_id == "map" and t.child_frame_id == "odom":
                key = round(_seconds(t.header.stamp) - 1.0, 3)  # post-dated by transform_tolerance
                name = next((n for n, s in stamps.items() if key in set(s)), None)
                if name:
                    map_odom.setdefault(name, M.transform_to_matrix(t))
    assert set(map_odom) == {"front", "left"}, map_odom.keys()
    assert pose_errors(map_odom["front"], map_odom["left"])[0] < MAX_DT
    assert pose_errors(map_odom["front"], T_map_base @ invert_pose(T_odom_base))[0] < MAX_DT
    values = _values(h.statuses()[-1][1])
    assert values["cameras"] == "front, left" and "front: 640x480" in values["camera_info"]
    assert rss[1] < 1.1 * rss[0], rss  # the second camera adds its frames, not another map


# ------------------------------------------------------------------------------ the last pose on disk


def test_the_last_pose_is_saved_and_is_the_prior_after_a_restart(world, harness_factory, tmp_path):
    pose_file = tmp_path / "last_pose.json"
    h = harness_factory({"pose_file": str(pose_file), "map_cloud_max_points": 0}, localizer=world.localizer)
    pose = h.send_until_pose(world.image)
    h.wait(pose_file.exists, 10, "the pose file")
    saved = last_pose.load(pose_file)
    assert saved.camera_frame == CAMERA_FRAME and saved.stamp == _seconds(pose.header.stamp)
    assert pose_errors(saved.T_map_camera, world.T_true)[0] < MAX_DT
    h.close()
    h = harness_factory({"pose_file": str(pose_file), "map_cloud_max_points": 0, "track_timeout": 0.0},
                        localizer=world.localizer)
    moved, T_moved = world.view((0.86, 0.55, 0.62), (0.01, 0.0, 0.1))  # where it stood, nearly
    pose = h.send_until_pose(moved, first_stamp=500.0)
    status = h.status_for(_seconds(pose.header.stamp))
    assert "last saved pose used as prior" in status.message, status.message
    assert pose_errors(M.pose_to_matrix(pose.pose), T_moved)[0] < MAX_DT
    assert json.loads(pose_file.read_text())["stamp"] == _seconds(pose.header.stamp)  # written again

    # A damaged file is reported and ignored: the first frame is searched globally, then the file is rewritten.
    pose_file.write_text("{garbage")
    h.close()
    h = harness_factory({"pose_file": str(pose_file), "map_cloud_max_points": 0}, localizer=world.localizer)
    status = h.wait(lambda: next((s for _, s in h.statuses() if "is not JSON" in _values(s)["pose_file"]), None),
                    30, "the pose file's problem in the diagnostics")
    assert _values(status)["state"] == "ready"
    pose = h.send_until_pose(world.image, first_stamp=900.0)
    status = h.status_for(_seconds(pose.header.stamp))
    assert "saved pose" not in status.message and _values(status)["last_tracked"] == "false"
    assert last_pose.load(pose_file).stamp == _seconds(pose.header.stamp)
