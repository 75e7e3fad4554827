"""Content digests of source files, transforms and grids, for cache keys.

A digest depends on what a file holds, not where it is: renaming a file keeps its digest,
rewriting its bytes changes it. Hashing a 50 MB volume costs a fraction of a second, so a
process remembers the digest of a file while its stat signature (size, mtime, ctime, inode)
stays the same.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from . import sources
from .manifest.records import TransformEntry

_CHUNK = 1 << 20
#: A file's stat signature: (resolved path, size, mtime_ns, ctime_ns, inode).
FileSignature = tuple[str, int, int, int, int]
# signature -> sha256; the signature is re-read on every call.
_memo: dict[FileSignature, str] = {}


def file_signature(path: str | os.PathLike) -> FileSignature:
    """What identifies one version of a file: any rewrite, replacement or ``touch`` of it changes it.

    Raises:
        OSError: when the file cannot be read.

    Example:
        >>> file_signature('t1.nii.gz')  # doctest: +SKIP
        ('/data/t1.nii.gz', 1048576, 1700000000000000000, 1700000000000000000, 123456)
    """
    path = Path(path)
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


def known_digest(signature: FileSignature) -> str | None:
    """The digest this process already knows for ``signature``, or None.

    Example:
        >>> known_digest(file_signature('t1.nii.gz'))  # doctest: +SKIP
        '9f86d081884c7d65...'
    """
    return _memo.get(signature)


def remember_digest(signature: FileSignature, digest: str) -> None:
    """Record ``digest`` for ``signature`` (e.g. read back from an on-disk memo).

    Example:
        >>> remember_digest(file_signature('t1.nii.gz'), '9f86d081884c7d65...')  # doctest: +SKIP
    """
    _memo[signature] = digest


def file_digest(path: str | os.PathLike, signature: FileSignature | None = None) -> str:
    """SHA-256 of a file's bytes (hex), remembered while its :func:`file_signature` is unchanged.

    Args:
        path: The file.
        signature: Its :func:`file_signature`, when the caller already has it.

    A DICOM series (a folder, or ``folder#UID``) digests its slice files' digests, in order.

    Raises:
        OSError: when the file cannot be read, or a folder holds no unique series.

    Example:
        >>> file_digest('t1.nii.gz')  # doctest: +SKIP
        '9f86d081884c7d65...'
    """
    path = Path(path)
    if sources.is_series(path):
        try:
            files = sources.files_of(path)
        except ValueError as error:
            raise OSError(str(error)) from None
        return digest_of({'series': [file_digest(file) for file in files]})
    if signature is None:
        signature = file_signature(path)
    digest = _memo.get(signature)
    if digest is None:
        sha = hashlib.sha256()
        with path.open('rb') as stream:
            for chunk in iter(lambda: stream.read(_CHUNK), b''):
                sha.update(chunk)
        digest = _memo[signature] = sha.hexdigest()
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
