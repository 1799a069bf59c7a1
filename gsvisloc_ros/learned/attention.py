"""Interleaved self- and cross-attention between 3D regions and image patches (linear attention).

Linear attention (Katharopoulos et al. 2020): softmax(Q K^T) V is replaced by
phi(Q) (phi(K)^T V) / (phi(Q) sum_j phi(K_j)) with phi = elu + 1, so a layer costs
O((R + P) d^2) instead of O(R P d): a few thousand regions against a thousand patches stay cheap
on a CPU. A layer follows LoFTR's encoder layer: multi-head message, merge, norm, then an MLP on
[x, message], norm, residual. Positions enter once, before the first layer: an MLP of the
region's normalised 3D position and of the patch's normalised 2D position, added to the features.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import LearnedConfig


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Multi-head linear attention; q [B, L, H, D], k and v [B, S, H, D] -> [B, L, H, D]."""
    q = nn.functional.elu(q) + 1
    k = nn.functional.elu(k) + 1
    kv = torch.einsum("bshd,bshe->bhde", k, v)
    normaliser = 1.0 / (torch.einsum("blhd,bhd->blh", q, k.sum(dim=1)) + eps)
    return torch.einsum("blhd,bhde,blh->blhe", q, kv, normaliser)


class AttentionLayer(nn.Module):
    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads, self.dim = heads, d_model // heads
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.merge = nn.Linear(d_model, d_model, bias=False)
        self.mlp = nn.Sequential(nn.Linear(2 * d_model, 2 * d_model, bias=False), nn.ReLU(),
                                 nn.Linear(2 * d_model, d_model, bias=False))
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        q = self.q(x).view(b, -1, self.heads, self.dim)
        k = self.k(source).view(b, -1, self.heads, self.dim)
        v = self.v(source).view(b, -1, self.heads, self.dim)
        message = self.norm1(self.merge(linear_attention(q, k, v).reshape(b, -1, self.heads * self.dim)))
        return x + self.norm2(self.mlp(torch.cat([x, message], dim=-1)))


class RegionPatchTransformer(nn.Module):
    """Regions [B, R, d] and patches [B, P, d] (with their positions) -> both, attended."""

    def __init__(self, config: LearnedConfig) -> None:
        super().__init__()
        d = config.d_model
        self.region_position = nn.Sequential(nn.Linear(3, d), nn.ReLU(), nn.Linear(d, d))
        self.patch_position = nn.Sequential(nn.Linear(2, d), nn.ReLU(), nn.Linear(d, d))
        self.kinds = list(config.layers)
        self.layers = nn.ModuleList(AttentionLayer(d, config.heads) for _ in self.kinds)

    def forward(self, regions: torch.Tensor, region_xyz: torch.Tensor, patches: torch.Tensor,
                patch_uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = regions + self.region_position(region_xyz)
        p = patches + self.patch_position(patch_uv)
        for kind, layer in zip(self.kinds, self.layers, strict=True):
            if kind == "self":
                r, p = layer(r, r), layer(p, p)
            else:
                r = layer(r, p)
                p = layer(p, r)
        return r, p
