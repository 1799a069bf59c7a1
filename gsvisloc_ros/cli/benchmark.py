"""``gsvisloc benchmark KIND ...``: time the pipeline's stages on a real map.

One sub-command per benchmark, each a ``register_*`` function adding its parser to ``BENCHMARKS``
and a ``run_*`` function returning a JSON-ready dict; adding one means adding those two and an
entry in ``BENCHMARKS``.

* ``render MAP --size WxH``: median and minimum time of one render (after a warm-up that also
  compiles the CPU kernels), the camera at a query-like view of the map; ``--compare-reference``
  times the slow reference renderer on the same view in the same run and reports the speed-up.
* ``localize MAP --queries N --negatives N``: render a query set from the map alone (views away from
  the encoding's virtual viewpoints, half photometrically perturbed, plus images that do not show
  the map; :mod:`gsvisloc_ros.evaluation.queries`), localize it with each encoder with and without
  refinement, and report pose errors, recall, poses accepted on negatives and time per stage
  (:mod:`gsvisloc_ros.evaluation.metrics`); ``--out DIR`` adds results.json, an error CDF plot and a
  contact sheet.
* ``fit [MAP] --sizes 320x240,640x480 --counts 50000,100000``: time per training step of the
  differentiable renderer (forward: projection + rasterization; backward: every parameter's and
  the pose's gradient of an L1 loss) beside one render of the forward-only renderer, for the map
  (default: the procedural room) subsampled to each count, at each size, with SH degree 3.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable

import numpy as np

from gsvisloc_ros.camera import PinholeCamera, invert_pose, look_at, parse_size
from gsvisloc_ros.cli import COMMANDS, CommandError
from gsvisloc_ros.gaussians import MAX_SH_DEGREE, GaussianMap

# Query-like view: the map's robust centre seen from its 95th-percentile radius (the distance of
# typical query views), 30 degrees above the horizon, world up -y (COLMAP-derived maps).
VIEW_AZIMUTH_DEG = 30.0
VIEW_ELEVATION_DEG = 30.0
OPAQUE = 0.5


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``benchmark`` and its sub-commands."""
    parser = subparsers.add_parser("benchmark", help=COMMANDS["benchmark"], description=__doc__.splitlines()[0])
    kinds = parser.add_subparsers(dest="benchmark", required=True, metavar="KIND")
    for name, (help_text, add_arguments, run_benchmark, print_text) in BENCHMARKS.items():
        sub = kinds.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub)
        sub.add_argument("--json", action="store_true", help="print the results as JSON")
        sub.set_defaults(func=_runner(run_benchmark, print_text))


def _runner(run_benchmark: Callable[[argparse.Namespace], dict], print_text: Callable[[dict], str]):
    def run(args: argparse.Namespace) -> int:
        results = run_benchmark(args)
        results["machine"] = {"python": platform.python_version(), "cpu_count": _cpu_count()}
        print(json.dumps(results, indent=2) if args.json else print_text(results))
        return 0

    return run


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# ------------------------------------------------------------------------------------- render


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


def benchmark_camera(width: int, height: int) -> PinholeCamera:
    """The default camera: 525 px focal length at 640 px width (a 63-degree horizontal field of view)."""
    f = 525.0 * width / 640.0
    return PinholeCamera(f, f, (width - 1) / 2.0, (height - 1) / 2.0, width, height)


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
        PinholeCamera.from_string(args.intrinsics, args.size) if args.intrinsics else benchmark_camera(width, height)
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


# ------------------------------------------------------------------------------------- localize

# Stages of LocalizationResult.timings_ms, in pipeline order (others are appended as they appear).
STAGES = ("features", "retrieval", "matching", "pnp", "refinement", "decision")
# Errors on the CDF plot: from 0.001 to 100 (% of the scene scale, degrees).
CDF_GRID = np.logspace(-3, 2, 250)


