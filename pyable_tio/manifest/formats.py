"""Front ends: each manifest format becomes a list of raw rows ``{"id": ..., field: value}``.

Rows still hold manifest values (strings, lists, dicts); ``builder`` turns them into records.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..constants import FIELD_IMAGES, FIELD_LABELMAPS, FIELD_PREPROCESS, FIELD_ROIS
from ..errors import ManifestError, describe
from .cells import is_blank, nesting_depth, outside_strings

RawRow = dict[str, Any]

#: Multi-CSV tables, recognised by their columns: (name column, manifest field).
MULTI_CSV_TABLES = {
    'sequence': FIELD_IMAGES,
    'roi_type': FIELD_ROIS,
    'label_type': FIELD_LABELMAPS,
}


def rows_from_mapping(mapping: Mapping[str, Any]) -> list[RawRow]:
    """``{id: {images: [...], ...}}`` (or ``{id: [image, ...]}``) to rows."""
    rows = []
    for subject_id, entry in mapping.items():
        if isinstance(entry, Mapping):
            rows.append({'id': subject_id, **entry})
        elif isinstance(entry, (list, tuple, str, os.PathLike)):
            rows.append({'id': subject_id, FIELD_IMAGES: entry})
        else:
            problem = f'expected a dict of fields or a list of images, got {type(entry).__name__}'
            raise ManifestError.from_problems([describe(str(subject_id), None, problem)])
    return rows


def rows_from_paths(paths: Sequence[Any]) -> list[RawRow]:
    """One subject per image path; ids are file stems (full paths if stems collide)."""
    stems = [_stem(p) for p in paths]
    unique = len(set(stems)) == len(stems)
    return [
        {'id': stem if unique else str(path), FIELD_IMAGES: [path]}
        for stem, path in zip(stems, paths)
    ]


def rows_from_json(path: Path) -> list[RawRow]:
    """A JSON file: ``{id: {...}}`` or a list of image paths; duplicate ids are errors."""
    content = _load_json(path)
    if isinstance(content, Mapping):
        return rows_from_mapping(content)
    if isinstance(content, list) and all(isinstance(p, str) for p in content):
        return rows_from_paths(content)
    raise ManifestError.from_problems([
        describe(None, f'file {path}', 'expected {subject_id: {...}} or a list of image paths')
    ])


def rows_from_csv(path: Path) -> list[RawRow]:
    """A single CSV: ``id,images,rois,labelmaps,reference,reference_space,transforms,preprocess``.

    The columns are the fields of every manifest format; ``image_paths``, ``roi_paths`` and
    ``labelmap_paths`` are accepted for ``images``, ``rois`` and ``labelmaps``.

    ``transforms`` holds the subject's transforms; per-file transforms go in a ``*_paths`` cell
    as a JSON list of file items ``{"path": ..., "transforms": [...]}``.
    """
    table = _read_csv(path)
    if FIELD_IMAGES not in table.columns and 'image_paths' not in table.columns:
        found = ', '.join(map(str, table.columns))
        raise ManifestError.from_problems([
            describe(None, f'file {path}', f'needs an "images" (or "image_paths") column; found: {found}')
        ])
    # Column names are the fields of every format (their aliases too: pyable_tio.manifest._build).
    return [{k: v for k, v in record.items() if not is_blank(v)} for record in table.to_dict(orient='records')]


def rows_from_multi_csv(paths: Sequence[Path]) -> list[RawRow]:
    """``images.csv`` (id,sequence,path,is_reference), ``rois.csv``, ``labelmaps.csv``.

    Tables are recognised by their columns; a table with ``id`` and none of the name columns
    adds per-subject fields (``transforms`` among them). An optional ``transforms`` column of
    ``images.csv``/``rois.csv``/``labelmaps.csv`` gives the row's own transforms (a path or a
    JSON list of paths and ``{"path": ..., "invert": true}`` items); an optional ``preprocess``
    column of ``images.csv`` the row's steps (``n4,skullstrip``). Channels are ordered by sequence name, as are ROIs and label maps.
    """
    rows: dict[str, RawRow] = {}
    problems: list[str] = []
    for path in paths:
        table = _read_csv(path)
        kind = next((col for col in MULTI_CSV_TABLES if col in table.columns), None)
        if kind is None:
            _merge_extra_table(table, path, rows, problems)
            continue
        required = {'id', kind, 'path'}
        if not required <= set(table.columns):
            missing = sorted(required - set(table.columns))
            problems.append(describe(None, f'file {path}', f'missing columns {missing}'))
            continue
        field = MULTI_CSV_TABLES[kind]
        table = table.sort_values([kind], kind='stable')
        for record in table.to_dict(orient='records'):
            subject_id = str(record['id'])
            row = rows.setdefault(subject_id, {'id': subject_id})
            entry: dict[str, Any] = {'path': record['path'], 'name': str(record[kind])}
            if not is_blank(record.get('transforms')):
                entry['transforms'] = record['transforms']
            if not is_blank(record.get(FIELD_PREPROCESS)):
                entry[FIELD_PREPROCESS] = record[FIELD_PREPROCESS]
            names = [e['name'] for e in row.get(field, [])]
            if entry['name'] in names:
                where = f'file {path}'
                problems.append(describe(subject_id, where, f'{kind} "{entry["name"]}" listed twice'))
            row.setdefault(field, []).append(entry)
            if field == FIELD_IMAGES and _truthy(record.get('is_reference')):
                row.setdefault('_reference_names', []).append(entry['name'])
    if problems:
        raise ManifestError.from_problems(problems)
    # Subjects may list different sequences (TorchIO's subjects have the keys they have);
    # batches check that they agree (pyable_tio.checking.headers.batch_problems).
    for row in rows.values():
        flagged = row.pop('_reference_names', [])
        if len(flagged) > 1:
            problems.append(describe(row['id'], 'is_reference', f'several references: {flagged}'))
        elif flagged:
            row['reference'] = [e['name'] for e in row[FIELD_IMAGES]].index(flagged[0])
    if problems:
        raise ManifestError.from_problems(problems)
    return list(rows.values())


def _merge_extra_table(table: pd.DataFrame, path: Path, rows: dict, problems: list) -> None:
    if 'id' not in table.columns:
        problems.append(describe(None, f'file {path}', 'has neither an "id" column nor a known table'))
        return
    # images/rois/labelmaps come from their own tables; a column of that name would replace them.
    clashes = sorted(set(table.columns) & set(MULTI_CSV_TABLES.values()))
    for record in table.to_dict(orient='records'):
        row = rows.setdefault(str(record['id']), {'id': str(record['id'])})
        for column in clashes:
            problem = f'column "{column}" clashes with the {column} table; rename it'
            problems.append(describe(row['id'], f'file {path}', problem))
        row.update({k: v for k, v in record.items() if k not in ('id', *clashes) and not is_blank(v)})


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        sep = '\t' if path.suffix.lower() == '.tsv' else ','
        table = pd.read_csv(path, sep=sep, keep_default_na=False, na_values=[''], dtype={'id': str})
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise ManifestError.from_problems([describe(None, f'file {path}', f'unreadable CSV: {error}')])
    table.columns = [str(c).strip() for c in table.columns]
    if 'id' not in table.columns:
        raise ManifestError.from_problems([describe(None, f'file {path}', 'has no "id" column')])
    return table


def _load_json(path: Path) -> Any:
    duplicates: list[list[str]] = []  # per JSON object, innermost first, top level last

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        # json.load would silently keep the last of two subjects with the same id.
        counts = Counter(key for key, _ in pairs)
        duplicates.append(sorted(key for key, count in counts.items() if count > 1))
        return dict(pairs)

    where = f'file {path}'
    try:
        with open(path, encoding='utf-8') as file:
            content = json.load(file, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as error:
        problem = f'invalid JSON at line {error.lineno} column {error.colno}: {error.msg}'
        raise ManifestError.from_problems([describe(None, where, problem)]) from None
    except RecursionError:
        raise ManifestError.from_problems([_too_deep(path)]) from None
    if any(duplicates):
        top = duplicates.pop() if isinstance(content, Mapping) else []
        problems = [describe(key, where, 'duplicate subject id') for key in top]
        nested = sorted({key for keys in duplicates for key in keys})
        problems += [describe(None, where, f'key "{key}" listed twice in one object') for key in nested]
        raise ManifestError.from_problems(problems)
    return content


def _too_deep(path: Path) -> str:
    """Where a JSON manifest nests too deeply for the parser: subject, field, file, line."""
    text = path.read_text(encoding='utf-8')
    deepest, limit = nesting_depth(text), 100  # where the nesting passes 100: no manifest needs that
    keys: list[str | None] = []  # innermost key of each open object/array
    depth, where = 0, len(text) - 1
    for index, char, last_string in outside_strings(text):
        if char == ':' and keys:
            keys[-1] = last_string
        elif char in '[{':
            keys.append(None)
            depth += 1
            if depth > limit:
                where = index
                break
        elif char in ']}' and keys:
            keys.pop()
            depth -= 1
    line = text.count('\n', 0, where) + 1
    column = where - text.rfind('\n', 0, where)
    subject = keys[0] if keys else None
    field = f'field "{keys[1]}": ' if len(keys) > 1 and keys[1] else ''
    problem = f'nested {deepest} brackets deep from line {line} column {column}: too deep to read'
    return describe(subject, f'{field}file {path}', problem)


def _truthy(value: Any) -> bool:
    if is_blank(value):
        return False
    if isinstance(value, str):
        return value.strip().lower() in ('1', 'true', 'yes', 'y', 't')
    return bool(value)


def _stem(path: Any) -> str:
    name = Path(str(path)).name
    for suffix in ('.nii.gz', '.nii', '.mha', '.mhd', '.nrrd', '.nhdr'):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem
