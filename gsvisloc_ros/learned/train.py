"""Train the learned matcher: ``python -m gsvisloc_ros.learned.train --out DIR [...]``.

Seeded and resumable: ``DIR/checkpoint.pt`` (weights, optimiser, step, history; loaded with
``weights_only=True``) is written every ``--save-every`` steps and at the end, and a run started
again with the same ``DIR`` continues from it up to ``--steps``. Training data (renders, frozen
XFeat maps, ground truth) is made once per map into ``DIR/data``. Each step takes one training
map (drawn by the seeded step number), runs the 3D encoder once and matches ``--batch`` of its
views. Every ``--eval-every`` steps the recall of ground-truth regions (best patch within one
patch of the true one) is measured on the validation maps' views, never trained on. Writes
``DIR/curves.png`` (loss and recall) and, with ``--export PATH``, the weights and their provenance
JSON (data, steps, commit, figures).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .config import LearnedConfig
from .data import TrainingMap, load_or_make_training_map
from .distillation import descriptor_loss, descriptor_recall
from .gaussian_encoder import hierarchy_tensors, rotated_tensors
from .matching import coarse_loss, match_recall
from .model import LearnedMatcher, save_weights

log = logging.getLogger(__name__)


def _device(name: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


#: Taught Gaussians per step in the point descriptors' InfoNCE.
DESCRIPTOR_SAMPLE = 2048


def step_batch(model: LearnedMatcher, data: TrainingMap, tensors: dict, views: np.ndarray, device: str,
               coarse_weight: float = 1.0, descriptor_weight: float = 1.0, rng: np.random.Generator | None = None,
               encoded: tuple | None = None):
    """(loss, confidence or None, truth, point descriptors) of one map and some of its views:
    ``coarse_weight`` x the dual-softmax loss of the ground-truth region-patch matches (skipped,
    attention and all, at 0) plus ``descriptor_weight`` x the point descriptors' loss
    (:func:`~.distillation.descriptor_loss`). ``encoded``: the map's ``model.encode_scene(tensors)``
    when already computed."""
    regions, points = encoded if encoded is not None else model.encode_scene(tensors)
    truth = [data.pairs[v] for v in views]
    loss, confidence = points.sum() * 0.0, None
    if coarse_weight:
        cells = torch.from_numpy(data.cells[views].astype(np.float32)).to(device)
        scores, confidence = model.match(regions, tensors["regions"], cells)
        loss = loss + coarse_weight * coarse_loss(scores, truth)
    if descriptor_weight:
        rng = rng or np.random.default_rng(0)
        taught = np.flatnonzero(data.taught)
        sample = rng.choice(taught, size=min(DESCRIPTOR_SAMPLE, len(taught)), replace=False)
        targets = torch.from_numpy(data.targets).to(device)
        loss = loss + descriptor_weight * descriptor_loss(points, targets, torch.from_numpy(sample).to(device))
    return loss, confidence, truth, points


def _point_recall(points: torch.Tensor, data: TrainingMap, config: LearnedConfig, device: str) -> float:
    """:func:`~.distillation.descriptor_recall` of one map's point descriptors (within two finest cells)."""
    return descriptor_recall(points, torch.from_numpy(data.targets).to(device), data.taught, data.hierarchy.levels[0],
                             2 * config.voxels[0] * data.hierarchy.radius)


def evaluate(model: LearnedMatcher, maps: list[TrainingMap], tensors: list[dict], device: str,
             batch: int = 4, coarse: bool = True) -> tuple[float, float]:
    """(region recall within one patch over every view, point descriptor recall) of ``maps``
    (means over the maps; the first is NaN without ``coarse``)."""
    hits = total = 0.0
    descriptor = []
    model.eval()
    with torch.inference_mode():
        for data, t in zip(maps, tensors, strict=True):
            cols = data.cells.shape[2]
            encoded = model.encode_scene(t)  # once per map: eval mode, the same for every batch of views
            descriptor.append(_point_recall(encoded[1], data, model.config, device))
            for start in range(0, len(data.cells) if coarse else 0, batch):
                views = np.arange(start, min(start + batch, len(data.cells)))
                _, confidence, truth, _ = step_batch(model, data, t, views, device, 1.0, 0.0, encoded=encoded)
                n = sum(len(p) for p in truth)
                hits += match_recall(confidence, truth, cols) * n
                total += n
    model.train()
    return (hits / total if total else float("nan")), float(np.mean(descriptor)) if descriptor else float("nan")


