"""Content digests of source files, transforms and grids, for cache keys.

A digest depends on what a file holds, not where it is: renaming a file keeps its digest,
rewriting its bytes changes it. Hashing a 50 MB volume costs a fraction of a second, so a
process remembers the digest of a file while its size and modification time stay the same.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from .manifest.records import TransformEntry

_CHUNK = 1 << 20
# (path, size, mtime_ns) -> sha256; the stat triple is re-checked on every call.
_memo: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex), remembered while its size and mtime are unchanged.

    Example:
        >>> file_digest('t1.nii.gz')  # doctest: +SKIP
        '9f86d081884c7d65...'
    """
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    digest = _memo.get(key)
    if digest is None:
        sha = hashlib.sha256()
        with path.open('rb') as stream:
            for chunk in iter(lambda: stream.read(_CHUNK), b''):
                sha.update(chunk)
        digest = _memo[key] = sha.hexdigest()
    return digest


def transform_digest(transform: sitk.Transform) -> str:
    """SHA-256 of an in-memory SimpleITK transform (type, parameters, nested transforms)."""
    return hashlib.sha256(json.dumps(_describe_transform(transform)).encode()).hexdigest()


def entries_digest(entries: Sequence[TransformEntry]) -> str:
    """SHA-256 of a list of transform entries: their contents, order and invert flags.

    Example:
        >>> entries_digest([TransformEntry(Path('rigid.tfm'))])  # doctest: +SKIP
        'c3ab8ff13720e8ad...'
    """
    parts = []
    for entry in entries:
        if isinstance(entry.source, sitk.Transform):
            content = transform_digest(entry.source)
        else:
            content = file_digest(entry.source)
        parts.append({'content': content, 'invert': bool(entry.invert)})
    return digest_of(parts)


def digest_of(value: Any) -> str:
    """SHA-256 of a JSON-serialisable value (keys sorted)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=_jsonable).encode()).hexdigest()


def _describe_transform(transform: sitk.Transform) -> dict[str, Any]:
    if transform.GetName() == 'CompositeTransform':
        composite = sitk.CompositeTransform(transform)
        nested = [_describe_transform(composite.GetNthTransform(i)) for i in range(composite.GetNumberOfTransforms())]
        return {'name': 'CompositeTransform', 'transforms': nested}
    if transform.GetName() == 'DisplacementFieldTransform':
        field = sitk.DisplacementFieldTransform(transform).GetDisplacementField()
        array = sitk.GetArrayViewFromImage(field)
        return {
            'name': 'DisplacementFieldTransform',
            'field': hashlib.sha256(array.tobytes()).hexdigest(),
            'grid': [field.GetSize(), field.GetSpacing(), field.GetOrigin(), field.GetDirection()],
        }
    return {
        'name': transform.GetName(),
        'parameters': list(transform.GetParameters()),
        'fixed': list(transform.GetFixedParameters()),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Iterable):
        return list(value)
    raise TypeError(f'cannot hash {type(value).__name__}')
