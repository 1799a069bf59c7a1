"""Point descriptors taught by the lifted encoder: their targets, loss and recall.

The 3D encoder's decoder gives each sampled Gaussian a descriptor in XFeat's space
(:class:`~.gaussian_encoder.GaussianEncoder`). Its teacher at training time is the lifted scene
of the same map (:func:`gsvisloc_ros.scene.encode_scene`: XFeat descriptors of ~1,000 renders,
lifted onto the surface and fused into landmarks). A Gaussian's target is the renormalised mean
descriptor of the landmarks nearest to it within ``radius`` (:func:`point_targets`); Gaussians
without one are not taught. At use no view is rendered: the network predicts what the renders
would have shown.

Loss (:func:`descriptor_loss`): InfoNCE over a random sample of the taught Gaussians (each
prediction must pick its own target among the sample's, temperature 0.07), which makes the
descriptors discriminative as nearest-neighbour matching needs, plus their mean cosine distance.
Recall (:func:`descriptor_recall`): the fraction of taught Gaussians whose target's nearest
prediction belongs to a Gaussian within ``radius`` of it, what matching a query keypoint (whose
descriptor resembles the target) to the predictions needs.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree


def point_targets(points: np.ndarray, landmarks: np.ndarray, descriptors: np.ndarray,
                  radius: float) -> tuple[np.ndarray, np.ndarray]:
    """(targets [N, D] float32, taught [N] bool) of ``points`` from the landmarks (positions
    [L, 3], unit descriptors [L, D]) whose nearest point they are, within ``radius``."""
    distance, nearest = cKDTree(points).query(landmarks)
    close = distance <= radius
    targets = np.zeros((len(points), descriptors.shape[1]), np.float64)
    np.add.at(targets, nearest[close], descriptors[close].astype(np.float64))
    norm = np.linalg.norm(targets, axis=1)
    taught = norm > 1e-6
    targets[taught] /= norm[taught, None]
    return targets.astype(np.float32), taught


def descriptor_loss(predicted: torch.Tensor, targets: torch.Tensor, sample: torch.Tensor,
                    temperature: float = 0.07) -> torch.Tensor:
    """InfoNCE + cosine distance of ``predicted`` [N, D] against ``targets`` [N, D] (unit norm) on
    the rows ``sample`` (taught Gaussians)."""
    p, t = predicted[sample], targets[sample]
    logits = p @ t.T / temperature
    labels = torch.arange(len(sample), device=predicted.device)
    return torch.nn.functional.cross_entropy(logits, labels) + (1.0 - (p * t).sum(dim=1)).mean()


def descriptor_recall(predicted: torch.Tensor, targets: torch.Tensor, taught: np.ndarray, points: np.ndarray,
                      radius: float, limit: int = 4000, seed: int = 0) -> float:
    """Fraction of (up to ``limit``) taught Gaussians whose target's nearest prediction (over all
    Gaussians) lies within ``radius`` of the Gaussian."""
    rows = np.flatnonzero(taught)
    if len(rows) == 0:
        return float("nan")
    if len(rows) > limit:
        rows = np.sort(np.random.default_rng(seed).choice(rows, limit, replace=False))
    with torch.inference_mode():
        best = (targets[torch.from_numpy(rows).to(targets.device)] @ predicted.T).argmax(dim=1).cpu().numpy()
    return float(np.mean(np.linalg.norm(points[best] - points[rows], axis=1) <= radius))
