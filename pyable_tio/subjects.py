"""Manifest records to ``tio.Subject`` objects whose images load through ``GridReader``."""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchio as tio
from tqdm.auto import tqdm

from . import backend, integrity, registration
from .alignment import Alignment, align_subject
from .constants import (
    ALIGN_MODES,
    DEFAULT_BACKGROUND,
    DEFAULT_NONFINITE,
    FIELD_TRANSFORMS,
    ID,
    IMAGE_PREFIX,
    IMAGES,
    LABELMAP_PREFIX,
    LINEAR,
    META,
    REFERENCE_FIRST,
    ROI_PREFIX,
)
from .errors import ManifestError, describe, short_error
from .geometry import Grid, axis_aligned_grid, check_orientation, reorient_grid
from .manifest import ManifestSource, SubjectRecord, read_manifest
from .manifest.records import FileEntry, TransformEntry
from .reader import GridReader
from .reference import ImageHeader, Reference, ReferenceSelector, ReferenceSpace
from .reference import choose_reference, grid_of_space

#: What to do when subjects list different numbers of ROIs or label maps.
MISSING_ERROR = 'error'
MISSING_EMPTY = 'empty'

#: ``tio.Subject`` methods that an extra field of the same name would hide (``subject.load``).
_SUBJECT_METHODS = frozenset(
    name for name in dir(tio.Subject)
    if not name.startswith('_') and callable(inspect.getattr_static(tio.Subject, name))
)

#: TorchIO checks that a path exists; the manifest already did, and a DICOM series locator
#: (``folder#UID``) names no file of its own.
_TIO_PATHS = {'verify_path': False}

_FIELD_ROLE = {'images': backend.ROLE_IMAGE, 'rois': backend.ROLE_ROI, 'labelmaps': backend.ROLE_LABELMAP}


@dataclass(frozen=True)
class SubjectPlan:
    """A subject checked against its headers, with its reference chosen."""

    record: SubjectRecord
    reference: Reference
    channels: int
    #: ``{str(image path): Alignment}`` found by ``align=`` (applied before manifest transforms).
    alignments: Mapping[str, Alignment] = field(default_factory=dict)
    #: The header of every file, in ``record.entries()`` order.
    headers: tuple[ImageHeader, ...] = ()


