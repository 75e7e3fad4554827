"""One cache entry on disk: ``<key>.npy`` (uncompressed array) + ``<key>.json`` (sidecar).

The array is written first and the sidecar last, each to a temporary file in the same
folder renamed into place (``os.replace`` is atomic on one file system), so an entry is
valid only when both files exist and agree. Nothing is pickled: arrays are written and read
with ``allow_pickle=False``, metadata is JSON.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no cross-process lock (see docs/CACHE_AND_CLI.md)
    fcntl = None

import numpy as np

from ..atomic import atomic_write, temporary_path as _temporary
from ..constants import CACHE_FORMAT_VERSION

# Arrays whose checksum this process already verified: (path, size, mtime_ns, inode).
_verified: set[tuple[str, int, int, int]] = set()


class CacheCorruption(Exception):
    """An entry on disk is incomplete or does not match its sidecar."""


def write_entry(
    array_path: Path,
    sidecar_path: Path,
    array: np.ndarray,
    record: dict[str, Any],
    lock: Path | None = None,
) -> int:
    """Write ``array`` and its sidecar to temporary files, then rename both into place.

    The renames (array first, sidecar last) happen under ``lock`` so that they never
    interleave with another process removing the same entry (:func:`folder_lock`).

    Args:
        array_path: Destination ``.npy``.
        sidecar_path: Destination ``.json``.
        array: C-contiguous numeric array.
        record: Extra sidecar fields (key, inputs, grid, source).
        lock: Lock file of the cache folder (None: no lock).

    Returns:
        The bytes written (array and sidecar).

    Raises:
        TypeError: for object arrays. OSError: when the folder is not writable or full.

    Example:
        >>> write_entry(Path('ab/ab12.npy'), Path('ab/ab12.json'), np.zeros((1, 2, 2, 2)), {})  # doctest: +SKIP
    """
    array = np.ascontiguousarray(array)
    if array.dtype.hasobject:
        raise TypeError('the volume cache stores numeric arrays only')
    array_path.parent.mkdir(parents=True, exist_ok=True)
    array_temporary, sidecar_temporary = _temporary(array_path), _temporary(sidecar_path)
    try:
        with array_temporary.open('wb') as stream:
            np.lib.format.write_array(stream, array, allow_pickle=False)
        size = array_temporary.stat().st_size
        # Stamp the array with an mtime at least a second in the past: any later write to it
        # gets a newer mtime, so a reader that finds this exact stamp (and inode) knows the
        # bytes are the ones checksummed here and may skip re-reading them for the CRC.
        stamp = (time.time_ns() // 10**9 - 1) * 10**9
        os.utime(array_temporary, ns=(stamp, stamp))
        sidecar = {
            **record,
            'format': CACHE_FORMAT_VERSION,
            'shape': list(array.shape),
            'dtype': array.dtype.str,
            'file_bytes': size,
            'crc32': crc32(array),
            'array_stamp': [stamp, array_temporary.stat().st_ino],
            'created': time.time(),
        }
        payload = json.dumps(sidecar, indent=1, sort_keys=True).encode()
        sidecar_temporary.write_bytes(payload)
        with folder_lock(lock):
            os.replace(array_temporary, array_path)
            os.replace(sidecar_temporary, sidecar_path)
    finally:
        array_temporary.unlink(missing_ok=True)
        sidecar_temporary.unlink(missing_ok=True)
    return size + len(payload)


@contextmanager
def folder_lock(lock: Path | None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock`` (POSIX); a no-op without ``fcntl`` or rights.

    Publishing an entry (two renames) and removing one (two unlinks) take this lock, so a
    concurrent eviction can never leave a sidecar without its array. Reads never lock.

    Example:
        >>> with folder_lock(Path('/tmp/pyable-cache/.lock')):  # doctest: +SKIP
        ...     pass
    """
    descriptor = None
    if lock is not None and fcntl is not None:
        try:
            descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        except OSError:
            if descriptor is not None:
                os.close(descriptor)
            descriptor = None  # read-only folder: nothing to publish or remove anyway
    try:
        yield
    finally:
        if descriptor is not None:
            os.close(descriptor)  # closing releases the lock


def read_entry(array_path: Path, sidecar_text: str | bytes, checksum: str = 'once') -> np.ndarray:
    """The entry's array, memory-mapped copy-on-write, after checking it against its sidecar.

    Args:
        array_path: The ``.npy``.
        sidecar_text: The sidecar's JSON text (UTF-8 bytes or str).
        checksum: ``"once"`` checks the CRC-32 the first time this process opens this file
            version, unless the file still carries the mtime stamp and inode recorded when it
            was written (any later write changes the mtime); ``"always"`` every time;
            ``"never"`` only sizes, shape and dtype.

    Raises:
        CacheCorruption: sidecar unreadable, array missing, truncated, of another shape or
            dtype, not a plain ``.npy``, or with another checksum.

    Example:
        >>> array = read_entry(Path('ab/ab12.npy'), Path('ab/ab12.json').read_bytes())  # doctest: +SKIP
        >>> array.flags.writeable, array.filename is not None  # doctest: +SKIP
        (True, True)
    """
    name = array_path.name
    try:
        sidecar = json.loads(sidecar_text)
        expected_bytes = int(sidecar['file_bytes'])
        shape = tuple(int(n) for n in sidecar['shape'])
        dtype = np.dtype(str(sidecar['dtype']))
        expected_crc = int(sidecar['crc32'])
        if int(sidecar['format']) != CACHE_FORMAT_VERSION:
            raise ValueError(f'format {sidecar["format"]}, expected {CACHE_FORMAT_VERSION}')
    except (ValueError, KeyError, TypeError) as error:
        raise CacheCorruption(f'unreadable sidecar of {name}: {error}') from None
    try:
        stat = array_path.stat()
    except FileNotFoundError:
        raise CacheCorruption(f'entry {name}: array file missing') from None
    if stat.st_size != expected_bytes:
        problem = f'truncated or overwritten ({stat.st_size} bytes, expected {expected_bytes})'
        raise CacheCorruption(f'entry {name}: {problem}')
    try:
        # 'c': writable for torch.from_numpy (no read-only warning); edits stay in memory.
        array = np.load(array_path, mmap_mode='c', allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise CacheCorruption(f'entry {name}: unreadable array: {error}') from None
    if array.shape != shape or array.dtype != dtype:
        raise CacheCorruption(f'entry {name}: array is {array.shape} {array.dtype}, sidecar says {shape} {dtype}')
    signature = (str(array_path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if checksum == 'once' and sidecar.get('array_stamp') == [stat.st_mtime_ns, stat.st_ino]:
        _verified.add(signature)  # untouched since it was written and checksummed
    if checksum == 'always' or (checksum == 'once' and signature not in _verified):
        if crc32(array) != expected_crc:
            raise CacheCorruption(f'entry {name}: checksum mismatch (corrupt bytes)')
        _verified.add(signature)
    return array


def crc32(array: np.ndarray) -> int:
    """CRC-32 of an array's bytes (about 3 GB/s: cheap next to reading them).

    Example:
        >>> crc32(np.zeros(4, np.uint8))
        558161692
    """
    return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast('B'))
