"""Upkeep of a cache folder: listing, full checks, LRU eviction, removal, statistics, sweeping."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from ..constants import (
    CACHE_ARRAY_SUFFIX,
    CACHE_BLOB_FOLDERS,
    CACHE_SIDECAR_SUFFIX,
    CACHE_SOURCES_FOLDER,
    CACHE_TEMP_SUFFIX,
)
from .digest import check_memo
from .entry import (
    CacheCorruption,
    content_problem,
    folder_lock,
    parse_sidecar,
    read_entry,
    stale_temporary,
    sweep_temporaries,
)
from .stats import KEY_FOLDERS, CacheStats, disk_bytes, owned_files


class CacheUpkeep:
    """The upkeep methods of :class:`~pyable_tio.cache.VolumeCache` (needs its folder, limits,
    paths, lock and counters)."""

    folder: Path
    max_bytes: int | None
    _counts: dict[str, int]
    def entries(self) -> Iterator[tuple[str, Path, Path]]:
        """Yield ``(key, array_path, sidecar_path)`` of every entry with both files present."""
        for array_path in sorted(self.folder.glob(f'{KEY_FOLDERS}/*{CACHE_ARRAY_SUFFIX}')):
            sidecar_path = array_path.with_suffix(CACHE_SIDECAR_SUFFIX)
            if sidecar_path.exists():
                yield array_path.stem, array_path, sidecar_path

    def check(self, key: str) -> str | None:
        """Fully verify one entry; the problem, or None if valid.

        Checks sizes, header and checksum, that the recorded inputs give the key, and that a
        source still in the version it was read in still has the content the key names
        (:func:`~pyable_tio.cache.entry.content_problem`; this hashes it).
        """
        array_path, sidecar_path = self.paths(key)
        try:
            text = sidecar_path.read_bytes()
            array = read_entry(array_path, text, checksum='always', key=key)
        except (OSError, CacheCorruption) as error:
            return str(error)
        del array
        return content_problem(key, parse_sidecar(text))

    def check_sources(self) -> list[tuple[Path, str]]:
        """Verify every source-digest memo against its file; remove and return the bad or stale ones.

        Hashes every source file whose memo is current (this reads them all).

        Example:
            >>> VolumeCache('/tmp/pyable-cache').check_sources()  # doctest: +SKIP
            [(PosixPath('/tmp/pyable-cache/sources/3f....json'), 'stale (its file changed)')]
        """
        removed = []
        for memo in sorted((self.folder / CACHE_SOURCES_FOLDER).glob('*')):
            if memo.name.startswith('.') or not memo.is_file():
                continue  # temporaries are swept separately
            problem = check_memo(memo) if memo.suffix == CACHE_SIDECAR_SUFFIX else 'stale (old memo format)'
            if problem is not None:
                memo.unlink(missing_ok=True)
                removed.append((memo, problem))
        return removed

    def evict(self, max_bytes: int | None = None) -> int:
        """Remove least-recently-used entries until the folder holds at most ``max_bytes``.

        Sizes are what the files take on disk (allocated blocks), so many small files count
        for what they really cost. Also removes temporary files whose writer is gone
        (:func:`~pyable_tio.cache.entry.stale_temporary`). Returns the number of entries removed.
        """
        limit = self.max_bytes if max_bytes is None else int(max_bytes)
        now = time.time()
        total, candidates = 0, []
        for path, stat in self._files():
            if path.name.endswith(CACHE_TEMP_SUFFIX) and stale_temporary(path, stat.st_mtime, now):
                path.unlink(missing_ok=True)
                continue
            total += disk_bytes(stat)
            if path.suffix == CACHE_SIDECAR_SUFFIX and path.parent.name != CACHE_SOURCES_FOLDER:
                try:
                    size = disk_bytes(stat) + disk_bytes(path.with_suffix(CACHE_ARRAY_SUFFIX).stat())
                except OSError:
                    size = disk_bytes(stat)  # array gone meanwhile (another process evicting)
                candidates.append((stat.st_mtime, size, path.stem))
        removed = 0
        if limit is None or total <= limit:
            return removed
        for _, size, key in sorted(candidates):
            try:
                self.remove(key)
            except OSError as error:  # e.g. mapped by another process on Windows
                warnings.warn(f'pyable-tio cache: cannot evict {key}: {error}', RuntimeWarning, stacklevel=2)
                continue
            removed += 1
            total -= size
            if total <= limit:
                break
        self._count('evicted', removed)
        return removed

    def remove(self, key: str) -> None:
        """Delete an entry (sidecar first, so it stops being valid before its array goes)."""
        array_path, sidecar_path = self.paths(key)
        with folder_lock(self._lock):
            sidecar_path.unlink(missing_ok=True)
            array_path.unlink(missing_ok=True)

    def clear(self) -> None:
        """Delete every entry, temporary file, source digest and alignment ``.tfm`` (only files the cache owns)."""
        for path, _ in self._files():
            path.unlink(missing_ok=True)
        for folder in [*self.folder.glob(KEY_FOLDERS), self.folder / CACHE_SOURCES_FOLDER,
                       *(self.folder / name for name in CACHE_BLOB_FOLDERS)]:
            try:
                folder.rmdir()
            except OSError:
                pass  # not empty (someone else's file) or already gone

    def stats(self) -> CacheStats:
        """Entries and bytes on disk now, and this process's hits, misses, writes, ...

        Example:
            >>> VolumeCache('/tmp/empty-cache').stats().entries  # doctest: +SKIP
            0
        """
        total = sum(disk_bytes(stat) for _, stat in self._files())
        return CacheStats(entries=sum(1 for _ in self.entries()), bytes=total, **self._counts)

    def _files(self) -> Iterator[tuple[Path, os.stat_result]]:
        return owned_files(self.folder)

    def sweep_temporaries(self) -> list[tuple[Path, str]]:
        """Remove temporary files whose writer is gone; returns them with the reason.

        Run when the cache is opened and, per entry folder, before each write.

        Example:
            >>> VolumeCache('/tmp/pyable-cache').sweep_temporaries()  # doctest: +SKIP
            []
        """
        removed = []
        for folder in [*self.folder.glob(KEY_FOLDERS), self.folder / CACHE_SOURCES_FOLDER]:
            removed += sweep_temporaries(folder)
        return removed
