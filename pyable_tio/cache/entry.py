"""One cache entry on disk: ``<key>.npy`` (uncompressed array) + ``<key>.json`` (sidecar).

The array is written first (and flushed to disk) and the sidecar last, each to a temporary
file in the same folder renamed into place (``os.replace`` is atomic on one file system), so
an entry is valid only when both files exist and agree. The sidecar names its own key and
stamps the array file it was written with (inode, size, mtime and ctime): a reader trusts an
entry's checksum without re-reading it only while all of these still hold. Nothing is
pickled: arrays are written and read with ``allow_pickle=False``, metadata is JSON.

Temporary files are named ``.<name>.<host>.<pid>.<random>.tmp`` so that a later process can
tell that their writer is gone (:func:`stale_temporary`).
"""

from __future__ import annotations

import json
import os
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no cross-process lock (see docs/CACHE_AND_CLI.md)
    fcntl = None

import numpy as np

from ..io.atomic import HOST as _HOST
from ..io.atomic import temporary_path as _temporary
from ..io.identity import stat_identity
from ..constants import CACHE_FORMAT_VERSION, CACHE_TEMP_SUFFIX
from .digest import content_digest, digest_of, source_identity

#: A temporary file older than this (seconds) was left by a killed writer and may be removed
#: even when its writer's pid cannot be checked (another host, a reused pid).
STALE_TEMP_SECONDS = 3600.0
#: At most this many verified array versions are remembered per process (least recently used
#: forgotten first; a forgotten one is simply checksummed again).
VERIFIED_MEMO_LIMIT = 65536

