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

import math
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
from numba import literal_unroll  # noqa: E402


_jit = numba.njit(cache=True, nogil=True, error_model='numpy')


@_jit
def _affine_linear(sources, lo, hi, m, out, shape, pads):
    """Trilinear ``sources`` (a tuple of C_f x voxels arrays) at ``m @ (i, j, k, 1)`` for every output voxel.

    Row by row: the map is evaluated once per output voxel of a row into small buffers (flat
    index, neighbour strides, fractions), then each channel walks the row from them in a tight
    loop (1.4x faster than one loop doing both). The matrix is in scalars and the flat indices are
    unsigned (no negative-index checks); a helper called per voxel is not inlined and costs 2-5x.
    The sampling rules are ITK's: inside when ``lo - 0.5 <= index < hi - 0.5`` on every axis
    (``lo`` also carries the flat strides), neighbours clamped to the box's edge.
    """
    one, zero = numba.uint64(1), numba.uint64(0)
    plane, row = numba.uint64(lo[3]), numba.uint64(lo[4])
    z_lo, y_lo, x_lo = lo[0] - 0.5, lo[1] - 0.5, lo[2] - 0.5
    z_hi, y_hi, x_hi = hi[0] - 0.5, hi[1] - 0.5, hi[2] - 0.5
    z_last, y_last, x_last = hi[0] - 1, hi[1] - 1, hi[2] - 1
    m00, m01, m02, m03 = m[0, 0], m[0, 1], m[0, 2], m[0, 3]
    m10, m11, m12, m13 = m[1, 0], m[1, 1], m[1, 2], m[1, 3]
    m20, m21, m22, m23 = m[2, 0], m[2, 1], m[2, 2], m[2, 3]
    width = shape[2]
    bases = np.empty(width, np.uint64)
    strides = np.empty((3, width), np.uint64)
    fractions = np.empty((3, width), np.float64)
    inside = np.empty(width, np.bool_)
    row_start = zero
    for i in range(shape[0]):
        for j in range(shape[1]):
            z_row, y_row, x_row = m00 * i + m01 * j + m03, m10 * i + m11 * j + m13, m20 * i + m21 * j + m23
            for k in range(width):
                z, y, x = z_row + m02 * k, y_row + m12 * k, x_row + m22 * k
                inside[k] = z_lo <= z < z_hi and y_lo <= y < y_hi and x_lo <= x < x_hi
                if not inside[k]:
                    continue
                zf, yf, xf = math.floor(z), math.floor(y), math.floor(x)
                z0, y0, x0 = int(zf), int(yf), int(xf)
                fz, fy, fx = z - zf, y - yf, x - xf
                if z0 < lo[0]:
                    z0, fz = lo[0], 0.0
                if y0 < lo[1]:
                    y0, fy = lo[1], 0.0
                if x0 < lo[2]:
                    x0, fx = lo[2], 0.0
                strides[0, k] = plane if z0 < z_last else zero
                strides[1, k] = row if y0 < y_last else zero
                strides[2, k] = one if x0 < x_last else zero
                fractions[0, k], fractions[1, k], fractions[2, k] = fz, fy, fx
                bases[k] = numba.uint64(z0) * plane + numba.uint64(y0) * row + numba.uint64(x0)
            c = zero  # unsigned: no negative-index check on out
            for source in literal_unroll(sources):  # the files of an image share the coordinates
                for channel in range(source.shape[0]):
                    s, o, pad = source[channel], out[c], pads[c]
                    n = row_start
                    for k in range(width):
                        if not inside[k]:
                            o[n] = pad
                        else:
                            base, sz, sy, sx = bases[k], strides[0, k], strides[1, k], strides[2, k]
                            fz, fy, fx = fractions[0, k], fractions[1, k], fractions[2, k]
                            v000, v001 = float(s[base]), float(s[base + sx])
                            v010, v011 = float(s[base + sy]), float(s[base + sy + sx])
                            v100, v101 = float(s[base + sz]), float(s[base + sz + sx])
                            v110, v111 = float(s[base + sz + sy]), float(s[base + sz + sy + sx])
                            a = v000 + (v001 - v000) * fx
                            b = v010 + (v011 - v010) * fx
                            e = v100 + (v101 - v100) * fx
                            f = v110 + (v111 - v110) * fx
                            near = a + (b - a) * fy
                            o[n] = near + (e + (f - e) * fy - near) * fz
                        n += one
                    c += one
            row_start += numba.uint64(width)


