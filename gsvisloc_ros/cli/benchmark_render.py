"""``gsvisloc benchmark render MAP --size WxH``: median and minimum time of one render (after a
warm-up that also compiles the CPU kernels), the camera at a query-like view of the map;
``--compare-reference`` times the slow reference renderer on the same view in the same run and
reports the speed-up.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from gsvisloc_ros.camera import PinholeCamera, default_camera, invert_pose, look_at, parse_size
from gsvisloc_ros.cli import CommandError
from gsvisloc_ros.gaussians import GaussianMap

# Query-like view: the map's robust centre seen from its 95th-percentile radius (the distance of
# typical query views), 30 degrees above the horizon, world up -y (COLMAP-derived maps).
VIEW_AZIMUTH_DEG = 30.0
VIEW_ELEVATION_DEG = 30.0
OPAQUE = 0.5


def register_render(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("map", metavar="MAP", help="a 3DGS map file (.ply or .splat)")
    parser.add_argument("--size", default="640x480", metavar="WxH", help="image size (default: 640x480)")
    parser.add_argument(
        "--intrinsics", metavar="FX,FY,CX,CY", help="default: f = 525 px per 640 px of width, centred principal point"
    )
    parser.add_argument("--repeats", type=int, default=20, help="timed renders (default: 20)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed renders first (default: 2)")
    parser.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "cpu", "cuda", "reference"),
        help="renderer to time (default: auto)",
    )
    parser.add_argument(
        "--compare-reference", action="store_true", help="also time the slow reference on the same view and compare"
    )
    parser.add_argument("--reference-repeats", type=int, default=1, help="timed reference renders (default: 1)")


def benchmark_view(gmap: GaussianMap) -> tuple[np.ndarray, dict]:
    """T_world_camera of the query-like view of ``gmap``, and how it was chosen."""
    opaque = gmap.opacities > OPAQUE
    means = gmap.means[opaque] if np.count_nonzero(opaque) >= 100 else gmap.means
    means = means.astype(np.float64)
    centre = np.median(means, axis=0)
    distance = float(np.percentile(np.linalg.norm(means - centre, axis=1), 95.0))
    if not distance > 0:
        raise CommandError("the map has no spatial extent to frame")
    az, el = np.radians(VIEW_AZIMUTH_DEG), np.radians(VIEW_ELEVATION_DEG)
    direction = np.array([np.cos(el) * np.sin(az), -np.sin(el), np.cos(el) * np.cos(az)])
    eye = centre + distance * direction
    view = {"centre": centre.tolist(), "distance": distance, "eye": eye.tolist(), "up": [0.0, -1.0, 0.0]}
    return look_at(eye, centre, (0.0, -1.0, 0.0)), view


def _time_renders(render_once: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        render_once()
        times.append(time.perf_counter() - start)
    return times


def run_render(args: argparse.Namespace) -> dict:
    """Time ``render`` (and optionally the reference) on one view; a JSON-ready dict."""
    from gsvisloc_ros.io import load_map
    from gsvisloc_ros.render import BackendUnavailableError, render, resolve_backend

    if args.repeats < 1 or args.warmup < 0 or args.reference_repeats < 1:
        raise CommandError("--repeats and --reference-repeats must be >= 1 and --warmup >= 0")
    width, height = parse_size(args.size)
    camera = (
        PinholeCamera.from_string(args.intrinsics, args.size) if args.intrinsics else default_camera(width, height)
    )
    try:
        backend = resolve_backend(args.backend)
    except BackendUnavailableError as exc:
        raise CommandError(str(exc)) from None

    gmap = load_map(args.map)
    T_world_camera, view = benchmark_view(gmap)
    T_camera_world = invert_pose(T_world_camera)

    start = time.perf_counter()
    result = render(gmap, camera, T_camera_world, backend=backend)
    first = time.perf_counter() - start
    for _ in range(max(0, args.warmup - 1)):
        render(gmap, camera, T_camera_world, backend=backend)
    times = _time_renders(lambda: render(gmap, camera, T_camera_world, backend=backend), args.repeats)
    results = {
        "benchmark": "render",
        "map": str(args.map),
        "gaussians": len(gmap),
        "size": [width, height],
        "intrinsics": [camera.fx, camera.fy, camera.cx, camera.cy],
        "view": view,
        "alpha_coverage": float(np.mean(result.alpha > 0.5)),
        "backend": backend,
        "first_render_s": first,
        "repeats": args.repeats,
        "median_ms": 1000 * float(np.median(times)),
        "min_ms": 1000 * float(np.min(times)),
    }
    if args.compare_reference:
        reference = None

        def render_reference() -> None:
            nonlocal reference
            reference = render(gmap, camera, T_camera_world, backend="reference")

        ref_times = _time_renders(render_reference, args.reference_repeats)
        diff = np.abs(reference.rgb.astype(np.float64) - result.rgb)
        mse = float(np.mean((np.rint(reference.rgb * 255.0) - np.rint(result.rgb * 255.0)) ** 2))
        results["reference"] = {
            "repeats": args.reference_repeats,
            "median_ms": 1000 * float(np.median(ref_times)),
            "min_ms": 1000 * float(np.min(ref_times)),
            "speedup_median": float(np.median(ref_times) / np.median(times)),
            "max_abs_rgb_difference": float(diff.max()),
            "psnr_8bit_db": float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse)),
        }
    return results


def format_render(results: dict) -> str:
    width, height = results["size"]
    lines = [
        f"render {results['map']}: {results['gaussians']} Gaussians, {width}x{height}, backend {results['backend']}",
        f"  view: centre {np.round(results['view']['centre'], 4).tolist()}, distance {results['view']['distance']:.4g}"
        f", {100 * results['alpha_coverage']:.1f}% of pixels covered",
        f"  first render (includes compilation or cache loading): {results['first_render_s']:.2f} s",
        f"  {results['repeats']} renders: median {results['median_ms']:.1f} ms, min {results['min_ms']:.1f} ms",
    ]
    if "reference" in results:
        ref = results["reference"]
        lines += [
            f"  reference ({ref['repeats']} render{'s' if ref['repeats'] > 1 else ''}):"
            f" median {ref['median_ms']:.0f} ms, min {ref['min_ms']:.0f} ms",
            f"  speed-up over the reference: {ref['speedup_median']:.0f}x (medians); same image to"
            f" {ref['psnr_8bit_db']:.1f} dB PSNR (8-bit), max |difference| {ref['max_abs_rgb_difference']:.2g}",
        ]
    lines.append(f"  machine: Python {results['machine']['python']}, {results['machine']['cpu_count']} CPUs")
    return "\n".join(lines)