def subjects_from_manifest(
    source: ManifestSource,
    *,
    reference: ReferenceSelector = REFERENCE_FIRST,
    reference_space: ReferenceSpace | None = None,
    stack_channels: bool = True,
    dtype: torch.dtype = torch.float32,
    interpolator: str = LINEAR,
    default_value: float = DEFAULT_BACKGROUND,
    missing: str = MISSING_ERROR,
    cache_dir: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
    progress: bool = False,
    cache_max_bytes: int | None = None,
    orientation: str | None = None,
    axis_aligned: bool = False,
    align: str | None = None,
    nonfinite: str = DEFAULT_NONFINITE,
) -> list[tio.Subject]:
    """Build one lazily loaded ``tio.Subject`` per manifest subject.

    Only file headers are read here; voxels are read, transformed and resampled by each
    image's reader when TorchIO loads it. Tensors are C x D x H x W in Z,Y,X order.

    Args:
        source: Anything :func:`pyable_tio.read_manifest` accepts.
        reference: ``"first"``, ``"largest"``, an index, or a callable given the subject's
            image headers (:class:`ImageHeader`) returning an index. A subject's own
            ``reference`` in the manifest wins.
        reference_space: One grid for every subject (image path, grid dict in x,y,z order,
            or :class:`Grid`); overrides every reference.
        stack_channels: One ``ScalarImage`` ``"images"`` with a channel per file (True), or
            ``image_0``, ``image_1``, ... (False).
        dtype: Floating dtype of images (label maps keep their integer pixel type).
        interpolator: Image interpolator (``"linear"``, ``"bspline"``, ...). ROIs and label
            maps are always nearest-neighbour.
        default_value: Image value outside a file's field of view (labels get 0).
        missing: ``"error"`` when subjects list different numbers of ROIs/label maps, or
            ``"empty"`` to fill the missing ones with all-zero label maps.
        cache_dir: Folder for the on-disk cache of resampled volumes (off when None), or a
            :class:`~pyable_tio.cache.VolumeCache`.
        root: Folder that relative manifest paths resolve against.
        progress: Show a progress bar while headers are read.
        cache_max_bytes: Size limit of ``cache_dir``; least-recently-used entries are evicted.
        orientation: Reorient every reference grid to this code (``"LPS"``, ``"RAS"``, ...;
            letters name where the x, y, z index axes increase towards). Axis-aligned grids
            are permuted/flipped, never resampled. None keeps each grid as it is.
        axis_aligned: Replace oblique reference grids by axis-aligned ones covering the same
            field of view with the same spacing (in ``orientation`` or the closest one).
        align: ``"rigid"`` or ``"affine"`` registers each non-reference image onto the
            reference image once, here (cached in ``cache_dir/alignment``); None (default)
            trusts the files' physical space and the manifest transforms.
        nonfinite: NaN/+-Inf voxels, per file before interpolation: ``"error"`` (default; one
            NaN would spread into a NaN loss far from its cause), ``"zero"`` or ``"keep"``
            (as stored, past SimpleITK's NIfTI reader, which zeroes them). In the cache key.

    Returns:
        Subjects with keys ``"id"``, ``"meta"``, the images, ``roi_i``, ``labelmap_i`` and
        every extra manifest field.

    Raises:
        ManifestError: bad manifest, missing or unreadable files, mismatched dimensions,
            subjects that cannot be batched together.

    Example:
        >>> subjects = subjects_from_manifest('manifest.json')  # doctest: +SKIP
        >>> subjects[0]['images'].data.shape  # doctest: +SKIP
        torch.Size([2, 48, 64, 64])
    """
    if missing not in (MISSING_ERROR, MISSING_EMPTY):
        raise ValueError(f'missing must be "{MISSING_ERROR}" or "{MISSING_EMPTY}", got {missing!r}')
    manifest = read_manifest(source, root=root)
    backend.interpolator_for(backend.ROLE_IMAGE, interpolator)
    integrity.check_nonfinite_mode(nonfinite)
    _check_geometry_options(orientation, align)
    global_space = None
    if reference_space is not None:
        # Read once; keep its description (a path stays a path in meta['reference_used']).
        global_space = Reference(*grid_of_space(reference_space))
    plans, problems = [], []
    for record in tqdm(manifest, desc='reading headers', disable=not progress, unit='subject'):
        try:
            plans.append(plan_subject(record, reference, global_space))
        except ManifestError as error:
            problems.extend(error.problems)
    if problems:
        raise ManifestError.from_problems(problems)
    _check_batchable(plans, missing)
    plans = _prepare_grids(plans, orientation, axis_aligned)
    options = {
        'interpolator': interpolator,
        'dtype': _numpy_dtype(dtype),
        'default_value': float(default_value),
        'cache': _make_cache(cache_dir, cache_max_bytes),
        'nonfinite': nonfinite,
    }
    if align is not None:
        plans = _align(plans, align, getattr(options['cache'], 'folder', None), progress)
    counts = {name: max(len(getattr(p.record, name)) for p in plans) for name in ('rois', 'labelmaps')}
    return [_to_subject(plan, stack_channels, counts, options) for plan in plans]


def plan_subject(
    record: SubjectRecord,
    selector: ReferenceSelector = REFERENCE_FIRST,
    reference_space: ReferenceSpace | Reference | None = None,
) -> SubjectPlan:
    """Read the subject's headers, choose its reference and check dimensions.

    Raises:
        ManifestError: listing every unreadable header and dimension mismatch.
    """
    problems, headers = [], {}
    for name, entry in record.entries():
        try:
            headers[(name, entry.path)] = ImageHeader.read(entry.path)
        except RuntimeError as error:
            where = f'field "{name}": file {entry.path}'
            # A ValueError (e.g. a DICOM folder's series list) is a complete message.
            problem = str(error) if isinstance(error, ValueError) else f'unreadable image header: {short_error(error)}'
            problems.append(describe(record.id, where, problem))
    if problems:
        raise ManifestError.from_problems(problems)
    image_headers = [headers[('images', e.path)] for e in record.images]
    chosen = choose_reference(record, image_headers, selector, reference_space)
    for (name, path), header in headers.items():
        if header.grid.dimension != chosen.grid.dimension:
            problem = (
                f'mismatched dimensions: {header.grid.dimension}-D file,'
                f' {chosen.grid.dimension}-D reference ({chosen.used})'
            )
            problems.append(describe(record.id, f'field "{name}": file {path}', problem))
    if problems:
        raise ManifestError.from_problems(problems)
    channels = sum(h.components for h in image_headers)
    in_order = tuple(headers[(name, entry.path)] for name, entry in record.entries())
    return SubjectPlan(record, chosen, channels, headers=in_order)


