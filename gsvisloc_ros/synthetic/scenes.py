"""Procedural 3DGS scenes made directly as Gaussians, deterministic by seed.

A scene is a set of textured surfaces (planes, box faces, spheres, a cylindrical backdrop), each
covered by flat Gaussians on a jittered grid and coloured by a procedural texture with structure
at several scales (mottled noise, stripes, discs and rectangles), so that a feature detector finds
corners and blobs everywhere. Units are metres and world up is +z (the ROS ``map`` frame).

Three kinds:

* ``tabletop``: objects on a table with a cylindrical backdrop, seen by cameras orbiting it
  (object-centric, like most phone captures).
* ``room``: a closed room seen from inside (inside-out).
* ``poster``: a plain wall with one textured poster: from afar, every match lies on a small
  patch of the image, the weak geometry a localizer must not trust.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from gsvisloc_ros.gaussians import SH_C0, GaussianMap

log = logging.getLogger(__name__)

SCENE_KINDS = ("tabletop", "room", "poster")


@dataclass(frozen=True)
class Surface:
    """A parametric patch: ``point(s, t)`` for s, t in [0, 1] with its tangent frame."""

    origin: np.ndarray
    axis_s: np.ndarray  # spans the patch along s (length = size along s)
    axis_t: np.ndarray


class Texture:
    """Procedural RGB texture on surface coordinates in metres; one random design per seed."""

    def __init__(self, rng: np.random.Generator, extent: float, plain: bool = False) -> None:
        self.base = rng.uniform(0.15, 0.85, 3)
        self.plain = plain
        self.noise = [(rng.uniform(0.05, 0.2), rng.normal(0.0, 1.0, (3,)) * 0.08, rng.integers(1 << 30))
                      for _ in range(3)]
        count = int(np.clip(extent * extent * 40, 8, 300))
        self.shapes_centre = rng.uniform(-0.1 * extent, 1.1 * extent, (count, 2))
        self.shapes_size = np.exp(rng.uniform(np.log(0.015), np.log(0.12), (count, 2)))
        self.shapes_round = rng.random(count) < 0.5
        self.shapes_colour = rng.uniform(0.0, 1.0, (count, 3))
        self.stripe_period = rng.uniform(0.05, 0.3)
        self.stripe_angle = rng.uniform(0, np.pi)
        self.stripe_colour = rng.uniform(0.0, 1.0, 3)

    def __call__(self, st: np.ndarray) -> np.ndarray:
        """Colours [N, 3] in [0, 1] at surface coordinates ``st`` [N, 2] (metres)."""
        rgb = np.tile(self.base, (len(st), 1))
        if self.plain:
            return rgb
        for cell, amplitude, seed in self.noise:
            rgb += _value_noise(st / cell, seed)[:, None] * amplitude[None, :] * 2.0
        direction = np.array([np.cos(self.stripe_angle), np.sin(self.stripe_angle)])
        phase = (st @ direction) / self.stripe_period
        stripes = (np.mod(phase, 1.0) < 0.18)[:, None]
        rgb = np.where(stripes, 0.6 * rgb + 0.4 * self.stripe_colour, rgb)
        for centre, size, is_round, colour in zip(
            self.shapes_centre, self.shapes_size, self.shapes_round, self.shapes_colour, strict=True
        ):
            d = np.abs(st - centre) / size
            inside = (d[:, 0] ** 2 + d[:, 1] ** 2 < 1.0) if is_round else (d.max(axis=1) < 1.0)
            rgb[inside] = colour
        return np.clip(rgb, 0.0, 1.0)


def _value_noise(p: np.ndarray, seed: int) -> np.ndarray:
    """Smooth noise in [-1, 1] at 2D points ``p`` (lattice values, smoothstep interpolation)."""
    i = np.floor(p).astype(np.int64)
    f = p - i
    w = f * f * (3.0 - 2.0 * f)

    def lattice(ix, iy):
        h = (ix * 73856093) ^ (iy * 19349663) ^ seed
        h = (h ^ (h >> 13)) * 1274126177
        return ((h & 0xFFFF) / 32767.5) - 1.0

    a, b = lattice(i[:, 0], i[:, 1]), lattice(i[:, 0] + 1, i[:, 1])
    c, d = lattice(i[:, 0], i[:, 1] + 1), lattice(i[:, 0] + 1, i[:, 1] + 1)
    return (a * (1 - w[:, 0]) + b * w[:, 0]) * (1 - w[:, 1]) + (c * (1 - w[:, 0]) + d * w[:, 0]) * w[:, 1]


def _frame_quaternions(normals: np.ndarray, tangents: np.ndarray) -> np.ndarray:
    """(w, x, y, z) quaternions of frames whose z axis is the normal and x axis the tangent."""
    n = normals / np.linalg.norm(normals, axis=1, keepdims=True)
    t = tangents - (tangents * n).sum(1, keepdims=True) * n
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    b = np.cross(n, t)
    q = Rotation.from_matrix(np.stack([t, b, n], axis=2)).as_quat()  # x, y, z, w
    return q[:, [3, 0, 1, 2]]


def _gaussians_on_patch(surface: Surface, spacing: float, texture: Texture, rng: np.random.Generator):
    """Flat Gaussians on a jittered grid over a planar patch (overlapping more on a plain texture, so
    that it renders without the grid's faint pattern, which a feature detector would find)."""
    len_s, len_t = np.linalg.norm(surface.axis_s), np.linalg.norm(surface.axis_t)
    ns, nt = max(2, int(np.ceil(len_s / spacing))), max(2, int(np.ceil(len_t / spacing)))
    s, t = np.meshgrid((np.arange(ns) + 0.5) / ns, (np.arange(nt) + 0.5) / nt, indexing="ij")
    st = np.stack([s.ravel(), t.ravel()], axis=1)
    st += rng.uniform(-0.3, 0.3, st.shape) / np.array([ns, nt])
    means = surface.origin + st[:, :1] * surface.axis_s + st[:, 1:] * surface.axis_t
    colours = texture(st * np.array([len_s, len_t]))
    normal = np.cross(surface.axis_s, surface.axis_t)
    normals = np.tile(normal, (len(means), 1))
    tangents = np.tile(surface.axis_s, (len(means), 1))
    in_plane = spacing * (1.5 if texture.plain else 0.65)
    scales = np.tile([in_plane, in_plane, spacing * 0.05], (len(means), 1))
    return means, _frame_quaternions(normals, tangents), scales, colours


def _gaussians_on_sphere(centre, radius: float, spacing: float, texture: Texture):
    """Flat Gaussians on a sphere (Fibonacci lattice), textured by longitude/latitude."""
    count = max(50, int(4 * np.pi * radius**2 / spacing**2))
    k = np.arange(count) + 0.5
    z = 1 - 2 * k / count
    phi = np.pi * (1 + 5**0.5) * k
    r = np.sqrt(1 - z * z)
    normals = np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)
    means = np.asarray(centre) + radius * normals
    st = np.stack([np.mod(phi, 2 * np.pi) * radius, np.arccos(z) * radius], axis=1)
    tangents = np.cross(np.array([0.0, 0.0, 1.0]), normals) + 1e-6
    in_plane = spacing * 0.65
    scales = np.tile([in_plane, in_plane, spacing * 0.05], (count, 1))
    return means, _frame_quaternions(normals, tangents), scales, texture(st)