@_jit
def _affine_nearest(src, lo, hi, m, out, shape, pads):
    """Nearest ``src`` at ``m @ (i, j, k, 1)`` for every output voxel (rounding half up, as ITK)."""
    one = numba.uint64(1)
    plane, row = numba.uint64(lo[3]), numba.uint64(lo[4])
    z_lo, y_lo, x_lo = lo[0] - 0.5, lo[1] - 0.5, lo[2] - 0.5
    z_hi, y_hi, x_hi = hi[0] - 0.5, hi[1] - 0.5, hi[2] - 0.5
    m00, m01, m02, m03 = m[0, 0], m[0, 1], m[0, 2], m[0, 3]
    m10, m11, m12, m13 = m[1, 0], m[1, 1], m[1, 2], m[1, 3]
    m20, m21, m22, m23 = m[2, 0], m[2, 1], m[2, 2], m[2, 3]
    channels = out.shape[0]
    n = numba.uint64(0)
    for i in range(shape[0]):
        for j in range(shape[1]):
            z_row, y_row, x_row = m00 * i + m01 * j + m03, m10 * i + m11 * j + m13, m20 * i + m21 * j + m23
            for k in range(shape[2]):
                z, y, x = z_row + m02 * k, y_row + m12 * k, x_row + m22 * k
                if z_lo <= z < z_hi and y_lo <= y < y_hi and x_lo <= x < x_hi:
                    base = (numba.uint64(math.floor(z + 0.5)) * plane + numba.uint64(math.floor(y + 0.5)) * row
                            + numba.uint64(math.floor(x + 0.5)))
                    for c in range(channels):
                        out[c, n] = src[c][base]
                else:
                    for c in range(channels):
                        out[c, n] = pads[c]
                n += one


@_jit
def _field_linear(sources, lo, hi, coordinates, out, pads):
    """Trilinear ``sources`` (a tuple of C_f x voxels arrays) at ``coordinates[:, n]`` for every output voxel n.

    The body of :func:`_affine_linear`, with the coordinates read instead of computed.
    """
    one, zero = numba.uint64(1), numba.uint64(0)
    plane, row = numba.uint64(lo[3]), numba.uint64(lo[4])
    z_lo, y_lo, x_lo = lo[0] - 0.5, lo[1] - 0.5, lo[2] - 0.5
    z_hi, y_hi, x_hi = hi[0] - 0.5, hi[1] - 0.5, hi[2] - 0.5
    z_last, y_last, x_last = hi[0] - 1, hi[1] - 1, hi[2] - 1
    channels = out.shape[0]
    for n in range(out.shape[1]):
        z, y, x = coordinates[0, n], coordinates[1, n], coordinates[2, n]
        if not (z_lo <= z < z_hi and y_lo <= y < y_hi and x_lo <= x < x_hi):
            for c in range(channels):
                out[c, n] = pads[c]
            continue
        zf, yf, xf = math.floor(z), math.floor(y), math.floor(x)
        z0, y0, x0 = int(zf), int(yf), int(xf)
        fz, fy, fx = z - zf, y - yf, x - xf
        if z0 < lo[0]:
            z0, fz = lo[0], 0.0
        if y0 < lo[1]:
            y0, fy = lo[1], 0.0
        if x0 < lo[2]:
            x0, fx = lo[2], 0.0
        sz = plane if z0 < z_last else zero
        sy = row if y0 < y_last else zero
        sx = one if x0 < x_last else zero
        base = numba.uint64(z0) * plane + numba.uint64(y0) * row + numba.uint64(x0)
        c = zero
        for source in literal_unroll(sources):
            for channel in range(source.shape[0]):
                s = source[channel]
                v000, v001 = float(s[base]), float(s[base + sx])
                v010, v011 = float(s[base + sy]), float(s[base + sy + sx])
                v100, v101 = float(s[base + sz]), float(s[base + sz + sx])
                v110, v111 = float(s[base + sz + sy]), float(s[base + sz + sy + sx])
                a = v000 + (v001 - v000) * fx
                b = v010 + (v011 - v010) * fx
                e = v100 + (v101 - v100) * fx
                f = v110 + (v111 - v110) * fx
                near = a + (b - a) * fy
                out[c, n] = near + (e + (f - e) * fy - near) * fz
                c += one


