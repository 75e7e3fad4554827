"""Manifest records to ``tio.Subject`` objects whose images load through ``GridReader``."""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchio as tio

from .io import backend
from .io import integrity
from .constants import (
    BRAIN_MASK_KEY,
    DEFAULT_BACKGROUND,
    DEFAULT_NONFINITE,
    ID,
    LINEAR,
    META,
    MISSING_EMPTY,
    MISSING_ERROR,
    MISSING_KEEP,
    ON_ERROR_MODES,
    ON_ERROR_RAISE,
    REFERENCE_FIRST,
)
from .cache import VolumeCache
from .errors import ManifestError, SkippedSubjectsWarning, describe, subject_of
from .geometry.grid import Grid
from .manifest import ManifestSource
from .plan import SubjectPlan, attach_plan, make_plan, plan_of
from .checking.batch import collate_problems
from .checking.headers import PlanOptions, plan_source, plan_subject
from .preprocess.selection import any_steps, brain_source
from .reader import GridReader
from .geometry.reference import ReferenceSelector, ReferenceSpace

__all__ = [
    'EmptyLabelReader', 'MISSING_EMPTY', 'MISSING_ERROR', 'MISSING_KEEP', 'SubjectOptions', 'SubjectPlan',
    'plan_of', 'plan_subject', 'subject_from_plan', 'subjects_from_manifest',
]

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
class SubjectOptions:
    """How :func:`subjects_from_manifest` builds subjects: every option but the manifest.

    Frozen and reusable (one object for a training and a validation set, a queue, a
    ``PyableDataset``...). Each option is checked when the object is made, before any header
    is read.

    Args:
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
        missing: ``"keep"`` (default): each subject has the images, ROIs and label maps it
            lists, as in TorchIO (subjects may differ; fine for a batch size of 1).
            ``"error"``: subjects must agree, as a batch needs (same image channels, same
            numbers of ROIs and label maps); checked here, before training starts.
            ``"empty"``: as ``"error"``, but missing ROIs/label maps are filled with all-zero
            ones (:class:`EmptyLabelReader`), appended after the subject's own (and
            ``roi_brain`` for subjects without a skull strip). An all-zero
            label map means "background everywhere" to a loss, so it is never the default;
            as a mask of ``transforms.IntensityNormalization`` it means "no mask".
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
        extra_fields: Manifest fields you add on purpose whose names are close to a known
            field (e.g. ``"label"`` is fine, ``"labelmap"`` needs declaring); see
            :func:`pyable_tio.read_manifest`.
        nonfinite: NaN/+-Inf voxels, per file before interpolation: ``"error"`` (default; one
            NaN would spread into a NaN loss far from its cause), ``"zero"`` or ``"keep"``
            (as stored, past SimpleITK's NIfTI reader, which zeroes them). In the cache key.
        preprocess: Steps run on every image file in its native space, before the transforms
            and the resampling: names (``["n4", "skullstrip"]``), ``{"name": ..., **parameters}``
            dicts or step objects (``[pt.N4(shrink_factor=2), pt.SkullStrip()]``). A subject's or
            file's own ``"preprocess"`` manifest field wins. Results are cached in
            ``cache_dir`` (pass one: without it the steps run at every load). A skull strip adds
            the ROI ``"roi_brain"`` (see docs/PREPROCESSING.md).
        on_error: ``"raise"`` (default): any problem refuses the manifest, every problem listed.
            ``"skip"``: build the subjects without a problem of their own and leave out the
            others, with a :class:`~pyable_tio.errors.SkippedSubjectsWarning` listing them and
            why (e.g. a few unreadable files among hundreds of subjects). Problems of the whole
            manifest (subjects that cannot share a batch, an unreadable ``reference_space``),
            or no good subject at all, still raise.

    Raises:
        ValueError: an unknown interpolator, ``nonfinite``, ``missing`` or ``on_error`` mode, reference,
            orientation, alignment or preprocessing step, or a non-floating ``dtype``.

    Example:
        >>> options = SubjectOptions(missing='error', align='rigid', cache_dir='cache')  # doctest: +SKIP
        >>> train = subjects_from_manifest('train.json', options)  # doctest: +SKIP
        >>> valid = subjects_from_manifest('valid.json', options, align=None)  # doctest: +SKIP
    """

    reference: ReferenceSelector = REFERENCE_FIRST
    reference_space: ReferenceSpace | None = None
    stack_channels: bool = True
    dtype: torch.dtype = torch.float32
    interpolator: str = LINEAR
    default_value: float = DEFAULT_BACKGROUND
    missing: str = MISSING_KEEP
    cache_dir: str | os.PathLike | VolumeCache | None = None
    root: str | os.PathLike | None = None
    progress: bool = False
    cache_max_bytes: int | None = None
    orientation: str | None = None
    axis_aligned: bool = False
    align: str | None = None
    extra_fields: Sequence[str] = ()
    nonfinite: str = DEFAULT_NONFINITE
    preprocess: Sequence[Any] | str | None = None
    on_error: str = ON_ERROR_RAISE

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR_MODES:
            raise ValueError(f'on_error must be one of {ON_ERROR_MODES}, got {self.on_error!r}')
        self.plan_options()
        backend.interpolator_for(backend.ROLE_IMAGE, self.interpolator)
        integrity.check_nonfinite_mode(self.nonfinite)
        _numpy_dtype(self.dtype)

    def plan_options(self) -> PlanOptions:
        """The planning part (reference, space, missing, orientation, alignment, steps)."""
        return PlanOptions(self.reference, self.reference_space, self.missing, self.orientation,
                           self.axis_aligned, self.align, preprocess=self.preprocess)

    @classmethod
    def of(cls, options: SubjectOptions | None = None, **changes: Any) -> SubjectOptions:
        """``options`` (default: the defaults) with ``changes``; an unknown name is a ``TypeError``.

        Example:
            >>> SubjectOptions.of(None, missing='error').missing
            'error'
        """
        unknown = sorted(set(changes) - {f.name for f in fields(cls)})
        if unknown:
            names = ', '.join(f.name for f in fields(cls))
            raise TypeError(f'unknown subject option(s) {unknown}; the options are: {names}')
        base = cls() if options is None else options
        if not isinstance(base, cls):
            raise TypeError(f'options must be a SubjectOptions, got {type(base).__name__}')
        return replace(base, **changes) if changes else base


