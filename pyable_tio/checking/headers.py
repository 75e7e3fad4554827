"""Manifest records checked against their headers, before any voxel is read.

:func:`check_manifest` is the one checking step that both :func:`pyable_tio.subjects_from_manifest`
and :func:`pyable_tio.checking.validate.validate` run: read each subject's headers, choose its
reference grid, check its transforms and its preprocessing steps (``preprocess=``: packages
installed, masks listed), reorient the grid (``orientation=``/``axis_aligned=``), align its
images (``align=``) and check that subjects can share a batch when one is needed (``missing=``).
Options are a frozen :class:`CheckOptions`, validated when it is made, i.e. before any header is
read. Each checked subject then becomes a :class:`~pyable_tio.plan.SubjectPlan`.

Example:
    >>> options = CheckOptions(reference='largest', missing='error')
    >>> plans, problems = check_manifest(read_manifest('manifest.json'), options)  # doctest: +SKIP
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from numbers import Integral
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..cache import VolumeCache
from ..geometry import registration
from ..geometry.alignment import Alignment, align_subject
from ..constants import ALIGN_MODES, BRAIN_MASK_KEY, FIELD_PREPROCESS, FIELD_TRANSFORMS, MISSING_EMPTY, MISSING_ERROR, MISSING_KEEP, MISSING_MODES, REFERENCE_FIRST, REFERENCE_LARGEST
from ..errors import ManifestError, describe, short_error
from ..geometry.grid import axis_aligned_grid, check_orientation, reorient_grid
from ..manifest import Manifest, ManifestSource, SubjectRecord, file_problems, parse_manifest
from ..preprocess import resolve_steps
from ..preprocess.selection import brain_source, preprocess_problems
from ..geometry.reference import ImageHeader, Reference, ReferenceSelector, ReferenceSpace
from ..geometry.reference import choose_reference, grid_of_space
from . import labels as label_checks

#: How a fix is spelled for the caller: Python keyword (default) or command-line option.
SPELLING_PYTHON = 'python'
SPELLING_CLI = 'cli'
_MISSING_FIX = {SPELLING_PYTHON: 'missing="{}"', SPELLING_CLI: '--missing {}'}


@dataclass(frozen=True)
class CheckOptions:
    """What planning needs to know, checked when made (before any header is read).

    Args:
        reference: ``"first"``, ``"largest"``, an index, or a callable given the subject's
            image headers returning an index. A subject's own ``reference`` wins.
        reference_space: One grid for every subject (image path, grid dict in x,y,z order
            or :class:`Grid`); overrides every reference.
        missing: ``"keep"`` (each subject has the ROIs/label maps it lists, as in TorchIO),
            ``"error"`` (every subject must list the same numbers: batches need it) or
            ``"empty"`` (fill the missing ones with all-zero label maps).
        orientation: Reorient every reference grid to this code (``"LPS"``, ``"RAS"``...).
        axis_aligned: Replace oblique reference grids by axis-aligned ones.
        align: ``"rigid"``/``"affine"`` registration of each image onto the reference, or None.
        spelling: ``"python"`` or ``"cli"``: how error messages spell the fix.
        preprocess: Steps for every image (names, ``"n4,skullstrip"``, dicts or step objects;
            :func:`pyable_tio.preprocess.resolve_steps`), kept as a tuple of step objects. A
            subject's or file's own ``"preprocess"`` field wins.

    Raises:
        ValueError: an unknown reference keyword, missing mode, orientation, align mode or
            preprocessing step (or parameter, or a step order that cannot work).

    Example:
        >>> CheckOptions(reference='largset')
        Traceback (most recent call last):
        ...
        ValueError: reference must be "first", "largest", an index or a callable, got 'largset'
    """

    reference: ReferenceSelector = REFERENCE_FIRST
    reference_space: ReferenceSpace | None = None
    missing: str = MISSING_KEEP
    orientation: str | None = None
    axis_aligned: bool = False
    align: str | None = None
    spelling: str = SPELLING_PYTHON
    preprocess: Sequence[Any] | str | None = ()

    def __post_init__(self) -> None:
        reference = self.reference
        keyword = isinstance(reference, str) and reference in (REFERENCE_FIRST, REFERENCE_LARGEST)
        index = isinstance(reference, Integral) and not isinstance(reference, bool)
        if not (keyword or index or callable(reference)):
            raise ValueError(
                f'reference must be "{REFERENCE_FIRST}", "{REFERENCE_LARGEST}", an index or a callable,'
                f' got {reference!r}'
            )
        if self.missing not in MISSING_MODES:
            raise ValueError(f'missing must be one of {MISSING_MODES}, got {self.missing!r}')
        if self.orientation is not None:
            object.__setattr__(self, 'orientation', check_orientation(self.orientation))
        if self.align is not None and self.align not in ALIGN_MODES:
            raise ValueError(f'align must be one of {ALIGN_MODES} or None, got {self.align!r}')
        if self.spelling not in _MISSING_FIX:
            raise ValueError(f'spelling must be one of {tuple(_MISSING_FIX)}, got {self.spelling!r}')
        # Names and dicts become step objects here: an unknown step fails before any header is read.
        object.__setattr__(self, 'preprocess', resolve_steps(self.preprocess))

    def fix(self, mode: str) -> str:
        """The ``missing`` option set to ``mode``, spelled for the caller (``missing="empty"``)."""
        return _MISSING_FIX[self.spelling].format(mode)


@dataclass(frozen=True)
class CheckedSubject:
    """A subject checked against its headers, reference chosen (:func:`pyable_tio.plan.make_plan` input)."""

    record: SubjectRecord
    reference: Reference
    channels: int
    #: ``{str(image path): Alignment}`` found by ``align=`` (applied before manifest transforms).
    alignments: Mapping[str, Alignment] = field(default_factory=dict)
    #: The header of every file, in ``record.entries()`` order.
    headers: tuple[ImageHeader, ...] = ()


@dataclass(frozen=True)
class Checked:
    """What :func:`check_source` found: the good subjects' plans, every problem, the subject count."""

    plans: list[CheckedSubject]
    problems: list[str]
    listed: int


