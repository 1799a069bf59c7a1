"""Map files and GaussianMap operations.

Files in the formats of other tools are written here with plyfile (or numpy) from values the
test knows, so each reader is checked against an independent writer, not against itself.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
from plyfile import PlyData, PlyElement
from scipy.spatial.transform import Rotation

from gsvisloc_ros.gaussians import SH_C0, GaussianMap, quats_to_matrices, sh_rotation_matrix
from gsvisloc_ros.io import MapFormatError, load_map, save_ply
from gsvisloc_ros.io.ply import write_ply
from gsvisloc_ros.io.splat import read_splat, write_splat

# ------------------------------------------------------------------------------------------ helpers


def random_map(n: int = 200, degree: int = 0, seed: int = 0) -> GaussianMap:
    rng = np.random.default_rng(seed)
    quats = rng.normal(size=(n, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    return GaussianMap(
        means=rng.normal(size=(n, 3)),
        quats=quats,
        scales=np.exp(rng.uniform(-5, 0, size=(n, 3))),
        opacities=rng.uniform(0.01, 0.99, size=n),
        sh=rng.normal(scale=0.5, size=(n, (degree + 1) ** 2, 3)),
    )


def stored_fields(gmap: GaussianMap) -> dict[str, np.ndarray]:
    """The INRIA stored values of a map, computed independently of the package's writer."""
    o = gmap.opacities.astype(np.float64)
    fields = {"x": gmap.means[:, 0], "y": gmap.means[:, 1], "z": gmap.means[:, 2]}
    fields.update({f"f_dc_{c}": gmap.sh[:, 0, c] for c in range(3)})
    k = gmap.sh.shape[1]
    for c in range(3):  # channel-major: all of R's higher coefficients, then G's, then B's
        for j in range(1, k):
            fields[f"f_rest_{c * (k - 1) + j - 1}"] = gmap.sh[:, j, c]
    fields["opacity"] = np.log(o / (1 - o))
    fields.update({f"scale_{i}": np.log(gmap.scales[:, i].astype(np.float64)) for i in range(3)})
    fields.update({f"rot_{i}": gmap.quats[:, i] * 2.5 for i in range(4)})  # unnormalised on purpose
    return fields


def write_with_plyfile(path: Path, fields: dict[str, np.ndarray], element: str = "vertex", **kwargs) -> Path:
    """A PLY of one element with the given columns (dtype of each column kept), written by plyfile."""
    n = len(next(iter(fields.values())))
    dtype = [(name, "<f4" if np.asarray(col).dtype.kind == "f" else np.asarray(col).dtype.str) for name, col in
             fields.items()]
    records = np.zeros(n, dtype=dtype)
    for name, col in fields.items():
        records[name] = col
    PlyData([PlyElement.describe(records, element)], **kwargs).write(str(path))
    return path


