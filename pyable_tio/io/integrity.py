"""Checks of what a file holds: non-finite voxels, label maps that are not labels, damage.

The readers run the cheap checks on every load (:func:`apply_nonfinite`,
:func:`label_problem`; truncation in :mod:`pyable_tio.io.sources`); ``pyable-tio validate`` runs
:func:`check_file`, which reads each file completely.

Example:
    >>> check_file('sub-01_seg.nii.gz', 'labelmap')  # doctest: +SKIP
    FileCheck(problems=['label map holds non-integer values (7798 distinct values, e.g. 0.25, 0.5, 1.75); ...'], notes=[])
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from . import backend
from . import dicom
from . import nifti
from . import sources
from ..constants import DEFAULT_NONFINITE, NONFINITE_ERROR, NONFINITE_KEEP, NONFINITE_MODES, NONFINITE_ZERO
from ..errors import short_error

_FLOAT_PIXELS = frozenset({
    sitk.sitkFloat32, sitk.sitkFloat64, sitk.sitkVectorFloat32, sitk.sitkVectorFloat64,
})
_EXAMPLES = 3
_LABEL_NOUNS = {backend.ROLE_ROI: 'ROI', backend.ROLE_LABELMAP: 'label map'}


class NonFiniteError(ValueError):
    """A file holds NaN or +-Inf voxels and ``nonfinite="error"``.

    Example:
        >>> apply_nonfinite(image_with_nan, 'error')  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        pyable_tio.io.integrity.NonFiniteError: 1 non-finite voxel (1 NaN) of 6720; ...
    """


def check_nonfinite_mode(mode: str) -> str:
    """``mode`` when it is one of :data:`~pyable_tio.constants.NONFINITE_MODES`.

    Raises:
        ValueError: naming the value received and the values accepted.

    Example:
        >>> check_nonfinite_mode('zero')
        'zero'
    """
    if mode not in NONFINITE_MODES:
        raise ValueError(f'nonfinite must be one of {NONFINITE_MODES}, got {mode!r}')
    return mode


def describe_nonfinite(array: np.ndarray) -> str | None:
    """``"3 non-finite voxels (1 NaN, 1 +Inf, 1 -Inf) of 120"``, or None when all are finite.

    Example:
        >>> describe_nonfinite(np.array([0.0, np.nan, np.inf]))
        '2 non-finite voxels (1 NaN, 1 +Inf) of 3'
    """
    if array.dtype.kind not in 'fc' or np.isfinite(array).all():
        return None
    counts = {
        'NaN': int(np.isnan(array).sum()),
        '+Inf': int(np.isposinf(array).sum()),
        '-Inf': int(np.isneginf(array).sum()),
    }
    total = sum(counts.values())
    parts = ', '.join(f'{n} {name}' for name, n in counts.items() if n)
    noun = 'voxel' if total == 1 else 'voxels'
    return f'{total} non-finite {noun} ({parts}) of {array.size}'


def apply_nonfinite(image: sitk.Image, mode: str = DEFAULT_NONFINITE) -> tuple[sitk.Image, bool]:
    """``image`` after the ``nonfinite`` policy, and whether it still holds +-Inf.

    Runs before any interpolation, so that ``"zero"`` leaves nothing to spread.

    Args:
        image: A freshly read image (voxels as stored).
        mode: ``"keep"`` (returned as is), ``"zero"`` (NaN and +-Inf become 0) or
            ``"error"`` (:class:`NonFiniteError` when any voxel is not finite).

    Returns:
        The image (a new one for ``"zero"`` when something changed) and, for ``"keep"``,
        whether it holds infinities (so that resampling's clamp to the float range can be undone).

    Raises:
        NonFiniteError: ``mode="error"`` and the image holds NaN or +-Inf.

    Example:
        >>> image, has_inf = apply_nonfinite(sitk.ReadImage('t1.nrrd'), 'zero')  # doctest: +SKIP
    """
    check_nonfinite_mode(mode)
    if image.GetPixelID() not in _FLOAT_PIXELS:
        return image, False
    view = sitk.GetArrayViewFromImage(image)
    problem = describe_nonfinite(view)
    if problem is None:
        return image, False
    if mode == NONFINITE_ERROR:
        raise NonFiniteError(
            f'{problem}; pass nonfinite="zero" to replace them by 0 or nonfinite="keep" to keep them'
            ' (command line: --nonfinite zero|keep)'
        )
    if mode == NONFINITE_KEEP:
        return image, bool(np.isinf(view).any())
    array = np.nan_to_num(sitk.GetArrayFromImage(image), nan=0.0, posinf=0.0, neginf=0.0)
    zeroed = sitk.GetImageFromArray(array, isVector=image.GetNumberOfComponentsPerPixel() > 1)
    zeroed.CopyInformation(image)
    return zeroed, False


def restore_infinities(array: np.ndarray) -> np.ndarray:
    """``array`` with the float range's ends turned back into +-Inf (in place when writable).

    ITK's resampler clamps every output value to the pixel type's range, so a stored +Inf
    comes out as 3.4e38; with ``nonfinite="keep"`` it must stay +Inf.

    Example:
        >>> restore_infinities(np.array([np.finfo(np.float32).max, 1.0], dtype=np.float32))
        array([inf,  1.], dtype=float32)
    """
    if array.dtype.kind != 'f':
        return array
    top = np.finfo(array.dtype).max
    array = array if array.flags.writeable else array.copy()
    array[array >= top] = np.inf
    array[array <= -top] = -np.inf
    return array


def label_problem(image: sitk.Image, role: str = backend.ROLE_LABELMAP) -> str | None:
    """Why a ROI or label map file is not one (float values that are not integers), or None.

    Float files holding whole numbers (0.0, 1.0, 2.0) are label maps and pass.

    Example:
        >>> label_problem(sitk.GetImageFromArray(np.array([[0.0, 0.5, 1.0]])))
        'label map holds non-integer values (3 distinct values, e.g. 0.5); list it under "images", or round it'
    """
    if image.GetPixelID() not in _FLOAT_PIXELS:
        return None
    view = sitk.GetArrayViewFromImage(image)
    finite = np.isfinite(view)
    bad = ~finite | (view != np.round(view))
    if not bad.any():
        return None
    odd = np.unique(view[bad])
    distinct = np.unique(view).size
    examples = ', '.join(f'{v:g}' for v in odd[:_EXAMPLES])
    noun = _LABEL_NOUNS.get(role, role)
    return (
        f'{noun} holds non-integer values ({distinct} distinct values, e.g. {examples});'
        ' list it under "images", or round it'
    )


@dataclass
class FileCheck:
    """What :func:`check_file` found: problems (the file cannot be used as listed) and notes.

    Example:
        >>> FileCheck().problems
        []
    """

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_file(path: str | os.PathLike, role: str = backend.ROLE_IMAGE, nonfinite: str = DEFAULT_NONFINITE) -> FileCheck:
    """Read a file completely and report damage, non-finite voxels and non-integer labels.

    A gzip NIfTI is decompressed to its end; every voxel is read as stored (past SimpleITK's
    NaN/Inf zeroing). Non-finite voxels are a problem with ``nonfinite="error"`` (what
    training would do with them) and a note otherwise.

    Args:
        path: File or DICOM series.
        role: ``"image"``, ``"roi"`` or ``"labelmap"`` (ROIs and label maps must hold integers).
        nonfinite: The policy training will use.

    Returns:
        The problems and notes, one line each, without the subject or file (the caller adds them).

    Example:
        >>> check_file('cut.nii.gz').problems  # doctest: +SKIP
        ['truncated or damaged file: the gzip stream fails after 6144 bytes (...); the header needs 27232']
    """
    check_nonfinite_mode(nonfinite)
    report = FileCheck()
    try:
        header = nifti.read_nifti_header(path) if nifti.is_nifti(path) else None
        if header is not None and header.datatype not in nifti.FLOAT_DATATYPES:
            nifti.check_stream(path, header)  # integers: no NaN, no fractions; only damage
            return report
        image = sources.read_image(path)
        if header is not None and header.compressed:
            nifti.check_stream(path, header)  # the gzip trailer and anything after the voxels
    except (nifti.TruncatedFileError, dicom.SeriesError) as error:  # complete messages
        report.problems.append(str(error))
        return report
    except RuntimeError as error:
        report.problems.append(f'unreadable image: {short_error(error)}')
        return report
    problem = describe_nonfinite(sitk.GetArrayViewFromImage(image))
    if problem is not None:
        if nonfinite == NONFINITE_ERROR:
            report.problems.append(f'{problem} (nonfinite="error"; use --nonfinite zero or keep to accept them)')
        else:
            action = 'replaced by 0 before resampling' if nonfinite == NONFINITE_ZERO else 'kept as stored'
            report.notes.append(f'{problem}, {action} (nonfinite="{nonfinite}")')
    if role != backend.ROLE_IMAGE:
        if nonfinite == NONFINITE_ZERO:
            image, _ = apply_nonfinite(image, NONFINITE_ZERO)
        problem = label_problem(image, role)
        if problem is not None:
            report.problems.append(problem)
    return report