def _check_batchable(plans: Sequence[SubjectPlan], missing: str) -> None:
    """Subjects of one dataset must have the same channels (and ROIs/label maps)."""
    first = plans[0]
    problems = []
    for plan in plans[1:]:
        if plan.channels != first.channels:
            problem = f'{plan.channels} image channel(s), but subject "{first.record.id}" has {first.channels}'
            problems.append(describe(plan.record.id, 'field "images"', problem))
    if missing == MISSING_ERROR:
        for name in ('rois', 'labelmaps'):
            counts = {p.record.id: len(getattr(p.record, name)) for p in plans}
            if len(set(counts.values())) > 1:
                problem = f'subjects list different numbers of {name}: {counts} (use missing="empty" to fill)'
                problems.append(describe(None, f'field "{name}"', problem))
    if problems:
        raise ManifestError.from_problems(problems)


def _check_geometry_options(orientation: str | None, align: str | None) -> None:
    if orientation is not None:
        check_orientation(orientation)
    if align is not None and align not in ALIGN_MODES:
        raise ValueError(f'align must be one of {ALIGN_MODES} or None, got {align!r}')


def _prepare_grids(
    plans: Sequence[SubjectPlan], orientation: str | None, axis_aligned: bool
) -> list[SubjectPlan]:
    """Check every manifest transform against its grid, then reorient the grids if asked."""
    problems: list[str] = []
    checked: dict[tuple[Any, bool, int], str | None] = {}
    prepared = []
    for plan in plans:
        record, grid = plan.record, plan.reference.grid
        problems += _transform_problems(record, grid.dimension, checked)
        try:
            if axis_aligned and grid.dimension == 3 and not grid.is_axis_aligned():
                grid = axis_aligned_grid(grid, orientation)
            elif orientation is not None:
                grid = reorient_grid(grid, orientation)
        except ValueError as error:
            problems.append(describe(record.id, f'reference {plan.reference.used}', str(error)))
        prepared.append(replace(plan, reference=replace(plan.reference, grid=grid)))
    if problems:
        raise ManifestError.from_problems(list(dict.fromkeys(problems)))
    return prepared


def _transform_problems(
    record: SubjectRecord, dimension: int, checked: dict[tuple[Any, bool, int], str | None] | None = None
) -> list[str]:
    """One line per manifest transform of ``record`` that a ``dimension``-D grid cannot use.

    Transform files are read, displacement fields only by header
    (:func:`pyable_tio.registration.check_transform`).

    Args:
        record: The subject.
        dimension: Dimension of its reference grid.
        checked: Results by transform, shared between subjects so that a file listed by
            many subjects is read once.

    Returns:
        The problems (subject, field and file named), without repeats.

    Example:
        >>> _transform_problems(plan.record, plan.reference.grid.dimension)  # doctest: +SKIP
        []
    """
    checked = {} if checked is None else checked
    problems = []
    for entry in record.transform_entries():
        source = entry.source if isinstance(entry.source, Path) else id(entry.source)
        key = (source, entry.invert, dimension)
        if key not in checked:
            try:
                registration.check_transform(entry, dimension)
                checked[key] = None
            except ValueError as error:
                checked[key] = str(error)
        if checked[key] is not None:
            problems.append(describe(record.id, f'field "{FIELD_TRANSFORMS}"', checked[key]))
    return list(dict.fromkeys(problems))


def _align(plans: Sequence[SubjectPlan], kind: str, folder: Path | None, progress: bool) -> list[SubjectPlan]:
    """Each plan with its alignments, computed (or read from ``folder``) once per subject."""
    aligned, problems = [], []
    for plan in tqdm(plans, desc=f'{kind} alignment', disable=not progress, unit='subject'):
        try:
            alignments = align_subject(plan.record, plan.reference, kind, folder)
        except ManifestError as error:
            problems.extend(error.problems)
            continue
        aligned.append(replace(plan, alignments=alignments))
    if problems:
        raise ManifestError.from_problems(problems)
    return aligned


def _aligned(plan: SubjectPlan, entry: FileEntry) -> tuple[TransformEntry, ...]:
    alignment = plan.alignments.get(str(entry.path))
    return (alignment.entry,) if alignment is not None else ()