@_jit
def _field_nearest(src, lo, hi, coordinates, out, pads):
    """Nearest ``src`` at ``coordinates[:, n]`` for every output voxel n."""
    plane, row = numba.uint64(lo[3]), numba.uint64(lo[4])
    z_lo, y_lo, x_lo = lo[0] - 0.5, lo[1] - 0.5, lo[2] - 0.5
    z_hi, y_hi, x_hi = hi[0] - 0.5, hi[1] - 0.5, hi[2] - 0.5
    channels = out.shape[0]
    for n in range(out.shape[1]):
        z, y, x = coordinates[0, n], coordinates[1, n], coordinates[2, n]
        if z_lo <= z < z_hi and y_lo <= y < y_hi and x_lo <= x < x_hi:
            base = (numba.uint64(math.floor(z + 0.5)) * plane + numba.uint64(math.floor(y + 0.5)) * row
                    + numba.uint64(math.floor(x + 0.5)))
            for c in range(channels):
                out[c, n] = src[c][base]
        else:
            for c in range(channels):
                out[c, n] = pads[c]


@_jit
def _cubic_weights(c, weights):
    """Cubic B-spline weights of the 4 coefficients from ``floor(c) - 1`` at ``c``."""
    f = c - math.floor(c)
    g = 1.0 - f
    weights[0] = g * g * g / 6.0
    weights[1] = (3.0 * f * f * f - 6.0 * f * f + 4.0) / 6.0
    weights[2] = (-3.0 * f * f * f + 3.0 * f * f + 3.0 * f + 1.0) / 6.0
    weights[3] = f * f * f / 6.0


