"""``gsvisloc make-bag --map MAP --out BAG``: render a camera trajectory through a map into a ROS 2 bag.

The bag holds the images (raw ``rgb8``, or JPEG with ``--compressed``), the camera info, ``/tf``
(``odom -> base_link``, drifting odometry), ``/tf_static`` (``base_link -> camera_optical_frame``)
and the ground truth (``/ground_truth/camera_pose``, the optical frame in ``map``). ``MAP`` may be
the word ``default``: the embedded procedural tabletop scene.

``gsvisloc make-bag --photos SET --out BAG`` writes a posed photo set instead (a folder with a
COLMAP model or a ``transforms.json``, as ``gsvisloc fit`` reads): the photos as they are, in name
order at ``--rate``, with their camera info (distortion included) and their poses as the ground
truth, so that ``evaluate-bag`` measures the localizer and the node on real images. See
:mod:`gsvisloc_ros.evaluation.bags` for the topics and :mod:`gsvisloc_ros.synthetic.trajectories`
for the trajectories.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from gsvisloc_ros.cli import COMMANDS, CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("make-bag", help=COMMANDS["make-bag"], description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--map", metavar="MAP",
                        help="a 3DGS map file (.ply or .splat), or 'default' for the embedded tabletop scene")
    source.add_argument("--photos", metavar="SET",
                        help="a posed photo set (COLMAP model or transforms.json) to write instead of renders")
    parser.add_argument("--out", required=True, metavar="BAG", help="the bag directory to create")
    add_trajectory_arguments(parser)
    parser.add_argument("--storage", default="sqlite3", choices=("sqlite3", "mcap"),
                        help="bag storage format (default: sqlite3)")
    parser.add_argument("--compressed", action="store_true",
                        help="JPEG CompressedImage on /camera/image_raw/compressed instead of raw rgb8")
    parser.add_argument("--force", action="store_true", help="replace BAG when it exists")
    parser.add_argument("--json", action="store_true", help="print a summary of the bag as JSON")
    parser.set_defaults(func=run)


def add_trajectory_arguments(parser: argparse.ArgumentParser, frames: int = 50) -> None:
    parser.add_argument("--frames", type=int, default=frames, help=f"number of camera frames (default: {frames})")
    parser.add_argument("--trajectory", default="orbit", choices=("orbit", "walk"),
                        help="orbit: one turn around the map; walk: a wandering path (default: orbit)")
    parser.add_argument("--rate", type=float, default=10.0, metavar="HZ", help="frame rate (default: 10)")
    parser.add_argument("--size", default="640x480", metavar="WxH", help="image size (default: 640x480)")
    parser.add_argument("--seed", type=int, default=0, help="trajectory and odometry-drift seed (default: 0)")


def load_map_argument(spec: str):
    """The map named on the command line: a file, or ``default`` for the embedded map."""
    from gsvisloc_ros.synthetic import DEFAULT_MAP_NAME, default_map

    if spec == DEFAULT_MAP_NAME and not Path(spec).exists():
        return default_map()
    from gsvisloc_ros.io import load_map

    return load_map(spec)


def make_bag(args: argparse.Namespace, gmap, out: Path, progress: bool = True):
    """Write the bag described by ``args`` (trajectory options, storage, compressed); returns its summary."""
    from gsvisloc_ros.camera import default_camera, parse_size
    from gsvisloc_ros.evaluation.bag_writer import write_synthetic_bag
    from gsvisloc_ros.synthetic import make_trajectory

    if args.frames < 2:
        raise CommandError(f"--frames must be at least 2, got {args.frames}")
    if not args.rate > 0:
        raise CommandError(f"--rate must be positive, got {args.rate}")
    width, height = parse_size(args.size)
    if width < 64 or height < 48:
        raise CommandError(f"--size {args.size} is too small to localize (at least 64x48)")
    trajectory = make_trajectory(gmap, args.trajectory, args.frames, args.rate, args.seed)
    return write_synthetic_bag(out, gmap, trajectory, default_camera(width, height),
                               storage=getattr(args, "storage", "sqlite3"),
                               compressed=getattr(args, "compressed", False), progress=progress)


def make_photo_bag(args: argparse.Namespace, out: Path, progress: bool = True):
    """Write the photo set ``args.photos`` into a bag at ``args.rate``; returns its summary."""
    from gsvisloc_ros.evaluation.bag_writer import write_photo_bag
    from gsvisloc_ros.io.photosets import PhotoSetError, load_photo_set

    if not args.rate > 0:
        raise CommandError(f"--rate must be positive, got {args.rate}")
    try:
        photo_set = load_photo_set(args.photos)
        return write_photo_bag(out, photo_set, args.rate, storage=args.storage, compressed=args.compressed,
                               progress=progress)
    except (PhotoSetError, ValueError, FileNotFoundError) as exc:
        raise CommandError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists():
        if not args.force:
            raise CommandError(f"{out} exists already: choose another --out, or --force to replace it")
        if not (out / "metadata.yaml").exists() and any(out.iterdir()):
            raise CommandError(f"{out} is not a bag (no metadata.yaml): not replacing it")
        shutil.rmtree(out)
    if args.photos:
        summary = make_photo_bag(args, out)
    else:
        summary = make_bag(args, load_map_argument(args.map), out)
    if args.json:
        print(json.dumps(summary.to_dict()))
    else:
        topics = ", ".join(f"{t} ({n})" for t, n in summary.counts.items())
        what = f"photos of {args.photos}" if args.photos else f"{args.trajectory}, {args.size}"
        print(f"wrote {summary.frames} frames ({what}) to {out} ({summary.storage}) "
              f"in {summary.seconds:.1f} s\ntopics: {topics}")
    return 0