#: A file version as the stamp records it: (key, size, mtime_ns, ctime_ns, inode).
ArraySignature = tuple[str, int, int, int, int]
# Per array path, the file version whose checksum this process verified (bounded LRU).
_verified: OrderedDict[str, ArraySignature] = OrderedDict()
_verified_lock = threading.Lock()


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
            stream.flush()
            # On disk before the sidecar can exist: a power cut never leaves a sidecar whose
            # stamp vouches for zeroed or missing array bytes.
            os.fsync(stream.fileno())
        size = array_temporary.stat().st_size
        # An mtime at least a second in the past: any later write to the file sets a newer one.
        stamp = (time.time_ns() // 10**9 - 1) * 10**9
        os.utime(array_temporary, ns=(stamp, stamp))
        sidecar = {
            **record,
            'format': CACHE_FORMAT_VERSION,
            'shape': list(array.shape),
            'dtype': array.dtype.str,
            'file_bytes': size,
            'crc32': crc32(array),
            'created': time.time(),
        }
        with folder_lock(lock):
            os.replace(array_temporary, array_path)
            # The stamp is taken after the rename (which sets the ctime). Writes, ``utime``,
            # ``cp -p`` and renames all change the ctime, which nobody can set back.
            stat = array_path.stat()
            sidecar['array_stamp'] = list(_signature(str(record.get('key', '')), stat))
            payload = json.dumps(sidecar, indent=1, sort_keys=True).encode()
            sidecar_temporary.write_bytes(payload)
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


def read_entry(
    array_path: Path, sidecar_text: str | bytes, checksum: str = 'once', key: str | None = None
) -> np.ndarray:
    """The entry's array, memory-mapped copy-on-write, after checking it against its sidecar.

    Args:
        array_path: The ``.npy``.
        sidecar_text: The sidecar's JSON text (UTF-8 bytes or str).
        checksum: ``"once"`` checks the CRC-32 the first time this process opens this file
            version, unless the file still carries the stamp recorded when it was written
            (key, size, mtime, ctime and inode: any later write, ``utime``, copy or rename
            changes the ctime); ``"always"`` every time; ``"never"`` only sizes, shape and dtype.
        key: The entry's key; a sidecar naming another key is refused (default: the file
            name's stem).

    Raises:
        CacheCorruption: sidecar unreadable or of another entry, array missing, truncated, of
            another shape or dtype, not a plain ``.npy``, or with another checksum.

    Example:
        >>> array = read_entry(Path('ab/ab12.npy'), Path('ab/ab12.json').read_bytes())  # doctest: +SKIP
        >>> array.flags.writeable, array.filename is not None  # doctest: +SKIP
        (True, True)
    """
    name = array_path.name
    key = array_path.stem if key is None else key
    sidecar = parse_sidecar(sidecar_text, name)
    owner, expected_bytes, expected_crc = sidecar['key'], sidecar['file_bytes'], sidecar['crc32']
    shape, dtype = tuple(sidecar['shape']), np.dtype(sidecar['dtype'])
    if owner != key:
        raise CacheCorruption(f'entry {name}: its sidecar belongs to entry {str(owner)[:16]}..., not this one')
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
    signature = _signature(key, stat)
    try:
        # The file mapped is the one whose stat was taken (the verified memo is keyed by it).
        unchanged = _signature(key, array_path.stat()) == signature
    except OSError:
        unchanged = False
    if not unchanged:
        raise CacheCorruption(f'entry {name}: replaced while it was opened')
    if checksum == 'once' and sidecar.get('array_stamp') == list(signature):
        _remember_verified(array_path, signature)  # untouched since it was written and checksummed
    if checksum == 'always' or (checksum == 'once' and not _is_verified(array_path, signature)):
        if crc32(array) != expected_crc:
            raise CacheCorruption(f'entry {name}: checksum mismatch (corrupt bytes)')
        _remember_verified(array_path, signature)
    return array


def parse_sidecar(text: str | bytes, name: str = 'entry') -> dict[str, Any]:
    """A sidecar's fields, each checked for type and range: any damage is :class:`CacheCorruption`.

    Whatever JSON the file holds (``1e999`` where a count belongs, lists nested 100,000 deep,
    a string instead of an object), the answer is a readable sidecar or ``CacheCorruption``,
    never another exception.

    Example:
        >>> parse_sidecar('{"crc32": 1e999}', 'ab12.npy')
        Traceback (most recent call last):
        ...
        pyable_tio.cache.entry.CacheCorruption: unreadable sidecar of ab12.npy: "key" is missing or not a string
    """
    try:
        sidecar = json.loads(text)
    except (ValueError, RecursionError) as error:  # RecursionError: JSON nested thousands deep
        raise CacheCorruption(f'unreadable sidecar of {name}: not JSON ({type(error).__name__})') from None
    problem = _sidecar_problem(sidecar)
    if problem is not None:
        raise CacheCorruption(f'unreadable sidecar of {name}: {problem}')
    return sidecar


def _sidecar_problem(sidecar: Any) -> str | None:
    if not isinstance(sidecar, dict):
        return f'a JSON {type(sidecar).__name__}, not an object'
    if not isinstance(sidecar.get('key'), str):
        return '"key" is missing or not a string'
    if sidecar.get('format') != CACHE_FORMAT_VERSION or isinstance(sidecar.get('format'), bool):
        return f'format {str(sidecar.get("format"))[:20]}, expected {CACHE_FORMAT_VERSION}'
    if not _is_count(sidecar.get('file_bytes')):
        return '"file_bytes" is not a byte count'
    crc = sidecar.get('crc32')
    if not (_is_count(crc) and crc < 2**32):
        return '"crc32" is not a 32-bit checksum'
    shape = sidecar.get('shape')
    if not (isinstance(shape, list) and len(shape) <= 32 and all(_is_count(n) for n in shape)):
        return '"shape" is not a list of sizes'
    try:
        dtype = np.dtype(sidecar.get('dtype')) if isinstance(sidecar.get('dtype'), str) else None
    except (TypeError, ValueError, SyntaxError, OverflowError, RecursionError):
        dtype = None
    if dtype is None or dtype.hasobject:
        return '"dtype" is not a numeric dtype'
    stamp = sidecar.get('array_stamp')
    if stamp is not None and not (isinstance(stamp, list) and len(stamp) == 5 and isinstance(stamp[0], str)
                                  and all(_is_count(n) for n in stamp[1:])):
        return '"array_stamp" is not a file stamp'
    return None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def forget_verified() -> None:
    """Forget which entries this process verified (as a fresh process would).

    Example:
        >>> forget_verified()
    """
    with _verified_lock:
        _verified.clear()


def verified_count() -> int:
    """How many array versions this process remembers as verified (at most ``VERIFIED_MEMO_LIMIT``).

    Example:
        >>> verified_count() <= VERIFIED_MEMO_LIMIT
        True
    """
    return len(_verified)


def _signature(key: str, stat: os.stat_result) -> ArraySignature:
    return (key, *stat_identity(stat))


def _is_verified(path: Path, signature: ArraySignature) -> bool:
    with _verified_lock:
        known = _verified.get(str(path))
        if known is not None:
            _verified.move_to_end(str(path))
        return known == signature


def _remember_verified(path: Path, signature: ArraySignature) -> None:
    with _verified_lock:
        _verified[str(path)] = signature
        _verified.move_to_end(str(path))
        while len(_verified) > VERIFIED_MEMO_LIMIT:
            _verified.popitem(last=False)


def crc32(array: np.ndarray) -> int:
    """CRC-32 of an array's bytes (about 3 GB/s: cheap next to reading them).

    Example:
        >>> crc32(np.zeros(4, np.uint8))
        558161692
    """
    return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast('B'))


