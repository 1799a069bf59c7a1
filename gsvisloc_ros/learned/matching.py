"""Coarse matching of regions and patches: dual-softmax scores, matches, loss and sub-patch position.

Scores (LoFTR): S = <r, p> / d / temperature; confidence = softmax over patches x softmax over
regions. A match is a mutual best pair with confidence above a threshold (the paper: 0.3). Its
2D position is refined inside the patch grid as the expectation over the 3x3 patches around the
matched one, weighted by the region's softmax scores (a coarse stand-in for the paper's 5x5 fine
heatmap; the localizer's render-and-match refinement does the sub-pixel work).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def dual_softmax(regions: torch.Tensor, patches: torch.Tensor, temperature: float) -> tuple[torch.Tensor, ...]:
    """(scores, confidence), both [B, R, P], from regions [B, R, d] and patches [B, P, d]."""
    scores = torch.einsum("brd,bpd->brp", regions, patches) / (regions.shape[-1] * temperature)
    return scores, torch.softmax(scores, dim=2) * torch.softmax(scores, dim=1)


def coarse_loss(scores: torch.Tensor, truth: list[np.ndarray]) -> torch.Tensor:
    """Mean negative log dual-softmax confidence of the ground-truth (region, patch) pairs of each
    image, computed in log space (log-softmax over patches + over regions: no underflow with
    thousands of regions and patches).

    ``scores``: [B, R, P] from :func:`dual_softmax`; ``truth``: per image, [M, 2] int rows
    (region, patch); images without any are skipped.
    """
    terms = []
    for b, pairs in enumerate(truth):
        if len(pairs):
            index = torch.from_numpy(np.asarray(pairs, np.int64)).to(scores.device)
            s = scores[b]
            log_confidence = (torch.log_softmax(s[index[:, 0]], dim=1).gather(1, index[:, 1:2])[:, 0]
                              + torch.log_softmax(s[:, index[:, 1]], dim=0).gather(0, index[None, :, 0])[0])
            terms.append(-log_confidence)
    if not terms:
        return scores.sum() * 0.0
    return torch.cat(terms).mean()


@dataclass
class CoarseMatches:
    region: np.ndarray  # [M] int
    patch: np.ndarray  # [M] int
    confidence: np.ndarray  # [M] float32
    uv: np.ndarray  # [M, 2] float64 pixel positions in the matcher's image (sub-patch)


def mutual_matches(scores: torch.Tensor, confidence: torch.Tensor, grid: tuple[int, int], threshold: float,
                   cell_uv: np.ndarray) -> CoarseMatches:
    """Mutual best pairs above ``threshold`` of one image (scores and confidence [R, P]) and their
    sub-patch positions; ``grid``: (rows, cols) of the patches; ``cell_uv``: their centres [P, 2]."""
    conf = confidence
    best_patch = conf.argmax(dim=1)
    best_region = conf.argmax(dim=0)
    region = torch.arange(conf.shape[0], device=conf.device)
    mutual = best_region[best_patch] == region
    value = conf[region, best_patch]
    keep = mutual & (value > threshold)
    region, patch, value = region[keep], best_patch[keep], value[keep]
    uv = _sub_patch(scores[region], patch, grid, cell_uv)
    return CoarseMatches(region.cpu().numpy(), patch.cpu().numpy(), value.float().cpu().numpy(), uv)


def _sub_patch(scores: torch.Tensor, patch: torch.Tensor, grid: tuple[int, int], cell_uv: np.ndarray) -> np.ndarray:
    """Expected position over the 3x3 patches around each matched patch (softmax of the region's scores)."""
    rows, cols = grid
    if len(patch) == 0:
        return np.zeros((0, 2))
    r, c = patch // cols, patch % cols
    dr, dc = torch.meshgrid(torch.arange(-1, 2), torch.arange(-1, 2), indexing="ij")
    nr = (r[:, None] + dr.reshape(1, -1).to(r.device)).clamp(0, rows - 1)
    nc = (c[:, None] + dc.reshape(1, -1).to(r.device)).clamp(0, cols - 1)
    neighbours = nr * cols + nc  # [M, 9]
    weight = torch.softmax(torch.gather(scores, 1, neighbours), dim=1).cpu().numpy()
    return np.einsum("mn,mnx->mx", weight, cell_uv[neighbours.cpu().numpy()])


def match_recall(confidence: torch.Tensor, truth: list[np.ndarray], cols: int) -> float:
    """Fraction of ground-truth regions whose best patch is their true patch or one of its 8 neighbours."""
    hits, total = 0, 0
    for b, pairs in enumerate(truth):
        if len(pairs) == 0:
            continue
        pairs = np.asarray(pairs)
        rows = torch.from_numpy(pairs[:, 0].astype(np.int64)).to(confidence.device)
        best = confidence[b, rows].argmax(dim=1).cpu().numpy()
        close = (np.abs(best // cols - pairs[:, 1] // cols) <= 1) & (np.abs(best % cols - pairs[:, 1] % cols) <= 1)
        hits += int(close.sum())
        total += len(pairs)
    return hits / max(total, 1)
