"""The localization pipeline: a 3DGS map and a query image -> a trusted camera pose, or a reason.

Stages (timed one by one in :attr:`LocalizationResult.timings_ms`):

1. ``features``: the 2D encoder on the query (keypoints + descriptors), at each quarter turn the
   scene does not encode itself.
2. ``retrieval``: the (virtual image, query turn) pairs with the most nearest-neighbour votes of
   the query's descriptors, or with a prior pose the views closest to it.
3. ``matching``: query descriptors against the lifted keypoints of those views (mutual nearest
   neighbours), a few pairs at a time, best-voted first; when that gives no pose, against all
   landmarks (global fallback).
4. ``pnp``: PnP + LO-RANSAC on the 3D-2D matches of each pair: the coarse poses, ranked by inliers.
5. ``refinement``: render the map at the estimate, match the query against the render, lift the
   render's keypoints with its depth and solve again; repeated while it improves.
6. ``decision``: the refined estimate is accepted only when inliers, inlier ratio and
   reprojection error pass :class:`~gsvisloc_ros.pose.PoseAcceptance`, and its inliers pin the pose
   down firmly (their coverage of the image and the pose uncertainty of their geometry): a pose
   refused for weak geometry sends the search on to the next hypothesis.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import cv2
import numpy as np

from gsvisloc_ros.camera import PinholeCamera, invert_pose, pose_errors
from gsvisloc_ros.features import Features, check_image, make_encoder
from gsvisloc_ros.fine_matching import FineMatchingConfig, refine_matches
from gsvisloc_ros.gaussians import GaussianMap
from gsvisloc_ros.learned import SCENE_ENCODERS
from gsvisloc_ros.matching import MatchingConfig, match_descriptors
from gsvisloc_ros.pose import PnPConfig, PoseAcceptance, PoseEstimate, PoseGeometry, estimate_pose
from gsvisloc_ros.render import backend_for_device, render
from gsvisloc_ros.retrieval import InvertedFile
from gsvisloc_ros.scene import EncodedScene, SceneConfig, lift_keypoints, load_or_encode, rotate_keypoints_back

log = logging.getLogger(__name__)


class _Named(str, Enum):
    """An enum whose members are their string values (in comparisons, JSON and formatting)."""

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


class Search(_Named):
    """The coarse searches of :meth:`Localizer._coarse`, cheapest first."""

    PRIOR = "prior"  # the virtual images nearest to the prior pose
    GLOBAL = "global"  # the (virtual image, query turn) pairs with the most votes
    WIDE = "wide"  # the pairs ranked after those, down to ``wide_shortlist``


class CoarseSource(_Named):
    """Where the pose of a :class:`LocalizationResult` started from (compares equal to its value)."""

    NONE = ""  # no coarse pose was reached
    PRIOR = "prior"  # refined from the prior directly (tracking)
    PRIOR_VIEWS = "prior views"  # the virtual images nearest to the prior
    VIEWS = "views"  # the best-voted virtual images
    LANDMARKS = "landmarks"  # all landmarks (when retrieval gave too few inliers)
    LEARNED = "learned"  # the learned coarse stage (``scene_encoder="learned"``)


@dataclass(frozen=True)
class RetrievalConfig:
    """Which virtual images the query is matched with, and how many at a time.

    Attributes:
        shortlist: (virtual image, query turn) pairs with the most nearest-neighbour votes whose
            matches are solved by PnP; the inlier counts rank them.
        vote_similarity: cosine similarity a query descriptor's nearest stored descriptor needs to vote.
        vote_keypoints: query keypoints (highest detector score first, per turn) that vote.
        views: pairs matched and solved at a time (with a prior: the virtual images nearest to it,
            all of them).
        confident_inliers: a coarse pose with this many inliers ends the search through the shortlist
            (correct coarse poses of ordinary views have 100+; wrong ones on plant close-ups up to ~50).
        wide_shortlist: when the first retrieval gives no accepted pose, the pairs ranked after the
            first shortlist, down to this rank, are solved too (0: no wide search; costs every image
            that ends without a pose, images of something else included).
    """

    shortlist: int = 32
    vote_similarity: float = 0.7
    vote_keypoints: int = 512
    views: int = 4
    confident_inliers: int = 80
    wide_shortlist: int = 0

    def __post_init__(self) -> None:
        if self.vote_keypoints < 16:
            raise ValueError(f"vote_keypoints must be >= 16, got {self.vote_keypoints}")
        if self.wide_shortlist < 0 or self.shortlist < 1 or self.views < 1:
            raise ValueError("retrieval shortlist and views must be >= 1 and wide_shortlist >= 0, got "
                             f"{self.shortlist}, {self.views}, {self.wide_shortlist}")


@dataclass(frozen=True)
class RefinementConfig:
    """The render-and-match rounds that refine a coarse pose (:meth:`Localizer._refine`).

    Attributes:
        iterations: maximum rounds (they stop earlier when the pose stops moving or a round gains
            no inliers); 0 returns the coarse pose unrefined (judged by the same acceptance
            thresholds, so loosen ``max_rmse_px`` to use it).
        converged: (fraction of the typical viewing distance, degrees): a round whose result is
            this close to the pose it rendered from is the last. Fine matching measures the query
            against the render without the render's pose bias, so a render this close gives the
            same answer as one more round (measured: from a render 2 deg off, one round leaves
            ~0.04 deg; the next round moves the pose by about that much).
        first_scale: image scale of the first round (1: full resolution); the rounds after it run
            at full resolution. Halving the first round saves ~3/4 of its cost.
        max_shift: matches to the render that moved more than this fraction of the image diagonal
            are dropped (the render is taken at a nearby pose).
        fine_matching: sub-pixel re-measurement of the matches to the render (``None``: keypoint
            positions as detected, which biases the refinement towards the rendered pose).
        pnp: PnP settings on matches to renders at the estimate (exact depth).
    """

    iterations: int = 6
    converged: tuple[float, float] = (0.005, 0.5)
    first_scale: float = 0.5
    max_shift: float = 0.1
    fine_matching: FineMatchingConfig | None = field(default_factory=FineMatchingConfig)
    pnp: PnPConfig = field(default_factory=lambda: PnPConfig(max_reproj_error=2.0))

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise ValueError(f"refinement iterations must be >= 0, got {self.iterations}")
        if not 0.2 <= self.first_scale <= 1:
            raise ValueError(f"refinement first_scale must be in [0.2, 1], got {self.first_scale}")
        if not 0 < self.max_shift <= 1:
            raise ValueError(f"refinement max_shift must be in (0, 1], got {self.max_shift}")


@dataclass(frozen=True)
class LocalizerConfig:
    """Every setting of the pipeline, one small config per stage.

    Attributes:
        encoder: 2D encoder name (``"xfeat"`` or ``"sift"``).
        device: torch device (``"auto"``: CUDA when present), for the encoder, matching and rendering.
        query_keypoints: keypoints extracted from the query.
        working_size: longest side, in pixels, of the image the pipeline works on: a larger query
            is reduced to it (area averaging, intrinsics scaled with it) before anything else, so a
            1080p photo costs what a 640x480 frame does; ``None``: every image at its own size.
        retrieval: which virtual images are matched (:class:`RetrievalConfig`).
        view_matching: matcher settings for query vs virtual views and vs renders.
        landmark_matching: matcher settings for the global fallback against all landmarks.
        coarse_pnp: PnP settings on matches to stored views (landmark positions are approximate).
        min_coarse_inliers: a coarse pose with fewer inliers is not refined.
        max_refinements: coarse hypotheses (distinct poses, most inliers first) refined per attempt.
        confirmed_inlier_ratio: an accepted pose with at least this inlier ratio is confirmed and not
            challenged by the next hypothesis (nor, when found near a prior, by the global search).
            A right pose refined against the render agrees with the image almost everywhere; a wrong
            one held by repeated structure (the stripes of a curtain) or by a prior in the wrong basin
            only on part of it. Measured: right poses on the shared room's photos 0.74-0.96 (all but
            one >= 0.82), on plant renders 0.94-1.0; the wrong ones 0.57 (curtain) and 0.60 (a
            tracked plant frame 4.5 deg off). ``None``: every accepted pose is challenged.
        retry_rotated: when no pose is accepted, try again with the query turned by 45 degrees
            (quarter turns are 90 degrees apart; not with a rotation-invariant encoder, nor with an
            upright scene, ``scene.up``, whose query is level and never turned).
        refinement: the render-and-match rounds (:class:`RefinementConfig`).
        acceptance: thresholds a pose must pass to be returned as a success.
        scene: how the map is encoded.
        cache_dir: where encoded scenes are cached (``None``: the default cache directory).
        scene_encoder: ``"lifted"`` (renders + XFeat, the retrieval and matching above) or
            ``"learned"`` (:mod:`gsvisloc_ros.learned`: the point network over the Gaussians and its
            matcher give the coarse hypotheses; refinement and acceptance are the same).
        learned_weights: the learned matcher's weights file (``None``: the packaged one).
        learned_stage: the learned coarse stage, ``"regions"`` (the paper's patches x regions dual
            softmax) or ``"points"`` (the query's keypoints against the Gaussians' point
            descriptors); see :mod:`gsvisloc_ros.learned.coarse`.
    """

    encoder: str = "xfeat"
    device: str = "auto"
    query_keypoints: int = 2048
    working_size: int | None = 640
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    view_matching: MatchingConfig = field(default_factory=lambda: MatchingConfig(min_similarity=0.6))
    landmark_matching: MatchingConfig = field(default_factory=lambda: MatchingConfig(min_similarity=0.75))
    coarse_pnp: PnPConfig = field(default_factory=lambda: PnPConfig(max_reproj_error=8.0, max_iterations=1000,
                                                                     compute_covariance=False))
    min_coarse_inliers: int = 12
    max_refinements: int = 2
    confirmed_inlier_ratio: float | None = 0.8
    retry_rotated: bool = True
    refinement: RefinementConfig = field(default_factory=RefinementConfig)
    acceptance: PoseAcceptance = field(default_factory=lambda: PoseAcceptance(min_inliers=40, min_inlier_ratio=0.5,
                                                                              max_rmse_px=2.0))
    scene: SceneConfig = field(default_factory=SceneConfig)
    cache_dir: str | None = None
    scene_encoder: str = "lifted"
    learned_weights: str | None = None
    learned_stage: str = "regions"

    def __post_init__(self) -> None:
        if self.scene_encoder not in SCENE_ENCODERS:
            raise ValueError(f"scene_encoder must be one of {SCENE_ENCODERS}, got {self.scene_encoder!r}")
        if self.scene_encoder == "learned" and self.encoder != "xfeat":
            raise ValueError(f"the learned scene encoder reads XFeat's features: encoder must be 'xfeat', "
                             f"got {self.encoder!r}")
        if self.query_keypoints < 16:
            raise ValueError(f"query_keypoints must be >= 16, got {self.query_keypoints}")
        if self.working_size is not None and self.working_size < 64:
            raise ValueError(f"working_size must be >= 64 pixels or None, got {self.working_size}")

    @classmethod
    def from_dict(cls, values: dict) -> LocalizerConfig:
        """A config from (JSON) values: ``retrieval``, ``refinement`` and ``scene`` as dicts of their
        own fields; unknown names raise ValueError."""
        nested = {"retrieval": RetrievalConfig, "refinement": RefinementConfig, "scene": SceneConfig}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown LocalizerConfig settings: {', '.join(unknown)}")
        return cls(**{k: nested[k](**v) if k in nested and isinstance(v, dict) else v for k, v in values.items()})


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
    coarse_source: CoarseSource = CoarseSource.NONE
    geometry: PoseGeometry | None = None  # how firmly the inliers of the last estimate pin its pose down
    #: The last estimate when the acceptance refused it: for evaluation and debugging, never to act on.
    rejected_T_world_camera: np.ndarray | None = None
    #: The geometry tests refused the pose (among other tests, maybe): its inliers did not pin it down.
    weak_geometry: bool = False

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
            "geometry": None if self.geometry is None else self.geometry.to_dict(),
            "weak_geometry": self.weak_geometry,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def pose_from_all_points(turned: list[Features], points: np.ndarray, descriptors: np.ndarray, camera,
                         matching: MatchingConfig, pnp: PnPConfig, timer=None) -> PoseEstimate:
    """PnP + RANSAC on the mutual matches between a query (its features at every turn, keypoints in
    the image) and all of a scene's points (positions [N, 3], unit descriptors [N, D])."""
    matches = match_descriptors(np.concatenate([f.descriptors for f in turned]), descriptors, matching)
    if timer is not None:
        timer.lap("matching")
    keypoints = np.concatenate([f.keypoints for f in turned])
    estimate = estimate_pose(points[matches.landmark_idx], keypoints[matches.query_idx], camera, pnp)
    if timer is not None:
        timer.lap("pnp")
    return estimate


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
        self.backend = backend_for_device(self.config.device)  # renders run where the device says
        self.encoder = make_encoder(self.config.encoder, self.config.device, top_k=self.config.query_keypoints)
        cache_dir = Path(self.config.cache_dir) if self.config.cache_dir else None
        self.learned = None  # the learned coarse stage, with scene_encoder "learned"
        if self.config.scene_encoder == "learned":
            from gsvisloc_ros.learned.coarse import LearnedCoarse, LearnedCoarseConfig

            self.learned = LearnedCoarse(gmap, self.encoder, self.config.scene, self.config.learned_weights,
                                         cache_dir, self.backend, LearnedCoarseConfig(stage=self.config.learned_stage))
            self.scene = self.learned.scene  # geometry, stats, from_cache: what the other stages read
            self._inverted = None
        else:
            self.scene: EncodedScene = load_or_encode(gmap, self.encoder, self.config.scene, cache_dir,
                                                      progress=progress, backend=self.backend)
            self._inverted = InvertedFile(self.scene.obs_descriptors, self.scene.image_start,
                                          self.scene.vocabulary, self.scene.obs_words)
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | Path, config: LocalizerConfig | None = None, progress: bool = True) -> Localizer:
        from gsvisloc_ros.io import load_map

        return cls(load_map(path), config, progress)

    #: Settings a :meth:`variant` cannot change: they decide the encoder and the encoded scene.
    ENCODING_SETTINGS = ("encoder", "device", "query_keypoints", "scene", "scene_encoder", "learned_weights")

    def variant(self, **changes) -> Localizer:
        """A localizer with some settings changed that shares this one's map, encoder and encoded
        scene (nothing is encoded again; the two take turns, as they share the encoder).

        ``changes``: :class:`LocalizerConfig` fields, except :attr:`ENCODING_SETTINGS` (build a
        new Localizer for those). Raises ValueError on an unknown field, a bad value or an
        encoding setting; this localizer is never modified.
        """
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self.config)})
        if unknown:
            raise ValueError(f"unknown LocalizerConfig settings: {', '.join(unknown)}")
        fixed = sorted(set(changes) & set(self.ENCODING_SETTINGS))
        if fixed:
            raise ValueError(f"{', '.join(fixed)} change the encoding: build a new Localizer for them")
        config = dataclasses.replace(self.config, **changes)
        other = copy.copy(self)
        other.config = config
        return other

    # ------------------------------------------------------------------ public API

    def localize(self, image: np.ndarray, camera: PinholeCamera, prior: np.ndarray | None = None) -> LocalizationResult:
        """Pose of the camera that took ``image`` (uint8 RGB or grey), with intrinsics ``camera``.

        ``prior``: an optional T_world_camera guess; the search starts from the virtual views
        nearest to it. Bad input gives a failed result with the reason, never an exception.
        """
        problem = self._check_input(image, camera, prior)
        if problem:
            return LocalizationResult(False, failure_reason=problem)
        image, camera = self._working_image(image, camera)
        with self._lock:
            return self._localize(image, camera, prior)

    def _working_image(self, image: np.ndarray, camera: PinholeCamera) -> tuple[np.ndarray, PinholeCamera]:
        """``image`` and ``camera`` reduced to :attr:`LocalizerConfig.working_size` (the pose is the
        same: only pixels change size). Reprojection errors are then in working pixels."""
        size = self.config.working_size
        if size is None or max(camera.size) <= size:
            return image, camera
        small = camera.scaled(size / max(camera.size))
        return cv2.resize(image, small.size, interpolation=cv2.INTER_AREA), small

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

        estimate, reason, source, ok = None, "no coarse pose: too few consistent matches", CoarseSource.NONE, False
        refined: list[np.ndarray] = []  # the coarse poses refined so far
        landed: list[np.ndarray] = []  # where their refinements ended
        levels = {1.0: (image, query, camera)}  # the query at each refinement scale, made once per image
        if prior is not None and cfg.refinement.iterations:
            # Tracking: a good prior needs no coarse stage, the render at the prior is close enough.
            refined.append(np.asarray(prior, dtype=float))
            estimate = self._refine(levels, refined[0])
            timer.lap("refinement")
            ok, reason = cfg.acceptance.check(estimate)
            if ok and self._confirmed(estimate):
                return self._result(estimate, ok, reason, timer, CoarseSource.PRIOR)
            if ok:  # accepted, but to be challenged by the searches
                source = CoarseSource.PRIOR
                landed.append(estimate.T_world_camera)
            else:
                estimate = None  # a refused refinement of the prior is no candidate: the searches find better
        # Coarse searches, cheapest first: around the prior, then global, then global among more
        # virtual images, then global with the query turned by 45 degrees (with the quarter turns,
        # every roll is then within 22.5 degrees of one). A wrong prior costs time, never the pose.
        # The query's keypoints at every quarter turn (the learned regions stage makes its own cells).
        keypoints = self.learned is None or self.learned.config.stage == "points"
        turned = self._turned_features(image, 0.0, query) if keypoints else []
        timer.lap("features")
        if self.learned is not None:  # the learned coarse stage: one global search
            searches = [(Search.GLOBAL, 0.0)]
        else:
            searches = [(Search.PRIOR, 0.0)] if prior is not None else []
            searches += [(Search.GLOBAL, 0.0)]
            searches += [(Search.WIDE, 0.0)] if cfg.retrieval.wide_shortlist > cfg.retrieval.shortlist else []
            searches += [(Search.GLOBAL, 45.0)] if (cfg.retry_rotated and not self.encoder.rotation_invariant
                                                    and cfg.scene.up is None) else []
        for kind, degrees in searches:
            if degrees:
                turned = self._turned_features(image, degrees)
                timer.lap("features")
            if self.learned is not None:
                hypotheses = self.learned.hypotheses(image, turned, self._query_turns, camera, cfg.coarse_pnp,
                                                     cfg.min_coarse_inliers, timer)
                found_at = CoarseSource.LEARNED
            else:
                hypotheses, found_at = self._coarse(turned, camera, kind, prior, timer,
                                                    landmarks=kind == Search.GLOBAL and not degrees)
            budget = len(refined) + cfg.max_refinements
            challenged = False
            for coarse in hypotheses:
                if len(refined) >= budget + (1 if ok else 0):
                    break
                if any(self._same_pose(coarse.T_world_camera, T) for T in refined):
                    continue
                refined.append(coarse.T_world_camera)
                candidate = self._refine(levels, coarse.T_world_camera, landed) if cfg.refinement.iterations \
                    else coarse
                timer.lap("refinement")
                if candidate is None:  # it refines into a pose already refined: nothing new to weigh
                    if ok:
                        break
                    continue
                if candidate.success:
                    landed.append(candidate.T_world_camera)
                passed, why = cfg.acceptance.check(candidate)
                # The strongest candidate wins: among accepted ones the most inliers (an accepted
                # pose is challenged by the next distinct hypothesis: matches to repeated
                # structure, e.g. the stripes of a curtain, can refine into a consistent wrong
                # pose with fewer inliers than the right one); a refused search reports its
                # strongest refusal.
                if (passed and (not ok or candidate.num_inliers > estimate.num_inliers)) or (
                        not ok and (estimate is None or candidate.num_inliers > estimate.num_inliers)):
                    estimate, reason, ok, source = candidate, why, ok or passed, found_at
                if ok and (challenged or self._confirmed(estimate)):
                    break
                challenged = ok
            # A pose found near the prior that does not agree with the image widely is challenged by
            # the global search as well: a prior can hold the refinement in a wrong basin (measured on
            # a plant bag at 1 Hz: a tracked frame 4.5 deg off on 60 % of its matches, where the global
            # search found the right pose on 97 %).
            if ok and (kind != Search.PRIOR or self._confirmed(estimate)):
                break
        if estimate is None:
            return LocalizationResult(False, failure_reason=reason, timings_ms=timer.ms, coarse_source=found_at)
        return self._result(estimate, ok, reason, timer, source)

    def _confirmed(self, estimate: PoseEstimate) -> bool:
        """Whether an accepted pose agrees with the image so widely that no challenger is needed."""
        limit = self.config.confirmed_inlier_ratio
        return limit is not None and estimate.inlier_ratio >= limit

    def _result(self, estimate: PoseEstimate, ok: bool, reason: str, timer: _Timer,
                source: CoarseSource) -> LocalizationResult:
        timer.lap("decision")
        log.debug("localized: %s (%s), %d/%d inliers", ok, reason, estimate.num_inliers, estimate.num_matches)
        return LocalizationResult(
            ok, estimate.T_world_camera if ok else None, estimate.covariance if ok else None,
            estimate.num_matches, estimate.num_inliers, estimate.rmse_px,
            "" if ok else f"rejected: {reason}", timer.ms, source, estimate.geometry,
            None if ok else estimate.T_world_camera,
            not ok and self.config.acceptance.weak_geometry(estimate),
        )

    def _coarse(self, turned: list[Features], camera, kind: Search, prior, timer: _Timer,
                landmarks: bool) -> tuple[list[PoseEstimate], CoarseSource]:
        """Coarse pose hypotheses (most inliers first) and where they came from.

        ``turned``: the query's features at each quarter turn (:meth:`_turned_features`); a
        candidate is a virtual image and the turn of the query it is matched with.
        ``kind``: :class:`Search`. Pairs are matched and solved ``retrieval.views`` at a time,
        best-voted first, until a pose has ``retrieval.confident_inliers``.
        """
        cfg, r = self.config, self.config.retrieval
        if kind == Search.PRIOR:
            images, turns = self._nearest_images(prior, r.views)
            source = CoarseSource.PRIOR_VIEWS
        else:
            images, turns = self._retrieve(turned, r.shortlist if kind == Search.GLOBAL else r.wide_shortlist)
            if kind == Search.WIDE:
                images, turns = images[r.shortlist:], turns[r.shortlist:]
            source = CoarseSource.VIEWS
        timer.lap("retrieval")
        hypotheses: list[PoseEstimate] = []
        for start in range(0, len(images), r.views):
            chunk = slice(start, start + r.views)
            hypotheses += self._coarse_from_images(turned, camera, images[chunk], turns[chunk], timer)
            if max((h.num_inliers for h in hypotheses), default=0) >= r.confident_inliers:
                break
        hypotheses.sort(key=lambda h: -h.num_inliers)
        if landmarks and (not hypotheses or hypotheses[0].num_inliers < cfg.min_coarse_inliers):
            hypotheses = [self._coarse_from_landmarks(turned, camera, timer)] + hypotheses
            source = CoarseSource.LANDMARKS
        return [h for h in hypotheses if h.success and h.num_inliers >= cfg.min_coarse_inliers], source

    def _retrieve(self, turned: list[Features], depth: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``depth`` (virtual image, query turn) pairs with the most nearest-neighbour votes
        (:class:`~gsvisloc_ros.retrieval.InvertedFile`) from the query's strongest keypoints, best first."""
        cfg = self.config.retrieval
        strongest = [f.descriptors[np.argsort(-f.scores, kind="stable")[: cfg.vote_keypoints]] for f in turned]
        votes = self._inverted.votes(strongest, cfg.vote_similarity).ravel()  # [image * turns + turn]
        best = np.argsort(-votes, kind="stable")[: min(depth, len(votes))]
        best = best[votes[best] > 0]
        return best // len(turned), best % len(turned)

    @property
    def _query_turns(self) -> int:
        """Quarter turns of the query that complete the scene's own in-plane rotations to all four
        (1 for a rotation-invariant encoder)."""
        upright = self.config.scene.up is not None  # level views of a level camera: no turn needed
        return 1 if self.encoder.rotation_invariant or upright else 4 // self.config.scene.rolls

    def _turned_features(self, image: np.ndarray, degrees: float, unturned: Features | None = None) -> list[Features]:
        """Features of ``image`` turned by ``degrees`` and then by each of :attr:`_query_turns` quarter
        turns, with keypoints given in ``image``.

        XFeat descriptors are not rotation invariant: the scene stores its renders at
        ``SceneConfig.rolls`` quarter turns and the query supplies the rest (quarter turns of an
        image are exact). ``unturned``: the features of ``image`` itself when already extracted.
        """
        h, w = image.shape[:2]
        base, back = image, None
        if degrees:
            side = int(np.ceil((w + h) / np.sqrt(2.0)))
            M = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, 1.0)
            M[:, 2] += (side - 1) / 2 - np.array([(w - 1) / 2, (h - 1) / 2])
            base, back = cv2.warpAffine(image, M, (side, side), flags=cv2.INTER_LINEAR), cv2.invertAffineTransform(M)
        turned = []
        for quarter in range(self._query_turns):
            if quarter == 0 and back is None and unturned is not None:
                turned.append(unturned)
                continue
            features = self.encoder.extract(np.ascontiguousarray(np.rot90(base, quarter)))
            uv = rotate_keypoints_back(features.keypoints, quarter, base.shape[1], base.shape[0])
            if back is not None:
                uv = uv @ back[:, :2].T + back[:, 2]
            margin = 8.0 if back is not None else -1.0  # a turned image's own border shows nothing of the scene
            inside = np.all((uv > margin) & (uv < np.array([w - 1, h - 1]) - margin), axis=1)
            features = features.subset(inside)
            features.keypoints = uv[inside]
            features.image_size = (w, h)
            turned.append(features)
        return turned

    def _same_pose(self, T_a: np.ndarray, T_b: np.ndarray) -> bool:
        """Whether two poses are close enough that refining both would repeat the same work."""
        distance, angle = pose_errors(T_a, T_b)
        return distance < 0.05 * self.scene.geometry.typical_distance and angle < 5.0

    def _lands_on(self, T: np.ndarray, landed: list | None) -> bool:
        """Whether ``T`` is the same pose as one an earlier refinement of the image ended at."""
        return any(self._same_pose(T, other) for other in landed or ())

    def _nearest_images(self, prior: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(Virtual image, query turn) pairs whose view is closest to the prior pose (position,
        direction and roll)."""
        poses = self.scene.view_poses[self.scene.image_view]
        scale = self.scene.geometry.typical_distance
        position = np.linalg.norm(poses[:, :3, 3] - prior[:3, 3], axis=1) / scale
        direction = 1.0 - poses[:, :3, 2] @ prior[:3, 2]
        # Image-down axes of each virtual image turned by its roll and of the prior turned by each query turn.
        turns = self.scene.image_roll.astype(float) * (np.pi / 2)
        down = poses[:, :3, 1] * np.cos(turns)[:, None] - poses[:, :3, 0] * np.sin(turns)[:, None]
        quarter = np.arange(self._query_turns) * (np.pi / 2)
        prior_down = np.outer(np.cos(quarter), prior[:3, 1]) - np.outer(np.sin(quarter), prior[:3, 0])
        cost = (position + direction)[:, None] + 1.0 - down @ prior_down.T  # [image, turn]
        best = np.argsort(cost.ravel(), kind="stable")[:count]
        return best // len(quarter), best % len(quarter)

    def _coarse_from_images(self, turned: list[Features], camera, images, turns, timer: _Timer) -> list[PoseEstimate]:
        """One PnP hypothesis per (virtual image, query turn) from matches to the image's stored
        keypoints, in the pairs' order, and one from the matches of all the pairs pooled
        (:meth:`_coarse` ranks them all by inliers).

        The pooled hypothesis is what pins a wide query down: one virtual image shows only part of
        what a real camera sees (measured on the shared room's 1080p photos, 93 deg wide, against
        64 deg virtual views: the best single-image hypotheses had their inliers on 4-10 % of the
        image and were 10-15 deg off, which cost the refinement two or three extra rounds); the
        landmarks of every image live in the same map frame, so their matches simply add up, and
        RANSAC drops the images that show something else."""
        matched = []
        for i, turn in zip(images, turns, strict=True):
            rows = self.scene.image_observations(int(i))
            query = turned[int(turn)]
            matches = match_descriptors(query.descriptors, self.scene.obs_descriptors[rows].astype(np.float32),
                                        self.config.view_matching)
            matched.append((query.keypoints[matches.query_idx], self.scene.obs_points[rows][matches.landmark_idx]))
        timer.lap("matching")
        hypotheses = [estimate_pose(p3, p2, camera, self.config.coarse_pnp) for p2, p3 in matched]
        if len(matched) > 1:
            hypotheses.append(estimate_pose(np.concatenate([p3 for _, p3 in matched]),
                                            np.concatenate([p2 for p2, _ in matched]), camera, self.config.coarse_pnp))
        timer.lap("pnp")
        return hypotheses

    def _coarse_from_landmarks(self, turned: list[Features], camera, timer: _Timer) -> PoseEstimate:
        """PnP on matches between the query (every turn of it) and every landmark (slower; when retrieval fails)."""
        return pose_from_all_points(turned, self.scene.points, self.scene.descriptors, camera,
                                    self.config.landmark_matching, self.config.coarse_pnp, timer)

    def _refine(self, levels: dict, T_world_camera: np.ndarray, landed: list | None = None) -> PoseEstimate | None:
        """Render-and-match rounds from ``T_world_camera`` until the pose stops moving.

        Each round renders the map at the current estimate, matches the query against the render,
        lifts the render's keypoints with its depth and solves PnP. The first round runs at
        ``refinement.first_scale`` (cheap; it only has to bring the estimate close), the others at
        full resolution. Rounds go on while they gain inliers and the pose still moves: a coarse
        pose 10-15 degrees off gains a few inliers per round before it snaps in (measured on a
        plant view: 32, 41, ... 237 inliers). The depth of a render is exact only near the pose it
        was taken from, so the last round (rendered closest to its result) is returned, unless a
        round loses most of its inliers (a diverging estimate), in which case the round before it is.

        ``levels`` maps an image scale to (image, its features, its camera); it holds scale 1 and
        gains the reduced query the first time it is needed, for the other hypotheses of the image.
        ``landed``: poses earlier refinements of the image ended at; when a round lands on one of
        them, this refinement would repeat it and returns ``None`` instead (measured on the shared
        room photos: the challenger of an accepted pose was nearly always another virtual view of the
        same place, and its full-resolution rounds were half of the refinement).
        """
        cfg = self.config.refinement
        scales = [1.0] * cfg.iterations
        if cfg.iterations > 1 and cfg.first_scale < 1.0:
            scales[0] = cfg.first_scale
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
                if estimate.success and estimate.num_inliers >= self.config.min_coarse_inliers:
                    T = estimate.T_world_camera
                    if self._lands_on(T, landed):
                        return None
                continue
            if estimate.success and self._lands_on(estimate.T_world_camera, landed):
                return None
            if not estimate.success or (previous is not None and estimate.num_inliers < 0.5 * previous.num_inliers):
                return previous if previous is not None else estimate
            gained = previous is None or estimate.num_inliers > previous.num_inliers
            previous = estimate
            moved, turned = pose_errors(estimate.T_world_camera, T)
            T = estimate.T_world_camera
            if not gained or (moved < cfg.converged[0] * self.scene.geometry.typical_distance
                              and turned < cfg.converged[1]):
                break
        return previous

    def _refine_round(self, image, query, camera: PinholeCamera, T: np.ndarray) -> PoseEstimate:
        """One render-and-match round at ``T``: the pose of ``image`` from matches to the render."""
        cfg, refine = self.config, self.config.refinement
        rendered = render(self.map, camera, invert_pose(T), near=0.01 * self.scene.geometry.radius,
                          backend=self.backend)
        features = self.encoder.extract(rendered.rgb_u8)
        matches = match_descriptors(query.descriptors, features.descriptors, cfg.view_matching)
        uv_query = query.keypoints[matches.query_idx]
        uv_render = features.keypoints[matches.landmark_idx]
        close = np.linalg.norm(uv_query - uv_render, axis=1) < refine.max_shift * float(np.hypot(*camera.size))
        uv_render, uv_query = uv_render[close], uv_query[close]
        if refine.fine_matching is not None:
            uv_render, uv_query, fine = refine_matches(rendered.rgb_u8, uv_render, image, uv_query,
                                                       refine.fine_matching)
            uv_render, uv_query = uv_render[fine], uv_query[fine]
        points, keep = lift_keypoints(uv_render, rendered.depth, rendered.alpha, camera, T,
                                      cfg.scene.min_alpha, cfg.scene.max_depth_step)
        return estimate_pose(points, uv_query[keep], camera, refine.pnp, T_world_camera_init=T)
