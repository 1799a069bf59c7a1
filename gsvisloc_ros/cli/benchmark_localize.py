"""``gsvisloc benchmark localize MAP --queries N --negatives N``: render a query set from the map
alone (views away from the encoding's virtual viewpoints, half photometrically perturbed, plus
images that do not show the map; :mod:`gsvisloc_ros.evaluation.queries`), localize it with each
encoder with and without refinement, and report pose errors, recall, poses accepted on negatives
and time per stage (:mod:`gsvisloc_ros.evaluation.metrics`); ``--out DIR`` adds results.json, an
error CDF plot and a contact sheet.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from gsvisloc_ros.camera import default_camera, parse_size
from gsvisloc_ros.cli import CommandError

# Stages of LocalizationResult.timings_ms, in pipeline order (others are appended as they appear).
STAGES = ("features", "retrieval", "matching", "pnp", "refinement", "decision")
# Errors on the CDF plot: from 0.001 to 100 (% of the scene scale, degrees).


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
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"),
                        help="where the localizer runs: encoder, matcher and renders (default: the localizer's, auto)")
    parser.add_argument("--cache-dir", help="where encoded scenes are cached (default: ~/.cache/gsvisloc)")
    parser.add_argument("--out", metavar="DIR", help="also write results.json, error_cdf.png and queries.png here")


def _coarse_config(config):
    """The same pipeline without refinement: ``refinement.iterations=0`` returns the coarse pose, judged by
    the acceptance thresholds with the RMSE limit loosened to the coarse PnP's inlier threshold."""
    from dataclasses import replace

    acceptance = replace(config.acceptance, max_rmse_px=max(config.acceptance.max_rmse_px,
                                                            config.coarse_pnp.max_reproj_error))
    return replace(config, refinement=replace(config.refinement, iterations=0), acceptance=acceptance)


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
               "coverage": None if result.geometry is None else round(result.geometry.coverage, 4),
               "failure_reason": result.failure_reason or None, "coarse_source": result.coarse_source or None,
               "timings_ms": {k: round(v, 2) for k, v in result.timings_ms.items()}, "total_ms": round(wall_ms, 2),
               "cpu_ms": round(cpu_ms, 2)}
        if result.success and q.positive:
            t, r = pose_error(result.T_world_camera, q.T_world_camera)
            row.update(translation_error=t, translation_error_pct=100.0 * t / q.scene_scale, rotation_error_deg=r)
        elif result.rejected_T_world_camera is not None and q.positive:  # how far off the refused estimate was
            t, r = pose_error(result.rejected_T_world_camera, q.T_world_camera)
            row.update(refused_translation_error=t, refused_rotation_error_deg=r)
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
    return {"name": name, "encoder": encoder, "refined": config.refinement.iterations > 0,
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
    from gsvisloc_ros.render import backend_for_device, choose_backend, cuda_available

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
    camera = default_camera(width, height)
    base = localizer_config or LocalizerConfig()
    if scene_config is not None:
        base = replace(base, scene=scene_config)
    if args.views is not None:
        if args.views < 1:
            raise CommandError("--views must be >= 1")
        base = replace(base, scene=replace(base.scene, view_directions=args.views))
    if args.cache_dir:
        base = replace(base, cache_dir=args.cache_dir)
    if args.device:
        if args.device == "cuda" and not cuda_available()[0]:
            raise CommandError(f"--device cuda: CUDA is not usable here: {cuda_available()[1]}")
        base = replace(base, device=args.device)
    backend, why = choose_backend(backend_for_device(base.device))
    load_start = os.getloadavg()

    gmap = load_map(args.map)
    results: dict = {"benchmark": "localize", "map": str(args.map), "gaussians": len(gmap), "size": [width, height],
                     "intrinsics": [camera.fx, camera.fy, camera.cx, camera.cy], "seed": args.seed,
                     "up": up.tolist(), "device": base.device, "render_backend": backend,
                     "render_backend_reason": why, "encodings": {}, "configurations": [], "notes": []}
    queries, scales = None, {}
    for encoder in encoders:
        config = replace(base, encoder=encoder)
        start = time.perf_counter()
        localizer = Localizer(gmap, config, progress=progress)
        scene = localizer.scene
        results["encodings"][encoder] = {"seconds": round(time.perf_counter() - start, 2),
                                         "from_cache": scene.from_cache, "device": str(localizer.encoder.device),
                                         "encoding": scene.summary(), "layout": scene.geometry.layout,
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
                                        "per query: this localizer does not skip refinement at refinement.iterations=0")
            results["configurations"].append(result)
    results["load_average"] = {"start": list(load_start), "end": list(os.getloadavg())}
    if args.out:
        results["files"] = _write_localize_outputs(args.out, results, queries)
    return results


def _write_localize_outputs(out: str, results: dict, queries: list) -> dict:
    """results.json, the error CDF plot and a contact sheet of some queries in ``out``; their paths."""
    import os

    import cv2

    from gsvisloc_ros.evaluation.plots import contact_sheet, plot_error_cdfs

    os.makedirs(out, exist_ok=True)
    files = {name: os.path.join(out, name) for name in ("results.json", "error_cdf.png", "queries.png")}
    with open(files["results.json"], "w") as f:
        json.dump(results, f, indent=1)

    plot_error_cdfs({c["name"]: ([r["translation_error_pct"] for r in c["per_query"] if r["positive"]],
                                 [r["rotation_error_deg"] for r in c["per_query"] if r["positive"]],
                                 "-" if c["refined"] else "--") for c in results["configurations"]},
                    files["error_cdf.png"], f"{os.path.basename(results['map'])}: error CDF over "
                    f"{sum(q.positive for q in queries)} views (failures never count)")

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


def format_localize(results: dict) -> str:
    from gsvisloc_ros.evaluation.report import number, percent

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
    if "render_backend" in results:
        lines.append(f"  device {results['device']}: renders on {results['render_backend']}"
                     f" ({results['render_backend_reason']})")
    for name, e in results["encodings"].items():
        lines.append(f"  encoding {name}: {'loaded' if e['from_cache'] else 'encoded'} in {e['seconds']:.1f} s,"
                     f" {e['encoding']} ({e['layout']})")
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
            f"  {c['name']:<15}{percent(s['localized_fraction']):>7}{number(s['median_translation'], '.3g'):>10}"
            f"{number(s['median_translation_pct_scale'], '.2f', '%'):>8}{number(s['median_rotation_deg'], '.2f'):>8}"
            + "".join(f"{percent(s['recall'][k]):>11}" for k in recall_keys)
            + f"{s['wrong_accepted']:>7}{s['accepted_negatives']:>5}/{s['negatives']:<3}"
            f"{number(latency.get('p50'), '.0f'):>8}{number(latency.get('p90'), '.0f'):>8}"
            f"{number((c.get('cpu_ms') or {}).get('p50'), '.0f'):>8}"
            f"{number(c['load_average']['start'][0] if 'load_average' in c else None, '.1f'):>6}"
        )
    stages = list(STAGES) + sorted({k for c in results["configurations"] for k in c["stages_ms"]} - set(STAGES))
    lines.append("  median ms per stage, over the queries that reached it:")
    lines.append(f"  {'':<15}" + "".join(f"{s:>11}" for s in stages))
    for c in results["configurations"]:
        lines.append(f"  {c['name']:<15}" + "".join(
            f"{number(c['stages_ms'][s]['median'] if s in c['stages_ms'] else None, '.0f'):>11}" for s in stages))
    subsets = sorted({k for c in results["configurations"] for k in c["subsets"]},
                     key=["orbit", "close", "inside", "clean", "perturbed"].index)
    lines.append("  recall at (2%, 2 deg) by subset (views):")
    lines.append(f"  {'':<15}" + "".join(
        f"{k + ' (' + str(results['configurations'][0]['subsets'][k]['positives']) + ')':>15}" for k in subsets))
    for c in results["configurations"]:
        lines.append(f"  {c['name']:<15}" + "".join(
            f"{percent(c['subsets'][k]['recall']['2pct_2deg'] if k in c['subsets'] else None):>15}" for k in subsets))
    for note in results["notes"]:
        lines.append(f"  note: {note}")
    load = results["load_average"]
    lines.append(f"  load average (1/5/15 min): {' '.join(f'{v:.2f}' for v in load['start'])} at the start,"
                 f" {' '.join(f'{v:.2f}' for v in load['end'])} at the end;"
                 f" machine: Python {results['machine']['python']}, {results['machine']['cpu_count']} CPUs")
    if results.get("files"):
        lines.append("  wrote " + ", ".join(results["files"].values()))
    return "\n".join(lines)


# name -> (help, add_arguments, run -> dict, dict -> text)
