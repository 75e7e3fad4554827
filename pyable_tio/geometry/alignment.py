"""Multi-sequence alignment: register each non-reference image of a subject onto its reference.

Runs once per subject when subjects are built (``subjects_from_manifest(align="rigid")``),
never when images load. SimpleITK's registration (Mattes mutual information, two resolution
levels, a fixed sampling seed) finds a transform ``A`` applied *after* the file's manifest
transforms ``M`` (last in the list, the one nearest the grid): the reader maps each grid point
``p`` to ``M(A(p))`` in the file, i.e. ``CompositeTransform([*M, A])``, one interpolation. With a cache folder the transform is written to
``<cache_dir>/alignment/<key>.tfm``, the key being a digest of both files' contents, their
manifest transforms and the registration settings, so later runs read it instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from ..io import backend
from ..io import integrity
from . import registration
from .registration import entries_digest, transform_files
from ..constants import ALIGN_AFFINE, ALIGN_MODES, ALIGN_RIGID, ALIGNMENT_FOLDER, NONFINITE_ZERO, SOURCE_READ_TRIES
from ..errors import ManifestError, describe, short_error
from ..cache import VolumeCache
from ..cache.digest import digest_of, identity_now, source_identity
from ..manifest.records import FileEntry, SubjectRecord, TransformEntry
from .reference import Reference

#: Every number ``register`` uses (Mattes mutual information, random sampling, regular-step
#: gradient descent); the whole dict is in each alignment's cache key, so changing one recomputes.
SETTINGS = {
    # 3: manifest lists compose as CompositeTransform(list) (seed order): older keys mean another M.
    'version': 3,
    'histogram_bins': 32,
    'sampling_percentage': 0.25,
    'max_samples': 50_000,
    'seed': 7,
    'learning_rate': 1.0,
    'min_step': 1e-5,
    'iterations': 100,
    'relaxation_factor': 0.5,
    'gradient_magnitude_tolerance': 1e-8,
    'shrink_factors': [2, 1],
    'smoothing_sigmas_voxels': [1.0, 0.0],
}

@dataclass(frozen=True)
class Alignment:
    """The transform found for one image of a subject.

    Attributes:
        moving: The image that was registered.
        fixed: The subject's reference image it was registered onto.
        kind: ``"rigid"`` or ``"affine"``.
        entry: What the reader applies last (nearest the grid): the cached ``.tfm`` file, or the in-memory
            transform when there is no cache folder.
        summary: Readable parameters (see :func:`pyable_tio.geometry.registration.describe_transform`).
        reused: True when read from the cache instead of computed.

    Example:
        >>> subject = subjects_from_manifest('manifest.json', align='rigid')[0]  # doctest: +SKIP
        >>> subject['meta']['transforms_applied'][0]  # doctest: +SKIP
        't2.nii.gz: rigid alignment onto t1.nii.gz, Euler3DTransform: rotation (...) deg, ...'
    """

    moving: Path
    fixed: Path
    kind: str
    entry: TransformEntry
    summary: str
    reused: bool = False

    def describe(self) -> str:
        """One line for ``meta["transforms_applied"]``."""
        text = f'{self.moving.name}: {self.kind} alignment onto {self.fixed.name}, {self.summary}'
        if isinstance(self.entry.source, Path):
            text += f' (saved as {self.entry.source})'
        return text


def register(
    fixed: sitk.Image,
    moving: sitk.Image,
    kind: str = ALIGN_RIGID,
    fixed_transform: sitk.Transform | None = None,
    moving_transform: sitk.Transform | None = None,
) -> sitk.Transform:
    """Find ``A`` such that ``moving(M(A(p)))`` matches ``fixed(F(p))`` at fixed-image points ``p``.

    ``F`` and ``M`` are the images' own transforms (manifest transforms, ITK convention); the
    returned transform is only ``A`` (``Euler`` for rigid, ``AffineTransform`` for affine),
    centred on the fixed image and started from the identity: the images are assumed to be
    roughly aligned in physical space already, as sequences of one session are.

    Args:
        fixed: Reference image (scalar).
        moving: Image to align (scalar).
        kind: ``"rigid"`` or ``"affine"``.
        fixed_transform: ``F``, or None for the identity.
        moving_transform: ``M``, or None for the identity.

    Returns:
        The transform ``A`` (ITK convention: fixed-space point to moving-space point).

    Raises:
        ValueError: unknown ``kind``.
        RuntimeError: SimpleITK's registration failed (e.g. no overlap).

    Example:
        >>> found = register(sitk.ReadImage('t1.nii.gz'), sitk.ReadImage('t2.nii.gz'))  # doctest: +SKIP
        >>> sitk.WriteTransform(found, 't2_to_t1.tfm')  # doctest: +SKIP
    """
    if kind not in ALIGN_MODES:
        raise ValueError(f'align must be one of {ALIGN_MODES} or None, got {kind!r}')
    dim = fixed.GetDimension()
    if kind == ALIGN_AFFINE:
        transform = sitk.AffineTransform(dim)
    else:
        transform = sitk.Euler3DTransform() if dim == 3 else sitk.Euler2DTransform()
    centre = [(n - 1) / 2 for n in fixed.GetSize()]
    transform.SetCenter(fixed.TransformContinuousIndexToPhysicalPoint(centre))
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(SETTINGS['histogram_bins'])
    method.SetMetricSamplingStrategy(method.RANDOM)
    # A fixed budget of points per level keeps large volumes fast (seconds, not minutes).
    voxels = fixed.GetNumberOfPixels()
    percentages = [
        min(SETTINGS['sampling_percentage'], SETTINGS['max_samples'] * factor**dim / voxels)
        for factor in SETTINGS['shrink_factors']
    ]
    method.SetMetricSamplingPercentagePerLevel(percentages, SETTINGS['seed'])
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=SETTINGS['learning_rate'],
        minStep=SETTINGS['min_step'],
        numberOfIterations=SETTINGS['iterations'],
        relaxationFactor=SETTINGS['relaxation_factor'],
        gradientMagnitudeTolerance=SETTINGS['gradient_magnitude_tolerance'],
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(SETTINGS['shrink_factors'])
    method.SetSmoothingSigmasPerLevel(SETTINGS['smoothing_sigmas_voxels'])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    if fixed_transform is not None:
        method.SetFixedInitialTransform(fixed_transform)
    if moving_transform is not None:
        method.SetMovingInitialTransform(moving_transform)
    # In place: ``transform`` ends up holding A alone, without the initial transforms.
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(_scalar(fixed), _scalar(moving))
    return transform


def align_subject(
    record: SubjectRecord,
    reference: Reference,
    kind: str,
    cache_dir: VolumeCache | str | os.PathLike | None = None,
) -> dict[str, Alignment]:
    """Register every image of ``record`` but the reference onto the reference image.

    The reference image is ``record.images[reference.index]``, or the first image when the
    reference is an outside grid. ROIs and label maps are not aligned: they are taken to be
    drawn on the reference image (give them per-file transforms otherwise).

    Args:
        record: The subject.
        reference: Its chosen reference.
        kind: ``"rigid"`` or ``"affine"``.
        cache_dir: The :class:`~pyable_tio.cache.VolumeCache` (or its folder) whose ``alignment/``
            blobs keep the ``.tfm`` files, keyed by both files' contents, their transforms and
            :data:`SETTINGS`.

    Returns:
        ``{str(image path): Alignment}`` for every aligned image.

    Raises:
        ManifestError: naming the subject and file when an image or transform cannot be read
            or the registration fails.

    Example:
        >>> plan = check_subject(read_manifest('manifest.json')[0])  # doctest: +SKIP
        >>> align_subject(plan.record, plan.reference, 'rigid')  # doctest: +SKIP
    """
    cache = VolumeCache(cache_dir) if isinstance(cache_dir, (str, os.PathLike)) else cache_dir
    index = reference.index if reference.index is not None else 0
    fixed_entry = record.images[index]
    fixed_entries = (*fixed_entry.transforms, *record.transforms)
    results: dict[str, Alignment] = {}
    fixed_files = [str(fixed_entry.path), *transform_files(fixed_entries)]
    # The fixed image, read once per subject: (identity of fixed_files it was read at, image, F).
    fixed: tuple[tuple, sitk.Image, sitk.Transform | None] | None = None
    for i, entry in enumerate(record.images):
        if i == index or entry.path == fixed_entry.path:
            continue
        where = f'field "images": file {entry.path}'
        moving_entries = (*entry.transforms, *record.transforms)
        # Both images and every transform file: the .tfm is stored only if none changed from
        # before its key was built to after the registration read them.
        files = [*fixed_files, str(entry.path), *transform_files(moving_entries)]
        for _ in range(SOURCE_READ_TRIES):
            try:
                before = source_identity(files)
                key = _key(cache, kind, fixed_entry, fixed_entries, entry, moving_entries)
                cached = None if key is None else cache.get_blob(ALIGNMENT_FOLDER, key, '.tfm', _read_transform)
                path = None if key is None else cache.blob_path(ALIGNMENT_FOLDER, key, '.tfm')
                if cached is not None:
                    results[str(entry.path)] = _result(entry, fixed_entry, kind, cached, path, reused=True)
                    break
                if fixed is None or fixed[0] != before[:len(fixed_files)]:
                    fixed = (before[:len(fixed_files)], _finite(backend.load(fixed_entry.path, backend.ROLE_IMAGE)),
                             registration.compose(fixed_entries))
                _, fixed_image, fixed_transform = fixed
                moving_image = _finite(backend.load(entry.path, backend.ROLE_IMAGE))
                if moving_image.GetDimension() != fixed_image.GetDimension():
                    break  # reported by check_subject's dimension check
                moving_transform = registration.compose(moving_entries)
                found = register(fixed_image, moving_image, kind, fixed_transform, moving_transform)
            except OSError as error:
                raise ManifestError.from_problems([describe(record.id, where, f'cannot be read: {error}')]) from None
            except ValueError as error:  # a manifest transform
                raise ManifestError.from_problems([describe(record.id, where, str(error))]) from None
            except RuntimeError as error:
                problem = f'{kind} alignment onto {fixed_entry.path.name} failed: {short_error(error)}'
                raise ManifestError.from_problems([describe(record.id, where, problem)]) from None
            if identity_now(files) != before:
                fixed = None
                continue  # a file was replaced meanwhile: the result may mix two versions
            if key is not None:
                path = cache.put_blob(ALIGNMENT_FOLDER, key, '.tfm', lambda p: sitk.WriteTransform(found, str(p)))
            results[str(entry.path)] = _result(entry, fixed_entry, kind, found, path)
            break
        else:
            problem = (f'it, {fixed_entry.path.name} or a transform changed while they were aligned,'
                       f' {SOURCE_READ_TRIES} times in a row; is a file being written right now?')
            raise ManifestError.from_problems([describe(record.id, where, problem)])
    return results


def _finite(image: sitk.Image) -> sitk.Image:
    """NaN/Inf voxels as 0 for the metric only (what SimpleITK's NIfTI reader gave before)."""
    return integrity.apply_nonfinite(image, NONFINITE_ZERO)[0]


def _result(entry: FileEntry, fixed: FileEntry, kind: str, transform: sitk.Transform, path: Path | None,
            reused: bool = False) -> Alignment:
    source = path if path is not None else transform
    summary = registration.describe_transform(transform)
    return Alignment(entry.path, fixed.path, kind, TransformEntry(source), summary, reused)


def _key(
    cache: VolumeCache | None,
    kind: str,
    fixed: FileEntry,
    fixed_entries: Sequence[TransformEntry],
    moving: FileEntry,
    moving_entries: Sequence[TransformEntry],
) -> str | None:
    """The alignment's cache key: contents, never paths (None without a cache)."""
    if cache is None:
        return None
    digest = cache.source_digest
    try:
        return digest_of({
            'kind': kind,
            'settings': SETTINGS,
            'fixed': digest(fixed.path),
            'fixed_transforms': entries_digest(fixed_entries, digest),
            'moving': digest(moving.path),
            'moving_transforms': entries_digest(moving_entries, digest),
        })
    except OSError as error:
        raise RuntimeError(f'cannot read a file to key the alignment: {error}') from None


def _read_transform(path: Path) -> sitk.Transform:
    return sitk.ReadTransform(str(path))


def _scalar(image: sitk.Image) -> sitk.Image:
    # Vector images are registered by their first component.
    if image.GetNumberOfComponentsPerPixel() > 1:
        return sitk.VectorIndexSelectionCast(image, 0, sitk.sitkFloat32)
    return sitk.Cast(image, sitk.sitkFloat32)