@_jit
def _bspline_coordinates(before, to_grid, coefficients, linear_inverse, after, shape, out):
    """Source index of every output voxel through [``before`` maps, a cubic B-spline, ``after`` maps].

    ``after`` (3 x 4) takes the output index to the volume index q the B-spline sees (the steps
    after it); ``to_grid`` (3 x 4) takes q to the control grid's continuous index c; the
    displacement (LPS mm) is ITK's ``BSplineTransform``: the 4 x 4 x 4 coefficients from
    ``floor(c) - 1`` weighted by the cubic B-spline, zero outside its valid region
    ``1 <= c < size - 2``; ``linear_inverse`` takes it back to voxel indices, and ``before``
    (3 x 4) maps the result through the steps before the B-spline.
    """
    size_x, size_y, size_z = coefficients.shape[1], coefficients.shape[2], coefficients.shape[3]
    wx, wy, wz = np.empty(4), np.empty(4), np.empty(4)
    n = 0
    for i in range(shape[0]):
        for j in range(shape[1]):
            for k in range(shape[2]):
                q0 = after[0, 0] * i + after[0, 1] * j + after[0, 2] * k + after[0, 3]
                q1 = after[1, 0] * i + after[1, 1] * j + after[1, 2] * k + after[1, 3]
                q2 = after[2, 0] * i + after[2, 1] * j + after[2, 2] * k + after[2, 3]
                c0 = to_grid[0, 0] * q0 + to_grid[0, 1] * q1 + to_grid[0, 2] * q2 + to_grid[0, 3]
                c1 = to_grid[1, 0] * q0 + to_grid[1, 1] * q1 + to_grid[1, 2] * q2 + to_grid[1, 3]
                c2 = to_grid[2, 0] * q0 + to_grid[2, 1] * q1 + to_grid[2, 2] * q2 + to_grid[2, 3]
                d0 = d1 = d2 = 0.0
                if 1.0 <= c0 < size_x - 2.0 and 1.0 <= c1 < size_y - 2.0 and 1.0 <= c2 < size_z - 2.0:
                    _cubic_weights(c0, wx)
                    _cubic_weights(c1, wy)
                    _cubic_weights(c2, wz)
                    x0 = numba.uint64(math.floor(c0) - 1)
                    y0 = numba.uint64(math.floor(c1) - 1)
                    z0 = numba.uint64(math.floor(c2) - 1)
                    for a in range(4):
                        for b in range(4):
                            wab = wx[a] * wy[b]
                            x, y = x0 + numba.uint64(a), y0 + numba.uint64(b)
                            for e in range(4):
                                w = wab * wz[e]
                                z = z0 + numba.uint64(e)
                                d0 += w * coefficients[0, x, y, z]
                                d1 += w * coefficients[1, x, y, z]
                                d2 += w * coefficients[2, x, y, z]
                r0 = q0 + linear_inverse[0, 0] * d0 + linear_inverse[0, 1] * d1 + linear_inverse[0, 2] * d2
                r1 = q1 + linear_inverse[1, 0] * d0 + linear_inverse[1, 1] * d1 + linear_inverse[1, 2] * d2
                r2 = q2 + linear_inverse[2, 0] * d0 + linear_inverse[2, 1] * d1 + linear_inverse[2, 2] * d2
                out[0, n] = before[0, 0] * r0 + before[0, 1] * r1 + before[0, 2] * r2 + before[0, 3]
                out[1, n] = before[1, 0] * r0 + before[1, 1] * r1 + before[1, 2] * r2 + before[1, 3]
                out[2, n] = before[2, 0] * r0 + before[2, 1] * r1 + before[2, 2] * r2 + before[2, 3]
                n += 1


