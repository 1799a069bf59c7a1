"""How well the published covariance describes the real error, over query sets and evaluated bags.

Usage::

    python benchmarks/covariance_consistency.py [--queries MAP QUERIES_JSON]... [--frames FRAMES_JSONL]...
        [--scale S]

``--queries``: each query with a true pose is localized globally (no prior) with the default
LocalizerConfig; its accepted pose and covariance times ``--scale`` give a NEES.
``--frames``: the ``frames.jsonl`` of a ``gsvisloc evaluate-bag`` run (which stores the published
covariance, i.e. already scaled by its ``--covariance-scale``; ``--frames-scale`` says by what).
Prints per set and pooled: frames, mean and median NEES, the share inside the 95 % ellipsoid and the
``covariance_scale`` that would make that share 95 % (:mod:`gsvisloc_ros.evaluation.consistency`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from gsvisloc_ros.camera import PinholeCamera
from gsvisloc_ros.evaluation.consistency import consistency, nees


def query_nees(map_path: str, queries_json: str, scale: float) -> list[float]:
    from gsvisloc_ros.io import load_map
    from gsvisloc_ros.localizer import Localizer, LocalizerConfig

    localizer = Localizer(load_map(map_path), LocalizerConfig(), progress=False)
    spec = json.loads(Path(queries_json).read_text())
    values = []
    for q in spec["queries"]:
        if q.get("T_world_camera") is None:
            continue
        image = cv2.imread(str(Path(queries_json).parent / q["file"]), cv2.IMREAD_COLOR)[:, :, ::-1].copy()
        K = q["K"]
        camera = PinholeCamera(K["fx"], K["fy"], K["cx"], K["cy"], q["width"], q["height"])
        result = localizer.localize(image, camera)
        if result.success and result.covariance is not None:
            values.append(nees(result.T_world_camera, np.array(q["T_world_camera"]), scale * result.covariance))
    return values


def frames_nees(path: str, frames_scale: float, scale: float) -> list[float]:
    values = []
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        if row.get("nees") is not None:
            values.append(row["nees"] * frames_scale / scale)
    return values


def line(name: str, values: list[float], scale: float) -> str:
    f = consistency(values)
    if f is None:
        return f"{name}: no accepted pose with ground truth"
    return (f"{name}: {f['frames']} poses, NEES mean {f['mean_nees']:.3g} median {f['median_nees']:.3g}, "
            f"{100 * f['share_within_95']:.1f} % in the 95 % ellipsoid, covariance_scale for 95 %: "
            f"{scale * f['scale_for_95']:.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", nargs=2, action="append", default=[], metavar=("MAP", "QUERIES_JSON"))
    parser.add_argument("--frames", action="append", default=[], metavar="FRAMES_JSONL")
    parser.add_argument("--frames-scale", type=float, default=1.0, help="the scale the frames were evaluated with")
    parser.add_argument("--scale", type=float, default=1.0, help="the covariance_scale to score")
    args = parser.parse_args()
    pooled = []
    for map_path, queries_json in args.queries:
        values = query_nees(map_path, queries_json, args.scale)
        print(line(f"queries {queries_json}", values, args.scale), flush=True)
        pooled += values
    for path in args.frames:
        values = frames_nees(path, args.frames_scale, args.scale)
        print(line(f"bag frames {path}", values, args.scale), flush=True)
        pooled += values
    print(line("pooled", pooled, args.scale))


if __name__ == "__main__":
    main()
