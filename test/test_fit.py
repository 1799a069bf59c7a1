"""`gsvisloc fit`: a tiny synthetic photo set fitted from its own renders, outputs, repeatability, errors."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_photosets import write_colmap

from gsvisloc_ros.camera import PinholeCamera, invert_pose, look_at
from gsvisloc_ros.cli import main
from gsvisloc_ros.gaussians import GaussianMap
from gsvisloc_ros.io import load_map
from gsvisloc_ros.render import render

CAMERA = PinholeCamera(44.0, 44.0, 31.5, 23.5, 64, 48)


def ground_truth(seed: int = 0) -> GaussianMap:
    """A coloured 12 x 12 grid of round opaque Gaussians on the plane z = 0, a tile of a wall."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(np.linspace(-0.8, 0.8, 12), np.linspace(-0.6, 0.6, 12)), axis=-1).reshape(-1, 2)
    n = len(grid)
    means = np.concatenate([grid, np.zeros((n, 1))], axis=1)
    sh = np.zeros((n, 1, 3))
    sh[:, 0] = (rng.uniform(0.1, 0.9, (n, 3)) - 0.5) / 0.28209479177387814
    quats = np.tile([1.0, 0.0, 0.0, 0.0], (n, 1))
    scales = np.tile([0.07, 0.07, 0.01], (n, 1))
    return GaussianMap(means, quats, scales, np.full(n, 0.95), sh)


def make_photo_set(folder: Path, views: int = 10, seed: int = 0) -> tuple[GaussianMap, list[np.ndarray]]:
    """Renders of the ground truth on a ring, as a COLMAP text model with jittered SfM points."""
    gmap = ground_truth(seed)
    rng = np.random.default_rng(seed + 1)
    images, poses = [], []
    (folder / "images").mkdir(parents=True)
    for i in range(views):
        angle = 1.2 * (i / max(1, views - 1) - 0.5)  # an arc in front of the wall
        T_wc = look_at([2.2 * np.sin(angle), -0.3 + 0.2 * np.cos(5 * angle), -2.2 * np.cos(angle)], [0, 0, 0])
        rgb = render(gmap, CAMERA, invert_pose(T_wc), backend="cpu").rgb_u8
        cv2.imwrite(str(folder / "images" / f"{i:03d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        images.append((f"{i:03d}.png", T_wc, 1))
        poses.append(T_wc)
    # COLMAP's principal point is half a pixel further than this project's.
    camera = ("PINHOLE", CAMERA.width, CAMERA.height, [CAMERA.fx, CAMERA.fy, CAMERA.cx + 0.5, CAMERA.cy + 0.5])
    points = gmap.means + rng.normal(0.0, 0.03, gmap.means.shape)
    write_colmap(folder, {1: camera}, images, points, binary=False, colors=(gmap.colors * 255).round().astype(int))
    return gmap, poses


def test_fit_a_tiny_scene_from_its_renders(tmp_path, capsys):
    make_photo_set(tmp_path / "set")
    out = tmp_path / "map.ply"
    code = main(["fit", str(tmp_path / "set"), "--out", str(out), "--test-every", "5", "--iterations", "300",
                 "--max-gaussians", "2000", "--no-progress"])  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "map.fit.json").read_text())
    keys = ("train_psnr_db", "test_psnr_db", "seconds", "iterations", "gaussians", "test_images", "width", "height")
    assert all(key in report for key in keys)
    assert report["test_images"] == ["000.png", "005.png"] and (report["width"], report["height"]) == (64, 48)
    assert report["iterations"] == 300 and report["gaussians"] <= 2000
    assert report["train_psnr_db"] > 28.0, report["train_psnr_db"]  # 16 dB at the start
    assert report["test_psnr_db"] > 26.0, report["test_psnr_db"]
    sheet = cv2.imread(str(tmp_path / "map.fit.png"))
    assert sheet.shape == (2 * 48, 3 * 64, 3)
    gmap = load_map(out)  # the product reads what it wrote
    assert len(gmap) == report["gaussians"]
    assert "test" in capsys.readouterr().out


