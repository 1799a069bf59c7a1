"""``gsvisloc encode MAP``: build (or reuse) the cached scene encoding of a map and report its cost."""

from __future__ import annotations

import argparse
import json
import time

from gsvisloc_ros.cli import COMMANDS
from gsvisloc_ros.learned import SCENE_ENCODERS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("encode", help=COMMANDS["encode"], description=__doc__.splitlines()[0])
    parser.add_argument("map", metavar="MAP", help="a 3DGS map file (.ply or .splat)")
    parser.add_argument("--encoder", default="xfeat", choices=("xfeat", "sift"), help="2D encoder (default: xfeat)")
    parser.add_argument("--device", default="auto", help="torch device: auto, cpu or cuda (default: auto)")
    parser.add_argument("--cache-dir", help="where encoded scenes are cached (default: ~/.cache/gsvisloc)")
    parser.add_argument("--force", action="store_true", help="encode again even when a cached encoding exists")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--scene-encoder", default="lifted", choices=SCENE_ENCODERS,
                        help="lifted (renders + 2D encoder) or learned (point network over the Gaussians); "
                             "default: lifted")
    parser.add_argument("--learned-weights", help="weights of the learned matcher (default: the packaged ones)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gsvisloc_ros.features import make_encoder
    from gsvisloc_ros.io import load_map
    from gsvisloc_ros.localizer import LocalizerConfig
    from gsvisloc_ros.render import backend_for_device
    from gsvisloc_ros.scene import cache_path, load_or_encode

    config = LocalizerConfig(encoder=args.encoder, device=args.device, cache_dir=args.cache_dir)
    backend = backend_for_device(config.device)  # as the localizer renders, so it finds this cache
    gmap = load_map(args.map)
    if args.scene_encoder == "learned":
        return _run_learned(args, gmap, backend)
    encoder = make_encoder(config.encoder, config.device, top_k=config.scene.keypoints_per_view)
    path = cache_path(gmap, encoder, config.scene, args.cache_dir, backend)
    if args.force and path.exists():
        path.unlink()
    start = time.perf_counter()
    scene = load_or_encode(gmap, encoder, config.scene, args.cache_dir, backend=backend)
    seconds = time.perf_counter() - start
    cached = scene.from_cache
    report = {"map": str(args.map), "gaussians": len(gmap), "cache": str(path), "from_cache": cached,
              "seconds": round(seconds, 2), "landmarks": len(scene), "virtual_images": len(scene.image_view),
              "layout": scene.geometry.layout,
              **{f"encoding_{k}": v for k, v in scene.stats.items()}}
    return _print(args, report, f"{'loaded' if cached else 'encoded'} {args.map} in {seconds:.1f} s: {len(scene)} "
                                f"landmarks from {len(scene.image_view)} virtual images ({scene.geometry.layout} "
                                f"layout)\ncache: {path}")


def _run_learned(args: argparse.Namespace, gmap, backend: str) -> int:
    from gsvisloc_ros.features import resolve_device
    from gsvisloc_ros.learned.model import load_weights, packaged_weights, weights_hash
    from gsvisloc_ros.learned.scene import learned_cache_path, learned_key, load_or_encode_learned
    from gsvisloc_ros.scene import SceneConfig

    weights = args.learned_weights or packaged_weights()
    model = load_weights(weights, resolve_device(args.device))
    path = learned_cache_path(gmap, learned_key(model, weights_hash(weights), SceneConfig(), backend), args.cache_dir)
    if args.force and path.exists():
        path.unlink()
    start = time.perf_counter()
    scene = load_or_encode_learned(gmap, model, weights, SceneConfig(), args.cache_dir, backend)
    seconds = time.perf_counter() - start
    report = {"map": str(args.map), "scene_encoder": "learned", "gaussians": len(gmap), "cache": str(path),
              "from_cache": scene.from_cache, "seconds": round(seconds, 2), "points": len(scene),
              "regions": len(scene.regions), "layout": scene.geometry.layout,
              **{f"encoding_{k}": v for k, v in scene.stats.items()}}
    return _print(args, report, f"{'loaded' if scene.from_cache else 'encoded'} {args.map} in {seconds:.1f} s: "
                                f"{len(scene)} points, {len(scene.regions)} regions (learned, "
                                f"{scene.geometry.layout} layout)\ncache: {path}")


def _print(args: argparse.Namespace, report: dict, text: str) -> int:
    """The report as JSON with ``--json``, else ``text``."""
    print(json.dumps(report) if args.json else text)
    return 0
