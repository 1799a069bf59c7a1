"""``gsvisloc benchmark KIND ...``: time the pipeline's stages on a real map.

One sub-command per benchmark, each in its own module with a ``register_*`` function adding its
arguments, a ``run_*`` function returning a JSON-ready dict and a ``format_*`` function writing it
as text; adding one means adding such a module and an entry in ``BENCHMARKS``.

* ``render``: :mod:`gsvisloc_ros.cli.benchmark_render`.
* ``localize``: :mod:`gsvisloc_ros.cli.benchmark_localize`.
* ``fit``: :mod:`gsvisloc_ros.cli.benchmark_fit`.
* ``photos``: :mod:`gsvisloc_ros.cli.benchmark_photos`.
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable

from gsvisloc_ros.cli import COMMANDS
from gsvisloc_ros.cli.benchmark_fit import format_fit, register_fit, run_fit
from gsvisloc_ros.cli.benchmark_localize import format_localize, register_localize, run_localize
from gsvisloc_ros.cli.benchmark_photos import format_photos, register_photos, run_photos
from gsvisloc_ros.cli.benchmark_render import format_render, register_render, run_render


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``benchmark`` and its sub-commands."""
    parser = subparsers.add_parser("benchmark", help=COMMANDS["benchmark"], description=__doc__.splitlines()[0])
    kinds = parser.add_subparsers(dest="benchmark", required=True, metavar="KIND")
    for name, (help_text, add_arguments, run_benchmark, print_text) in BENCHMARKS.items():
        sub = kinds.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub)
        sub.add_argument("--json", action="store_true", help="print the results as JSON")
        sub.set_defaults(func=_runner(run_benchmark, print_text))


def _runner(run_benchmark: Callable[[argparse.Namespace], dict], print_text: Callable[[dict], str]):
    def run(args: argparse.Namespace) -> int:
        results = run_benchmark(args)
        results["machine"] = {"python": platform.python_version(), "cpu_count": _cpu_count()}
        print(json.dumps(results, indent=2) if args.json else print_text(results))
        return 0

    return run


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


BENCHMARKS: dict[str, tuple[str, Callable, Callable, Callable]] = {
    "render": ("time one render of a map (and the slow reference)", register_render, run_render, format_render),
    "localize": ("score and time localization on views rendered from the map", register_localize, run_localize,
                 format_localize),
    "photos": ("score and time localization on real posed photos (held-out and training) and negatives",
               register_photos, run_photos, format_photos),
    "fit": ("time a training step of the differentiable renderer beside a render", register_fit, run_fit, format_fit),
}