def _box_faces(centre, size) -> list[Surface]:
    """The six faces of an axis-aligned box; cross(axis_s, axis_t) points out of the box."""
    c, h = np.asarray(centre, float), np.asarray(size, float) / 2
    faces = []
    for axis in range(3):
        n, u, v = np.roll(np.eye(3), -axis, axis=0)  # right-handed: cross(u, v) = n
        hu, hv = u * h[(axis + 1) % 3], v * h[(axis + 2) % 3]
        for sign in (1.0, -1.0):
            corner = c + sign * n * h[axis] - hu - hv
            su, sv = (2 * hu, 2 * hv) if sign > 0 else (2 * hv, 2 * hu)
            faces.append(Surface(corner, su, sv))
    return faces


def _tabletop_parts(rng: np.random.Generator, detail: float):
    spacing = 0.008 / detail
    patches = [(Surface(np.array([-0.8, -0.6, 0.0]), np.array([1.6, 0.0, 0.0]), np.array([0.0, 1.2, 0.0])), spacing)]
    for _ in range(4):
        size = rng.uniform([0.08, 0.08, 0.06], [0.3, 0.25, 0.3])
        centre = np.append(rng.uniform([-0.55, -0.4], [0.55, 0.4]), size[2] / 2)
        patches += [(face, spacing) for face in _box_faces(centre, size)]
    spheres = [(np.append(rng.uniform([-0.5, -0.35], [0.5, 0.35]), r), r, spacing)
               for r in rng.uniform(0.05, 0.12, 2)]
    # Cylindrical backdrop made of vertical panels, so that distant structure fills the view.
    panels, radius, height = 40, 2.0, 1.4
    angles = np.linspace(0, 2 * np.pi, panels + 1)
    back = spacing * 5.0
    for a0, a1 in zip(angles[:-1], angles[1:], strict=True):
        p0 = np.array([radius * np.cos(a0), radius * np.sin(a0), -0.4])
        p1 = np.array([radius * np.cos(a1), radius * np.sin(a1), -0.4])
        patches.append((Surface(p0, p1 - p0, np.array([0.0, 0.0, height])), back))
    return patches, spheres