def register_localize(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("map", metavar="MAP", help="a 3DGS map file (.ply or .splat)")
    parser.add_argument("--queries", type=int, default=30, metavar="N", help="views of the map (default: 30)")
    parser.add_argument("--negatives", type=int, default=10, metavar="N",
                        help="images that do not show the map (default: 10)")
    parser.add_argument("--size", default="640x480", metavar="WxH", help="query image size (default: 640x480)")
    parser.add_argument("--encoders", default="xfeat,sift", metavar="LIST",
                        help="2D encoders to compare, comma-separated (default: xfeat,sift)")
    parser.add_argument("--no-refine-compare", action="store_true",
                        help="do not also run each encoder without refinement (coarse pose only)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the query set (default: 0)")
    parser.add_argument("--up", default="0,-1,0", metavar="X,Y,Z",
                        help="the map's up direction, for query elevations (default: 0,-1,0, COLMAP captures)")
    parser.add_argument("--views", type=int, metavar="N",
                        help="virtual view directions of the encoding (default: the localizer's; fewer is quicker)")
    parser.add_argument("--cache-dir", help="where encoded scenes are cached (default: ~/.cache/gsvisloc)")
    parser.add_argument("--out", metavar="DIR", help="also write results.json, error_cdf.png and queries.png here")


def _coarse_config(config):
    """The same pipeline without refinement: ``refine_iterations=0`` returns the coarse pose, judged by
    the acceptance thresholds with the RMSE limit loosened to the coarse PnP's inlier threshold."""
    from dataclasses import replace

    acceptance = replace(config.acceptance, max_rmse_px=max(config.acceptance.max_rmse_px,
                                                            config.coarse_pnp.max_reproj_error))
    return replace(config, refine_iterations=0, acceptance=acceptance)


def _localize_all(localizer, queries: list, name: str, progress: bool) -> list[dict]:
    """One row per query: success, errors, timings."""
    from tqdm import tqdm

    from gsvisloc_ros.evaluation import pose_error

    rows = []
    for q in tqdm(queries, desc=f"localizing ({name})", unit="query", disable=not progress):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = localizer.localize(q.image, q.camera)
        wall_ms = 1000.0 * (time.perf_counter() - start)
        cpu_ms = 1000.0 * (time.process_time() - start_cpu)
        row = {"query": q.name, "category": q.category, "positive": q.positive,
               "perturbed": bool(q.perturbations), "success": bool(result.success),
               "translation_error": None, "translation_error_pct": None, "rotation_error_deg": None,
               "num_inliers": result.num_inliers, "num_matches": result.num_matches,
               "failure_reason": result.failure_reason or None, "coarse_source": result.coarse_source or None,
               "timings_ms": {k: round(v, 2) for k, v in result.timings_ms.items()}, "total_ms": round(wall_ms, 2),
               "cpu_ms": round(cpu_ms, 2)}
        if result.success and q.positive:
            t, r = pose_error(result.T_world_camera, q.T_world_camera)
            row.update(translation_error=t, translation_error_pct=100.0 * t / q.scene_scale, rotation_error_deg=r)
        if result.success:
            row["T_world_camera"] = np.asarray(result.T_world_camera).tolist()
        rows.append(row)
    return rows


def _summarise_rows(rows: list[dict], scales: dict) -> dict:
    from gsvisloc_ros.evaluation import summarise

    return summarise(
        [r["translation_error"] for r in rows],
        [r["rotation_error_deg"] for r in rows],
        scales=[scales[r["query"]] for r in rows],
        accepted=[r["success"] for r in rows],
        has_ground_truth=[r["positive"] for r in rows],
        latencies_ms=[r["total_ms"] for r in rows],
    )


def _stage_medians(rows: list[dict]) -> dict:
    """Median time of each stage over the queries that reached it, and how many did."""
    names = list(STAGES) + sorted({k for r in rows for k in r["timings_ms"]} - set(STAGES))
    out = {}
    for name in names:
        values = [r["timings_ms"][name] for r in rows if name in r["timings_ms"]]
        if values:
            out[name] = {"median": float(np.median(values)), "queries": len(values)}
    return out


def _configuration_result(name: str, encoder: str, config, rows: list[dict], scales: dict, load: list) -> dict:
    import os
    from dataclasses import asdict

    positives = [r for r in rows if r["positive"]]
    subsets = {}
    for label, keep in (("orbit", lambda r: r["category"] == "orbit"), ("close", lambda r: r["category"] == "close"),
                        ("inside", lambda r: r["category"] == "inside"), ("clean", lambda r: not r["perturbed"]),
                        ("perturbed", lambda r: r["perturbed"])):
        chosen = [r for r in positives if keep(r)]
        if chosen:
            s = _summarise_rows(chosen, scales)
            subsets[label] = {"positives": s["positives"], "localized_fraction": s["localized_fraction"],
                              "median_translation_pct_scale": s["median_translation_pct_scale"],
                              "median_rotation_deg": s["median_rotation_deg"], "recall": s["recall"]}
    cpu = np.array([r["cpu_ms"] for r in rows])
    return {"name": name, "encoder": encoder, "refined": config.refine_iterations > 0,
            "summary": _summarise_rows(rows, scales), "stages_ms": _stage_medians(rows),
            "cpu_ms": {"p50": float(np.median(cpu)), "mean": float(cpu.mean())} if len(cpu) else None,
            "subsets": subsets, "load_average": {"start": list(load), "end": list(os.getloadavg())},
            "config": json.loads(json.dumps(asdict(config), default=str)), "per_query": rows}


def run_localize(args: argparse.Namespace, localizer_config=None, scene_config=None, progress: bool = True) -> dict:
    """Localize a query set made from the map with each encoder, refined and coarse; a JSON-ready dict.

    ``localizer_config`` / ``scene_config`` override the defaults (tests use a small encoding);
    the encoder is set per configuration.
    """
    import os
    from dataclasses import replace

    from gsvisloc_ros.evaluation.queries import generate_queries
    from gsvisloc_ros.features import ENCODERS
    from gsvisloc_ros.io import load_map
    from gsvisloc_ros.localizer import Localizer, LocalizerConfig
    from gsvisloc_ros.scene import cache_path

    encoders = [e.strip().lower() for e in args.encoders.split(",") if e.strip()]
    unknown = [e for e in encoders if e not in ENCODERS]
    if not encoders or unknown:
        raise CommandError(f"--encoders must name some of {', '.join(ENCODERS)}, got {args.encoders!r}")
    if args.queries < 0 or args.negatives < 0 or args.queries + args.negatives == 0:
        raise CommandError("--queries and --negatives must be >= 0 and not both 0")
    try:
        up = np.array([float(v) for v in args.up.split(",")])
    except ValueError:
        up = np.zeros(0)
    if up.shape != (3,) or not np.linalg.norm(up) > 0:
        raise CommandError(f"--up must be three numbers X,Y,Z not all 0, got {args.up!r}")
    width, height = parse_size(args.size)
    camera = benchmark_camera(width, height)
    base = localizer_config or LocalizerConfig()
    if scene_config is not None:
        base = replace(base, scene=scene_config)
    if args.views is not None:
        if args.views < 1:
            raise CommandError("--views must be >= 1")
        base = replace(base, scene=replace(base.scene, view_directions=args.views))
    if args.cache_dir:
        base = replace(base, cache_dir=args.cache_dir)
    load_start = os.getloadavg()

    gmap = load_map(args.map)
    results: dict = {"benchmark": "localize", "map": str(args.map), "gaussians": len(gmap), "size": [width, height],
                     "intrinsics": [camera.fx, camera.fy, camera.cx, camera.cy], "seed": args.seed,
                     "up": up.tolist(), "encodings": {}, "configurations": [], "notes": []}
    queries, scales = None, {}
    for encoder in encoders:
        config = replace(base, encoder=encoder)
        from_cache = cache_path(gmap, encoder, config.scene, config.cache_dir).is_file()
        start = time.perf_counter()
        localizer = Localizer(gmap, config, progress=progress)
        scene = localizer.scene
        results["encodings"][encoder] = {"seconds": round(time.perf_counter() - start, 2), "from_cache": from_cache,
                                         "landmarks": len(scene), "virtual_views": len(scene.view_poses),
                                         "virtual_images": len(scene.image_view), "layout": scene.geometry.layout,
                                         "typical_distance": scene.geometry.typical_distance}
        if queries is None:  # made once, away from the encoding's viewpoints (the same for every encoder)
            start = time.perf_counter()
            queries = generate_queries(gmap, args.queries, args.negatives, camera=camera, seed=args.seed,
                                       scene_config=config.scene, geometry=scene.geometry,
                                       view_poses=scene.view_poses, up=up, progress=progress)
            results["query_seconds"] = round(time.perf_counter() - start, 2)
            results["scene_centre"] = np.asarray(scene.geometry.centre).tolist()
            results["queries"] = [q.to_dict() for q in queries]
            scales = {q.name: q.scene_scale for q in queries}
            if len(queries) < args.queries + args.negatives:
                results["notes"].append(f"only {len(queries) - args.negatives} of {args.queries} query views "
                                        "passed the checks (see the log)")
        load = os.getloadavg()
        rows = _localize_all(localizer, queries, encoder, progress)
        results["configurations"].append(_configuration_result(encoder, encoder, config, rows, scales, load))
        if not args.no_refine_compare:
            del localizer
            coarse = Localizer(gmap, _coarse_config(config), progress=progress)
            load = os.getloadavg()
            rows = _localize_all(coarse, queries, f"{encoder} coarse", progress)
            result = _configuration_result(f"{encoder} coarse", encoder, coarse.config, rows, scales, load)
            refinement = result["stages_ms"].get("refinement", {}).get("median", 0.0)
            if refinement > 20.0:
                results["notes"].append(f"{encoder} coarse: the refinement stage still took {refinement:.0f} ms "
                                        "per query: this localizer does not skip refinement at refine_iterations=0")
            results["configurations"].append(result)
    results["load_average"] = {"start": list(load_start), "end": list(os.getloadavg())}
    if args.out:
        results["files"] = _write_localize_outputs(args.out, results, queries)
    return results


def _write_localize_outputs(out: str, results: dict, queries: list) -> dict:
    """results.json, the error CDF plot and a contact sheet of some queries in ``out``; their paths."""
    import os

    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gsvisloc_ros.evaluation import error_cdf
    from gsvisloc_ros.evaluation.queries import contact_sheet

    os.makedirs(out, exist_ok=True)
    files = {name: os.path.join(out, name) for name in ("results.json", "error_cdf.png", "queries.png")}
    with open(files["results.json"], "w") as f:
        json.dump(results, f, indent=1)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for config in results["configurations"]:
        rows = [r for r in config["per_query"] if r["positive"]]
        style = "-" if config["refined"] else "--"
        for ax, key in zip(axes, ("translation_error_pct", "rotation_error_deg"), strict=True):
            ax.plot(CDF_GRID, 100 * error_cdf([r[key] for r in rows], CDF_GRID), style, label=config["name"])
    for ax, label in zip(axes, ("translation error (% of the camera-to-centre distance)", "rotation error (deg)"),
                         strict=True):
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("queries localized within (%)")
        ax.set_ylim(0, 100)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"{os.path.basename(results['map'])}: error CDF over {sum(q.positive for q in queries)} views"
                 " (failures never count)")
    fig.tight_layout()
    fig.savefig(files["error_cdf.png"], dpi=110)
    plt.close(fig)

    first = results["configurations"][0]
    outcome = {r["query"]: r for r in first["per_query"]}
    shown = [q for q in queries if q.positive][:8] + [q for q in queries if not q.positive][:4]
    labels = []
    for q in shown:
        r = outcome[q.name]
        if not r["success"]:
            verdict = "no pose"
        elif not q.positive:
            verdict = "POSE ACCEPTED"
        else:
            verdict = f"{r['translation_error_pct']:.2f}% {r['rotation_error_deg']:.2f} deg"
        labels.append(f"{q.name} {' '.join(q.tags)}\n{first['name']}: {verdict}")
    cv2.imwrite(files["queries.png"], contact_sheet(shown, labels=labels)[..., ::-1])
    return files


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _pct(fraction) -> str:
    return _fmt(None if fraction is None else 100.0 * fraction, ".1f", "%")


