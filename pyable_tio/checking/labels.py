"""Checks of ROIs and label maps against their reference grid and their values.

A label map with a wrong header (identity affine) or one outside the image's field of view
resamples onto the grid as a few voxels or all zeros, silently. Two checks catch it:

- :func:`extent_problem`, from headers only (planning): its field of view barely overlaps
  its images'.
- :func:`foreground_problem`, where the voxels are read anyway (``validate``, the reader):
  how much of the foreground falls outside the grid.

:func:`values_problem` flags integer label maps with implausibly many distinct values (a
probability map listed as a label map), and :func:`as_integer_labels` gives float label maps
holding whole numbers an integer pixel type. Thresholds are in :mod:`pyable_tio.constants`.

Example:
    >>> from pyable_tio.geometry.grid import Grid
    >>> grid = Grid((10, 10, 10), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    >>> extent_overlap(grid, Grid((10, 10, 10), (1.0, 1.0, 1.0), (5.0, 0.0, 0.0), grid.direction))
    0.5
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..constants import (
    ID,
    LABEL_EXTENT_MIN_OVERLAP,
    LABEL_FOREGROUND_LOST_ERROR,
    LABEL_FOREGROUND_LOST_WARN,
    LABEL_FOREGROUND_SAMPLES,
    LABEL_MAX_DISTINCT_VALUES,
    LABEL_VALUES_SAMPLES,
)
from ..errors import describe
from ..geometry.grid import Grid

#: Lattice points per axis sampling a field of view (16^3 = 4096 points: overlap to ~1/16).
_EXTENT_SAMPLES = 16
#: Smallest integer pixel types, tried in order, for float label maps holding whole numbers.
_INTEGER_TYPES = ((np.uint8, sitk.sitkUInt8), (np.int16, sitk.sitkInt16), (np.int32, sitk.sitkInt32))
_FLOAT_TYPES = frozenset({sitk.sitkFloat32, sitk.sitkFloat64})


def _inside(index: np.ndarray, source: Grid, grid: Grid) -> np.ndarray:
    """Which continuous x,y,z indices of ``source`` (N x dim) fall in ``grid``'s field of view."""
    to_world = source.direction_matrix * np.asarray(source.spacing)
    to_grid = np.linalg.inv(grid.direction_matrix * np.asarray(grid.spacing))
    # source index -> grid index, one small affine
    return _within(index, to_grid @ to_world, to_grid @ (np.asarray(source.origin) - np.asarray(grid.origin)), grid)


def _within(coordinates: np.ndarray, matrix: np.ndarray, offset: np.ndarray, grid: Grid) -> np.ndarray:
    """Which ``coordinates`` (N x dim) fall in ``grid`` once mapped to its index by ``matrix``, ``offset``."""
    inside = np.ones(len(coordinates), bool)
    for axis in range(grid.dimension):  # column by column: no BLAS call on a tall, thin matrix
        coordinate = offset[axis] + sum(matrix[axis, k] * coordinates[:, k] for k in range(coordinates.shape[1]))
        inside &= (coordinate >= -0.5) & (coordinate <= grid.size[axis] - 0.5)
    return inside


def _volume(grid: Grid) -> float:
    return float(np.prod(np.asarray(grid.size) * np.asarray(grid.spacing)))


def extent_overlap(source: Grid, reference: Grid) -> float:
    """Share of the smaller field of view (``source``'s or ``reference``'s) inside the other.

    1.0 when one contains the other (a slab reference inside a whole-head label map, a small
    ROI file inside the image); 0.0 when they do not meet.

    Example:
        >>> grid = Grid((4, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> extent_overlap(grid, grid.as_3d())
        1.0
    """
    if source.dimension != reference.dimension:
        return 1.0  # a dimension mismatch has its own message
    axes = [(np.arange(_EXTENT_SAMPLES) + 0.5) / _EXTENT_SAMPLES * n - 0.5 for n in source.size]
    index = np.stack(np.meshgrid(*axes, indexing='ij'), axis=-1).reshape(-1, source.dimension)
    shared = float(_inside(index, source, reference).mean()) * _volume(source)
    return round(min(1.0, shared / min(_volume(source), _volume(reference))), 4)


