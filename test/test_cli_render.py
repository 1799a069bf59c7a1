"""``gsvisloc render`` and ``gsvisloc benchmark render`` through the real dispatcher."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gsvisloc_ros import cli
from gsvisloc_ros import render as render_module
from gsvisloc_ros.camera import PinholeCamera, invert_pose, look_at, pose_to_xyz_quat
from gsvisloc_ros.gaussians import GaussianMap
from gsvisloc_ros.io import load_map, save_ply
from gsvisloc_ros.render import render

INTRINSICS, SIZE = "60,60,31.5,23.5", "64x48"
EYE, TARGET = np.array([0.3, -0.4, -2.5]), np.array([0.0, 0.0, 0.0])


@pytest.fixture(autouse=True)
def only_render_commands(monkeypatch):
    """Isolate from sibling sub-commands: the dispatcher imports every module in COMMANDS."""
    monkeypatch.setattr(cli, "COMMANDS", {k: cli.COMMANDS[k] for k in ("render", "benchmark")})


@pytest.fixture
def map_file(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    gmap = GaussianMap(
        means=rng.normal(scale=0.3, size=(n, 3)),
        quats=np.tile([1.0, 0.0, 0.0, 0.0], (n, 1)),
        scales=np.full((n, 3), 0.05),
        opacities=rng.uniform(0.3, 1.0, n),
        sh=rng.normal(scale=0.5, size=(n, 4, 3)),
    )
    path = tmp_path / "map.ply"
    save_ply(gmap, path)
    return path


def expected_render(map_file):
    camera = PinholeCamera.from_string(INTRINSICS, SIZE)
    return render(load_map(map_file), camera, invert_pose(look_at(EYE, TARGET)), backend="cpu")


def test_render_writes_the_image_and_depth(map_file, tmp_path, capsys):
    import cv2

    out, depth_out = tmp_path / "view.png", tmp_path / "depth.npy"
    look = " ".join(f"{v:g}" for v in (*EYE, *TARGET))
    code = cli.main(["render", str(map_file), "--intrinsics", INTRINSICS, "--size", SIZE, "--look-at", look,
                     "--out", str(out), "--depth-out", str(depth_out), "--backend", "cpu"])  # fmt: skip
    assert code == 0
    assert "rendered 64x48" in capsys.readouterr().out
    expected = expected_render(map_file)
    image = cv2.imread(str(out), cv2.IMREAD_COLOR)[:, :, ::-1]
    np.testing.assert_array_equal(image, expected.rgb_u8)
    depth = np.load(depth_out)
    assert depth.dtype == np.float32 and depth.shape == (48, 64)
    np.testing.assert_array_equal(depth, expected.depth)
    assert np.mean(expected.alpha > 0.5) > 0.1


def test_render_pose_is_camera_to_world(map_file, tmp_path):
    """--pose "TX TY TZ QX QY QZ QW" (T_world_camera) gives the same view as the equivalent --look-at."""
    import cv2

    pose = " ".join(f"{v:.12g}" for v in pose_to_xyz_quat(look_at(EYE, TARGET)))
    out = tmp_path / "pose.png"
    assert cli.main(["render", str(map_file), "--intrinsics", INTRINSICS, "--size", SIZE, "--pose", pose,
                     "--out", str(out)]) == 0  # fmt: skip
    np.testing.assert_array_equal(cv2.imread(str(out))[:, :, ::-1], expected_render(map_file).rgb_u8)


def test_render_errors_are_user_facing(map_file, tmp_path, capsys, monkeypatch):
    base = ["render", str(map_file), "--intrinsics", INTRINSICS, "--size", SIZE, "--look-at", "0 0 -2 0 0 0"]
    assert cli.main([*base, "--out", str(tmp_path / "missing" / "x.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main([*base, "--out", str(tmp_path / "x.png"), "--background", "2,0,0"]) == 2
    assert "--background" in capsys.readouterr().err
    monkeypatch.setattr(render_module, "cuda_available", lambda: (False, "torch sees no CUDA device"))
    assert cli.main([*base, "--out", str(tmp_path / "x.png"), "--backend", "cuda"]) == 2
    assert "'cuda' is not available" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --pose and --look-at are exclusive
        cli.main([*base, "--pose", "0 0 0 0 0 0 1", "--out", str(tmp_path / "x.png")])


def test_benchmark_render_compares_with_the_reference(map_file, capsys):
    code = cli.main(["benchmark", "render", str(map_file), "--size", "48x36", "--repeats", "3",
                     "--compare-reference", "--json"])  # fmt: skip
    assert code == 0
    results = json.loads(capsys.readouterr().out)
    assert results["benchmark"] == "render" and results["backend"] == "cpu" and results["size"] == [48, 36]
    assert 0 < results["min_ms"] <= results["median_ms"]
    assert results["alpha_coverage"] > 0.05
    assert results["reference"]["speedup_median"] > 0.0  # tiny scene: timing overheads dominate
    assert results["reference"]["psnr_8bit_db"] > 50.0


def test_benchmark_render_prints_text(map_file, capsys):
    assert cli.main(["benchmark", "render", str(map_file), "--size", "32x24", "--repeats", "2"]) == 0
    text = capsys.readouterr().out
    assert "median" in text and "min" in text and "reference" not in text
