"""One manifest parser for every format: JSON, CSV, multi-CSV, dict, list of paths.

Example:
    >>> import pyable_tio as pt
    >>> manifest = pt.read_manifest({'s1': {'images': ['t1.nii.gz']}}, check_files=False)
    >>> manifest['s1'].images[0].path.name
    't1.nii.gz'
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

from ..constants import (
    CSV_LIST_COLUMNS,
    FIELD_ALIASES,
    FIELD_IMAGES,
    FIELD_LABELMAPS,
    FIELD_PREPROCESS,
    FIELD_REFERENCE,
    FIELD_REFERENCE_SPACE,
    FIELD_ROIS,
    FIELD_TRANSFORMS,
)
from ..errors import ManifestError, describe
from ..io import dicom
from . import cells, formats
from .fields import KNOWN_FIELDS, unknown_field_problem
from .records import FileEntry, Manifest, SubjectRecord, TransformEntry

__all__ = [
    'FileEntry',
    'Manifest',
    'ManifestSource',
    'SubjectRecord',
    'TransformEntry',
    'file_problems',
    'parse_manifest',
    'read_manifest',
]

#: Anything :func:`read_manifest` accepts.
ManifestSource = Union[str, os.PathLike, Mapping[str, Any], Sequence[Any], Manifest]

_KNOWN_FIELDS = {*KNOWN_FIELDS, 'id'}


def read_manifest(
    source: ManifestSource,
    *,
    root: str | os.PathLike | None = None,
    check_files: bool = True,
    extra_fields: Sequence[str] = (),
) -> Manifest:
    """Parse a manifest into typed records, reporting every problem at once.

    Fields other than the known ones (``images``, ``rois``, ``labelmaps``, ``reference``,
    ``reference_space``, ``transforms``, ``preprocess``; CSV columns ``image_paths``, ``roi_paths``,
    ``labelmap_paths``) are kept as extra fields (a class label, an age...), except a name
    close to a known one (singular/plural, a ``_path``/``_paths`` suffix, or at most two
    letters apart: ``"labelmap"``, ``"refrence"``, ``"imgs"``), which is an error with
    "did you mean": a typo would otherwise silently drop the files it lists. Declare such a
    field in ``extra_fields`` to keep it.

    Args:
        source: A ``.json`` or ``.csv`` file; a list of CSV files (multi-CSV); a dict
            ``{subject_id: {"images": [...], "rois": [...], "labelmaps": [...],
            "reference": ..., "reference_space": ..., "transforms": [...], "preprocess": [...],
            ...}}``;
            a list of image paths (one subject each); or a parsed :class:`Manifest`.
        root: Folder that relative paths resolve against. Defaults to the manifest
            file's folder, or the working directory for dicts and lists.
        check_files: Check that every listed file exists (also for a parsed :class:`Manifest`).
        extra_fields: Field names that are extra on purpose, never taken for typos.

    Returns:
        The :class:`Manifest`, subjects in manifest order.

    Raises:
        ManifestError: naming the subject, the field or file and the problem, for
            duplicate ids, empty image lists, bad references, unreadable cells and
            missing files (all of them listed).

    Example:
        >>> manifest = read_manifest('manifest.csv')  # doctest: +SKIP
        >>> [record.id for record in manifest]  # doctest: +SKIP
        ['sub-01', 'sub-02']
    """
    manifest, problems, _ = parse_manifest(source, root=root, extra_fields=extra_fields)
    if check_files:
        problems += file_problems(manifest)
    if problems:
        raise ManifestError.from_problems(problems)
    return manifest


def parse_manifest(
    source: ManifestSource,
    *,
    root: str | os.PathLike | None = None,
    extra_fields: Sequence[str] = (),
) -> tuple[Manifest, list[str], int]:
    """Parse what can be parsed; a bad subject never hides the others.

    Args:
        source, root, extra_fields: As in :func:`read_manifest`.

    Returns:
        ``(manifest, problems, listed)``: the subjects without structural problems, one line
        per problem, and how many subjects the source lists (bad ones included). Files are
        not checked (see :func:`file_problems`), but the files of a subject with structural
        problems are checked here, so that every problem shows at once.

    Raises:
        ManifestError: only when the source itself cannot be read (no such file, invalid JSON...).

    Example:
        >>> manifest, problems, listed = parse_manifest({'a': {'images': []}})
        >>> len(manifest), listed, problems
        (0, 1, ['subject "a": field "images": no images listed'])
    """
    if isinstance(source, Manifest):
        return source, list(source.problems), len(source) if source.listed is None else source.listed
    rows, default_root, name = _rows(source)
    base = Path(root) if root is not None else default_root
    spelling = _CSV_SPELLING if _is_csv(source) else {}
    return _build(rows, base.resolve(), name, frozenset(extra_fields), spelling, table=_is_table(source))


def _rows(source: Any) -> tuple[list[formats.RawRow], Path, str | None]:
    cwd = Path.cwd()
    if isinstance(source, Mapping):
        return formats.rows_from_mapping(source), cwd, None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise ManifestError.from_problems([describe(None, f'file {path}', 'manifest not found')])
        suffix = path.suffix.lower()
        if suffix == '.json':
            return formats.rows_from_json(path), path.parent, str(path)
        if suffix in ('.csv', '.tsv'):
            return formats.rows_from_csv(path), path.parent, str(path)
        problem = 'unknown manifest format; use .json or .csv, a dict or a list'
        raise ManifestError.from_problems([describe(None, f'file {path}', problem)])
    if isinstance(source, Sequence) and source:
        paths = [Path(p) for p in source if isinstance(p, (str, os.PathLike))]
        if len(paths) != len(source):
            raise ManifestError.from_problems(['a list manifest must hold only paths'])
        if all(p.suffix.lower() in ('.csv', '.tsv') for p in paths):
            missing = [p for p in paths if not p.is_file()]
            if missing:
                raise ManifestError.from_problems(
                    [describe(None, f'file {p}', 'manifest not found') for p in missing]
                )
            return formats.rows_from_multi_csv(paths), paths[0].parent, ', '.join(map(str, paths))
        return formats.rows_from_paths(list(source)), cwd, None
    raise ManifestError.from_problems([f'cannot read a manifest from {type(source).__name__} {source!r}'])


#: How a single CSV spells the list fields (its column names).
_CSV_SPELLING = {field: column for column, field in CSV_LIST_COLUMNS.items()}


def _is_csv(source: Any) -> bool:
    if isinstance(source, (str, os.PathLike)):
        return Path(source).suffix.lower() in ('.csv', '.tsv')
    return False


def _is_table(source: Any) -> bool:
    """A single or multi-CSV manifest: a wrong column is one problem, not one per row."""
    if _is_csv(source):
        return True
    return isinstance(source, Sequence) and not isinstance(source, str) and bool(source) and all(
        isinstance(p, (str, os.PathLike)) and _is_csv(p) for p in source
    )


def _aliases_resolved(row: formats.RawRow) -> tuple[formats.RawRow, list[tuple[str, str]]]:
    """``row`` with ``image_paths``/``roi_paths``/``labelmap_paths`` as their fields, and the
    (alias, field) pairs given twice (both names in one row)."""
    if not any(alias in row for alias in FIELD_ALIASES):
        return row, []
    resolved, twice = dict(row), []
    for alias, name in FIELD_ALIASES.items():
        if alias in resolved:
            if name in resolved:
                twice.append((alias, name))
                resolved.pop(alias)
            else:
                resolved[name] = resolved.pop(alias)
    return resolved, twice


def _build(
    rows: list[formats.RawRow], root: Path, name: str | None, extra_fields: frozenset[str] = frozenset(),
    spelling: Mapping[str, str] | None = None, table: bool = False,
) -> tuple[Manifest, list[str], int]:
    problems: list[str] = []
    records: list[SubjectRecord] = []
    seen: set[str] = set()
    # Problems in a manifest file name it: "file m.csv: field "images": ...".
    prefix = f'file {name}: ' if name else ''
    # A table's wrong column: one problem naming its rows' subjects, not one per row.
    columns: dict[tuple[str, str], list[str]] | None = {} if table else None
    for row in rows:
        row, twice = _aliases_resolved(row)
        subject_id = '' if cells.is_blank(row.get('id')) else str(row['id']).strip()
        if not subject_id:
            problems.append(describe(None, f'{prefix}id', f'missing subject id in row {row!r}'))
            continue
        if subject_id in seen:
            problems.append(describe(subject_id, f'{prefix}id', 'duplicate subject id'))
            continue
        seen.add(subject_id)
        start = len(problems)
        for alias, field_name in twice:
            problem = f'both "{field_name}" and "{alias}" given (two names of one field): keep one'
            problems.append(describe(subject_id, f'{prefix}field "{field_name}"', problem))
        record, bad = _record(subject_id, row, root, problems, prefix, extra_fields, spelling or {}, columns)
        bad = bad or len(problems) > start
        if bad:
            # Its files are checked all the same: one pass shows every problem.
            problems += file_problems(Manifest((record,)))
        else:
            records.append(record)
    for (key, problem), subjects in (columns or {}).items():
        if len(subjects) == 1:
            problems.append(describe(subjects[0], f'{prefix}field "{key}"', problem))
        else:
            named = ', '.join(f'"{s}"' for s in subjects[:5]) + (', ...' if len(subjects) > 5 else '')
            where = f'{prefix}column "{key}"'
            problems.append(describe(None, where, f'{problem} ({len(subjects)} rows: subjects {named})'))
    if not rows:
        problems.append('the manifest lists no subjects')
    return Manifest(tuple(records), name, tuple(problems), len(rows)), problems, len(rows)


def _record(
    subject_id: str, row: Mapping[str, Any], root: Path, problems: list[str], prefix: str = '',
    extra_fields: frozenset[str] = frozenset(), spelling: Mapping[str, str] | None = None,
    columns: dict[tuple[str, str], list[str]] | None = None,
) -> tuple[SubjectRecord, bool]:
    """The record (fields that do not parse left empty) and whether it had problems."""
    start = len(problems)

    def field(name: str, parse, default):
        try:
            return parse(row.get(name), root)
        except ValueError as error:
            problems.append(describe(subject_id, f'{prefix}field "{name}"', str(error)))
            return default

    images = field(FIELD_IMAGES, _entries, ())
    rois = field(FIELD_ROIS, _entries, ())
    labelmaps = field(FIELD_LABELMAPS, _entries, ())
    reference = field(FIELD_REFERENCE, cells.parse_reference, None)
    reference_space = field(FIELD_REFERENCE_SPACE, cells.parse_reference_space, None)
    transforms = field(FIELD_TRANSFORMS, cells.parse_transforms, ())
    preprocess = field(FIELD_PREPROCESS, cells.parse_preprocess, None)
    for name, entries in ((FIELD_ROIS, rois), (FIELD_LABELMAPS, labelmaps)):
        if any(entry.preprocess for entry in entries):
            problem = f'"{FIELD_PREPROCESS}" applies to images only (ROIs and label maps are never preprocessed)'
            problems.append(describe(subject_id, f'{prefix}field "{name}"', problem))
    if len(problems) == start and not images:
        problems.append(describe(subject_id, f'{prefix}field "{FIELD_IMAGES}"', 'no images listed'))
    if isinstance(reference, int) and images and not 0 <= reference < len(images):
        problem = f'index {reference} out of range for {len(images)} image(s)'
        problems.append(describe(subject_id, f'{prefix}field "{FIELD_REFERENCE}"', problem))
    extra = {k: v for k, v in row.items() if k not in _KNOWN_FIELDS}
    column_bad = False
    for key in extra:
        problem = None if key in extra_fields else unknown_field_problem(str(key), spelling)
        if problem and columns is not None:
            columns.setdefault((str(key), problem), []).append(subject_id)
            column_bad = True
        elif problem:
            problems.append(describe(subject_id, f'{prefix}field "{key}"', problem))
    record = SubjectRecord(
        subject_id, images, rois, labelmaps, reference, reference_space, transforms, extra, preprocess
    )
    return record, len(problems) > start or column_bad


def _entries(value: Any, root: Path) -> tuple[FileEntry, ...]:
    return tuple(cells.parse_file_entry(item, root) for item in cells.parse_list(value))


def _shown(path: Path) -> str:
    """A path as printed in a message: an absurdly long one is shortened in the middle."""
    text = str(path)
    return text if len(text) <= 200 else f'{text[:90]}...{text[-90:]}'


def file_problems(manifest: Manifest) -> list[str]:
    """One line per listed file that does not exist (subject, field and file named).

    Example:
        >>> file_problems(read_manifest({'s': {'images': ['gone.nii.gz']}}, check_files=False))  # doctest: +SKIP
        ['subject "s": field "images": file /work/gone.nii.gz: file not found']
    """
    problems = []
    for record in manifest:
        paths = [(f'field "{name}"', e.path) for name, e in record.entries()]
        paths += [(f'field "{FIELD_TRANSFORMS}"', t.source) for t in record.transform_entries()
                  if isinstance(t.source, Path)]
        for key in (FIELD_REFERENCE, FIELD_REFERENCE_SPACE):
            value = getattr(record, key)
            if isinstance(value, Path):
                paths.append((f'field "{key}"', value))
        for where, path in paths:
            problem = dicom.path_problem(path)  # a file, a DICOM folder or "folder#UID"
            if problem is not None:
                problems.append(describe(record.id, f'{where}: file {_shown(path)}', problem))
    return problems
