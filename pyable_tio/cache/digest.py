"""Content digests of source files, transforms and grids, for cache keys.

A digest depends on what a file holds, not where it is: renaming a file keeps its digest,
rewriting its bytes changes it. Hashing a 50 MB volume costs a fraction of a second, so a
process remembers the digest of a file while its stat signature (size, mtime, ctime, inode)
stays the same: one digest per path (the latest version), for at most
:data:`DIGEST_MEMO_LIMIT` paths.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from ..io import sources
from ..manifest.records import TransformEntry

_CHUNK = 1 << 20
#: At most this many paths' digests are remembered per process (least recently used forgotten).
DIGEST_MEMO_LIMIT = 65536
#: A file's stat signature: (resolved path, size, mtime_ns, ctime_ns, inode).
FileSignature = tuple[str, int, int, int, int]
# resolved path -> (signature, sha256) of its latest version seen; the signature is re-read on
# every call, so a changed file never gets an old digest.
_memo: OrderedDict[str, tuple[FileSignature, str]] = OrderedDict()
_memo_lock = threading.Lock()


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
    with _memo_lock:
        known = _memo.get(signature[0])
        if known is None or known[0] != signature:
            return None
        _memo.move_to_end(signature[0])
        return known[1]


def forget_digests() -> None:
    """Forget every remembered digest (as a fresh process would).

    Example:
        >>> forget_digests()
    """
    with _memo_lock:
        _memo.clear()


def memo_size() -> int:
    """How many paths' digests this process remembers (at most :data:`DIGEST_MEMO_LIMIT`).

    Example:
        >>> memo_size() <= DIGEST_MEMO_LIMIT
        True
    """
    return len(_memo)


def remember_digest(signature: FileSignature, digest: str) -> None:
    """Record ``digest`` for ``signature`` (e.g. read back from an on-disk memo).

    Example:
        >>> remember_digest(file_signature('t1.nii.gz'), '9f86d081884c7d65...')  # doctest: +SKIP
    """
    with _memo_lock:
        _memo[signature[0]] = (signature, digest)
        _memo.move_to_end(signature[0])
        while len(_memo) > DIGEST_MEMO_LIMIT:
            _memo.popitem(last=False)


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
    digest = known_digest(signature)
    if digest is None:
        digest = hash_file(path)
        remember_digest(signature, digest)
    return digest


def hash_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex), read now (no memo).

    Raises:
        OSError: when the file cannot be read.

    Example:
        >>> hash_file('t1.nii.gz')  # doctest: +SKIP
        '9f86d081884c7d65...'
    """
    sha = hashlib.sha256()
    with Path(path).open('rb') as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b''):
            sha.update(chunk)
    return sha.hexdigest()


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
