"""Parsing of single manifest values: list cells, references, reference spaces, transforms.

CSV cells arrive as strings; JSON and dict manifests as Python values. Both go through the
same functions, which raise ``ValueError`` with a short reason; the caller adds the subject
and field. Nothing here ever evaluates code: list literals go through ``ast.literal_eval``.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from ..io import dicom
from ..constants import FIELD_PREPROCESS, REFERENCE_FIRST, REFERENCE_LARGEST
from ..geometry.grid import Grid
from ..preprocess import resolve_steps
from .fields import reference_problem
from .records import FileEntry, ReferenceValue, TransformEntry


def is_blank(value: Any) -> bool:
    """True for None, NaN and empty or whitespace-only strings."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def parse_list(value: Any) -> list[Any]:
    """A JSON list, a Python-style list literal, a single value, or nothing.

    Example:
        >>> parse_list("['a.nii', 'b.nii']"), parse_list('a.nii'), parse_list('')
        (['a.nii', 'b.nii'], ['a.nii'], [])
    """
    if is_blank(value):
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if not isinstance(value, str):
        return [value]
    text = value.strip()
    if not text.startswith(('[', '(')):
        return [text]
    try:
        parsed = json.loads(text)
    except RecursionError:
        raise ValueError(f'list nested too deeply ({nesting_depth(text)} brackets): {text[:40]!r}...') from None
    except json.JSONDecodeError:
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as error:
            raise ValueError(f'cannot read {text!r} as a list ({type(error).__name__})') from None
    if not isinstance(parsed, (list, tuple)):
        raise ValueError(f'{text!r} is not a list')
    return list(parsed)


def resolve_path(value: Any, root: Path) -> Path:
    """An absolute path; relative paths resolve against ``root``."""
    if not isinstance(value, (str, Path)) or is_blank(str(value)):
        raise ValueError(f'expected a path, got {value!r}')
    path = Path(str(value).strip()).expanduser()
    return path if path.is_absolute() else (root / path)


def parse_transform(value: Any, root: Path) -> TransformEntry:
    """A path, ``{"path": ..., "invert": bool}`` or an in-memory ``sitk.Transform``."""
    if isinstance(value, sitk.Transform):
        return TransformEntry(value)
    if isinstance(value, Mapping):
        unknown = set(value) - {'path', 'invert'}
        if unknown or 'path' not in value:
            raise ValueError(f'a transform entry takes "path" and "invert", got {dict(value)!r}')
        invert = value.get('invert', False)
        if not isinstance(invert, bool):
            raise ValueError(f'"invert" must be true or false, got {invert!r}')
        source = value['path']
        if isinstance(source, sitk.Transform):
            return TransformEntry(source, invert)
        return TransformEntry(resolve_path(source, root), invert)
    return TransformEntry(resolve_path(value, root))


def parse_transforms(value: Any, root: Path) -> tuple[TransformEntry, ...]:
    """A list cell (or list) of transforms, each as :func:`parse_transform` reads it."""
    return tuple(parse_transform(item, root) for item in parse_list(value))


def parse_preprocess(value: Any, root: Path | None = None) -> tuple[Any, ...] | None:
    """Preprocessing steps: a list of names or ``{"name": ..., **parameters}``, or ``"n4,skullstrip"``.

    Blank means "not given" (None); an empty list turns preprocessing off (``()``).

    Example:
        >>> [step.name for step in parse_preprocess('n4,skullstrip')]
        ['n4', 'skullstrip']
    """
    if value is None or (isinstance(value, str) and is_blank(value)):
        return None
    if isinstance(value, str) and not value.strip().startswith('['):
        return resolve_steps(value)
    return resolve_steps(parse_list(value))


