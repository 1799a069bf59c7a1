"""Fit 3D Gaussians to posed photos on the CPU (the 3DGS recipe of Kerbl et al. / gsplat, scaled down).

* Initialisation: the SfM points when the photo set has them (scale from the 3 nearest
  neighbours, colour from the point), else random points in the region every camera looks at;
  opacity 0.1, identity rotations.
* Loss: 0.8 L1 + 0.2 D-SSIM on one training photo per step (shuffled epochs).
* Adam with the standard per-parameter learning rates; the means' rate scales with the scene and
  decays exponentially to 1 % at the end. SH degree raised by one every ``sh_interval`` steps.
* Densification every ``densify_every`` steps between ``densify_from`` and ``densify_until``: the
  Gaussians whose 2D mean gradient (mean over the views that drew them, in the 3DGS units of
  half-image widths) exceeds ``grad_threshold`` are cloned when small and split in two when large;
  the most urgent ones first when ``max_gaussians`` would be exceeded. Pruning of faint ones
  (opacity < 0.005) and, after the first opacity reset, of ones larger than 10 % of the scene.
  Opacities are reset to 0.01 every ``opacity_reset_every`` steps while densifying.
* Optional per-image affine colour correction (``exposure``): the render of training photo i is
  ``A_i rgb + b_i`` while fitting, so one photo's exposure is not baked into the map; the map
  itself (and every PSNR reported) uses no correction.

Everything random is drawn from ``seed``: two runs with the same inputs give the same map.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.spatial import cKDTree

from ..camera import PinholeCamera, invert_pose
from ..gaussians import SH_C0, GaussianMap
from ..io.photosets import PhotoSet, load_photo
from ..render.differentiable import project, quat_rotations, rasterize_torch
from ..render.formation import ALPHA_MIN
from .losses import fit_loss, psnr

logger = logging.getLogger(__name__)


@dataclass
class FitConfig:
    """Settings of a fit; the defaults fit a room-sized photo set at 480 px in minutes on 2 cores."""

    iterations: int = 3000
    max_size: int | None = 480  # longer image side in pixels; None: full resolution
    test_every: int = 8  # every N-th photo (by name, from the first) is held out; 0: none
    max_gaussians: int = 100_000
    seed: int = 0
    sh_degree: int = 3
    sh_interval: int = 500
    densify_from: int = 300
    densify_until: float = 0.6  # fraction of the iterations
    densify_every: int = 100
    grad_threshold: float = 2e-4
    opacity_reset_every: int = 3000
    exposure: bool = False
    ssim_weight: float = 0.2
    random_points: int = 20_000  # initial Gaussians when the photo set has no SfM points
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    # Adam learning rates (gsplat's defaults); the means' is multiplied by the scene scale.
    lr_means: float = 1.6e-4
    lr_means_final: float = 1.6e-6
    lr_log_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 2.5e-3
    lr_shn: float = 2.5e-3 / 20
    lr_exposure: float = 1e-3

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {self.iterations}")
        if self.max_gaussians < 1:
            raise ValueError(f"max_gaussians must be at least 1, got {self.max_gaussians}")
        if self.test_every < 0:
            raise ValueError(f"test_every must be 0 (no test photos) or positive, got {self.test_every}")
        if self.max_size is not None and self.max_size < 8:
            raise ValueError(f"max_size must be at least 8 pixels, got {self.max_size}")


@dataclass
class View:
    """A photo ready for fitting: camera at the fit's resolution, extrinsics, image tensor."""

    name: str
    camera: PinholeCamera
    T_camera_world: np.ndarray
    image: torch.Tensor  # [H, W, 3] float32


@dataclass
class FitResult:
    gmap: GaussianMap
    train_views: list[View]
    test_views: list[View]
    seconds: float
    iterations: int
    history: list[dict] = field(default_factory=list)


def split_views(photo_set: PhotoSet, config: FitConfig) -> tuple[list[View], list[View]]:
    """Load every photo (undistorted, resized) and split them: (train, test)."""
    train, test = [], []
    size = None
    for i, photo in enumerate(photo_set.photos):
        camera, image = load_photo(photo, config.max_size)
        if size is None:
            size = camera.size
        view = View(photo.name, camera, invert_pose(photo.T_world_camera), torch.from_numpy(image))
        (test if config.test_every and i % config.test_every == 0 else train).append(view)
    if not train:
        raise ValueError("every photo is held out for testing; choose a larger --test-every")
    return train, test


def scene_scale(views: list[View]) -> float:
    """1.1 x the largest distance of a camera centre from their mean (the 3DGS 'cameras extent')."""
    centres = np.array([invert_pose(v.T_camera_world)[:3, 3] for v in views])
    return 1.1 * max(float(np.linalg.norm(centres - centres.mean(0), axis=1).max()), 1e-6)


