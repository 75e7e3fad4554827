"""The numba engine: one compiled pass per image of a patch, all its spatial steps fused.

The spatial steps of a patch are composed into one output-to-input map on voxel indices (a
4 x 4 matrix, or a dense coordinate field when an elastic step is drawn). Each kernel walks the
output voxels once, evaluates the map once per voxel and samples every channel of a source
from those coordinates: images trilinear, labels nearest (keeping their dtype). The source is
the patch's box, a view of the reader's array (the cache's memory map) in its stored dtype.
A voxel mapping outside the box gets its channel's pad value.

The sampling rules are SimpleITK's (the oracle, :mod:`.sitk_engine`): a continuous index is
inside when ``-0.5 <= i < n - 0.5`` on every axis; trilinear interpolation clamps to the edge
voxel within that half voxel; nearest rounds half up. Kernels are single-threaded and release
the GIL (the queue's threads run them side by side), and are cached on disk (``cache=True``):
numba writes next to this file when it can, else under the user's cache folder
(``~/.cache/numba``); when neither is writable, :func:`cache_folder` picks a temporary folder
and sets ``NUMBA_CACHE_DIR`` before numba is imported.

This module imports numba: import it only when the numba engine runs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


def cache_folder() -> str | None:
    """Set ``NUMBA_CACHE_DIR`` when numba would have nowhere to cache (returns it), else None.

    numba caches next to the module (``__pycache__``) when that folder is writable, else in
    the user's cache folder; with both read-only (a container), compiling each worker's
    kernels again every run would cost seconds, so a temporary folder is used instead.
    """
    if os.environ.get('NUMBA_CACHE_DIR'):
        return None
    here = Path(__file__).parent / '__pycache__'
    user = Path(os.environ.get('XDG_CACHE_HOME', Path.home() / '.cache')) / 'numba'
    for folder in (here, user):
        probe = folder if folder.exists() else folder.parent
        if os.access(probe, os.W_OK):
            return None
    folder = os.path.join(tempfile.gettempdir(), f'pyable-tio-numba-{os.getuid() if hasattr(os, "getuid") else 0}')
    os.makedirs(folder, exist_ok=True)
    os.environ['NUMBA_CACHE_DIR'] = folder
    return folder


cache_folder()

import numba  # noqa: E402  (after NUMBA_CACHE_DIR is settled)

_jit = numba.njit(cache=True, nogil=True, boundscheck=False, error_model='numpy')


@numba.njit(cache=True, nogil=True, boundscheck=False, inline='always')
def _linear_at(src, out, i, j, k, z, y, x, pads):
    """Trilinear sample of every channel of ``src`` at continuous index (z, y, x), as ITK does."""
    depth, height, width = src.shape[1], src.shape[2], src.shape[3]
    if not (-0.5 <= z < depth - 0.5 and -0.5 <= y < height - 0.5 and -0.5 <= x < width - 0.5):
        for c in range(src.shape[0]):
            out[c, i, j, k] = pads[c]
        return
    z0, y0, x0 = max(int(np.floor(z)), 0), max(int(np.floor(y)), 0), max(int(np.floor(x)), 0)
    fz, fy, fx = max(z - z0, 0.0), max(y - y0, 0.0), max(x - x0, 0.0)
    z1, y1, x1 = min(z0 + 1, depth - 1), min(y0 + 1, height - 1), min(x0 + 1, width - 1)
    for c in range(src.shape[0]):
        a = float(src[c, z0, y0, x0]) + (float(src[c, z0, y0, x1]) - float(src[c, z0, y0, x0])) * fx
        b = float(src[c, z0, y1, x0]) + (float(src[c, z0, y1, x1]) - float(src[c, z0, y1, x0])) * fx
        e = float(src[c, z1, y0, x0]) + (float(src[c, z1, y0, x1]) - float(src[c, z1, y0, x0])) * fx
        f = float(src[c, z1, y1, x0]) + (float(src[c, z1, y1, x1]) - float(src[c, z1, y1, x0])) * fx
        near, far = a + (b - a) * fy, e + (f - e) * fy
        out[c, i, j, k] = near + (far - near) * fz


@numba.njit(cache=True, nogil=True, boundscheck=False, inline='always')
def _nearest_at(src, out, i, j, k, z, y, x, pads):
    """Nearest sample (rounding half up, as ITK) of every channel of ``src`` at (z, y, x)."""
    depth, height, width = src.shape[1], src.shape[2], src.shape[3]
    if not (-0.5 <= z < depth - 0.5 and -0.5 <= y < height - 0.5 and -0.5 <= x < width - 0.5):
        for c in range(src.shape[0]):
            out[c, i, j, k] = pads[c]
        return
    zi, yi, xi = int(np.floor(z + 0.5)), int(np.floor(y + 0.5)), int(np.floor(x + 0.5))
    for c in range(src.shape[0]):
        out[c, i, j, k] = src[c, zi, yi, xi]


@_jit
def affine_linear(src, matrix, out, pads):
    """``out[c, i, j, k]`` = trilinear ``src[c]`` at ``matrix @ (i, j, k, 1)`` (3 x 4, box indices)."""
    m = matrix
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            z = m[0, 0] * i + m[0, 1] * j + m[0, 3]
            y = m[1, 0] * i + m[1, 1] * j + m[1, 3]
            x = m[2, 0] * i + m[2, 1] * j + m[2, 3]
            for k in range(out.shape[3]):
                _linear_at(src, out, i, j, k, z + m[0, 2] * k, y + m[1, 2] * k, x + m[2, 2] * k, pads)


@_jit
def affine_nearest(src, matrix, out, pads):
    """``out[c, i, j, k]`` = nearest ``src[c]`` at ``matrix @ (i, j, k, 1)`` (3 x 4, box indices)."""
    m = matrix
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            z = m[0, 0] * i + m[0, 1] * j + m[0, 3]
            y = m[1, 0] * i + m[1, 1] * j + m[1, 3]
            x = m[2, 0] * i + m[2, 1] * j + m[2, 3]
            for k in range(out.shape[3]):
                _nearest_at(src, out, i, j, k, z + m[0, 2] * k, y + m[1, 2] * k, x + m[2, 2] * k, pads)


@_jit
def field_linear(src, coordinates, out, pads):
    """``out[c, i, j, k]`` = trilinear ``src[c]`` at ``coordinates[:, i, j, k]`` (box indices)."""
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            for k in range(out.shape[3]):
                _linear_at(src, out, i, j, k, coordinates[0, i, j, k], coordinates[1, i, j, k],
                           coordinates[2, i, j, k], pads)


@_jit
def field_nearest(src, coordinates, out, pads):
    """``out[c, i, j, k]`` = nearest ``src[c]`` at ``coordinates[:, i, j, k]`` (box indices)."""
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            for k in range(out.shape[3]):
                _nearest_at(src, out, i, j, k, coordinates[0, i, j, k], coordinates[1, i, j, k],
                            coordinates[2, i, j, k], pads)


def sample(sources: list[np.ndarray], mapping: np.ndarray, out: np.ndarray, pads: list[float],
           nearest: bool) -> np.ndarray:
    """Sample the channels of ``sources`` (C_f x D x H x W boxes, stacked) into ``out``.

    Args:
        sources: The box of each file (views of memory maps welcome), any numeric dtype.
        mapping: Output index (of ``out``) to box index: a 3 x 4 / 4 x 4 matrix, or a
            3 x d x h x w coordinate field.
        out: C x d x h x w output (float32 for images, the label dtype for labels).
        pads: Per-channel value outside the box.
        nearest: Nearest neighbour (labels, or as asked) instead of trilinear.

    Example:
        >>> box = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
        >>> out = np.empty((1, 1, 1, 1), np.float32)
        >>> sample([box], np.array([[1, 0, 0, .5], [0, 1, 0, .5], [0, 0, 1, .5]]), out, [0.0], False)[0, 0, 0, 0]
        3.5
    """
    pad_values = np.asarray(pads, dtype=np.float64)
    field = mapping.ndim == 4
    if field:
        kernel, mapping = (field_nearest if nearest else field_linear), np.ascontiguousarray(mapping, np.float64)
    else:
        kernel, mapping = (affine_nearest if nearest else affine_linear), np.ascontiguousarray(mapping[:3], np.float64)
    channel = 0
    for source in sources:
        count = source.shape[0]
        kernel(np.asarray(source), mapping, out[channel:channel + count], pad_values[channel:channel + count])
        channel += count
    return out


def as_crop(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(signs, offsets) when ``matrix`` only flips axes and shifts by whole voxels, else None.

    Such a map needs no interpolation: the patch is a crop of the source, reversed on the
    axes whose sign is -1 (source index = sign * output index + offset).

    Example:
        >>> as_crop(np.array([[-1., 0, 0, 9], [0, 1, 0, 2], [0, 0, 1, 0], [0, 0, 0, 1]]))
        (array([-1,  1,  1]), array([9, 2, 0]))
    """
    linear, offset = matrix[:3, :3], matrix[:3, 3]
    signs = np.rint(np.diag(linear))
    if not (np.all(np.abs(signs) == 1) and np.allclose(linear, np.diag(signs), atol=1e-9)
            and np.allclose(offset, np.rint(offset), atol=1e-9)):
        return None
    return signs.astype(int), np.rint(offset).astype(int)


def crop(sources: list[np.ndarray], signs: np.ndarray, offsets: np.ndarray, out: np.ndarray) -> np.ndarray | None:
    """``out`` filled by slicing ``sources`` (no interpolation); None when the crop leaves them."""
    shape = np.array(sources[0].shape[1:])
    size = np.array(out.shape[1:])
    first = offsets + np.where(signs > 0, 0, -(size - 1))  # smallest source index read, per axis
    if np.any(first < 0) or np.any(first + size > shape):
        return None
    region = tuple(slice(int(a), int(a + n)) for a, n in zip(first, size))
    flips = tuple(1 + a for a in range(3) if signs[a] < 0)
    channel = 0
    for source in sources:
        part = source[(slice(None), *region)]
        count = part.shape[0]
        out[channel:channel + count] = np.flip(part, flips) if flips else part
        channel += count
    return out
