"""The localizer end to end: a map and a query image in, a trusted pose (or a reason) out."""

from __future__ import annotations

import copy
import dataclasses
import json

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from gsvisloc_ros.camera import PinholeCamera, invert_pose, look_at, pose_errors
from gsvisloc_ros.features import make_encoder
from gsvisloc_ros.localizer import Localizer, LocalizerConfig, RefinementConfig, RetrievalConfig, Search, _Timer
from gsvisloc_ros.render import render
from gsvisloc_ros.scene import SceneConfig
from gsvisloc_ros.synthetic import make_scene

CAMERA = PinholeCamera(400.0, 400.0, 319.5, 239.5, 640, 480)
# Fewer virtual views than the default keep the test quick; the scene is small and textured.
FAST = SceneConfig(view_directions=24, distance_factors=(0.7, 1.2), image_size=(384, 288), keypoints_per_view=512)


@pytest.fixture(scope="module")
def tabletop_localizer(tmp_path_factory):
    gmap = make_scene("tabletop", seed=7)
    return Localizer(gmap, LocalizerConfig(scene=FAST, cache_dir=str(tmp_path_factory.mktemp("cache"))),
                     progress=False)


def _query(localizer, eye, target, roll_deg=0.0):
    T = look_at(eye, target, up=(0, 0, 1))
    c, s = np.cos(np.radians(roll_deg)), np.sin(np.radians(roll_deg))
    T[:3, :3] = T[:3, :3] @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    return render(localizer.map, CAMERA, invert_pose(T)).rgb_u8, T


@pytest.mark.parametrize("eye,target,roll", [
    ((0.9, 0.5, 0.6), (0.0, 0.0, 0.1), 0.0),
    ((-0.7, 0.6, 0.35), (0.1, -0.1, 0.05), 12.0),
    ((0.2, -0.8, 0.8), (0.0, 0.1, 0.0), -100.0),  # upside-down-ish: covered by the roll buckets
])
def test_views_between_the_virtual_ones_are_localized_accurately(tabletop_localizer, eye, target, roll):
    image, T_true = _query(tabletop_localizer, eye, target, roll)
    result = tabletop_localizer.localize(image, CAMERA)
    assert result.success, result.failure_reason
    dt, dr = pose_errors(result.T_world_camera, T_true)
    assert dt < 0.01 and dr < 0.5, (dt, dr)
    assert result.covariance.shape == (6, 6) and np.all(np.linalg.eigvalsh(result.covariance) > 0)
    assert set(result.timings_ms) >= {"features", "retrieval", "matching", "pnp", "refinement"}
    json.loads(result.to_json())  # serialisable as the CLI prints it


def test_a_prior_pose_narrows_the_search(tabletop_localizer):
    image, T_true = _query(tabletop_localizer, (0.8, -0.4, 0.5), (0.0, 0.0, 0.1))
    prior = T_true.copy()
    prior[:3, 3] += [0.03, -0.02, 0.01]
    searched = tabletop_localizer.localize(image, CAMERA)
    narrowed = tabletop_localizer.localize(image, CAMERA, prior=prior)
    # Without a prior the query is matched against retrieved virtual images; with a good one there
    # is no search at all: the refinement starts from the prior.
    assert searched.success and {"retrieval", "matching", "pnp"} <= set(searched.timings_ms)
    assert narrowed.success and narrowed.coarse_source == "prior"
    assert not {"retrieval", "matching", "pnp"} & set(narrowed.timings_ms), narrowed.timings_ms
    assert pose_errors(narrowed.T_world_camera, T_true)[0] < 0.01


@pytest.mark.parametrize("first_scale", [0.5, 1.0])
def test_refinement_from_a_prior_a_few_degrees_off_is_accurate_at_any_first_scale(tabletop_localizer, first_scale):
    image, T_true = _query(tabletop_localizer, (-0.8, 0.3, 0.55), (0.05, 0.0, 0.1), roll_deg=20.0)
    prior = T_true.copy()
    prior[:3, :3] = Rotation.from_rotvec(np.radians(3.0) * np.array([0.6, -0.8, 0.0])).as_matrix() @ T_true[:3, :3]
    prior[:3, 3] += [0.02, 0.01, -0.01]
    localizer = tabletop_localizer.variant(
        refinement=dataclasses.replace(tabletop_localizer.config.refinement, first_scale=first_scale))
    result = localizer.localize(image, CAMERA, prior=prior)
    assert result.success and result.coarse_source == "prior", result.failure_reason
    dt, dr = pose_errors(result.T_world_camera, T_true)
    assert dt < 0.005 and dr < 0.2, (dt, dr)


