"""``gsvisloc benchmark photos MAP SET``: localize real posed photos against a map and score them.

The photos of ``SET`` (a COLMAP model, a transforms.json or a Middlebury ring, read by
:mod:`gsvisloc_ros.io.photosets`) are localized at their own size, undistorted with their camera's
distortion, with the default :class:`~gsvisloc_ros.localizer.LocalizerConfig` (which reduces them
to its working size). When the map was fitted from ``SET`` by ``gsvisloc fit``, its report
(``MAP.fit.json`` beside the map) names the photos held back from the fit: they are scored apart
from the training photos. ``--negatives`` adds images of other places (other photo sets, query
folders with a ``queries.json``, or plain image folders): any pose accepted on them is wrong.

Relative errors use :class:`~gsvisloc_ros.evaluation.metrics.ErrorScale`: the distance to the map
centre around objects, the map's extent inside rooms (said in the output).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from gsvisloc_ros.cli import CommandError, parse_numbers
from gsvisloc_ros.cli.benchmark_localize import _localize_all, _stage_medians, _summarise_rows
from gsvisloc_ros.evaluation.queries import Query

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff")
#: Subsets of the positives, in report order.
SUBSETS = ("held-out", "training")


def register_photos(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("map", metavar="MAP", help="a 3DGS map file (.ply or .splat)")
    parser.add_argument("photos", metavar="SET", help="the posed photo set the map shows (its folder)")
    parser.add_argument("--fit-report", metavar="JSON",
                        help="the map's fit report naming the held-out photos (default: MAP.fit.json when it exists)")
    parser.add_argument("--negatives", action="append", default=[], metavar="PATH",
                        help="images of other places: a photo set, a folder with queries.json (its negatives "
                             "and positives) or a folder of images; repeatable")
    parser.add_argument("--limit", type=int, default=0, metavar="N", help="at most N photos of SET (0: all)")
    parser.add_argument("--localizer-config", default="{}", metavar="JSON",
                        help='LocalizerConfig fields to change, e.g. \'{"working_size": 960}\'')
    parser.add_argument("--upright", nargs="?", const="auto", metavar="X,Y,Z",
                        help="upright localization (level cameras, no query turns) with this up direction of "
                             "the map; without a value: the fit report's, else estimated from the photos' poses")
    parser.add_argument("--coarse", action="store_true",
                        help="no refinement: the coarse PnP pose (to measure what the refinement adds)")
    parser.add_argument("--cache-dir", help="where encoded scenes are cached (default: ~/.cache/gsvisloc)")
    parser.add_argument("--out", metavar="DIR", help="also write results.json and an error CDF plot here")


def _uint8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def _fit_report(map_path: str, fit_report: str | None) -> tuple[dict, str | None]:
    """The map's fit report (``{}`` when there is none beside the map) and its path."""
    path = Path(fit_report) if fit_report else Path(map_path).with_suffix(".fit.json")
    if not path.is_file():
        if fit_report:
            raise CommandError(f"--fit-report: no file at {path}")
        return {}, None
    try:
        report = json.loads(path.read_text())
        report["test_images"] = set(report["test_images"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CommandError(f"{path} is not a fit report with test_images: {exc}") from None
    return report, str(path)


def _up(args, photo_set, report: dict) -> tuple[float, float, float] | None:
    from gsvisloc_ros.camera import level_up

    if args.upright is None:
        return None
    if args.upright != "auto":
        return parse_numbers(args.upright, "--upright", (3,))
    if report.get("up"):
        return tuple(report["up"])
    return tuple(level_up([p.T_world_camera for p in photo_set.photos])[0])


def photo_queries(photo_set, held_out: set[str], scale, limit: int = 0) -> list[Query]:
    """The photos of a posed set as positive queries at their own size (undistorted)."""
    from gsvisloc_ros.io.photosets import load_photo

    photos = photo_set.photos[:limit] if limit else photo_set.photos
    queries = []
    for photo in photos:
        camera, rgb = load_photo(photo)
        category = "held-out" if photo.name in held_out else "training"
        queries.append(Query(photo.name, _uint8(rgb), camera, photo.T_world_camera, scale.of(photo.T_world_camera),
                             category, (category,)))
    return queries


def negative_queries(path: str) -> list[Query]:
    """Images of another place: every photo of a photo set, every image of a query folder
    (queries.json intrinsics), or every image of a plain folder (a 60-degree horizontal field of view)."""
    from gsvisloc_ros.camera import PinholeCamera
    from gsvisloc_ros.cli.localize import read_image
    from gsvisloc_ros.io.photosets import PhotoSetError, load_photo, load_photo_set

    root = Path(path)
    label = root.name
    try:
        photo_set = load_photo_set(root)
    except PhotoSetError:
        photo_set = None
    if photo_set is not None:
        out = []
        for photo in photo_set.photos:
            camera, rgb = load_photo(photo)
            out.append(Query(f"{label}/{photo.name}", _uint8(rgb), camera, None, None, "negative", ("negative", label)))
        return out
    spec = root / "queries.json"
    items = []
    if spec.is_file():
        data = json.loads(spec.read_text())
        for q in data["queries"] if isinstance(data, dict) else data:
            items.append((root / q["file"], q.get("K")))
    elif root.is_dir():
        items = [(p, None) for p in sorted(root.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise CommandError(f"--negatives {path}: no photo set, queries.json or images there")
    out = []
    for file, K in items:
        image = read_image(str(file))
        h, w = image.shape[:2]
        if isinstance(K, dict):
            camera = PinholeCamera(float(K["fx"]), float(K["fy"]), float(K["cx"]), float(K["cy"]), w, h)
        elif K is not None:
            K = np.asarray(K, dtype=float)
            camera = PinholeCamera(K[0, 0], K[1, 1], K[0, 2], K[1, 2], w, h)
        else:
            f = 0.5 * w / np.tan(np.radians(30.0))
            camera = PinholeCamera(f, f, (w - 1) / 2, (h - 1) / 2, w, h)
        out.append(Query(f"{label}/{file.name}", image, camera, None, None,
                         "negative", ("negative", label)))
    return out


def run_photos(args: argparse.Namespace, progress: bool = True) -> dict:
    """Localize the photos (and negatives); a JSON-ready dict."""
    from dataclasses import replace

    from gsvisloc_ros.evaluation.metrics import ErrorScale
    from gsvisloc_ros.io import load_map
    from gsvisloc_ros.io.photosets import PhotoSetError, load_photo_set
    from gsvisloc_ros.localizer import Localizer, LocalizerConfig

    try:
        photo_set = load_photo_set(args.photos)
    except PhotoSetError as exc:
        raise CommandError(str(exc)) from None
    report, report_path = _fit_report(args.map, args.fit_report)
    held_out = report.get("test_images", set())
    try:
        config = LocalizerConfig.from_dict(json.loads(args.localizer_config))
    except (ValueError, TypeError) as exc:
        raise CommandError(f"--localizer-config: {exc}") from None
    if args.cache_dir:
        config = replace(config, cache_dir=args.cache_dir)
    up = _up(args, photo_set, report)
    if up is not None:
        try:
            config = replace(config, scene=replace(config.scene, up=up))
        except ValueError as exc:
            raise CommandError(f"--upright: {exc}") from None
    if args.coarse:
        from gsvisloc_ros.cli.benchmark_localize import _coarse_config

        config = _coarse_config(config)
    load_start = os.getloadavg()
    gmap = load_map(args.map)
    start = time.perf_counter()
    localizer = Localizer(gmap, config, progress=progress)
    encode_seconds = time.perf_counter() - start
    scale = ErrorScale.for_geometry(localizer.scene.geometry)
    queries = photo_queries(photo_set, held_out, scale, args.limit)
    for path in args.negatives:
        queries += negative_queries(path)
    scales = {q.name: q.scene_scale for q in queries}
    load = os.getloadavg()
    rows = _localize_all(localizer, queries, "photos", progress)
    for row, q in zip(rows, queries, strict=True):
        row["size"] = list(q.camera.size)
    positives = [r for r in rows if r["positive"]]
    subsets = {}
    for name in SUBSETS:
        chosen = [r for r in rows if r["category"] == name]
        if chosen:
            subsets[name] = _summarise_rows(chosen, scales)
    results = {
        "benchmark": "photos", "map": str(args.map), "photos": str(args.photos), "fit_report": report_path,
        "gaussians": len(gmap), "layout": localizer.scene.geometry.layout, "scale": scale.to_dict(),
        "scale_description": scale.describe(), "encoding_seconds": round(encode_seconds, 2),
        "from_cache": localizer.scene.from_cache, "working_size": config.working_size,
        "upright": None if up is None else list(localizer.config.scene.up), "refined": not args.coarse,
        "scene_encoder": localizer.config.scene_encoder, "encoding": localizer.scene.summary(),
        "sizes": sorted({f"{r['size'][0]}x{r['size'][1]}" for r in rows}),
        "negatives_from": list(args.negatives),
        "summary": _summarise_rows(rows, scales), "subsets": subsets,
        "positives_summary": _summarise_rows(positives, scales) if positives else None,
        "stages_ms": _stage_medians(positives), "load_average": {"start": list(load_start), "localizing": list(load),
                                                            "end": list(os.getloadavg())},
        "per_query": rows,
    }
    if args.out:
        results["files"] = _write_outputs(args.out, results)
    return results


def _write_outputs(out: str, results: dict) -> dict:
    from gsvisloc_ros.evaluation.plots import plot_error_cdfs

    os.makedirs(out, exist_ok=True)
    files = {"results.json": os.path.join(out, "results.json"), "error_cdf.png": os.path.join(out, "error_cdf.png")}
    with open(files["results.json"], "w") as f:
        json.dump(results, f, indent=1)
    curves = {}
    for name in SUBSETS:
        rows = [r for r in results["per_query"] if r["category"] == name]
        if rows:
            curves[name] = ([r["translation_error_pct"] for r in rows], [r["rotation_error_deg"] for r in rows], "-")
    if curves:
        plot_error_cdfs(curves, files["error_cdf.png"],
                        f"{os.path.basename(results['map'])}: photos of {os.path.basename(results['photos'])} "
                        f"(% of the {results['scale']['name']}; failures never count)")
    return files


def _mode(up) -> str:
    return "general (any roll)" if up is None else "upright (up " + ",".join(f"{v:.3f}" for v in up) + ")"


def format_photos(results: dict) -> str:
    from gsvisloc_ros.cli.benchmark_localize import STAGES
    from gsvisloc_ros.evaluation.report import number, percent

    lines = [f"photos of {results['photos']} against {results['map']} ({results['gaussians']} Gaussians, "
             f"{results['layout']} layout): images {', '.join(results['sizes'])}, working size "
             f"{results['working_size']}; scale: {results['scale_description']}",
             f"  {_mode(results['upright'])}"
             f", {'refined' if results['refined'] else 'coarse pose only (no refinement)'}; "
             f"encoding ({results['encoding']}) {'loaded' if results['from_cache'] else 'made'}"
             f" in {results['encoding_seconds']:.1f} s"
             + (f"; held-out photos from {results['fit_report']}" if results["fit_report"] else
                "; no fit report: every photo counts as training")]
    header = (f"  {'subset':<12}{'photos':>7}{'loc.':>8}{'med t':>10}{'med t%':>8}{'med rot':>8}"
              f"{'R@1%,1deg':>11}{'R@2%,2deg':>11}{'R@5%,5deg':>11}{'wrong':>7}{'p50 ms':>8}{'p90 ms':>8}")
    lines.append(header)
    table = [(name, s) for name, s in results["subsets"].items()]
    if results["positives_summary"] and len(table) > 1:
        table.append(("all photos", results["positives_summary"]))
    for name, s in table:
        latency = s["latency_ms"] or {}
        lines.append(
            f"  {name:<12}{s['positives']:>7}{percent(s['localized_fraction']):>8}"
            f"{number(s['median_translation'], '.3g'):>10}{number(s['median_translation_pct_scale'], '.2f', '%'):>8}"
            f"{number(s['median_rotation_deg'], '.2f'):>8}"
            + "".join(f"{percent(s['recall'][k]):>11}" for k in ("1pct_1deg", "2pct_2deg", "5pct_5deg"))
            + f"{s['wrong_accepted']:>7}{number(latency.get('p50'), '.0f'):>8}{number(latency.get('p90'), '.0f'):>8}")
    s = results["summary"]
    if s["negatives"]:
        latency = np.median([r["total_ms"] for r in results["per_query"] if not r["positive"]])
        lines.append(f"  negatives: {s['accepted_negatives']}/{s['negatives']} accepted, median {latency:.0f} ms "
                     f"(from {', '.join(results['negatives_from'])})")
    stages = [k for k in STAGES if k in results["stages_ms"]]
    lines.append("  median ms per stage (photos of the set that reached it): " + ", ".join(
        f"{k} {results['stages_ms'][k]['median']:.0f}" for k in stages))
    load = results["load_average"]
    lines.append(f"  load average (1/5/15 min): {' '.join(f'{v:.2f}' for v in load['localizing'])} when localizing"
                 f" began, {' '.join(f'{v:.2f}' for v in load['end'])} at the end")
    estimates = [(r["translation_error"], r["rotation_error_deg"]) if r["success"] else
                 (r.get("refused_translation_error"), r.get("refused_rotation_error_deg"))
                 for r in results["per_query"] if r["positive"]]
    estimates = [e for e in estimates if e[0] is not None]
    if estimates:
        extent = results["scale"]["extent"]
        t, rot = np.median([e[0] for e in estimates]), np.median([e[1] for e in estimates])
        lines.append(f"  every estimate, accepted or refused ({len(estimates)} photos): median {t:.3g} units"
                     + (f" ({100 * t / extent:.2f}% of the extent)" if extent else "") + f", {rot:.2f} deg")
    failures = [r for r in results["per_query"] if r["positive"] and not r["success"]]
    for r in failures[:10]:
        lines.append(f"  not localized: {r['query']}: {r['failure_reason']}")
    if results.get("files"):
        lines.append("  wrote " + ", ".join(results["files"].values()))
    return "\n".join(lines)