def _random_points(views: list[View], count: int, rng: np.random.Generator) -> np.ndarray:
    """Points in the region all cameras look at: a ball around the point nearest every optical axis."""
    centres, axes = [], []
    for v in views:
        T = invert_pose(v.T_camera_world)
        centres.append(T[:3, 3])
        axes.append(T[:3, 2])
    centres, axes = np.array(centres), np.array(axes)
    # Least-squares point nearest to every optical axis: sum (I - a a^T) (x - c) = 0.
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for c, a in zip(centres, axes, strict=True):
        P = np.eye(3) - np.outer(a, a)
        A += P
        b += P @ c
    target = np.linalg.lstsq(A, b, rcond=None)[0]
    distance = float(np.median(np.linalg.norm(centres - target, axis=1)))
    half_fov = min(0.5 * min(v.camera.width / v.camera.fx, v.camera.height / v.camera.fy) for v in views)
    radius = distance * half_fov
    points = rng.normal(size=(count, 3))
    points *= (radius * rng.uniform(0, 1, count) ** (1 / 3) / np.linalg.norm(points, axis=1))[:, None]
    return points + target


def initial_gaussians(photo_set: PhotoSet, views: list[View], config: FitConfig, rng: np.random.Generator) -> dict:
    """Trainable tensors (means, log_scales, quats, opacity logits, sh0, shN) of the starting map."""
    if photo_set.points is not None and len(photo_set.points) >= 4:
        means = photo_set.points.astype(np.float64)
        colors = photo_set.point_colors.astype(np.float64) / 255.0
        logger.info("initialised from %d SfM points", len(means))
    else:
        means = _random_points(views, config.random_points, rng)
        colors = rng.uniform(0.0, 1.0, (len(means), 3))
        logger.info("initialised from %d random points (the photo set has no SfM points)", len(means))
    if len(means) > config.max_gaussians:
        keep = rng.choice(len(means), config.max_gaussians, replace=False)
        means, colors = means[keep], colors[keep]
    dist, _ = cKDTree(means).query(means, k=4)
    nn = np.sqrt(np.mean(dist[:, 1:] ** 2, axis=1))
    nn = np.clip(nn, 1e-7, np.percentile(nn, 99) if len(nn) > 100 else None)
    n = len(means)
    k = (config.sh_degree + 1) ** 2
    quats = np.zeros((n, 4))
    quats[:, 0] = 1.0
    return {
        "means": torch.tensor(means, dtype=torch.float32),
        "log_scales": torch.tensor(np.log(nn)[:, None].repeat(3, 1), dtype=torch.float32),
        "quats": torch.tensor(quats, dtype=torch.float32),
        "opacity_logits": torch.full((n,), math.log(0.1 / 0.9), dtype=torch.float32),
        "sh0": torch.tensor((colors - 0.5) / SH_C0, dtype=torch.float32)[:, None, :],
        "shn": torch.zeros((n, k - 1, 3), dtype=torch.float32),
    }


class Adam:
    """Adam over named tensors whose rows can be added and removed (densification)."""

    def __init__(self, params: dict[str, torch.Tensor], lrs: dict[str, float], betas=(0.9, 0.999), eps=1e-15):
        self.params = params
        self.lrs = dict(lrs)
        self.betas = betas
        self.eps = eps
        self.step_count = 0
        self.m = {k: torch.zeros_like(v) for k, v in params.items()}
        self.v = {k: torch.zeros_like(v) for k, v in params.items()}

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        b1, b2 = self.betas
        c1 = 1 - b1**self.step_count
        c2 = 1 - b2**self.step_count
        for name, p in self.params.items():
            if p.grad is None:
                continue
            g = p.grad
            self.m[name].mul_(b1).add_(g, alpha=1 - b1)
            self.v[name].mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (self.v[name] / c2).sqrt_().add_(self.eps)
            p.addcdiv_(self.m[name], denom, value=-self.lrs[name] / c1)
            p.grad = None

    @torch.no_grad()
    def select(self, names, index: torch.Tensor) -> None:
        """Keep the rows ``index`` (a boolean mask or indices) of the tensors ``names`` and their moments."""
        for name in names:
            self.params[name] = self.params[name][index].clone().requires_grad_(True)
            self.m[name] = self.m[name][index].clone()
            self.v[name] = self.v[name][index].clone()

    @torch.no_grad()
    def append(self, new: dict[str, torch.Tensor]) -> None:
        """Add rows (with zero moments) to the tensors named in ``new``."""
        for name, rows in new.items():
            self.params[name] = torch.cat([self.params[name].detach(), rows]).requires_grad_(True)
            self.m[name] = torch.cat([self.m[name], torch.zeros_like(rows)])
            self.v[name] = torch.cat([self.v[name], torch.zeros_like(rows)])


