"""The learned matcher: 3D encoder + image head + attention + dual-softmax, and its weights file.

Weights files are plain ``torch.save`` dicts of tensors and JSON-like values
(``{"format", "config", "state_dict"}``) loaded with ``torch.load(..., weights_only=True)``: no
pickle code ever runs. A JSON file with the same stem beside them records their provenance.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
from pathlib import Path

import torch
from torch import nn

from .attention import RegionPatchTransformer
from .config import LearnedConfig
from .gaussian_encoder import GaussianEncoder
from .image_head import ImageHead, patch_positions
from .matching import dual_softmax

FORMAT = "gsvisloc-learned-matcher/2"
#: The weights shipped in the package (``gsvisloc_ros/learned/weights/``).
PACKAGED_WEIGHTS = "matcher.pt"


class LearnedMatcher(nn.Module):
    """Regions of a map (from :class:`GaussianEncoder`) x patches of images -> scores and confidence."""

    def __init__(self, config: LearnedConfig | None = None) -> None:
        super().__init__()
        self.config = config or LearnedConfig()
        self.gaussians = GaussianEncoder(self.config)
        self.image = ImageHead(self.config)
        self.attention = RegionPatchTransformer(self.config)

    def encode_scene(self, tensors: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(region descriptors [R, d], point descriptors [N0, 64]) of a map (``tensors``:
        :func:`~.gaussian_encoder.hierarchy_tensors`)."""
        return self.gaussians(tensors)

    def match(self, regions: torch.Tensor, region_xyz: torch.Tensor, cells: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(scores, confidence) [B, R, P] of region descriptors [R, d] at normalised positions [R, 3]
        against the cells [B, h, w, 79] of B images (:func:`~.image_head.image_cells`)."""
        b, h, w, _ = cells.shape
        patches = self.image(cells)
        r, p = self.attention(regions.expand(b, -1, -1), region_xyz, patches, patch_positions(h, w, cells.device))
        return dual_softmax(r, p, self.config.temperature)


def packaged_weights() -> Path:
    return Path(str(importlib.resources.files("gsvisloc_ros.learned").joinpath("weights", PACKAGED_WEIGHTS)))


def save_weights(model: LearnedMatcher, path: str | Path, provenance: dict | None = None) -> None:
    """Write the weights (and, with ``provenance``, the JSON beside them, with the weights' SHA-256)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    torch.save({"format": FORMAT, "config": model.config.to_dict(), "state_dict": state}, path)
    if provenance is not None:
        record = {**provenance, "weights_sha256": weights_hash(path)}
        path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")


def load_weights(path: str | Path | None = None, device: str | torch.device = "cpu") -> LearnedMatcher:
    """A matcher from a weights file (default: the packaged one), loaded without pickle execution."""
    path = Path(path) if path is not None else packaged_weights()
    if not path.is_file():
        raise FileNotFoundError(f"no learned matcher weights at {path} "
                                "(train them: python -m gsvisloc_ros.learned.train)")
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a learned matcher weights file ({FORMAT})")
    model = LearnedMatcher(LearnedConfig.from_dict(data["config"]))
    model.load_state_dict(data["state_dict"])
    return model.to(device).eval()


def weights_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
