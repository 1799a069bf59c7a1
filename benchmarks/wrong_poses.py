"""Wrong-pose stress benchmark: a global search on every view of many trajectories and close-ups.

Usage::

    python benchmarks/wrong_poses.py MAP [MAP ...] --out DIR [--frames 40] [--close-ups 40]
        [--negatives 10] [--trajectories orbit:0,orbit:7,walk:0,walk:7] [--no-geometry-check]
        [--cache-dir DIR]

``MAP`` is a ``.ply`` / ``.splat`` (world up -y, as COLMAP captures) or ``proc:KIND:SEED`` for a
procedural scene (``proc:tabletop:1``, ``proc:room:0``; world up +z). For each map it localizes,
with no prior, every frame of the trajectories (the frames of ``gsvisloc make-bag`` bags of the
same seeds), close-ups chosen without any minimum of texture, and negatives
(:mod:`gsvisloc_ros.evaluation.stress`). It prints per map and in total: searches, wrong poses
accepted (outside (5 % of the scene scale, 5 deg), or any pose on a negative), recall and refusals
for weak geometry, and writes ``DIR/stress.json`` (every row, with the geometry measures of the
last estimate) and ``DIR/geometry.png`` (the measures against the true error, with the thresholds).
``--no-geometry-check`` turns the weak-geometry tests off, to measure what they change.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from gsvisloc_ros.evaluation.stress import WRONG, StressConfig, run_stress, summarise_stress
from gsvisloc_ros.localizer import Localizer, LocalizerConfig


def _load(spec: str):
    if spec.startswith("proc:"):
        from gsvisloc_ros.synthetic import make_scene

        _, kind, seed = spec.split(":")
        return make_scene(kind, seed=int(seed)), (0.0, 0.0, 1.0)
    from gsvisloc_ros.io import load_map

    return load_map(spec), (0.0, -1.0, 0.0)


def _plot(rows: list[dict], acceptance, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in rows if r["geometry"] and r["positive"] and r["estimate_wrong"] is not None]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, key, limit, label in (
        (axes[0], "coverage", acceptance.min_coverage, "inliers' hull / image"),
        (axes[1], "position_uncertainty", acceptance.max_position_uncertainty, "position uncertainty / depth"),
        (axes[2], "rotation_uncertainty_deg", acceptance.max_rotation_uncertainty_deg, "rotation uncertainty (deg)"),
    ):
        for wrong, colour, name in ((False, "tab:blue", "within (5 %, 5 deg)"), (True, "tab:red", "outside")):
            chosen = [r for r in measured if r["estimate_wrong"] == wrong and r["geometry"][key] is not None]
            ax.scatter([r["geometry"][key] for r in chosen], [max(r["estimate_rotation_error_deg"], 1e-3)
                                                              for r in chosen],
                       s=10, c=colour, label=f"{name} ({len(chosen)})", alpha=0.7)
        if limit is not None:
            ax.axvline(limit, color="k", linestyle="--", label=f"threshold {limit:g}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("rotation error of the last estimate (deg)")
        ax.legend(fontsize=8)
    fig.suptitle("The last estimate of each global search: geometry measures against the true error")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _line(name: str, s: dict) -> str:
    recall = s["recall"]
    return (f"{name:<22} {s['searches']:>5} {s['wrong_accepted']:>6} {s['negatives_accepted']:>5}/{s['negatives']:<4} "
            f"{100 * (s['localized_fraction'] or 0):>6.1f} % {100 * (recall.get('1pct_1deg') or 0):>6.1f} % "
            f"{100 * (recall.get('5pct_5deg') or 0):>6.1f} % {s['refused_weak_geometry']:>6} {s['median_ms']:>8.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("maps", nargs="+", help="map files, or proc:KIND:SEED for a procedural scene")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--frames", type=int, default=40, help="frames per trajectory (default: 40)")
    parser.add_argument("--close-ups", type=int, default=40, help="close-ups per map (default: 40)")
    parser.add_argument("--negatives", type=int, default=10, help="negatives per map (default: 10)")
    parser.add_argument("--trajectories", default="orbit:0,orbit:7,walk:0,walk:7", help="KIND:SEED,...")
    parser.add_argument("--no-geometry-check", action="store_true", help="turn the weak-geometry tests off")
    parser.add_argument("--cache-dir", default=None, help="scene cache directory")
    args = parser.parse_args(argv)

    trajectories = tuple((k, int(s)) for k, s in (t.split(":") for t in args.trajectories.split(",") if t))
    config = LocalizerConfig(cache_dir=args.cache_dir)
    if args.no_geometry_check:
        config = replace(config, acceptance=replace(config.acceptance, min_coverage=None,
                                                    max_position_uncertainty=None, max_rotation_uncertainty_deg=None))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    results = []
    for spec in args.maps:
        gmap, up = _load(spec)
        localizer = Localizer(gmap, config)
        stress = StressConfig(trajectories, args.frames, args.close_ups, args.negatives, up=up)
        results.append(run_stress(localizer, stress, name=Path(spec).stem if not spec.startswith("proc:") else spec))
    rows = [r for result in results for r in result["rows"]]
    report = {"maps": args.maps, "geometry_check": not args.no_geometry_check, "wrong_threshold": WRONG,
              "acceptance": vars(config.acceptance), "load_average": {"start": load, "end": os.getloadavg()},
              "summary": summarise_stress(rows), "per_map": {r["map"]: r["summary"] for r in results}, "rows": rows}
    (out / "stress.json").write_text(json.dumps(report, indent=1))
    _plot(rows, config.acceptance, out / "geometry.png")
    print(f"{'map / group':<22} {'views':>5} {'wrong':>6} {'neg acc':>10} {'localized':>8} {'R@1%1d':>8} "
          f"{'R@5%5d':>8} {'weak':>6} {'p50 ms':>8}")
    for result in results:
        print(_line(result["map"], result["summary"]))
        for group, s in result["summary"]["groups"].items():
            print(_line("  " + group, s))
    print(_line("all", report["summary"]))
    print(f"load average: {load[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end; "
          f"wrote {out / 'stress.json'} and {out / 'geometry.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
