"""Compare two ``gsvisloc evaluate-bag`` runs of the same bag frame by frame (e.g. straight into the
localizer and ``--through-node``): the same frames localized, the same decisions, the same poses.

    gsvisloc evaluate-bag BAG --map MAP --out A
    gsvisloc evaluate-bag BAG --map MAP --out B --through-node
    python benchmarks/replay_equality.py A B [--tolerance 1e-5]

Prints the frames whose outcome differs, the largest pose difference (max abs over the 4x4
matrices), and the latency medians; exits 1 when a decision differs or a pose differs by more
than ``--tolerance``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def frames(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "frames.jsonl").read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--tolerance", type=float, default=1e-5)
    args = parser.parse_args(argv)
    a, b = frames(args.a), frames(args.b)
    if [f["index"] for f in a] != [f["index"] for f in b]:
        print(f"different frames: {len(a)} vs {len(b)}")
        return 1
    differ, worst = [], 0.0
    for fa, fb in zip(a, b, strict=True):
        if fa["success"] != fb["success"]:
            differ.append(f"frame {fa['index']}: {fa['success']} ({fa['failure_reason']}) vs "
                          f"{fb['success']} ({fb['failure_reason']})")
        elif fa["success"]:
            worst = max(worst, float(np.abs(np.asarray(fa["T_est"]) - np.asarray(fb["T_est"])).max()))
    latency = [np.median([f["latency_ms"] for f in run if f["latency_ms"] is not None]) for run in (a, b)]
    print(f"{len(a)} frames; localized {sum(f['success'] for f in a)} vs {sum(f['success'] for f in b)}; "
          f"decisions that differ: {len(differ)}; largest pose difference {worst:.2e}; "
          f"latency median {latency[0]:.0f} vs {latency[1]:.0f} ms ({100 * (latency[1] / latency[0] - 1):+.1f} %)")
    for line in differ:
        print("  " + line)
    return 1 if differ or worst > args.tolerance else 0


if __name__ == "__main__":
    sys.exit(main())
