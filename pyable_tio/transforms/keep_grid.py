"""MONAI augmentations in pyable-tio's TorchIO datasets: the content moves, the subject's grid stays.

MONAI's spatial augmentations keep the content fixed in the world and rewrite the affine (their
bookkeeping for ``Invertd``); TorchIO's augmentations move the content on a fixed grid, which is
what the Z,Y,X layout guard (:class:`pyable_tio.transforms.ToZYX`) and patch samplers expect.
:func:`keep_grid` (called by ``with_layout_guard``) makes every ``tio.MonaiAdapter`` of a
pipeline behave like a TorchIO augmentation.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torchio as tio


class GridKeepingMonaiAdapter(tio.MonaiAdapter):
    """``tio.MonaiAdapter`` whose MONAI augmentations keep the subject's grid, as TorchIO's do.

    MONAI's spatial augmentations (``RandAffined``, ``RandRotated``, ``RandFlipd``,
    ``RandZoomd``...) resample the array in place and rewrite the affine so that the content
    stays put in the world (MONAI's bookkeeping for ``Invertd``). A TorchIO augmentation does
    the opposite: the content moves and the grid stays, which is what the layout guard expects.
    For a randomizable MONAI transform (a ``Rand*`` transform, or a ``Compose`` holding one),
    every image whose spatial shape it kept gets its affine back: the augmented array on the
    subject's grid. Shape-changing ones (random crops) keep MONAI's affine (a translation).
    Deterministic MONAI transforms (``Orientationd``, ``Spacingd``) keep MONAI's affine.

    Example:
        >>> from monai.transforms import RandAffined  # doctest: +SKIP
        >>> dataset = pt.dataset_from_manifest('m.json', transform=tio.MonaiAdapter(RandAffined(...)))  # doctest: +SKIP
    """

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        images = subject.get_images_dict(intensity_only=False)
        before = {name: (image.affine.copy(), image.spatial_shape) for name, image in images.items()}
        subject = super().apply_transform(subject)
        if not _is_augmentation(self.monai_transform):
            return subject
        for name, image in subject.get_images_dict(intensity_only=False).items():
            if name in before and image.spatial_shape == before[name][1]:
                image.affine = before[name][0]
        return subject


def keep_grid(transform: Callable) -> Callable:
    """``transform`` with every ``tio.MonaiAdapter`` in it made a :class:`GridKeepingMonaiAdapter`.

    Looks into ``tio.Compose`` and ``tio.OneOf``; the user's objects are not modified (copies
    are made where something changes; the MONAI transforms themselves are shared).

    Example:
        >>> keep_grid(tio.Compose([tio.MonaiAdapter(RandAffined(['images'], prob=1))]))  # doctest: +SKIP
    """
    if isinstance(transform, tio.MonaiAdapter):
        if isinstance(transform, GridKeepingMonaiAdapter):
            return transform
        adapted = copy.copy(transform)
        adapted.__class__ = GridKeepingMonaiAdapter
        return adapted
    if isinstance(transform, tio.Compose):
        children = [keep_grid(t) for t in transform.transforms]
        if any(a is not b for a, b in zip(children, transform.transforms)):
            transform = copy.copy(transform)
            transform.transforms = children
    elif isinstance(transform, tio.OneOf):
        children = {keep_grid(t): p for t, p in transform.transforms_dict.items()}
        if any(a is not b for a, b in zip(children, transform.transforms_dict)):
            transform = copy.copy(transform)
            transform.transforms_dict = children
    return transform


def _is_augmentation(monai_transform: Any) -> bool:
    from monai.transforms import Compose, RandomizableTransform

    if isinstance(monai_transform, Compose):
        return any(isinstance(t, RandomizableTransform) for t in monai_transform.flatten().transforms)
    return isinstance(monai_transform, RandomizableTransform)
