"""On-disk cache of resampled volumes: one uncompressed ``.npy`` plus a JSON sidecar per entry.

An entry is valid only when both files exist and agree (shape, dtype, size, checksum). The
``.npy`` is written first and the sidecar last, each to a temporary file in the same folder
renamed into place, so readers never see a half-written entry and several processes may fill
the same key at once (they write identical bytes). Nothing is pickled.

Example:
    >>> from pyable_tio.cache import VolumeCache
    >>> cache = VolumeCache('/tmp/pyable-cache', max_bytes=20 * 2**30)  # doctest: +SKIP
    >>> subjects = subjects_from_manifest('manifest.json', cache_dir=cache)  # doctest: +SKIP
"""

from __future__ import annotations

from .entry import CacheCorruption
from .volume import STALE_TEMP_SECONDS, CacheStats, VolumeCache

__all__ = ['STALE_TEMP_SECONDS', 'CacheCorruption', 'CacheStats', 'VolumeCache']