def train(out: Path, train_maps: list[str], val_maps: list[str], steps: int, views: int = 96, val_views: int = 16,
          batch: int = 4, lr: float = 3e-4, seed: int = 0, device: str = "auto", eval_every: int = 50,
          save_every: int = 50, config: LearnedConfig | None = None, progress: bool = True,
          threads: int | None = 1, rotate: bool = True, coarse_weight: float = 1.0,
          descriptor_weight: float = 1.0, teacher=None) -> dict:
    """Train (or resume) into ``out``; returns the history. ``teacher``: the lifted scene settings
    that teach the point descriptors (:func:`~.data.make_training_map`)."""
    from gsvisloc_ros.features import make_encoder

    if threads:
        torch.set_num_threads(threads)
    device = _device(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out / "checkpoint.pt"
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=True) if checkpoint_path.is_file() else None
    config = LearnedConfig.from_dict(state["config"]) if state else (config or LearnedConfig())
    torch.manual_seed(seed)
    model = LearnedMatcher(config).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    history = {"step": [], "loss": [], "eval_step": [], "val_recall": [], "train_recall": [],
               "val_descriptor_recall": [], "train_descriptor_recall": [], "seconds": 0.0}
    start_step = 0
    if state:
        model.load_state_dict(state["state_dict"])
        optimiser.load_state_dict(state["optimizer"])
        history = json.loads(state["history"])
        start_step = int(state["step"])
        log.info("resuming from step %d", start_step)
    xfeat = make_encoder("xfeat", device)
    data_dir = out / "data"
    train_data = [load_or_make_training_map(n, data_dir, xfeat, config, views, seed, progress, teacher)
                  for n in train_maps]
    val_data = [load_or_make_training_map(n, data_dir, xfeat, config, val_views, seed + 1000, progress, teacher)
                for n in val_maps]
    train_tensors = [hierarchy_tensors(d.hierarchy, device) for d in train_data]
    val_tensors = [hierarchy_tensors(d.hierarchy, device) for d in val_data]

    def save(step: int) -> None:
        torch.save({"format": "gsvisloc-learned-checkpoint/1", "config": config.to_dict(), "step": step,
                    "state_dict": model.state_dict(), "optimizer": optimiser.state_dict(),
                    "history": json.dumps(history)}, checkpoint_path)
        plot_curves(history, out / "curves.png")

    model.train()
    began = time.perf_counter()
    bar = tqdm(range(start_step, steps), initial=start_step, total=steps, desc="training", disable=not progress)
    for step in bar:
        rng = np.random.default_rng(np.random.SeedSequence((seed, step)))
        m = int(rng.integers(len(train_data)))
        data = train_data[m]
        chosen = rng.choice(len(data.cells), size=min(batch, len(data.cells)), replace=False)
        tensors = train_tensors[m]
        if rotate:  # the map turned at random about its centre's z axis (see rotated_tensors)
            from scipy.spatial.transform import Rotation

            turn = Rotation.from_euler("z", rng.uniform(0.0, 360.0), degrees=True).as_matrix()
            tensors = rotated_tensors(tensors, turn)
        loss, confidence, truth, points = step_batch(model, data, tensors, chosen, device, coarse_weight,
                                                     descriptor_weight, rng)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        history["step"].append(step + 1)
        history["loss"].append(float(loss.detach()))
        bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", map=data.name)
        last = step + 1 == steps
        if (step + 1) % eval_every == 0 or last:
            history["eval_step"].append(step + 1)
            history["train_recall"].append(match_recall(confidence.detach(), truth, data.cells.shape[2])
                                           if confidence is not None else float("nan"))
            history["train_descriptor_recall"].append(_point_recall(points.detach(), data, config, device))
            region, descriptor = (evaluate(model, val_data, val_tensors, device, coarse=bool(coarse_weight))
                                  if val_data else (float("nan"), float("nan")))
            history["val_recall"].append(region)
            history["val_descriptor_recall"].append(descriptor)
            log.info("step %d: loss %.3f; region recall: batch %.3f, held out %.3f; point descriptor recall: "
                     "batch map %.3f, held out %.3f", step + 1, history["loss"][-1], history["train_recall"][-1],
                     region, history["train_descriptor_recall"][-1], descriptor)
        if (step + 1) % save_every == 0 or last:
            history["seconds"] = history.get("seconds", 0.0) + time.perf_counter() - began
            began = time.perf_counter()
            save(step + 1)
    history["train_maps"], history["val_maps"], history["device"] = train_maps, val_maps, device
    history["views"], history["val_views"], history["batch"], history["lr"], history["seed"] = (
        views, val_views, batch, lr, seed)
    history["rotate"] = rotate
    history["coarse_weight"], history["descriptor_weight"] = coarse_weight, descriptor_weight
    history["model"] = model
    return history