def _room_parts(rng: np.random.Generator, detail: float):
    spacing = 0.03 / detail
    w, d, h = 4.0, 3.0, 2.5
    o = np.array([-w / 2, -d / 2, 0.0])
    ex, ey, ez = np.array([w, 0, 0.0]), np.array([0, d, 0.0]), np.array([0, 0, h])
    walls = [
        Surface(o, ex, ey),  # floor (normal +z)
        Surface(o + ez, ey, ex),  # ceiling (normal -z)
        Surface(o, ez, ex),  # wall y = -d/2 (normal +y)
        Surface(o + ey, ex, ez),  # wall y = +d/2 (normal -y)
        Surface(o, ey, ez),  # wall x = -w/2 (normal +x)
        Surface(o + ex, ez, ey),  # wall x = +w/2 (normal -x)
    ]
    patches = [(s, spacing) for s in walls]
    for _ in range(3):
        size = rng.uniform([0.3, 0.3, 0.3], [0.8, 0.6, 1.0])
        centre = np.append(rng.uniform([-1.3, -0.9], [1.3, 0.9]), size[2] / 2)
        patches += [(face, spacing * 0.6) for face in _box_faces(centre, size)]
    return patches, []


def _poster_parts(rng: np.random.Generator, detail: float):
    """A plain wall (4 x 2.5 m, the plane y = 0, facing -y) with one textured poster (0.8 x 0.6 m) on it."""
    spacing = 0.02 / detail
    wall = Surface(np.array([-2.0, 0.0, 0.0]), np.array([0.0, 0.0, 2.5]), np.array([4.0, 0.0, 0.0]))
    poster = Surface(np.array([-0.4, -0.01, 1.0]), np.array([0.0, 0.0, 0.6]), np.array([0.8, 0.0, 0.0]))
    return [(wall, spacing, True), (poster, spacing * 0.5, False)], []


def make_scene(kind: str = "tabletop", seed: int = 0, detail: float = 1.0) -> GaussianMap:
    """A procedural scene of the given ``kind`` (see :data:`SCENE_KINDS`), deterministic by ``seed``.

    ``detail`` scales the Gaussian density (1.0: about 60-100k Gaussians).
    """
    if kind not in SCENE_KINDS:
        raise ValueError(f"unknown scene kind {kind!r}; choose one of {', '.join(SCENE_KINDS)}")
    if not detail > 0:
        raise ValueError(f"detail must be positive, got {detail}")
    rng = np.random.default_rng(seed)
    patches, spheres = {"tabletop": _tabletop_parts, "room": _room_parts, "poster": _poster_parts}[kind](rng, detail)
    parts = []
    for surface, spacing, *plain in patches:
        extent = max(np.linalg.norm(surface.axis_s), np.linalg.norm(surface.axis_t))
        parts.append(_gaussians_on_patch(surface, spacing, Texture(rng, extent, plain=bool(plain and plain[0])), rng))
    for centre, radius, spacing in spheres:
        parts.append(_gaussians_on_sphere(centre, radius, spacing, Texture(rng, 2 * np.pi * radius)))
    means, quats, scales, colours = (np.concatenate(x) for x in zip(*parts, strict=True))
    opacities = np.full(len(means), 0.95)
    sh = ((colours - 0.5) / SH_C0)[:, None, :]
    log.debug("made %s scene (seed %d) with %d Gaussians", kind, seed, len(means))
    return GaussianMap(means, quats, scales, opacities, sh, source=f"synthetic:{kind}:{seed}")