def assert_maps_close(a: GaussianMap, b: GaussianMap, atol: float = 1e-6) -> None:
    assert len(a) == len(b)
    np.testing.assert_allclose(a.means, b.means, atol=atol)
    np.testing.assert_allclose(a.scales, b.scales, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(a.opacities, b.opacities, atol=atol)
    np.testing.assert_allclose(np.abs(np.sum(a.quats * b.quats, axis=1)), 1.0, atol=atol)
    np.testing.assert_allclose(a.sh, b.sh, atol=atol)


# ------------------------------------------------------------------------------------------ INRIA ply


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_ply_round_trip(tmp_path, degree):
    gmap = random_map(degree=degree, seed=degree)
    path = tmp_path / "map.ply"
    save_ply(gmap, path)
    loaded = load_map(path)
    assert loaded.sh_degree == degree
    assert loaded.source == str(path)
    assert_maps_close(loaded, gmap)


def test_written_ply_has_inria_layout(tmp_path):
    gmap = random_map(n=10, degree=2)
    path = tmp_path / "map.ply"
    save_ply(gmap, path)
    header = path.read_bytes().split(b"end_header")[0].decode()
    assert "format binary_little_endian 1.0" in header
    vertex = PlyData.read(str(path))["vertex"].data
    names = list(vertex.dtype.names)
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[-8:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert all(vertex.dtype[name] == np.dtype("<f4") for name in names)
    np.testing.assert_array_equal(vertex["nx"], 0.0)
    # channel-major f_rest: 8 higher coefficients of R, then of G
    np.testing.assert_allclose(vertex["f_rest_0"], gmap.sh[:, 1, 0])
    np.testing.assert_allclose(vertex["f_rest_7"], gmap.sh[:, 8, 0])
    np.testing.assert_allclose(vertex["f_rest_8"], gmap.sh[:, 1, 1])
    np.testing.assert_allclose(vertex["opacity"], np.log(gmap.opacities / (1 - gmap.opacities)), rtol=1e-5)


def test_save_ply_of_extreme_values_stays_finite(tmp_path):
    gmap = random_map(n=4)
    gmap.opacities[:] = [0.0, 1.0, 0.5, 1e-30]
    gmap.scales[0] = 0.0
    path = tmp_path / "extreme.ply"
    save_ply(gmap, path)
    vertex = PlyData.read(str(path))["vertex"].data
    assert all(np.isfinite(vertex[name]).all() for name in vertex.dtype.names)
    loaded = load_map(path)
    assert len(loaded) == 4
    np.testing.assert_allclose(loaded.opacities, gmap.opacities, atol=1e-7)


@pytest.mark.parametrize("degree", [1, 3])
@pytest.mark.parametrize("variant", [{"text": True}, {"byte_order": ">"}, {"byte_order": "<"}])
def test_reads_ascii_and_both_byte_orders(tmp_path, degree, variant):
    gmap = random_map(n=50, degree=degree, seed=3)
    path = write_with_plyfile(tmp_path / "map.ply", stored_fields(gmap), **variant)
    if variant.get("text"):
        assert b"format ascii" in path.read_bytes()[:100]
    if variant.get("byte_order") == ">":
        assert b"binary_big_endian" in path.read_bytes()[:100]
    assert_maps_close(load_map(path), gmap, atol=1e-5)


def test_reads_gsplat_layout_without_normals(tmp_path):
    gmap = random_map(n=30, degree=3, seed=5)
    fields = stored_fields(gmap)  # gsplat's order: x y z f_dc f_rest opacity scale rot, no normals
    path = write_with_plyfile(tmp_path / "gsplat.ply", fields)
    assert "nx" not in PlyData.read(str(path))["vertex"].data.dtype.names
    assert_maps_close(load_map(path), gmap, atol=1e-5)


def test_reads_other_property_orders_types_and_extras(tmp_path):
    gmap = random_map(n=30, degree=1, seed=6)
    fields = stored_fields(gmap)
    names = list(fields)
    shuffled = {name: fields[name] for name in np.random.default_rng(0).permutation(names)}
    shuffled["nx"] = np.zeros(30, np.float32)
    shuffled["label"] = np.arange(30, dtype=np.int32)  # unknown extras are ignored
    shuffled["x"] = np.asarray(fields["x"], dtype=np.float64)  # doubles are fine
    records = np.zeros(30, dtype=[(n, "<f8" if n == "x" else np.asarray(c).dtype.str) for n, c in shuffled.items()])
    for name, col in shuffled.items():
        records[name] = col
    path = tmp_path / "shuffled.ply"
    PlyData([PlyElement.describe(records, "vertex")]).write(str(path))
    assert_maps_close(load_map(path), gmap, atol=1e-5)


def test_reads_nerfstudio_rgb_colour_mode(tmp_path):
    gmap = random_map(n=20, seed=7)
    fields = {k: v for k, v in stored_fields(gmap).items() if not k.startswith("f_")}
    rgb = np.random.default_rng(1).integers(0, 256, size=(20, 3)).astype(np.uint8)
    fields.update({"nx": np.zeros(20, np.float32), "red": rgb[:, 0], "green": rgb[:, 1], "blue": rgb[:, 2]})
    loaded = load_map(write_with_plyfile(tmp_path / "splat.ply", fields))
    assert loaded.sh_degree == 0
    np.testing.assert_allclose(loaded.colors, rgb / 255.0, atol=1e-6)


def test_applies_mip_splatting_3d_filter(tmp_path):
    gmap = random_map(n=20, seed=8)
    fields = stored_fields(gmap)
    filter_3d = np.full(20, 0.05, np.float32)
    fields["filter_3D"] = filter_3d
    loaded = load_map(write_with_plyfile(tmp_path / "mip.ply", fields))
    s2 = gmap.scales.astype(np.float64) ** 2
    expected_scales = np.sqrt(s2 + 0.05**2)
    expected_opacity = gmap.opacities * np.sqrt(np.prod(s2, axis=1) / np.prod(expected_scales**2, axis=1))
    np.testing.assert_allclose(loaded.scales, expected_scales, rtol=1e-5)
    np.testing.assert_allclose(loaded.opacities, expected_opacity, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------------------------------ compressed ply


def _pack(values: np.ndarray, bits: int) -> np.ndarray:
    top = (1 << bits) - 1
    return np.clip(np.floor(values * top + 0.5), 0, top).astype(np.uint32)


def write_compressed_ply(path: Path, gmap: GaussianMap, chunk: int = 256) -> None:
    """A PlayCanvas-style compressed PLY, encoded here from the format's description."""
    n = len(gmap)
    ids = np.arange(n) // chunk
    count = ids.max() + 1
    log_scales = np.log(gmap.scales.astype(np.float64))
    colour = 0.5 + SH_C0 * gmap.sh[:, 0, :].astype(np.float64)

    def bounds(v):
        lo = np.stack([v[ids == c].min(0) for c in range(count)])
        hi = np.stack([v[ids == c].max(0) for c in range(count)])
        return lo, hi, (v - lo[ids]) / np.where(hi - lo > 0, hi - lo, 1)[ids]

    p_lo, p_hi, p = bounds(gmap.means.astype(np.float64))
    s_lo, s_hi, s = bounds(log_scales)
    c_lo, c_hi, c = bounds(colour)
    chunks = {}
    for prefix, lo, hi in (("", p_lo, p_hi), ("scale_", s_lo, s_hi)):
        for i, axis in enumerate("xyz"):
            chunks[f"min_{prefix}{axis}"], chunks[f"max_{prefix}{axis}"] = lo[:, i], hi[:, i]
    for i, ch in enumerate("rgb"):
        chunks[f"min_{ch}"], chunks[f"max_{ch}"] = c_lo[:, i], c_hi[:, i]
    q = gmap.quats.astype(np.float64)
    largest = np.argmax(np.abs(q), axis=1)
    q = np.where(q[np.arange(n), largest][:, None] < 0, -q, q)
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    small = _pack(q[np.arange(n)[:, None], others] / np.sqrt(2.0) + 0.5, 10)
    vertex = {
        "packed_position": (_pack(p[:, 0], 11) << 21) | (_pack(p[:, 1], 10) << 11) | _pack(p[:, 2], 11),
        "packed_rotation": (largest.astype(np.uint32) << 30) | (small[:, 0] << 20) | (small[:, 1] << 10) | small[:, 2],
        "packed_scale": (_pack(s[:, 0], 11) << 21) | (_pack(s[:, 1], 10) << 11) | _pack(s[:, 2], 11),
        "packed_color": (_pack(c[:, 0], 8) << 24) | (_pack(c[:, 1], 8) << 16) | (_pack(c[:, 2], 8) << 8)
        | _pack(gmap.opacities.astype(np.float64), 8),
    }
    rest = gmap.sh[:, 1:, :].transpose(0, 2, 1).reshape(n, -1)
    sh = {f"f_rest_{i}": np.clip(np.trunc((rest[:, i] / 8 + 0.5) * 256), 0, 255).astype(np.uint8)
          for i in range(rest.shape[1])}

    def element(name, columns):
        records = np.zeros(len(next(iter(columns.values()))), dtype=[(k, v.dtype.str) for k, v in columns.items()])
        for k, v in columns.items():
            records[k] = v
        return PlyElement.describe(records, name)

    chunks = {k: v.astype(np.float32) for k, v in chunks.items()}
    elements = [element("chunk", chunks), element("vertex", vertex)] + ([element("sh", sh)] if sh else [])
    PlyData(elements).write(str(path))


def test_reads_compressed_ply(tmp_path):
    gmap = random_map(n=600, degree=1, seed=9)  # 3 chunks, the last partial
    gmap.sh[:, 0, :] = np.clip(gmap.sh[:, 0, :], -1.7, 1.7)
    path = tmp_path / "compressed.ply"
    write_compressed_ply(path, gmap)
    loaded = load_map(path)
    assert len(loaded) == 600 and loaded.sh_degree == 1
    half_step = 0.5 / np.array([2047, 1023, 2047])  # 11-10-11 bits within each chunk's bounds
    assert np.all(np.abs(loaded.means - gmap.means) <= np.ptp(gmap.means, axis=0) * half_step + 1e-6)
    log_span = np.ptp(np.log(gmap.scales), axis=0)
    assert np.all(np.abs(np.log(loaded.scales / gmap.scales)) <= log_span * half_step + 1e-5)
    assert np.all(np.abs(loaded.opacities - gmap.opacities) <= 0.5 / 255 + 1e-6)
    colour_span = np.ptp(0.5 + SH_C0 * gmap.sh[:, 0], axis=0)
    assert np.all(np.abs(loaded.colors - gmap.colors) <= colour_span * 0.5 / 255 + 1e-6)
    assert np.all(np.abs(np.sum(loaded.quats * gmap.quats, axis=1)) > 0.9995)
    assert np.all(np.abs(loaded.sh[:, 1:] - gmap.sh[:, 1:]) <= 8 / 256 + 1e-6)


# ------------------------------------------------------------------------------------------ .splat


def test_splat_round_trip_within_quantisation(tmp_path):
    gmap = random_map(n=100, seed=10)
    path = tmp_path / "map.splat"
    write_splat(gmap, path)
    assert path.stat().st_size == 32 * 100
    loaded = load_map(path)
    np.testing.assert_array_equal(loaded.means, gmap.means)
    np.testing.assert_array_equal(loaded.scales, gmap.scales)
    np.testing.assert_allclose(loaded.colors, gmap.colors, atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(loaded.opacities, gmap.opacities, atol=0.5 / 255 + 1e-6)
    assert np.all(np.abs(np.sum(loaded.quats * gmap.quats, axis=1)) > 0.999)


def test_splat_reader_decodes_the_documented_layout(tmp_path):
    record = np.zeros(1, dtype=[("p", "<f4", 3), ("s", "<f4", 3), ("c", "u1", 4), ("r", "u1", 4)])
    record["p"], record["s"] = [1.0, 2.0, 3.0], [0.1, 0.2, 0.3]
    record["c"] = [255, 128, 0, 51]
    record["r"] = [128, 255, 128, 128]  # (w, x, y, z) = (0, ~1, 0, 0): 180 degrees about x
    path = tmp_path / "one.splat"
    record.tofile(path)
    gmap = read_splat(path)
    np.testing.assert_allclose(gmap.means[0], [1, 2, 3])
    np.testing.assert_allclose(gmap.scales[0], [0.1, 0.2, 0.3], rtol=1e-6)
    np.testing.assert_allclose(gmap.colors[0], [1.0, 128 / 255, 0.0], atol=1e-6)
    np.testing.assert_allclose(gmap.opacities[0], 0.2, atol=1e-6)
    np.testing.assert_allclose(gmap.quats[0], [0, 1, 0, 0], atol=1e-6)


def test_shared_splat_and_ply_agree(shared_data):
    for name in ("plant", "tarot_cards"):
        ply_path, splat_path = shared_data / "splats" / f"{name}.ply", shared_data / "splats" / f"{name}.splat"
        if not (ply_path.is_file() and splat_path.is_file()):
            pytest.skip(f"{name} captures missing")
        a, b = load_map(ply_path), load_map(splat_path)
        assert len(a) == len(b) > 100_000
        a = a.subset(np.lexsort(a.means.T))
        b = b.subset(np.lexsort(b.means.T))
        np.testing.assert_allclose(a.means, b.means, atol=1e-6)
        np.testing.assert_allclose(a.scales, b.scales, rtol=1e-5)
        np.testing.assert_allclose(a.colors, b.colors, atol=1.0 / 255)
        np.testing.assert_allclose(a.opacities, b.opacities, atol=1.0 / 255)
        assert np.all(np.abs(np.sum(a.quats * b.quats, axis=1)) > 0.999)


def test_shared_plys_load_fast(plant_ply, tarot_ply):
    for path in (plant_ply, tarot_ply):
        load_map(path)  # warm the page cache
        start = time.perf_counter()
        gmap = load_map(path)
        elapsed = time.perf_counter() - start
        assert len(gmap) > 100_000
        assert elapsed < 1.0, f"loading {path.name} took {elapsed:.2f} s"


# ------------------------------------------------------------------------------------------ bad files


def _inria(tmp_path: Path, n: int = 5, drop: tuple[str, ...] = (), **extra) -> dict[str, np.ndarray]:
    fields = {k: v for k, v in stored_fields(random_map(n=n)).items() if k not in drop}
    fields.update(extra)
    return fields


def bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path of a bad file, text its error must contain)."""
    cases = {}
    cases["missing property"] = (write_with_plyfile(tmp_path / "norot.ply", _inria(tmp_path, drop=("rot_2",))),
                                 "rot_2")
    xyz_rgb = {"x": np.zeros(3, np.float32), "y": np.zeros(3, np.float32), "z": np.zeros(3, np.float32),
               "red": np.zeros(3, np.uint8), "green": np.zeros(3, np.uint8), "blue": np.zeros(3, np.uint8)}
    cases["point cloud"] = (write_with_plyfile(tmp_path / "cloud.ply", xyz_rgb), "point cloud")
    good = tmp_path / "good.ply"
    save_ply(random_map(n=100), good)
    truncated = tmp_path / "truncated.ply"
    truncated.write_bytes(good.read_bytes()[:-100])
    cases["truncated"] = (truncated, "truncated")
    cases["wrong element"] = (write_with_plyfile(tmp_path / "elem.ply", _inria(tmp_path), element="gaussian"),
                              "no 'vertex' element (elements: gaussian)")
    unknown = tmp_path / "map.xyz"
    unknown.write_bytes(b"\x00" * 64)
    cases["unknown format"] = (unknown, "unknown map format")
    fake_ply = tmp_path / "fake.ply"
    fake_ply.write_text("solid cube\n")
    cases["not a ply"] = (fake_ply, "not a PLY file")
    cases["empty ply"] = (write_with_plyfile(tmp_path / "empty.ply", _inria(tmp_path, n=0)), "empty map")
    empty_splat = tmp_path / "empty.splat"
    empty_splat.write_bytes(b"")
    cases["empty splat"] = (empty_splat, "empty map")
    odd_splat = tmp_path / "odd.splat"
    odd_splat.write_bytes(b"\x00" * 100)
    cases["splat size"] = (odd_splat, "multiple of 32")
    cases["directory"] = (tmp_path, "not a file")
    cases["missing file"] = (tmp_path / "nope.ply", "no such file")
    f_rest = {f"f_rest_{i}": np.zeros(5, np.float32) for i in range(5)}
    cases["f_rest count"] = (write_with_plyfile(tmp_path / "frest.ply", _inria(tmp_path, **f_rest)), "f_rest")
    gap = {"f_rest_0": np.zeros(5, np.float32), "f_rest_2": np.zeros(5, np.float32)}
    cases["f_rest gap"] = (write_with_plyfile(tmp_path / "gap.ply", _inria(tmp_path, **gap)), "without gaps")
    bad_header = tmp_path / "header.ply"
    bad_header.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 2\nproperty flot x\nend_header\n")
    cases["bad header"] = (bad_header, "unreadable PLY")
    nan_fields = _inria(tmp_path)
    nan_fields["x"] = np.full(5, np.nan, np.float32)
    cases["all unusable"] = (write_with_plyfile(tmp_path / "nan.ply", nan_fields), "none of its 5 Gaussians")
    surfels = write_with_plyfile(tmp_path / "2dgs.ply", _inria(tmp_path, drop=("scale_2",)))
    cases["2dgs"] = (surfels, "2D Gaussian Splatting")
    return cases


def test_bad_files_raise_map_format_error_naming_file_and_problem(tmp_path):
    cases = bad_files(tmp_path)
    for name, (path, expected) in cases.items():
        with pytest.raises(MapFormatError) as info:
            load_map(path)
        message = str(info.value)
        assert str(path) in message, name
        assert expected in message, f"{name}: {message!r} lacks {expected!r}"
        assert isinstance(info.value, ValueError)


def test_nan_inf_and_zero_quaternions_are_dropped_with_a_logged_count(tmp_path, caplog):
    gmap = random_map(n=10, seed=11)
    fields = stored_fields(gmap)
    fields["y"][2] = np.nan
    fields["scale_1"][4] = np.inf  # exp(inf) = inf
    for i in range(4):
        fields[f"rot_{i}"][7] = 0.0
    path = write_with_plyfile(tmp_path / "dirty.ply", fields)
    with caplog.at_level(logging.WARNING, logger="gsvisloc_ros.gaussians"):
        loaded = load_map(path)
    assert len(loaded) == 7
    keep = np.setdiff1d(np.arange(10), [2, 4, 7])
    np.testing.assert_allclose(loaded.means, gmap.means[keep], atol=1e-6)
    assert "dropped 3 of 10 Gaussians" in caplog.text
    assert "zero quaternion" in caplog.text


def test_validate_and_clean_report_each_problem():
    gmap = random_map(n=8, seed=12)
    gmap.means[0, 0] = np.inf
    gmap.quats[1] = 0.0
    gmap.scales[2, 1] = -0.1
    gmap.opacities[3] = 1.5
    gmap.sh[4, 0, 2] = np.nan
    gmap.quats[5] *= 3.0  # fixable: normalised by clean
    report = gmap.validate()
    assert report == {"non-finite value": 2, "zero quaternion": 1, "negative scale": 1, "opacity outside [0, 1]": 1}
    cleaned = gmap.clean()
    assert len(cleaned) == 3
    assert cleaned.validate() == {}
    np.testing.assert_allclose(np.linalg.norm(cleaned.quats, axis=1), 1.0, atol=1e-6)


# ------------------------------------------------------------------------------------------ operations


def random_similarity(seed: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    R = Rotation.random(random_state=seed).as_matrix()
    t = np.random.default_rng(seed).normal(size=3) * 5
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = scale * R, t
    return T, R, t


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_transform_moves_means_and_covariances(scale):
    gmap = random_map(n=100, degree=0, seed=13)
    T, R, t = random_similarity(1, scale)
    moved = gmap.transform(T)
    np.testing.assert_allclose(moved.means, scale * gmap.means @ R.T + t, atol=1e-5)
    expected = scale**2 * R @ gmap.covariances() @ R.T
    np.testing.assert_allclose(moved.covariances(), expected, atol=1e-6 * scale**2)
    np.testing.assert_allclose(moved.scales, scale * gmap.scales, rtol=1e-6)
    np.testing.assert_array_equal(moved.opacities, gmap.opacities)


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_transform_rotates_view_dependent_colour(degree):
    gmap = random_map(n=100, degree=degree, seed=14)
    T, R, _ = random_similarity(2, 1.7)
    moved = gmap.transform(T)
    dirs = np.random.default_rng(3).normal(size=(100, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    before = gmap.view_colors(dirs, clip=False)
    after = moved.view_colors(dirs @ R.T, clip=False)  # the same view, moved with the map
    np.testing.assert_allclose(after, before, atol=1e-5)
    assert not np.allclose(moved.sh[:, 1:], gmap.sh[:, 1:], atol=1e-2)  # coefficients did change


def test_sh_rotation_matrix_is_orthogonal_and_composes():
    R1, R2 = Rotation.random(2, random_state=4).as_matrix()
    M1, M2, M12 = (sh_rotation_matrix(R, 3) for R in (R1, R2, R2 @ R1))
    np.testing.assert_allclose(M1 @ M1.T, np.eye(16), atol=1e-10)
    np.testing.assert_allclose(M2 @ M1, M12, atol=1e-10)
    np.testing.assert_allclose(sh_rotation_matrix(np.eye(3), 3), np.eye(16), atol=1e-12)


def test_transforms_compose_and_identity_is_a_no_op():
    gmap = random_map(n=50, degree=2, seed=15)
    T1, _, _ = random_similarity(5, 0.5)
    T2, _, _ = random_similarity(6, 3.0)
    once = gmap.transform(T2 @ T1)
    twice = gmap.transform(T1).transform(T2)
    np.testing.assert_allclose(once.means, twice.means, atol=1e-5)
    np.testing.assert_allclose(once.covariances(), twice.covariances(), atol=1e-6)
    np.testing.assert_allclose(once.sh, twice.sh, atol=1e-5)
    assert_maps_close(gmap.transform(np.eye(4)), gmap)


def test_transform_refuses_reflections_and_shear():
    gmap = random_map(n=5)
    with pytest.raises(ValueError, match="handedness"):
        gmap.transform(np.diag([1.0, 1.0, -1.0, 1.0]))
    shear = np.eye(4)
    shear[0, 1] = 0.5
    with pytest.raises(ValueError, match="similarity"):
        gmap.transform(shear)


def test_quaternion_matrices_match_scipy():
    q = random_map(n=20, seed=16).quats
    expected = Rotation.from_quat(np.concatenate([q[:, 1:], q[:, :1]], axis=1)).as_matrix()
    np.testing.assert_allclose(quats_to_matrices(q), expected, atol=1e-6)


def test_subsample_is_uniform_deterministic_and_order_preserving():
    gmap = random_map(n=1000, seed=17)
    gmap.means[:, 0] = np.arange(1000)  # an id per Gaussian
    a, b, c = gmap.subsample(100, seed=1), gmap.subsample(100, seed=1), gmap.subsample(100, seed=2)
    assert len(a) == 100
    np.testing.assert_array_equal(a.means, b.means)
    assert not np.array_equal(a.means, c.means)
    ids = a.means[:, 0].astype(int)
    assert np.all(np.diff(ids) > 0)
    np.testing.assert_array_equal(a.opacities, gmap.opacities[ids])
    assert len(gmap.subsample(5000)) == 1000
    picks = np.concatenate([gmap.subsample(100, seed=s).means[:, 0] for s in range(50)])
    counts = np.bincount(picks.astype(int) // 100, minlength=10)  # uniform: ~500 per tenth
    assert counts.min() > 350 and counts.max() < 650


def test_filter_opacity():
    gmap = random_map(n=500, seed=18)
    kept = gmap.filter_opacity(0.6)
    assert len(kept) == int((gmap.opacities >= 0.6).sum()) > 0
    assert kept.opacities.min() >= 0.6


def grid_map(seed: int = 19) -> tuple[GaussianMap, int]:
    """Gaussians inside 1 m voxels: voxel v holds v % 4 + 1 Gaussians; returns (map, occupied voxels)."""
    rng = np.random.default_rng(seed)
    cells = np.array([[i, j, k] for i in range(-2, 2) for j in range(3) for k in range(-1, 1)], dtype=float)
    means = np.concatenate([c + rng.uniform(0.05, 0.95, size=(v % 4 + 1, 3)) for v, c in enumerate(cells)])
    n = len(means)
    gmap = GaussianMap(means, np.tile([1.0, 0, 0, 0], (n, 1)), np.full((n, 3), 0.01), rng.uniform(size=n),
                       rng.normal(size=(n, 1, 3)))
    return gmap, len(cells)


def test_voxel_downsample_keeps_the_most_opaque_gaussian_per_voxel():
    gmap, voxels = grid_map()
    down = gmap.voxel_downsample(1.0)
    assert len(down) == voxels
    cells = np.floor(gmap.means).astype(int)
    for mean, opacity in zip(down.means, down.opacities, strict=True):
        same = np.all(cells == np.floor(mean).astype(int), axis=1)
        assert opacity == gmap.opacities[same].max()
    assert len(gmap.voxel_downsample(100.0)) == 4  # the grid is anchored at the origin: x and z change sign
    shift = np.eye(4)
    shift[:3, 3] = 10.0
    assert len(gmap.transform(shift).voxel_downsample(100.0)) == 1
    assert len(gmap.voxel_downsample(1e-6)) == len(gmap)


def test_voxel_downsample_merge_matches_moments():
    two = GaussianMap(
        means=[[0.2, 0.5, 0.5], [0.8, 0.5, 0.5], [5.5, 0.5, 0.5]],
        quats=np.tile([1.0, 0, 0, 0], (3, 1)),
        scales=np.full((3, 3), 0.1),
        opacities=[0.5, 0.5, 0.9],
        sh=[[[1.0, 0, 0]], [[0.0, 1, 0]], [[0.0, 0, 1]]],
    )
    merged = two.voxel_downsample(1.0, merge=True)
    assert len(merged) == 2
    np.testing.assert_allclose(merged.means[0], [0.5, 0.5, 0.5], atol=1e-6)
    expected = np.diag([0.01 + 0.3**2, 0.01, 0.01])
    np.testing.assert_allclose(merged.covariances()[0], expected, atol=1e-6)
    np.testing.assert_allclose(merged.covariances()[1], two.covariances()[2], atol=1e-7)  # a lone Gaussian stays
    np.testing.assert_allclose(merged.sh[0, 0], [0.5, 0.5, 0.0], atol=1e-6)
    np.testing.assert_allclose(merged.opacities, [0.5, 0.9], atol=1e-7)


def test_robust_centre_and_extent_ignore_floaters():
    rng = np.random.default_rng(20)
    gmap = random_map(n=2000, seed=20)
    gmap.means[:] = rng.normal([3.0, -2.0, 1.0], 0.1, size=(2000, 3))
    gmap.means[:10] = rng.uniform(500, 1000, size=(10, 3))  # floaters
    low, high = gmap.bounds()
    assert high.min() > 400
    np.testing.assert_allclose(gmap.robust_centre(), [3.0, -2.0, 1.0], atol=0.02)
    assert np.all(gmap.robust_extent() < 1.0)
    assert gmap.robust_radius(95.0) < 0.5
    robust_low, robust_high = gmap.robust_bounds(0.0)
    np.testing.assert_allclose(robust_high, high)


def test_empty_maps_and_extent_errors():
    gmap = random_map(n=10, degree=2)
    empty = gmap.subset(np.zeros(10, dtype=bool))
    assert len(empty) == 0 and empty.sh.shape == (0, 9, 3)
    assert len(empty.subsample(5)) == 0 and len(empty.voxel_downsample(1.0)) == 0
    with pytest.raises(ValueError, match="no Gaussians"):
        empty.bounds()
    with pytest.raises(ValueError, match="quats must have shape"):
        GaussianMap(np.zeros((3, 3)), np.zeros((2, 4)), np.ones((3, 3)), np.ones(3), np.zeros((3, 1, 3)))


def test_content_hash_follows_values():
    a, b = random_map(seed=21), random_map(seed=21)
    assert a.content_hash == b.content_hash
    assert random_map(seed=22).content_hash != a.content_hash
    assert a.transform(random_similarity(7, 1.0)[0]).content_hash != a.content_hash


def test_write_ply_replaces_atomically(tmp_path):
    path = tmp_path / "map.ply"
    write_ply(random_map(n=3), path)
    write_ply(random_map(n=7), path)
    assert len(load_map(path)) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.ply"]


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_transformed_map_renders_the_same_from_the_transformed_camera(scale):
    from gsvisloc_ros.camera import PinholeCamera, invert_pose, make_pose
    from gsvisloc_ros.render import render

    rng = np.random.default_rng(23)
    gmap = random_map(n=150, degree=3, seed=23)
    gmap.means[:] = rng.uniform([-1.0, -0.8, 2.0], [1.0, 0.8, 4.0], size=(150, 3))
    gmap.scales[:] = rng.uniform(0.03, 0.15, size=(150, 3))
    camera = PinholeCamera(40.0, 40.0, 23.5, 17.5, 48, 36)
    T, R, t = random_similarity(8, scale)
    before = render(gmap, camera, np.eye(4), backend="reference")
    camera_moved = make_pose(R, t)  # camera at the origin looking along +z, moved with the map
    after = render(gmap.transform(T), camera, invert_pose(camera_moved), backend="reference")
    assert before.alpha.max() > 0.5
    np.testing.assert_allclose(after.rgb, before.rgb, atol=1e-4)
    np.testing.assert_allclose(after.depth, scale * before.depth, rtol=1e-4, atol=1e-4)
