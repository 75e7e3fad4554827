"""Whole-volume intensity statistics, computed once per volume and kept, for per-patch steps.

A patch must never be normalised by its own statistics: ``ZNormalization``,
``RescaleIntensity`` and the pad values of the spatial steps (``'minimum'``, ``'mean'``,
``'otsu'``) use the statistics of the whole volume, computed here with TorchIO's own masks
and formulas, once per (volume, statistic). They are kept in memory per process and, when the
volumes are cached, in the volume cache itself (:func:`stored`): a small JSON entry keyed by
the volumes' own cache keys and the statistic, so a later run or another worker reads them
instead of reading the whole volume again, and they are counted, evicted and cleared with the
volumes. Volumes changed by a whole-volume step (a loaded, transformed subject) are not
memoised: their statistics change every draw.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import torchio as tio
from torchio.data.io import nib_to_sitk

from ..cache.digest import digest_of, source_identity
from ..constants import STATISTICS_MEMO_SIZE, STATISTICS_VERSION

_memo: OrderedDict[Hashable, Any] = OrderedDict()
_lock = threading.Lock()


@dataclass(frozen=True)
class VolumeKey:
    """What identifies an unloaded image's voxels: its paths, its reader and the identity
    (:func:`~pyable_tio.cache.digest.source_identity`) of every file they are read from.

    A file replaced, rewritten or touched gives another key, so a memo never serves the
    statistics of an older version; :func:`remembered` re-takes the identity after computing
    and keeps nothing when it changed meanwhile.
    """

    paths: tuple[str, ...]
    reader: str
    files: tuple[str, ...]
    identity: tuple[Any, ...]

    def is_current(self) -> bool:
        """Whether the files still have the identity the key was made with."""
        try:
            return source_identity(self.files) == self.identity
        except OSError:
            return False


def volume_key(image: tio.Image) -> VolumeKey | None:
    """The :class:`VolumeKey` of an unloaded image; None when loaded or a file is missing.

    Example:
        >>> volume_key(subject['images']).paths  # doctest: +SKIP
        ('t1.nii.gz', 't2.nii.gz')
    """
    if image._loaded:
        return None
    paths = tuple(_paths(image))
    files_of = getattr(image.reader, 'files', None)
    files = tuple(f for path in paths for f in (files_of(path) if callable(files_of) else (path,)))
    try:
        identity = source_identity(files)
    except (OSError, ValueError):
        return None  # computed without a memo; the reader reports the missing file
    return VolumeKey(paths, repr(image.reader), files, identity)


def remembered(key: Hashable | None, compute: Callable[[], Any]) -> Any:
    """``compute()``, kept under ``key`` (bounded, thread-safe); always computed when key is None.

    Kept only when every :class:`VolumeKey` inside ``key`` still holds after computing.
    """
    if key is None:
        return compute()
    with _lock:
        if key in _memo:
            _memo.move_to_end(key)
            return _memo[key]
    value = compute()
    if not all(volume.is_current() for volume in _volume_keys(key)):
        return value  # a file changed meanwhile: the value may describe either version
    with _lock:
        _memo[key] = value
        while len(_memo) > STATISTICS_MEMO_SIZE:
            _memo.popitem(last=False)
    return value


def forget() -> None:
    """Forget every remembered statistic (as a fresh process would).

    Example:
        >>> forget()
    """
    with _lock:
        _memo.clear()


def _volume_keys(key: Any) -> list[VolumeKey]:
    if isinstance(key, VolumeKey):
        return [key]
    if isinstance(key, tuple):
        return [found for part in key for found in _volume_keys(part)]
    return []


def stored(images: Sequence[tio.Image], statistic: str, compute: Callable[[], Any]) -> Any:
    """``compute()`` (JSON-serialisable), kept in the images' volume cache; computed without one.

    The entry's key is the cache keys of every file of ``images`` (source content, grid,
    transforms, preprocessing...) plus ``statistic``, so it is found again exactly when the
    volumes it describes are. It is stored as the UTF-8 bytes of its JSON (a uint8 array: the
    cache's own atomic, checksummed format; never a pickle), and only when the files' identity
    is the same before the key and after ``compute()``.

    Args:
        images: The unloaded images whose voxels the statistic reads (an image and its mask).
        statistic: What is computed, e.g. ``repr(step)``.
        compute: Computes it from the whole volumes.

    Example:
        >>> stored([subject['images']], repr(step), lambda: {'mean': 0.0, 'std': 1.0})  # doctest: +SKIP
        {'mean': 0.0, 'std': 1.0}
    """
    cache = getattr(images[0].reader, 'cache', None)
    if cache is None or not all(hasattr(image.reader, 'cache_inputs') for image in images):
        return compute()
    try:
        files = tuple(f for image in images for path in _paths(image) for f in image.reader.files(path))
        before = source_identity(files)
        volumes = [image.reader.cache_inputs(path) for image in images for path in _paths(image)]
    except OSError:
        return compute()  # not a GridReader, or a source vanished (its reader says so when read)
    inputs = {'statistic': statistic, 'volumes': volumes, 'statistics_version': STATISTICS_VERSION}
    key = digest_of(inputs)
    array = cache.get(key)
    if array is not None:
        try:
            return json.loads(np.asarray(array).tobytes().decode())
        except (ValueError, RecursionError):
            pass  # not ours (cannot happen with this key): computed again and replaced
    value = compute()
    try:
        unchanged = source_identity(files) == before
    except OSError:
        unchanged = False
    if unchanged:
        payload = np.frombuffer(json.dumps(value).encode(), dtype=np.uint8).copy()
        cache.put(key, payload, inputs, source=_paths(images[0])[0])
    return value


def _paths(image: tio.Image) -> list[str]:
    return [str(p) for p in (image.path if isinstance(image.path, list) else [image.path])]


def channel_minima(tensor: torch.Tensor) -> list[float]:
    """Per-channel minimum of a C x D x H x W tensor (TorchIO's ``'minimum'`` pad value)."""
    return [float(channel.min()) for channel in tensor]


def border_means(tensor: torch.Tensor, affine: np.ndarray, otsu: bool) -> list[float]:
    """Per-channel mean of the volume's border voxels, as ``tio.Affine`` computes ``'mean'``/``'otsu'``."""
    from torchio.transforms.augmentation.spatial.random_affine import get_borders_mean

    return [float(get_borders_mean(nib_to_sitk(channel[None], affine, force_3d=True), filter_otsu=otsu))
            for channel in tensor]


def sitk_grid(affine: np.ndarray, shape: tuple[int, int, int]) -> sitk.Image:
    """A uint8 SimpleITK image of a whole grid (for B-spline domains); the voxels are not used.

    Built as TorchIO builds it (``nib_to_sitk``: SimpleITK's x is the tensor's first spatial axis),
    so that the control points keep TorchIO's axis order; not :func:`pyable_tio.geometry.grid.ras_affine_to_grid`.
    """
    return nib_to_sitk(torch.zeros((1, *shape), dtype=torch.uint8), affine, force_3d=True)