def check_source(
    source: ManifestSource,
    options: CheckOptions,
    *,
    root: str | Path | None = None,
    extra_fields: Sequence[str] = (),
    cache_folder: Path | None = None,
    progress: bool = False,
) -> Checked:
    """Parse, check files and plan: every problem of every subject, in one pass.

    A subject with a structural problem (no images, a bad reference, a misspelt field) or a
    missing file is left out of planning, but never stops the checks of the others; the
    problems of all of them are returned together.

    Raises:
        ManifestError: only when the source itself cannot be read (no such file, bad JSON...).

    Example:
        >>> planned = check_source('manifest.json', CheckOptions(missing='error'))  # doctest: +SKIP
        >>> len(planned.plans), planned.listed, planned.problems  # doctest: +SKIP
        (3, 3, [])
    """
    manifest, problems, listed = parse_manifest(source, root=root, extra_fields=extra_fields)
    # Each file looked up once (a network file system makes every lookup count).
    missing_files = {record.id: file_problems(Manifest((record,))) for record in manifest}
    problems += [problem for found in missing_files.values() for problem in found]
    if any(missing_files.values()):
        complete = [record for record in manifest if not missing_files[record.id]]
        manifest = Manifest(tuple(complete), manifest.source)
    plans, planning_problems = check_manifest(manifest, options, cache_folder=cache_folder, progress=progress)
    return Checked(plans, problems + planning_problems, listed)


