"""``gsvisloc demo``: the whole job on the embedded default map, in a few minutes on a CPU.

1. Take the embedded default map (a procedural tabletop scene, made in about 2 s).
2. Render a camera orbiting it into a ROS 2 bag (images, camera info, tf, ground truth).
3. Replay the bag: through the gsvisloc ROS node over DDS when the node is available (and
   ``--direct`` is not given), else straight into the localizer; it says which.
4. Print the results and where the report, metrics and plots are (default: ``./out/demo``).

The first run also encodes the map (cached afterwards in ``~/.cache/gsvisloc`` or ``--cache-dir``).
Exit code 1 when the recall at (2 % of the scene scale, 2 deg) is below 90 %.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

from gsvisloc_ros.cli import COMMANDS, CommandError

log = logging.getLogger(__name__)

#: The demo passes when at least this fraction of frames is within (2 % of scale, 2 deg).
TARGET_RECALL = 0.9


def register(subparsers: argparse._SubParsersAction) -> None:
    from gsvisloc_ros.cli.evaluate_bag import add_localizer_arguments
    from gsvisloc_ros.cli.make_bag import add_trajectory_arguments

    parser = subparsers.add_parser("demo", help=COMMANDS["demo"], description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/demo", metavar="DIR", help="output directory (default: out/demo)")
    add_trajectory_arguments(parser, frames=50)
    parser.add_argument("--storage", default="sqlite3", choices=("sqlite3", "mcap"), help="bag storage")
    parser.add_argument("--compressed", action="store_true", help="JPEG images in the bag")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--direct", action="store_true", help="replay straight into the localizer, not the node")
    mode.add_argument("--through-node", action="store_true",
                      help="replay through the ROS node, and fail if it is not available")
    add_localizer_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gsvisloc_ros.cli.evaluate_bag import evaluate
    from gsvisloc_ros.cli.make_bag import make_bag
    from gsvisloc_ros.evaluation.replay import node_available
    from gsvisloc_ros.evaluation.report import format_table, summary_table
    from gsvisloc_ros.synthetic import DEFAULT_MAP_NAME, default_map

    start = time.perf_counter()
    out = Path(args.out)
    bag = out / "bag"
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out} is a file, not a directory")
    if bag.exists():
        if not (bag / "metadata.yaml").exists() and any(bag.iterdir()):
            raise CommandError(f"{bag} exists and is not a bag: not replacing it (choose another --out)")
        shutil.rmtree(bag)
    out.mkdir(parents=True, exist_ok=True)

    if args.direct:
        through_node, why = False, "--direct was given"
    else:
        through_node, why = node_available()
        if args.through_node and not through_node:
            raise CommandError(f"--through-node: {why}")
    print("[1/3] default map: the embedded tabletop scene", flush=True)
    gmap = default_map()
    print(f"[2/3] rendering {args.frames} frames ({args.trajectory}, {args.size}) into {bag}", flush=True)
    summary = make_bag(args, gmap, bag, progress=args.progress)
    print(f"      wrote the bag in {summary.seconds:.1f} s", flush=True)
    how = "through the gsvisloc ROS node over DDS" if through_node else f"straight into the localizer ({why})"
    print(f"[3/3] replaying the bag {how}", flush=True)
    metrics, report = evaluate(bag, DEFAULT_MAP_NAME, gmap, out, args, through_node=through_node,
                               progress=args.progress)
    seconds = time.perf_counter() - start
    recall = (metrics.get("recall") or {}).get("2pct_2deg")
    print(f"\nResults ({'ROS node over DDS' if through_node else 'Localizer, no ROS'}; {seconds:.0f} s in all):")
    print(format_table(summary_table(metrics)))
    print(f"\nreport:  {report}\nmetrics: {out / 'metrics.json'}\nplots:   "
          + ", ".join(str(p) for p in sorted(out.glob("*.png"))) + f"\nbag:     {bag}")
    if recall is None or recall < TARGET_RECALL:
        print(f"\nrecall at (2 % of scale, 2 deg) is {'n/a' if recall is None else f'{100 * recall:.1f} %'}, "
              f"below the {100 * TARGET_RECALL:.0f} % target")
        return 1
    return 0
