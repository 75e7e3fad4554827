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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..io import dicom, sources
from ..io.atomic import atomic_write
from ..io.identity import folder_listing, stat_identity
from .stats import warn_line

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
        found.append((file_signature(folder), os.fspath(path), folder_listing(folder)))
    return tuple(found)


def identity_now(paths: Iterable[str | os.PathLike]) -> tuple[Any, ...] | None:
    """:func:`source_identity` of ``paths``, or None when one is missing or unreadable: what the
    check after a computation compares with the identity taken before it (None never matches).

    Example:
        >>> identity_now(['/no/such/file.nii.gz']) is None
        True
    """
    try:
        return source_identity(paths)
    except OSError:
        return None


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
    return (resolved, *stat_identity(stat), stat.st_dev)


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


def file_digest(path: str | os.PathLike, memo_folder: Path | None = None) -> str:
    """SHA-256 of a file's bytes (hex), remembered per (path, size, mtime, ctime, inode, device).

    The one digest service of the package: volume keys, preprocessing, alignment and
    statistics all ask it. The stat signature is re-read on every call, so any rewrite, copy
    or ``touch`` of the file hashes it again. The memo lives in this process and, when
    ``memo_folder`` is given, on disk: forked DataLoader workers start each epoch with an
    empty memory, and the disk memo spares them re-hashing every source file. There is one
    memo file per source path (named by the path's digest, so a ``touch`` replaces it rather
    than adding one); it names the file version it describes and is used only when that
    still matches the file, so a memo moved, copied or swapped onto another name is ignored.

    A DICOM series (a folder, or ``folder#UID``) digests its slice files' digests, in order:
    each one is remembered like a file, and any file added, removed or rewritten changes it.

    Args:
        path: The file, or a DICOM series.
        memo_folder: Folder of the on-disk memo (a cache's ``sources/``), or None.

    Raises:
        OSError: when the file cannot be read, or a folder holds no unique series.

    Example:
        >>> file_digest('t1.nii.gz', Path('/tmp/pyable-cache/sources'))  # doctest: +SKIP
        '9f86d081884c7d65...'
    """
    path = Path(path)
    if sources.is_series(path):
        try:
            files = sources.files_of(path)
        except ValueError as error:
            raise OSError(str(error)) from None
        return digest_of({'series': [file_digest(file, memo_folder) for file in files]})
    signature = file_signature(path)
    digest = known_digest(signature)
    if digest is not None:
        return digest
    memo = None if memo_folder is None else memo_path(memo_folder, signature[0])
    digest = None if memo is None else read_memo(memo, signature)
    if digest is not None:
        remember_digest(signature, digest)
        return digest
    # The memos name the version that was hashed (maybe newer than ``signature`` by now).
    hashed, digest = hash_version(path)
    remember_digest(hashed, digest)
    if memo is not None:
        if memo.is_file() and _memo_record(memo) is None:
            # Damaged (whatever JSON it holds): said once, then replaced by the fresh digest.
            warn_line(f'pyable-tio cache: damaged digest memo {memo.name} of {path}; hashing the file again')
        text = json.dumps({**dict(zip(MEMO_FIELDS, hashed)), 'sha256': digest}, sort_keys=True)
        try:
            atomic_write(memo, lambda stream: stream.write(text.encode()))
        except OSError:
            pass  # a read-only cache still works, it just hashes again
    return digest


def content_digest(path: str | os.PathLike) -> str:
    """:func:`file_digest` of a file or series, hashed now (no memo: what a check compares with).

    Example:
        >>> content_digest('t1.nii.gz') == file_digest('t1.nii.gz')  # doctest: +SKIP
        True
    """
    if sources.is_series(path):
        return digest_of({'series': [hash_file(file) for file in sources.files_of(path)]})
    return hash_file(path)


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


def digest_of(value: Any) -> str:
    """SHA-256 of a JSON-serialisable value (keys sorted)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=_jsonable).encode()).hexdigest()


# ------------------------------------------------------------- the on-disk memo


#: Fields of an on-disk source memo, in :data:`~pyable_tio.cache.digest.FileSignature` order.
MEMO_FIELDS = ('path', 'size', 'mtime_ns', 'ctime_ns', 'inode', 'device')


def memo_path(memo_folder: Path, resolved: str) -> Path:
    """The memo file of the source at ``resolved`` (its resolved path).

    Example:
        >>> memo_path(Path('/tmp/pyable-cache/sources'), '/data/t1.nii.gz').suffix  # doctest: +SKIP
        '.json'
    """
    return memo_folder / f'{digest_of(resolved)}.json'


def read_memo(memo: Path, signature: FileSignature | None = None) -> str | None:
    """The digest a memo file records, if it is well-formed, under its own name, and describes
    ``signature`` (when given); else None.

    Example:
        >>> read_memo(memo_path(folder, '/data/t1.nii.gz'), file_signature('/data/t1.nii.gz'))  # doctest: +SKIP
        '9f86d081884c7d65...'
    """
    record = _memo_record(memo)
    if record is None:
        return None
    recorded = tuple(record[name] for name in MEMO_FIELDS)
    if memo.stem != digest_of(recorded[0]):
        return None
    if signature is not None and recorded != tuple(signature):
        return None
    return record['sha256']


def _memo_record(memo: Path) -> dict[str, Any] | None:
    """A memo's fields, each of its type, or None for any damage (whatever JSON it holds)."""
    try:
        record = json.loads(memo.read_bytes())
    except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
        return None
    if not isinstance(record, dict) or not isinstance(record.get('path'), str):
        return None
    if not all(_is_count(record.get(name)) for name in MEMO_FIELDS[1:]):
        return None
    digest = record.get('sha256')
    if not (isinstance(digest, str) and len(digest) == 64 and all(c in '0123456789abcdef' for c in digest)):
        return None
    return record


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_memo(memo: Path) -> str | None:
    """Verify one memo against the file it names; the problem, or None when it is still right.

    A memo of a file that changed or vanished is stale (not wrong: it is never used).

    Example:
        >>> check_memo(memo_path(folder, '/data/t1.nii.gz'))  # doctest: +SKIP
    """
    record = _memo_record(memo)
    if record is None or read_memo(memo) is None:
        return 'malformed, or not under its own name'
    try:
        signature = file_signature(record['path'])
    except OSError:
        return 'stale (its file is gone)'
    if read_memo(memo, signature) is None:
        return 'stale (its file changed)'
    try:
        actual = hash_file(record['path'])  # never a remembered digest: that is what is checked
    except OSError:
        return 'stale (its file is unreadable)'
    if actual != record['sha256']:
        return 'wrong digest for its file'
    return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Iterable):
        return list(value)
    raise TypeError(f'cannot hash {type(value).__name__}')
