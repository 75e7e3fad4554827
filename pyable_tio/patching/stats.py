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
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import torchio as tio
from torchio.data.io import nib_to_sitk

from ..cache.digest import digest_of
from ..constants import STATISTICS_MEMO_SIZE, STATISTICS_VERSION

_memo: OrderedDict[Hashable, Any] = OrderedDict()
_lock = threading.Lock()


def volume_key(image: tio.Image) -> Hashable | None:
    """What identifies an unloaded image's voxels: its paths and its reader; None when loaded.

    Example:
        >>> volume_key(subject['images'])  # doctest: +SKIP
        (('t1.nii.gz', 't2.nii.gz'), "GridReader(grid=...)")
    """
    if image._loaded:
        return None
    paths = image.path if isinstance(image.path, list) else [image.path]
    return tuple(str(p) for p in paths), repr(image.reader)


def remembered(key: Hashable | None, compute: Callable[[], Any]) -> Any:
    """``compute()``, kept under ``key`` (bounded, thread-safe); always computed when key is None."""
    if key is None:
        return compute()
    with _lock:
        if key in _memo:
            _memo.move_to_end(key)
            return _memo[key]
    value = compute()
    with _lock:
        _memo[key] = value
        while len(_memo) > STATISTICS_MEMO_SIZE:
            _memo.popitem(last=False)
    return value


def stored(images: Sequence[tio.Image], statistic: str, compute: Callable[[], Any]) -> Any:
    """``compute()`` (JSON-serialisable), kept in the images' volume cache; computed without one.

    The entry's key is the cache keys of every file of ``images`` (source content, grid,
    transforms, preprocessing...) plus ``statistic``, so it is found again exactly when the
    volumes it describes are. It is stored as the UTF-8 bytes of its JSON (a uint8 array: the
    cache's own atomic, checksummed format; never a pickle).

    Args:
        images: The unloaded images whose voxels the statistic reads (an image and its mask).
        statistic: What is computed, e.g. ``repr(step)``.
        compute: Computes it from the whole volumes.

    Example:
        >>> stored([subject['images']], repr(step), lambda: {'mean': 0.0, 'std': 1.0})  # doctest: +SKIP
        {'mean': 0.0, 'std': 1.0}
    """
    cache = getattr(images[0].reader, 'cache', None)
    if cache is None or not hasattr(cache, 'key_inputs'):
        return compute()
    try:
        volumes = [cache.key_inputs(image.reader.entry(path), image.reader.grid)
                   for image in images for path in _paths(image)]
    except (AttributeError, OSError):
        return compute()  # not a GridReader, or a source vanished (its reader says so when read)
    inputs = {'statistic': statistic, 'volumes': volumes, 'statistics_version': STATISTICS_VERSION}
    key = digest_of(inputs)
    array = cache.get(key)
    if array is not None:
        try:
            return json.loads(np.asarray(array).tobytes().decode())
        except ValueError:
            pass  # not ours (cannot happen with this key): computed again and replaced
    value = compute()
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