def check_manifest(
    manifest: Manifest,
    options: CheckOptions,
    *,
    cache_folder: Path | None = None,
    progress: bool = False,
) -> tuple[list[CheckedSubject], list[str]]:
    """Plan every subject of ``manifest``; a subject's problems never stop the others' checks.

    Args:
        manifest: The parsed manifest (files already checked to exist, or not: a missing
            file is reported as an unreadable header).
        options: The validated options.
        cache_folder: Cache folder whose ``alignment/`` keeps the ``align=`` transforms.
        progress: Show progress bars.

    Returns:
        ``(plans, problems)``: the plans of the subjects without problems, in manifest
        order, and one line per problem (subject, field or file, problem). A batchability
        problem (``missing="error"``/``"empty"``) leaves the plans in place.

    Example:
        >>> plans, problems = check_manifest(manifest, CheckOptions())  # doctest: +SKIP
        >>> [plan.reference.used for plan in plans]  # doctest: +SKIP
    """
    problems: list[str] = []
    space = None
    if options.reference_space is not None:
        try:  # read once; a path stays a path in meta['reference_used']
            space = Reference(*grid_of_space(options.reference_space))
        except ManifestError as error:
            return [], error.problems
    plans = []
    checked: dict = {}  # transform results shared by the subjects (see transform_problems)
    for record in tqdm(manifest, desc='reading headers', disable=not progress, unit='subject'):
        try:
            plan = check_subject(record, options.reference, space)
        except ManifestError as error:
            problems.extend(error.problems)
            continue
        subject_problems = transform_problems(record, plan.reference.grid.dimension, checked)
        subject_problems += preprocess_problems(record, plan.reference.grid.dimension, options.preprocess)
        grid = plan.reference.grid
        try:
            if options.axis_aligned and grid.dimension == 3 and not grid.is_axis_aligned():
                grid = axis_aligned_grid(grid, options.orientation)
            elif options.orientation is not None:
                grid = reorient_grid(grid, options.orientation)
        except ValueError as error:
            subject_problems.append(describe(record.id, f'reference {plan.reference.used}', str(error)))
        if subject_problems:
            problems.extend(subject_problems)
            continue
        plans.append(replace(plan, reference=replace(plan.reference, grid=grid)))
    if options.align is not None:
        plans = _align(plans, options.align, cache_folder, progress, problems)
    if options.missing != MISSING_KEEP:
        problems.extend(batch_problems(plans, options))
    return plans, list(dict.fromkeys(problems))


def check_subject(
    record: SubjectRecord,
    selector: ReferenceSelector = REFERENCE_FIRST,
    reference_space: ReferenceSpace | Reference | None = None,
) -> CheckedSubject:
    """Read the subject's headers, choose its reference and check dimensions.

    Raises:
        ManifestError: listing every unreadable header and dimension mismatch.

    Example:
        >>> check_subject(read_manifest('manifest.json')['sub-01']).channels  # doctest: +SKIP
        2
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
        except ValueError as error:  # the header's grid is refused: a 4-D file
            where = f'field "{name}": file {entry.path}'
            problem = (
                f'unsupported image: {error}; only 2-D and 3-D files are read (a 4-D file is refused,'
                ' not split into channels: write one 3-D file per volume and list each as an image)'
            )
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
        elif name != 'images' and not (record.transforms or _entry_transforms(record, name, path)):
            # Headers only: a label map off its image (identity affine, another field of view),
            # against the subject's images (a reference_space may crop them all on purpose).
            # With transforms the file is moved before resampling: its own space may differ.
            problem = label_checks.extent_problem(header.grid, [h.grid for h in image_headers])
            if problem is not None:
                problems.append(describe(record.id, f'field "{name}": file {path}', problem))
    if problems:
        raise ManifestError.from_problems(problems)
    channels = sum(h.components for h in image_headers)
    in_order = tuple(headers[(name, entry.path)] for name, entry in record.entries())
    return CheckedSubject(record, chosen, channels, headers=in_order)


def _entry_transforms(record: SubjectRecord, name: str, path: Path) -> tuple:
    return next((e.transforms for e in getattr(record, name) if e.path == path), ())


def batch_problems(plans: Sequence[CheckedSubject], options: CheckOptions) -> list[str]:
    """What keeps ``plans`` out of one batch: different image channels, ROIs, label maps or brain masks.

    Images must agree in channels, files and names (a batch stacks them). ROIs and label maps
    must agree in number with ``missing="error"``; ``"empty"`` fills the missing ones (at the
    end of each list, so their names must agree where listed). So must ``roi_brain``: with
    ``missing="error"`` every subject has a skull-strip step or none does.

    Returns:
        One line per disagreement, naming the subjects of each group and the fix.

    Example:
        >>> batch_problems(plans, CheckOptions(missing='error'))  # doctest: +SKIP
        ['field "rois": subjects list different numbers of rois: 1 ("sub-01"), 0 ("sub-02"); ...']
    """
    if len(plans) < 2:
        return []
    problems = []
    images = {p.record.id: (p.channels, len(p.record.images)) for p in plans}
    if len(set(images.values())) > 1:
        groups = _groups({k: f'{c} channel(s) in {n} file(s)' for k, (c, n) in images.items()})
        problems.append(describe(None, 'field "images"', (
            f'subjects have different image channels: {groups}; a batch stacks the same channels for'
            ' every subject: list the same images everywhere (images are never filled)'
        )))
    for name in ('images', 'rois', 'labelmaps'):
        named = {p.record.id: [e.name or '' for e in getattr(p.record, name)] for p in plans}
        if _names_conflict(list(named.values())):
            groups = _groups({k: str(v) for k, v in named.items()})
            problem = f'subjects name their {name} differently: {groups}; a batch mixes them by position'
            problems.append(describe(None, f'field "{name}"', problem))
    if options.missing == MISSING_ERROR:
        for name in ('rois', 'labelmaps'):
            counts = {p.record.id: len(getattr(p.record, name)) for p in plans}
            if len(set(counts.values())) > 1:
                problem = (
                    f'subjects list different numbers of {name}: {_groups(counts)}; a batch needs the'
                    f' same keys in every subject: list them everywhere, or pass {options.fix(MISSING_EMPTY)}'
                    ' to fill the missing ones with all-zero label maps (they then mean "background'
                    ' everywhere" to a loss)'
                )
                problems.append(describe(None, f'field "{name}"', problem))
        stripped = {p.record.id: brain_source(p.record, options.preprocess) is not None for p in plans}
        if len(set(stripped.values())) > 1:
            without = sorted(subject_id for subject_id, has in stripped.items() if not has)
            problem = (
                f'some subjects have a skull-strip step (and so "{BRAIN_MASK_KEY}") and {without} do not;'
                f' a batch needs the same keys in every subject: pass {options.fix(MISSING_EMPTY)} to give'
                f' them an all-zero "{BRAIN_MASK_KEY}"'
            )
            problems.append(describe(None, f'field "{FIELD_PREPROCESS}"', problem))
    return problems


def transform_problems(
    record: SubjectRecord, dimension: int, checked: dict[tuple[Any, bool, int], str | None] | None = None
) -> list[str]:
    """One line per manifest transform of ``record`` that a ``dimension``-D grid cannot use.

    Transform files are read, displacement fields only by header
    (:func:`pyable_tio.geometry.registration.check_transform`).

    Args:
        record: The subject.
        dimension: Dimension of its reference grid.
        checked: Results by transform, shared between subjects so that a file listed by
            many subjects is read once.

    Returns:
        The problems (subject, field and file named), without repeats.

    Example:
        >>> transform_problems(plan.record, plan.reference.grid.dimension)  # doctest: +SKIP
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


