"""Which steps each image file of a subject runs, and the checks made before any voxel is read.

A file's own ``"preprocess"`` list wins over its subject's, which wins over the one given to the
constructor. The subject's ``roi_brain`` comes from the reference image when it is
skull-stripped, else from the first image that is.
"""

from __future__ import annotations

from typing import Any

from ..constants import BRAIN_MASK, FIELD_PREPROCESS, PREPROCESS_IMAGE, ROI_PREFIX
from ..errors import describe
from ..manifest.records import FileEntry, SubjectRecord
from .base import PreprocessStep
from .pipeline import Preprocessing
from .registry import missing_dependencies


def file_steps(record: SubjectRecord, entry: FileEntry, default: tuple[Any, ...] = ()) -> tuple[Any, ...]:
    """The preprocessing steps of one image file: its own, else its subject's, else ``default``.

    Example:
        >>> [step.name for step in file_steps(record, record.images[0], (pt.N4(),))]  # doctest: +SKIP
        ['n4']
    """
    for steps in (entry.preprocess, record.preprocess):
        if steps is not None:
            return tuple(steps)
    return tuple(default)


def any_steps(record: SubjectRecord, default: tuple[Any, ...] = ()) -> bool:
    """Whether any image of the subject runs a step.

    Example:
        >>> any_steps(record, ())  # doctest: +SKIP
        False
    """
    return any(file_steps(record, entry, default) for entry in record.images)


def preprocess_problems(record: SubjectRecord, dimension: int, default: tuple[Any, ...] = ()) -> list[str]:
    """One line per image whose steps cannot run: missing packages, unknown masks, 2-D skull strips.

    Args:
        record: The subject.
        dimension: Dimension of its reference grid.
        default: Steps given to the constructor.

    Example:
        >>> preprocess_problems(record, 3, (pt.SkullStrip(),))  # doctest: +SKIP
        ['subject "s1": field "preprocess": step "skullstrip" needs deepbet (not installed): ...']
    """
    problems: list[str] = []
    rois = {f'{ROI_PREFIX}{i}' for i in range(len(record.rois))}
    where = f'field "{FIELD_PREPROCESS}"'
    for entry in record.images:
        steps = file_steps(record, entry, default)
        problems += [describe(record.id, where, line) for line in missing_dependencies(steps)]
        for step in steps:
            if not isinstance(step, PreprocessStep):
                continue
            for name in step.masks_needed():
                if name.startswith(ROI_PREFIX) and name not in rois:
                    problem = f'step {step!r} uses mask "{name}", but the subject has {len(rois)} ROI(s)'
                    problems.append(describe(record.id, f'{where}: file {entry.path}', problem))
            if BRAIN_MASK in step.masks_made() and dimension != 3:
                problem = f'step "{step.name}" needs 3-D images, the subject is {dimension}-D'
                problems.append(describe(record.id, f'{where}: file {entry.path}', problem))
    return list(dict.fromkeys(problems))


def brain_source(record: SubjectRecord, default: tuple[Any, ...] = (), reference: int | None = None) -> int | None:
    """Index of the image whose skull strip gives ``roi_brain`` (None: no skull strip).

    The reference image when it is skull-stripped, else the first image that is.

    Example:
        >>> brain_source(record, (pt.SkullStrip(),), reference=0)  # doctest: +SKIP
        0
    """
    stripped = [
        i for i, entry in enumerate(record.images)
        if any(isinstance(step, PreprocessStep) and BRAIN_MASK in step.masks_made()
               for step in file_steps(record, entry, default))
    ]
    if not stripped:
        return None
    return reference if reference in stripped else stripped[0]


def preprocessing_for(
    record: SubjectRecord, entry: FileEntry, default: tuple[Any, ...] = (), output: str = PREPROCESS_IMAGE
) -> Preprocessing:
    """The :class:`Preprocessing` a reader runs on ``entry``, with the subject's ROIs its steps use as masks.

    Example:
        >>> preprocessing_for(record, record.images[0], (pt.N4(mask='roi_0'),)).mask_files  # doctest: +SKIP
        (('roi_0', '/data/sub-01_roi.nii.gz'),)
    """
    steps = file_steps(record, entry, default)
    needed = {name for step in steps if isinstance(step, PreprocessStep) for name in step.masks_needed()}
    mask_files = tuple(
        (f'{ROI_PREFIX}{i}', str(roi.path)) for i, roi in enumerate(record.rois) if f'{ROI_PREFIX}{i}' in needed
    )
    return Preprocessing(steps, output, mask_files)
