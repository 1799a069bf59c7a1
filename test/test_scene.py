"""Scene encoding: keypoint roll bookkeeping, lifting, fusing, retrieval and the on-disk cache."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from gsvisloc_ros.camera import PinholeCamera, invert_pose, look_at
from gsvisloc_ros.features import make_encoder
from gsvisloc_ros.render import render
from gsvisloc_ros.retrieval import InvertedFile, nearest_words, train_vocabulary
from gsvisloc_ros.scene import (
    EncodedScene,
    SceneConfig,
    analyse_geometry,
    cache_path,
    fuse_landmarks,
    lift_keypoints,
    load_or_encode,
    rotate_keypoints_back,
    virtual_views,
)
from gsvisloc_ros.synthetic import make_scene

SMALL = SceneConfig(view_directions=8, distance_factors=(1.0,), image_size=(256, 192), keypoints_per_view=256,
                    landmarks_per_roll=2000, vocabulary_words=16)


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
def test_rotated_keypoints_map_back_to_the_same_pixel(turns):
    rng = np.random.default_rng(turns)
    image = rng.integers(0, 255, (6, 9), dtype=np.uint8)
    rotated = np.rot90(image, turns)
    rows, cols = np.meshgrid(np.arange(rotated.shape[0]), np.arange(rotated.shape[1]), indexing="ij")
    uv_rotated = np.stack([cols.ravel(), rows.ravel()], axis=1).astype(float)
    uv = rotate_keypoints_back(uv_rotated, turns, width=9, height=6).astype(int)
    assert np.array_equal(image[uv[:, 1], uv[:, 0]], rotated[rows.ravel(), cols.ravel()])


def test_lifted_keypoints_lie_on_the_rendered_surface():
    # A flat textured floor at z = 0 seen from above: every lifted point must have z ~ 0.
    gmap = make_scene("room", seed=3, detail=0.5)
    floor = gmap.subset(np.abs(gmap.means[:, 2]) < 1e-3)
    camera = PinholeCamera(200, 200, 127.5, 95.5, 256, 192)
    T = look_at([0.2, 0.1, 1.5], [0.0, 0.0, 0.0], up=(0, 1, 0))
    result = render(floor, camera, invert_pose(T))
    uv = np.stack(np.meshgrid(np.arange(20.0, 230, 17), np.arange(20.0, 170, 13)), axis=-1).reshape(-1, 2)
    points, keep = lift_keypoints(uv, result.depth, result.alpha, camera, T, 0.95, 0.05)
    assert keep.mean() > 0.9
    assert np.max(np.abs(points[:, 2])) < 0.01


def test_fusing_hits_the_target_and_keeps_unit_descriptors():
    rng = np.random.default_rng(0)
    centres = rng.uniform(-1, 1, (500, 3))
    points = np.repeat(centres, 4, axis=0) + rng.normal(0, 1e-4, (2000, 3))
    descriptors = rng.normal(size=(2000, 8)).astype(np.float32)
    descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
    fused_points, fused_desc, counts, size = fuse_landmarks(points, descriptors, target=500)
    assert 450 <= len(fused_points) <= 500
    assert counts.sum() == 2000
    assert np.allclose(np.linalg.norm(fused_desc, axis=1), 1.0, atol=1e-5)
    assert size > 0


def test_votes_find_the_image_a_part_of_the_query_comes_from():
    rng = np.random.default_rng(1)
    images = [rng.normal(size=(300, 16)).astype(np.float32) for _ in range(20)]
    images = [d / np.linalg.norm(d, axis=1, keepdims=True) for d in images]
    descriptors = np.concatenate(images)
    vocabulary = train_vocabulary(descriptors, words=8)
    starts = np.arange(21) * 300
    inverted = InvertedFile(descriptors, starts, vocabulary)
    filed = InvertedFile(descriptors, starts, vocabulary, words=nearest_words(descriptors, vocabulary))

    def part_of(i: int, n: int) -> np.ndarray:
        noisy = images[i][:n] + rng.normal(0, 0.05, (n, 16)).astype(np.float32)
        return noisy / np.linalg.norm(noisy, axis=1, keepdims=True)

    # Three sets at once (like the turns of a query): a large part of image 0, a small part of
    # image 7 (a close-up shares little with any one image) and descriptors of nothing stored.
    outside = rng.normal(size=(50, 16)).astype(np.float32)
    queries = [part_of(0, 200), part_of(7, 40), outside / np.linalg.norm(outside, axis=1, keepdims=True)]
    votes = inverted.votes(queries, min_similarity=0.9)
    assert votes.shape == (20, 3)
    assert np.argmax(votes[:, 0]) == 0 and votes[0, 0] > 150
    assert np.argmax(votes[:, 1]) == 7 and votes[7, 1] > 25
    assert votes[:, 2].sum() == 0  # random directions in 16-d are never within cosine 0.9
    assert np.array_equal(filed.votes(queries, 0.9), votes)
    assert inverted.votes([np.zeros((0, 16), np.float32)], 0.9).sum() == 0


def test_virtual_views_stay_outside_objects_and_inside_rooms():
    config = SceneConfig(view_directions=12)
    room = make_scene("room", detail=0.5)  # walls at x = +-2, y = +-1.5, z = 0 and 2.5
    assert analyse_geometry(room, config).layout == "inside_out"
    views = np.array([T[:3, 3] for T in virtual_views(room, analyse_geometry(room, config), config)])
    assert len(views) >= 12
    assert np.all(np.abs(views[:, 0]) < 2) and np.all(np.abs(views[:, 1]) < 1.5)
    assert np.all((views[:, 2] > 0) & (views[:, 2] < 2.5))
    table = make_scene("tabletop", detail=0.5)  # objects within 0.6 m of the centre, backdrop at 2 m
    geometry = analyse_geometry(table, config)
    assert geometry.layout == "object"
    views = np.array([T[:3, 3] for T in virtual_views(table, geometry, config)])
    distance = np.linalg.norm(views - geometry.centre, axis=1)
    assert np.all(distance < 2.0) and np.median(distance) > 0.5


def test_close_cameras_also_look_off_the_centre():
    table = make_scene("tabletop", detail=0.5)
    config = SceneConfig(view_directions=10, distance_factors=(0.6, 1.3), close_aims=3, aim_tilt_deg=30.0)
    geometry = analyse_geometry(table, config)
    views = np.asarray(virtual_views(table, geometry, config))
    plain = np.asarray(virtual_views(table, geometry, replace(config, close_aims=0)))
    assert len(plain) == 20 and 20 < len(views) <= 20 + 3 * 10
    centre_looking = {tuple(np.round(T[:3, 3], 9)): T for T in plain}
    aimed = [T for T in views if not any(np.allclose(T, P) for P in plain)]
    assert len(aimed) == len(views) - len(plain)
    for T in aimed:  # from the position of a close centre-looking view, turned 30 degrees off its axis
        origin = centre_looking[tuple(np.round(T[:3, 3], 9))]
        assert np.linalg.norm(origin[:3, 3] - geometry.centre) < geometry.typical_distance
        assert np.degrees(np.arccos(np.clip(T[:3, 2] @ origin[:3, 2], -1, 1))) == pytest.approx(30.0, abs=1e-6)
    with pytest.raises(ValueError, match="close_aims"):
        SceneConfig(close_aims=-1)


@pytest.fixture(scope="module")
def encoder():
    return make_encoder("xfeat", "cpu", top_k=SMALL.keypoints_per_view)


def test_encoding_is_cached_and_a_corrupt_cache_is_rebuilt(tmp_path, encoder):
    gmap = make_scene("tabletop", seed=1, detail=0.5)
    scene = load_or_encode(gmap, encoder, SMALL, tmp_path, progress=False, backend="cpu")
    path = cache_path(gmap, encoder, SMALL, tmp_path, "cpu")
    assert path.is_file() and len(scene) > 500
    # Landmarks sit on the map's surfaces: each is close to some Gaussian centre.
    from scipy.spatial import cKDTree

    distance, _ = cKDTree(gmap.means).query(scene.points)
    assert np.median(distance) < 0.01
    again = load_or_encode(gmap, encoder, SMALL, tmp_path, progress=False, backend="cpu")
    assert np.array_equal(again.points, scene.points) and again.stats == scene.stats
    assert again.from_cache and not scene.from_cache
    path.write_bytes(b"not an npz file")
    rebuilt = load_or_encode(gmap, encoder, SMALL, tmp_path, progress=False, backend="cpu")
    assert len(rebuilt) == len(scene) and not rebuilt.from_cache
    assert isinstance(EncodedScene.load(path), EncodedScene)


def test_the_cache_key_changes_with_the_render_backend_and_the_device_kind(tmp_path, encoder):
    """Renders and descriptors differ slightly between backends and devices: never share a cache."""
    from types import SimpleNamespace

    gmap = make_scene("tabletop", seed=1, detail=0.3)
    on_cuda = SimpleNamespace(name=encoder.name, device="cuda:0")  # only its name and device are read
    paths = {(backend, device): cache_path(gmap, e, SMALL, tmp_path, backend)
             for backend in ("cpu", "reference") for device, e in (("cpu", encoder), ("cuda", on_cuda))}
    assert len(set(paths.values())) == 4
    keys = {SMALL.key("xfeat", b, d) for b in ("cpu", "cuda", "reference") for d in ("cpu", "cuda")}
    assert len(keys) == 6
    assert SMALL.key("xfeat", "cpu", "cpu") == SMALL.key("xfeat", "cpu", "cpu")
    with pytest.raises(ValueError, match="concrete backend"):
        SMALL.key("xfeat", "auto", "cpu")


def test_a_map_without_opaque_gaussians_is_refused(encoder, tmp_path):
    gmap = make_scene("tabletop", seed=1, detail=0.3)
    gmap.opacities[:] = 0.01
    with pytest.raises(ValueError, match="opacity"):
        load_or_encode(gmap, encoder, SMALL, tmp_path, progress=False)


def _with_blob(gmap, centre, radius: float):
    """``gmap`` with an opaque ball of Gaussians (a piece of furniture) around ``centre``."""
    from gsvisloc_ros.gaussians import GaussianMap
    from gsvisloc_ros.scene import fibonacci_directions

    shell = np.asarray(centre) + radius * fibonacci_directions(2000)
    n = len(shell)
    blob = GaussianMap(shell, np.tile([1.0, 0, 0, 0], (n, 1)), np.full((n, 3), 1.5 * radius * np.sqrt(4 / n)),
                       np.full(n, 0.99), np.full((n, gmap.sh.shape[1], 3), 0.0))
    return GaussianMap(*(np.concatenate([getattr(gmap, a), getattr(blob, a)])
                         for a in ("means", "quats", "scales", "opacities", "sh")))


def test_inside_out_views_stand_in_free_space_and_look_at_surfaces_from_a_distance():
    config = SceneConfig(view_directions=24, layout="inside_out")
    room = make_scene("room", detail=0.5)
    geometry = analyse_geometry(room, config)
    free = virtual_views(room, geometry, config)
    assert any(np.allclose(T[:3, 3], geometry.centre) for T in free)
    # A wardrobe around the centre: no camera stands inside it, the others still do.
    furnished = _with_blob(room, geometry.centre, 0.15)
    views = virtual_views(furnished, geometry, config)
    positions = np.array([T[:3, 3] for T in views])
    assert len(views) > 0.5 * len(free)
    assert np.all(np.linalg.norm(positions - geometry.centre, axis=1) > 0.15)
    # No view looks into a surface closer than the clearance.
    probe = PinholeCamera(16.0, 16.0, 15.5, 15.5, 32, 32)
    for T in views[:: max(1, len(views) // 20)]:
        result = render(furnished, probe, invert_pose(T), near=0.01 * geometry.radius)
        assert np.percentile(result.depth[result.alpha > 0.5], 10) >= config.min_clearance * geometry.radius


def test_upright_views_are_level_and_not_steep():
    up = np.array([0.0, 0.0, 1.0])
    config = SceneConfig(view_directions=40, up=tuple(up), max_pitch_deg=50)
    for kind in ("room", "tabletop"):
        gmap = make_scene(kind, detail=0.4)
        views = virtual_views(gmap, analyse_geometry(gmap, config), config)
        assert views
        for T in views:
            assert abs(T[:3, 0] @ up) < 1e-6  # the image x axis is horizontal: no roll
            assert T[:3, 1] @ up < 0  # image-down points down
            assert np.degrees(np.arcsin(abs(T[:3, 2] @ up))) <= 50 + 1e-6
    with pytest.raises(ValueError, match="rolls must be 1"):
        SceneConfig(up=(0, 0, 1), rolls=4)
    with pytest.raises(ValueError, match="up must be"):
        SceneConfig(up=(0, 0, 0))
