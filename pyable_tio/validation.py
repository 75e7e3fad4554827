"""Check manifests: files, headers, transforms, batchability, and each file's data.

Every file is then read completely (``check_data=True``): truncated or damaged files,
non-finite voxels and ROIs/label maps holding non-integer values are reported, naming subject
and file (:func:`pyable_tio.integrity.check_file`).

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
from dataclasses import dataclass, field

from .constants import REFERENCE_FIRST
from .constants import DEFAULT_NONFINITE
from .errors import ManifestError, describe
from .integrity import FileCheck, check_file, check_nonfinite_mode
from .manifest import Manifest, SubjectRecord, read_manifest
from .manifest import _check_files as check_files_exist
from .reference import Reference, grid_of_space
from .subjects import _FIELD_ROLE, MISSING_ERROR, SubjectPlan, _check_batchable, _transform_problems, plan_subject


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
    listed: int = 0
    subjects: int = 0
    counts: dict[str, Counter] = field(default_factory=lambda: {k: Counter() for k in ('images', 'rois', 'labelmaps')})
    spacings: Counter = field(default_factory=Counter)
    orientations: Counter = field(default_factory=Counter)
    reference_sizes: Counter = field(default_factory=Counter)
    #: Findings that do not stop training (non-finite voxels kept or zeroed as asked), one line each.
    notes: list[str] = field(default_factory=list)


def validate(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    reference: str | int = REFERENCE_FIRST,
    reference_space: str | None = None,
    root: str | None = None,
    missing: str = MISSING_ERROR,
    *,
    nonfinite: str = DEFAULT_NONFINITE,
    check_data: bool = True,
) -> Validation:
    """Check a manifest: files exist, headers and transforms read, then each file's data.

    Args:
        source: Manifest file (JSON or CSV), or a list of CSV files (multi-CSV).
        reference: ``"first"``, ``"largest"`` or an index (a subject's own reference wins).
        reference_space: Optional image whose grid every subject uses.
        root: Folder that relative manifest paths resolve against.
        missing: ``"error"`` or ``"empty"``, as in :func:`pyable_tio.subjects_from_manifest`.
        nonfinite: The policy training will use (``"error"``, ``"zero"`` or ``"keep"``):
            non-finite voxels are problems with ``"error"``, notes otherwise.
        check_data: Also read every file completely (full decompression): truncated or
            damaged files, non-finite voxels, ROIs/label maps with non-integer values.

    Returns:
        The problems (one line each) and a summary of the subjects without problems.

    Example:
        >>> validate('manifest.json').problems  # doctest: +SKIP
        []
    """
    check_nonfinite_mode(nonfinite)
    report = Validation(_label(source))
    try:
        manifest = read_manifest(source, root=root, check_files=False)
        space = Reference(*grid_of_space(reference_space)) if reference_space else None
    except ManifestError as error:
        report.problems.extend(error.problems)
        return report
    plans = []
    checked: dict = {}  # transform results shared by the subjects (see _transform_problems)
    data_checked: dict[tuple[str, str], FileCheck] = {}  # a file listed by many subjects is read once
    report.listed = len(manifest)
    for record in manifest:
        try:
            check_files_exist(Manifest((record,)))
            plan = plan_subject(record, reference, space)
        except ManifestError as error:
            report.problems.extend(error.problems)
            continue
        # Displacement fields by header only, as subjects_from_manifest checks them.
        problems = _transform_problems(record, plan.reference.grid.dimension, checked)
        if problems:
            report.problems.extend(problems)
            continue
        if check_data:
            problems = _data_problems(record, nonfinite, report, data_checked)
            if problems:
                report.problems.extend(problems)
                continue
        plans.append(plan)
        _summarise(report, plan)
    if plans:
        try:
            _check_batchable(plans, missing)
        except ManifestError as error:
            report.problems.extend(error.problems)
    return report


def _data_problems(record: SubjectRecord, nonfinite: str, report: Validation, done: dict[tuple[str, str], FileCheck]) -> list[str]:
    """Each file of ``record`` read completely; its problems, with its notes added to ``report``."""
    problems = []
    for name, entry in record.entries():
        role = _FIELD_ROLE[name]
        key = (str(entry.path), role)
        if key not in done:
            done[key] = check_file(entry.path, role, nonfinite)
        where = f'field "{name}": file {entry.path}'
        problems += [describe(record.id, where, p) for p in done[key].problems]
        report.notes += [describe(record.id, where, n) for n in done[key].notes]
    return problems


def _summarise(report: Validation, plan: SubjectPlan) -> None:
    record = plan.record
    report.subjects += 1
    for name, counter in report.counts.items():
        counter[len(getattr(record, name))] += 1
    for header in plan.headers:
        grid = header.grid
        report.spacings[' x '.join(f'{s:g}' for s in grid.spacing)] += 1
        report.orientations[grid.orientation()] += 1
    report.reference_sizes[' x '.join(map(str, plan.reference.grid.size))] += 1


def _label(source: object) -> str:
    return ', '.join(map(str, source)) if isinstance(source, (list, tuple)) else str(source)
