"""Stream images at a fixed rate through the gsvisloc node and report what happens to them.

    .venv/bin/python benchmarks/node_stream.py                 # 30 Hz for 20 s
    .venv/bin/python benchmarks/node_stream.py --rate 30 --duration 5 --json

One process: the node and a peer that publishes renders of the synthetic tabletop (a short arc of
views, cycled, each frame with a new stamp) plus CameraInfo, over real DDS kept on this machine.
Reported:

* frames sent / received / localized / dropped (stale in the slot of one) / poses published;
* latency from publishing a frame to receiving its pose, and the node's own localization time;
* freshness: how many newer frames had already been sent when the worker started on the frame a
  pose comes from (0 or 1 means "at most one localization old": nothing queued behind a
  localization), and every pose checked against the true pose of the frame it is stamped with;
* memory: resident set size before and after the stream.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time

from gsvisloc_ros.ros import local_environment  # noqa: E402

local_environment(force=True)  # DDS stays on this machine (before rclpy is imported)
os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 80))


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=30.0, help="frames per second (default 30)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of streaming (default 20)")
    parser.add_argument("--views", type=int, default=8, help="distinct rendered views, cycled (default 8)")
    parser.add_argument("--cache-dir", default=None, help="encoded-scene cache (default: a temporary directory)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)

    import numpy as np
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.time import Time
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Header

    from gsvisloc_ros.camera import PinholeCamera, invert_pose, look_at, pose_errors
    from gsvisloc_ros.localizer import Localizer, LocalizerConfig
    from gsvisloc_ros.render import render
    from gsvisloc_ros.ros import messages as M
    from gsvisloc_ros.ros.node import GsvislocNode
    from gsvisloc_ros.scene import SceneConfig
    from gsvisloc_ros.synthetic import make_scene

    camera = PinholeCamera(400.0, 400.0, 319.5, 239.5, 640, 480)
    scene = SceneConfig(view_directions=24, distance_factors=(0.7, 1.2), image_size=(384, 288),
                        keypoints_per_view=512)
    cache = args.cache_dir or tempfile.mkdtemp(prefix="gsvisloc-bench-")
    t0 = time.monotonic()
    localizer = Localizer(make_scene("tabletop", seed=7), LocalizerConfig(scene=scene, cache_dir=cache),
                          progress=False)
    build_s = time.monotonic() - t0
    views = []
    for i in range(args.views):
        a = math.radians(25.0 + 4.0 * i)
        T = look_at((1.0 * math.cos(a), 1.0 * math.sin(a), 0.6), (0.0, 0.0, 0.1), up=(0, 0, 1))
        views.append((render(localizer.map, camera, invert_pose(T)).rgb_u8, T))

    context = rclpy.Context()
    rclpy.init(context=context)
    node = GsvislocNode(localizer=localizer, context=context)
    peer = rclpy.create_node("stream_peer", context=context)
    lock = threading.Lock()
    poses: list[tuple[float, float, np.ndarray]] = []  # (stamp, arrival, T)
    localize_ms: dict[float, float] = {}
    last_values: dict[str, str] = {}

    def on_pose(msg):
        with lock:
            poses.append((Time.from_msg(msg.header.stamp).nanoseconds / 1e9, time.monotonic(),
                          M.pose_to_matrix(msg.pose)))

    def on_diag(msg):
        for status in msg.status:
            if status.name.startswith("/gsvisloc"):
                values = {kv.key: kv.value for kv in status.values}
                with lock:
                    last_values.clear()
                    last_values.update(values)
                    stamp = round(Time.from_msg(msg.header.stamp).nanoseconds / 1e9, 6)
                    if status.message.startswith("localized"):
                        localize_ms[stamp] = float(values["last_localize_ms"])

    peer.create_subscription(PoseStamped, "/gsvisloc/pose", on_pose, 100)
    peer.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 100)
    image_pub = peer.create_publisher(Image, "/image", 10)
    info_pub = peer.create_publisher(CameraInfo, "/camera_info", 10)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    executor.add_node(peer)
    running = True

    def spin():
        while running:
            executor.spin_once(timeout_sec=0.01)

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (image_pub.get_subscription_count() == 0 or
                                           last_values.get("state") != "ready"):
        time.sleep(0.05)
    # one warm-up localization (first-call costs: numba, torch), not counted
    info_pub.publish(M.camera_to_camera_info(camera, "camera_optical"))
    image_pub.publish(M.rgb_to_image(views[0][0], "rgb8", Header(stamp=Time(seconds=1).to_msg(),
                                                                    frame_id="camera_optical")))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not poses:
        time.sleep(0.05)
    with lock:
        poses.clear()
        base = {k: int(v) for k, v in last_values.items() if k.startswith("frames_")}
    gc.collect()
    rss_before = rss_mib()

    sent: list[tuple[float, float]] = []  # (stamp, send time)
    truth: dict[float, np.ndarray] = {}
    period, n = 1.0 / args.rate, int(round(args.duration * args.rate))
    start = time.monotonic()
    for i in range(n):
        stamp = round(1000.0 + i * period, 6)
        image, T = views[(i // max(1, int(args.rate / 2))) % len(views)]
        header = Header(stamp=Time(nanoseconds=int(stamp * 1e9)).to_msg(), frame_id="camera_optical")
        info_pub.publish(M.camera_to_camera_info(camera, "camera_optical", header=header))
        image_pub.publish(M.rgb_to_image(image, "rgb8", header))
        sent.append((stamp, time.monotonic()))
        truth[stamp] = T
        time.sleep(max(0.0, start + (i + 1) * period - time.monotonic()))
    stream_s = time.monotonic() - start

    def settled() -> bool:
        with lock:
            v = {k: int(x) for k, x in last_values.items() if k.startswith("frames_")}
        return v and v["frames_received"] - base["frames_received"] == (
            v["frames_localized"] - base["frames_localized"] + v["frames_dropped_stale"] - base["frames_dropped_stale"])

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not settled():
        time.sleep(0.1)
    time.sleep(1.2)  # one more diagnostics tick
    gc.collect()
    rss_after = rss_mib()
    running = False
    spinner.join(timeout=5)

    with lock:
        v = {k: int(x) for k, x in last_values.items() if k.startswith("frames_")}
        got = list(poses)
        own = dict(localize_ms)
    counts = {k: v[k] - base.get(k, 0) for k in ("frames_received", "frames_localized", "frames_accepted",
                                                   "frames_dropped_stale", "frames_not_localized")}
    send_time = dict(sent)
    stamps = [s for s, _ in sent]
    latencies, newer, errors, waits = [], [], [], []
    for stamp, arrival, T in got:
        stamp = round(stamp, 6)
        latency = arrival - send_time[stamp]
        latencies.append(latency)
        took = own.get(stamp, float("nan")) / 1000.0
        began = arrival - took if math.isfinite(took) else float("nan")
        waits.append(began - send_time[stamp])
        # frames sent after this one but before the worker started on it
        newer.append(sum(1 for s in stamps if s > stamp and send_time[s] < began) if math.isfinite(began) else -1)
        errors.append(pose_errors(T, truth[stamp]))
    summary = {
        "rate_hz": args.rate, "duration_s": round(stream_s, 2), "frames_sent": n,
        **counts,
        "poses_published": len(got),
        "latency_s": {"median": round(statistics.median(latencies), 3) if latencies else None,
                      "max": round(max(latencies), 3) if latencies else None},
        "localize_ms": {"median": round(statistics.median(own.values()), 1) if own else None,
                        "max": round(max(own.values()), 1) if own else None},
        "wait_before_start_s": {"max": round(max(waits), 3) if waits else None},
        "newer_frames_at_start_max": max(newer) if newer else None,
        "every_pose_at_most_one_localization_old": bool(newer) and max(newer) <= 1,
        "max_error": {"translation": round(max(e[0] for e in errors), 5) if errors else None,
                      "rotation_deg": round(max(e[1] for e in errors), 4) if errors else None},
        "rss_mib": {"before": round(rss_before, 1), "after": round(rss_after, 1),
                    "growth": round(rss_after - rss_before, 1)},
        "localizer_build_s": round(build_s, 1),
    }
    executor.shutdown()
    node.destroy_node()
    peer.destroy_node()
    rclpy.shutdown(context=context)
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:42s} {value}")
    return 0 if got and summary["every_pose_at_most_one_localization_old"] else 1


if __name__ == "__main__":
    sys.exit(main())
