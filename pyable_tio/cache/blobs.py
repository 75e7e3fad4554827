"""Small files a cache keeps beside its entries (the ``.tfm`` of ``align=``), keyed by their owner.

The owner builds the key (from contents, never paths) and reads and writes the file; the cache
places it, writes it atomically and treats a file the owner cannot read as damaged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..constants import CACHE_BLOB_FOLDERS
from ..io.atomic import atomic_path
from .stats import warn_line

T = TypeVar('T')


class BlobStore:
    """The blob methods of :class:`~pyable_tio.cache.VolumeCache` (needs ``folder`` and ``_write_failed``)."""

    folder: Path

    def blob_path(self, folder: str, key: str, suffix: str) -> Path:
        """Where the small file (a ``.tfm``...) ``key`` of ``folder`` lives.

        Example:
            >>> VolumeCache('/tmp/pyable-cache').blob_path('alignment', 'ab12', '.tfm')  # doctest: +SKIP
            PosixPath('/tmp/pyable-cache/alignment/ab12.tfm')
        """
        if folder not in CACHE_BLOB_FOLDERS:
            raise ValueError(f'blob folder must be one of {CACHE_BLOB_FOLDERS}, got {folder!r}')
        return self.folder / folder / f'{key}{suffix}'

    def get_blob(self, folder: str, key: str, suffix: str, read: Callable[[Path], T]) -> T | None:
        """``read(path)`` of the blob, or None when absent; a blob ``read`` refuses (raises
        ``RuntimeError``/``ValueError``/``OSError``) is damaged: removed with a warning.

        Example:
            >>> cache.get_blob('alignment', key, '.tfm', lambda p: sitk.ReadTransform(str(p)))  # doctest: +SKIP
        """
        path = self.blob_path(folder, key, suffix)
        if not path.is_file():
            return None
        try:
            value = read(path)
        except (RuntimeError, ValueError, OSError) as error:
            warn_line(f'pyable-tio cache: unreadable {path.name} ({type(error).__name__}); recomputing it')
            path.unlink(missing_ok=True)
            return None
        return value

    def put_blob(self, folder: str, key: str, suffix: str, write: Callable[[Path], None]) -> Path | None:
        """Write the blob atomically with ``write(temporary path)``; its path, or None (with a
        warning, once per cache) when the folder is not writable.

        Example:
            >>> cache.put_blob('alignment', key, '.tfm', lambda p: sitk.WriteTransform(found, str(p)))  # doctest: +SKIP
        """
        path = self.blob_path(folder, key, suffix)
        try:
            with atomic_path(path, keep_suffix=True) as temporary:
                write(temporary)
        except (OSError, RuntimeError) as error:
            self._write_failed(path, str(error))
            return None
        return path
