"""``gsvisloc render MAP``: render a 3DGS map from one camera pose into an image (and depth).

The pose is either ``--pose "TX TY TZ QX QY QZ QW"``, the camera-to-world pose T_world_camera
(camera centre and orientation, OpenCV axes: x right, y down, z forward), or ``--look-at
"EX EY EZ TX TY TZ"``, a camera at E looking at T with image-up along ``--up`` (default -y, the
up axis of COLMAP-derived maps). The colour image is written as 8-bit RGB (PNG or any format
OpenCV writes); ``--depth-out`` saves the expected camera-z depth as a float32 [H, W] ``.npy``,
0 where nothing was drawn.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from gsvisloc_ros.camera import PinholeCamera, invert_pose, look_at, parse_pose
from gsvisloc_ros.cli import COMMANDS, CommandError

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``render`` sub-command."""
    parser = subparsers.add_parser(
        "render",
        help=COMMANDS["render"],
        description=__doc__.splitlines()[0],
        epilog="Example: gsvisloc render plant.ply --intrinsics 525,525,319.5,239.5 --size 640x480 "
        '--look-at "0.5 -0.3 0.5 0 0.2 0" --out view.png --depth-out view_depth.npy',
    )
    parser.add_argument("map", metavar="MAP", help="a 3DGS map file (.ply or .splat)")
    parser.add_argument("--intrinsics", required=True, metavar="FX,FY,CX,CY", help="pinhole intrinsics in pixels")
    parser.add_argument("--size", required=True, metavar="WxH", help="image size in pixels, e.g. 640x480")
    pose = parser.add_mutually_exclusive_group(required=True)
    pose.add_argument(
        "--pose", metavar='"TX TY TZ QX QY QZ QW"', help="camera-to-world pose T_world_camera (quaternion x, y, z, w)"
    )
    pose.add_argument("--look-at", metavar='"EX EY EZ TX TY TZ"', help="camera at E looking at T")
    parser.add_argument(
        "--up",
        default="0 -1 0",
        metavar='"UX UY UZ"',
        help="world direction of image-up for --look-at (default: 0 -1 0)",
    )
    parser.add_argument("--out", required=True, metavar="IMAGE", help="output colour image, e.g. view.png")
    parser.add_argument("--depth-out", metavar="DEPTH.npy", help="also save the depth map (float32 [H, W], 0 = empty)")
    parser.add_argument(
        "--backend", default="auto", choices=("auto", "cpu", "cuda", "reference"), help="renderer (default: auto)"
    )
    parser.add_argument("--background", default="0,0,0", metavar="R,G,B", help="background colour in [0, 1]")
    parser.add_argument("--near", type=float, default=None, help="near plane in map units (default: 0.01)")
    parser.set_defaults(func=run)


def _floats(text: str, count: int, what: str) -> np.ndarray:
    try:
        values = np.array([float(v) for v in text.replace(",", " ").split()])
    except ValueError:
        raise CommandError(f"{what} must be {count} numbers, got {text!r}") from None
    if values.size != count or not np.all(np.isfinite(values)):
        raise CommandError(f"{what} must be {count} finite numbers, got {text!r}")
    return values


def pose_from_args(args: argparse.Namespace) -> np.ndarray:
    """T_world_camera from ``--pose`` or ``--look-at``/``--up``."""
    if args.pose is not None:
        return parse_pose(args.pose)
    values = _floats(args.look_at, 6, "--look-at")
    return look_at(values[:3], values[3:], _floats(args.up, 3, "--up"))


def save_image(path: str | Path, rgb_u8: np.ndarray) -> None:
    """Write an RGB uint8 image with OpenCV (format from the extension)."""
    import cv2

    path = Path(path)
    if not path.parent.is_dir():
        raise CommandError(f"cannot write {path}: directory {path.parent} does not exist")
    try:
        ok = cv2.imwrite(str(path), np.ascontiguousarray(rgb_u8[:, :, ::-1]))
    except cv2.error as exc:
        raise CommandError(f"cannot write {path}: {exc}".strip()) from None
    if not ok:
        raise CommandError(f"cannot write {path} (unsupported image extension {path.suffix!r}?)")


def run(args: argparse.Namespace) -> int:
    """Load the map, render the view, write the files."""
    from gsvisloc_ros.io import load_map
    from gsvisloc_ros.render import DEFAULT_NEAR, BackendUnavailableError, render

    camera = PinholeCamera.from_string(args.intrinsics, args.size)
    T_world_camera = pose_from_args(args)
    background = _floats(args.background, 3, "--background")
    if np.any(background < 0) or np.any(background > 1):
        raise CommandError(f"--background must be in [0, 1], got {args.background!r}")
    if args.depth_out is not None and not Path(args.depth_out).parent.is_dir():
        raise CommandError(f"cannot write {args.depth_out}: directory {Path(args.depth_out).parent} does not exist")
    gmap = load_map(args.map)
    start = time.perf_counter()
    try:
        result = render(
            gmap,
            camera,
            invert_pose(T_world_camera),
            backend=args.backend,
            background=background,
            near=DEFAULT_NEAR if args.near is None else args.near,
        )
    except BackendUnavailableError as exc:
        raise CommandError(str(exc)) from None
    elapsed = time.perf_counter() - start
    save_image(args.out, result.rgb_u8)
    if args.depth_out is not None:
        np.save(args.depth_out, result.depth)
    coverage = float(np.mean(result.alpha > 0.5))
    print(
        f"rendered {camera.width}x{camera.height} from {len(gmap)} Gaussians with the {result.backend} backend "
        f"in {1000 * elapsed:.0f} ms; {100 * coverage:.1f}% of pixels covered (alpha > 0.5); wrote {args.out}"
        + (f" and {args.depth_out}" if args.depth_out else "")
    )
    if coverage == 0.0:
        logger.warning("the image is empty: is the camera looking at the map? (poses are camera-to-world)")
    return 0
