"""Query sets made from a map, and ``gsvisloc benchmark localize`` end to end on a small synthetic map."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from gsvisloc_ros.camera import default_camera, invert_pose
from gsvisloc_ros.cli import CommandError, build_parser
from gsvisloc_ros.cli.benchmark_localize import format_localize, run_localize
from gsvisloc_ros.evaluation import pose_error
from gsvisloc_ros.evaluation.perturbations import (
    adjust_brightness_contrast,
    adjust_gamma,
    gaussian_blur,
    gaussian_noise,
    jpeg,
    perturb,
)
from gsvisloc_ros.evaluation.plots import contact_sheet
from gsvisloc_ros.evaluation.queries import (
    Query,
    QueryConfig,
    generate_queries,
    nearest_view,
    too_close_to_a_view,
)
from gsvisloc_ros.io import save_ply
from gsvisloc_ros.localizer import LocalizerConfig
from gsvisloc_ros.render import render
from gsvisloc_ros.scene import SceneConfig, analyse_geometry, virtual_views
from gsvisloc_ros.synthetic import make_scene

UP = (0.0, 0.0, 1.0)  # the synthetic scenes' up
CAMERA = default_camera(320, 240)
# A small encoding: SIFT is rotation invariant, so one roll per view suffices and the encoding takes seconds.
SMALL = SceneConfig(
    view_directions=16, distance_factors=(0.7, 1.2), image_size=(384, 288), keypoints_per_view=512, rolls=1
)


@pytest.fixture(scope="module")
def tabletop():
    return make_scene("tabletop", seed=7)


@pytest.fixture(scope="module")
def views(tabletop):
    geometry = analyse_geometry(tabletop, SMALL)
    return geometry, np.asarray(virtual_views(tabletop, geometry, SMALL))


@pytest.fixture(scope="module")
def query_set(tabletop):
    return generate_queries(tabletop, 3, 3, camera=CAMERA, seed=5, scene_config=SMALL, up=UP)


def _same(a: Query, b: Query) -> bool:
    same_pose = (a.T_world_camera is None and b.T_world_camera is None) or np.array_equal(
        a.T_world_camera, b.T_world_camera
    )
    return a.name == b.name and same_pose and np.array_equal(a.image, b.image) and a.tags == b.tags


# ----------------------------------------------------------------------------- the query set


def test_a_query_set_is_determined_by_its_seed_and_a_smaller_one_is_its_prefix(tabletop, query_set):
    assert [q.name for q in query_set] == ["q000", "q001", "q002", "n000", "n001", "n002"]
    smaller = generate_queries(tabletop, 2, 1, camera=CAMERA, seed=5, scene_config=SMALL, up=UP)
    assert len(smaller) == 3
    assert all(_same(a, b) for a, b in zip(smaller[:2], query_set[:2], strict=True))
    assert _same(smaller[2], query_set[3])
    other = generate_queries(tabletop, 2, 1, camera=CAMERA, seed=6, scene_config=SMALL, up=UP)
    assert not np.allclose(other[0].T_world_camera, query_set[0].T_world_camera)
    assert not np.array_equal(other[2].image, query_set[3].image)


def test_positives_carry_their_true_pose_and_scale(tabletop, query_set, views):
    geometry, _ = views
    positives = [q for q in query_set if q.positive]
    assert [q.category for q in positives] == ["orbit", "orbit", "close"]  # every third is a close view
    for q in positives:
        assert q.image.shape == (240, 320, 3) and q.image.dtype == np.uint8 and q.camera == CAMERA
        assert q.scene_scale == pytest.approx(np.linalg.norm(q.T_world_camera[:3, 3] - geometry.centre))
        R = q.T_world_camera[:3, :3]
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-9) and np.linalg.det(R) == pytest.approx(1.0)
        lo, hi = QueryConfig().close_distance if q.category == "close" else QueryConfig().orbit_distance
        assert lo <= q.scene_scale / geometry.typical_distance <= hi
        assert q.info["alpha_coverage"] >= 0.3 and q.info["sift_keypoints"] >= QueryConfig().min_keypoints
        if not q.perturbations:  # a clean query is exactly the map rendered at its pose
            clean = render(tabletop, CAMERA, invert_pose(q.T_world_camera), near=0.01 * geometry.radius).rgb_u8
            assert np.array_equal(clean, q.image)
        json.dumps(q.to_dict(), allow_nan=False)


def test_query_poses_stay_away_from_the_virtual_viewpoints(query_set, views):
    geometry, poses = views
    separation = QueryConfig().view_separation
    for q in (q for q in query_set if q.positive):
        assert not too_close_to_a_view(q.T_world_camera, poses, geometry.typical_distance, separation)
        distance = np.linalg.norm(poses[:, :3, 3] - q.T_world_camera[:3, 3], axis=1) / geometry.typical_distance
        angle = np.degrees(np.arccos(np.clip(poses[:, :3, 2] @ q.T_world_camera[:3, 2], -1, 1)))
        assert np.all((distance >= separation[0]) | (angle >= separation[1]))
        assert not any(np.allclose(q.T_world_camera, T) for T in poses)
    # The check itself: a virtual viewpoint is too close to itself, and is its own nearest view.
    assert too_close_to_a_view(poses[3], poses, geometry.typical_distance, separation)
    assert nearest_view(poses[3], poses, geometry.typical_distance) == pytest.approx((0.0, 0.0), abs=1e-6)


def test_every_perturbation_changes_the_image_and_keeps_its_format(query_set):
    image = query_set[0].image
    rng = np.random.default_rng(0)
    changed = {
        "gamma": adjust_gamma(image, 1.3),
        "brightness_contrast": adjust_brightness_contrast(image, 15.0, 0.8),
        "blur": gaussian_blur(image, 1.0),
        "noise": gaussian_noise(image, 5.0, rng),
        "jpeg": jpeg(image, 60),
    }
    for name, out in changed.items():
        assert out.shape == image.shape and out.dtype == np.uint8, name
        assert np.abs(out.astype(int) - image).mean() > 0.5, name
    assert np.array_equal(adjust_gamma(image, 1.0), image)
    assert np.array_equal(adjust_brightness_contrast(image, 0.0, 1.0), image)
    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 0] = 200
    assert np.abs(jpeg(red, 80).astype(int) - red).max() < 8  # RGB order survives the OpenCV round trip
    for seed in range(5):
        out, applied = perturb(image, np.random.default_rng(seed))
        again, applied_again = perturb(image, np.random.default_rng(seed))
        assert applied and applied == applied_again and np.array_equal(out, again)
        assert np.abs(out.astype(int) - image).mean() > 0.1


def _sift_inliers(a: np.ndarray, b: np.ndarray) -> int:
    """Geometrically consistent SIFT matches between two images (ratio test + fundamental-matrix RANSAC)."""
    sift = cv2.SIFT_create()
    ka, da = sift.detectAndCompute(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), None)
    kb, db = sift.detectAndCompute(cv2.cvtColor(b, cv2.COLOR_RGB2GRAY), None)
    if da is None or db is None or len(ka) < 8 or len(kb) < 8:
        return 0
    pairs = [m for m, n in cv2.BFMatcher().knnMatch(da, db, k=2) if m.distance < 0.8 * n.distance]
    if len(pairs) < 8:
        return len(pairs)
    pa = np.float32([ka[m.queryIdx].pt for m in pairs])
    pb = np.float32([kb[m.trainIdx].pt for m in pairs])
    F, mask = cv2.findFundamentalMat(pa, pb, cv2.FM_RANSAC, 1.5, 0.999)
    return 0 if F is None or mask is None else int(np.count_nonzero(mask.ravel() == 1))  # no F: mask is garbage


def test_negatives_do_not_show_the_map(tabletop, query_set, views):
    geometry, _ = views
    negatives = [q for q in query_set if not q.positive]
    assert [q.tags[1] for q in negatives] == ["scene", "texture", "scene"]
    assert all(q.T_world_camera is None and q.scene_scale is None and q.category == "negative" for q in negatives)
    positive = query_set[0]
    # Control: the map seen from a slightly moved camera matches the positive query well...
    moved = positive.T_world_camera.copy()
    moved[:3, 3] += 0.03 * geometry.typical_distance * moved[:3, 0]
    nearby = render(tabletop, CAMERA, invert_pose(moved), near=0.01 * geometry.radius).rgb_u8
    assert _sift_inliers(nearby, positive.image) > 60
    # ...while no negative matches either.
    for q in negatives:
        assert q.image.shape == (240, 320, 3) and q.image.std() > 10  # not blank: something to (mis)match
        assert _sift_inliers(nearby, q.image) < 15, q.tags
        assert _sift_inliers(positive.image, q.image) < 15, q.tags


def test_contact_sheet(query_set):
    sheet = contact_sheet(query_set, columns=4, width=160, labels=[f"{q.name}\nline two" for q in query_set])
    assert sheet.dtype == np.uint8 and sheet.shape == (2 * (120 + 4), 4 * (160 + 4), 3)


# ----------------------------------------------------------------------------- the benchmark


def _args(*argv: str):
    return build_parser().parse_args(["benchmark", "localize", *argv])


@pytest.mark.parametrize(
    "argv,problem",
    [
        (["--encoders", "orb"], "--encoders"),
        (["--queries", "0", "--negatives", "0"], "--queries"),
        (["--up", "0,0"], "--up"),
        (["--views", "0"], "--views"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, argv, problem):
    with pytest.raises(CommandError, match=problem):
        run_localize(_args(str(tmp_path / "missing.ply"), *argv))


def test_device_cuda_is_refused_where_cuda_cannot_render(tmp_path, monkeypatch, capsys):
    from gsvisloc_ros import cli
    from gsvisloc_ros import render as render_module

    monkeypatch.setattr(render_module, "cuda_available", lambda: (False, "torch sees no CUDA device"))
    with pytest.raises(CommandError, match="--device cuda: CUDA is not usable here: torch sees no CUDA device"):
        run_localize(_args(str(tmp_path / "missing.ply"), "--device", "cuda"))
    assert cli.main(["benchmark", "localize", str(tmp_path / "missing.ply"), "--device", "cuda"]) == 2
    assert "CUDA is not usable here" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # not a device setting
        _args(str(tmp_path / "missing.ply"), "--device", "tpu")


def test_benchmark_end_to_end_on_a_synthetic_map(tmp_path, tabletop):
    path = tmp_path / "tabletop.ply"
    save_ply(tabletop, path)
    out = tmp_path / "bench"
    args = _args(
        str(path),
        "--queries",
        "3",
        "--negatives",
        "2",
        "--size",
        "320x240",
        "--encoders",
        "sift",
        "--seed",
        "5",
        "--up",
        "0,0,1",
        "--out",
        str(out),
        "--json",
    )
    config = LocalizerConfig(query_keypoints=1024, scene=SMALL, cache_dir=str(tmp_path / "cache"))
    results = run_localize(args, localizer_config=config, progress=False)
    results["machine"] = {"python": "3", "cpu_count": 2}  # added by the CLI runner

    assert [c["name"] for c in results["configurations"]] == ["sift", "sift coarse"]
    assert [c["refined"] for c in results["configurations"]] == [True, False]
    encoding = results["encodings"]["sift"]
    assert "virtual views" in encoding["encoding"] and not encoding["from_cache"]
    queries = {q["name"]: q for q in results["queries"]}
    assert len(queries) == 5 and sum(q["T_world_camera"] is None for q in queries.values()) == 2
    for c in results["configurations"]:
        s = c["summary"]
        assert (s["frames"], s["positives"], s["negatives"]) == (5, 3, 2)
        assert set(s["recall"]) >= {"1pct_1deg", "2pct_2deg", "5pct_5deg", "5cm_5deg", "10cm_5deg"}
        assert set(s["latency_ms"]) >= {"p50", "p90", "p99"} and s["latency_ms"]["p50"] > 0
        assert {"features", "retrieval", "matching"} <= set(c["stages_ms"])
        for row in c["per_query"]:  # errors recomputed from the reported pose and the query's truth
            q = queries[row["query"]]
            if row["success"] and q["T_world_camera"] is not None:
                t, r = pose_error(row["T_world_camera"], q["T_world_camera"])
                assert row["translation_error"] == pytest.approx(t) and row["rotation_error_deg"] == pytest.approx(r)
                assert row["translation_error_pct"] == pytest.approx(100 * t / q["scene_scale"])
    refined, coarse = results["configurations"]
    assert refined["summary"]["localized_fraction"] >= 2 / 3, refined["per_query"]
    assert refined["summary"]["median_translation_pct_scale"] < 1.0
    assert refined["summary"]["accepted_negatives"] == 0
    assert coarse["stages_ms"].get("refinement", {"median": 0.0})["median"] < 20.0  # coarse: no render rounds
    assert not results["notes"]

    assert results["device"] == "auto" and results["render_backend"] in ("cpu", "cuda")
    assert results["encodings"]["sift"]["device"] == "cpu"  # SIFT runs on the CPU whatever the device
    text = format_localize(results)
    assert f"device auto: renders on {results['render_backend']}" in text
    assert "sift coarse" in text and "R@2%,2deg" in text and "load average" in text
    for name in ("results.json", "error_cdf.png", "queries.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 1000
    saved = json.loads((out / "results.json").read_text())
    assert saved["configurations"][0]["summary"] == json.loads(json.dumps(refined["summary"]))
    json.dumps(results, allow_nan=False)  # what --json prints is strict JSON
