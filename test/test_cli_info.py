"""``gsvisloc info``: run through the real dispatcher, check what it prints."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gsvisloc_ros import cli
from gsvisloc_ros.gaussians import GaussianMap
from gsvisloc_ros.io import load_map, save_ply


@pytest.fixture(autouse=True)
def only_info(monkeypatch):
    """Isolate from sibling sub-commands: the dispatcher imports every module in COMMANDS."""
    monkeypatch.setattr(cli, "COMMANDS", {"info": cli.COMMANDS["info"]})


def known_map(n: int = 400, seed: int = 0) -> GaussianMap:
    rng = np.random.default_rng(seed)
    means = rng.uniform([-1.0, 2.0, 0.0], [3.0, 4.0, 0.5], size=(n, 3))
    return GaussianMap(
        means=means,
        quats=np.tile([1.0, 0.0, 0.0, 0.0], (n, 1)),
        scales=np.full((n, 3), 0.02),
        opacities=np.linspace(0.0, 1.0, n),
        sh=rng.normal(size=(n, 4, 3)),
    )


def run_info(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["info", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_info_json_reports_the_map(tmp_path, capsys):
    gmap = known_map()
    path = tmp_path / "known.ply"
    save_ply(gmap, path)
    code, out, _ = run_info(capsys, str(path), "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["count"] == 400
    assert summary["sh_degree"] == 1
    assert summary["source"] == str(path)
    np.testing.assert_allclose(summary["bounds"]["min"], gmap.means.min(0), atol=1e-6)
    np.testing.assert_allclose(summary["bounds"]["max"], gmap.means.max(0), atol=1e-6)
    np.testing.assert_allclose(summary["centre"], np.median(gmap.means, axis=0), atol=1e-6)
    assert np.all(np.array(summary["extent"]) <= gmap.means.max(0) - gmap.means.min(0) + 1e-9)
    histogram = summary["opacity"]["histogram"]
    assert len(histogram["counts"]) == 10 and sum(histogram["counts"]) == 400
    assert histogram["counts"] == [40] * 10  # linspace(0, 1, 400): 40 per tenth
    np.testing.assert_allclose(histogram["edges"], np.linspace(0, 1, 11))
    assert summary["content_hash"] == load_map(path).content_hash


def test_info_text_lists_the_same_facts(tmp_path, capsys):
    path = tmp_path / "known.ply"
    save_ply(known_map(n=123), path)
    code, out, _ = run_info(capsys, str(path), "--bins", "4")
    assert code == 0
    assert "Gaussians     123" in out
    assert "SH degree     1" in out
    assert load_map(path).content_hash in out
    assert out.count("\n  [") == 4  # four histogram rows


def test_info_on_shared_capture(plant_ply, capsys):
    code, out, _ = run_info(capsys, str(plant_ply), "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["count"] == len(load_map(plant_ply)) > 100_000
    assert summary["sh_degree"] == 0


@pytest.mark.parametrize("content", [None, b"ply\nformat ascii 1.0\nelement face 0\nend_header\n"])
def test_info_errors_exit_with_code_2_and_a_message(tmp_path, capsys, content):
    path = tmp_path / "broken.ply"
    if content is not None:
        path.write_bytes(content)
    code, out, err = run_info(capsys, str(path), "--json")
    assert code == 2
    assert out == ""
    assert err.startswith("gsvisloc info: error: ")
    assert str(path) in err
    assert "Traceback" not in err


def test_info_rejects_zero_bins(tmp_path, capsys):
    path = tmp_path / "known.ply"
    save_ply(known_map(n=5), path)
    code, _, err = run_info(capsys, str(path), "--bins", "0")
    assert code == 2 and "--bins" in err


def test_info_logs_where_the_localizer_would_run(tmp_path, capsys, caplog, monkeypatch):
    from gsvisloc_ros import render as render_module

    monkeypatch.setattr(render_module, "cuda_available", lambda: (False, "torch sees no CUDA device"))
    path = tmp_path / "known.ply"
    save_ply(known_map(), path)
    with caplog.at_level("INFO", logger="gsvisloc_ros.cli.info"):
        code, _, _ = run_info(capsys, str(path))
    assert code == 0
    assert "device auto: encoder and matcher on " in caplog.text
    assert "renders on cpu (auto: CUDA not used: torch sees no CUDA device)" in caplog.text
