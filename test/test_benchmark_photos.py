"""``gsvisloc benchmark photos``: real-photo protocol (held-out vs training photos, negatives,
upright) on a small synthetic photo set made by the project's renderer."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from gsvisloc_ros.camera import PinholeCamera, invert_pose, look_at
from gsvisloc_ros.cli import main
from gsvisloc_ros.evaluation.negatives import procedural_texture
from gsvisloc_ros.io import save_ply
from gsvisloc_ros.render import render
from gsvisloc_ros.synthetic import make_scene

CAMERA = PinholeCamera(260.0, 260.0, 159.5, 119.5, 320, 240)
SMALL = {"encoder": "sift", "scene": {"view_directions": 16, "distance_factors": [0.7, 1.2],
                                      "image_size": [384, 288], "keypoints_per_view": 512}}
HELD_OUT = ["0001.png", "0004.png"]


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    """A tabletop map, six level photos of it (transforms.json) with two held out in MAP.fit.json,
    and a folder of images of nothing in the map."""
    root = tmp_path_factory.mktemp("capture")
    gmap = make_scene("tabletop", seed=7, detail=0.6)
    save_ply(gmap, root / "table.ply")
    (root / "photos" / "images").mkdir(parents=True)
    gl = np.diag([1.0, -1.0, -1.0, 1.0])
    frames = []
    for i, a in enumerate(np.linspace(0.3, 5.5, 6)):
        T = look_at((1.3 * np.cos(a), 1.3 * np.sin(a), 0.9), (0.0, 0.0, 0.15), up=(0, 0, 1))
        rgb = render(gmap, CAMERA, invert_pose(T)).rgb_u8
        cv2.imwrite(str(root / "photos" / "images" / f"{i:04d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        frames.append({"file_path": f"images/{i:04d}.png", "transform_matrix": (T @ gl).tolist()})
    (root / "photos" / "transforms.json").write_text(json.dumps({
        "fl_x": CAMERA.fx, "fl_y": CAMERA.fy, "cx": CAMERA.cx + 0.5, "cy": CAMERA.cy + 0.5,
        "w": CAMERA.width, "h": CAMERA.height, "frames": frames}))  # fmt: skip
    (root / "table.fit.json").write_text(json.dumps({"test_images": HELD_OUT, "up": [0.0, 0.0, 1.0]}))
    (root / "elsewhere").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(root / "elsewhere" / f"{i}.png"), procedural_texture(rng, 320, 240)[..., ::-1])
    return root


def _run(capture, capsys, *extra) -> dict:
    argv = ["benchmark", "photos", str(capture / "table.ply"), str(capture / "photos"),
            "--negatives", str(capture / "elsewhere"), "--localizer-config", json.dumps(SMALL),
            "--cache-dir", str(capture / "cache"), "--json", *extra]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_photos_are_scored_held_out_apart_from_training_and_negatives_get_no_pose(capture, capsys):
    results = _run(capture, capsys, "--out", str(capture / "out"))
    assert results["fit_report"].endswith("table.fit.json")
    assert results["subsets"]["held-out"]["positives"] == 2 and results["subsets"]["training"]["positives"] == 4
    assert results["scale"]["name"] == "distance to the map centre" and results["layout"] == "object"
    summary = results["summary"]
    assert summary["positives"] == 6 and summary["negatives"] == 3
    assert summary["accepted_negatives"] == 0 and summary["wrong_accepted"] == 0
    assert summary["recall"]["5pct_5deg"] >= 5 / 6
    assert {r["category"] for r in results["per_query"]} == {"held-out", "training", "negative"}
    assert "features" in results["stages_ms"] and results["upright"] is None
    assert (capture / "out" / "error_cdf.png").stat().st_size > 0


def test_upright_takes_the_up_of_the_fit_report(capture, capsys):
    results = _run(capture, capsys, "--upright")
    assert results["upright"] == pytest.approx([0.0, 0.0, 1.0])
    assert results["summary"]["recall"]["5pct_5deg"] >= 5 / 6 and results["summary"]["wrong_accepted"] == 0


def test_the_learned_scene_encoder_is_benchmarked_too_and_gives_no_wrong_pose(capture, capsys):
    # The packaged weights never saw this capture: they may localize little, but never wrongly.
    results = _run(capture, capsys, "--localizer-config", json.dumps({**SMALL, "scene_encoder": "learned",
                                                                             "encoder": "xfeat"}))
    assert results["scene_encoder"] == "learned" and results["encoding"].startswith("learned: ")
    summary = results["summary"]
    assert summary["positives"] == 6 and summary["accepted_negatives"] == 0 and summary["wrong_accepted"] == 0


def test_bad_arguments_are_clear_errors(capture, capsys):
    assert main(["benchmark", "photos", str(capture / "table.ply"), str(capture / "nowhere")]) != 0
    assert main(["benchmark", "photos", str(capture / "table.ply"), str(capture / "photos"),
                 "--upright", "1,2"]) != 0
    assert main(["localize", str(capture / "table.ply"), str(capture / "photos" / "images" / "0000.png"),
                 "--intrinsics", "260,260,159.5,119.5", "--distortion", "0.1,0.2"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "--upright takes 3 comma-separated numbers" in err
    assert "--distortion takes 4 or 5 comma-separated numbers" in err