def bspline_coordinates(before: np.ndarray, to_grid: np.ndarray, coefficients: np.ndarray,
                        linear_inverse: np.ndarray, after: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """The 3 x d x h x w coordinate field of :func:`_bspline_coordinates` (see there)."""
    out = np.empty((3, int(np.prod(shape))), dtype=np.float64)
    _bspline_coordinates(np.ascontiguousarray(before[:3], np.float64), np.ascontiguousarray(to_grid[:3], np.float64),
                         np.ascontiguousarray(coefficients, np.float64), np.ascontiguousarray(linear_inverse, np.float64),
                         np.ascontiguousarray(after[:3], np.float64), np.asarray(shape, np.int64), out)
    return out.reshape(3, *shape)


def sample(sources: list[np.ndarray], box: tuple[np.ndarray, np.ndarray], mapping: np.ndarray, out: np.ndarray,
           pads: list[float], nearest: bool) -> np.ndarray:
    """Sample every channel of ``sources`` inside ``box`` into ``out``.

    Args:
        sources: Each file's whole C_f x D x H x W array (memory maps welcome: only the voxels
            sampled are read), any numeric dtype; their channels are stacked in ``out``.
        box: (start, stop) voxel indices (D, H, W) of the region the sampling may read;
            coordinates beyond it by half a voxel or more get the pad value.
        mapping: Output index (of ``out``) to source index: a 3 x 4 (or 4 x 4) matrix, or a
            3 x d x h x w coordinate field.
        out: C x d x h x w output, C-contiguous (float32 for images, the label dtype for labels).
        pads: Per-channel value outside the box.
        nearest: Nearest neighbour (labels, or as asked) instead of trilinear.

    Example:
        >>> source = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
        >>> out = np.empty((1, 1, 1, 1), np.float32)
        >>> shift = np.array([[1, 0, 0, .5], [0, 1, 0, .5], [0, 0, 1, .5]])
        >>> float(sample([source], ((0, 0, 0), (2, 2, 2)), shift, out, [0.0], False)[0, 0, 0, 0])
        3.5
    """
    pad_values = np.asarray(pads, dtype=np.float64)
    shape = np.asarray(out.shape[1:], dtype=np.int64)
    flat_out = out.reshape(out.shape[0], -1)  # a view: out is C-contiguous
    field = mapping.ndim == 4
    mapping = np.ascontiguousarray(mapping.reshape(3, -1) if field else mapping[:3], dtype=np.float64)
    height, width = sources[0].shape[2:]
    lo = np.array([*box[0], height * width, width], dtype=np.int64)
    hi = np.asarray(box[1], dtype=np.int64)
    # C_f x voxels views (no copy for memory maps and stacked boxes), in runs of one dtype:
    # one pass per run, its files sharing the coordinates of each output voxel.
    flats = [np.ascontiguousarray(_native(source)).reshape(source.shape[0], -1) for source in sources]
    runs = [[flats[0]]]
    for flat in flats[1:]:
        if flat.dtype == runs[-1][0].dtype:
            runs[-1].append(flat)
        else:
            runs.append([flat])
    channel = 0
    for run in runs:
        count = sum(flat.shape[0] for flat in run)
        part, part_pads = flat_out[channel:channel + count], pad_values[channel:channel + count]
        channel += count
        if not nearest:  # one pass for the run
            if field:
                _field_linear(tuple(run), lo, hi, mapping, part, part_pads)
            else:
                _affine_linear(tuple(run), lo, hi, mapping, part, shape, part_pads)
            continue
        offset = 0
        for flat in run:  # labels are one file each, as a rule
            size = flat.shape[0]
            section, section_pads = part[offset:offset + size], part_pads[offset:offset + size]
            if field:
                _field_nearest(flat, lo, hi, mapping, section, section_pads)
            else:
                _affine_nearest(flat, lo, hi, mapping, section, shape, section_pads)
            offset += size
    return out


def warm() -> None:
    """Load (or compile) the kernels for float32 images (one and two files) and uint8 labels.

    numba's first call in a process costs ~0.3 s even with the kernels cached on disk.
    """
    box = ((0, 0, 0), (2, 2, 2))
    image, label = np.zeros((1, 2, 2, 2), np.float32), np.zeros((1, 2, 2, 2), np.uint8)
    for sources, dtype, nearest in (([image], np.float32, False), ([image, image], np.float32, False),
                                    ([label], np.uint8, True)):
        sample(sources, box, np.eye(4), np.empty((len(sources), 1, 1, 1), dtype), [0.0] * len(sources), nearest)


def _native(source: np.ndarray) -> np.ndarray:
    """``source`` in a dtype numba reads: native byte order (a copy of a big-endian file's array),
    float16 as float32; other dtypes as they are."""
    if source.dtype.kind == 'f' and source.dtype.itemsize == 2:
        return source.astype(np.float32)
    return source if source.dtype.isnative else source.astype(source.dtype.newbyteorder('='))


def crop(sources: list[np.ndarray], box: tuple[np.ndarray, np.ndarray], signs: np.ndarray, offsets: np.ndarray,
         out: np.ndarray) -> np.ndarray | None:
    """``out`` filled by slicing ``sources`` (no interpolation); None when the crop leaves ``box``."""
    size = np.array(out.shape[1:])
    first = offsets + np.where(signs > 0, 0, -(size - 1))  # smallest source index read, per axis
    if np.any(first < np.asarray(box[0])) or np.any(first + size > np.asarray(box[1])):
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
