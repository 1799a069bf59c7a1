"""The differentiable renderer against the references: images, and gradients of every parameter and the pose.

The oracle is the torch twin of the reference renderer (every Gaussian over every pixel, autograd);
the twin itself is checked against the numpy reference, and the fast forward against the product's
CPU renderer. Scenes are random and tiny, so that the oracle stays fast.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gsvisloc_ros.camera import PinholeCamera, invert_pose, look_at
from gsvisloc_ros.gaussians import GaussianMap
from gsvisloc_ros.render import render
from gsvisloc_ros.render.differentiable import render_torch
from gsvisloc_ros.render.reference_torch import render_reference_torch

CAMERA = PinholeCamera(40.0, 42.0, 23.5, 15.2, 48, 32)
NAMES = ("means", "log_scales", "quats", "opacity_logits", "sh")


def random_scene(seed: int, n: int = 30, degree: int = 3, dense: bool = False):
    """Trainable tensors (float64) of n random Gaussians in front of the camera, and its extrinsics."""
    rng = np.random.default_rng(seed)
    T = invert_pose(look_at(rng.uniform(-0.3, 0.3, 3) + [0, 0, -3.0], rng.uniform(-0.1, 0.1, 3)))
    opacity = rng.uniform(1.0, 5.0, n) if dense else rng.uniform(-2.0, 3.0, n)
    params = [
        rng.uniform(-0.8, 0.8, (n, 3)),
        rng.uniform(-2.3, -1.0, (n, 3)) if dense else rng.uniform(-2.8, -1.3, (n, 3)),
        rng.normal(size=(n, 4)),
        opacity,
        rng.normal(0.0, 0.5, (n, (degree + 1) ** 2, 3)),
    ]
    return [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in params], T


def gradients(render_fn, params, T, degree, weights, background):
    pose = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    for p in params:
        p.grad = None
    image = render_fn(*params, degree, CAMERA, T, pose_delta=pose, background=background)
    (image.double() * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in zip(NAMES, params, strict=True)}
    return image.detach().double(), {**grads, "pose": pose.grad}


@pytest.mark.parametrize(
    ("seed", "degree", "dense"),
    [(0, 0, False), (1, 1, False), (2, 2, True), (3, 3, False), (4, 3, True)],
)
def test_gradients_match_the_reference(seed, degree, dense):
    params, T = random_scene(seed, degree=degree, dense=dense)
    rng = np.random.default_rng(100 + seed)
    weights = torch.tensor(rng.normal(size=(CAMERA.height, CAMERA.width, 3)))
    background = (0.1, 0.3, 0.2)
    fast_image, fast = gradients(render_torch, params, T, degree, weights, background)
    ref_image, ref = gradients(render_reference_torch, params, T, degree, weights, background)
    assert float((fast_image - ref_image).abs().max()) < 1e-4
    if dense:  # the dense scenes reach saturated pixels and clamped alphas
        assert float(ref_image.std()) > 0.05
    for name in ref:
        error = float((fast[name] - ref[name]).norm() / ref[name].norm())
        assert ref[name].norm() > 0, name
        assert error < 1e-3, f"{name}: relative error {error:.2e}"


def test_pose_gradient_is_the_derivative_of_the_image():
    """Finite differences of the reference itself along each se(3) direction (the oracle's own check)."""
    params, T = random_scene(7, n=12, degree=1)
    weights = torch.tensor(np.random.default_rng(7).normal(size=(CAMERA.height, CAMERA.width, 3)))
    _, fast = gradients(render_torch, params, T, 1, weights, (0.0, 0.0, 0.0))

    def loss(xi):
        with torch.no_grad():
            image = render_reference_torch(*params, 1, CAMERA, T, pose_delta=torch.tensor(xi))
        return float((image * weights).sum())

    h = 1e-6
    numeric = np.array([(loss(h * e) - loss(-h * e)) / (2 * h) for e in np.eye(6)])
    np.testing.assert_allclose(fast["pose"].numpy(), numeric, rtol=2e-3, atol=1e-3 * np.abs(numeric).max())


def _as_map(params) -> GaussianMap:
    means, log_scales, quats, logits, sh = (p.detach().numpy() for p in params)
    return GaussianMap(means, quats / np.linalg.norm(quats, axis=1, keepdims=True), np.exp(log_scales),
                       1.0 / (1.0 + np.exp(-logits)), sh)  # fmt: skip


@pytest.mark.parametrize("dense", [False, True])
def test_forward_matches_the_product_renderer_and_the_twin_the_reference(dense):
    params, T = random_scene(11, n=40, dense=dense)
    gmap = _as_map(params)
    background = (0.2, 0.1, 0.0)
    with torch.no_grad():
        fast = render_torch(*params, 3, CAMERA, T, background=background).numpy()
        twin = render_reference_torch(*params, 3, CAMERA, T, background=background).numpy()
    product = render(gmap, CAMERA, T, backend="cpu", background=background).rgb
    reference = render(gmap, CAMERA, T, backend="reference", background=background).rgb
    assert np.abs(fast - product).max() < 1e-4
    assert np.abs(twin - reference).max() < 1e-5
    assert reference.std() > 0.05


def test_culled_and_faint_gaussians_get_zero_gradients():
    params, T = random_scene(5, n=10, degree=0)
    with torch.no_grad():
        params[0][0] = torch.tensor([0.0, 0.0, -5.0])  # behind the camera
        params[3][1] = -8.0  # opacity ~ 3e-4 < 1/255: never drawn
    image = render_torch(*params, 0, CAMERA, T)
    image.sum().backward()
    for p in params:
        assert torch.all(p.grad[:2] == 0)
        assert torch.isfinite(p.grad).all()
