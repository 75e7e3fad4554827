"""Atomic file writes: a temporary file next to the target, renamed into place when complete.

One helper for every file the package writes (cache entries and memos, alignment ``.tfm``
files, native-space predictions), so that a crash or Ctrl-C never leaves a half-written file
under its final name. Temporary names are ``.<name>.<host>.<pid>.<random>.tmp`` followed by
the target's own suffixes (SimpleITK picks the file format from them): the host and pid tell a
cleaner whether the writer is still alive (``pyable_tio.cache.entry.stale_temporary``).
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..constants import CACHE_TEMP_SUFFIX

#: Which host writes a temporary file (8 hex digits): its pid means something only there.
HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temporary_path(path: Path, keep_suffix: bool = False) -> Path:
    """A unique temporary name next to ``path`` (same folder, so ``os.replace`` is atomic).

    Args:
        path: The final file.
        keep_suffix: End the name with ``path``'s suffixes too (``.tmp.nii.gz``), for writers
            that choose the format by extension.

    Example:
        >>> temporary_path(Path('/c/ab.npy')).name.startswith('.ab.npy.')
        True
        >>> temporary_path(Path('/c/seg.nii.gz'), keep_suffix=True).name.endswith('.tmp.nii.gz')
        True
    """
    suffix = CACHE_TEMP_SUFFIX + (''.join(path.suffixes) if keep_suffix else '')
    return path.with_name(f'.{path.name}.{HOST}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}')


@contextmanager
def atomic_path(path: Path, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed onto ``path``.

    The temporary file is removed whatever happens (an exception, even KeyboardInterrupt),
    and ``path``'s folder is created when missing.

    Args:
        path: The final file.
        keep_suffix: See :func:`temporary_path`.

    Example:
        >>> with atomic_path(Path('/tmp/seg.nii.gz'), keep_suffix=True) as partial:  # doctest: +SKIP
        ...     sitk.WriteImage(image, str(partial))
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path, keep_suffix)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write(path: Path, write: Callable[[Any], Any]) -> int:
    """Write through ``write(stream)`` (a binary stream) atomically to ``path``.

    Returns:
        The size of the file written.

    Example:
        >>> atomic_write(Path('/tmp/x.json'), lambda stream: stream.write(b'{}'))  # doctest: +SKIP
        2
    """
    with atomic_path(path) as temporary:
        with temporary.open('wb') as stream:
            write(stream)
        size = temporary.stat().st_size
    return size
