"""``numba.njit`` with the on-disk cache where it can be written, without it where it cannot."""

from __future__ import annotations

import logging

import numba as nb

logger = logging.getLogger(__name__)

_uncached: list[str] = []


def jit(**options):
    """``numba.njit(cache=True, **options)``, or without the disk cache where it cannot be written.

    numba caches beside the source, else in the user's cache directory; when neither is writable
    (a read-only install run by a user without a home) it would refuse to compile at import.
    ``NUMBA_CACHE_DIR`` points it elsewhere.
    """

    def decorate(function):
        try:
            return nb.njit(cache=True, **options)(function)
        except RuntimeError as exc:  # "cannot cache function ...: no locator available"
            if not _uncached:
                logger.warning("%s; numba kernels will be compiled in every process (set NUMBA_CACHE_DIR)", exc)
            _uncached.append(function.__name__)
            return nb.njit(**options)(function)

    return decorate
