"""The results of a replay: ``metrics.json``, ``frames.jsonl``, ``report.md`` and the plots.

Metrics come from :func:`gsvisloc_ros.evaluation.metrics.summarise` over the frames that could be
decoded and have ground truth; the scale of relative errors is an
:class:`~gsvisloc_ros.evaluation.metrics.ErrorScale`: a frame's distance to the map's robust centre,
or the map's extent for maps seen from within. Frames the bag could not provide are
counted apart (``unusable``, with reasons) and are not localization failures.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from gsvisloc_ros.evaluation.consistency import consistency, nees
from gsvisloc_ros.evaluation.metrics import as_error_scale, pose_error, summarise

#: The recall keys every metrics.json carries (None when they cannot be measured).
RECALL_KEYS = ("1pct_1deg", "2pct_2deg", "5pct_5deg", "5cm_5deg", "10cm_5deg")


def _reason_group(reason: str) -> str:
    """A failure reason with its numbers blanked, so that the same cause is counted once."""
    return re.sub(r"-?\d+(\.\d+)?", "N", reason).strip() or "(no reason given)"


def compute_metrics(outcomes, scale) -> dict:
    """The metrics of a replay (see the module docstring); JSON-ready. ``scale``: an
    :class:`~gsvisloc_ros.evaluation.metrics.ErrorScale`, or the map centre (distance to it)."""
    scale = as_error_scale(scale)
    usable = [o for o in outcomes if o.usable]
    with_gt = [o for o in usable if o.T_gt is not None]
    latencies = [o.latency_ms if o.latency_ms is not None else np.nan for o in usable]
    timing = summarise([None] * len(usable), [None] * len(usable), latencies_ms=latencies)["latency_ms"]
    if with_gt:
        errors = [pose_error(o.T_est, o.T_gt) if o.success and o.T_est is not None else (None, None)
                  for o in with_gt]
        summary = summarise([e[0] for e in errors], [e[1] for e in errors],
                            scales=[scale.of(o.T_gt) for o in with_gt],
                            accepted=[o.success for o in with_gt])
    else:  # no ground truth: only whether a pose came back, and how fast
        summary = {"localized_fraction": float(np.mean([o.success for o in usable])) if usable else None,
                   "median_translation": None, "median_translation_pct_scale": None, "median_rotation_deg": None,
                   "recall": dict.fromkeys(RECALL_KEYS), "wrong_accepted": None}
    for key in RECALL_KEYS:
        summary.setdefault("recall", {}).setdefault(key, None)
    if timing is not None:
        timing = {k: (None if not np.isfinite(v) else v) for k, v in timing.items()}
    summary.pop("latency_ms", None)
    summary.pop("frames", None)
    problems = Counter(o.problem for o in outcomes if not o.usable)
    failures = Counter(_reason_group(o.failure_reason) for o in usable if not o.success)
    return {
        "frames": len(outcomes),
        "evaluated": len(usable),
        "with_ground_truth": len(with_gt),
        "unusable": len(outcomes) - len(usable),
        "unusable_reasons": dict(problems.most_common()),
        **summary,
        "latency_ms": timing,
        "failure_reasons": dict(failures.most_common()),
        "scene_centre": list(scale.centre),
        "scale": scale.to_dict(),
        "mean_scene_scale": float(np.mean([scale.of(o.T_gt) for o in with_gt])) if with_gt else None,
        # Whether the published covariance describes the error (None without ground truth or covariances).
        "covariance_consistency": consistency([nees(o.T_est, o.T_gt, o.covariance) for o in with_gt
                                               if o.success and o.T_est is not None]),
    }


def number(value, spec: str = ".3g", suffix: str = "", scale: float = 1.0) -> str:
    """``value * scale`` written with the format ``spec`` and ``suffix``; "n/a" when there is none."""
    return "n/a" if value is None else f"{value * scale:{spec}}{suffix}"


def percent(fraction) -> str:
    """A fraction as a percentage with one decimal ("n/a" when there is none)."""
    return number(fraction, ".1f", "%", 100.0)


def summary_table(metrics: dict) -> list[tuple[str, str]]:
    """(name, value) rows of the headline numbers (for the terminal and the report)."""
    recall = metrics.get("recall") or {}
    latency = metrics.get("latency_ms") or {}
    consistency_ = metrics.get("covariance_consistency") or {}
    return [
        ("frames (evaluated / in bag)", f"{metrics['evaluated']} / {metrics['frames']}"),
        ("localized", percent(metrics.get("localized_fraction"))),
        ("median translation error", number(metrics.get("median_translation"), ".3g", " cm", 100)
         + f" ({number(metrics.get('median_translation_pct_scale'), '.3g', '% of ')}"
         f"{(metrics.get('scale') or {}).get('name', 'scale')})"),
        ("median rotation error", number(metrics.get("median_rotation_deg"), ".3g", " deg")),
        ("recall (1 % scale, 1 deg)", percent(recall.get("1pct_1deg"))),
        ("recall (2 % scale, 2 deg)", percent(recall.get("2pct_2deg"))),
        ("recall (5 % scale, 5 deg)", percent(recall.get("5pct_5deg"))),
        ("recall (5 cm, 5 deg)", percent(recall.get("5cm_5deg"))),
        ("recall (10 cm, 5 deg)", percent(recall.get("10cm_5deg"))),
        ("wrong poses accepted", "n/a" if metrics.get("wrong_accepted") is None else str(metrics["wrong_accepted"])),
        ("latency p50 / p90 / p99", " / ".join(number(latency.get(k), ".4g") for k in ("p50", "p90", "p99")) + " ms"),
        ("covariance: mean NEES (6 if right)", number(consistency_.get("mean_nees"), ".3g")),
        ("covariance: errors in the 95 % ellipsoid", percent(consistency_.get("share_within_95"))),
        ("covariance_scale for 95 % (now)", number(consistency_.get("covariance_scale_for_95"), ".3g")
         + f" ({number(consistency_.get('covariance_scale'), '.3g')})"),
    ]


def format_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


def write_report(out_dir: str | Path, outcomes, metrics: dict, context: dict, plots: dict | None = None) -> Path:
    """Write ``metrics.json``, ``frames.jsonl`` and ``report.md`` into ``out_dir``; returns the report path.

    ``context``: what was evaluated and how (bag, map, mode, topics, notes), stored beside the
    metrics.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({**metrics, "context": context}, indent=2) + "\n")
    with open(out / "frames.jsonl", "w") as f:
        for o in outcomes:
            f.write(json.dumps(o.to_dict()) + "\n")
    lines = [
        "# Relocalization on a bag",
        "",
        f"- bag: `{context.get('bag')}`",
        f"- map: `{context.get('map')}`",
        f"- replay: {context.get('mode_description', context.get('mode'))}",
        f"- image topic: `{context.get('image_topic')}` ({context.get('image_type')}), camera info: "
        f"`{context.get('camera_info_topic')}`, ground truth: `{context.get('gt_topic')}`",
    ]
    if context.get("seconds") is not None:
        lines.append(f"- replay wall time: {context['seconds']:.1f} s")
    lines += ["", "## Results", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in summary_table(metrics)]
    lines += [
        "",
        "Errors are measured on the frames that were decoded and have ground truth; a frame without a "
        "pose is a miss in the recall. Relative errors are fractions of the "
        f"{(metrics.get('scale') or {}).get('name', 'distance to the map centre')} "
        f"(mean here: {number(metrics.get('mean_scene_scale'))} map units). "
        "Wrong poses accepted: accepted estimates outside the loosest threshold "
        f"({metrics.get('wrong_threshold') or 'n/a'}). Latency: "
        + ("publishing the image to receiving the node's answer." if context.get("mode") == "node"
           else "the wall time of `Localizer.localize()` per frame.")
        + " Covariance: the normalised estimation error squared (NEES) of each accepted pose under the "
        "covariance the node publishes with it (covariance_scale "
        f"{context.get('covariance_scale', 'n/a')}); a right covariance gives a mean of 6 and 95 % of the "
        "errors inside the 95 % ellipsoid; 'covariance_scale for 95 %' is the value of the parameter that "
        "would put 95 % inside (n/a through the node, whose covariance is of the base frame).",
    ]
    notes = list(context.get("notes") or [])
    if metrics.get("unusable"):
        lines += ["", f"## Frames that could not be used ({metrics['unusable']})", ""]
        lines += [f"- {count} x {reason}" for reason, count in metrics["unusable_reasons"].items()]
    if metrics.get("failure_reasons"):
        lines += ["", "## Why frames were not localized", ""]
        lines += [f"- {count} x {reason}" for reason, count in metrics["failure_reasons"].items()]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    if plots:
        lines += ["", "## Plots", ""]
        titles = {"trajectory_top": "Trajectory, top view", "errors_over_time": "Error over time",
                  "error_cdf": "Cumulative error distribution"}
        for name, path in plots.items():
            lines += [f"### {titles.get(name, name)}", "", f"![{name}]({Path(path).name})", ""]
    lines += ["", "Per-frame results: `frames.jsonl`; all numbers: `metrics.json`.", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report