def test_a_half_resolution_round_brings_the_pose_close(tabletop_localizer):
    """The cheap first round must itself move the estimate towards the truth (not leave it to the next)."""
    image, T_true = _query(tabletop_localizer, (-0.8, 0.3, 0.55), (0.05, 0.0, 0.1), roll_deg=20.0)
    prior = T_true.copy()
    prior[:3, :3] = Rotation.from_rotvec(np.radians(3.0) * np.array([0.6, -0.8, 0.0])).as_matrix() @ T_true[:3, :3]
    half = CAMERA.scaled(0.5)
    small = cv2.resize(image, half.size, interpolation=cv2.INTER_AREA)
    estimate = tabletop_localizer._refine_round(small, tabletop_localizer.encoder.extract(small), half, prior)
    assert estimate.success
    assert pose_errors(estimate.T_world_camera, T_true)[1] < 0.5


def _spy_on_coarse_matching(localizer) -> list:
    """Record the (virtual image, query turn) pairs the localizer matches."""
    used, original = [], localizer._coarse_from_images

    def spy(turned, camera, images, turns, timer):
        used.extend(zip(images.tolist(), turns.tolist(), strict=True))
        return original(turned, camera, images, turns, timer)

    localizer._coarse_from_images = spy
    return used


def test_the_wide_search_finds_a_pose_among_images_beyond_the_first_shortlist(tabletop_localizer):
    image, T_true = _query(tabletop_localizer, (0.9, 0.5, 0.6), (0.0, 0.0, 0.1))
    localizer = tabletop_localizer.variant(retrieval=RetrievalConfig(shortlist=3, wide_shortlist=60))
    turned = localizer._turned_features(image, 0.0)
    first = set(zip(*[a.tolist() for a in localizer._retrieve(turned, 3)], strict=True))
    used = _spy_on_coarse_matching(localizer)
    hypotheses, _ = localizer._coarse(turned, CAMERA, "wide", None, _Timer(), landmarks=False)
    assert used and not set(used) & first
    assert hypotheses and pose_errors(hypotheses[0].T_world_camera, T_true)[1] < 5.0


def test_an_ordinary_view_is_solved_from_the_best_voted_images_alone(tabletop_localizer):
    image, _ = _query(tabletop_localizer, (0.9, 0.5, 0.6), (0.0, 0.0, 0.1))
    localizer = tabletop_localizer.variant()
    used = _spy_on_coarse_matching(localizer)
    turned = localizer._turned_features(image, 0.0)
    hypotheses, _ = localizer._coarse(turned, CAMERA, Search.GLOBAL, None, _Timer(), landmarks=False)
    assert hypotheses[0].num_inliers >= localizer.config.retrieval.confident_inliers
    assert len(used) == localizer.config.retrieval.views < localizer.config.retrieval.shortlist


def test_the_query_is_turned_by_the_quarter_turns_the_scene_does_not_encode(tabletop_localizer):
    image, _ = _query(tabletop_localizer, (0.9, 0.5, 0.6), (0.0, 0.0, 0.1))
    turned = tabletop_localizer._turned_features(image, 0.0)
    assert tabletop_localizer.config.scene.rolls == 1 and len(turned) == 4
    h, w = image.shape[:2]
    for features in turned:
        assert features.image_size == (w, h) and len(features) > 100
        assert np.all((features.keypoints >= 0) & (features.keypoints <= [w - 1, h - 1]))
    # The features of a square image turned back by k quarter turns, at query turn k, are those of
    # the image itself (the same pixels reach the encoder), at the positions that show the same pixel.
    square = np.ascontiguousarray(image[:, 80:560])
    ids = np.arange(square.shape[0] * square.shape[1]).reshape(square.shape[:2])
    own = tabletop_localizer._turned_features(square, 0.0)[0]
    for k in (1, 2, 3):
        back = tabletop_localizer._turned_features(np.ascontiguousarray(np.rot90(square, -k)), 0.0)[k]
        assert np.array_equal(back.descriptors, own.descriptors)
        moved_ids = np.rot90(ids, -k)
        at = np.rint(back.keypoints).astype(int)
        at_own = np.rint(own.keypoints).astype(int)
        assert np.mean(moved_ids[at[:, 1], at[:, 0]] == ids[at_own[:, 1], at_own[:, 0]]) > 0.99
    # Turned by 45 degrees first: keypoints near the turned image's own border are dropped.
    for features in tabletop_localizer._turned_features(image, 45.0):
        assert np.all((features.keypoints > 8) & (features.keypoints < [w - 9, h - 9]))


