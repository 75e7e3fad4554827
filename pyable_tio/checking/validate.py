"""Check manifests: files, headers, transforms, batchability, and each file's data.

Every file is then read completely (``check_data=True``): truncated or damaged files,
non-finite voxels and ROIs/label maps holding non-integer values are reported, naming subject
and file (:func:`pyable_tio.io.integrity.check_file`), and so are ROIs/label maps whose
foreground falls outside the reference grid or that hold implausibly many values
(:mod:`pyable_tio.checking.labels`). With ``missing="error"``/``"empty"`` subjects must also
collate into one batch (:mod:`pyable_tio.checking.batch`).

``pyable-tio validate`` prints what :func:`validate` returns; use it from Python to gate a
training job on a manifest.

Example:
    >>> report = validate('manifest.json')  # doctest: +SKIP
    >>> report.problems  # doctest: +SKIP
    []
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..constants import DEFAULT_NONFINITE, LAYOUT_AXIS_TOLERANCE, MISSING_KEEP, REFERENCE_FIRST
from ..errors import ManifestError, describe
from ..geometry.grid import Grid
from ..io import backend
from ..io.backend import ROLE_IMAGE, ROLE_LABELMAP
from ..io.integrity import FileCheck, check_file, check_nonfinite_mode
from ..manifest import Manifest
from .headers import SPELLING_PYTHON, CheckedSubject, PlanOptions, batch_problems, plan_source
from ..geometry.reference import ReferenceSelector, ReferenceSpace
from ..subjects import _FIELD_ROLE
from ..plan import make_plan
from . import labels as label_checks
from .batch import collate_problems


@dataclass
class Validation:
    """What ``validate`` found in one manifest: problems, and a summary of the good subjects.

    Counters map a value (a count per subject, a spacing ``"1 x 1 x 1.5"`` in x,y,z order, an
    orientation code, a reference size in x,y,z order) to how many subjects or files have it.

    Example:
        >>> report = validate('manifest.json')  # doctest: +SKIP
        >>> report.subjects, report.listed, report.orientations.most_common(1)  # doctest: +SKIP
        (3, 3, [('LPS', 12)])
    """

    source: str
    problems: list[str] = field(default_factory=list)
    #: Findings that do not stop training, one line each: non-finite voxels kept or zeroed as
    #: asked, subjects that differ (which a batch would refuse).
    notes: list[str] = field(default_factory=list)
    listed: int = 0
    subjects: int = 0
    counts: dict[str, Counter] = field(default_factory=lambda: {k: Counter() for k in ('images', 'rois', 'labelmaps')})
    spacings: Counter = field(default_factory=Counter)
    orientations: Counter = field(default_factory=Counter)
    reference_sizes: Counter = field(default_factory=Counter)


def validate(
    source: str | os.PathLike | Sequence[str | os.PathLike] | Manifest,
    reference: ReferenceSelector = REFERENCE_FIRST,
    reference_space: ReferenceSpace | None = None,
    root: str | os.PathLike | None = None,
    missing: str = MISSING_KEEP,
    *,
    orientation: str | None = None,
    axis_aligned: bool = False,
    align: str | None = None,
    extra_fields: Sequence[str] = (),
    spelling: str = SPELLING_PYTHON,
    nonfinite: str = DEFAULT_NONFINITE,
    check_data: bool = True,
    preprocess: Sequence[Any] | str | None = None,
    progress: bool = False,
) -> Validation:
    """Check a manifest as :func:`pyable_tio.subjects_from_manifest` plans it, then each file's data.

    Runs the same planning code (:func:`pyable_tio.checking.headers.plan_manifest`): files exist,
    headers and transforms read, preprocessing steps runnable (packages installed, masks
    listed), references chosen, grids reoriented, images aligned (``align=`` registers them)
    and, with ``missing="error"``/``"empty"``, subjects checked to fit one batch. Every problem of
    every subject is reported at once: a subject's problems never stop the others' checks.

    Args:
        source: Manifest file (JSON or CSV), a list of CSV files (multi-CSV), a dict or a
            parsed :class:`pyable_tio.Manifest`.
        reference, reference_space, root, missing, orientation, axis_aligned, align,
            extra_fields: As in :func:`pyable_tio.subjects_from_manifest`.
        spelling: ``"python"`` or ``"cli"``: how messages spell a fix (``--missing empty``).
        nonfinite: The policy training will use (``"error"``, ``"zero"`` or ``"keep"``):
            non-finite voxels are problems with ``"error"``, notes otherwise.
        check_data: Also read every file completely (full decompression): truncated or
            damaged files, non-finite voxels, ROIs/label maps with non-integer values.
        preprocess: Steps for every image, as in :func:`pyable_tio.subjects_from_manifest`;
            with the manifest's own ``"preprocess"`` fields, their packages must be installed.
        progress: tqdm bars (on stderr) while headers are read and files are checked.

    Returns:
        The problems (one line each) and a summary of the subjects without problems.

    Raises:
        ValueError: a bad option (reference keyword, missing mode, orientation, preprocessing
            step...), before anything is read.

    Example:
        >>> validate('manifest.json', missing='error').problems  # doctest: +SKIP
        []
    """
    options = PlanOptions(
        reference, reference_space, missing, orientation, axis_aligned, align, spelling, preprocess
    )
    check_nonfinite_mode(nonfinite)
    report = Validation(_label(source))
    try:
        planned = plan_source(source, options, root=root, extra_fields=extra_fields, progress=progress)
    except ManifestError as error:
        report.problems.extend(error.problems)
        return report
    report.listed, report.problems, plans = planned.listed, planned.problems, planned.plans
    data_checked: dict[tuple[str, str], FileCheck] = {}  # a file listed by many subjects is read once
    files = {(str(e.path), _FIELD_ROLE[name]) for plan in plans for name, e in plan.record.entries()}
    bar = tqdm(total=len(files), desc='reading files', unit='file', disable=not (progress and check_data))
    for plan in plans:
        problems = _data_problems(plan, nonfinite, report, data_checked, bar) if check_data else []
        report.problems.extend(problems)
        if not problems:
            _summarise(report, plan)
    bar.close()
    # What TorchIO's collate compares (meta, extra fields), from the plans subjects are built from.
    collated = collate_problems([make_plan(plan, steps=options.preprocess) for plan in plans])
    if missing != MISSING_KEEP:
        report.problems.extend(collated)
    if missing == MISSING_KEEP and len(plans) > 1:
        batch = replace(options, missing='error')
        if batch_problems(plans, batch) or collated:
            report.notes.append(
                'subjects differ in images, ROIs, label maps or brain masks: fine for subjects and'
                ' datasets (batch size 1), refused by a patch queue or a batched loader (check with'
                f' {batch.fix("error")}; fill missing ROIs/label maps with {batch.fix("empty")})'
            )
    return report


def _data_problems(plan: CheckedSubject, nonfinite: str, report: Validation, done: dict[tuple, FileCheck],
                   bar: Any = None) -> list[str]:
    """Each file of ``plan`` read completely; its problems, with its notes added to ``report``."""
    record, problems = plan.record, []
    for name, entry in record.entries():
        role = _FIELD_ROLE[name]
        key = (str(entry.path), role)
        if key not in done:
            done[key] = check_file(entry.path, role, nonfinite)
            if bar is not None:
                bar.update()
        checks = [done[key]]
        if role != ROLE_IMAGE and not done[key].problems:
            moved = bool(record.transforms or entry.transforms)
            label_key = (str(entry.path), role, plan.reference.grid, moved)
            if label_key not in done:
                done[label_key] = _label_check(entry.path, role, plan.reference.grid, moved)
            checks.append(done[label_key])
        where = f'field "{name}": file {entry.path}'
        for check in checks:
            problems += [describe(record.id, where, p) for p in check.problems]
            report.notes += [describe(record.id, where, n) for n in check.notes]
    return problems


def _label_check(path: Path, role: str, grid: Grid, moved: bool) -> FileCheck:
    """A ROI/label map against its grid: foreground lost outside it, implausibly many values."""
    report = FileCheck()
    try:
        image = backend.load(path, role)
    except (RuntimeError, ValueError):  # already reported by check_file
        return report
    if role == ROLE_LABELMAP:
        problem = label_checks.values_problem(image)
        if problem is not None:
            report.notes.append(problem)
    if not moved and image.GetDimension() == grid.dimension:
        level, problem = label_checks.foreground_problem(image, grid)
        if level is not None:
            (report.problems if level == 'error' else report.notes).append(problem)
    return report


def _summarise(report: Validation, plan: CheckedSubject) -> None:
    record = plan.record
    report.subjects += 1
    for name, counter in report.counts.items():
        counter[len(getattr(record, name))] += 1
    for header in plan.headers:
        grid = header.grid
        report.spacings[' x '.join(f'{s:g}' for s in grid.spacing)] += 1
        report.orientations[orientation_label(grid)] += 1
    report.reference_sizes[' x '.join(map(str, plan.reference.grid.size))] += 1


def orientation_label(grid: Any) -> str:
    """A grid's orientation code, with how far it is oblique when its axes are not the world's.

    Example:
        >>> orientation_label(oblique_t2_grid)  # doctest: +SKIP
        'LPS (oblique, 15 deg)'
    """
    code = grid.orientation()
    if grid.is_axis_aligned(LAYOUT_AXIS_TOLERANCE):
        return code
    # The index axis furthest from every world axis: its angle to the nearest one.
    cosines = np.abs(np.asarray(grid.as_3d().direction_matrix)).max(axis=0)
    angle = float(np.degrees(np.arccos(np.clip(cosines.min(), -1.0, 1.0))))
    return f'{code} (oblique, {angle:.0f} deg)'


def _label(source: object) -> str:
    return ', '.join(map(str, source)) if isinstance(source, (list, tuple)) else str(source)