def _to_subject(plan: SubjectPlan, stack: bool, counts: dict, options: dict) -> tio.Subject:
    record, grid = plan.record, plan.reference.grid
    subject_transforms = record.transforms

    def reader(role: str, entries: Sequence[FileEntry]) -> GridReader:
        # Seed order: the file's own transforms, then the subject's, then the alignment (closest to the grid).
        transforms = {str(e.path): e.transforms + subject_transforms + _aligned(plan, e) for e in entries}
        # default_value is for images: labels outside the field of view are background.
        role_options = options if role == backend.ROLE_IMAGE else {**options, 'default_value': 0.0}
        return GridReader(grid, role, record.id, transforms=transforms, **role_options)

    images: dict[str, tio.Image] = {}
    image_paths = [str(e.path) for e in record.images]
    if stack:
        path = image_paths if len(image_paths) > 1 else image_paths[0]
        images[IMAGES] = tio.ScalarImage(path, reader=reader(backend.ROLE_IMAGE, record.images), **_TIO_PATHS)
    else:
        for i, entry in enumerate(record.images):
            image_reader = reader(backend.ROLE_IMAGE, [entry])
            images[f'{IMAGE_PREFIX}{i}'] = tio.ScalarImage(entry.path, reader=image_reader, **_TIO_PATHS)
    for name, prefix in (('rois', ROI_PREFIX), ('labelmaps', LABELMAP_PREFIX)):
        entries = getattr(record, name)
        role = _FIELD_ROLE[name]
        for i, entry in enumerate(entries):
            images[f'{prefix}{i}'] = tio.LabelMap(entry.path, reader=reader(role, [entry]), **_TIO_PATHS)
        for i in range(len(entries), counts[name]):
            images[f'{prefix}{i}'] = tio.LabelMap(record.images[0].path, reader=EmptyLabelReader(grid), **_TIO_PATHS)
    reserved = set(images) | {ID, META} | _SUBJECT_METHODS
    clashes = sorted(reserved & set(record.extra))
    if clashes:
        problem = f'extra fields {clashes} clash with names pyable-tio or tio.Subject use'
        raise ManifestError.from_problems([describe(record.id, 'fields', problem)])
    return tio.Subject(**images, **{ID: record.id, META: _meta(plan)}, **record.extra)


def _meta(plan: SubjectPlan) -> dict[str, Any]:
    record, grid = plan.record, plan.reference.grid
    # Each file's lines, in order, are its transform list (applied one after the other, as the seed does).
    applied = []
    for name, entry in record.entries():
        applied += [f'{entry.path.name}: {t.describe()}' for t in entry.transforms]
    applied += [f'all files: {t.describe()}' for t in record.transforms]
    applied += [alignment.describe() for alignment in plan.alignments.values()]
    names = {
        name: [e.name for e in getattr(record, name)]
        for name in ('images', 'rois', 'labelmaps')
        if any(e.name for e in getattr(record, name))
    }
    return {
        'spacing': grid.spacing,
        'origin': grid.origin,
        'direction': grid.direction,
        'size': grid.size,
        'orientation': grid.orientation(),
        'source_paths': {
            name: [str(e.path) for e in getattr(record, name)] for name in ('images', 'rois', 'labelmaps')
        },
        'reference_used': plan.reference.used,
        'transforms_applied': applied,
        'names': names,
    }


@dataclass(frozen=True)
class EmptyLabelReader:
    """Reader of an all-zero ``uint8`` label map on ``grid`` (fills a subject's missing ROI/label map).

    The path it is called with is ignored, but TorchIO checks that the file exists, so
    ``subjects_from_manifest(missing="empty")`` passes the subject's first image.

    Example:
        >>> label = tio.LabelMap('t1.nii.gz', reader=EmptyLabelReader(grid))  # doctest: +SKIP
        >>> label.data.shape == (1, *grid.shape_zyx), int(label.data.max())  # doctest: +SKIP
        (True, 0)
    """

    grid: Grid

    def __call__(self, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((1, *self.grid.shape_zyx), dtype=np.uint8), self.grid.affine_zyx()


def _numpy_dtype(dtype: torch.dtype) -> str:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f'dtype must be a floating torch dtype, got {dtype!r}')
    try:
        return torch.empty(0, dtype=dtype).numpy().dtype.name
    except TypeError:
        raise ValueError(f'dtype {dtype} has no NumPy equivalent; use torch.float32 or float16') from None


def _make_cache(cache_dir: str | os.PathLike | None, max_bytes: int | None = None):
    if cache_dir is None:
        return None
    from .cache import VolumeCache

    if isinstance(cache_dir, VolumeCache):
        return cache_dir
    return VolumeCache(cache_dir, max_bytes=max_bytes)