def format_localize(results: dict) -> str:
    queries = results["queries"]
    positives = [q for q in queries if q["T_world_camera"] is not None]
    categories = ", ".join(f"{sum(q['category'] == c for q in positives)} {c}"
                           for c in ("orbit", "close", "inside") if any(q["category"] == c for q in positives))
    perturbed = sum(bool(q["perturbations"]) for q in positives)
    width, height = results["size"]
    lines = [
        f"localize {results['map']}: {results['gaussians']} Gaussians; {len(positives)} views ({categories};"
        f" {perturbed} perturbed) + {len(queries) - len(positives)} negatives, {width}x{height},"
        f" seed {results['seed']}",
    ]
    for name, e in results["encodings"].items():
        lines.append(f"  encoding {name}: {'loaded' if e['from_cache'] else 'encoded'} in {e['seconds']:.1f} s,"
                     f" {e['landmarks']} landmarks, {e['virtual_views']} virtual views ({e['layout']})")
    recall_keys = ("1pct_1deg", "2pct_2deg", "5pct_5deg")
    header = (f"  {'configuration':<15}{'loc.':>7}{'med t':>10}{'med t%':>8}{'med rot':>8}"
              f"{'R@1%,1deg':>11}{'R@2%,2deg':>11}{'R@5%,5deg':>11}{'wrong':>7}{'neg.acc':>9}"
              f"{'p50 ms':>8}{'p90 ms':>8}{'cpu ms':>8}{'load':>6}")
    lines += ["  errors: medians over the localized views; recall over all views (strict <); wrong: accepted beyond"
              " (5%, 5 deg) + accepted on negatives;",
              "  p50/p90: wall ms per image; cpu: median process CPU ms per image; load: 1-min load average at start",
              header]
    for c in results["configurations"]:
        s = c["summary"]
        latency = s["latency_ms"] or {}
        lines.append(
            f"  {c['name']:<15}{_pct(s['localized_fraction']):>7}{_fmt(s['median_translation'], '.3g'):>10}"
            f"{_fmt(s['median_translation_pct_scale'], '.2f', '%'):>8}{_fmt(s['median_rotation_deg'], '.2f'):>8}"
            + "".join(f"{_pct(s['recall'][k]):>11}" for k in recall_keys)
            + f"{s['wrong_accepted']:>7}{s['accepted_negatives']:>5}/{s['negatives']:<3}"
            f"{_fmt(latency.get('p50'), '.0f'):>8}{_fmt(latency.get('p90'), '.0f'):>8}"
            f"{_fmt((c.get('cpu_ms') or {}).get('p50'), '.0f'):>8}"
            f"{_fmt(c['load_average']['start'][0] if 'load_average' in c else None, '.1f'):>6}"
        )
    stages = list(STAGES) + sorted({k for c in results["configurations"] for k in c["stages_ms"]} - set(STAGES))
    lines.append("  median ms per stage, over the queries that reached it:")
    lines.append(f"  {'':<15}" + "".join(f"{s:>11}" for s in stages))
    for c in results["configurations"]:
        lines.append(f"  {c['name']:<15}" + "".join(
            f"{_fmt(c['stages_ms'][s]['median'] if s in c['stages_ms'] else None, '.0f'):>11}" for s in stages))
    subsets = sorted({k for c in results["configurations"] for k in c["subsets"]},
                     key=["orbit", "close", "inside", "clean", "perturbed"].index)
    lines.append("  recall at (2%, 2 deg) by subset (views):")
    lines.append(f"  {'':<15}" + "".join(
        f"{k + ' (' + str(results['configurations'][0]['subsets'][k]['positives']) + ')':>15}" for k in subsets))
    for c in results["configurations"]:
        lines.append(f"  {c['name']:<15}" + "".join(
            f"{_pct(c['subsets'][k]['recall']['2pct_2deg'] if k in c['subsets'] else None):>15}" for k in subsets))
    for note in results["notes"]:
        lines.append(f"  note: {note}")
    load = results["load_average"]
    lines.append(f"  load average (1/5/15 min): {' '.join(f'{v:.2f}' for v in load['start'])} at the start,"
                 f" {' '.join(f'{v:.2f}' for v in load['end'])} at the end;"
                 f" machine: Python {results['machine']['python']}, {results['machine']['cpu_count']} CPUs")
    if results.get("files"):
        lines.append("  wrote " + ", ".join(results["files"].values()))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- fit