def subjects_from_manifest(
    source: ManifestSource, options: SubjectOptions | None = None, **changes: Any
) -> list[tio.Subject]:
    """Build one lazily loaded ``tio.Subject`` per manifest subject.

    Only file headers are read here; voxels are read, transformed and resampled by each
    image's reader when TorchIO loads it. Tensors are C x D x H x W in Z,Y,X order.

    Args:
        source: Anything :func:`pyable_tio.read_manifest` accepts.
        options: A :class:`SubjectOptions` (default: its defaults).
        **changes: Options of :class:`SubjectOptions` by name, over ``options``
            (``cache_dir=``, ``missing=``, ``align=``, ``preprocess=``...).

    Returns:
        Subjects with keys ``"id"``, ``"meta"``, the images, ``roi_i``, ``labelmap_i``,
        ``roi_brain`` (with a skull strip) and every extra manifest field.

    Raises:
        ManifestError: bad manifest, missing or unreadable files, mismatched dimensions,
            subjects that cannot be batched together.

    Example:
        >>> subjects = subjects_from_manifest('manifest.json')  # doctest: +SKIP
        >>> subjects[0]['images'].data.shape  # doctest: +SKIP
        torch.Size([2, 20, 28, 32])
    """
    # Every option (the preprocessing steps too) is checked here, before any header is read.
    options = SubjectOptions.of(options, **changes)
    planning = options.plan_options()
    numpy_dtype = _numpy_dtype(options.dtype)
    cache = _make_cache(options.cache_dir, options.cache_max_bytes)
    # The same planning as pyable-tio validate: every problem of every subject in one error.
    planned = plan_source(source, planning, root=options.root, extra_fields=options.extra_fields,
                          cache_folder=getattr(cache, 'folder', None), progress=options.progress)
    checked, steps = planned.plans, planning.preprocess
    fill = {}
    if options.missing == MISSING_EMPTY:
        fill = {name: max((len(getattr(c.record, name)) for c in checked), default=0) for name in ('rois', 'labelmaps')}
        # A subject without a skull strip gets an all-zero roi_brain when another has one.
        fill[BRAIN_MASK_KEY] = int(any(brain_source(c.record, steps) is not None for c in checked))
    plans = [
        make_plan(c, stack_channels=options.stack_channels, fill=fill, steps=steps, interpolator=options.interpolator,
                  dtype=numpy_dtype, default_value=options.default_value, nonfinite=options.nonfinite)
        for c in checked
    ]
    problems = list(planned.problems)
    if options.missing != MISSING_KEEP:
        problems += collate_problems(plans)  # what TorchIO's collate compares: meta, extra fields
    if problems:
        error = _problems_error(problems, plans, cache)
        if options.on_error == ON_ERROR_RAISE or not error.subjects or None in map(subject_of, error.problems):
            raise error
        _warn_skipped(error, planned.listed)
        return error.subjects
    if cache is None and any(any_steps(c.record, steps) for c in checked):
        warnings.warn(
            'preprocessing without cache_dir runs the steps every time a subject is loaded;'
            ' pass cache_dir= to run them once', RuntimeWarning, stacklevel=2,
        )
    return [subject_from_plan(plan, cache) for plan in plans]


