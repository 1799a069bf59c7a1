"""The localization pipeline: a 3DGS map and a query image -> a trusted camera pose, or a reason.

Stages (timed one by one in :attr:`LocalizationResult.timings_ms`):

1. ``features``: the 2D encoder on the query (keypoints + descriptors).
2. ``retrieval``: the virtual views of the encoded scene most like the query (VLAD), or with a
   prior pose the views closest to it.
3. ``matching``: query descriptors against the lifted keypoints of those views (mutual nearest
   neighbours); when that gives no pose, against all landmarks (global fallback).
4. ``pnp``: PnP + LO-RANSAC on the 3D-2D matches: the coarse pose.
5. ``refinement``: render the map at the estimate, match the query against the render, lift the
   render's keypoints with its depth and solve again; repeated while it improves.
6. ``decision``: the refined estimate is accepted only when inliers, inlier ratio and
   reprojection error pass :class:`~gsvisloc_ros.pose.PoseAcceptance`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from gsvisloc_ros.camera import PinholeCamera, invert_pose, pose_errors
from gsvisloc_ros.features import check_image, make_encoder
from gsvisloc_ros.fine_matching import FineMatchingConfig, refine_matches
from gsvisloc_ros.gaussians import GaussianMap
from gsvisloc_ros.matching import MatchingConfig, match_descriptors
from gsvisloc_ros.pose import PnPConfig, PoseAcceptance, PoseEstimate, estimate_pose
from gsvisloc_ros.render import render
from gsvisloc_ros.retrieval import rank, vlad
from gsvisloc_ros.scene import EncodedScene, SceneConfig, lift_keypoints, load_or_encode

log = logging.getLogger(__name__)


@dataclass
class LocalizerConfig:
    """Every setting of the pipeline, one small config per stage.

    Attributes:
        encoder: 2D encoder name (``"xfeat"`` or ``"sift"``).
        device: torch device (``"auto"``: CUDA when present).
        query_keypoints: keypoints extracted from the query.
        retrieval_shortlist: virtual images retrieved by VLAD, then re-ranked by close descriptor matches.
        rerank_similarity: cosine similarity that counts as a close match when re-ranking.
        rerank_keypoints: query keypoints (highest detector score first) that re-rank the shortlist;
            re-ranking is a dense similarity of these against every keypoint of every shortlisted
            image, the largest single cost of a global search.
        retrieval_views: best re-ranked virtual images whose keypoints the query is matched against.
        wide_shortlist: when the first retrieval gives no accepted pose, the virtual images ranked
            by VLAD after the first shortlist, down to this rank, are re-ranked too (0: no wide
            search). VLAD alone ranks the one image a close-up matches anywhere in the first
            ~50-400 (measured on plant close-ups). Off by default: at 160 it localized 1 more of
            20 plant close-ups (own query set) but added ~1.3 s to every image that ends without
            a pose (images of something else included), which raised the plant's median latency
            from ~0.53 to ~0.97 s.
        wide_views: images taken from the wide shortlist by each of two scores: close descriptor
            matches, and mutual nearest-neighbour matches (the view matcher's own count).
        view_matching: matcher settings for query vs virtual views and vs renders.
        landmark_matching: matcher settings for the global fallback against all landmarks.
        coarse_pnp: PnP settings on matches to stored views (landmark positions are approximate).
        refine_pnp: PnP settings on matches to renders at the estimate (exact depth).
        refine_iterations: maximum render-and-match rounds; 0 returns the coarse pose unrefined
            (judged by the same acceptance thresholds, so loosen ``max_rmse_px`` to use it).
        refine_converged: (fraction of the typical viewing distance, degrees): a round whose result
            is this close to the pose it rendered from is the last. Fine matching measures the
            query against the render without the render's pose bias, so a render this close gives
            the same answer as one more round (measured: from a render 2 deg off, one round leaves
            ~0.04 deg; the next round moves the pose by about that much).
        refine_first_scale: image scale of the first refinement round (1: full resolution); the
            rounds after it run at full resolution. Halving the first round saves ~3/4 of its cost.
        refine_max_shift: matches to the render that moved more than this fraction of the image
            diagonal are dropped (the render is taken at a nearby pose).
        fine_matching: sub-pixel re-measurement of the matches to the render (``None``: keypoint
            positions as detected, which biases the refinement towards the rendered pose).
        min_coarse_inliers: a coarse pose with fewer inliers is not refined.
        max_refinements: coarse hypotheses (distinct poses, most inliers first) refined per attempt.
        retry_rotated: when no pose is accepted, try again with the query turned by 45 degrees
            (the scene's roll buckets are 90 degrees apart).
        acceptance: thresholds a pose must pass to be returned as a success.
        scene: how the map is encoded.
        cache_dir: where encoded scenes are cached (``None``: the default cache directory).
    """

    encoder: str = "xfeat"
    device: str = "auto"
    query_keypoints: int = 2048
    retrieval_shortlist: int = 32
    rerank_similarity: float = 0.8
    rerank_keypoints: int = 1024
    retrieval_views: int = 4
    wide_shortlist: int = 0
    wide_views: int = 3
    view_matching: MatchingConfig = field(default_factory=lambda: MatchingConfig(min_similarity=0.6))
    landmark_matching: MatchingConfig = field(default_factory=lambda: MatchingConfig(min_similarity=0.75))
    coarse_pnp: PnPConfig = field(default_factory=lambda: PnPConfig(max_reproj_error=8.0, compute_covariance=False))
    refine_pnp: PnPConfig = field(default_factory=lambda: PnPConfig(max_reproj_error=2.0))
    refine_iterations: int = 3
    refine_converged: tuple[float, float] = (0.005, 0.5)
    refine_first_scale: float = 0.5
    refine_max_shift: float = 0.1
    fine_matching: FineMatchingConfig | None = field(default_factory=FineMatchingConfig)
    min_coarse_inliers: int = 12
    max_refinements: int = 2
    retry_rotated: bool = True
    acceptance: PoseAcceptance = field(default_factory=lambda: PoseAcceptance(min_inliers=40, min_inlier_ratio=0.5,
                                                                              max_rmse_px=2.0))
    scene: SceneConfig = field(default_factory=SceneConfig)
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.query_keypoints < 16:
            raise ValueError(f"query_keypoints must be >= 16, got {self.query_keypoints}")
        if self.rerank_keypoints < 16:
            raise ValueError(f"rerank_keypoints must be >= 16, got {self.rerank_keypoints}")
        if self.wide_shortlist < 0 or self.wide_views < 1:
            raise ValueError("wide_shortlist must be >= 0 and wide_views >= 1")
        if self.retrieval_views < 1 or self.refine_iterations < 0:
            raise ValueError("retrieval_views must be >= 1 and refine_iterations >= 0")
        if not 0.2 <= self.refine_first_scale <= 1:
            raise ValueError(f"refine_first_scale must be in [0.2, 1], got {self.refine_first_scale}")
        if not 0 < self.refine_max_shift <= 1:
            raise ValueError(f"refine_max_shift must be in (0, 1], got {self.refine_max_shift}")


@dataclass
class LocalizationResult:
    """The outcome of one query. ``success`` False: ``T_world_camera`` is None and ``failure_reason`` says why."""

    success: bool
    T_world_camera: np.ndarray | None = None
    covariance: np.ndarray | None = None
    num_matches: int = 0
    num_inliers: int = 0
    reprojection_rmse_px: float = float("inf")
    failure_reason: str = ""
    timings_ms: dict = field(default_factory=dict)
    coarse_source: str = ""  # "prior" (refined from it directly), "prior views", "views" or "landmarks"

    def to_dict(self) -> dict:
        """JSON-ready dict with the keys of ``gsvisloc localize --json``."""
        def listed(a):
            return None if a is None else np.asarray(a, dtype=float).tolist()

        return {
            "success": self.success,
            "T_world_camera": listed(self.T_world_camera),
            "num_matches": self.num_matches,
            "num_inliers": self.num_inliers,
            "reprojection_rmse_px": None if not np.isfinite(self.reprojection_rmse_px) else self.reprojection_rmse_px,
            "covariance": listed(self.covariance),
            "failure_reason": self.failure_reason or None,
            "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


class _Timer:
    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.ms[stage] = self.ms.get(stage, 0.0) + 1000.0 * (now - self._start)
        self._start = now


class Localizer:
    """Load a map once, then :meth:`localize` query images against it (thread-safe)."""

    def __init__(self, gmap: GaussianMap, config: LocalizerConfig | None = None, progress: bool = True) -> None:
        self.config = config or LocalizerConfig()
        self.map = gmap
        self.encoder = make_encoder(self.config.encoder, self.config.device, top_k=self.config.query_keypoints)
        self.scene: EncodedScene = load_or_encode(
            gmap, self.encoder, self.config.scene,
            Path(self.config.cache_dir) if self.config.cache_dir else None, progress=progress,
        )
        # float32 once here: ranking converted the float16 VLAD table (35 MB) on every query.
        self._image_vlad = np.asarray(self.scene.image_vlad, dtype=np.float32)
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | Path, config: LocalizerConfig | None = None, progress: bool = True) -> Localizer:
        from gsvisloc_ros.io import load_map

        return cls(load_map(path), config, progress)

    # ------------------------------------------------------------------ public API

    def localize(self, image: np.ndarray, camera: PinholeCamera, prior: np.ndarray | None = None) -> LocalizationResult:
        """Pose of the camera that took ``image`` (uint8 RGB or grey), with intrinsics ``camera``.

        ``prior``: an optional T_world_camera guess; the search starts from the virtual views
        nearest to it. Bad input gives a failed result with the reason, never an exception.
        """
        problem = self._check_input(image, camera, prior)
        if problem:
            return LocalizationResult(False, failure_reason=problem)
        with self._lock:
            return self._localize(image, camera, prior)

    # ------------------------------------------------------------------ stages

    @staticmethod
    def _check_input(image, camera, prior) -> str:
        try:
            check_image(image)
        except ValueError as exc:
            return f"bad image: {exc}"
        if not isinstance(camera, PinholeCamera):
            return f"bad camera: expected a PinholeCamera, got {type(camera).__name__}"
        h, w = image.shape[:2]
        if camera.size != (w, h):
            return f"bad camera: intrinsics are for {camera.width}x{camera.height}, the image is {w}x{h}"
        if prior is not None:
            prior = np.asarray(prior, dtype=float)
            if prior.shape != (4, 4) or not np.all(np.isfinite(prior)):
                return "bad prior: expected a finite 4x4 T_world_camera"
        return ""

    def _localize(self, image, camera, prior) -> LocalizationResult:
        cfg = self.config
        timer = _Timer()
        query = self.encoder.extract(image)
        timer.lap("features")
        if len(query) < cfg.acceptance.min_inliers:
            return LocalizationResult(False, failure_reason=f"too few keypoints in the image: {len(query)}",
                                      timings_ms=timer.ms)

        estimate, reason, source, ok = None, "no coarse pose: too few consistent matches", "", False
        refined: list[np.ndarray] = []
        levels = {1.0: (image, query, camera)}  # the query at each refinement scale, made once per image
        if prior is not None and cfg.refine_iterations:
            # Tracking: a good prior needs no coarse stage, the render at the prior is close enough.
            refined.append(np.asarray(prior, dtype=float))
            estimate = self._refine(levels, refined[0])
            timer.lap("refinement")
            ok, reason = cfg.acceptance.check(estimate)
            if ok:
                return self._result(estimate, ok, reason, timer, "prior")
        # Coarse searches, cheapest first: around the prior, then global, then global among more
        # virtual images, then global with the query turned by 45 degrees (the scene's roll buckets
        # are 90 degrees apart, so every roll is then within 22.5 degrees of one). A wrong prior
        # costs time, never the pose.
        searches = [("prior", query)] if prior is not None else []
        searches += [("global", query)] + ([("wide", query)] if cfg.wide_shortlist > cfg.retrieval_shortlist else [])
        searches += [("global", None)] if cfg.retry_rotated else []
        for kind, features in searches:
            features = features if features is not None else self._rotated_features(image)
            hypotheses, source = self._coarse(features, camera, kind, prior, timer,
                                              landmarks=kind == "global" and features is query)
            budget = len(refined) + cfg.max_refinements
            for coarse in hypotheses:
                if len(refined) == budget:
                    break
                if any(self._same_pose(coarse.T_world_camera, T) for T in refined):
                    continue
                refined.append(coarse.T_world_camera)
                estimate = self._refine(levels, coarse.T_world_camera) if cfg.refine_iterations \
                    else coarse
                timer.lap("refinement")
                ok, reason = cfg.acceptance.check(estimate)
                if ok:
                    break
            if ok:
                break
        if estimate is None:
            return LocalizationResult(False, failure_reason=reason, timings_ms=timer.ms, coarse_source=source)
        return self._result(estimate, ok, reason, timer, source)

    @staticmethod
    def _result(estimate: PoseEstimate, ok: bool, reason: str, timer: _Timer, source: str) -> LocalizationResult:
        timer.lap("decision")
        log.debug("localized: %s (%s), %d/%d inliers", ok, reason, estimate.num_inliers, estimate.num_matches)
        return LocalizationResult(
            ok, estimate.T_world_camera if ok else None, estimate.covariance if ok else None,
            estimate.num_matches, estimate.num_inliers, estimate.rmse_px,
            "" if ok else f"rejected: {reason}", timer.ms, source,
        )

    def _coarse(self, features, camera, kind: str, prior, timer: _Timer,
                landmarks: bool) -> tuple[list[PoseEstimate], str]:
        """Coarse pose hypotheses (most inliers first) and where they came from.

        ``kind``: ``"prior"`` (the virtual images nearest to ``prior``), ``"global"`` (VLAD shortlist
        re-ranked by close matches) or ``"wide"`` (the VLAD ranks after that shortlist).
        """
        cfg = self.config
        if kind == "prior":
            images, source = self._nearest_images(prior, cfg.retrieval_views), "prior views"
        else:
            depth = cfg.retrieval_shortlist if kind == "global" else cfg.wide_shortlist
            ranked = rank(vlad(features.descriptors, self.scene.vocabulary), self._image_vlad, depth)[0]
            strongest = features.descriptors[np.argsort(-features.scores, kind="stable")[: cfg.rerank_keypoints]]
            if kind == "global":
                close, _ = self._view_scores(strongest, ranked)
                images = ranked[np.argsort(-close, kind="stable")][: cfg.retrieval_views]
            else:
                ranked = ranked[cfg.retrieval_shortlist:]
                close, mutual = self._view_scores(strongest, ranked, mutual_too=True)
                best = [ranked[np.argsort(-score, kind="stable")][: cfg.wide_views] for score in (close, mutual)]
                images = np.unique(np.concatenate(best))
            source = "views"
        timer.lap("retrieval")
        hypotheses = self._coarse_from_images(features, camera, images, timer)
        if landmarks and (not hypotheses or hypotheses[0].num_inliers < cfg.min_coarse_inliers):
            hypotheses = [self._coarse_from_landmarks(features, camera, timer)] + hypotheses
            source = "landmarks"
        return [h for h in hypotheses if h.success and h.num_inliers >= cfg.min_coarse_inliers], source

    def _rotated_features(self, image: np.ndarray):
        """Features of ``image`` turned by 45 degrees, with keypoints given in the original image."""
        h, w = image.shape[:2]
        side = int(np.ceil((w + h) / np.sqrt(2.0)))
        M = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), 45.0, 1.0)
        M[:, 2] += (side - 1) / 2 - np.array([(w - 1) / 2, (h - 1) / 2])
        features = self.encoder.extract(cv2.warpAffine(image, M, (side, side), flags=cv2.INTER_LINEAR))
        back = cv2.invertAffineTransform(M)
        uv = features.keypoints @ back[:, :2].T + back[:, 2]
        margin = 8.0  # the turned image's own border makes keypoints that show nothing of the scene
        inside = (uv[:, 0] > margin) & (uv[:, 0] < w - 1 - margin) & (uv[:, 1] > margin) & (uv[:, 1] < h - 1 - margin)
        features = features.subset(inside)
        features.keypoints = uv[inside]
        features.image_size = (w, h)
        return features

    def _same_pose(self, T_a: np.ndarray, T_b: np.ndarray) -> bool:
        """Whether two poses are close enough that refining both would repeat the same work."""
        distance, angle = pose_errors(T_a, T_b)
        return distance < 0.05 * self.scene.geometry.typical_distance and angle < 5.0

    def _nearest_images(self, prior: np.ndarray, count: int) -> np.ndarray:
        """Virtual images whose view is closest to the prior pose (position, direction and roll)."""
        poses = self.scene.view_poses[self.scene.image_view]
        scale = self.scene.geometry.typical_distance
        position = np.linalg.norm(poses[:, :3, 3] - prior[:3, 3], axis=1) / scale
        direction = 1.0 - poses[:, :3, 2] @ prior[:3, 2]
        # The prior's image-down axis seen in each virtual image rotated by its roll.
        turns = self.scene.image_roll.astype(float) * (np.pi / 2)
        down = poses[:, :3, 1] * np.cos(turns)[:, None] - poses[:, :3, 0] * np.sin(turns)[:, None]
        roll = 1.0 - down @ prior[:3, 1]
        return np.argsort(position + direction + roll)[:count]

    def _view_scores(self, descriptors: np.ndarray, images: np.ndarray,
                     mutual_too: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Per virtual image: query descriptors with a close match among its keypoints (cosine above
        ``rerank_similarity``), and (``mutual_too``) mutual nearest-neighbour matches above the view
        matcher's threshold (zeros otherwise)."""
        import torch

        query = torch.as_tensor(descriptors)
        close, mutual = np.zeros(len(images), np.int64), np.zeros(len(images), np.int64)
        with torch.inference_mode():
            for n, i in enumerate(images):
                keypoints = torch.as_tensor(self.scene.obs_descriptors[self.scene.image_observations(int(i))])
                if not len(keypoints) or not len(query):
                    continue
                similarity = query @ keypoints.float().T
                best, nearest = similarity.max(dim=1)
                close[n] = int((best > self.config.rerank_similarity).sum())
                if mutual_too:
                    is_mutual = similarity.argmax(dim=0)[nearest] == torch.arange(len(query))
                    mutual[n] = int((is_mutual & (best >= self.config.view_matching.min_similarity)).sum())
        return close, mutual

    def _coarse_from_images(self, query, camera, images, timer: _Timer) -> list[PoseEstimate]:
        """One PnP hypothesis per virtual image from matches to its stored keypoints, best first."""
        matched = []
        for i in images:
            rows = self.scene.image_observations(int(i))
            matches = match_descriptors(query.descriptors, self.scene.obs_descriptors[rows].astype(np.float32),
                                        None, self.config.view_matching)
            matched.append((query.keypoints[matches.query_idx], self.scene.obs_points[rows][matches.landmark_idx]))
        timer.lap("matching")
        hypotheses = [estimate_pose(p3, p2, camera, self.config.coarse_pnp) for p2, p3 in matched]
        timer.lap("pnp")
        return sorted(hypotheses, key=lambda h: -h.num_inliers)

    def _coarse_from_landmarks(self, query, camera, timer: _Timer) -> PoseEstimate:
        """PnP on matches between the query and every landmark (slower; when retrieval fails)."""
        matches = match_descriptors(query.descriptors, self.scene.descriptors, None, self.config.landmark_matching)
        timer.lap("matching")
        estimate = estimate_pose(self.scene.points[matches.landmark_idx], query.keypoints[matches.query_idx],
                                 camera, self.config.coarse_pnp)
        timer.lap("pnp")
        return estimate

    def _refine(self, levels: dict, T_world_camera: np.ndarray) -> PoseEstimate:
        """Render-and-match rounds from ``T_world_camera`` until the pose stops moving.

        Each round renders the map at the current estimate, matches the query against the render,
        lifts the render's keypoints with its depth and solves PnP. The first round runs at
        ``refine_first_scale`` (cheap; it only has to bring the estimate close), the others at
        full resolution. The depth of a render is exact only near the pose it was taken from, so
        the last round (rendered closest to its result) is returned, unless a round loses most of
        its inliers (a diverging estimate), in which case the round before it is.

        ``levels`` maps an image scale to (image, its features, its camera); it holds scale 1 and
        gains the reduced query the first time it is needed, for the other hypotheses of the image.
        """
        cfg = self.config
        scales = [1.0] * cfg.refine_iterations
        if cfg.refine_iterations > 1 and cfg.refine_first_scale < 1.0:
            scales[0] = cfg.refine_first_scale
        image, _, camera = levels[1.0]
        previous: PoseEstimate | None = None
        T = T_world_camera
        for scale in scales:
            if scale not in levels:
                small = camera.scaled(scale)
                small_image = cv2.resize(image, small.size, interpolation=cv2.INTER_AREA)
                levels[scale] = (small_image, self.encoder.extract(small_image), small)
            estimate = self._refine_round(*levels[scale], T)
            if scale < 1.0:
                # A reduced round only moves the start of the full-resolution rounds, and only
                # when it found a pose of its own.
                if estimate.success and estimate.num_inliers >= cfg.min_coarse_inliers:
                    T = estimate.T_world_camera
                continue
            if not estimate.success or (previous is not None and estimate.num_inliers < 0.5 * previous.num_inliers):
                return previous if previous is not None else estimate
            previous = estimate
            moved, turned = pose_errors(estimate.T_world_camera, T)
            T = estimate.T_world_camera
            if moved < cfg.refine_converged[0] * self.scene.geometry.typical_distance \
                    and turned < cfg.refine_converged[1]:
                break
        return previous

    def _refine_round(self, image, query, camera: PinholeCamera, T: np.ndarray) -> PoseEstimate:
        """One render-and-match round at ``T``: the pose of ``image`` from matches to the render."""
        cfg = self.config
        rendered = render(self.map, camera, invert_pose(T), near=0.01 * self.scene.geometry.radius)
        features = self.encoder.extract(rendered.rgb_u8)
        matches = match_descriptors(query.descriptors, features.descriptors, None, cfg.view_matching)
        uv_query = query.keypoints[matches.query_idx]
        uv_render = features.keypoints[matches.landmark_idx]
        close = np.linalg.norm(uv_query - uv_render, axis=1) < cfg.refine_max_shift * float(np.hypot(*camera.size))
        uv_render, uv_query = uv_render[close], uv_query[close]
        if cfg.fine_matching is not None:
            uv_render, uv_query, fine = refine_matches(rendered.rgb_u8, uv_render, image, uv_query, cfg.fine_matching)
            uv_render, uv_query = uv_render[fine], uv_query[fine]
        points, keep = lift_keypoints(uv_render, rendered.depth, rendered.alpha, camera, T,
                                      cfg.scene.min_alpha, cfg.scene.max_depth_step)
        return estimate_pose(points, uv_query[keep], camera, cfg.refine_pnp, T_world_camera_init=T)
