"""Cache keys: what a resampled volume depends on, and content digests of source files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..io import backend
from ..io import sources
from ..io.atomic import atomic_write
from ..constants import CACHE_FORMAT_VERSION, CACHE_KEY_VERSION
from ..geometry.grid import Grid
from .digest import FileSignature, digest_of, entries_digest, file_digest, file_signature, hash_file, known_digest, remember_digest

if TYPE_CHECKING:  # the plan imports the preprocessing steps, which import the cache
    from ..plan import PlanEntry


def key_inputs(entry: PlanEntry, grid: Grid, source: str) -> dict[str, Any]:
    """Everything a cached volume depends on, as a JSON-serialisable dict.

    Built from data only (the file's plan entry and the grid), never from a reader.

    Args:
        entry: The file's :class:`~pyable_tio.plan.PlanEntry` (role, transforms, interpolator,
            dtype, default value, non-finite policy, preprocessing).
        grid: The grid it is resampled onto.
        source: SHA-256 of the source file (:func:`source_digest`).

    Returns:
        Format and key versions, backend, source and transforms digests, grid (x,y,z order), role,
        interpolator, dtype, default value and non-finite policy.

    Raises:
        OSError: a transform or preprocessing mask file cannot be read.

    Example:
        >>> key_inputs(reader.entry('t2.nii.gz'), reader.grid, source_digest('t2.nii.gz'))['interpolator']  # doctest: +SKIP
        'linear'
    """
    role = entry.role
    is_image = role == backend.ROLE_IMAGE
    inputs = {
        'format': CACHE_FORMAT_VERSION,
        # Same files and transforms, another meaning (e.g. the list order): another key.
        'key_version': CACHE_KEY_VERSION,
        'backend': backend.active_backend(),
        'source': source,
        'transforms': entries_digest(entry.transforms),
        # + 0.0 turns -0.0 (common in direction cosines) into 0.0: same grid, same key.
        'grid': {name: [v + 0.0 for v in values] for name, values in grid.to_dict().items()},
        'role': role,
        # Labels are nearest-neighbour in their own type whatever the image options say.
        'interpolator': backend.interpolator_for(role, entry.interpolator),
        'dtype': str(np.dtype(entry.dtype)) if is_image else 'native',
        'default_value': float(entry.default_value),
        # "zero" and "keep" give different arrays from one file with NaN/Inf voxels.
        'nonfinite': entry.nonfinite,
    }
    if entry.preprocessing is not None:
        # Only when steps run: keys of volumes without preprocessing stay as they were.
        inputs['preprocess'] = entry.preprocessing.describe()
    return inputs


#: Fields of an on-disk source memo, in :data:`~pyable_tio.cache.digest.FileSignature` order.
MEMO_FIELDS = ('path', 'size', 'mtime_ns', 'ctime_ns', 'inode')


def source_digest(path: str | os.PathLike, memo_folder: Path | None = None) -> str:
    """SHA-256 of a file's bytes, remembered per (path, size, mtime, ctime, inode).

    The stat signature is re-read on every call, so any rewrite, copy or ``touch`` of the
    file hashes it again. The memo lives in this process and, when ``memo_folder`` is given,
    on disk: forked DataLoader workers start each epoch with an empty memory, and the disk
    memo spares them re-hashing every source file. There is one memo file per source path
    (named by the path's digest, so a ``touch`` replaces it rather than adding one); it names
    the file version it describes and is used only when that still matches the file, so a
    memo moved, copied or swapped onto another name is ignored.

    A DICOM series (a folder, or ``folder#UID``) digests its slice files' digests, in
    order: each one is remembered like a file, and any file added, removed or rewritten
    changes it.

    Raises:
        OSError: when the file cannot be read, or a folder holds no unique series.

    Example:
        >>> source_digest('t1.nii.gz', Path('/tmp/pyable-cache/sources'))  # doctest: +SKIP
        '9f86d081884c7d65...'
    """
    path = Path(path)
    if sources.is_series(path):
        try:
            files = sources.files_of(path)
        except ValueError as error:
            raise OSError(str(error)) from None
        return digest_of({'series': [source_digest(file, memo_folder) for file in files]})
    signature = file_signature(path)
    digest = known_digest(signature)
    if digest is not None or memo_folder is None:
        return digest if digest is not None else file_digest(path, signature)
    memo = memo_path(memo_folder, signature[0])
    digest = read_memo(memo, signature)
    if digest is not None:
        remember_digest(signature, digest)
        return digest
    digest = file_digest(path, signature)
    text = json.dumps({**dict(zip(MEMO_FIELDS, signature)), 'sha256': digest}, sort_keys=True)
    try:
        atomic_write(memo, lambda stream: stream.write(text.encode()))
    except OSError:
        pass  # a read-only cache still works, it just hashes again
    return digest


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
    try:
        record = json.loads(memo.read_bytes())
        recorded = tuple(record[name] for name in MEMO_FIELDS)
        digest = record['sha256']
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (isinstance(digest, str) and len(digest) == 64) or memo.stem != digest_of(recorded[0]):
        return None
    if signature is not None and recorded != tuple(signature):
        return None
    return digest


def check_memo(memo: Path) -> str | None:
    """Verify one memo against the file it names; the problem, or None when it is still right.

    A memo of a file that changed or vanished is stale (not wrong: it is never used).

    Example:
        >>> check_memo(memo_path(folder, '/data/t1.nii.gz'))  # doctest: +SKIP
    """
    if read_memo(memo) is None:
        return 'malformed, or not under its own name'
    record = json.loads(memo.read_bytes())
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
