"""``gsvisloc train-encoder --out DIR``: train the learned scene encoder and matcher (resumable).

See :mod:`gsvisloc_ros.learned.train`: seeded, resumable from ``DIR/checkpoint.pt``, a progress
bar, ``DIR/curves.png`` (loss and recall), CUDA when present; ``--export`` writes the weights
and their provenance JSON.
"""

from __future__ import annotations

import argparse

from gsvisloc_ros.cli import COMMANDS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train-encoder", help=COMMANDS["train-encoder"],
                                   description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The training options (shared with ``python -m gsvisloc_ros.learned.train``; no torch import here)."""
    parser.add_argument("--out", required=True, help="run directory (checkpoint, data, curves); resumed if present")
    parser.add_argument("--train-maps", default="tarot,tabletop:0,tabletop:1,poster:0,room:0",
                        help="comma-separated: plant, tarot, KIND:SEED (procedural) or map paths")
    parser.add_argument("--val-maps", default="plant", help="held-out maps for the recall curve (never trained on)")
    parser.add_argument("--steps", type=int, default=500, help="total steps (a resumed run continues up to it)")
    parser.add_argument("--views", type=int, default=96, help="training views per map")
    parser.add_argument("--val-views", type=int, default=16, help="validation views per held-out map")
    parser.add_argument("--batch", type=int, default=4, help="views per step (of one map)")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--save-every", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--config", default="{}", metavar="JSON",
                        help='LearnedConfig fields of a new run, e.g. \'{"d_model": 64}\' '
                             '(a resumed run keeps its own)')
    parser.add_argument("--no-rotate", action="store_true",
                        help="do not turn the maps at random about their z axis (augmentation)")
    parser.add_argument("--coarse-weight", type=float, default=1.0,
                        help="weight of the regions' dual-softmax loss (0: the attention is not trained)")
    parser.add_argument("--descriptor-weight", type=float, default=1.0,
                        help="weight of the point descriptors' loss (taught by the lifted encoder)")
    parser.add_argument("--export", help="write the final weights here (+ provenance JSON beside them)")


def run(args: argparse.Namespace) -> int:
    from gsvisloc_ros.learned.train import run as train

    return train(args)
