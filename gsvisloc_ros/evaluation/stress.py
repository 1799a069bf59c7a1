"""Wrong-pose stress test: a global search on every view of many trajectories and close-ups of a map.

A robot acts on every pose it is given, so the one number that must stay at zero is the count of
wrong poses accepted. Views that invite them are those whose inliers pin the pose down weakly:
close-ups of plain surfaces with one small textured patch, grazing views, views of symmetric
objects. :func:`stress_views` makes such views of a map without choosing them for texture:

* trajectories (:func:`~gsvisloc_ros.synthetic.make_trajectory`, ``orbit`` and ``walk`` at
  several seeds), the frames a ``make-bag`` bag of the same seed holds, every frame kept;
* close-ups (:func:`~gsvisloc_ros.evaluation.queries.generate_queries` with every positive a close
  view and no minimum of texture), half of them photometrically perturbed;
* negatives: images that do not show the map.

:func:`run_stress` localizes each one with no prior (the search of a first fix or a relocalization)
and counts wrong poses accepted (outside (5 % of the scene scale, 5 deg), or any pose on a
negative), recall, and how many poses were refused for weak geometry.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from gsvisloc_ros.camera import PinholeCamera, invert_pose
from gsvisloc_ros.evaluation.metrics import pose_error, scene_scale, summarise
from gsvisloc_ros.render import render

#: Beyond both of these an accepted pose is wrong (the loosest recall threshold, as in :mod:`.metrics`).
WRONG = (0.05, 5.0)


@dataclass(frozen=True)
class StressConfig:
    """Which views of a map are localized.

    Attributes:
        trajectories: (kind, seed) of each trajectory.
        frames: frames per trajectory.
        close_ups: close views (no texture minimum).
        negatives: images that do not show the map.
        seed: seed of the close-ups and negatives.
        up: the map's world up (close-ups are sampled around it; trajectories are z-up as in ``make-bag``).
    """

    trajectories: tuple[tuple[str, int], ...] = (("orbit", 0), ("orbit", 7), ("walk", 0), ("walk", 7))
    frames: int = 40
    close_ups: int = 40
    negatives: int = 10
    seed: int = 0
    up: tuple[float, float, float] = (0.0, -1.0, 0.0)

    def __post_init__(self) -> None:
        if self.frames < 2 or self.close_ups < 0 or self.negatives < 0:
            raise ValueError("frames must be >= 2, close_ups and negatives >= 0")


@dataclass
class StressView:
    """One image to localize: ``T_world_camera`` is ``None`` for a negative."""

    group: str  # "orbit-0", "walk-7", "close", "negative"
    index: int
    image: np.ndarray
    camera: PinholeCamera
    T_world_camera: np.ndarray | None


def stress_views(localizer, config: StressConfig, camera: PinholeCamera | None = None) -> Iterator[StressView]:
    """The views of ``localizer``'s map that :func:`run_stress` localizes, rendered one at a time."""
    from gsvisloc_ros.camera import default_camera
    from gsvisloc_ros.evaluation.queries import QueryConfig, generate_queries
    from gsvisloc_ros.synthetic.trajectories import make_trajectory

    gmap, scene = localizer.map, localizer.scene
    camera = camera or default_camera()
    near = 0.01 * scene.geometry.radius
    for kind, seed in config.trajectories:
        trajectory = make_trajectory(gmap, kind, config.frames, 1.0, seed)
        for i, T in enumerate(trajectory.T_map_camera):
            yield StressView(f"{kind}-{seed}", i, render(gmap, camera, invert_pose(T), near=near).rgb_u8, camera, T)
    plain = QueryConfig(close_every=1, min_keypoints=0)
    queries = generate_queries(gmap, config.close_ups, config.negatives, camera=camera, seed=config.seed,
                               config=plain, geometry=scene.geometry, view_poses=scene.view_poses, up=config.up)
    for i, q in enumerate(queries):
        yield StressView("close" if q.positive else "negative", i, q.image, q.camera, q.T_world_camera)


def run_stress(localizer, config: StressConfig, name: str = "", progress: bool = True) -> dict:
    """Localize every view of :func:`stress_views` with no prior; rows and a summary, JSON-ready."""
    from tqdm import tqdm

    centre = localizer.scene.geometry.centre
    total = len(config.trajectories) * config.frames + config.close_ups + config.negatives
    rows = []
    bar = tqdm(stress_views(localizer, config), total=total, desc=f"global searches ({name})", unit="view",
               disable=not progress)
    for view in bar:
        start = time.perf_counter()
        result = localizer.localize(view.image, view.camera)
        row = {"map": name, "group": view.group, "index": view.index, "positive": view.T_world_camera is not None,
               "success": bool(result.success), "failure_reason": result.failure_reason or None,
               "weak_geometry": result.weak_geometry,
               "num_inliers": result.num_inliers, "total_ms": round(1000.0 * (time.perf_counter() - start), 1),
               "geometry": None if result.geometry is None else result.geometry.to_dict(),
               "translation_error": None, "rotation_error_deg": None, "scale": None, "wrong": False,
               "estimate_rotation_error_deg": None, "estimate_translation_error": None, "estimate_wrong": None}
        estimate = result.T_world_camera if result.success else result.rejected_T_world_camera
        if view.T_world_camera is not None:
            row["scale"] = scene_scale(view.T_world_camera, centre)
            if estimate is not None:  # the last estimate, accepted or not: what the acceptance judged
                t, r = pose_error(estimate, view.T_world_camera)
                row.update(estimate_translation_error=t, estimate_rotation_error_deg=r,
                           estimate_wrong=not (t < WRONG[0] * row["scale"] and r < WRONG[1]))
        if result.success:
            row["T_world_camera"] = np.asarray(result.T_world_camera).tolist()
            if view.T_world_camera is None:
                row["wrong"] = True
            else:
                t, r = pose_error(result.T_world_camera, view.T_world_camera)
                row.update(translation_error=t, rotation_error_deg=r,
                           wrong=not (t < WRONG[0] * row["scale"] and r < WRONG[1]))
        rows.append(row)
        bar.set_postfix(wrong=sum(r["wrong"] for r in rows), localized=sum(r["success"] for r in rows))
    return {"map": name, "summary": summarise_stress(rows), "rows": rows}


def summarise_stress(rows: list[dict]) -> dict:
    """Searches, wrong poses, recall and weak-geometry refusals of :func:`run_stress` rows, per group too."""
    def summary(chosen: list[dict]) -> dict:
        positives = [r for r in chosen if r["positive"]]
        s = summarise([r["translation_error"] for r in positives], [r["rotation_error_deg"] for r in positives],
                      scales=[r["scale"] for r in positives], accepted=[r["success"] for r in positives])
        return {
            "searches": len(chosen),
            "positives": len(positives),
            "negatives": len(chosen) - len(positives),
            "wrong_accepted": sum(r["wrong"] for r in chosen),
            "negatives_accepted": sum(r["success"] for r in chosen if not r["positive"]),
            "localized_fraction": s["localized_fraction"],
            "recall": s["recall"],
            "refused_weak_geometry": sum(r["weak_geometry"] for r in chosen),
            "median_ms": float(np.median([r["total_ms"] for r in chosen])) if chosen else None,
        }

    groups = sorted({r["group"] for r in rows})
    return {**summary(rows), "groups": {g: summary([r for r in rows if r["group"] == g]) for g in groups}}
