"""``gsvisloc benchmark fit [MAP] --sizes 320x240,640x480 --counts 50000,100000``: time per training
step of the differentiable renderer (forward: projection + rasterization; backward: every
parameter's and the pose's gradient of an L1 loss) beside one render of the forward-only renderer,
for the map (default: the procedural room) subsampled to each count, at each size, with SH degree 3.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from gsvisloc_ros.camera import default_camera, invert_pose, parse_size
from gsvisloc_ros.cli import CommandError
from gsvisloc_ros.cli.benchmark_render import benchmark_view
from gsvisloc_ros.gaussians import MAX_SH_DEGREE, GaussianMap


def register_fit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("map", metavar="MAP", nargs="?", help="a 3DGS map (default: the procedural room, 340k)")
    parser.add_argument("--sizes", default="320x240,640x480", help="image sizes (default: 320x240,640x480)")
    parser.add_argument("--counts", default="50000,100000", help="Gaussians kept (default: 50000,100000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per configuration (default: 5)")


def run_fit(args: argparse.Namespace) -> dict:
    import os

    import torch

    from gsvisloc_ros.fit.trainer import use_workqueue_threads
    from gsvisloc_ros.io import load_map
    from gsvisloc_ros.render import render
    from gsvisloc_ros.render.differentiable import project, rasterize_torch
    from gsvisloc_ros.synthetic.scenes import make_scene

    use_workqueue_threads()  # as the fit runs
    torch.set_num_threads(1)
    source = args.map or "procedural room (detail 2)"
    full = load_map(args.map) if args.map else make_scene("room", detail=2.0)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    counts = [int(c) for c in args.counts.split(",")]
    if max(counts) > len(full):
        raise CommandError(f"{source} has {len(full)} Gaussians, fewer than {max(counts)}")
    T_world_camera, _ = benchmark_view(full)
    T = invert_pose(T_world_camera)
    rows = []
    load = [os.getloadavg()[0]]
    for count in counts:
        gmap = full.subsample(count, seed=0)
        if gmap.sh_degree < MAX_SH_DEGREE:  # time the degree a fit ends with (zero coefficients cost the same)
            sh = np.zeros((len(gmap), (MAX_SH_DEGREE + 1) ** 2, 3), dtype=np.float32)
            sh[:, : gmap.sh.shape[1]] = gmap.sh
            gmap = GaussianMap(gmap.means, gmap.quats, gmap.scales, gmap.opacities, sh)
        params = [
            torch.tensor(gmap.means), torch.tensor(np.log(np.maximum(gmap.scales, 1e-12))), torch.tensor(gmap.quats),
            torch.logit(torch.tensor(gmap.opacities).clamp(1e-6, 1 - 1e-6)), torch.tensor(gmap.sh),
        ]  # fmt: skip
        for p in params:
            p.requires_grad_(True)
        for width, height in sizes:
            camera = default_camera(width, height)
            target = torch.rand((height, width, 3), generator=torch.Generator().manual_seed(0))
            pose = torch.zeros(6, dtype=torch.float32, requires_grad=True)
            forward, backward, renders = [], [], []
            for i in range(args.repeats + 1):  # the first is a warm-up (and compiles)
                start = time.perf_counter()
                render(gmap, camera, T, backend="cpu")
                rendered = time.perf_counter()
                proj = project(*params, gmap.sh_degree, camera, T, pose_delta=pose)
                rgb, drawn = rasterize_torch(proj, width, height)
                loss = (torch.clamp(rgb, 0.0, 1.0) - target).abs().mean()
                projected = time.perf_counter()
                loss.backward()
                done = time.perf_counter()
                for p in params + [pose]:
                    p.grad = None
                if i:
                    renders.append(rendered - start)
                    forward.append(projected - rendered)
                    backward.append(done - projected)
            rows.append({
                "gaussians": count, "size": [width, height], "drawn": int(drawn.sum()),
                "render_ms": 1000 * float(np.median(renders)), "forward_ms": 1000 * float(np.median(forward)),
                "backward_ms": 1000 * float(np.median(backward)),
                "step_ms": 1000 * float(np.median(np.add(forward, backward))),
            })  # fmt: skip
    load.append(os.getloadavg()[0])
    return {"map": source, "sh_degree": MAX_SH_DEGREE, "repeats": args.repeats, "rows": rows,
            "load_average_1min": load}  # fmt: skip


def format_fit(results: dict) -> str:
    lines = [
        f"fit steps on {results['map']} (SH degree {results['sh_degree']}), median of {results['repeats']}; "
        f"load average {results['load_average_1min'][0]:.1f} -> {results['load_average_1min'][1]:.1f}",
        f"  {'Gaussians':>9} {'size':>8} {'drawn':>7} {'render':>9} {'forward':>9} {'backward':>9} {'step':>9}",
    ]
    for r in results["rows"]:
        size = f"{r['size'][0]}x{r['size'][1]}"
        lines.append(
            f"  {r['gaussians']:>9} {size:>8} {r['drawn']:>7} {r['render_ms']:>6.0f} ms {r['forward_ms']:>6.0f} ms"
            f" {r['backward_ms']:>6.0f} ms {r['step_ms']:>6.0f} ms"
        )
    lines.append("  render: the forward-only renderer; forward: projection (torch) + rasterization (numba);")
    lines.append("  backward: gradients of an L1 loss to every parameter and the se(3) pose; step = forward + backward")
    lines.append(f"  machine: Python {results['machine']['python']}, {results['machine']['cpu_count']} CPUs")
    return "\n".join(lines)
