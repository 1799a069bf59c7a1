"""Localize a folder of query images with known poses (a ``queries.json``) and time it.

Usage::

    python benchmarks/localize_queries.py MAP QUERIES_JSON [--out PREDICTIONS.json] [--prior]

``QUERIES_JSON`` lists ``{"file", "T_world_camera" (4x4 or null), "width", "height"}`` per query
and the pinhole intrinsics (``fx, fy, cx, cy`` at the top level or per query, else 525, 525,
(w-1)/2, (h-1)/2). Prints one line per query, the median errors, recall and latency, and writes
``[{"file", "success", "T_world_camera"}]`` for an external scorer. ``--prior`` also localizes
every positive query a second time with a prior pose 2% of the scene scale and 2 degrees off the
truth (tracking mode) and reports that latency and how many of those poses are within (1 %, 1 deg).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from gsvisloc_ros.camera import PinholeCamera, pose_errors
from gsvisloc_ros.evaluation.metrics import summarise
from gsvisloc_ros.localizer import Localizer, LocalizerConfig
from gsvisloc_ros.scene import SceneConfig


def _camera(spec: dict, query: dict, width: int, height: int) -> PinholeCamera:
    k = {**spec, **query}
    return PinholeCamera(k.get("fx", 525.0), k.get("fy", 525.0), k.get("cx", (width - 1) / 2),
                         k.get("cy", (height - 1) / 2), width, height)


def _perturbed(T: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    prior = T.copy()
    axis = rng.normal(size=3)
    prior[:3, :3] = Rotation.from_rotvec(np.radians(2.0) * axis / np.linalg.norm(axis)).as_matrix() @ T[:3, :3]
    step = rng.normal(size=3)
    prior[:3, 3] += 0.02 * scale * step / np.linalg.norm(step)
    return prior


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("map")
    parser.add_argument("queries")
    parser.add_argument("--out", help="write predictions JSON here")
    parser.add_argument("--prior", action="store_true", help="also time tracking mode with a nearby prior")
    parser.add_argument("--scene-config", default="{}", metavar="JSON",
                        help='SceneConfig fields to change, e.g. \'{"close_aims": 4}\'')
    parser.add_argument("--localizer-config", default="{}", metavar="JSON",
                        help='LocalizerConfig fields to change, e.g. \'{"retrieval": {"wide_shortlist": 0}}\'')
    args = parser.parse_args(argv)

    spec = json.loads(Path(args.queries).read_text())
    items = spec["queries"] if isinstance(spec, dict) else spec
    root = Path(args.queries).parent
    start = time.perf_counter()
    scene = SceneConfig(**{k: tuple(v) if isinstance(v, list) else v
                           for k, v in json.loads(args.scene_config).items()})
    config = LocalizerConfig.from_dict({"scene": scene, **json.loads(args.localizer_config)})
    localizer = Localizer.from_file(args.map, config)
    print(f"map ready in {time.perf_counter() - start:.1f} s", file=sys.stderr)

    rng = np.random.default_rng(0)
    predictions, rows, prior_ms, prior_ok, stages = [], [], [], [], []
    for item in items:
        image = cv2.imread(str(root / item["file"]))[:, :, ::-1].copy()
        camera = _camera(spec if isinstance(spec, dict) else {}, item, image.shape[1], image.shape[0])
        result = localizer.localize(image, camera)
        truth = None if item.get("T_world_camera") is None else np.asarray(item["T_world_camera"], dtype=float)
        scale = item.get("scene_scale") or 1.0
        latency = sum(result.timings_ms.values())
        stages.append(result.timings_ms)
        errors = pose_errors(result.T_world_camera, truth) if result.success and truth is not None else None
        rows.append({"truth": truth is not None, "success": result.success, "errors": errors, "scale": scale,
                     "latency_ms": latency})
        predictions.append({"file": item["file"], "success": result.success,
                            "T_world_camera": None if not result.success else result.T_world_camera.tolist()})
        shown = f"{100 * errors[0] / scale:.3f}% {errors[1]:.3f} deg" if errors else result.failure_reason[:60]
        print(f"{item['file']:24s} {item.get('category', ''):8s} {'ok ' if result.success else '-- '} "
              f"{latency:7.0f} ms  {shown}")
        if args.prior and truth is not None:
            tracked = localizer.localize(image, camera, prior=_perturbed(truth, scale, rng))
            prior_ms.append(sum(tracked.timings_ms.values()))
            if tracked.success:
                t_err, r_err = pose_errors(tracked.T_world_camera, truth)
                prior_ok.append(100 * t_err / scale <= 1.0 and r_err <= 1.0)
            else:
                prior_ok.append(False)

    summary = summarise(
        [r["errors"][0] if r["errors"] else None for r in rows],
        [r["errors"][1] if r["errors"] else None for r in rows],
        scales=[r["scale"] for r in rows],
        accepted=[r["success"] for r in rows],
        has_ground_truth=[r["truth"] for r in rows],
        latencies_ms=[r["latency_ms"] for r in rows],
    )
    print(json.dumps(summary, indent=1))
    names = sorted({name for timings in stages for name in timings})
    print("median ms per stage (over the queries that reached it): " + ", ".join(
        f"{name} {np.median([t[name] for t in stages if name in t]):.0f}" for name in names))
    if prior_ms:
        print(f"with a prior: median {np.median(prior_ms):.0f} ms over {len(prior_ms)} queries, "
              f"{sum(prior_ok)} of them within (1 %, 1 deg)")
    if args.out:
        Path(args.out).write_text(json.dumps(predictions, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
