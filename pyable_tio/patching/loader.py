"""One call from a manifest to training batches, augmented per patch on CPU or on the batch on a device."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torchio as tio

from ..manifest import ManifestSource
from ..queues import queue_from_manifest
from .batch import DeviceLoader


def patch_loader(
    source: ManifestSource,
    *,
    patch_size: int | Sequence[int],
    samples_per_volume: int,
    batch_size: int,
    transform: Callable | None = None,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    max_length: int | None = None,
    drop_last: bool = False,
    **kwargs: Any,
) -> Iterable[dict[str, Any]]:
    """Batches of augmented patches from a manifest; ``device=`` moves the augmentation onto the batch.

    Without ``device`` this is ``tio.SubjectsLoader(pt.queue_from_manifest(...))``: the queue's
    workers cut and augment each patch on CPU (:func:`pyable_tio.plan_transform`). With
    ``device="cuda"`` (or ``"cpu"``, or a ``torch.device``) the workers only read each patch's
    box (the patch plus the margin its drawn spatial steps need) from the cache's memory maps
    in the stored dtype, and draw the steps' parameters; the collated boxes go to the device
    (pinned, without blocking, on CUDA) and the steps that run on a batch (affine, flips,
    gamma, noise, clamp, bias field, ``ZNormalization``, ``RescaleIntensity``;
    ``plan_transform(T, device)`` lists them) run there: all spatial steps of a sample as one
    sampling grid, one ``grid_sample`` per batch for images (trilinear) and one gather for
    labels (nearest, dtype kept), then the intensity steps, batched. Other steps (elastic,
    blur) run per patch in the workers first. Deterministic steps give the same patches either
    way; the same seed gives the same batches whatever ``num_workers`` is. On a CPU-only
    machine ``device=None`` is the faster path (the compiled per-patch kernel);
    ``device="cpu"`` runs the batch path there, e.g. to test it.

    Args:
        source: Anything :func:`pyable_tio.read_manifest` accepts.
        patch_size: D, H, W (an int for cubes).
        samples_per_volume: Patches per subject.
        batch_size: Patches per batch.
        transform: The augmentation (a TorchIO transform).
        device: Where augmentation runs: None (per patch, CPU workers; batches stay on CPU),
            or the training device (batches arrive there, augmented).
        num_workers: Threads (or processes, for whole-volume steps) cutting the patches.
        max_length: Patches kept in the queue (default: ``max(batch_size, 2 * samples_per_volume)``).
        drop_last: Drop the last, smaller batch of an epoch.
        **kwargs: Passed to :func:`pyable_tio.queue_from_manifest` (``sampler``,
            ``label_name``, ``missing``, ``shuffle_patches``, ``engine``, ``cache_dir``, ...).

    Returns:
        An iterable of batches (dicts as ``tio.SubjectsLoader`` gives them: ``batch[name][tio.DATA]``
        B x C x D x H x W, per-sample ``tio.AFFINE`` and ``tio.LOCATION`` for
        :func:`pyable_tio.to_native`), with ``len()`` batches per epoch and ``.queue``.

    Raises:
        ValueError: an unknown device, or CUDA asked for where there is none.

    Example:
        >>> loader = patch_loader('m.json', patch_size=96, samples_per_volume=8, batch_size=4,
        ...                       transform=tio.RandomAffine(), device='cuda')  # doctest: +SKIP
        >>> next(iter(loader))['images'][tio.DATA].device  # doctest: +SKIP
        device(type='cuda', index=0)
    """
    if device is not None:
        device = _device(device)
    length = max_length or max(batch_size, 2 * samples_per_volume)
    queue = queue_from_manifest(source, patch_size=patch_size, samples_per_volume=samples_per_volume,
                                max_length=length, transform=transform, num_workers=num_workers,
                                batch_device=device, **kwargs)
    if device is None:
        loader = tio.SubjectsLoader(queue, batch_size=batch_size, drop_last=drop_last)
        loader.queue = queue  # as DeviceLoader.queue
        return loader
    return DeviceLoader(queue, batch_size, device, drop_last)


def _device(device: str | torch.device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f'device must be a torch device such as "cuda" or "cpu", got {device!r}') from error
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'device {str(device)!r} asked for, but torch sees no CUDA device here'
                         ' (use device="cpu", or None to augment per patch in the workers)')
    return device