def test_densification_clones_small_splits_large_and_keeps_the_cap(tmp_path):
    import torch

    from gsvisloc_ros.fit.trainer import FitConfig, Trainer
    from gsvisloc_ros.io.photosets import load_photo_set

    make_photo_set(tmp_path / "set", views=3)
    trainer = Trainer(load_photo_set(tmp_path / "set"), FitConfig(test_every=0, max_gaussians=200))
    n = len(trainer)
    with torch.no_grad():
        trainer.params["log_scales"][:10] = np.log(0.5 * trainer.scale)  # large: split
        trainer.params["log_scales"][10:20] = np.log(0.005 * trainer.scale)  # small: cloned
        trainer.params["opacity_logits"][:] = 2.0  # nothing pruned
    trainer.grad_sum[:20] = 1.0  # 20 candidates: 10 large, 10 small
    trainer.grad_count[:] = 1.0
    large_means = trainer.params["means"][:10].detach().clone()
    trainer.densify(step=1000)
    assert len(trainer) == n + 20  # 10 clones added, 10 split into 2 each
    assert not any(torch.all(trainer.params["means"] == m, dim=1).any() for m in large_means)  # split ones moved
    assert torch.allclose(torch.exp(trainer.params["log_scales"][-20:]), torch.tensor(0.5 * trainer.scale / 1.6))
    trainer.grad_sum[:] = 1.0  # everything is a candidate: the cap decides
    trainer.grad_count[:] = 1.0
    trainer.densify(step=1100)
    assert len(trainer) == 200
    assert all(len(v) == 200 for v in trainer.adam.m.values())


def test_exposure_is_fitted_but_not_stored(tmp_path):
    make_photo_set(tmp_path / "set", views=4)
    out = tmp_path / "m.ply"
    assert main(["fit", str(tmp_path / "set"), "--out", str(out), "--iterations", "30", "--exposure",
                 "--test-every", "0", "--no-progress"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "m.fit.json").read_text())["exposure"] is True
    assert load_map(out).sh.shape[1:] == (1, 3)


def test_fit_is_repeatable_with_a_seed(tmp_path):
    make_photo_set(tmp_path / "set", views=4)
    args = ["fit", str(tmp_path / "set"), "--test-every", "0", "--iterations", "120", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "a.ply")]) == 0
    assert main(args + ["--out", str(tmp_path / "b.ply")]) == 0
    assert main(args + ["--out", str(tmp_path / "c.ply"), "--seed", "1"]) == 0
    a, b, c = ((tmp_path / f"{x}.ply").read_bytes() for x in "abc")
    assert a == b and a != c
    assert json.loads((tmp_path / "a.fit.json").read_text())["test_psnr_db"] is None
    assert not (tmp_path / "a.fit.png").exists()  # no test photos, no contact sheet


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("none", ["--out", "{tmp}/m.ply"], "does not exist"),
        ("good", ["--out", "{tmp}/m.txt"], "must name a .ply"),
        ("good", ["--out", "{tmp}/nowhere/m.ply"], "does not exist"),
        ("one", ["--out", "{tmp}/m.ply"], "at least 2"),
        ("resized", ["--out", "{tmp}/m.ply"], "but its camera says"),
        ("good", ["--out", "{tmp}/m.ply", "--iterations", "0"], "iterations must be"),
    ],
)
def test_bad_input_is_refused_with_one_line_and_nothing_written(tmp_path, capsys, setup, args, message):
    folder = tmp_path / "set"
    if setup != "none":
        make_photo_set(folder, views=1 if setup == "one" else 3)
    if setup == "resized":
        image = cv2.imread(str(folder / "images" / "001.png"))
        cv2.imwrite(str(folder / "images" / "001.png"), cv2.resize(image, (32, 24)))
    code = main(["fit", str(folder), "--no-progress"] + [a.format(tmp=tmp_path) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not list(tmp_path.glob("m.*")) and not list(tmp_path.glob("*.partial"))


def test_benchmark_fit_times_forward_and_backward(tmp_path, capsys):
    from gsvisloc_ros.io import save_ply

    save_ply(ground_truth(), tmp_path / "wall.ply")
    code = main(["benchmark", "fit", str(tmp_path / "wall.ply"), "--sizes", "64x48,32x24", "--counts", "100,144",
                 "--repeats", "1", "--json"])  # fmt: skip
    assert code == 0
    results = json.loads(capsys.readouterr().out)
    assert [(r["gaussians"], tuple(r["size"])) for r in results["rows"]] == [
        (100, (64, 48)), (100, (32, 24)), (144, (64, 48)), (144, (32, 24))]
    for row in results["rows"]:
        assert row["drawn"] > 0 and row["forward_ms"] > 0 and row["backward_ms"] > 0 and row["render_ms"] > 0
    assert main(["benchmark", "fit", str(tmp_path / "wall.ply"), "--counts", "1000"]) == 2