def test_a_rotation_invariant_encoder_is_not_turned(tabletop_localizer):
    image, _ = _query(tabletop_localizer, (0.9, 0.5, 0.6), (0.0, 0.0, 0.1))
    localizer = copy.copy(tabletop_localizer)
    localizer.encoder = make_encoder("sift")
    assert localizer.encoder.rotation_invariant and not tabletop_localizer.encoder.rotation_invariant
    assert len(localizer._turned_features(image, 0.0)) == 1


def test_refinement_settings_are_validated():
    with pytest.raises(ValueError, match="first_scale"):
        RefinementConfig(first_scale=0.1)
    with pytest.raises(ValueError, match="wide_shortlist"):
        RetrievalConfig(wide_shortlist=-1)
    with pytest.raises(ValueError, match="vote_keypoints"):
        RetrievalConfig(vote_keypoints=4)
    with pytest.raises(ValueError, match="unknown LocalizerConfig settings: shortlist"):
        LocalizerConfig.from_dict({"shortlist": 3})
    assert LocalizerConfig.from_dict({"retrieval": {"shortlist": 3}}).retrieval == RetrievalConfig(shortlist=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        LocalizerConfig().encoder = "sift"


def test_a_wrong_prior_costs_time_not_the_pose(tabletop_localizer):
    image, T_true = _query(tabletop_localizer, (-0.6, -0.7, 0.5), (0.0, 0.0, 0.1))
    wrong = look_at((0.9, 0.9, 0.4), (0.0, 0.0, 0.1), up=(0, 0, 1))  # the other side of the table
    result = tabletop_localizer.localize(image, CAMERA, prior=wrong)
    assert result.success and result.coarse_source in ("views", "landmarks")
    assert pose_errors(result.T_world_camera, T_true)[0] < 0.01


def test_images_that_do_not_show_the_map_give_no_pose(tabletop_localizer):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    other = make_scene("room", seed=2)
    elsewhere = render(other, CAMERA, invert_pose(look_at((1.0, 0.5, 1.2), (-2.0, -1.0, 1.0), (0, 0, 1)))).rgb_u8
    for image in (noise, elsewhere, np.zeros((480, 640, 3), np.uint8)):
        result = tabletop_localizer.localize(image, CAMERA)
        assert not result.success and result.T_world_camera is None and result.failure_reason


@pytest.mark.parametrize("image,camera,why", [
    (np.zeros((0, 0, 3), np.uint8), CAMERA, "bad image"),
    (np.zeros((1, 1, 3), np.uint8), CAMERA, "bad image"),
    (np.zeros((480, 640, 3), np.float64), CAMERA, "bad image"),
    (np.zeros((480, 640, 3), np.uint8), PinholeCamera(400, 400, 10, 10, 320, 240), "bad camera"),
    (np.zeros((480, 640, 3), np.uint8), (400, 400, 320, 240), "bad camera"),
])
def test_bad_input_gives_a_failed_result_not_an_exception(tabletop_localizer, image, camera, why):
    result = tabletop_localizer.localize(image, camera)
    assert not result.success and result.failure_reason.startswith(why)


def test_bad_prior_is_refused(tabletop_localizer):
    image, _ = _query(tabletop_localizer, (0.9, 0.5, 0.6), (0.0, 0.0, 0.1))
    result = tabletop_localizer.localize(image, CAMERA, prior=np.full((4, 4), np.nan))
    assert not result.success and "prior" in result.failure_reason


def test_a_tracked_stream_localizes_the_next_frame_from_the_last_trusted_pose(tabletop_localizer):
    from gsvisloc_ros.tracking import Tracker

    tracker = Tracker()
    first_image, T_first = _query(tabletop_localizer, (0.8, -0.4, 0.5), (0.0, 0.0, 0.1))
    next_image, T_next = _query(tabletop_localizer, (0.79, -0.38, 0.5), (0.0, 0.0, 0.1))
    first = tracker.localize(tabletop_localizer, first_image, CAMERA, 0.0, "cam")
    assert first.trusted and first.prior is None and not first.from_track and first.result.coarse_source != "prior"
    tracked = tracker.localize(tabletop_localizer, next_image, CAMERA, 0.1, "cam")
    assert tracked.trusted and tracked.from_track and tracked.result.coarse_source == "prior"
    assert np.array_equal(tracked.prior, first.result.T_world_camera)
    assert pose_errors(tracked.result.T_world_camera, T_next)[0] < 0.01


def test_a_variant_shares_the_encoded_scene_and_leaves_the_original_alone(tabletop_localizer):
    before = tabletop_localizer.config
    variant = tabletop_localizer.variant(refinement=RefinementConfig(iterations=0), min_coarse_inliers=10)
    assert variant.scene is tabletop_localizer.scene and variant.encoder is tabletop_localizer.encoder
    assert variant.config.refinement.iterations == 0 and tabletop_localizer.config is before
    with pytest.raises(ValueError, match="change the encoding"):
        tabletop_localizer.variant(encoder="sift")
    with pytest.raises(ValueError, match="unknown LocalizerConfig settings: colour"):
        tabletop_localizer.variant(colour="red")


def test_the_device_setting_chooses_the_render_backend(tabletop_localizer):
    from gsvisloc_ros.render import backend_for_device

    assert tabletop_localizer.config.device == "auto" and tabletop_localizer.backend == "auto"
    on_cpu = Localizer(tabletop_localizer.map, dataclasses.replace(tabletop_localizer.config, device="cpu"),
                       progress=False)  # the encoding comes from the cache
    assert on_cpu.backend == "cpu"
    assert [backend_for_device(d) for d in ("cpu", "cuda", "cuda:1", "auto")] == ["cpu", "cuda", "cuda", "auto"]
    with pytest.raises(ValueError, match="unknown device"):
        backend_for_device("tpu")


def test_large_images_are_reduced_to_the_working_size_with_their_intrinsics(tabletop_localizer):
    big_camera = CAMERA.scaled(2.0)  # 1280x960
    T = look_at((0.9, 0.5, 0.6), (0.0, 0.0, 0.1), up=(0, 0, 1))
    big = render(tabletop_localizer.map, big_camera, invert_pose(T)).rgb_u8
    image, camera = tabletop_localizer._working_image(big, big_camera)
    assert image.shape == (480, 640, 3) and camera.size == (640, 480)
    # The same world point lands on the same place of the picture at both sizes.
    point = np.array([[0.1, -0.05, 0.12, 1.0]])
    uv_big, _ = big_camera.project((invert_pose(T) @ point.T).T[:, :3])
    uv_small, _ = camera.project((invert_pose(T) @ point.T).T[:, :3])
    np.testing.assert_allclose((uv_big + 0.5) / 2.0 - 0.5, uv_small, atol=1e-9)
    result = tabletop_localizer.localize(big, big_camera)
    assert result.success, result.failure_reason
    dt, dr = pose_errors(result.T_world_camera, T)
    assert dt < 0.01 and dr < 0.5, (dt, dr)
    full = tabletop_localizer.variant(working_size=None)
    assert full._working_image(big, big_camera)[1] is big_camera  # None: every image at its own size
    with pytest.raises(ValueError, match="working_size"):
        LocalizerConfig(working_size=32)


def _fake_search(localizer, monkeypatch, hypotheses, refined):
    """Replace the coarse search and the refinement by fixed answers; the refinement calls are recorded."""
    calls = []

    def fake_refine(levels, T, landed=None):
        calls.append(T)
        return refined[id(T)]

    monkeypatch.setattr(localizer, "_coarse", lambda *a, **k: (hypotheses, "views"))
    monkeypatch.setattr(localizer, "_refine", fake_refine)
    return calls


def _estimate(T, inliers, matches, coverage):
    from gsvisloc_ros.pose import PoseEstimate, PoseGeometry

    mask = np.arange(matches) < inliers
    return PoseEstimate(True, T, mask, inliers, matches, 0.5, np.eye(6) * 1e-6, "test",
                        geometry=PoseGeometry(coverage, 0.001, 0.05))


def test_an_accepted_pose_is_challenged_by_the_next_distinct_hypothesis(tabletop_localizer, monkeypatch):
    """Repeated structure can refine into a consistent wrong pose: the next distinct hypothesis is
    refined too, and the accepted pose with the most inliers wins (the numbers of the shared room's
    curtain photo: the wrong pose 245 of 430 matches on 20 % of the image, the right one 842)."""
    image, T_true = _query(tabletop_localizer, (0.9, 0.5, 0.6), (0.0, 0.0, 0.1))
    T_wrong = T_true.copy()
    T_wrong[:3, 3] += [0.3, 0.0, 0.0]  # distinct: far beyond _same_pose
    hypotheses = [_estimate(T_wrong, 130, 150, 0.5), _estimate(T_true, 100, 120, 0.5),
                  _estimate(T_true @ np.diag([1, 1, 1, 1.0]), 90, 110, 0.5)]
    refined = {id(T_wrong): _estimate(T_wrong, 245, 430, 0.2), id(T_true): _estimate(T_true, 842, 900, 0.6)}
    calls = _fake_search(tabletop_localizer, monkeypatch, hypotheses, refined)
    result = tabletop_localizer.localize(image, CAMERA)
    assert result.success and result.num_inliers == 842
    np.testing.assert_allclose(result.T_world_camera, T_true)
    assert len(calls) == 2  # the wrong pose, then its challenger; the third hypothesis repeats the second


def test_a_pose_that_agrees_with_the_image_widely_is_not_challenged(tabletop_localizer, monkeypatch):
    image, T_true = _query(tabletop_localizer, (0.9, 0.5, 0.6), (0.0, 0.0, 0.1))
    T_other = T_true.copy()
    T_other[:3, 3] += [0.3, 0.0, 0.0]
    hypotheses = [_estimate(T_true, 130, 150, 0.5), _estimate(T_other, 100, 120, 0.5)]
    refined = {id(T_true): _estimate(T_true, 842, 900, 0.6), id(T_other): _estimate(T_other, 900, 950, 0.6)}
    calls = _fake_search(tabletop_localizer, monkeypatch, hypotheses, refined)
    result = tabletop_localizer.localize(image, CAMERA)
    assert result.success and result.num_inliers == 842 and len(calls) == 1  # confirmed: 94 % inliers
    calls.clear()
    challenging = tabletop_localizer.variant(confirmed_inlier_ratio=None)  # every accepted pose challenged
    result = challenging.localize(image, CAMERA)
    assert result.num_inliers == 900 and len(calls) == 2


def test_an_upright_localizer_runs_the_encoder_once_per_level_query(tmp_path):
    """With the map's up, views are encoded level and a level query is not turned: one encoder run
    for the query's features instead of four, and the pose is as accurate."""
    gmap = make_scene("tabletop", seed=7)
    upright = Localizer(gmap, LocalizerConfig(scene=dataclasses.replace(FAST, up=(0.0, 0.0, 1.0)),
                                              cache_dir=str(tmp_path)), progress=False)
    image, T_true = _query(upright, (0.9, 0.5, 0.6), (0.0, 0.0, 0.1), roll_deg=4.0)
    seen = []
    extract = upright.encoder.extract
    upright.encoder.extract = lambda picture: seen.append(picture.copy()) or extract(picture)
    result = upright.localize(image, CAMERA)
    assert result.success, result.failure_reason
    dt, dr = pose_errors(result.T_world_camera, T_true)
    assert dt < 0.01 and dr < 0.5, (dt, dr)
    assert any(np.array_equal(picture, image) for picture in seen)
    for k in (1, 2, 3):  # the query is never turned
        assert not any(np.array_equal(picture, np.rot90(image, k)) for picture in seen)


def test_a_tracked_pose_that_agrees_with_the_image_only_in_part_is_challenged_by_the_global_search(
        tabletop_localizer, monkeypatch):
    """A prior can hold the refinement in a wrong basin: an accepted pose refined from the prior
    with a low inlier ratio sends the search on, and the global search's stronger pose wins."""
    image, T_true = _query(tabletop_localizer, (0.9, 0.5, 0.6), (0.0, 0.0, 0.1))
    prior = T_true.copy()
    prior[:3, 3] += [0.1, 0.0, 0.0]
    T_basin = T_true.copy()
    T_basin[:3, 3] += [0.05, 0.0, 0.0]
    seen = []

    def fake_refine(levels, T, landed=None):
        seen.append(T)
        if np.allclose(T, prior):
            return _estimate(T_basin, 179, 299, 0.3)  # accepted, but on 60 % of its matches
        return _estimate(T_true, 352, 363, 0.4)

    monkeypatch.setattr(tabletop_localizer, "_refine", fake_refine)
    monkeypatch.setattr(tabletop_localizer, "_coarse",
                        lambda turned, camera, kind, *a, **k: ([_estimate(T_true, 100, 120, 0.4)], "views"))
    result = tabletop_localizer.localize(image, CAMERA, prior=prior)
    assert result.success and result.num_inliers == 352
    np.testing.assert_allclose(result.T_world_camera, T_true)
    assert len(seen) >= 2
