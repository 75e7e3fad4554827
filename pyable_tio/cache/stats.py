"""What a cache folder holds and what a process did with it: ``CacheStats``, owned files, disk usage."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from ..constants import (
    CACHE_BLOB_FOLDERS,
    CACHE_ARRAY_SUFFIX,
    CACHE_SIDECAR_SUFFIX,
    CACHE_SOURCES_FOLDER,
    CACHE_TEMP_SUFFIX,
)

#: Entry folders: the first two hex digits of the key.
KEY_FOLDERS = '[0-9a-f][0-9a-f]'


@dataclass(frozen=True)
class CacheStats:
    """Size of a cache folder and what this process did with it.

    Attributes:
        entries: Valid-looking entries on disk (array and sidecar both present).
        bytes: Bytes used by every file in the folder (entries, sidecars, temporaries).
        hits: Entries served from disk by this process.
        misses: Entries computed by this process (absent, stale key or corrupt).
        writes: Entries written by this process.
        recovered: Corrupt or incomplete entries this process discarded and recomputed.
        evicted: Entries this process removed to stay under ``max_bytes``.
        failed_writes: Entries this process could not write (read-only folder, full disk,
            file size limit, an unremovable damaged entry); they were served from memory.

    Example:
        >>> stats = VolumeCache('/tmp/pyable-cache').stats()  # doctest: +SKIP
        >>> f'{stats.hits} hits, {stats.misses} misses, {stats.bytes / 2**30:.1f} GiB'  # doctest: +SKIP
        '24 hits, 0 misses, 1.2 GiB'
    """

    entries: int
    bytes: int
    hits: int
    misses: int
    writes: int
    recovered: int
    evicted: int
    failed_writes: int = 0

    def as_dict(self) -> dict[str, int]:
        """The statistics as a plain dictionary (JSON-serialisable)."""
        return asdict(self)


def owned_files(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Files a cache folder owns (entries, temporaries, source digests, alignments), never anything else."""
    folders = [*root.glob(KEY_FOLDERS), root / CACHE_SOURCES_FOLDER, *(root / name for name in CACHE_BLOB_FOLDERS)]
    for folder in folders:
        try:
            children = list(os.scandir(folder))
        except OSError:
            continue
        for child in children:
            name = child.name
            owned = name.endswith((CACHE_ARRAY_SUFFIX, CACHE_SIDECAR_SUFFIX, CACHE_TEMP_SUFFIX, '.txt', '.tfm'))
            try:
                if owned and child.is_file(follow_symlinks=False):
                    yield Path(child.path), child.stat(follow_symlinks=False)
            except OSError:
                continue  # removed by another process meanwhile


def disk_bytes(stat: os.stat_result) -> int:
    """What a file takes on disk: its allocated blocks (a 64-byte file takes 4 KiB), at least its size."""
    return max(stat.st_size, getattr(stat, 'st_blocks', 0) * 512)


def warn_line(message: str) -> None:
    """One clean line (``pyable-tio:0: RuntimeWarning: ...``), without a Python source line."""
    warnings.warn_explicit(message, RuntimeWarning, 'pyable-tio', 0, module='pyable_tio.cache', registry={})
