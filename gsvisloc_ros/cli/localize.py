"""``gsvisloc localize MAP IMAGE [IMAGE ...] --intrinsics FX,FY,CX,CY``: camera poses of images.

Prints one line per image, or with ``--json`` one JSON object per line with the keys ``image``,
``success``, ``T_world_camera`` (4x4 camera-to-world, OpenCV camera axes), ``num_inliers``,
``reprojection_rmse_px``, ``covariance`` (6x6), ``failure_reason`` and ``timings_ms``.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from gsvisloc_ros.cli import COMMANDS, CommandError, parse_numbers
from gsvisloc_ros.learned import SCENE_ENCODERS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("localize", help=COMMANDS["localize"], description=__doc__.splitlines()[0])
    parser.add_argument("map", metavar="MAP", help="a 3DGS map file (.ply or .splat)")
    parser.add_argument("images", metavar="IMAGE", nargs="+", help="query images (PNG, JPEG, ...)")
    parser.add_argument("--intrinsics", required=True, help="pinhole intrinsics FX,FY,CX,CY in pixels")
    parser.add_argument("--distortion", metavar="K1,K2,P1,P2[,K3]",
                        help="OpenCV lens distortion of the camera: the images are undistorted first")
    parser.add_argument("--upright", metavar="X,Y,Z",
                        help="the camera is level and the map's up is X,Y,Z: an upright encoding, no query turns "
                             "(about 4x fewer encoder runs per image)")
    parser.add_argument("--prior", help='a prior T_world_camera "TX TY TZ QX QY QZ QW" (tracking mode)')
    parser.add_argument("--encoder", default="xfeat", choices=("xfeat", "sift"), help="2D encoder (default: xfeat)")
    parser.add_argument("--device", default="auto", help="torch device: auto, cpu or cuda (default: auto)")
    parser.add_argument("--cache-dir", help="where encoded scenes are cached (default: ~/.cache/gsvisloc)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line and image")
    parser.add_argument("--scene-encoder", default="lifted", choices=SCENE_ENCODERS,
                        help="coarse stage: lifted (renders + 2D encoder) or learned (point network over the "
                             "Gaussians); default: lifted")
    parser.add_argument("--learned-weights", help="weights of the learned matcher (default: the packaged ones)")
    parser.set_defaults(func=run)


def read_image(path: str) -> np.ndarray:
    """An image file as uint8 RGB (or grey), with a clear error when it cannot be read."""
    import cv2

    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise CommandError(f"cannot read image {path!r} (missing, or not an image OpenCV can decode)")
    if image.dtype != np.uint8:
        image = cv2.convertScaleAbs(image, alpha=255.0 / max(1.0, float(image.max())))
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return image


def run(args: argparse.Namespace) -> int:
    import cv2

    from gsvisloc_ros.camera import PinholeCamera, parse_pose
    from gsvisloc_ros.localizer import Localizer, LocalizerConfig
    from gsvisloc_ros.scene import SceneConfig

    try:
        fx, fy, cx, cy = (float(v) for v in args.intrinsics.split(","))
    except ValueError:
        raise CommandError(f"--intrinsics must be FX,FY,CX,CY, got {args.intrinsics!r}") from None
    prior = parse_pose(args.prior) if args.prior else None
    distortion = np.array(parse_numbers(args.distortion, "--distortion", (4, 5))) if args.distortion else None
    scene = SceneConfig(up=parse_numbers(args.upright, "--upright", (3,))) if args.upright else SceneConfig()
    localizer = Localizer.from_file(args.map, LocalizerConfig(encoder=args.encoder, device=args.device,
                                                              cache_dir=args.cache_dir, scene=scene,
                                                              scene_encoder=args.scene_encoder,
                                                              learned_weights=args.learned_weights))
    failures = 0
    for path in args.images:
        image = read_image(path)
        camera = PinholeCamera(fx, fy, cx, cy, image.shape[1], image.shape[0])
        if distortion is not None:
            image = cv2.undistort(image, camera.K, distortion)
        result = localizer.localize(image, camera, prior)
        failures += not result.success
        if args.json:
            print(json.dumps({"image": path, **result.to_dict()}), flush=True)
        elif result.success:
            c = result.T_world_camera[:3, 3]
            print(f"{path}: camera at ({c[0]:.4f}, {c[1]:.4f}, {c[2]:.4f}), {result.num_inliers} inliers, "
                  f"rmse {result.reprojection_rmse_px:.2f} px, {sum(result.timings_ms.values()):.0f} ms", flush=True)
        else:
            print(f"{path}: not localized: {result.failure_reason}", flush=True)
    return 0 if failures == 0 else 1