def _align(
    plans: Sequence[CheckedSubject], kind: str, folder: Path | None, progress: bool, problems: list[str]
) -> list[CheckedSubject]:
    """Each plan with its alignments, computed (or read from ``folder``) once per subject."""
    cache = None if folder is None else VolumeCache(folder)
    aligned = []
    for plan in tqdm(plans, desc=f'{kind} alignment', disable=not progress, unit='subject'):
        try:
            alignments = align_subject(plan.record, plan.reference, kind, cache)
        except ManifestError as error:
            problems.extend(error.problems)
            continue
        aligned.append(replace(plan, alignments=alignments))
    return aligned


def _names_conflict(lists: Sequence[Sequence[str]]) -> bool:
    """Two different names at one position (unnamed entries, ``""``, match any name)."""
    for position in range(max((len(names) for names in lists), default=0)):
        if len({names[position] for names in lists if position < len(names) and names[position]}) > 1:
            return True
    return False


def _groups(values: Mapping[str, Any], limit: int = 4) -> str:
    """``'2 ("a", "b"), 1 ("c")'``: subjects grouped by value, largest group first."""
    by_value: dict[Any, list[str]] = defaultdict(list)
    for subject_id, value in values.items():
        by_value[value].append(subject_id)
    parts = []
    for value, ids in sorted(by_value.items(), key=lambda item: -len(item[1])):
        shown = ', '.join(f'"{i}"' for i in ids[:limit]) + (f' and {len(ids) - limit} more' if len(ids) > limit else '')
        parts.append(f'{value} ({shown})')
    return ', '.join(parts)


def raise_problems(problems: Sequence[str]) -> None:
    """Raise one :class:`ManifestError` listing ``problems`` (nothing when empty).

    Example:
        >>> raise_problems([])
    """
    if problems:
        raise ManifestError.from_problems(problems)