GAUSSIAN_PARAMS = ("means", "log_scales", "quats", "opacity_logits", "sh0", "shn")


def use_workqueue_threads() -> None:
    """Run numba's parallel kernels on its own thread pool rather than OpenMP, if none ran yet.

    OpenMP workers spin after each parallel kernel (torch has loaded libgomp with its default
    wait policy by then); between the kernels of a step torch runs, and on a shared 2-core machine
    the spinning made steps 3-8x slower (0.57-1.5 s against 0.19 s, measured). numba's
    workqueue pool sleeps instead.
    """
    import numba

    try:
        numba.threading_layer()  # raises until a parallel kernel has run: the layer is not chosen yet
    except ValueError:
        numba.config.THREADING_LAYER = "workqueue"


class Trainer:
    """One fit: state and steps (see the module doc). :meth:`run` does it all."""

    def __init__(self, photo_set: PhotoSet, config: FitConfig):
        use_workqueue_threads()
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        torch.manual_seed(config.seed)
        self.train_views, self.test_views = split_views(photo_set, config)
        self.scale = scene_scale(self.train_views + self.test_views)
        params = {k: v.requires_grad_(True) for k, v in initial_gaussians(
            photo_set, self.train_views, config, self.rng).items()}  # fmt: skip
        lrs = {
            "means": config.lr_means * self.scale,
            "log_scales": config.lr_log_scales,
            "quats": config.lr_quats,
            "opacity_logits": config.lr_opacities,
            "sh0": config.lr_sh0,
            "shn": config.lr_shn,
        }
        if config.exposure:
            n = len(self.train_views)
            params["exposure"] = torch.cat([torch.eye(3).repeat(n, 1, 1), torch.zeros(n, 3, 1)], dim=2).requires_grad_()
            lrs["exposure"] = config.lr_exposure
        self.adam = Adam(params, lrs)
        self._reset_stats()
        self.history: list[dict] = []

    @property
    def params(self) -> dict[str, torch.Tensor]:
        return self.adam.params

    def __len__(self) -> int:
        return len(self.params["means"])

    def _reset_stats(self) -> None:
        n = len(self.adam.params["means"])
        self.grad_sum = torch.zeros(n)
        self.grad_count = torch.zeros(n)

    def sh_degree_at(self, step: int) -> int:
        return min(self.config.sh_degree, step // self.config.sh_interval)

    def render_view(self, view: View, step: int, with_exposure: int | None = None):
        """(rgb [H, W, 3] clipped, projection, drawn mask) of one view at training step ``step``."""
        p = self.params
        degree = self.sh_degree_at(step)
        sh = torch.cat([p["sh0"], p["shn"][:, : (degree + 1) ** 2 - 1]], dim=1)
        proj = project(p["means"], p["log_scales"], p["quats"], p["opacity_logits"], sh, degree,
                       view.camera, view.T_camera_world)  # fmt: skip
        rgb, drawn = rasterize_torch(proj, view.camera.width, view.camera.height, self.config.background)
        if with_exposure is not None:
            affine = p["exposure"][with_exposure]
            rgb = rgb @ affine[:, :3].T + affine[:, 3]
        return torch.clamp(rgb, 0.0, 1.0), proj, drawn

    def step(self, step: int, view_index: int) -> tuple[float, float]:
        """One optimisation step on training view ``view_index``: (loss, PSNR of the render)."""
        config = self.config
        view = self.train_views[view_index]
        rgb, proj, drawn = self.render_view(view, step, view_index if config.exposure else None)
        proj.uv.retain_grad()
        loss = fit_loss(rgb, view.image, config.ssim_weight)
        loss.backward()
        if step < config.densify_until * config.iterations:
            with torch.no_grad():
                g = proj.uv.grad * torch.tensor([0.5 * view.camera.width, 0.5 * view.camera.height])
                self.grad_sum += torch.where(drawn, g.norm(dim=1), 0.0)
                self.grad_count += drawn.float()
        t = step / max(1, config.iterations - 1)
        self.adam.lrs["means"] = self.scale * config.lr_means * (config.lr_means_final / config.lr_means) ** t
        self.adam.step()
        return float(loss.detach()), psnr(rgb, view.image)

    @torch.no_grad()
    def densify(self, step: int) -> None:
        config = self.config
        p = self.params
        n = len(self)
        avg = self.grad_sum / self.grad_count.clamp_min(1)
        candidates = torch.nonzero(avg > config.grad_threshold).flatten()
        room = config.max_gaussians - n
        if len(candidates) > max(room, 0):
            candidates = candidates[torch.argsort(avg[candidates], descending=True)[: max(room, 0)]]
        scales = torch.exp(p["log_scales"])
        large = scales[candidates].max(dim=1).values > 0.01 * self.scale
        clone, split = candidates[~large], candidates[large]
        # Clones: copies in place (the gradient pulls them apart). Splits: two samples from the
        # Gaussian at scale / 1.6, replacing it.
        new = {k: p[k][clone].detach().clone() for k in GAUSSIAN_PARAMS}
        samples = torch.randn((2, len(split), 3)) * scales[split][None]
        R = quat_rotations(p["quats"][split])
        for s in range(2):
            offset = torch.einsum("nij,nj->ni", R, samples[s])
            for k in GAUSSIAN_PARAMS:
                value = p[k][split].detach().clone()
                if k == "means":
                    value = value + offset
                elif k == "log_scales":
                    value = value - math.log(1.6)
                new[k] = torch.cat([new[k], value])
        keep = torch.ones(n, dtype=torch.bool)
        keep[split] = False
        self.adam.select(GAUSSIAN_PARAMS, keep)
        self.adam.append(new)
        pruned = self.prune(step)
        logger.debug("step %d: %d cloned, %d split, %d pruned -> %d Gaussians",
                     step, len(clone), len(split), pruned, len(self))  # fmt: skip
        self._reset_stats()

    @torch.no_grad()
    def prune(self, step: int) -> int:
        p = self.params
        opacity = torch.sigmoid(p["opacity_logits"])
        bad = opacity < 0.005
        if step > self.config.opacity_reset_every:
            bad |= torch.exp(p["log_scales"]).max(dim=1).values > 0.1 * self.scale
        if bad.any():
            self.adam.select(GAUSSIAN_PARAMS, ~bad)
        return int(bad.sum())

    @torch.no_grad()
    def reset_opacities(self) -> None:
        logits = self.params["opacity_logits"]
        logits.clamp_(max=math.log(0.01 / 0.99))
        self.adam.m["opacity_logits"].zero_()
        self.adam.v["opacity_logits"].zero_()

    def run(self, progress: bool = True) -> FitResult:
        # torch on one thread: its small per-step ops gain little from a second core, and its
        # spinning worker threads slowed steps 2-7x on a shared 2-core machine (measured); the
        # numba kernels still use every core.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._run(progress)
        finally:
            torch.set_num_threads(threads)

    def _run(self, progress: bool) -> FitResult:
        from tqdm import tqdm

        config = self.config
        start = time.perf_counter()
        order: list[int] = []
        densify_until = int(config.densify_until * config.iterations)
        bar = tqdm(range(config.iterations), desc="fit", unit="it", disable=not progress, dynamic_ncols=True)
        running = None
        for step in bar:
            if not order:
                order = list(self.rng.permutation(len(self.train_views)))
            loss, value = self.step(step, order.pop())
            running = value if running is None else 0.95 * running + 0.05 * value
            if config.densify_from <= step < densify_until:
                if step % config.densify_every == 0 and step > config.densify_from:
                    self.densify(step)
                if step and step % config.opacity_reset_every == 0:
                    self.reset_opacities()
            if step % 50 == 0 or step == config.iterations - 1:
                bar.set_postfix(psnr=f"{running:.2f}", gaussians=len(self), refresh=False)
                self.history.append({"step": step, "loss": loss, "psnr_db": running, "gaussians": len(self)})
        bar.close()
        seconds = time.perf_counter() - start
        logger.info("fitted %d Gaussians in %d steps, %.0f s", len(self), config.iterations, seconds)
        return FitResult(self.to_map(), self.train_views, self.test_views, seconds, config.iterations, self.history)

    @torch.no_grad()
    def to_map(self) -> GaussianMap:
        """The fitted Gaussians as a map (SH of the degree reached; never-drawn faint ones dropped)."""
        p = self.params
        degree = self.sh_degree_at(self.config.iterations - 1)
        opacities = torch.sigmoid(p["opacity_logits"]).numpy()
        keep = opacities >= ALPHA_MIN
        quats = p["quats"] / torch.linalg.norm(p["quats"], dim=1, keepdim=True).clamp_min(1e-12)
        sh = torch.cat([p["sh0"], p["shn"][:, : (degree + 1) ** 2 - 1]], dim=1)
        return GaussianMap(
            means=p["means"].numpy()[keep],
            quats=quats.numpy()[keep],
            scales=torch.exp(p["log_scales"]).numpy()[keep],
            opacities=opacities[keep],
            sh=sh.numpy()[keep],
        )


def fit(photo_set: PhotoSet, config: FitConfig | None = None, progress: bool = True) -> FitResult:
    """Fit a map to ``photo_set``; see the module doc."""
    return Trainer(photo_set, config or FitConfig()).run(progress)