def register_fit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("map", metavar="MAP", nargs="?", help="a 3DGS map (default: the procedural room, 340k)")
    parser.add_argument("--sizes", default="320x240,640x480", help="image sizes (default: 320x240,640x480)")
    parser.add_argument("--counts", default="50000,100000", help="Gaussians kept (default: 50000,100000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per configuration (default: 5)")


def run_fit(args: argparse.Namespace) -> dict:
    import os

    import torch

    from gsvisloc_ros.fit.trainer import use_workqueue_threads
    from gsvisloc_ros.io import load_map
    from gsvisloc_ros.render import render
    from gsvisloc_ros.render.differentiable import project, rasterize_torch
    from gsvisloc_ros.synthetic.scenes import make_scene

    use_workqueue_threads()  # as the fit runs
    torch.set_num_threads(1)
    source = args.map or "procedural room (detail 2)"
    full = load_map(args.map) if args.map else make_scene("room", detail=2.0)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    counts = [int(c) for c in args.counts.split(",")]
    if max(counts) > len(full):
        raise CommandError(f"{source} has {len(full)} Gaussians, fewer than {max(counts)}")
    T_world_camera, _ = benchmark_view(full)
    T = invert_pose(T_world_camera)
    rows = []
    load = [os.getloadavg()[0]]
    for count in counts:
        gmap = full.subsample(count, seed=0)
        if gmap.sh_degree < MAX_SH_DEGREE:  # time the degree a fit ends with (zero coefficients cost the same)
            sh = np.zeros((len(gmap), (MAX_SH_DEGREE + 1) ** 2, 3), dtype=np.float32)
            sh[:, : gmap.sh.shape[1]] = gmap.sh
            gmap = GaussianMap(gmap.means, gmap.quats, gmap.scales, gmap.opacities, sh)
        params = [
            torch.tensor(gmap.means), torch.tensor(np.log(np.maximum(gmap.scales, 1e-12))), torch.tensor(gmap.quats),
            torch.logit(torch.tensor(gmap.opacities).clamp(1e-6, 1 - 1e-6)), torch.tensor(gmap.sh),
        ]  # fmt: skip
        for p in params:
            p.requires_grad_(True)
        for width, height in sizes:
            camera = benchmark_camera(width, height)
            target = torch.rand((height, width, 3), generator=torch.Generator().manual_seed(0))
            pose = torch.zeros(6, dtype=torch.float32, requires_grad=True)
            forward, backward, renders = [], [], []
            for i in range(args.repeats + 1):  # the first is a warm-up (and compiles)
                start = time.perf_counter()
                render(gmap, camera, T, backend="cpu")
                rendered = time.perf_counter()
                proj = project(*params, gmap.sh_degree, camera, T, pose_delta=pose)
                rgb, drawn = rasterize_torch(proj, width, height)
                loss = (torch.clamp(rgb, 0.0, 1.0) - target).abs().mean()
                projected = time.perf_counter()
                loss.backward()
                done = time.perf_counter()
                for p in params + [pose]:
                    p.grad = None
                if i:
                    renders.append(rendered - start)
                    forward.append(projected - rendered)
                    backward.append(done - projected)
            rows.append({
                "gaussians": count, "size": [width, height], "drawn": int(drawn.sum()),
                "render_ms": 1000 * float(np.median(renders)), "forward_ms": 1000 * float(np.median(forward)),
                "backward_ms": 1000 * float(np.median(backward)),
                "step_ms": 1000 * float(np.median(np.add(forward, backward))),
            })  # fmt: skip
    load.append(os.getloadavg()[0])
    return {"map": source, "sh_degree": MAX_SH_DEGREE, "repeats": args.repeats, "rows": rows,
            "load_average_1min": load}  # fmt: skip


