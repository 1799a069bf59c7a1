"""The ``gsvisloc`` command line: one sub-command per job, each in its own module.

Every module listed in ``COMMANDS`` exposes ``register(subparsers)``, which adds its parser and
sets ``func`` (called with the parsed arguments, returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# module name -> one-line help; modules are imported lazily so `gsvisloc --help` stays fast.
COMMANDS = {
    "info": "summarise a 3DGS map",
    "render": "render a map from a camera pose",
    "encode": "encode a map into landmarks for localization (cached)",
    "train-encoder": "train the learned scene encoder and matcher (renders of maps, resumable)",
    "localize": "estimate the camera pose of images against a map",
    "fit": "fit a 3DGS map to posed photos (COLMAP, transforms.json), on the CPU",
    "benchmark": "time and score the pipeline's stages",
    "make-bag": "render a camera trajectory through a map into a ROS 2 bag",
    "evaluate-bag": "replay a ROS 2 bag into the localizer and score it against ground truth",
    "demo": "make a bag of the embedded default map, replay it and report (what `make demo` runs)",
}


class CommandError(Exception):
    """A user-facing error: printed without a traceback, exit code 2."""


def parse_numbers(text: str, option: str, counts: tuple[int, ...]) -> tuple[float, ...]:
    """``"1,2,3"`` as floats, with a clear error naming ``option`` unless there are ``counts`` of them."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) not in counts:
        raise CommandError(f"{option} takes {' or '.join(map(str, counts))} comma-separated numbers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gsvisloc", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"gsvisloc_ros.cli.{name.replace('-', '_')}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except (CommandError, ValueError, FileNotFoundError) as exc:
        print(f"gsvisloc {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
