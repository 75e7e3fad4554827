"""``VolumeCache``: the on-disk cache of resampled volumes, keyed by everything they depend on."""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from stat import S_ISREG
from typing import TYPE_CHECKING, Any

import numpy as np

from ..constants import ALIGNMENT_FOLDER, CACHE_ARRAY_SUFFIX, CACHE_SIDECAR_SUFFIX, CACHE_SOURCES_FOLDER, CACHE_TEMP_SUFFIX
from .digest import digest_of
from .entry import (
    STALE_TEMP_SECONDS,
    CacheCorruption,
    folder_lock,
    read_entry,
    stale_temporary,
    sweep_temporaries,
    write_entry,
)
from .keys import check_memo, key_inputs, source_digest
from .stats import KEY_FOLDERS, CacheStats, disk_bytes, owned_files, warn_line

if TYPE_CHECKING:  # the plan imports the preprocessing steps, which import the cache
    from ..geometry.grid import Grid
    from ..plan import PlanEntry

__all__ = ['STALE_TEMP_SECONDS', 'CacheStats', 'VolumeCache']

#: An array younger than this (seconds) without its sidecar is probably being written now.
_IN_FLIGHT_SECONDS = 30.0
#: A hit refreshes the entry's last-use time at most this often (seconds).
_TOUCH_INTERVAL = 60.0

#: Lock file taken to publish or remove an entry (never to read one).
_LOCK_NAME = '.lock'


_COUNTS_LOCK = threading.Lock()
# What this process already warned about (warnings are once per process, not once per load):
# cache folders whose writes failed, and entries that are damaged and cannot be removed.
_WRITE_FAILURES_REPORTED: set[str] = set()
_UNREMOVABLE: set[str] = set()


