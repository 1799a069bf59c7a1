"""The CUDA path on a real GPU (``pytest -m gpu``; ``make check-cuda`` runs these and a benchmark).

Every test here skips, with the reason, where :func:`~gsvisloc_ros.render.cuda_available` says CUDA
cannot render (no GPU, a CPU build of torch, gsplat missing or without its compiled extension), so
the suite stays green without a GPU. They compare the cuda backend with the cpu one within the
tolerance that gsplat's formation differences allow (:mod:`gsvisloc_ros.render.cuda`).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from gsvisloc_ros.camera import PinholeCamera, invert_pose, look_at, pose_errors
from gsvisloc_ros.gaussians import GaussianMap
from gsvisloc_ros.render import cuda_available, render
from gsvisloc_ros.scene import SceneConfig
from gsvisloc_ros.synthetic import make_scene

pytestmark = pytest.mark.gpu

CAMERA = PinholeCamera(400.0, 400.0, 319.5, 239.5, 640, 480)
FAST = SceneConfig(view_directions=24, distance_factors=(0.7, 1.2), image_size=(384, 288), keypoints_per_view=512)


@pytest.fixture(scope="module", autouse=True)
def cuda_path():
    available, reason = cuda_available()
    if not available:
        pytest.skip(f"the CUDA path is not usable here: {reason}")


def assert_like_cpu(cuda, cpu, what: str) -> None:
    """rgb and alpha within the documented tolerance (a small share of edge pixels may exceed it);
    depth within 1 % where both are opaque."""
    from gsvisloc_ros.render.cuda import CPU_TOLERANCE, CPU_TOLERANCE_OUTLIERS

    for name in ("rgb", "alpha"):
        diff = np.abs(getattr(cuda, name).astype(np.float64) - getattr(cpu, name))
        beyond = float(np.mean(diff > CPU_TOLERANCE))
        assert beyond <= CPU_TOLERANCE_OUTLIERS, f"{what} {name}: {beyond:.4%} of values beyond tolerance"
        assert np.mean(diff) < 0.25 * CPU_TOLERANCE, f"{what} {name}: mean difference {np.mean(diff):.5f}"
    opaque = (cuda.alpha > 0.5) & (cpu.alpha > 0.5)
    assert opaque.sum() >= 0.95 * max((cpu.alpha > 0.5).sum(), 1), f"{what}: the opaque areas differ"
    depth_error = np.abs(cuda.depth[opaque] - cpu.depth[opaque]) / cpu.depth[opaque]
    assert np.quantile(depth_error, 0.99) < 0.01, f"{what} depth: 99th percentile {np.quantile(depth_error, 0.99)}"


@pytest.mark.parametrize("scene", ["plant", "tarot"])
def test_cuda_renders_the_shared_maps_like_the_cpu(scene, shared_data):
    from gsvisloc_ros.io import load_map

    path = shared_data / "splats" / {"plant": "plant.ply", "tarot": "tarot_cards.ply"}[scene]
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    gmap = load_map(path)
    queries = json.loads((shared_data / "queries" / scene / "queries.json").read_text())["queries"]
    posed = [q for q in queries if q["T_world_camera"] is not None][:6]
    assert posed
    for q in posed:
        K = q["K"]
        camera = PinholeCamera(K["fx"], K["fy"], K["cx"], K["cy"], q["width"], q["height"])
        T = np.array(q["T_camera_world"])
        for background in ((0.0, 0.0, 0.0), (0.2, 0.4, 0.6)):
            cuda = render(gmap, camera, T, backend="cuda", background=background)
            cpu = render(gmap, camera, T, backend="cpu", background=background)
            assert cuda.backend == "cuda" and cuda.rgb.shape == cpu.rgb.shape
            assert cpu.alpha.mean() > 0.05
            assert_like_cpu(cuda, cpu, f"{scene} {q['file']}")


def test_cuda_renders_a_synthetic_scene_like_the_cpu():
    gmap = make_scene("tabletop", seed=7)
    T = invert_pose(look_at((0.9, 0.5, 0.6), (0.0, 0.0, 0.1), up=(0, 0, 1)))
    assert_like_cpu(render(gmap, CAMERA, T, backend="cuda"), render(gmap, CAMERA, T, backend="cpu"), "tabletop")


@pytest.mark.parametrize("n", [0, 3])
def test_an_empty_view_on_cuda_is_the_background(n):
    means = np.tile([0.0, 0.0, -2.0], (n, 1)) if n else np.zeros((0, 3))
    gmap = GaussianMap(means=means, quats=np.tile([1.0, 0, 0, 0], (n, 1)), scales=np.full((n, 3), 0.05),
                       opacities=np.full(n, 0.9), sh=np.zeros((n, 1, 3)))
    result = render(gmap, CAMERA, np.eye(4), backend="cuda", background=(0.25, 0.5, 1.0))
    assert result.backend == "cuda"
    np.testing.assert_array_equal(result.rgb, np.broadcast_to(np.float32([0.25, 0.5, 1.0]), result.rgb.shape))
    assert not result.alpha.any() and not result.depth.any()


def test_the_localizer_on_cuda_finds_the_pose_the_cpu_finds(tmp_path):
    from gsvisloc_ros.localizer import Localizer, LocalizerConfig

    gmap = make_scene("tabletop", seed=7)
    localizers = {device: Localizer(gmap, LocalizerConfig(device=device, scene=FAST, cache_dir=str(tmp_path)),
                                    progress=False) for device in ("cuda", "cpu")}
    assert localizers["cuda"].backend == "cuda" and localizers["cuda"].encoder.device.type == "cuda"
    assert len(set(tmp_path.glob("scene-*.npz"))) == 2  # one encoding per backend and device
    for eye, target in (((0.9, 0.5, 0.6), (0.0, 0.0, 0.1)), ((-0.7, 0.6, 0.35), (0.1, -0.1, 0.05))):
        T_true = look_at(eye, target, up=(0, 0, 1))
        image = render(gmap, CAMERA, invert_pose(T_true), backend="cpu").rgb_u8
        results = {device: loc.localize(image, CAMERA) for device, loc in localizers.items()}
        for device, result in results.items():
            assert result.success, (device, result.failure_reason)
            dt, dr = pose_errors(result.T_world_camera, T_true)
            assert dt < 0.01 and dr < 0.5, (device, dt, dr)
        dt, dr = pose_errors(results["cuda"].T_world_camera, results["cpu"].T_world_camera)
        assert dt < 0.005 and dr < 0.25, (dt, dr)


def test_benchmark_localize_on_cuda_prints_latency_per_stage(tmp_path):
    from gsvisloc_ros.cli import build_parser
    from gsvisloc_ros.cli.benchmark_localize import format_localize, run_localize
    from gsvisloc_ros.io import save_ply
    from gsvisloc_ros.localizer import LocalizerConfig

    path = tmp_path / "tabletop.ply"
    save_ply(make_scene("tabletop", seed=7), path)
    args: argparse.Namespace = build_parser().parse_args(
        ["benchmark", "localize", str(path), "--device", "cuda", "--queries", "4", "--negatives", "1",
         "--size", "320x240", "--encoders", "xfeat", "--no-refine-compare", "--up", "0,0,1"])
    config = LocalizerConfig(scene=FAST, cache_dir=str(tmp_path / "cache"))
    results = run_localize(args, localizer_config=config, progress=False)
    results["machine"] = {"python": "3", "cpu_count": 1}  # added by the CLI runner
    assert results["render_backend"] == "cuda" and results["encodings"]["xfeat"]["device"].startswith("cuda")
    (only,) = results["configurations"]
    assert {"features", "retrieval", "matching", "pnp"} <= set(only["stages_ms"])
    assert only["summary"]["localized_fraction"] >= 0.5
    text = format_localize(results)
    assert "device cuda: renders on cuda" in text and "median ms per stage" in text
