"""Content digests of source files, transforms and grids, for cache keys.

A digest depends on what a file holds, not where it is: renaming a file keeps its digest,
rewriting its bytes changes it. Hashing a 50 MB volume costs a fraction of a second, so a
process remembers the digest of a file while its stat signature (size, mtime, ctime, inode,
device) stays the same: one digest per path (the latest version), for at most
:data:`DIGEST_MEMO_LIMIT` paths. The signature remembered is the one of the very file that was
hashed (``fstat`` of the open file, unchanged from before to after reading it), so a file
replaced while it is hashed never lends its digest to another version.

Whoever stores something derived from files brackets the work with :func:`source_identity`:
taken before the key is built and again after the files were read, it must not have changed,
else the result may mix two versions and is not stored (:class:`SourceChanged`).
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

from ..io import dicom, sources
from ..manifest.records import TransformEntry

_CHUNK = 1 << 20
#: At most this many paths' digests are remembered per process (least recently used forgotten).
DIGEST_MEMO_LIMIT = 65536
#: A file rewritten in place while it is hashed is hashed again, at most this many times.
HASH_TRIES = 3
#: A file's stat signature: (resolved path, size, mtime_ns, ctime_ns, inode, device).
FileSignature = tuple[str, int, int, int, int, int]
# resolved path -> (signature, sha256) of its latest version seen; the signature is re-read on
# every call, so a changed file never gets an old digest.
_memo: OrderedDict[str, tuple[FileSignature, str]] = OrderedDict()
_memo_lock = threading.Lock()


class SourceChanged(Exception):
    """A file changed while a result derived from it was being computed: the result is not stored.

    Example:
        >>> raise SourceChanged('t1.nii.gz changed while it was read')
        Traceback (most recent call last):
        ...
        pyable_tio.cache.digest.SourceChanged: t1.nii.gz changed while it was read
    """


def source_identity(paths: Iterable[str | os.PathLike]) -> tuple[Any, ...]:
    """What identifies the current versions of ``paths``: any rewrite, replacement, ``touch``,
    slice added to or removed from a DICOM folder changes it.

    Taken before building a key and again after reading the files, an unchanged identity
    proves that the key and the result describe the same bytes.

    Raises:
        OSError: when a file is missing.

    Example:
        >>> before = source_identity(['t1.nii.gz'])  # doctest: +SKIP
        >>> array = read('t1.nii.gz')  # doctest: +SKIP
        >>> source_identity(['t1.nii.gz']) == before  # unchanged: store it  # doctest: +SKIP
        True
    """
    found: list[Any] = []
    for path in paths:
        split = dicom.split_locator(path)
        if split is None:
            found.append(file_signature(path))
            continue
        folder = split[0]
        # The folder's own stat changes when a slice is added, removed or renamed; each slice's
        # when it is rewritten in place.
        slices = []
        for child in os.scandir(folder):
            if child.is_file():
                stat = child.stat()
                slices.append((child.name, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino))
        found.append((file_signature(folder), os.fspath(path), tuple(sorted(slices))))
    return tuple(found)


def file_signature(path: str | os.PathLike) -> FileSignature:
    """What identifies one version of a file: any rewrite, replacement or ``touch`` of it changes it.

    Raises:
        OSError: when the file cannot be read.

    Example:
        >>> file_signature('t1.nii.gz')  # doctest: +SKIP
        ('/data/t1.nii.gz', 1048576, 1700000000000000000, 1700000000000000000, 123456, 2049)
    """
    path = Path(path)
    return _signature(str(path.resolve()), path.stat())


def _signature(resolved: str, stat: os.stat_result) -> FileSignature:
    return (resolved, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev)


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
        signature, digest = hash_version(path)
        remember_digest(signature, digest)
    return digest


def hash_version(path: str | os.PathLike) -> tuple[FileSignature, str]:
    """SHA-256 of a file's bytes and the signature of the very version that was read.

    The file is opened once; its ``fstat`` before and after reading must agree (an in-place
    rewrite meanwhile hashes it again), so the pair never mixes two versions, even when the
    path is replaced meanwhile (the open file is the old version, and so is its signature).

    Raises:
        OSError: when the file cannot be read, or keeps changing while it is read.

    Example:
        >>> hash_version('t1.nii.gz')  # doctest: +SKIP
        (('/data/t1.nii.gz', 1048576, 1700000000000000000, 1700000000000000000, 123456, 2049), '9f86d081...')
    """
    path = Path(path)
    resolved = str(path.resolve())
    for _ in range(HASH_TRIES):
        with path.open('rb') as stream:
            before = os.fstat(stream.fileno())
            digest = _hash_stream(stream)
            after = os.fstat(stream.fileno())
        if _signature(resolved, before) == _signature(resolved, after):
            return _signature(resolved, after), digest
    raise OSError(f'{path} kept changing while it was hashed ({HASH_TRIES} tries)')


def hash_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex), read now (no memo).

    Raises:
        OSError: when the file cannot be read.

    Example:
        >>> hash_file('t1.nii.gz')  # doctest: +SKIP
        '9f86d081884c7d65...'
    """
    with Path(path).open('rb') as stream:
        return _hash_stream(stream)


def _hash_stream(stream: Any) -> str:
    sha = hashlib.sha256()
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