def format_fit(results: dict) -> str:
    lines = [
        f"fit steps on {results['map']} (SH degree {results['sh_degree']}), median of {results['repeats']}; "
        f"load average {results['load_average_1min'][0]:.1f} -> {results['load_average_1min'][1]:.1f}",
        f"  {'Gaussians':>9} {'size':>8} {'drawn':>7} {'render':>9} {'forward':>9} {'backward':>9} {'step':>9}",
    ]
    for r in results["rows"]:
        size = f"{r['size'][0]}x{r['size'][1]}"
        lines.append(
            f"  {r['gaussians']:>9} {size:>8} {r['drawn']:>7} {r['render_ms']:>6.0f} ms {r['forward_ms']:>6.0f} ms"
            f" {r['backward_ms']:>6.0f} ms {r['step_ms']:>6.0f} ms"
        )
    lines.append("  render: the forward-only renderer; forward: projection (torch) + rasterization (numba);")
    lines.append("  backward: gradients of an L1 loss to every parameter and the se(3) pose; step = forward + backward")
    lines.append(f"  machine: Python {results['machine']['python']}, {results['machine']['cpu_count']} CPUs")
    return "\n".join(lines)


# name -> (help, add_arguments, run -> dict, dict -> text)
BENCHMARKS: dict[str, tuple[str, Callable, Callable, Callable]] = {
    "render": ("time one render of a map (and the slow reference)", register_render, run_render, format_render),
    "localize": ("score and time localization on views rendered from the map", register_localize, run_localize,
                 format_localize),
    "fit": ("time a training step of the differentiable renderer beside a render", register_fit, run_fit, format_fit),
}