def plot_curves(history: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    loss = np.asarray(history["loss"])
    if len(loss):
        k = max(1, len(loss) // 50)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        a.plot(history["step"], loss, alpha=0.3, label="loss")
        a.plot(history["step"][k - 1:], smooth, label=f"mean of {k}")
    a.set_xlabel("step")
    a.set_ylabel("loss (dual-softmax NLL + point descriptors)")
    a.legend()
    b.plot(history["eval_step"], history["train_recall"], "o-", label="regions: training batch")
    b.plot(history["eval_step"], history["val_recall"], "s-", label="regions: held-out maps")
    b.plot(history["eval_step"], history.get("train_descriptor_recall", []), "o--", label="points: training map")
    b.plot(history["eval_step"], history.get("val_descriptor_recall", []), "s--", label="points: held-out maps")
    b.set_xlabel("step")
    b.set_ylabel("recall")
    b.set_title("regions: best patch within 1 patch; points: within 2 cells", fontsize=9)
    b.set_ylim(0, 1)
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run(args: argparse.Namespace) -> int:
    """Train as ``args`` say (:func:`gsvisloc_ros.cli.train_encoder.add_arguments`); prints the run's summary."""
    train_maps = [m for m in args.train_maps.split(",") if m]
    val_maps = [m for m in args.val_maps.split(",") if m]
    overlap = set(train_maps) & set(val_maps)
    if overlap:
        raise ValueError(f"maps both trained on and held out: {sorted(overlap)}")
    history = train(Path(args.out), train_maps, val_maps, args.steps, args.views, args.val_views, args.batch,
                    args.lr, args.seed, args.device, args.eval_every, args.save_every,
                    config=LearnedConfig.from_dict(json.loads(args.config)), progress=True,
                    threads=args.threads or None, rotate=not args.no_rotate, coarse_weight=args.coarse_weight,
                    descriptor_weight=args.descriptor_weight)
    model = history.pop("model")
    summary = {k: history[k] for k in ("train_maps", "val_maps", "device", "views", "val_views", "batch", "lr",
                                       "seed", "rotate", "coarse_weight", "descriptor_weight")}
    summary["config"] = model.config.to_dict()
    summary.update(steps=args.steps, final_loss_mean_last_50=float(np.mean(history["loss"][-50:])),
                   val_recall=history["val_recall"][-1] if history["val_recall"] else None,
                   recall_curve={"step": history["eval_step"], "training_batch": history["train_recall"],
                                 "held_out": history["val_recall"],
                                 "descriptor_training_map": history["train_descriptor_recall"],
                                 "descriptor_held_out": history["val_descriptor_recall"]},
                   train_seconds=round(history.get("seconds", 0.0), 1), commit=_commit(),
                   command=" ".join(sys.argv), date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    print(json.dumps(summary))
    if args.export:
        save_weights(model, args.export, provenance=summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    from gsvisloc_ros.cli.train_encoder import add_arguments

    parser = argparse.ArgumentParser(prog="python -m gsvisloc_ros.learned.train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return run(args)
    except ValueError as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    sys.exit(main())
