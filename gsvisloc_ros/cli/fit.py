"""``gsvisloc fit SET --out MAP.ply``: fit a 3DGS map to posed photos, on the CPU.

SET is a folder with a COLMAP model (``sparse/0/`` or ``sparse/``, binary or text) and
``images/``, or with a ``transforms.json``, or a Middlebury ``*_par.txt`` with its photos.
Writes MAP.ply (INRIA layout) and beside it MAP.fit.json (train/test PSNR, time, Gaussians,
test images, size) and MAP.fit.png (test photo | render | difference). Nothing is written
unless the fit succeeds; each file is written beside its name and renamed into place.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from gsvisloc_ros.cli import COMMANDS, CommandError

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    from gsvisloc_ros.fit.trainer import FitConfig

    d = FitConfig()
    parser = subparsers.add_parser("fit", help=COMMANDS["fit"], description=__doc__.splitlines()[0])
    parser.add_argument("photo_set", metavar="SET", help="photo set folder (COLMAP, transforms.json, *_par.txt)")
    parser.add_argument("--out", required=True, metavar="MAP.ply", help="the map to write (.ply)")
    parser.add_argument("--test-every", type=int, default=d.test_every, metavar="N",
                        help=f"hold out every N-th photo (by name, from the first) for testing; 0: none "
                             f"(default: {d.test_every})")  # fmt: skip
    parser.add_argument("--max-size", type=int, default=d.max_size, metavar="PX",
                        help=f"shrink photos so that their longer side is at most PX; 0: full size "
                             f"(default: {d.max_size})")  # fmt: skip
    parser.add_argument("--iterations", type=int, default=d.iterations, metavar="N",
                        help=f"optimisation steps (default: {d.iterations})")
    parser.add_argument("--max-gaussians", type=int, default=d.max_gaussians, metavar="N",
                        help=f"cap on the number of Gaussians (default: {d.max_gaussians})")
    parser.add_argument("--seed", type=int, default=d.seed, metavar="S", help=f"random seed (default: {d.seed})")
    parser.add_argument("--exposure", action="store_true",
                        help="fit a per-photo affine colour correction (not stored in the map)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gsvisloc_ros.fit.report import fit_report, write_report
    from gsvisloc_ros.fit.trainer import FitConfig, fit
    from gsvisloc_ros.io import save_ply
    from gsvisloc_ros.io.photosets import load_photo_set

    out = Path(args.out)
    if out.suffix.lower() != ".ply":
        raise CommandError(f"--out must name a .ply file, got {args.out!r}")
    if not out.parent.is_dir():
        raise CommandError(f"the folder of --out does not exist: {out.parent}")
    if not os.access(out.parent, os.W_OK):
        raise CommandError(f"cannot write into {out.parent}")
    config = FitConfig(
        iterations=args.iterations, max_size=args.max_size or None, test_every=args.test_every,
        max_gaussians=args.max_gaussians, seed=args.seed, exposure=args.exposure,
    )  # fmt: skip
    start = time.perf_counter()
    photo_set = load_photo_set(args.photo_set)
    logger.info("%s: %d photos (%s)", args.photo_set, len(photo_set), photo_set.kind)
    result = fit(photo_set, config, progress=not args.no_progress)
    report, sheet = fit_report(result, config, args.photo_set)
    report["wall_seconds"] = round(time.perf_counter() - start, 1)  # loading, fitting and evaluating
    save_ply(result.gmap, out)
    json_path, png_path = write_report(out, report, sheet)
    test = report["test_psnr_db"]
    print(
        f"{out}: {report['gaussians']} Gaussians at {report['width']}x{report['height']}, "
        f"{report['iterations']} steps in {report['seconds']:.0f} s; PSNR train {report['train_psnr_db']:.2f} dB, "
        f"test {'-' if test is None else f'{test:.2f} dB'} ({len(report['test_images'])} photos); "
        f"report {json_path}" + (f", {png_path}" if png_path else "")
    )
    return 0
