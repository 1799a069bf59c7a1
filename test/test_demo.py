"""`gsvisloc demo` end to end, with fewer frames and a quick encoding of the default map."""

from __future__ import annotations

import json

import pytest

import gsvisloc_ros.synthetic.trajectories as trajectories
from gsvisloc_ros.cli import build_parser, main
from gsvisloc_ros.scene import SceneConfig

# The same quick encoding and shared cache as test_evaluate_bag.py (the demo itself uses the real one).
TEST_SCENE = SceneConfig(view_directions=16, distance_factors=(0.9,), image_size=(320, 240), keypoints_per_view=512,
                         rolls=1)


@pytest.fixture
def cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(trajectories, "DEFAULT_MAP_SCENE", TEST_SCENE)
    return str(tmp_path_factory.getbasetemp() / "gsvisloc-scene-cache")


def test_demo_defaults_are_what_make_demo_runs():
    args = build_parser().parse_args(["demo"])
    assert (args.out, args.frames, args.trajectory, args.size) == ("out/demo", 50, "orbit", "640x480")
    assert not args.direct and not args.through_node


def test_demo_runs_end_to_end(tmp_path, cache_dir, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--frames", "4", "--size", "320x240", "--rate", "0.1", "--out", str(out),
                 "--cache-dir", cache_dir, "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["frames"] == 4 and metrics["recall"]["2pct_2deg"] >= 0.75
    mode = metrics["context"]["mode"]
    assert ("through the gsvisloc ROS node over DDS" if mode == "node" else "straight into the localizer") in printed
    assert "recall (2 % scale, 2 deg)" in printed
    for name in ("report.md", "metrics.json", "trajectory_top.png", "errors_over_time.png", "error_cdf.png"):
        assert (out / name).is_file() and str(out / name) in printed
    assert (out / "bag" / "metadata.yaml").is_file()

    # A second run replaces its own bag.
    assert main(["demo", "--frames", "2", "--size", "320x240", "--out", str(out), "--cache-dir", cache_dir,
                 "--no-progress", "--direct"]) in (0, 1)
    assert "straight into the localizer (--direct was given)" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["frames"] == 2


def test_demo_will_not_delete_what_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "demo"
    (out / "bag").mkdir(parents=True)
    (out / "bag" / "precious.txt").write_text("keep me")
    assert main(["demo", "--frames", "2", "--out", str(out)]) == 2
    assert "not a bag" in capsys.readouterr().err
    assert (out / "bag" / "precious.txt").read_text() == "keep me"
