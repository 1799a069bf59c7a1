"""What a fit writes beside its map: ``MAP.fit.json`` (figures) and ``MAP.fit.png`` (contact sheet).

PSNRs are measured on the written map with the product's renderer (:func:`gsvisloc_ros.render.render`,
no exposure correction), against the photos at the fit's resolution.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..camera import invert_pose, level_up
from ..gaussians import GaussianMap
from ..render import render
from .losses import psnr
from .trainer import FitConfig, FitResult, View

SHEET_ROWS = 6  # test photos shown on the contact sheet at most


def report_paths(map_path: str | os.PathLike) -> tuple[Path, Path]:
    """(MAP.fit.json, MAP.fit.png) beside ``map_path``."""
    path = Path(map_path)
    stem = path.with_suffix("")
    return stem.with_name(stem.name + ".fit.json"), stem.with_name(stem.name + ".fit.png")


def evaluate(gmap: GaussianMap, views: list[View], background) -> tuple[list[float], list[np.ndarray]]:
    """(PSNR per view, render per view) of the map against the views' photos."""
    values, renders = [], []
    for view in views:
        rgb = render(gmap, view.camera, view.T_camera_world, backend="cpu", background=background).rgb
        values.append(psnr(rgb, view.image.numpy()))
        renders.append(rgb)
    return values, renders


def _mean_psnr(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def contact_sheet(views: list[View], renders: list[np.ndarray], values: list[float]) -> np.ndarray:
    """uint8 RGB rows of (photo | render | |difference| x 4), labelled with the name and PSNR."""
    import cv2

    rows = []
    for view, rgb, value in list(zip(views, renders, values, strict=True))[:SHEET_ROWS]:
        photo = view.image.numpy()
        diff = np.clip(4.0 * np.abs(photo - rgb), 0.0, 1.0)
        row = (np.concatenate([photo, rgb, diff], axis=1) * 255).round().astype(np.uint8)
        row = np.ascontiguousarray(row)
        label = f"{view.name}  {value:.2f} dB"  # columns: photo | render | 4 x |difference|
        cv2.putText(row, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(row, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 0), 1, cv2.LINE_AA)
        rows.append(row)
    return np.concatenate(rows, axis=0)


def _write_atomic(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def fit_report(result: FitResult, config: FitConfig, photo_set_path: str) -> tuple[dict, np.ndarray | None]:
    """(the fit.json dict, the contact sheet or None without test photos) of a finished fit."""
    train_values, _ = evaluate(result.gmap, result.train_views, config.background)
    test_values, test_renders = evaluate(result.gmap, result.test_views, config.background)
    camera = result.train_views[0].camera
    views = result.train_views + result.test_views
    try:  # the capture's up, for upright localization (``gsvisloc localize --upright``)
        up, roll = level_up([invert_pose(v.T_camera_world) for v in views])
        level = {"up": [round(float(u), 6) for u in up], "max_roll_deg": round(roll, 2)}
    except ValueError:
        level = {"up": None, "max_roll_deg": None}
    report = {
        "photo_set": str(photo_set_path),
        "train_psnr_db": _mean_psnr(train_values),
        "test_psnr_db": _mean_psnr(test_values),
        "seconds": round(result.seconds, 1),  # the optimisation alone
        "iterations": result.iterations,
        "gaussians": len(result.gmap),
        "sh_degree": result.gmap.sh_degree,
        "width": camera.width,
        "height": camera.height,
        "train_images": [v.name for v in result.train_views],
        "test_images": [v.name for v in result.test_views],
        "test_psnr_per_image_db": {v.name: round(x, 3) for v, x in zip(result.test_views, test_values, strict=True)},
        "seed": config.seed,
        "max_gaussians": config.max_gaussians,
        "exposure": config.exposure,
        **level,
        "cpu_load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "history": result.history,
    }
    sheet = contact_sheet(result.test_views, test_renders, test_values) if result.test_views else None
    return report, sheet


def write_report(map_path: str | os.PathLike, report: dict, sheet: np.ndarray | None) -> tuple[Path, Path | None]:
    """Write MAP.fit.json (and MAP.fit.png when there is a sheet), each renamed into place."""
    import cv2

    json_path, png_path = report_paths(map_path)
    if sheet is not None:
        ok, encoded = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        if not ok:
            raise ValueError("could not encode the contact sheet")
        _write_atomic(png_path, encoded.tobytes())
    _write_atomic(json_path, (json.dumps(report, indent=2) + "\n").encode())
    return json_path, png_path if sheet is not None else None