class VolumeCache:
    """Disk cache of resampled volumes for :class:`pyable_tio.GridReader`.

    The key of an entry covers the source file's content (SHA-256, remembered per
    size+mtime+ctime+inode and re-validated on every call), the reference grid, the
    transforms' contents, role, interpolator, dtype, default value, the backend and
    :data:`~pyable_tio.constants.CACHE_FORMAT_VERSION`; changing any of them misses. Hits
    are returned memory-mapped copy-on-write (``np.load(mmap_mode='c')``): writable for
    ``torch.from_numpy``, nothing read before it is used, and edits never reach the file.

    The object holds only its settings and counters, so it pickles into DataLoader workers;
    counters restart at zero in each process that unpickles it. ``copy.deepcopy`` returns the
    object itself (TorchIO deep-copies subjects, and their readers, before loading them).

    Args:
        cache_dir: Folder of the cache (created if missing).
        max_bytes: Optional size limit of the folder; least-recently-used entries are
            evicted after each write to stay under it.
        verify: ``"checksum"`` (default) checks the CRC-32 of an entry's bytes the first
            time a process opens it, then only its size; ``"size"`` checks sizes only.

    Example:
        >>> cache = VolumeCache('/tmp/pyable-cache', max_bytes=20 * 2**30)  # doctest: +SKIP
        >>> subjects = subjects_from_manifest('manifest.json', cache_dir=cache)  # doctest: +SKIP
        >>> for subject in subjects: subject.load()  # doctest: +SKIP
        >>> cache.stats().as_dict()  # doctest: +SKIP
        {'entries': 12, 'bytes': 503316480, 'hits': 0, 'misses': 12, 'writes': 12, ...}
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        max_bytes: int | None = None,
        verify: str = 'checksum',
    ) -> None:
        if max_bytes is not None and (isinstance(max_bytes, bool) or int(max_bytes) <= 0):
            raise ValueError(f'max_bytes must be a positive number of bytes or None, got {max_bytes!r}')
        if verify not in ('checksum', 'size'):
            raise ValueError(f'verify must be "checksum" or "size", got {verify!r}')
        self.folder = Path(cache_dir).expanduser().absolute()
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        self.verify = verify
        self.folder.mkdir(parents=True, exist_ok=True)
        self._reset_counters()
        #: Temporary files of writers that are gone, removed when this object was made.
        self.swept_on_open = self.sweep_temporaries()

    def __repr__(self) -> str:
        return f'VolumeCache({str(self.folder)!r}, max_bytes={self.max_bytes!r}, verify={self.verify!r})'

    def __getstate__(self) -> dict[str, Any]:
        return {'folder': self.folder, 'max_bytes': self.max_bytes, 'verify': self.verify}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_counters()
        self.swept_on_open = []

    def __copy__(self) -> VolumeCache:
        return self

    def __deepcopy__(self, memo: dict) -> VolumeCache:
        # A handle on a folder: TorchIO deep-copies subjects (and their readers) before
        # loading them, and the copies must count into this process's statistics.
        return self

    @property
    def _lock(self) -> Path:
        return self.folder / _LOCK_NAME

    @property
    def _checksum(self) -> str:
        return 'once' if self.verify == 'checksum' else 'never'

    def _count(self, name: str, amount: int = 1) -> None:
        # PatchQueue's threads share one cache; a lock keeps the counters exact.
        with _COUNTS_LOCK:
            self._counts[name] += amount

    def _reset_counters(self) -> None:
        self._counts = {'hits': 0, 'misses': 0, 'writes': 0, 'recovered': 0, 'evicted': 0, 'failed_writes': 0}
        self.last_write_error: str | None = None

    # ------------------------------------------------------------------ keys

    def key_inputs(self, entry: PlanEntry, grid: Grid) -> dict[str, Any]:
        """Everything the volume of ``entry`` on ``grid`` depends on (see :func:`keys.key_inputs`)."""
        return key_inputs(entry, grid, self.source_digest(entry.source))

    def key(self, entry: PlanEntry, grid: Grid) -> str:
        """The entry name (SHA-256 hex of :meth:`key_inputs`)."""
        return digest_of(self.key_inputs(entry, grid))

    def source_digest(self, path: str | os.PathLike) -> str:
        """SHA-256 of a source file, memoised in ``<folder>/sources/`` (:func:`keys.source_digest`)."""
        return source_digest(path, self.folder / CACHE_SOURCES_FOLDER)

    def paths(self, key: str) -> tuple[Path, Path]:
        """The ``.npy`` and sidecar paths of an entry."""
        folder = self.folder / key[:2]
        return folder / f'{key}{CACHE_ARRAY_SUFFIX}', folder / f'{key}{CACHE_SIDECAR_SUFFIX}'

    # ------------------------------------------------------------- get / put

    def get_or_compute(self, entry: PlanEntry, grid: Grid, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached volume of ``entry`` on ``grid``, computing it on a miss.

        The cache's whole interface to readers: data for the key, a function for the array.

        Args:
            entry: The file's :class:`~pyable_tio.plan.PlanEntry` (source, transforms, options).
            grid: The grid it is resampled onto.
            compute: Called on a miss; returns the C x D x H x W (Z,Y,X) array to store.

        Returns:
            The array; a copy-on-write memory map on a hit, ``compute()``'s array on a miss.

        Example:
            >>> array = cache.get_or_compute(entry, grid, lambda: reader.read_entry(entry))  # doctest: +SKIP
        """
        try:
            inputs = self.key_inputs(entry, grid)
        except OSError:
            # A source or transform file vanished: the reader raises the proper LoadError.
            return compute()
        key = digest_of(inputs)
        array = self.get(key)
        if array is not None:
            self._count('hits', 1)
            return array
        self._count('misses', 1)
        array = np.ascontiguousarray(compute())
        self.put(key, array, inputs, source=entry.source, grid=grid.to_dict())
        return array

    def get(self, key: str) -> np.ndarray | None:
        """The entry ``key`` (copy-on-write memory map), or None when absent.

        A corrupt or incomplete entry is removed with a warning and None is returned.
        """
        array_path, sidecar_path = self.paths(key)
        try:
            text = sidecar_path.read_bytes()
        except FileNotFoundError:
            # An array without its sidecar: a writer died, or another process is writing it
            # right now. Either way it is a miss; the rewrite replaces both files.
            try:
                status = array_path.stat()  # one stat: a concurrent eviction is a plain miss
            except OSError:
                return None
            age = time.time() - status.st_mtime
            if not S_ISREG(status.st_mode):
                self._discard(key, f'entry {array_path.name}: not a file')
            elif age > _IN_FLIGHT_SECONDS:
                self._discard(key, f'entry {array_path.name} has no sidecar (interrupted write)', remove=False)
            return None
        except OSError as error:
            self._discard(key, f'unreadable sidecar {sidecar_path}: {error}')
            return None
        try:
            array = read_entry(array_path, text, self._checksum, key)
        except CacheCorruption:
            # Another process may have replaced or evicted the entry between our two reads.
            try:
                array = read_entry(array_path, sidecar_path.read_bytes(), self._checksum, key)
            except FileNotFoundError:
                return None  # its sidecar is gone: removed by another process, a plain miss
            except (OSError, CacheCorruption) as error:
                self._discard(key, str(error))
                return None
        self._touch(sidecar_path)
        return array

    def put(
        self,
        key: str,
        array: np.ndarray,
        inputs: dict[str, Any],
        source: str | os.PathLike | None = None,
        grid: dict[str, Any] | None = None,
    ) -> None:
        """Store ``array`` under ``key`` atomically (array first, sidecar last).

        Args:
            key: Entry name, from :meth:`key`.
            array: Array to store (any non-object dtype).
            inputs: The key's inputs, recorded in the sidecar.
            source: Source file, recorded for humans.
            grid: Geometry of the array (x,y,z order), recorded in the sidecar.
        """
        array_path, sidecar_path = self.paths(key)
        if str(array_path) in _UNREMOVABLE:
            self._write_failed(array_path, 'a damaged entry is in the way and cannot be removed', warn=False)
            return
        sweep_temporaries(array_path.parent)  # left by killed writers of this folder
        record = {
            'key': key,
            'grid': grid,
            'source': None if source is None else os.fspath(source),
            'inputs': inputs,
        }
        try:
            write_entry(array_path, sidecar_path, array, record, lock=self._lock)
        except OSError as error:
            # A full disk or read-only folder must not stop training: serve from memory.
            self._write_failed(array_path, str(error))
            return
        self._count('writes', 1)
        if self.max_bytes is not None:
            self.evict(self.max_bytes)

    # --------------------------------------------------------------- upkeep

    def entries(self) -> Iterator[tuple[str, Path, Path]]:
        """Yield ``(key, array_path, sidecar_path)`` of every entry with both files present."""
        for array_path in sorted(self.folder.glob(f'{KEY_FOLDERS}/*{CACHE_ARRAY_SUFFIX}')):
            sidecar_path = array_path.with_suffix(CACHE_SIDECAR_SUFFIX)
            if sidecar_path.exists():
                yield array_path.stem, array_path, sidecar_path

    def check(self, key: str) -> str | None:
        """Fully verify one entry (sizes, header and checksum); the problem, or None if valid."""
        array_path, sidecar_path = self.paths(key)
        try:
            text = sidecar_path.read_bytes()
            array = read_entry(array_path, text, checksum='always', key=key)
        except (OSError, CacheCorruption) as error:
            return str(error)
        del array
        return None

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
        for folder in [*self.folder.glob(KEY_FOLDERS), self.folder / CACHE_SOURCES_FOLDER, self.folder / ALIGNMENT_FOLDER]:
            try:
                folder.rmdir()
            except OSError:
                pass  # not empty (someone else's file) or already gone

    @property
    def counts(self) -> dict[str, int]:
        """This process's hits, misses, writes, recovered and evicted, without scanning the folder."""
        return dict(self._counts)

    def stats(self) -> CacheStats:
        """Entries and bytes on disk now, and this process's hits, misses, writes, ...

        Example:
            >>> VolumeCache('/tmp/empty-cache').stats().entries  # doctest: +SKIP
            0
        """
        total = sum(disk_bytes(stat) for _, stat in self._files())
        return CacheStats(entries=sum(1 for _ in self.entries()), bytes=total, **self._counts)

    # -------------------------------------------------------------- helpers

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

    def _discard(self, key: str, problem: str, remove: bool = True) -> None:
        array_path = self.paths(key)[0]
        if str(array_path) in _UNREMOVABLE:
            return  # already reported in this process; the volume is served from memory
        self._count('recovered', 1)
        action = 'discarding and recomputing it'
        if remove:
            try:
                self.remove(key)
            except OSError as error:  # a read-only folder, or a directory in the way
                _UNREMOVABLE.add(str(array_path))
                action = f'it cannot be removed ({error}), so it is recomputed on every load (reported once)'
        warn_line(f'pyable-tio cache: {problem}; {action}')

    def _write_failed(self, array_path: Path, error: str, warn: bool = True) -> None:
        self._count('failed_writes', 1)
        self.last_write_error = f'cannot write {array_path}: {error}'
        if warn and str(self.folder) not in _WRITE_FAILURES_REPORTED:
            _WRITE_FAILURES_REPORTED.add(str(self.folder))
            warn_line(
                f'pyable-tio cache: {self.last_write_error}; serving volumes from memory'
                ' (further write failures of this cache are counted in stats().failed_writes, not reported)'
            )

    @staticmethod
    def _touch(sidecar_path: Path) -> None:
        """Record a use for LRU eviction (throttled; a read-only cache is fine)."""
        try:
            if time.time() - sidecar_path.stat().st_mtime > _TOUCH_INTERVAL:
                os.utime(sidecar_path)
        except OSError:
            pass
