"""Settings of the learned scene encoder and matcher, saved with its weights.

One dataclass holds everything that must be the same at training and at use: how the Gaussians
are sampled and grouped into regions (the point hierarchy), the network's sizes, and the image
size the matcher works at. The weights file carries it (``config`` beside ``state_dict``), so a
checkpoint always rebuilds the network it was trained as.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class LearnedConfig:
    """Architecture and hierarchy of the learned matcher.

    Attributes:
        min_opacity: the opacity above which Gaussians define the map's centre and radius (as for
            the lifted encoder, whose geometry analysis it shares).
        sample_opacity: Gaussians below this opacity are not encoded. The paper drops < 0.9; the
            shared captures hold few that opaque (plant: 12k of 114k at >= 0.5, 35k at >= 0.3), and
            the semi-transparent ones carry much of a surface's colour.
        max_gaussians: at most this many of those Gaussians, drawn uniformly (seeded), are encoded.
        voxels: grid sizes of the hierarchy's levels, as fractions of the map's radius (median
            distance of the opaque Gaussians to their centre): level 0 groups the sampled Gaussians,
            the last level's cells are the coarse regions matched against image patches. At the
            default 320-pixel working side, a 0.12-radius region is about two 8-pixel patches at the
            typical viewing distance (measured on the shared captures: ~12k opaque Gaussians ->
            4-5k level-1 points -> 1.5-2.2k regions; at 0.06, 4-5.5k regions made a training step
            ~4 s on one core instead of ~0.7 s).
        neighbours: neighbours (nearest, within the kernel radius) of each point convolution.
        kernel_radius: radius of a point convolution, in cells of its input level.
        widths: channels of the three levels of the point network (the paper: 128, 256, 512 on a GPU;
            narrower here for one CPU core).
        d_model: width of the attention and of the matched descriptors.
        heads: attention heads.
        layers: the attention layers, in order (``"self"`` or ``"cross"``).
        temperature: dual-softmax temperature.
        image_side: the longest side of the image the matcher works at (the query is resized to it).
        seed: seed of the Gaussian sampling.
    """

    min_opacity: float = 0.5
    sample_opacity: float = 0.3
    max_gaussians: int = 24000
    voxels: tuple[float, float, float] = (0.03, 0.06, 0.12)
    neighbours: int = 16
    kernel_radius: float = 2.5
    widths: tuple[int, int, int] = (24, 48, 64)
    d_model: int = 64
    heads: int = 4
    layers: tuple[str, ...] = ("self", "cross", "self", "cross")
    temperature: float = 0.1
    image_side: int = 320
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.voxels) != 3 or len(self.widths) != 3:
            raise ValueError("voxels and widths need three levels each")
        if any(v <= 0 for v in self.voxels) or list(self.voxels) != sorted(self.voxels):
            raise ValueError(f"voxels must be positive and increasing, got {self.voxels}")
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if any(kind not in ("self", "cross") for kind in self.layers):
            raise ValueError(f"layers must be 'self' or 'cross', got {self.layers}")
        if self.image_side < 64 or self.image_side % 8:
            raise ValueError(f"image_side must be a multiple of 8 and >= 64, got {self.image_side}")
        if self.max_gaussians < 100 or self.neighbours < 4:
            raise ValueError("max_gaussians must be >= 100 and neighbours >= 4")

    def hierarchy_key(self) -> str:
        """A short hash of the settings that decide the regions (training data depends on them)."""
        import hashlib
        import json

        fields_ = ("min_opacity", "sample_opacity", "max_gaussians", "voxels", "image_side", "seed")
        text = json.dumps({k: self.to_dict()[k] for k in fields_}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> LearnedConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known})
