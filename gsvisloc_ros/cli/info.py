"""``gsvisloc info MAP [--json]``: what is in a 3DGS map file.

Prints the Gaussian count, SH degree, bounds (full and robust), robust centre and extent, an
opacity histogram, the content hash and the source path; ``--json`` prints the same as JSON.
It also logs where a localizer with the default device (``auto``) would run on this machine, and why.
"""

from __future__ import annotations

import argparse
import json
import logging

import numpy as np

from gsvisloc_ros.cli import COMMANDS, CommandError
from gsvisloc_ros.gaussians import GaussianMap
from gsvisloc_ros.io import load_map

ROBUST_PERCENTILE = 1.0

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``info`` sub-command."""
    parser = subparsers.add_parser("info", help=COMMANDS["info"], description=__doc__.splitlines()[0])
    parser.add_argument("map", metavar="MAP", help="a 3DGS map file (.ply or .splat)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--bins", type=int, default=10, help="opacity histogram bins over [0, 1] (default: 10)")
    parser.set_defaults(func=run)


def summarise(gmap: GaussianMap, bins: int = 10) -> dict:
    """The summary of a map as plain JSON-ready values."""
    low, high = gmap.bounds()
    robust_low, robust_high = gmap.robust_bounds(ROBUST_PERCENTILE)
    counts, edges = np.histogram(gmap.opacities, bins=bins, range=(0.0, 1.0))
    return {
        "source": gmap.source,
        "count": len(gmap),
        "sh_degree": gmap.sh_degree,
        "bounds": {"min": low.tolist(), "max": high.tolist()},
        "robust_bounds": {"percentile": ROBUST_PERCENTILE, "min": robust_low.tolist(), "max": robust_high.tolist()},
        "centre": gmap.robust_centre().tolist(),
        "extent": (robust_high - robust_low).tolist(),
        "radius_95": gmap.robust_radius(95.0),
        "median_scale": float(np.median(gmap.scales)),
        "opacity": {
            "mean": float(gmap.opacities.mean()),
            "median": float(np.median(gmap.opacities)),
            "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
        },
        "content_hash": gmap.content_hash,
    }


def _vector(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def format_text(summary: dict, width: int = 40) -> str:
    """The summary as human-readable lines."""
    histogram = summary["opacity"]["histogram"]
    lines = [
        f"source        {summary['source']}",
        f"Gaussians     {summary['count']}",
        f"SH degree     {summary['sh_degree']}",
        f"bounds        min {_vector(summary['bounds']['min'])}  max {_vector(summary['bounds']['max'])}",
        f"robust bounds min {_vector(summary['robust_bounds']['min'])}  max {_vector(summary['robust_bounds']['max'])}"
        f"  ({summary['robust_bounds']['percentile']:g}-{100 - summary['robust_bounds']['percentile']:g} percentiles)",
        f"centre        {_vector(summary['centre'])}  (median)",
        f"extent        {_vector(summary['extent'])}",
        f"radius (95%)  {summary['radius_95']:.4g}",
        f"median scale  {summary['median_scale']:.4g}",
        f"opacity       mean {summary['opacity']['mean']:.3f}  median {summary['opacity']['median']:.3f}",
    ]
    peak = max(max(histogram["counts"]), 1)
    for low, high, count in zip(histogram["edges"][:-1], histogram["edges"][1:], histogram["counts"], strict=True):
        bar = "#" * round(width * count / peak)
        lines.append(f"  [{low:.2f}, {high:.2f}{']' if high >= 1.0 else ')'} {count:>9}  {bar}")
    lines.append(f"content hash  {summary['content_hash']}")
    return "\n".join(lines)


def log_runtime() -> None:
    """Log where the default device setting (``auto``) puts the encoder, the matcher and the renders here."""
    import torch

    from gsvisloc_ros.render import choose_backend

    gpu = torch.cuda.is_available()
    backend, why = choose_backend("auto")
    log.info("device auto: encoder and matcher on %s (torch sees %s CUDA device); renders on %s (%s)",
             "cuda" if gpu else "cpu", "a" if gpu else "no", backend, why)


def run(args: argparse.Namespace) -> int:
    """Load the map and print its summary."""
    if args.bins < 1:
        raise CommandError(f"--bins must be at least 1, got {args.bins}")
    log_runtime()
    summary = summarise(load_map(args.map), bins=args.bins)
    print(json.dumps(summary, indent=2) if args.json else format_text(summary))
    return 0
