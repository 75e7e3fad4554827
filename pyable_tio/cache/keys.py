"""Cache keys: what a resampled volume depends on, and content digests of source files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import backend, sources
from ..constants import CACHE_FORMAT_VERSION, CACHE_KEY_VERSION, DEFAULT_NONFINITE
from ..hashing import digest_of, entries_digest, file_digest, file_signature, known_digest, remember_digest
from ..manifest.records import TransformEntry
from .entry import atomic_write


def key_inputs(reader: Any, source: str, entries: Sequence[TransformEntry]) -> dict[str, Any]:
    """Everything a cached volume depends on, as a JSON-serialisable dict.

    Args:
        reader: The :class:`~pyable_tio.GridReader` (its grid, role, interpolator, dtype and
            default value are used).
        source: SHA-256 of the source file (:func:`source_digest`).
        entries: Transforms applied to the file, in order (their contents are hashed).

    Returns:
        Format and key versions, backend, source and transforms digests, grid (x,y,z order), role,
        interpolator, dtype, default value and non-finite policy.

    Example:
        >>> key_inputs(reader, source_digest('t2.nii.gz', folder), ())['interpolator']  # doctest: +SKIP
        'linear'
    """
    role = reader.role
    is_image = role == backend.ROLE_IMAGE
    return {
        'format': CACHE_FORMAT_VERSION,
        # Same files and transforms, another meaning (e.g. the list order): another key.
        'key_version': CACHE_KEY_VERSION,
        'backend': backend.active_backend(),
        'source': source,
        'transforms': entries_digest(entries),
        # + 0.0 turns -0.0 (common in direction cosines) into 0.0: same grid, same key.
        'grid': {name: [v + 0.0 for v in values] for name, values in reader.grid.to_dict().items()},
        'role': role,
        # Labels are nearest-neighbour in their own type whatever the image options say.
        'interpolator': backend.interpolator_for(role, reader.interpolator),
        'dtype': str(np.dtype(reader.dtype)) if is_image else 'native',
        'default_value': float(reader.default_value),
        # "zero" and "keep" give different arrays from one file with NaN/Inf voxels.
        'nonfinite': getattr(reader, 'nonfinite', DEFAULT_NONFINITE),
    }


def source_digest(path: str | os.PathLike, memo_folder: Path | None = None) -> str:
    """SHA-256 of a file's bytes, remembered per (path, size, mtime, ctime, inode).

    The stat signature is re-read on every call, so any rewrite, copy or ``touch`` of the
    file hashes it again. The memo lives in this process and, when ``memo_folder`` is given,
    on disk: forked DataLoader workers start each epoch with an empty memory, and the disk
    memo spares them re-hashing every source file.

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
    memo = memo_folder / f'{digest_of(list(signature))}.txt'
    try:
        digest = memo.read_text().strip()
    except OSError:
        digest = ''
    if len(digest) == 64:
        remember_digest(signature, digest)
        return digest
    digest = file_digest(path, signature)
    try:
        atomic_write(memo, lambda stream: stream.write(digest.encode()))
    except OSError:
        pass  # a read-only cache still works, it just hashes again
    return digest