def parse_file_entry(value: Any, root: Path, name: str | None = None) -> FileEntry:
    """A path, or ``{"path": ..., "transforms": [...], "name": ..., "preprocess": [...]}``.

    The item's ``transforms`` apply to this file only, before the subject's (seed order:
    ``[*file, *subject]`` reads the file at ``F(S(p))``).
    A DICOM folder with several series takes ``"series": UID`` (stored as the path
    ``folder#UID``, which is also how a CSV cell spells it).

    Example:
        >>> entry = parse_file_entry({'path': 't2.nii.gz', 'transforms': ['t2_to_t1.tfm']}, Path('/data'))
        >>> entry.path, entry.transforms[0].source
        (PosixPath('/data/t2.nii.gz'), PosixPath('/data/t2_to_t1.tfm'))
    """
    if isinstance(value, Mapping):
        unknown = set(value) - {'path', 'transforms', 'name', 'series', FIELD_PREPROCESS}
        if unknown or 'path' not in value:
            raise ValueError(
                f'a file entry takes "path", "transforms", "name", "series" and "{FIELD_PREPROCESS}",'
                f' got {dict(value)!r}'
            )
        transforms = parse_transforms(value.get('transforms'), root)
        path = resolve_path(value['path'], root)
        if not is_blank(value.get('series')):
            # One series of a DICOM folder: the locator "folder#UID" every reader understands.
            path = dicom.locator(path, value['series'])
        preprocess = parse_preprocess(value.get(FIELD_PREPROCESS))
        return FileEntry(path, transforms, value.get('name', name), preprocess)
    return FileEntry(resolve_path(value, root), (), name)


def parse_reference(value: Any, root: Path) -> ReferenceValue | None:
    """An index, ``"first"``/``"largest"``, a path, or None when blank."""
    if is_blank(value):
        return None
    if isinstance(value, bool):
        raise ValueError(f'expected an index, a path, "first" or "largest", got {value!r}')
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value).strip()
    if text.lstrip('-').isdigit():
        return int(text)
    if text in (REFERENCE_FIRST, REFERENCE_LARGEST):
        return text
    path = resolve_path(text, root)
    # A bare word ("largset") is a misspelt keyword far more often than a file without suffix.
    if not any(sep in text for sep in ('.', '/', '\\')) and not _exists(path):
        raise ValueError(reference_problem(text))
    return path


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name longer than the OS allows: not a file, so not a file reference
        return False


def parse_reference_space(value: Any, root: Path) -> Path | Grid | None:
    """A grid dict (or its JSON text), a ``Grid``, an image path, or None when blank."""
    if is_blank(value):
        return None
    if isinstance(value, Grid):
        return value
    if isinstance(value, str) and value.strip().startswith('{'):
        try:
            value = json.loads(value)
        except RecursionError:
            raise ValueError(f'JSON nested too deeply ({nesting_depth(value)} brackets)') from None
        except json.JSONDecodeError as error:
            raise ValueError(f'cannot read {value!r} as JSON: {error.msg}') from None
    if isinstance(value, Mapping):
        return Grid.from_dict(value)
    return resolve_path(value, root)


def outside_strings(text: str) -> Iterator[tuple[int, str, str | None]]:
    """``(index, character, last string closed before it)`` for each character outside JSON strings.

    Example:
        >>> [c for _, c, _ in outside_strings('{"a]": [1]}')]
        ['{', ':', ' ', '[', '1', ']', '}']
    """
    in_string = escaped = False
    start, last = 0, None
    for index, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == '\\':
                escaped = True
            elif char == '"':
                in_string, last = False, text[start:index]
        elif char == '"':
            in_string, start = True, index + 1
        else:
            yield index, char, last


def nesting_depth(text: str) -> int:
    """The deepest bracket nesting of JSON-like ``text`` (brackets inside strings ignored).

    Example:
        >>> nesting_depth('[[1, "]"], {"a": [2]}]')
        3
    """
    depth = deepest = 0
    for _, char, _ in outside_strings(text):
        if char in '[{(':
            depth += 1
            deepest = max(deepest, depth)
        elif char in ']})':
            depth -= 1
    return deepest
