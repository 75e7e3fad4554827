"""Compose TorchIO transforms and seed-style callables."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torchio as tio

from .adapter import CallableTransform


class Compose(tio.Compose):
    """``tio.Compose`` that also accepts seed-style callables.

    Items that are not TorchIO transforms are taken to have the seed's signature
    ``(images, rois, labelmaps, meta) -> (images, rois, labelmaps)`` and are wrapped in
    :class:`CallableTransform`, so every step is recorded in the subject's history.

    Args:
        transforms: TorchIO transforms and/or seed-style callables, applied in order.
        **kwargs: See ``tio.Transform``.

    Example:
        >>> from pyable_tio.transforms import Compose, IntensityNormalization, RandomFlip
        >>> transform = Compose([IntensityNormalization(mask='roi_0'), RandomFlip(('H', 'W'))])
    """

    def __init__(self, transforms: Sequence[tio.Transform | Callable], **kwargs):
        items = list(transforms)
        for item in items:
            if not callable(item):
                raise TypeError(f'Compose takes TorchIO transforms or callables, got {item!r}')
        wrapped = [item if isinstance(item, tio.Transform) else CallableTransform(item) for item in items]
        super().__init__(wrapped, **kwargs)
