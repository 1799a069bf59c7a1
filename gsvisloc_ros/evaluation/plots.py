"""Figures of an evaluation (matplotlib, Agg backend: no display needed; contact sheets with OpenCV).

* ``trajectory_top.png``: top view (x, y in the map frame) of the true camera path and the
  estimates, over the map's Gaussians; estimates within the (2 % of scale, 2 deg) threshold in
  green, other accepted ones in orange, frames without a pose as red crosses on the true path.
* ``errors_over_time.png``: translation and rotation error per frame (log scale) with the
  thresholds; frames without a pose marked along the bottom.
* ``error_cdf.png``: cumulative distribution of the translation error (% of the scene scale)
  and of the rotation error, failures counted as infinite errors (:func:`plot_error_cdfs`, which
  the localize benchmark draws its curves with too).
* :func:`contact_sheet`: a grid of captioned query thumbnails.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from gsvisloc_ros.evaluation.metrics import as_error_scale, error_cdf, pose_error

GOOD, WRONG, MISS, TRUTH = "#2ca02c", "#ff7f0e", "#d62728", "#1f77b4"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _no_ground_truth(ax) -> None:
    ax.text(0.5, 0.5, "no ground truth: errors cannot be measured", transform=ax.transAxes, ha="center",
            va="center", color="0.3")


def frame_errors(outcomes, centre) -> dict:
    """Per-frame arrays of the frames with ground truth: time, errors (inf when not localized), scale
    (``centre``: an :class:`~gsvisloc_ros.evaluation.metrics.ErrorScale` or the map centre)."""
    error_scale = as_error_scale(centre)
    rows = [o for o in outcomes if o.usable and o.T_gt is not None]
    t0 = min((o.stamp_ns for o in outcomes), default=0)
    time_s = np.array([(o.stamp_ns - t0) * 1e-9 for o in rows])
    err = np.array([pose_error(o.T_est, o.T_gt) if o.success and o.T_est is not None else (np.inf, np.inf)
                    for o in rows]).reshape(-1, 2)
    scale = np.array([error_scale.of(o.T_gt) for o in rows])
    return {"rows": rows, "time": time_s, "translation": err[:, 0], "rotation": err[:, 1], "scale": scale}


def plot_trajectory(outcomes, centre, path: Path, gmap=None, threshold=(0.02, 2.0)) -> Path:
    plt = _pyplot()
    e = frame_errors(outcomes, centre)
    fig, ax = plt.subplots(figsize=(7, 6.5), dpi=110)
    if gmap is not None and len(gmap):
        rng = np.random.default_rng(0)
        pick = rng.choice(len(gmap), size=min(len(gmap), 20000), replace=False)
        colours = np.clip(gmap.colors[pick] if hasattr(gmap, "colors") else np.full((len(pick), 3), 0.6), 0, 1)
        ax.scatter(gmap.means[pick, 0], gmap.means[pick, 1], s=2, c=colours, alpha=0.45, linewidths=0,
                   rasterized=True, label="map (Gaussian centres)")
    gt = np.array([o.T_gt[:3, 3] for o in e["rows"]]).reshape(-1, 3)
    if len(gt):
        ax.plot(gt[:, 0], gt[:, 1], "-", color=TRUTH, lw=1.5, label="ground truth (o: start)")
        ax.plot(gt[:1, 0], gt[:1, 1], "o", color=TRUTH, ms=6)
        # Viewing directions (optical z axes) of some true cameras.
        every = max(1, len(gt) // 16)
        views = np.array([o.T_gt[:3, 2] for o in e["rows"]])[::every]
        length = 0.06 * max(float(np.ptp(gt[:, 0])), float(np.ptp(gt[:, 1])), 1e-3)
        ax.quiver(gt[::every, 0], gt[::every, 1], views[:, 0], views[:, 1], color=TRUTH, alpha=0.6,
                  angles="xy", scale_units="xy", scale=1.0 / length, width=0.004)
    ok = np.isfinite(e["translation"])
    good = ok & (e["translation"] < threshold[0] * e["scale"]) & (e["rotation"] < threshold[1])
    est = np.array([o.T_est[:3, 3] if o.T_est is not None else [np.nan] * 3 for o in e["rows"]]).reshape(-1, 3)
    label = f"estimate within {threshold[0] * 100:g} % / {threshold[1]:g} deg"
    ax.plot(est[good, 0], est[good, 1], ".", color=GOOD, ms=7, label=label)
    if np.any(ok & ~good):
        ax.plot(est[ok & ~good, 0], est[ok & ~good, 1], ".", color=WRONG, ms=8, label="estimate outside it")
    if np.any(~ok):
        ax.plot(gt[~ok, 0], gt[~ok, 1], "x", color=MISS, ms=7, label="not localized (true position)")
    # Estimates of frames without ground truth still show where the localizer put them.
    extra = np.array([o.T_est[:3, 3] for o in outcomes if o.success and o.T_est is not None and o.T_gt is None])
    if len(extra):
        ax.plot(extra[:, 0], extra[:, 1], ".", color="0.3", ms=5, label="estimate (no ground truth)")
    points = np.vstack([p for p in (gt, est[ok], extra.reshape(-1, 3)) if len(p)] or [np.zeros((1, 3))])
    lo, hi = points[:, :2].min(0), points[:, :2].max(0)
    pad = 0.15 * max(float(np.max(hi - lo)), 1e-3)
    ax.set_xlim(lo[0] - pad, hi[0] + pad)
    ax.set_ylim(lo[1] - pad, hi[1] + pad)
    ax.set_aspect("equal")
    ax.set_xlabel("x (map frame)")
    ax.set_ylabel("y (map frame)")
    ax.set_title("Camera trajectory, top view")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.85, markerscale=1.5)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_errors_over_time(outcomes, centre, path: Path, threshold=(0.02, 2.0)) -> Path:
    plt = _pyplot()
    e = frame_errors(outcomes, centre)
    fig, (ax_t, ax_r) = plt.subplots(2, 1, figsize=(8, 5.5), dpi=110, sharex=True)
    ok = np.isfinite(e["translation"])
    floor_t = 1e-5 * max(float(np.median(e["scale"])) if len(e["scale"]) else 1.0, 1e-9)
    for ax, values, unit, limit in (
        (ax_t, np.maximum(e["translation"], floor_t), "translation error (map units)", threshold[0] * e["scale"]),
        (ax_r, np.maximum(e["rotation"], 1e-4), "rotation error (deg)", np.full(len(ok), threshold[1])),
    ):
        ax.semilogy(e["time"][ok], values[ok], ".-", color=TRUTH, ms=4, lw=0.8)
        if len(limit):
            label = f"{threshold[0] * 100:g} % of scene scale" if ax is ax_t else f"{threshold[1]:g} deg"
            ax.semilogy(e["time"], limit, "--", color="0.4", lw=1, label=label)
        if np.any(~ok):
            ax.plot(e["time"][~ok], np.full((~ok).sum(), 0.02), "|", color=MISS, ms=12,
                    transform=ax.get_xaxis_transform(), label="not localized")
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3, which="both")
        if not len(ok):
            _no_ground_truth(ax)
        elif ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=8)
    ax_r.set_xlabel("time since the first frame (s)")
    ax_t.set_title("Localization error over time")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_error_cdfs(curves: dict, path: Path, title: str, marks: tuple[float, float] | None = None) -> Path:
    """Cumulative distributions of translation errors (% of the scene scale) and rotation errors (deg).

    ``curves``: label -> (translation errors, rotation errors, matplotlib line style), one value per
    frame or query; a failure is None, NaN or infinite and never counts as within any error.
    ``marks``: thresholds (%, deg) drawn as dashed lines. Used by bag evaluation and the localize
    benchmark alike.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    labels = ("translation error (% of scene scale)", "rotation error (deg)")
    for column, (ax, label) in enumerate(zip(axes, labels, strict=True)):
        series = {name: np.asarray([np.nan if v is None else v for v in c[column]], dtype=float)
                  for name, c in curves.items()}
        finite = np.concatenate([v[np.isfinite(v)] for v in series.values()] + [np.zeros(0)])
        mark = marks[column] if marks else None
        lo = max(float(finite.min()) / 2, 1e-5) if len(finite) else 1e-3
        hi = max(float(finite.max()) * 2, 2 * (mark or 0.0), 10 * lo) if len(finite) else 10.0
        grid = np.geomspace(min(lo, mark / 10) if mark else lo, hi, 300)
        for (name, values), style in zip(series.items(), (c[2] for c in curves.values()), strict=True):
            ax.semilogx(grid, 100 * error_cdf(values, grid), style, lw=1.8, label=name or None,
                        color=TRUTH if len(curves) == 1 else None)
        if mark:
            ax.axvline(mark, ls="--", color="0.4", lw=1, label=f"{mark:g}{' %' if column == 0 else ' deg'}")
        if mark or any(curves):
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylim(0, 102)
        ax.grid(alpha=0.3, which="both")
        if not len(finite) and not any(len(v) for v in series.values()):
            _no_ground_truth(ax)
    axes[0].set_ylabel("within the error (%)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_error_cdf(outcomes, centre, path: Path, threshold=(0.02, 2.0)) -> Path:
    """The error CDF of a replay's frames (failures count as infinite)."""
    e = frame_errors(outcomes, centre)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = 100.0 * e["translation"] / e["scale"]
    return plot_error_cdfs({"": (relative, e["rotation"], "-")}, path,
                           f"Cumulative error distribution ({len(e['rows'])} frames with ground truth; "
                           "failures count as infinite)", (100 * threshold[0], threshold[1]))


def make_plots(outcomes, centre, out_dir: Path, gmap=None) -> dict[str, Path]:
    """All figures into ``out_dir``; returns name -> path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        "trajectory_top": plot_trajectory(outcomes, centre, out_dir / "trajectory_top.png", gmap),
        "errors_over_time": plot_errors_over_time(outcomes, centre, out_dir / "errors_over_time.png"),
        "error_cdf": plot_error_cdf(outcomes, centre, out_dir / "error_cdf.png"),
    }


#: Tag abbreviations on contact sheets.
SHORT_TAGS = {"brightness_contrast": "bright/contr", "gaussian_blur": "blur", "gaussian_noise": "noise"}


def contact_sheet(
    queries: list, columns: int = 4, width: int = 320, labels: list[str] | None = None
) -> np.ndarray:
    """A grid of query thumbnails (uint8 RGB), each captioned with its name and tags (or ``labels``)."""
    import cv2

    if not queries:
        return np.zeros((8, 8, 3), np.uint8)
    thumbs = []
    for k, q in enumerate(queries):
        h = round(q.image.shape[0] * width / q.image.shape[1])
        thumb = cv2.resize(
            q.image if q.image.ndim == 3 else np.repeat(q.image[..., None], 3, 2),
            (width, h),
            interpolation=cv2.INTER_AREA,
        )
        text = labels[k] if labels else f"{q.name} {' '.join(q.tags)}"
        lines = [" ".join(SHORT_TAGS.get(w, w) for w in line.split(" ")) for line in text.split("\n")]
        cv2.rectangle(thumb, (0, 0), (width, 4 + 14 * len(lines)), (0, 0, 0), -1)
        for i, line in enumerate(lines):
            cv2.putText(thumb, line, (3, 13 + 14 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        thumbs.append(thumb)
    h = max(t.shape[0] for t in thumbs)
    rows = math.ceil(len(thumbs) / columns)
    sheet = np.zeros((rows * (h + 4), columns * (width + 4), 3), np.uint8)
    for k, t in enumerate(thumbs):
        r, c = divmod(k, columns)
        sheet[r * (h + 4) : r * (h + 4) + t.shape[0], c * (width + 4) : c * (width + 4) + width] = t
    return sheet
