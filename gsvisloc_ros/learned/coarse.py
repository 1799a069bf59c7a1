"""The learned coarse stage: a query image -> 2D-3D matches -> coarse PnP hypotheses.

What the localizer asks of it (:meth:`LearnedCoarse.hypotheses`) is what its lifted coarse stage
gives: :class:`~gsvisloc_ros.pose.PoseEstimate` hypotheses, most inliers first, each from PnP +
RANSAC on 2D-3D correspondences; refinement and acceptance are the localizer's own, unchanged.

The query is reduced to the matcher's working size (``image_side``), encoded by the frozen XFeat
backbone at each quarter turn the localizer asks for (the matcher is trained on rolls up to 45
degrees, the quarter turns cover the rest), matched against the map's regions (dual-softmax,
mutual, above ``threshold``), and every match becomes (sub-patch position mapped back to the
query's pixels, region centre).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from gsvisloc_ros.camera import PinholeCamera
from gsvisloc_ros.gaussians import GaussianMap
from gsvisloc_ros.pose import PnPConfig, PoseEstimate, estimate_pose
from gsvisloc_ros.scene import SceneConfig, rotate_keypoints_back

from .image_head import STRIDE, cell_centres, xfeat_cells
from .matching import CoarseMatches, mutual_matches
from .model import load_weights, packaged_weights
from .scene import LearnedScene, load_or_encode_learned

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LearnedCoarseConfig:
    """Settings of the learned coarse stage at use (the network's own are in its weights).

    Attributes:
        threshold: dual-softmax confidence a mutual match needs (the paper: 0.3).
        reproj_cells: RANSAC inlier threshold of the coarse PnP, in patches of the matcher's image
            (a region centre is not on the surface, a patch is 8 pixels wide).
    """

    threshold: float = 0.2
    reproj_cells: float = 1.0


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
        self._regions = torch.from_numpy(self.scene.descriptors).to(self.device)
        self._xyz = torch.from_numpy(self.scene.normalised_points()).to(self.device)

    def matches(self, image: np.ndarray, camera: PinholeCamera,
                turn: int = 0) -> tuple[np.ndarray, np.ndarray, CoarseMatches]:
        """(pixels [M, 2] in ``image``, map points [M, 3], the raw matches) of ``image`` turned by
        ``turn`` quarter turns."""
        side = self.model.config.image_side
        factor = side / max(camera.size)
        small = camera.scaled(factor)
        reduced = cv2.resize(image, small.size, interpolation=cv2.INTER_AREA) if factor != 1 else image
        turned = np.ascontiguousarray(np.rot90(reduced, turn))
        cells = xfeat_cells(self.xfeat, turned)
        h, w = cells.shape[:2]
        with torch.inference_mode():
            scores, confidence = self.model.match(self._regions, self._xyz,
                                                  torch.from_numpy(cells)[None].to(self.device))
        found = mutual_matches(scores[0], confidence[0], (h, w), self.config.threshold, cell_centres(h, w))
        uv = rotate_keypoints_back(found.uv, turn, small.width, small.height)
        uv = (uv + 0.5) * np.array([camera.width / small.width, camera.height / small.height]) - 0.5
        return uv, self.scene.points[found.region].astype(np.float64), found

    def hypotheses(self, image: np.ndarray, camera: PinholeCamera, turns: int, pnp: PnPConfig,
                   min_inliers: int, timer=None) -> list[PoseEstimate]:
        """Coarse PnP hypotheses of ``image`` (one per quarter turn in ``range(turns)``), those with
        at least ``min_inliers`` inliers, most inliers first."""
        factor = max(camera.size) / self.model.config.image_side
        pnp = dataclasses.replace(pnp, max_reproj_error=max(pnp.max_reproj_error,
                                                            self.config.reproj_cells * STRIDE * factor))
        matched = [self.matches(image, camera, turn)[:2] for turn in range(turns)]
        if timer is not None:
            timer.lap("matching")
        hypotheses = [estimate_pose(points, uv, camera, pnp) for uv, points in matched]
        if timer is not None:
            timer.lap("pnp")
        log.debug("learned coarse: %s matches, %s inliers", [len(u) for u, _ in matched],
                  [h.num_inliers for h in hypotheses])
        hypotheses = [h for h in hypotheses if h.success and h.num_inliers >= min_inliers]
        return sorted(hypotheses, key=lambda h: -h.num_inliers)