def _problems_error(problems: Sequence[str], plans: Sequence[SubjectPlan], cache: Any) -> ManifestError:
    """One error listing every problem, carrying the subjects that do build (``error.subjects``)."""
    subjects, problems = [], list(problems)
    for plan in plans:
        try:
            subjects.append(subject_from_plan(plan, cache))
        except ManifestError as subject_error:
            problems += subject_error.problems
    error = ManifestError.from_problems(problems)
    error.subjects = subjects  # for tools that go on without the bad subjects (pyable-tio cache)
    return error


def _warn_skipped(error: ManifestError, listed: int) -> None:
    """Say loudly which subjects ``on_error="skip"`` leaves out, and why."""
    skipped = list(dict.fromkeys(subject_of(p) for p in error.problems))
    lines = '\n'.join(f'  - {p}' for p in error.problems)
    message = (
        f'on_error="skip": {len(skipped)} of {listed} subjects skipped ({", ".join(skipped)});'
        f' {len(error.subjects)} built. Their problems:\n{lines}'
    )
    warnings.warn(SkippedSubjectsWarning(message, skipped, error.problems), stacklevel=3)


def subject_from_plan(plan: SubjectPlan, cache: Any = None) -> tio.Subject:
    """The lazily loaded subject of ``plan``, carrying it (:func:`pyable_tio.plan.plan_of`).

    Each subject key gets one ``tio.ScalarImage``/``tio.LabelMap`` whose ``GridReader``
    holds that key's plan entries; ``meta`` is made from the plan.

    Raises:
        ManifestError: an extra field whose name a subject key or ``tio.Subject`` uses.

    Example:
        >>> subject = subject_from_plan(make_plan(checked))  # doctest: +SKIP
    """
    images: dict[str, tio.Image] = {}
    for key in plan.keys():
        entries = plan.entries_of(key)
        first = entries[0]
        image_class = tio.ScalarImage if first.role == backend.ROLE_IMAGE else tio.LabelMap
        if first.filler:
            reader = EmptyLabelReader(plan.grid)
        else:
            reader = GridReader.for_entries(plan.grid, plan.id, entries, cache)
        paths = [str(e.source) for e in entries]
        images[key] = image_class(paths if len(paths) > 1 else paths[0], reader=reader, **_TIO_PATHS)
    reserved = set(images) | {ID, META} | _SUBJECT_METHODS
    clashes = sorted(reserved & set(plan.extra))
    if clashes:
        problem = f'extra fields {clashes} clash with names pyable-tio or tio.Subject use'
        raise ManifestError.from_problems([describe(plan.id, 'fields', problem)])
    subject = ManifestSubject(**images, **{ID: plan.id, META: plan.meta()}, **plan.extra)
    return attach_plan(subject, plan)


class ManifestSubject(tio.Subject):
    """A ``tio.Subject`` whose missing keys say why: subjects may differ (``missing="keep"``).

    ``tio.SubjectsLoader`` collates the keys of a batch's first subject; over subjects that
    list different ROIs, TorchIO's bare ``KeyError: 'roi_0'`` would name neither the subject
    nor the fix.

    Example:
        >>> subjects_from_manifest('sample_manifest.json')[1]['roi_0']  # doctest: +SKIP
        KeyError: 'subject "sub-02" has no key "roi_0" (its keys: ...); ...'
    """

    @property
    def plan(self) -> SubjectPlan | None:
        """The subject's :class:`~pyable_tio.plan.SubjectPlan` (grid, files, transform chains)."""
        return plan_of(self)

    def __missing__(self, key: str) -> Any:
        keys = sorted(str(k) for k in dict.keys(self))
        raise KeyError(
            f'subject "{dict.get(self, ID)}" has no key "{key}" (its keys: {keys}); subjects keep the'
            ' keys they list (missing="keep"): a batch needs missing="error" (checked before'
            ' training) or missing="empty" (fills ROIs/label maps)'
        )


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
    if isinstance(cache_dir, VolumeCache):
        if max_bytes is not None and max_bytes != cache_dir.max_bytes:
            # Silently keeping one of two size limits would be a surprise either way.
            raise ValueError(
                f'cache_max_bytes={max_bytes!r} given with a VolumeCache whose max_bytes is'
                f' {cache_dir.max_bytes!r}: set the limit on the VolumeCache (VolumeCache(folder, max_bytes=...))'
            )
        return cache_dir
    return VolumeCache(cache_dir, max_bytes=max_bytes)
