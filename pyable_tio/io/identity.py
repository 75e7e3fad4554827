"""What identifies one version of a file, from its ``stat``: the one definition every memo uses.

Example:
    >>> import os
    >>> len(stat_identity(os.stat('.')))
    4
"""

from __future__ import annotations

import os


def stat_identity(stat: os.stat_result) -> tuple[int, int, int, int]:
    """``(size, mtime_ns, ctime_ns, inode)``: any rewrite, replacement or ``touch`` changes it.

    The ctime and inode too: ``rsync -a`` or ``cp -p`` replaces a file keeping its size and mtime,
    and nobody can set a ctime back.

    Example:
        >>> stat_identity(os.stat('.'))[0] >= 0
        True
    """
    return (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


def folder_listing(folder: str | os.PathLike) -> tuple[tuple[str, int, int, int, int], ...]:
    """Names and :func:`stat_identity` of the files directly in ``folder``, sorted by name.

    Any file added, removed, renamed or rewritten in place changes it.

    Raises:
        OSError: when the folder cannot be listed.

    Example:
        >>> isinstance(folder_listing('.'), tuple)
        True
    """
    with os.scandir(folder) as entries:
        return tuple(sorted(
            (entry.name, *stat_identity(entry.stat())) for entry in entries if entry.is_file()
        ))
