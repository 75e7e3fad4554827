"""``VolumeCache``: the on-disk cache of resampled volumes, keyed by everything they depend on."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from stat import S_ISREG
from typing import Any

import numpy as np

from ..io.identity import stat_identity
from ..constants import (
    CACHE_ARRAY_SUFFIX,
    CACHE_LOCKS_FOLDER,
    CACHE_SIDECAR_SUFFIX,
    CACHE_SOURCES_FOLDER,
    SOURCE_READ_TRIES,
)
from .blobs import BlobStore
from .digest import SourceChanged, digest_of, file_digest, identity_now, source_identity
from .entry import (
    STALE_TEMP_SECONDS,
    CacheCorruption,
    folder_lock,
    read_entry,
    sweep_temporaries,
    write_entry,
)
from .stats import CacheStats, warn_line
from .upkeep import CacheUpkeep

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
# Damaged entries that could not be removed, with the stat of their files then: once either
# file changes (removed or fixed by someone else), the entry is tried again.
_UNREMOVABLE: dict[str, tuple[Any, ...]] = {}


def _file_states(*paths: Path) -> tuple[Any, ...]:
    states = []
    for path in paths:
        try:
            states.append(stat_identity(path.stat()))
        except OSError:
            states.append(None)
    return tuple(states)


def _still_unremovable(array_path: Path, sidecar_path: Path) -> bool:
    """Whether this damaged entry was found unremovable and its files are unchanged since."""
    known = _UNREMOVABLE.get(str(array_path))
    if known is None:
        return False
    if known == _file_states(array_path, sidecar_path):
        return True
    _UNREMOVABLE.pop(str(array_path), None)
    return False


class VolumeCache(CacheUpkeep, BlobStore):
    """Content-addressed disk store of arrays (resampled volumes, preprocessed volumes,
    statistics) and small files, the bottom layer under :class:`~pyable_tio.reader.GridReader`.

    It knows keys, bytes, files, locks, checksums and eviction, never plans or readers: the
    owner of an entry builds its key's inputs (a volume's cover the source file's content, the
    grid, the transforms' contents, role, interpolator, dtype, default value, the backend and
    :data:`~pyable_tio.constants.CACHE_FORMAT_VERSION`, see
    :meth:`~pyable_tio.plan.PlanEntry.cache_inputs`), and :meth:`compute_once` stores a result
    only when the files it was read from kept their identity meanwhile. Hits
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

    def source_digest(self, path: str | os.PathLike) -> str:
        """SHA-256 of a source file, memoised in ``<folder>/sources/`` (:func:`~pyable_tio.cache.digest.file_digest`).

        Example:
            >>> VolumeCache('/tmp/pyable-cache').source_digest('t1.nii.gz')  # doctest: +SKIP
            '9f86d081884c7d65...'
        """
        return file_digest(path, self.folder / CACHE_SOURCES_FOLDER)

    def paths(self, key: str) -> tuple[Path, Path]:
        """The ``.npy`` and sidecar paths of an entry."""
        folder = self.folder / key[:2]
        return folder / f'{key}{CACHE_ARRAY_SUFFIX}', folder / f'{key}{CACHE_SIDECAR_SUFFIX}'

    # ------------------------------------------------------------- get / put

    def compute_once(
        self,
        inputs: Callable[[], dict[str, Any]],
        compute: Callable[[], np.ndarray],
        files: Sequence[str | os.PathLike] = (),
        grid: dict[str, Any] | None = None,
    ) -> np.ndarray:
        """The entry keyed by ``inputs()``, computing and storing it on a miss.

        The owner (the plan entry of a volume, a statistic...) says what the array depends on;
        the cache knows only the key (SHA-256 of ``inputs()``), the bytes and the files. The
        files' identity (:func:`~pyable_tio.cache.digest.source_identity`) is taken before
        ``inputs()`` and again after ``compute()``: a file replaced meanwhile (an rsync during a
        fill) would store one version's array under another's key, so the array is not stored
        and everything is done again.

        Args:
            inputs: Builds the key's inputs (JSON-serialisable; recorded in the sidecar).
                Raising ``OSError`` (a file vanished) computes without the cache.
            compute: Called on a miss; returns the array to store.
            files: The files ``inputs`` and ``compute`` read; the first is recorded as the source.
            grid: Geometry of the array, recorded in the sidecar.

        Returns:
            The array; a copy-on-write memory map on a hit, ``compute()``'s array on a miss.

        Raises:
            SourceChanged: the files changed during each of
                :data:`~pyable_tio.constants.SOURCE_READ_TRIES` computations.

        Example:
            >>> array = cache.compute_once(lambda: entry.cache_inputs(grid, cache.source_digest),
            ...                            lambda: reader.read_entry(entry), entry.files())  # doctest: +SKIP
        """
        files = tuple(os.fspath(f) for f in files)
        for _ in range(SOURCE_READ_TRIES):
            try:
                before = source_identity(files)
                key_inputs = inputs()
            except OSError:
                return compute()  # a file vanished: the owner's compute raises the proper error
            key = digest_of(key_inputs)
            array = self.get(key)
            if array is not None:
                self._count('hits', 1)
                return array
            self._count('misses', 1)
            try:
                array = np.ascontiguousarray(compute())
            except SourceChanged:
                continue  # seen by a nested step (preprocessing): nothing was stored
            after = identity_now(files)
            if after == before:
                # One identity per file, in order: the source's is the first (no second listing).
                self.put(key, array, key_inputs, source=files[0] if files else None, grid=grid,
                         source_identity=after[:1] if files else None)
                return array
        raise SourceChanged(
            f'{files[0] if files else "a file"} (or its transforms or masks) changed while it was read,'
            f' {SOURCE_READ_TRIES} times in a row; is it being written right now?'
        )

    @contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """Hold a lock named ``name`` across processes (e.g. to compute several entries once).

        Example:
            >>> with cache.exclusive(key):  # doctest: +SKIP
            ...     outputs = cached(keys) or compute_and_put(keys)
        """
        lock: Path | None = self.folder / CACHE_LOCKS_FOLDER / f'{name}.lock'
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            lock = None  # a read-only cache: nothing is written, so nothing to serialise
        with folder_lock(lock):
            yield

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
        source_identity: tuple[Any, ...] | None = None,
    ) -> None:
        """Store ``array`` under ``key`` atomically (array first, sidecar last).

        Args:
            key: Entry name, from :meth:`key`.
            array: Array to store (any non-object dtype).
            inputs: The key's inputs, recorded in the sidecar.
            source: Source file, recorded for humans.
            grid: Geometry of the array (x,y,z order), recorded in the sidecar.
            source_identity: The identity ``source`` had when it was read; ``check`` rehashes a
                source that still has it and compares with the key's ``inputs["source"]``.
        """
        array_path, sidecar_path = self.paths(key)
        if _still_unremovable(array_path, sidecar_path):
            self._write_failed(array_path, 'a damaged entry is in the way and cannot be removed', warn=False)
            return
        sweep_temporaries(array_path.parent)  # left by killed writers of this folder
        record = {
            'key': key,
            'grid': grid,
            'source': None if source is None else os.fspath(source),
            'inputs': inputs,
        }
        if source_identity is not None:
            record['source_identity'] = source_identity
        try:
            write_entry(array_path, sidecar_path, array, record, lock=self._lock)
        except OSError as error:
            # A full disk or read-only folder must not stop training: serve from memory.
            self._write_failed(array_path, str(error))
            return
        self._count('writes', 1)
        if self.max_bytes is not None:
            self.evict(self.max_bytes)

    @property
    def counts(self) -> dict[str, int]:
        """This process's hits, misses, writes, recovered and evicted, without scanning the folder."""
        return dict(self._counts)

    # -------------------------------------------------------------- helpers

    def _discard(self, key: str, problem: str, remove: bool = True) -> None:
        array_path, sidecar_path = self.paths(key)
        if _still_unremovable(array_path, sidecar_path):
            return  # already reported in this process; the volume is served from memory
        self._count('recovered', 1)
        action = 'discarding and recomputing it'
        if remove:
            try:
                self.remove(key)
            except OSError as error:  # a read-only folder, or a directory in the way
                _UNREMOVABLE[str(array_path)] = _file_states(array_path, sidecar_path)
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
