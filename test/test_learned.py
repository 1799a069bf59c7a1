"""The learned scene encoder and matcher (gsvisloc_ros.learned): shapes, determinism, training,
weights without pickle execution, and the localizer end to end with ``scene_encoder="learned"``."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import torch

from gsvisloc_ros.camera import default_camera, invert_pose, look_at, pose_errors
from gsvisloc_ros.learned import LearnedConfig
from gsvisloc_ros.learned.coarse import LearnedCoarseConfig
from gsvisloc_ros.learned.data import ground_truth, load_named_map
from gsvisloc_ros.learned.distillation import descriptor_loss, descriptor_recall, point_targets
from gsvisloc_ros.learned.gaussian_encoder import build_hierarchy, hierarchy_tensors
from gsvisloc_ros.learned.image_head import CELL_DIM, COLOUR_DIM, colour_cells
from gsvisloc_ros.learned.matching import dual_softmax, mutual_matches
from gsvisloc_ros.learned.model import FORMAT, LearnedMatcher, load_weights, packaged_weights, save_weights
from gsvisloc_ros.learned.train import train
from gsvisloc_ros.localizer import Localizer, LocalizerConfig
from gsvisloc_ros.render import render
from gsvisloc_ros.scene import SceneConfig, analyse_geometry

TINY = LearnedConfig(max_gaussians=3000, widths=(16, 32, 64), d_model=64, heads=4, layers=("self", "cross"))
MAP = "tabletop:7@0.5"
#: A cheap lifted scene to teach the point descriptors in tests (the real teacher renders ~1,000 views).
TEACHER = SceneConfig(view_directions=12, distance_factors=(0.8,), close_aims=0, keypoints_per_view=256,
                      landmarks_per_roll=3000)


@pytest.fixture(scope="module")
def tiny_map():
    gmap, up = load_named_map(MAP)
    geometry = analyse_geometry(gmap, SceneConfig())
    return gmap, up, geometry


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny matcher trained for 30 steps on 6 views of the tiny map (about 15 s)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run")
    history = train(out, [MAP], [], steps=30, views=6, batch=3, lr=1e-3, eval_every=30, save_every=15,
                    config=TINY, progress=False, rotate=False, teacher=TEACHER)
    weights = out / "tiny.pt"
    save_weights(history["model"], weights, provenance={"test": True})
    return out, history, weights


def test_hierarchy_and_encoders_have_the_right_shapes_and_are_deterministic(tiny_map):
    gmap, _, geometry = tiny_map
    a = build_hierarchy(gmap, TINY, geometry.centre, geometry.radius)
    b = build_hierarchy(gmap, TINY, geometry.centre, geometry.radius)
    assert len(a.levels[0]) == min(TINY.max_gaussians, int((gmap.opacities >= TINY.sample_opacity).sum()))
    assert len(a.levels[0]) > len(a.levels[1]) > len(a.levels[2]) > 10
    assert a.features.shape == (len(a.levels[0]), 11)
    for x, y in zip(a.levels, b.levels, strict=True):
        np.testing.assert_array_equal(x, y)
    torch.manual_seed(0)
    model = LearnedMatcher(TINY).eval()
    tensors = hierarchy_tensors(a)
    with torch.inference_mode():
        regions, points = model.encode_scene(tensors)
        again, points_again = model.encode_scene(hierarchy_tensors(b))
        cells = torch.randn(2, 30, 40, CELL_DIM)
        scores, confidence = model.match(regions, tensors["regions"], cells)
        scores2, _ = model.match(again, tensors["regions"], cells)
    assert regions.shape == (len(a.regions), TINY.d_model)
    assert points.shape == (len(a.levels[0]), 64)
    torch.testing.assert_close(points.norm(dim=1), torch.ones(len(points)))
    assert torch.equal(regions, again) and torch.equal(scores, scores2) and torch.equal(points, points_again)
    assert scores.shape == confidence.shape == (2, len(a.regions), 30 * 40)
    assert float(confidence.min()) >= 0 and float(confidence.max()) <= 1


def test_colour_cells_match_a_cell_by_cell_reference():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (37, 50, 3), dtype=np.uint8)  # sides not multiples of 8: padded
    cells = colour_cells(image)
    assert cells.shape == (5, 7, COLOUR_DIM)
    rgb = image.astype(np.float64) / 255
    rgb = (rgb - rgb.mean(axis=(0, 1))) / (rgb.std(axis=(0, 1)) + 0.05)
    padded = np.pad(rgb, ((0, 3), (0, 6), (0, 0)), mode="edge")
    for r in range(5):
        for c in range(7):
            block = padded[8 * r:8 * r + 8, 8 * c:8 * c + 8]
            quarters = [block[4 * i:4 * i + 4, 4 * j:4 * j + 4].mean(axis=(0, 1)) for i in (0, 1) for j in (0, 1)]
            np.testing.assert_allclose(cells[r, c], np.concatenate([block.mean(axis=(0, 1)), *quarters]), atol=1e-5)
    # darker, less contrast and brighter: nearly the same cells (the image's own normalisation)
    other = colour_cells((image.astype(np.float64) * 0.5 + 40).astype(np.uint8))
    assert np.corrcoef(other.ravel(), cells.ravel())[0, 1] > 0.99


def test_turning_the_map_turns_offsets_positions_and_rotations(tiny_map):
    from scipy.spatial.transform import Rotation

    from gsvisloc_ros.learned.gaussian_encoder import rotated_tensors

    gmap, _, geometry = tiny_map
    tensors = hierarchy_tensors(build_hierarchy(gmap, TINY, geometry.centre, geometry.radius))
    same = rotated_tensors(tensors, np.eye(3))
    assert torch.allclose(same["features"], tensors["features"]) and torch.equal(same["00"]["index"],
                                                                                  tensors["00"]["index"])
    turn = Rotation.from_rotvec([0.3, -1.2, 0.5])
    turned = rotated_tensors(tensors, turn.as_matrix())
    wxyz = tensors["features"][:, 4:8].double().numpy()
    expected = (turn * Rotation.from_quat(wxyz[:, [1, 2, 3, 0]])).as_matrix()
    got = Rotation.from_quat(turned["features"][:, [5, 6, 7, 4]].double().numpy()).as_matrix()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(turned["regions"].numpy(), tensors["regions"].numpy() @ turn.as_matrix().T, atol=1e-5)


def test_point_targets_are_the_mean_descriptor_of_the_nearest_landmarks():
    points = np.array([[0.0, 0, 0], [1, 0, 0], [5, 5, 5]])
    landmarks = np.array([[0.1, 0, 0], [-0.1, 0, 0], [0.9, 0, 0], [3, 3, 3]])
    descriptors = np.eye(4)[[0, 1, 2, 3]].astype(np.float32)
    targets, taught = point_targets(points, landmarks, descriptors, radius=0.5)
    assert list(taught) == [True, True, False]  # the landmark at (3, 3, 3) is too far from every point
    np.testing.assert_allclose(targets[0], [np.sqrt(0.5), np.sqrt(0.5), 0, 0], atol=1e-6)
    np.testing.assert_allclose(targets[1], [0, 0, 1, 0])
    # perfect predictions find every taught point; shuffled ones find (almost) none
    rng = np.random.default_rng(0)
    many = rng.normal(size=(500, 3))
    truth = torch.nn.functional.normalize(torch.randn(500, 64), dim=1)
    every = np.ones(500, bool)
    assert descriptor_recall(truth, truth, every, many, 1e-6) == 1.0
    assert descriptor_recall(truth[torch.randperm(500)], truth, every, many, 1e-6) < 0.05
    # the loss is lowest for the right predictions
    sample = torch.arange(500)
    assert descriptor_loss(truth, truth, sample) < descriptor_loss(truth.flip(0), truth, sample) - 1.0


def test_dual_softmax_finds_planted_matches():
    torch.manual_seed(0)
    patches = torch.nn.functional.normalize(torch.randn(1, 12, 16), dim=-1)
    regions = patches[:, [3, 7, 11]]
    scores, confidence = dual_softmax(regions * 4, patches * 4, 0.1)
    cell_uv = np.stack(np.meshgrid(np.arange(4) * 8 + 3.5, np.arange(3) * 8 + 3.5), -1).reshape(-1, 2)
    found = mutual_matches(scores[0], confidence[0], (3, 4), 0.3, cell_uv)
    assert list(found.region) == [0, 1, 2] and list(found.patch) == [3, 7, 11]
    assert np.all(np.abs(found.uv - cell_uv[[3, 7, 11]]) < 8)


def test_ground_truth_matches_lie_on_the_visible_surface(tiny_map):
    gmap, _, geometry = tiny_map
    hierarchy = build_hierarchy(gmap, TINY, geometry.centre, geometry.radius)
    camera = default_camera().scaled(0.5)
    T = look_at(geometry.centre + np.array([1.0, 0.8, 0.9]) * geometry.typical_distance / 1.6, geometry.centre,
                up=(0, 0, 1))
    result = render(gmap, camera, invert_pose(T))
    pairs = ground_truth(hierarchy.regions, T, camera, result.depth, result.alpha, 0.06 * geometry.radius)
    assert len(pairs) > 20
    assert pairs[:, 1].max() < 40 * 30 and len(np.unique(pairs[:, 0])) == len(pairs)
    # Regions behind the visible surface (the far side of the objects, under the table) are left out.
    assert len(ground_truth(hierarchy.regions, T, camera, result.depth, result.alpha, 1e9)) > 1.3 * len(pairs)


def test_training_lowers_the_loss_and_resumes_from_its_checkpoint(trained):
    out, history, _ = trained
    loss = np.asarray(history["loss"])
    assert len(loss) == 30 and np.all(np.isfinite(loss))
    assert loss[-5:].mean() < loss[:5].mean() - 0.5, loss  # dual-softmax NLL (chance ~15) + point descriptors
    assert (out / "checkpoint.pt").is_file() and (out / "curves.png").is_file()
    resumed = train(out, [MAP], [], steps=32, views=6, batch=3, lr=1e-3, eval_every=30, save_every=15,
                    config=TINY, progress=False, rotate=False, teacher=TEACHER)
    assert resumed["step"] == list(range(1, 33)) and resumed["loss"][:30] == history["loss"]


def test_weights_load_without_running_pickle_code(trained, tmp_path):
    _, history, weights = trained
    model = load_weights(weights)
    for name, value in history["model"].state_dict().items():
        assert torch.equal(model.state_dict()[name], value.cpu())
    assert model.config == TINY
    assert (weights.with_suffix(".json")).is_file()

    class Payload:  # a pickle that would run code when unpickled without weights_only
        def __reduce__(self):
            return (print, ("pickle code ran",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"format": FORMAT, "x": Payload()}))
    with pytest.raises(pickle.UnpicklingError):
        load_weights(evil)
    if packaged_weights().is_file():
        assert isinstance(load_weights(), LearnedMatcher)


def test_localizer_runs_end_to_end_with_the_learned_scene_encoder(trained, tiny_map, tmp_path):
    _, _, weights = trained
    gmap, _, geometry = tiny_map
    config = LocalizerConfig(scene_encoder="learned", learned_weights=str(weights), cache_dir=str(tmp_path),
                             device="cpu")
    localizer = Localizer(gmap, config, progress=False)
    assert not localizer.scene.from_cache and len(localizer.scene) > 10
    assert Localizer(gmap, config, progress=False).scene.from_cache  # cached by map, weights and settings
    points = Localizer(gmap, dataclasses.replace(config, learned_stage="points"), progress=False)
    camera = default_camera()
    T = look_at(geometry.centre + np.array([0.9, -0.7, 0.8]) * geometry.typical_distance / 1.4, geometry.centre,
                up=(0, 0, 1))
    image = render(gmap, camera, invert_pose(T)).rgb_u8
    for result in (localizer.localize(image, camera), points.localize(image, camera)):
        _check_result(result, T, geometry)
    noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    for negative in (localizer.localize(noise, camera), points.localize(noise, camera)):
        assert not negative.success and negative.T_world_camera is None


def _check_result(result, T, geometry):
    if result.success:  # a 30-step model rarely gets here; when it does, the pose must be right
        dt, dr = pose_errors(result.T_world_camera, T)
        assert dt < 0.05 * np.linalg.norm(T[:3, 3] - geometry.centre) and dr < 5.0, (dt, dr)
        assert result.coarse_source == "learned"
    else:  # a clear failure, never a pose
        assert result.T_world_camera is None and result.failure_reason
    assert "features" in result.timings_ms


def test_encode_command_reports_the_learned_encoding(trained, tiny_map, tmp_path, capsys):
    import json

    from gsvisloc_ros.cli import main
    from gsvisloc_ros.io import save_ply

    _, _, weights = trained
    path = tmp_path / "tiny.ply"
    save_ply(tiny_map[0], path)
    args = ["encode", str(path), "--scene-encoder", "learned", "--learned-weights", str(weights), "--json",
            "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["scene_encoder"] == "learned" and not report["from_cache"]
    assert report["points"] > report["regions"] > 10 and 0 < report["seconds"] < 60
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["from_cache"]


def test_the_scene_encoder_setting_is_checked():
    with pytest.raises(ValueError, match="scene_encoder"):
        LocalizerConfig(scene_encoder="magic")
    with pytest.raises(ValueError, match="encoder must be 'xfeat'"):
        LocalizerConfig(scene_encoder="learned", encoder="sift")
    with pytest.raises(ValueError, match="stage"):
        LearnedCoarseConfig(stage="magic")
    assert LocalizerConfig().scene_encoder == "lifted"
