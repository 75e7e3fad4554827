"""Argument types of the ``pyable-tio`` command line: sizes, worker counts, shards, steps.

Each raises ``argparse.ArgumentTypeError`` with the value received and what is expected, so
argparse prints one line and exits 2, without a traceback.

Example:
    >>> parse_size('500M'), parse_shard('0/4')
    (524288000, (0, 4))
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re

from ..constants import CACHE_WORKERS_MAX, CACHE_WORKERS_MIN_VOLUMES, REFERENCE_FIRST, REFERENCE_LARGEST

_SIZE = re.compile(r'^\s*([0-9.]+(?:e[0-9]+)?)\s*([kmgt]?)(i?b)?\s*$', re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from ``"500M"``, ``"20G"``, ``"1.5TiB"``, ``"1e9"`` (K/M/G/T are powers of 1024).

    Example:
        >>> parse_size('2G')
        2147483648
    """
    match = _SIZE.match(str(text))
    if not match:
        raise argparse.ArgumentTypeError(f'not a size: {text!r} (expected e.g. 500M, 20G, 1e9)')
    number, unit = float(match.group(1)), match.group(2).lower()
    value = int(number * 1024 ** ' kmgt'.index(unit or ' '))
    if value <= 0:
        raise argparse.ArgumentTypeError(f'size must be positive, got {text!r}')
    return value


def workers(text: str) -> int:
    """A number of worker processes (``--workers``; 0: in the calling process).

    Example:
        >>> workers('4')
        4
    """
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f'expected a number of processes >= 0, got {text!r}')
    return value


def steps(text: str) -> tuple:
    """Preprocessing steps from ``"n4,skullstrip"`` (``--preprocess``).

    Example:
        >>> [type(step).__name__ for step in steps('n4')]
        ['N4']
    """
    from ..preprocess import resolve_steps  # only when --preprocess is given: it loads SimpleITK

    try:
        return resolve_steps(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def reference(text: str) -> str | int:
    """The reference image of each subject: ``first``, ``largest`` or an index (``--reference``).

    Example:
        >>> reference('largest'), reference('1')
        ('largest', 1)
    """
    if text in (REFERENCE_FIRST, REFERENCE_LARGEST):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected first, largest or an index, got {text!r}') from None


def orientation(text: str) -> str:
    """A checked orientation code such as ``LPS`` or ``RAS`` (``--orientation``).

    Example:
        >>> orientation('RAS')
        'RAS'
    """
    from ..geometry.grid import check_orientation  # only when --orientation is given

    try:
        return check_orientation(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_shard(text: str) -> tuple[int, int]:
    """``(K, N)`` from ``"K/N"``: this run caches shard K (0 <= K < N) of N.

    Example:
        >>> parse_shard('3/10')
        (3, 10)
    """
    parts = str(text).split('/')
    try:
        index, count = (int(part) for part in parts)
    except ValueError:
        index, count = -1, 0
    if len(parts) != 2 or count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(
            f'expected K/N with 0 <= K < N (e.g. 0/10 ... 9/10; SLURM: $SLURM_ARRAY_TASK_ID/N), got {text!r}'
        )
    return index, count


def shard_of(subject_id: str, count: int) -> int:
    """The shard (0 ... count-1) of a subject: from a hash of its id, so any order of the
    manifest, any machine and any Python process agree.

    Example:
        >>> shard_of('sub-01', 1)
        0
    """
    return int(hashlib.sha256(str(subject_id).encode()).hexdigest()[:16], 16) % count


def format_bytes(count: float) -> str:
    """A byte count for humans (powers of 1024).

    Example:
        >>> format_bytes(1536)
        '1.5 KiB'
    """
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if abs(count) < 1024 or unit == 'GiB':
            return f'{count:.0f} {unit}' if unit == 'B' else f'{count:.1f} {unit}'
        count /= 1024
    return f'{count:.1f} TiB'


def cache_workers(workers: int | None, volumes: int) -> int:
    """``--workers``, or the default from the work: worker processes only for many volumes.

    Example:
        >>> cache_workers(None, 12), cache_workers(2, 12)
        (0, 2)
    """
    if workers is not None:
        return workers
    return 0 if volumes < CACHE_WORKERS_MIN_VOLUMES else min(CACHE_WORKERS_MAX, os.cpu_count() or 1)


def plural(count: int, noun: str) -> str:
    """``1 file``, ``2 files``, ``1 entry``, ``3 entries`` (abbreviations such as ``subj.`` stay).

    Example:
        >>> plural(1, 'file'), plural(12, 'file'), plural(3, 'entry')
        ('1 file', '12 files', '3 entries')
    """
    if count == 1 or noun.endswith('.'):
        return f'{count} {noun}'
    return f'{count} {noun[:-1]}ies' if noun.endswith('y') else f'{count} {noun}s'