def stale_temporary(path: Path, mtime: float, now: float | None = None) -> str | None:
    """Why the temporary file ``path`` was left by a writer that is gone, or None if it may be live.

    Its writer is gone when the file is older than :data:`STALE_TEMP_SECONDS`, or when it was
    written on this host by a process that no longer exists.

    Example:
        >>> stale_temporary(Path('.ab.npy.0a1b2c3d.999999999.cafe0123.tmp'), time.time())  # doctest: +SKIP
        'writer pid 999999999 is gone'
    """
    now = time.time() if now is None else now
    if now - mtime > STALE_TEMP_SECONDS:
        return f'older than {STALE_TEMP_SECONDS:.0f} s'
    parts = path.name.split('.')
    if len(parts) < 5 or parts[-4] != _HOST or not parts[-3].isdigit():
        return None  # another host's writer (or an older name): only its age tells
    pid = int(parts[-3])
    if pid == os.getpid():
        return None  # this process is writing it now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f'writer pid {pid} is gone'
    except OSError:
        return None  # alive, owned by another user
    return None


def sweep_temporaries(folder: Path, now: float | None = None) -> list[tuple[Path, str]]:
    """Remove the temporary files in ``folder`` whose writer is gone; returns them with the reason.

    Example:
        >>> sweep_temporaries(Path('/tmp/pyable-cache/ab'))  # doctest: +SKIP
        [(PosixPath('/tmp/pyable-cache/ab/.ab12.npy.0a1b2c3d.4242.cafe0123.tmp'), 'writer pid 4242 is gone')]
    """
    removed = []
    try:
        children = list(os.scandir(folder))
    except OSError:
        return removed
    for child in children:
        if not (child.name.startswith('.') and child.name.endswith(CACHE_TEMP_SUFFIX)):
            continue
        try:
            if not child.is_file(follow_symlinks=False):
                continue
            reason = stale_temporary(Path(child.path), child.stat(follow_symlinks=False).st_mtime, now)
            if reason is not None:
                os.unlink(child.path)
                removed.append((Path(child.path), reason))
        except OSError:
            continue  # removed by another process meanwhile, or a read-only folder
    return removed


def content_problem(key: str, sidecar: dict[str, Any]) -> str | None:
    """Whether an entry's sidecar still describes its key and its source's content; the problem or None.

    For a volume entry (one that records its source's identity), the recorded inputs must
    digest to ``key``, and a source that still has the identity recorded
    when it was read (same size, mtime, ctime, inode, device) is hashed now: its digest must
    be the one in the key. A source changed or gone since is not a problem (the entry still
    holds that older content, which another copy of the file may ask for).

    Example:
        >>> content_problem(key, json.loads(sidecar_path.read_bytes()))  # doctest: +SKIP
        'its source /data/t1.nii.gz no longer has the content its key names'
    """
    inputs, recorded = sidecar.get('inputs'), sidecar.get('source_identity')
    if not isinstance(inputs, dict) or recorded is None:
        return None  # not a volume of compute_once (another owner's entry, or an older one)
    try:
        if digest_of(inputs) != key:
            return 'its recorded inputs do not give its key (edited, or of another entry)'
    except (TypeError, ValueError, RecursionError):
        return 'its recorded inputs are not plain JSON'
    source, digest = sidecar.get('source'), inputs.get('source')
    if not (isinstance(source, str) and isinstance(digest, str)):
        return None
    try:
        now = json.loads(json.dumps(source_identity([source])))
        if now != recorded:
            return None  # changed since: the entry is of an older version
        actual = content_digest(source)
    except (OSError, ValueError):
        return None
    if actual != digest:
        return f'its source {source} no longer has the content its key names (a wrong digest memo?)'
    return None
