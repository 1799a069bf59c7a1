"""Map files: read a 3DGS map into a :class:`~gsvisloc_ros.gaussians.GaussianMap`, write it back.

Formats read (chosen by content first, then by extension):

* ``.ply`` (starts with ``ply``): the INRIA layout and its variants (nerfstudio, gsplat, Brush,
  Mip-Splatting, SuperSplat), ASCII or binary of either byte order, plus the PlayCanvas/SuperSplat
  *compressed* PLY that gsplat also exports. See :mod:`gsvisloc_ros.io.ply`.
* ``.splat``: the 32-bytes-per-Gaussian layout of the antimatter15 web viewer. See
  :mod:`gsvisloc_ros.io.splat`.

Written: the INRIA ``.ply`` (:func:`save_ply`), which every 3DGS tool reads.

Every problem with a file is a :class:`MapFormatError` naming the file and what is wrong.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from gsvisloc_ros.gaussians import GaussianMap

logger = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"


class MapFormatError(ValueError):
    """A map file that cannot be read: ``str(error)`` names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def detect_format(path: str | os.PathLike) -> str:
    """``"ply"`` or ``"splat"`` for a map file, from its first bytes and then its extension."""
    path = Path(path)
    if not path.exists():
        raise MapFormatError(path, "no such file")
    if not path.is_file():
        raise MapFormatError(path, "not a file (a map is a .ply or .splat file)")
    with open(path, "rb") as f:
        head = f.read(5)
    suffix = path.suffix.lower()
    if head.startswith((b"ply\n", b"ply\r\n")):
        return "ply"
    if head.startswith(GZIP_MAGIC):
        raise MapFormatError(path, "gzip-compressed (.spz or .ply.gz) maps are not supported: convert to .ply")
    if suffix == ".splat":
        return "splat"
    if suffix == ".ply":
        raise MapFormatError(path, f"not a PLY file: it starts with {head!r}, not 'ply'")
    raise MapFormatError(
        path, f"unknown map format {suffix or '(no extension)'!r}: expected a .ply (starting with 'ply') or a .splat"
    )


def load_map(path: str | os.PathLike) -> GaussianMap:
    """Read a 3DGS map, drop unusable Gaussians (logged) and check that some remain."""
    from gsvisloc_ros.io import ply, splat  # here, not at the top: they import MapFormatError from this module

    start = time.perf_counter()
    kind = detect_format(path)
    reader = ply.read_ply if kind == "ply" else splat.read_splat
    raw = reader(path)
    raw.source = str(path)
    gmap = raw.clean()
    if len(gmap) == 0:
        raise MapFormatError(path, f"none of its {len(raw)} Gaussians is usable ({raw.validate()})")
    logger.debug(
        "loaded %d Gaussians (SH degree %d) from %s in %.0f ms",
        len(gmap), gmap.sh_degree, path, 1000 * (time.perf_counter() - start),
    )
    return gmap


def save_ply(gmap: GaussianMap, path: str | os.PathLike) -> None:
    """Write ``gmap`` as an INRIA ``.ply`` (binary little endian)."""
    from gsvisloc_ros.io import ply

    ply.write_ply(gmap, path)


__all__ = ["MapFormatError", "detect_format", "load_map", "save_ply"]
