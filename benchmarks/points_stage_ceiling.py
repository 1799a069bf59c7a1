"""The ceiling of the learned "points" coarse stage: perfect point descriptors, global matching.

Usage::

    python benchmarks/points_stage_ceiling.py MAP QUERIES_JSON [--directions 1 6 20] [--min-similarity 0.6]

The learned points stage (:mod:`gsvisloc_ros.learned.coarse`) matches a query's XFeat keypoints
(every quarter turn) against one predicted descriptor per sampled Gaussian, globally, and solves
one PnP + RANSAC. Its network is taught by the lifted scene (:mod:`gsvisloc_ros.learned.distillation`).
This benchmark replaces the predictions by the teacher itself, the best a perfect network could
give, to see what global matching of such descriptors can do at all: for each sampled Gaussian,
the mean XFeat descriptor of the lifted scene's observations near it, one per viewing-direction
bucket (``--directions``: 1 = the point descriptors as trained; 6 = the axes; more = a Fibonacci
sphere). It prints, per setting, how many positive queries get a coarse pose within (15 %, 10 deg)
of the truth (what the render-and-match refinement can pull in) and within (5 %, 5 deg).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
from scipy.spatial import cKDTree

from gsvisloc_ros.camera import PinholeCamera, pose_errors
from gsvisloc_ros.features import make_encoder
from gsvisloc_ros.io import load_map
from gsvisloc_ros.learned.config import LearnedConfig
from gsvisloc_ros.learned.data import map_hierarchy
from gsvisloc_ros.matching import MatchingConfig, match_descriptors
from gsvisloc_ros.pose import PnPConfig, estimate_pose
from gsvisloc_ros.scene import (
    SceneConfig,
    fibonacci_directions,
    load_or_encode,
    rotate_keypoints_back,
)


def bucketed_descriptors(scene, points: np.ndarray, radius: float, directions: int) -> tuple[np.ndarray, ...]:
    """(positions, descriptors) of every (Gaussian, direction bucket) with observations near it."""
    view = np.repeat(scene.image_view, np.diff(scene.image_start))
    looking = scene.view_poses[view][:, :3, 2]
    centres = {1: np.array([[0.0, 0.0, 1.0]]), 6: np.vstack([np.eye(3), -np.eye(3)])}.get(
        directions, fibonacci_directions(directions))
    bucket = np.argmax(looking @ centres.T, axis=1)
    distance, nearest = cKDTree(points).query(scene.obs_points)
    close = distance <= radius
    keys, inverse = np.unique(nearest[close] * directions + bucket[close], return_inverse=True)
    sums = np.zeros((len(keys), scene.obs_descriptors.shape[1]))
    np.add.at(sums, inverse, scene.obs_descriptors[close].astype(np.float64))
    sums /= np.linalg.norm(sums, axis=1, keepdims=True)
    return points[keys // directions].astype(np.float64), sums.astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("map")
    parser.add_argument("queries")
    parser.add_argument("--directions", type=int, nargs="+", default=[1, 6, 20])
    parser.add_argument("--min-similarity", type=float, default=0.6)
    args = parser.parse_args(argv)

    gmap = load_map(args.map)
    config = LearnedConfig()
    geometry, hierarchy = map_hierarchy(gmap, config)
    xfeat = make_encoder("xfeat", "cpu", top_k=2048)
    scene = load_or_encode(gmap, xfeat, SceneConfig(), progress=False)
    spec = json.loads(Path(args.queries).read_text())
    queries = [q for q in spec["queries"] if q.get("T_world_camera") is not None]
    features = []
    for item in queries:
        image = cv2.imread(str(Path(args.queries).parent / item["file"]))[:, :, ::-1].copy()
        turned = [xfeat.extract(np.ascontiguousarray(np.rot90(image, k))) for k in range(4)]
        keypoints = np.concatenate([rotate_keypoints_back(f.keypoints, k, image.shape[1], image.shape[0])
                                    for k, f in enumerate(turned)])
        features.append((keypoints, np.concatenate([f.descriptors for f in turned])))
    for directions in args.directions:
        points, descriptors = bucketed_descriptors(scene, hierarchy.levels[0], config.voxels[0] * geometry.radius,
                                                   directions)
        near = close = 0
        for item, (keypoints, query) in zip(queries, features, strict=True):
            k = item["K"]
            camera = PinholeCamera(k["fx"], k["fy"], k["cx"], k["cy"], item["width"], item["height"])
            matches = match_descriptors(query, descriptors, MatchingConfig(min_similarity=args.min_similarity))
            estimate = estimate_pose(points[matches.landmark_idx], keypoints[matches.query_idx], camera, PnPConfig())
            if estimate.success:
                t, r = pose_errors(estimate.T_world_camera, np.asarray(item["T_world_camera"]))
                t = 100 * t / item["scene_scale"]
                near += t <= 15 and r <= 10
                close += t <= 5 and r <= 5
        print(f"{directions:3d} direction buckets, {len(points)} descriptors: coarse pose within (15 %, 10 deg) "
              f"for {near}/{len(queries)}, within (5 %, 5 deg) for {close}/{len(queries)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