def extent_problem(source: Grid, images: Sequence[Grid]) -> str | None:
    """Why a ROI/label map's field of view is off its subject's images' (headers only), or None.

    It passes when it overlaps one of ``images`` by at least
    :data:`~pyable_tio.constants.LABEL_EXTENT_MIN_OVERLAP` (:func:`extent_overlap`).

    Example:
        >>> grid = Grid((4, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> extent_problem(Grid((4, 4, 4), grid.spacing, (40.0, 0.0, 0.0), grid.direction), [grid])[:54]
        "its field of view does not meet its images' (0% overla"
    """
    overlap = max((extent_overlap(source, grid) for grid in images), default=1.0)
    if overlap >= LABEL_EXTENT_MIN_OVERLAP:
        return None
    meets = 'does not meet' if overlap == 0 else 'barely overlaps'
    return (
        f"its field of view {meets} its images' ({overlap:.0%} overlap, less than"
        f' {LABEL_EXTENT_MIN_OVERLAP:.0%}): most of it would be lost. Check its header (origin,'
        ' spacing, direction: an identity affine?) against the image it belongs to'
    )


def foreground_lost(image: sitk.Image, reference: Grid, transform: sitk.Transform | None = None) -> tuple[float, int]:
    """Share of ``image``'s non-zero voxels whose centres fall outside ``reference``, and their count.

    The one measure of "foreground outside the grid": ``validate`` and the reader warn or
    refuse on it, the QA sheet's ``in_grid`` is its complement.

    Args:
        image: The ROI/label map as read from its file.
        reference: The grid it is resampled onto.
        transform: The file's transform as resampling uses it (grid point to file point):
            its sampled voxels are mapped through the inverse, point by point. The share is
            NaN when it has no inverse.

    Example:
        >>> image = sitk.Image(4, 4, 4, sitk.sitkUInt8); image[0, 0, 0] = 1
        >>> foreground_lost(image, Grid.from_image(image))
        (0.0, 1)
    """
    view = sitk.GetArrayViewFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:
        view = view.any(axis=-1)
    count = int(np.count_nonzero(view))
    source = Grid.from_image(image)
    if count == 0 or (transform is None and source.matches(reference)):
        return 0.0, count
    inverse = None
    if transform is not None:
        try:
            inverse = transform.GetInverse()
        except RuntimeError:
            return float('nan'), count
    # Every step-th voxel, step a prime (no aliasing with the row and slice lengths): about
    # LABEL_FOREGROUND_SAMPLES foreground voxels without listing them all.
    step = _prime_at_least(count // LABEL_FOREGROUND_SAMPLES) if count > LABEL_FOREGROUND_SAMPLES else 1
    sample = np.flatnonzero(view.reshape(-1)[::step]) * step
    if sample.size == 0:
        sample = np.flatnonzero(view)
    index_xyz = np.stack(np.unravel_index(sample, view.shape)[::-1], axis=1).astype(float)
    if inverse is None:
        return 1.0 - float(_inside(index_xyz, source, reference).mean()), count
    points = np.asarray(source.origin) + index_xyz * np.asarray(source.spacing) @ source.direction_matrix.T
    points = np.array([inverse.TransformPoint(tuple(p)) for p in points])
    to_grid = np.linalg.inv(reference.direction_matrix * np.asarray(reference.spacing))
    inside = _within(points, to_grid, -to_grid @ np.asarray(reference.origin), reference)
    return 1.0 - float(inside.mean()), count


def _prime_at_least(n: int) -> int:
    n = max(n, 2)
    while any(n % k == 0 for k in range(2, int(n ** 0.5) + 1)):
        n += 1
    return n


def foreground_problem(image: sitk.Image, reference: Grid) -> tuple[str | None, str]:
    """``(level, message)``: how much foreground the reference grid loses; level None when little.

    ``level`` is ``"error"`` above :data:`~pyable_tio.constants.LABEL_FOREGROUND_LOST_ERROR`,
    ``"warning"`` above :data:`~pyable_tio.constants.LABEL_FOREGROUND_LOST_WARN`.

    Example:
        >>> image = sitk.Image(4, 4, 4, sitk.sitkUInt8); image[0, 0, 0] = 1
        >>> foreground_problem(image, Grid.from_image(image))[0] is None
        True
    """
    lost, count = foreground_lost(image, reference)
    if lost <= LABEL_FOREGROUND_LOST_WARN:
        return None, ''
    level = 'error' if lost > LABEL_FOREGROUND_LOST_ERROR else 'warning'
    message = (
        f'{lost:.0%} of its foreground ({count} non-zero voxels) falls outside the reference grid'
        ' and is lost: a wrong header (origin, spacing, direction), another subject\'s file, or a'
        ' reference that crops it'
    )
    return level, message


def distinct_values(image: sitk.Image | np.ndarray) -> int:
    """Number of distinct voxel values, among at most ``LABEL_VALUES_SAMPLES`` evenly strided voxels.

    ``image`` is a file's image (``validate``, the reader) or an array (the QA sheet's volume
    on the grid).

    Example:
        >>> distinct_values(sitk.GetImageFromArray(np.arange(6, dtype=np.uint8).reshape(2, 3)))
        6
    """
    view = np.asarray(image if isinstance(image, np.ndarray) else sitk.GetArrayViewFromImage(image)).reshape(-1)
    view = view[:: max(1, view.size // LABEL_VALUES_SAMPLES)]
    if view.dtype.kind in 'ui' and view.dtype.itemsize <= 2:
        # A table of every possible value: no sort (the bits as unsigned: as many distinct values).
        seen = np.zeros(256 ** view.dtype.itemsize, bool)
        seen[view.view(f'u{view.dtype.itemsize}')] = True
        return int(np.count_nonzero(seen))
    return int(np.unique(view).size)


def values_problem(image: sitk.Image) -> str | None:
    """Why an integer label map holds implausibly many distinct values, with the fix; or None.

    Example:
        >>> values_problem(sitk.GetImageFromArray(np.arange(256, dtype=np.uint8).reshape(16, 16)))[:44]
        'label map holds 256 distinct values (more th'
    """
    count = distinct_values(image)
    if count <= LABEL_MAX_DISTINCT_VALUES:
        return None
    return (
        f'label map holds {count} distinct values (more than {LABEL_MAX_DISTINCT_VALUES}), each a class:'
        ' a probability or intensity map? List it under "images" (or threshold it into a mask);'
        ' a parcellation with that many regions is fine (filter pyable_tio.errors.LabelValuesWarning)'
    )


def as_integer_labels(image: sitk.Image) -> sitk.Image:
    """A float label map holding whole numbers, cast to the smallest integer type that holds them.

    Integer files keep their type; so batches of label maps stay integer whichever way a file
    was written (uint8 for the usual small label values, like most label map files).

    Example:
        >>> as_integer_labels(sitk.GetImageFromArray(np.array([[0.0, 2.0]]))).GetPixelIDTypeAsString()
        '8-bit unsigned integer'
    """
    if image.GetPixelID() not in _FLOAT_TYPES:
        return image
    view = sitk.GetArrayViewFromImage(image)
    low, high = (float(view.min()), float(view.max())) if view.size else (0.0, 0.0)
    for dtype, pixel in _INTEGER_TYPES:
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return sitk.Cast(image, pixel)
    return sitk.Cast(image, sitk.sitkInt64)


#: Start of TorchIO's (and pyable-tio's fast path's) error for a label map with no usable voxel.
EMPTY_MAP_ERROR = 'Empty probability map found'


def empty_map_message(subject: Any, sampler: Any) -> str:
    """TorchIO's "empty probability map" error, naming the subject, the label map and its file.

    Example:
        >>> import torch, torchio as tio
        >>> subject = tio.Subject(id='sub-01', labelmap_0=tio.LabelMap(tensor=torch.zeros(1, 4, 4, 4)))
        >>> empty_map_message(subject, tio.LabelSampler(2, 'labelmap_0'))[:64]
        'subject "sub-01": label map "labelmap_0": no voxel > 0 at least '
    """
    name = getattr(sampler, 'probability_map_name', None)
    image = subject.get(name) if name is not None and hasattr(subject, 'get') else None
    path = getattr(image, 'path', None)
    where = f'label map "{name}"' + (f' (file {path})' if path is not None else '')
    half = tuple(int(n) // 2 for n in getattr(sampler, 'patch_size', ()))
    problem = (
        f'no voxel > 0 at least half a patch {half} from the border, so no patch can be centred'
        ' on the label (TorchIO: "Empty probability map found"). The label map is empty or off its'
        ' image (pyable-tio validate reports that), or its foreground touches the border: pad with'
        f' tio.Pad({half}), or use sampler="uniform" for subjects without foreground'
    )
    return describe(subject.get(ID) if hasattr(subject, 'get') else None, where, problem)
