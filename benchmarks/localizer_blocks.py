"""Time the localizer's building blocks on this machine: 2D encoders, coarse matching, PnP.

    python benchmarks/localizer_blocks.py [--image PATH] [--repeats 10] [--threads N]

Prints wall-clock min / median and CPU milliseconds. Without ``--image`` a 640x480 Middlebury photo beside the
repository is used if present, else a synthetic textured image (encoder times depend on content).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = REPO.parent / "shared" / "data" / "middlebury" / "templeSparseRing" / "templeSR0001.png"


def timed(fn, repeats: int) -> str:
    """Wall time (min / median) and process CPU time (median) in ms, after one warm-up call.

    On a shared machine the wall time includes waiting for the CPU; with ``--threads 1`` the CPU
    time is what an otherwise idle core would take.
    """
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return f"wall min {1e3 * min(wall):.1f} / median {1e3 * np.median(wall):.1f} ms, cpu {1e3 * np.median(cpu):.1f} ms"


def load_image(path: Path | None) -> np.ndarray:
    import cv2

    path = path or DEFAULT_IMAGE
    if path.is_file():
        image = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        return np.ascontiguousarray(cv2.resize(image, (640, 480), interpolation=cv2.INTER_AREA))
    rng = np.random.default_rng(0)
    noise = cv2.GaussianBlur(rng.uniform(0, 255, (480, 640)).astype(np.float32), (0, 0), 3.0)
    noise = cv2.normalize(noise, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(noise[:, :, None], 3, axis=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()

    import torch

    from gsvisloc_ros.camera import PinholeCamera, invert_pose, look_at, transform_points
    from gsvisloc_ros.features import make_encoder
    from gsvisloc_ros.matching import MatchingConfig, match_descriptors
    from gsvisloc_ros.pose import PnPConfig, estimate_pose

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CUDA {torch.cuda.is_available()}")
    image = load_image(args.image)
    for name in ("xfeat", "sift"):
        enc = make_encoder(name, device="auto")
        n = len(enc.extract(image))
        print(f"{name:5s} extract 640x480, {n} keypoints: {timed(lambda enc=enc: enc.extract(image), args.repeats)}")
    xfeat = make_encoder("xfeat", device="auto")
    print(f"xfeat keypoints + dense map 640x480: {timed(lambda: xfeat.extract_all(image), args.repeats)}")

    rng = np.random.default_rng(0)

    def unit(x):
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    query = unit(rng.normal(size=(4096, 64)))
    for m in (20_000, 100_000):
        landmarks = unit(rng.normal(size=(m, 64)))
        for cfg in (MatchingConfig(), MatchingConfig(ratio=0.9)):
            result = timed(lambda cfg=cfg, lm=landmarks: match_descriptors(query, lm, config=cfg), 3)
            label = "mutual nearest" + (f", ratio {cfg.ratio}" if cfg.ratio else "")
            print(f"match {m // 1000}k landmarks x 4k query, {label}: {result}")

    camera = PinholeCamera(500.0, 500.0, 319.5, 239.5, 640, 480)
    T = look_at([0.2, -0.1, -4.0], [0.0, 0.0, 0.0])
    points = rng.uniform(-1.5, 1.5, (8000, 3))
    uv, z = camera.project(transform_points(invert_pose(T), points))
    keep = camera.in_image(uv) & (z > 0.1)
    points, uv = points[keep][:2000], uv[keep][:2000] + rng.normal(scale=0.5, size=(2000, 2))
    uv[:1000] = rng.uniform([0, 0], [640, 480], (1000, 2))
    for backend in ("poselib", "opencv"):
        cfg = PnPConfig(backend=backend)
        result = timed(lambda cfg=cfg: estimate_pose(points, uv, camera, cfg), args.repeats)
        print(f"PnP {backend} 2000 matches, 50% outliers: {result}")


if __name__ == "__main__":
    main()
