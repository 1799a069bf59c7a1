"""``gsvisloc evaluate-bag BAG --map MAP --out DIR``: replay a bag's images into the localizer and score it.

Writes ``metrics.json``, ``frames.jsonl``, ``report.md`` and plots into ``DIR``. The image and
camera-info topics are found by message type when not given; ground truth is read from
``/ground_truth/camera_pose`` (or ``--gt-topic``: PoseStamped, PoseWithCovarianceStamped,
Odometry or TransformStamped of the camera optical frame in the map frame). Without ground truth
only the localized fraction and latency are reported. Frames the bag cannot provide (corrupt
message, unsupported encoding) are listed with the reason; the others are still evaluated.

By default each frame goes straight into the localizer; ``--through-node`` replays them over DDS
into the real ROS node and scores its ``~/pose`` output.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

from gsvisloc_ros.cli import COMMANDS, CommandError

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate-bag", help=COMMANDS["evaluate-bag"],
                                   description=__doc__.splitlines()[0])
    parser.add_argument("bag", metavar="BAG", help="a ROS 2 bag directory (sqlite3 or mcap)")
    parser.add_argument("--map", required=True, metavar="MAP",
                        help="the 3DGS map (.ply or .splat), or 'default' for the embedded tabletop scene")
    parser.add_argument("--out", required=True, metavar="DIR", help="where the report, metrics and plots go")
    parser.add_argument("--image-topic", help="Image or CompressedImage topic (default: found by type)")
    parser.add_argument("--camera-info-topic", help="CameraInfo topic (default: the one beside the image topic)")
    parser.add_argument("--gt-topic", help="ground-truth pose topic (default: /ground_truth/camera_pose)")
    parser.add_argument("--intrinsics", help="FX,FY,CX,CY: use these instead of the bag's camera info")
    parser.add_argument("--through-node", action="store_true",
                        help="replay through the gsvisloc ROS node over DDS instead of calling the localizer")
    parser.add_argument("--covariance-scale", type=float, default=None, metavar="S",
                        help="factor on the PnP covariance, as the node's covariance_scale parameter (default: the "
                             "node's default); the report says how well the scaled covariance describes the errors")
    add_localizer_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print metrics.json to stdout")
    parser.set_defaults(func=run)


def add_localizer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder", default="xfeat", choices=("xfeat", "sift"), help="2D encoder (default: xfeat)")
    parser.add_argument("--device", default="auto", help="torch device: auto, cpu or cuda (default: auto)")
    parser.add_argument("--cache-dir", help="where encoded scenes are cached (default: ~/.cache/gsvisloc)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def localizer_config(args: argparse.Namespace, is_default_map: bool):
    from gsvisloc_ros.localizer import LocalizerConfig
    from gsvisloc_ros.synthetic.trajectories import DEFAULT_MAP_SCENE

    extra = {"scene": DEFAULT_MAP_SCENE} if is_default_map else {}
    return LocalizerConfig(encoder=args.encoder, device=args.device, cache_dir=args.cache_dir, **extra)


def evaluate(bag: Path, map_spec: str, gmap, out: Path, args: argparse.Namespace, through_node: bool = False,
             progress: bool = True) -> tuple[dict, Path]:
    """Replay ``bag`` and write the results into ``out``; returns (metrics, report path)."""
    from gsvisloc_ros.camera import PinholeCamera
    from gsvisloc_ros.evaluation.bags import inspect_bag
    from gsvisloc_ros.evaluation.metrics import ErrorScale
    from gsvisloc_ros.evaluation.plots import make_plots
    from gsvisloc_ros.evaluation.replay import node_available, replay_direct, replay_through_node
    from gsvisloc_ros.evaluation.report import compute_metrics, write_report
    from gsvisloc_ros.localizer import Localizer
    from gsvisloc_ros.quality import DEFAULT_COVARIANCE_SCALE
    from gsvisloc_ros.synthetic import DEFAULT_MAP_NAME

    if through_node:
        ok, why = node_available()
        if not ok:
            raise CommandError(f"--through-node: {why}")
    contents = inspect_bag(bag, getattr(args, "image_topic", None), getattr(args, "camera_info_topic", None),
                           getattr(args, "gt_topic", None))
    for note in contents.notes:
        log.warning("%s", note)
    intrinsics = None
    if getattr(args, "intrinsics", None):
        try:
            fx, fy, cx, cy = (float(v) for v in args.intrinsics.split(","))
        except ValueError:
            raise CommandError(f"--intrinsics must be FX,FY,CX,CY, got {args.intrinsics!r}") from None
        PinholeCamera(fx, fy, cx, cy, 1, 1)  # checks the numbers; the size is each image's
        intrinsics = (fx, fy, cx, cy)
    elif contents.camera_info_topic is None:
        raise CommandError(f"{bag} has no sensor_msgs/msg/CameraInfo topic for {contents.image_topic}: "
                           "give the intrinsics with --intrinsics FX,FY,CX,CY")

    scale = getattr(args, "covariance_scale", None)
    scale = DEFAULT_COVARIANCE_SCALE if scale is None else scale
    if not (scale > 0 and math.isfinite(scale)):
        raise CommandError(f"--covariance-scale must be positive, got {scale}")
    localizer = Localizer(gmap, localizer_config(args, map_spec == DEFAULT_MAP_NAME), progress=progress)
    start = time.perf_counter()
    try:
        if through_node:
            outcomes = replay_through_node(contents, localizer, intrinsics, progress=progress)
        else:
            outcomes = replay_direct(contents, localizer, intrinsics, progress=progress, covariance_scale=scale)
    except RuntimeError as exc:  # the node did not come up, or rclpy failed
        raise CommandError(str(exc)) from exc
    seconds = time.perf_counter() - start
    error_scale = ErrorScale.for_geometry(localizer.scene.geometry)  # the map extent for rooms
    metrics = compute_metrics(outcomes, error_scale)
    if metrics.get("covariance_consistency"):
        figures = metrics["covariance_consistency"]
        figures["covariance_scale"] = scale
        figures["covariance_scale_for_95"] = scale * figures["scale_for_95"]
    mode = "node" if through_node else "localizer"
    context = {
        "bag": str(bag), "map": map_spec, "mode": mode,
        "mode_description": ("through the gsvisloc ROS node over DDS (rclpy, Fast DDS)" if through_node
                             else "straight into the Localizer (no ROS)"),
        "image_topic": contents.image_topic, "image_type": contents.image_type,
        "camera_info_topic": contents.camera_info_topic if intrinsics is None else f"--intrinsics {args.intrinsics}",
        "gt_topic": contents.gt_topic, "notes": contents.notes, "seconds": round(seconds, 2),
        "encoder": localizer.config.encoder, "covariance_scale": None if through_node else scale,
    }
    plots = make_plots(outcomes, error_scale, out, gmap)
    report = write_report(out, outcomes, metrics, context, plots)
    return metrics, report


def run(args: argparse.Namespace) -> int:
    from gsvisloc_ros.cli.make_bag import load_map_argument
    from gsvisloc_ros.evaluation.report import format_table, summary_table

    bag = Path(args.bag)
    if not bag.exists():
        raise CommandError(f"no bag at {bag}")
    gmap = load_map_argument(args.map)
    out = Path(args.out)
    metrics, report = evaluate(bag, args.map, gmap, out, args, through_node=args.through_node,
                               progress=args.progress)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"evaluated {bag}:\n{format_table(summary_table(metrics))}\nreport: {report}\n"
              f"metrics: {out / 'metrics.json'}\nplots: {', '.join(sorted(str(p) for p in out.glob('*.png')))}")
    return 0
