"""2D encoders on real photos with exact calibration (Middlebury temple ring), and their input checks.

Two adjacent views of the 16-view ring (22.5 degrees apart) are matched with mutual nearest
neighbours; the fundamental matrix from the published K, R, t says where every match must lie.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gsvisloc_ros.features import DenseFeatures, FeatureEncoder, Features, check_image, make_encoder
from gsvisloc_ros.matching import MatchingConfig, match_descriptors

ENCODERS = ["xfeat", "sift"]


@pytest.fixture(scope="module")
def encoders() -> dict[str, FeatureEncoder]:
    return {name: make_encoder(name, device="cpu") for name in ENCODERS}


@pytest.fixture(scope="module")
def temple(shared_data: Path):
    """Loader of (RGB image, K, R, t) for view i of templeSparseRing (x = K [R | t] X)."""
    cv2 = pytest.importorskip("cv2")
    root = shared_data / "middlebury" / "templeSparseRing"
    par = root / "templeSR_par.txt"
    if not par.is_file():
        pytest.skip(f"{par} is missing")
    calib = {}
    for line in par.read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) == 22:
            v = np.array(fields[1:], dtype=np.float64)
            calib[fields[0]] = (v[:9].reshape(3, 3), v[9:18].reshape(3, 3), v[18:])

    def load(i: int):
        name = f"templeSR{i:04d}.png"
        image = cv2.imread(str(root / name), cv2.IMREAD_COLOR)
        assert image is not None, name
        return (cv2.cvtColor(image, cv2.COLOR_BGR2RGB), *calib[name])

    return load


def fundamental(view_a, view_b) -> np.ndarray:
    """F with x_b^T F x_a = 0 from two calibrated views (K, R, t world-to-camera)."""
    _, Ka, Ra, ta = view_a
    _, Kb, Rb, tb = view_b
    R = Rb @ Ra.T
    t = tb - R @ ta
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    return np.linalg.inv(Kb).T @ tx @ R @ np.linalg.inv(Ka)


def sampson_distance(F: np.ndarray, xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    ha = np.c_[xa, np.ones(len(xa))]
    hb = np.c_[xb, np.ones(len(xb))]
    Fa, Fb = ha @ F.T, hb @ F
    num = np.sum(hb * Fa, axis=1) ** 2
    return np.sqrt(num / (Fa[:, 0] ** 2 + Fa[:, 1] ** 2 + Fb[:, 0] ** 2 + Fb[:, 1] ** 2))


@pytest.mark.parametrize("name", ENCODERS)
def test_many_keypoints_with_unit_descriptors(name, encoders, temple):
    image = temple(1)[0]
    enc = encoders[name]
    assert isinstance(enc, FeatureEncoder)
    f = enc.extract(image)
    assert isinstance(f, Features) and len(f) > 1000
    assert f.image_size == (640, 480)
    assert f.descriptors.dtype == np.float32 and f.descriptors.shape == (len(f), enc.descriptor_dim)
    np.testing.assert_allclose(np.linalg.norm(f.descriptors, axis=1), 1.0, atol=1e-5)
    assert f.keypoints.shape == (len(f), 2) and np.isfinite(f.keypoints).all()
    assert np.all(f.keypoints >= -0.5) and np.all(f.keypoints < [639.5, 479.5])
    assert np.all(np.diff(f.scores) <= 0)  # strongest first
    assert len(np.unique(np.round(f.keypoints % 1, 3))) > 10  # sub-pixel positions, not a pixel grid


@pytest.mark.parametrize("name", ENCODERS)
def test_adjacent_views_match_along_epipolar_lines(name, encoders, temple):
    a, b = temple(1), temple(2)
    fa, fb = encoders[name].extract(a[0]), encoders[name].extract(b[0])
    m = match_descriptors(fa.descriptors, fb.descriptors, config=MatchingConfig(device="cpu"))
    assert len(m.query_idx) > 400
    d = sampson_distance(fundamental(a, b), fa.keypoints[m.query_idx], fb.keypoints[m.landmark_idx])
    # Measured: XFeat 1300 matches, median 0.87 px; SIFT 720 matches, median 0.21 px.
    assert np.median(d) < 1.5
    assert np.mean(d < 3.0) > 0.6
    # A wrong pairing of views breaks the geometry: the check can fail.
    far = temple(6)
    assert np.median(sampson_distance(fundamental(a, far), fa.keypoints[m.query_idx], fb.keypoints[m.landmark_idx])) > 5


@pytest.mark.parametrize("name", ENCODERS)
def test_no_half_pixel_bias(name, encoders, temple):
    """Rotating an image by 180 degrees maps pixel (i, j) to (W-1-i, H-1-j) exactly; a keypoint
    convention off by b pixels shows up as a 2b disagreement between the two detections."""
    from scipy.spatial import cKDTree

    offsets = []
    for i in (1, 9):
        image = temple(i)[0]
        h, w = image.shape[:2]
        k = encoders[name].extract(image).keypoints
        r = encoders[name].extract(np.ascontiguousarray(image[::-1, ::-1])).keypoints
        r = np.c_[w - 1 - r[:, 0], h - 1 - r[:, 1]]
        dist, j = cKDTree(r).query(k)
        near = dist < 1.5
        offsets.append((k[near] - r[j[near]]) / 2)
    offsets = np.concatenate(offsets)
    assert len(offsets) > 100
    # Measured: XFeat ~0.05 px, SIFT 0.001 px (0.25 px before the correction in sift.py).
    assert np.all(np.abs(offsets.mean(axis=0)) < 0.15), offsets.mean(axis=0)


def test_xfeat_dense_map(encoders, temple):
    from gsvisloc_ros.features.xfeat import _sample

    enc = encoders["xfeat"]
    image = temple(1)[0]
    dense = enc.dense(image)
    assert isinstance(dense, DenseFeatures)
    assert dense.descriptors.shape == (60, 80, 64) and dense.grid_size == (80, 60)
    np.testing.assert_allclose(np.linalg.norm(dense.descriptors, axis=2), 1.0, atol=1e-5)
    assert dense.reliability.shape == (60, 80)
    np.testing.assert_allclose(dense.cell_to_pixel([[0, 0], [79, 59]]), [[3.5, 3.5], [635.5, 475.5]])
    np.testing.assert_allclose(dense.pixel_to_cell(dense.cell_to_pixel([[2.5, 7.0]])), [[2.5, 7.0]])
    uv, desc = dense.flat()
    assert uv.shape == (4800, 2) and desc.shape == (4800, 64)
    np.testing.assert_allclose(uv[81], [8 + 3.5, 8 + 3.5])  # row-major: index 81 = row 1, column 1
    # Sparse descriptors sample this very map with the same cell -> pixel mapping.
    import torch

    grid = torch.from_numpy(dense.descriptors).permute(2, 0, 1)[None]
    sampled = _sample(grid, torch.from_numpy(uv[[0, 81, 4799]]).float(), mode="bicubic").numpy()
    np.testing.assert_allclose(sampled, desc[[0, 81, 4799]], atol=1e-5)
    sparse, dense2 = enc.extract_all(image)
    assert len(sparse) > 1000
    np.testing.assert_allclose(dense2.descriptors, dense.descriptors, atol=1e-6)


def test_xfeat_odd_sizes_and_resizing(encoders, temple):
    image = temple(1)[0]
    crop = np.ascontiguousarray(image[16:316, 24:524])  # 500 x 300: not a multiple of 32 (padded)
    enc = encoders["xfeat"]
    f = enc.extract(crop)
    assert len(f) > 300 and f.image_size == (500, 300)
    assert np.all(f.keypoints >= -0.5) and np.all(f.keypoints < [499.5, 299.5])
    dense = enc.dense(crop)
    assert dense.descriptors.shape[:2] == (38, 63)  # ceil(300 / 8), ceil(500 / 8)
    # Keypoints of the crop are keypoints of the full image, shifted by the crop offset. (XFeat's
    # 8x8 detector cells make it shift-equivariant only for shifts by multiples of 8.)
    full = enc.extract(image)
    m = match_descriptors(f.descriptors, full.descriptors, config=MatchingConfig(device="cpu"))
    shift = full.keypoints[m.landmark_idx] - f.keypoints[m.query_idx]
    err = np.linalg.norm(shift - [24, 16], axis=1)
    assert len(err) > 1000 and np.median(err) < 0.1 and np.mean(err < 0.5) > 0.9
    # max_side shrinks before extraction and maps positions back to input pixels. A 2x2 block
    # upsampled image shrinks back exactly, so the result must equal extraction at low resolution.
    grey = image.mean(axis=2).astype(np.uint8)[::2, ::2]  # 320 x 240
    big = np.ascontiguousarray(np.repeat(np.repeat(grey, 2, axis=0), 2, axis=1))
    shrunk = make_encoder("xfeat", device="cpu", max_side=320).extract(big)
    low = enc.extract(np.ascontiguousarray(grey))
    assert shrunk.image_size == (640, 480) and len(shrunk) == len(low) > 300
    np.testing.assert_allclose(shrunk.keypoints, (low.keypoints + 0.5) * 2 - 0.5, atol=1e-4)
    np.testing.assert_allclose(shrunk.descriptors, low.descriptors, atol=1e-5)
    dense_big = make_encoder("xfeat", device="cpu", max_side=320).dense(big)
    assert dense_big.scale == (16.0, 16.0) and dense_big.offset == (7.5, 7.5)  # centre of a 16x16 block


@pytest.mark.parametrize("name", ENCODERS)
def test_grey_input_and_top_k(name, encoders, temple):
    image = temple(1)[0]
    grey = image.mean(axis=2).astype(np.uint8)
    assert len(encoders[name].extract(grey)) > 500
    assert len(encoders[name].extract(grey[:, :, None])) > 500
    assert 0 < len(make_encoder(name, device="cpu", top_k=100).extract(image)) <= 100  # same knob for both


@pytest.mark.parametrize("name", ENCODERS)
@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((0, 0, 3), np.uint8), "at least"),
        (np.zeros((1, 1, 3), np.uint8), "at least"),
        (np.zeros((480, 8), np.uint8), "at least"),
        (np.zeros((64, 64, 3), np.float32), "uint8"),
        (np.zeros((64, 64, 3), np.uint16), "uint8"),
        (np.zeros((64, 64, 4), np.uint8), "4 channels"),
        (np.zeros((64, 64, 2), np.uint8), "2 channels"),
        (np.zeros((2, 64, 64, 3), np.uint8), "shape"),
        (np.zeros(64, np.uint8), "shape"),
        ([[0, 1], [2, 3]], "numpy array"),
    ],
)
def test_bad_input_raises_value_error(name, bad, message, encoders):
    with pytest.raises(ValueError, match=message):
        encoders[name].extract(bad)


def test_check_image_and_factory():
    img = np.zeros((32, 48, 1), np.uint8)
    assert check_image(img).shape == (32, 48)
    with pytest.raises(ValueError, match="unknown encoder"):
        make_encoder("superpoint")
    with pytest.raises(ValueError):
        make_encoder("xfeat", device="cpu", top_k=0)
    with pytest.raises(TypeError):
        make_encoder("sift", not_a_field=1)


def test_blank_image_gives_empty_features(encoders):
    blank = np.full((64, 64, 3), 128, np.uint8)
    for name in ENCODERS:
        f = encoders[name].extract(blank)
        assert len(f) == 0 and f.descriptors.shape == (0, encoders[name].descriptor_dim)
