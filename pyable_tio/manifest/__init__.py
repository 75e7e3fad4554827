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
    FIELD_IMAGES,
    FIELD_LABELMAPS,
    FIELD_REFERENCE,
    FIELD_REFERENCE_SPACE,
    FIELD_ROIS,
    FIELD_TRANSFORMS,
)
from ..errors import ManifestError, describe
from .. import dicom
from . import cells, formats
from .records import FileEntry, Manifest, SubjectRecord, TransformEntry

__all__ = [
    'FileEntry',
    'Manifest',
    'ManifestSource',
    'SubjectRecord',
    'TransformEntry',
    'read_manifest',
]

#: Anything :func:`read_manifest` accepts.
ManifestSource = Union[str, os.PathLike, Mapping[str, Any], Sequence[Any], Manifest]

_KNOWN_FIELDS = {
    FIELD_IMAGES, FIELD_ROIS, FIELD_LABELMAPS, FIELD_REFERENCE, FIELD_REFERENCE_SPACE,
    FIELD_TRANSFORMS, 'id',
}


def read_manifest(
    source: ManifestSource,
    *,
    root: str | os.PathLike | None = None,
    check_files: bool = True,
) -> Manifest:
    """Parse a manifest into typed records, reporting every problem at once.

    Args:
        source: A ``.json`` or ``.csv`` file; a list of CSV files (multi-CSV); a dict
            ``{subject_id: {"images": [...], "rois": [...], "labelmaps": [...],
            "reference": ..., "reference_space": ..., "transforms": [...], ...}}``;
            a list of image paths (one subject each); or a parsed :class:`Manifest`.
        root: Folder that relative paths resolve against. Defaults to the manifest
            file's folder, or the working directory for dicts and lists.
        check_files: Check that every listed file exists (also for a parsed :class:`Manifest`).

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
    if isinstance(source, Manifest):
        manifest = source
    else:
        rows, default_root, name = _rows(source)
        base = Path(root) if root is not None else default_root
        manifest = _build(rows, base.resolve(), name)
    if check_files:
        _check_files(manifest)
    return manifest


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


def _build(rows: list[formats.RawRow], root: Path, name: str | None) -> Manifest:
    problems: list[str] = []
    records: list[SubjectRecord] = []
    seen: set[str] = set()
    # Problems in a manifest file name it: "file m.csv: field "images": ...".
    prefix = f'file {name}: ' if name else ''
    for row in rows:
        subject_id = '' if cells.is_blank(row.get('id')) else str(row['id']).strip()
        if not subject_id:
            problems.append(describe(None, f'{prefix}id', f'missing subject id in row {row!r}'))
            continue
        if subject_id in seen:
            problems.append(describe(subject_id, f'{prefix}id', 'duplicate subject id'))
            continue
        seen.add(subject_id)
        record = _record(subject_id, row, root, problems, prefix)
        if record is not None:
            records.append(record)
    if not records and not problems:
        problems.append('the manifest lists no subjects')
    if problems:
        raise ManifestError.from_problems(problems)
    return Manifest(tuple(records), name)


def _record(subject_id: str, row: Mapping[str, Any], root: Path, problems: list[str], prefix: str = ''):
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
    if len(problems) == start and not images:
        problems.append(describe(subject_id, f'{prefix}field "{FIELD_IMAGES}"', 'no images listed'))
    if isinstance(reference, int) and images and not 0 <= reference < len(images):
        problem = f'index {reference} out of range for {len(images)} image(s)'
        problems.append(describe(subject_id, f'{prefix}field "{FIELD_REFERENCE}"', problem))
    if len(problems) > start:
        return None
    extra = {k: v for k, v in row.items() if k not in _KNOWN_FIELDS}
    return SubjectRecord(
        subject_id, images, rois, labelmaps, reference, reference_space, transforms, extra
    )


def _entries(value: Any, root: Path) -> tuple[FileEntry, ...]:
    return tuple(cells.parse_file_entry(item, root) for item in cells.parse_list(value))


def _check_files(manifest: Manifest) -> None:
    """List every missing file of the manifest in one error."""
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
            if not dicom.exists(path):  # a file, a DICOM folder or "folder#UID"
                problems.append(describe(record.id, f'{where}: file {path}', 'file not found'))
    if problems:
        raise ManifestError.from_problems(problems)
