"""The learned coarse stage: a query image -> 2D-3D matches -> coarse PnP hypotheses.

What the localizer asks of it (:meth:`LearnedCoarse.hypotheses`) is what its lifted coarse stage
gives: :class:`~gsvisloc_ros.pose.PoseEstimate` hypotheses, most inliers first, each from PnP +
RANSAC on 2D-3D correspondences; refinement and acceptance are the localizer's own, unchanged.

Two stages (``LearnedCoarseConfig.stage``):

* ``"points"``: the query's XFeat keypoints at every quarter turn (the localizer's own
  features) are matched, mutual nearest neighbours, against the point descriptors of the
  sampled Gaussians, and one PnP + RANSAC runs on them all (as the lifted scene's global
  fallback does against its landmarks).
* ``"regions"`` (default): the paper's coarse matching. The query is reduced to the matcher's working size
  (``image_side``), its cells made at each quarter turn, matched against the map's regions
  (attention, dual softmax, mutual, above ``threshold``), and every match becomes (sub-patch
  position mapped back to the query's pixels, region centre); one PnP per turn.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from gsvisloc_ros.camera import PinholeCamera
from gsvisloc_ros.gaussians import GaussianMap
from gsvisloc_ros.localizer import pose_from_all_points
from gsvisloc_ros.matching import MatchingConfig
from gsvisloc_ros.pose import PnPConfig, PoseEstimate, estimate_pose
from gsvisloc_ros.scene import SceneConfig, rotate_keypoints_back

from .image_head import STRIDE, cell_centres, image_cells
from .matching import CoarseMatches, mutual_matches
from .model import load_weights, packaged_weights
from .scene import LearnedScene, load_or_encode_learned

log = logging.getLogger(__name__)

STAGES = ("points", "regions")


@dataclass(frozen=True)
class LearnedCoarseConfig:
    """Settings of the learned coarse stage at use (the network's own are in its weights).

    Attributes:
        stage: ``"points"`` or ``"regions"`` (see the module docstring).
        matching: matcher settings of the points stage (predicted descriptors resemble a
            keypoint's less than the lifted landmarks do, hence a lower similarity floor).
        threshold: dual-softmax confidence a mutual match of the regions stage needs. The paper's
            0.3 presumes a sharp matcher; ours, trained for an hour on a CPU, gives its right
            mutual pairs confidences of 0.005-0.06, so every mutual pair goes to RANSAC, whose
            result the refinement and the acceptance still have to confirm.
        reproj_cells: RANSAC inlier threshold of the regions stage's PnP, in patches of the
            matcher's image (a region centre is not on the surface, a patch is 8 pixels wide).
        ransac_iterations: at least this many RANSAC iterations (the learned matches hold far
            fewer inliers than the lifted ones: 10-20 %).
    """

    stage: str = "regions"
    matching: MatchingConfig = field(default_factory=lambda: MatchingConfig(min_similarity=0.5))
    threshold: float = 0.0
    reproj_cells: float = 1.0
    ransac_iterations: int = 10000

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")


class LearnedCoarse:
    """The learned matcher of one map, ready to give coarse hypotheses for query images."""

    def __init__(self, gmap: GaussianMap, xfeat, scene_config: SceneConfig | None = None,
                 weights: str | Path | None = None, cache_dir: Path | None = None, backend: str = "cpu",
                 config: LearnedCoarseConfig | None = None) -> None:
        self.config = config or LearnedCoarseConfig()
        self.weights = Path(weights) if weights is not None else packaged_weights()
        self.device = str(getattr(xfeat, "device", "cpu"))
        self.model = load_weights(self.weights, self.device)
        self.xfeat = xfeat
        self.scene: LearnedScene = load_or_encode_learned(gmap, self.model, self.weights, scene_config, cache_dir,
                                                          backend)
        self._regions = torch.from_numpy(self.scene.region_descriptors).to(self.device)
        self._xyz = torch.from_numpy(self.scene.normalised_points()).to(self.device)

    def reduced(self, image: np.ndarray, camera: PinholeCamera) -> tuple[np.ndarray, PinholeCamera]:
        """``image`` and its camera at the matcher's working size (``image_side``)."""
        factor = self.model.config.image_side / max(camera.size)
        small = camera.scaled(factor)
        return (cv2.resize(image, small.size, interpolation=cv2.INTER_AREA) if factor != 1 else image), small

    def matches(self, image: np.ndarray, camera: PinholeCamera, turn: int = 0,
                reduced: tuple | None = None) -> tuple[np.ndarray, np.ndarray, CoarseMatches]:
        """(pixels [M, 2] in ``image``, map points [M, 3], the raw matches) of ``image`` turned by
        ``turn`` quarter turns; ``reduced``: :meth:`reduced` of the image when already made."""
        reduced, small = reduced or self.reduced(image, camera)
        turned = np.ascontiguousarray(np.rot90(reduced, turn))
        cells = image_cells(self.xfeat, turned)
        h, w = cells.shape[:2]
        with torch.inference_mode():
            scores, confidence = self.model.match(self._regions, self._xyz,
                                                  torch.from_numpy(cells)[None].to(self.device))
        found = mutual_matches(scores[0], confidence[0], (h, w), self.config.threshold, cell_centres(h, w))
        uv = rotate_keypoints_back(found.uv, turn, small.width, small.height)
        uv = (uv + 0.5) * np.array([camera.width / small.width, camera.height / small.height]) - 0.5
        return uv, self.scene.regions[found.region].astype(np.float64), found

    def hypotheses(self, image: np.ndarray, turned: list, turns: int, camera: PinholeCamera, pnp: PnPConfig,
                   min_inliers: int, timer=None) -> list[PoseEstimate]:
        """Coarse PnP hypotheses of ``image`` at ``turns`` quarter turns, those with at least
        ``min_inliers`` inliers, most inliers first. ``turned``: the points stage's input, the
        image's features at each of those turns (keypoints in ``image``)."""
        if self.config.stage == "points":
            hypotheses = [self._from_points(turned, camera, pnp, timer)]
        else:
            hypotheses = self._from_regions(image, camera, turns, pnp, timer)
        hypotheses = [h for h in hypotheses if h.success and h.num_inliers >= min_inliers]
        return sorted(hypotheses, key=lambda h: -h.num_inliers)

    def _from_points(self, turned: list, camera: PinholeCamera, pnp: PnPConfig, timer=None) -> PoseEstimate:
        pnp = dataclasses.replace(pnp, max_iterations=max(pnp.max_iterations, self.config.ransac_iterations))
        return pose_from_all_points(turned, self.scene.points, self.scene.descriptors, camera, self.config.matching,
                                    pnp, timer)

    def _from_regions(self, image: np.ndarray, camera: PinholeCamera, turns: int, pnp: PnPConfig,
                      timer=None) -> list[PoseEstimate]:
        factor = max(camera.size) / self.model.config.image_side
        pnp = dataclasses.replace(pnp, max_reproj_error=max(pnp.max_reproj_error,
                                                            self.config.reproj_cells * STRIDE * factor),
                                  max_iterations=max(pnp.max_iterations, self.config.ransac_iterations))
        reduced = self.reduced(image, camera)  # once for every turn
        matched = [self.matches(image, camera, turn, reduced)[:2] for turn in range(turns)]
        if timer is not None:
            timer.lap("matching")
        hypotheses = [estimate_pose(points, uv, camera, pnp) for uv, points in matched]
        if timer is not None:
            timer.lap("pnp")
        log.debug("learned regions: %s matches, %s inliers", [len(u) for u, _ in matched],
                  [h.num_inliers for h in hypotheses])
        return hypotheses
